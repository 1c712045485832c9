"""Stage ``distill``: train the (pruned) student against the teacher on Ray Train + DeepSpeed.

Reads the student from ``pruned`` (else ``initial_student``, else the teacher), the teacher from
``ctx.teacher``, and in offline mode the soft-label store ``soft_labels``; writes
``<workdir>/student/`` (plain HF dir). Every input is checked before any worker starts::

    distill run pipelines/configs/smoke.yaml        # stages: [soft_labels, prune, distill, ...]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.console import polling
from distill.stages import StageContext, StageResult
from distill.train.config import DistillConfig
from distill.train.loop import LoopSpec

STUDENT_SOURCES = ("pruned", "initial_student", "teacher")


def _num_layers(model_dir: Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"])


def manifest_value(manifest: Any, key: str) -> Any:
    """A manifest field whether the store exposes a dict or an object."""
    if isinstance(manifest, dict):
        return manifest.get(key)
    return getattr(manifest, key, None)


def check_inputs(
    cfg: DistillConfig, teacher_dir: Path, student_dir: Path, soft_labels: Path | None, teacher: Any
) -> Any:
    """Every bad-input check, before training. Returns the opened store (offline) or None."""
    from distill.losses.features import check_layer_pairs
    from distill.models.compat import check_tokenizer_compat

    if cfg.mode == "sft":
        raise DistillError(
            "distill.mode: sft is what the seq-KD `sft` stage uses internally; for the distill "
            "stage use mode offline (soft labels) or online (live teacher)"
        )
    check_teacher_reachable(cfg, teacher_dir)
    check_tokenizer_compat(teacher_dir, student_dir)
    t_layers, s_layers = _num_layers(teacher_dir), _num_layers(student_dir)
    for name, sec in (("feature", cfg.feature), ("attention", cfg.attention)):
        if sec.weight:
            try:
                check_layer_pairs(sec.pairs, t_layers, s_layers)
            except ValueError as e:
                raise DistillError(f"distill.{name}.pairs: {e}") from None
    if cfg.mode != "offline":
        return None
    if soft_labels is None:
        raise DistillError(
            "distill.mode is offline but there is no soft-label store: add the soft_labels stage "
            "before distill, or set distill.mode: online"
        )
    from distill.train.data import open_store

    store = open_store(soft_labels)
    store.check_compatible(teacher.weights_sha256, teacher.tokenizer_sha256)
    check_offline_objective(cfg, store.manifest.encoding)
    s_vocab = json.loads((Path(student_dir) / "config.json").read_text())["vocab_size"]
    st_vocab = manifest_value(store.manifest, "vocab_size")
    if st_vocab is not None and int(st_vocab) != int(s_vocab):
        raise DistillError(
            f"soft-label store vocab_size {st_vocab} != student vocab_size {s_vocab}"
        )
    return store


def check_teacher_reachable(cfg: DistillConfig, teacher_dir: Path) -> None:
    """Online mode and on-policy steps load the live teacher: its weights must be there."""
    if not cfg.needs_teacher:
        return
    teacher_dir = Path(teacher_dir)
    weights = [*teacher_dir.glob("*.safetensors"), *teacher_dir.glob("pytorch_model*.bin")]
    if (teacher_dir / "config.json").exists() and weights:
        return
    why = "mode: online" if cfg.mode == "online" else f"on_policy.lmbda {cfg.on_policy.lmbda:g}"
    raise DistillError(
        f"distill.{why} needs the live teacher, but {teacher_dir} holds no loadable checkpoint "
        "(config.json + weights); a soft-label store alone cannot score the student's own "
        "samples. Point teacher: at the teacher's weights, or set distill.on_policy.lmbda: 0"
    )


def check_offline_objective(cfg: DistillConfig, encoding: str) -> None:
    """Refuse offline objectives the stored target cannot give without bias."""
    if not cfg.loss.kd_weight:
        return
    if cfg.loss.temperature != 1.0:
        raise DistillError(
            f"distill.loss.temperature={cfg.loss.temperature:g} with an offline {encoding} store: "
            "the store holds the teacher at T=1 only (a top-k target would be conditioned on "
            "the top-k support, so the student's mass outside it gets no gradient). Set "
            "distill.loss.temperature: 1.0, or use distill.mode: online for T != 1"
        )
    if encoding == "sampled" and cfg.loss.name != "forward_kl":
        raise DistillError(
            f"distill.loss.name={cfg.loss.name!r} with a sampled soft-label store: only "
            "forward_kl has an unbiased estimate from sampled tokens (the others need the "
            "teacher's probabilities outside the samples). Use loss.name: forward_kl, "
            "soft_labels.encoding: topk, or distill.mode: online"
        )


def run_name(cfg: DistillConfig, *parts: str) -> str:
    """Same inputs + config -> same Ray run name, so a rerun resumes its checkpoints.

    ``parts`` must name everything the run reads (student weights, teacher, corpus, the store's
    manifest hash): a changed input is a new run, never a resume of a finished one."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return f"distill-{h.hexdigest()[:12]}"


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
