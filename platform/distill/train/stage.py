"""Stage ``distill``: train the (pruned) student against the teacher on Ray Train + DeepSpeed.

Reads the student from ``pruned`` (else ``initial_student``, else the teacher), the teacher from
``ctx.teacher``, and in offline mode the soft-label store ``soft_labels``; writes
``<workdir>/student/`` (plain HF dir). Every input is checked before any worker starts::

    distill run pipelines/configs/smoke.yaml        # stages: [soft_labels, prune, distill, ...]
"""

from __future__ import annotations

from pathlib import Path

from distill.console import polling
from distill.eval.plots import log_training_curves
from distill.stages import StageContext, StageResult
from distill.train.config import DistillConfig
from distill.train.inputs import check_inputs, manifest_value, run_name
from distill.train.loop import LoopSpec

STUDENT_SOURCES = ("pruned", "initial_student", "teacher")


def run(ctx: StageContext, cfg: DistillConfig) -> StageResult:
    from distill.models.hashing import file_sha256, weights_sha256
    from distill.raycluster import ensure_ray
    from distill.train.launch import PROGRESS_EVERY_S, launch, progress_reader

    src_key, student_dir = ctx.latest_model(chain=STUDENT_SOURCES)
    teacher_dir = Path(ctx.teacher.path)
    store_dir = ctx.artifacts.get("soft_labels")
    store = check_inputs(cfg, teacher_dir, Path(student_dir), store_dir, ctx.teacher)
    seq_len = ctx.corpus.seq_len
    if store is not None:
        seq_len = int(manifest_value(store.manifest, "seq_len") or seq_len)
    total = cfg.total_steps(seq_len)
    student_sha = weights_sha256(Path(student_dir))
    out = ctx.output_dir("student")
    spec = LoopSpec(
        cfg=cfg,
        student_path=str(student_dir),
        teacher_path=str(teacher_dir) if cfg.needs_teacher else None,
        store_path=str(store_dir) if store is not None else None,
        train_path=str(ctx.corpus.train_path) if cfg.mode == "online" else None,
        heldout_path=str(ctx.corpus.heldout_path) if ctx.corpus.heldout_rows else None,
        seq_len=seq_len,
        total_steps=total,
        out_dir=str(out),
        tracking=ctx.tracker.client_info(),
    )
    ctx.tracker.log_params(cfg.model_dump(mode="json"), prefix="distill.")
    ctx.tracker.log_params({"student_source": src_key, "total_steps": total})
    ctx.tracker.record_input("student_init", student_dir, student_sha)
    ctx.tracker.record_input("teacher", teacher_dir, ctx.teacher.weights_sha256)
    if store_dir is not None and store is not None:
        ctx.tracker.record_input("soft_labels", store_dir)
    ensure_ray(ctx.config.ray)
    store_sha = file_sha256(Path(store_dir) / "manifest.json") if store is not None else "-"
    name = run_name(
        cfg,
        student_sha,
        ctx.teacher.weights_sha256,
        ctx.corpus.fingerprint,
        store_sha,
        spec.model_dump_json(exclude={"tracking", "out_dir"}),
    )
    storage = cfg.storage_path or str(ctx.workdir / "ray_results")
    with (
        ctx.progress.task("distill", total, "steps") as bar,
        polling(bar, progress_reader(spec.tracking), PROGRESS_EVERY_S),
    ):
        final = launch(spec, name, storage)
    metrics = {
        "train_loss": final.get("train/loss"),
        "kd_loss": final.get("train/kd"),
        "ce_loss": final.get("train/ce"),
        "heldout_loss": final.get("eval/loss"),
        "heldout_ppl": final.get("eval/ppl"),
        "tokens_per_s": final.get("tokens_per_s"),
        "steps": final.get("step"),
        "tokens": final.get("tokens"),
        "resumed_from_step": final.get("resumed_from_step"),
        "on_policy_steps": final.get("on_policy_steps"),
        "rollout_seconds": final.get("rollout_seconds"),
        "rollout_tokens_per_s": final.get("rollout_tokens_per_s"),
        "train_seconds": final.get("train_seconds"),
        "train_nodes": len(final.get("train_node_ids", [])),
    }
    metrics = {k: float(v) for k, v in metrics.items() if v is not None}
    ctx.tracker.log_metrics({f"final.{k}": v for k, v in metrics.items()})
    ctx.tracker.set_tags({"distill.train_node_ids": ",".join(final.get("train_node_ids", []))})
    ctx.tracker.record_output("student", out, weights_sha256(out))
    log_training_curves(ctx.tracker)
    summary = {
        "student_source": src_key,
        "mode": cfg.mode,
        "on_policy_lmbda": cfg.on_policy.lmbda,
        "teacher_placement": cfg.teacher_placement if cfg.needs_teacher else "-",
        "ray_run": name,
        "train_node_ids": final.get("train_node_ids", []),
        **metrics,
    }
    return StageResult(outputs={"student": out}, metrics=metrics, summary=summary)
