"""Stage ``sft``: filter the teacher's generations, then fine-tune the student on what is left.

Reads ``ctx.artifacts["generations"]``; the model trained is ``ctx.latest_model()`` (pruned,
initial student, or the teacher). Loss on completion tokens only. Writes ``<workdir>/student/``
(HF checkpoint + tokenizer files)::

    distill run pipelines/configs/smoke-seqkd.yaml        # stages: [generate, sft, evaluate]

Training runs on Ray Train + DeepSpeed (``distill.train.loop`` in ``mode: sft``; MLflow tag
``trainer=ray_train``); see ``train_student``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.console import polling
from distill.data.filters import apply_filters, reports_metrics
from distill.eval.contamination import check_run_contamination, strip_padding
from distill.eval.plots import log_training_curves
from distill.seqkd.config import SFTConfig
from distill.seqkd.sft_data import build_rows, encode_example, write_sft_rows
from distill.seqkd.store import read_generations, read_manifest
from distill.stages import StageContext, StageResult

log = logging.getLogger(__name__)


def encode_rows(
    tok: Any, rows: list[dict[str, Any]], chat_template: bool, seq_len: int, packing: bool
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return build_rows([encode_example(tok, r, chat_template) for r in rows], seq_len, pad, packing)


def sft_distill_config(cfg: SFTConfig, n_rows: int, cluster_cpus: float) -> Any:
    """The ``DistillConfig`` (mode sft) for ``cfg``: up to 2 workers, as many as rows and CPUs allow."""
    from distill.train.config import DistillConfig

    workers = int(max(1, min(2, n_rows // cfg.batch_size, cluster_cpus)))
    return DistillConfig(
        mode="sft",
        num_workers=workers,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=1.0,  # constant after warmup, like the former local trainer
        max_steps=cfg.steps,
        clip=cfg.max_grad_norm,
        seed=cfg.seed,
        max_failures=1,
    )


def train_student(
    ctx: StageContext, src: Path, data_path: Path, n_rows: int, seq_len: int, cfg: SFTConfig
) -> tuple[Path, list[float]]:
    """Completion-only CE on Ray Train + DeepSpeed; returns (student dir, per-step losses)."""
    import ray
    from mlflow import MlflowClient

    from distill.models.hashing import file_sha256, weights_sha256
    from distill.raycluster import ensure_ray
    from distill.train.inputs import run_name
    from distill.train.launch import PROGRESS_EVERY_S, launch, progress_reader
    from distill.train.loop import LoopSpec

    ensure_ray(ctx.config.ray)
    dcfg = sft_distill_config(cfg, n_rows, ray.cluster_resources().get("CPU", 1))
    out = ctx.output_dir("student")
    spec = LoopSpec(
        cfg=dcfg,
        student_path=str(src),
        sft_path=str(data_path),
        seq_len=seq_len,
        total_steps=cfg.steps,
        out_dir=str(out),
        tracking=ctx.tracker.client_info(),
    )
    ctx.tracker.set_tags({"trainer": "ray_train"})
    ctx.tracker.log_params({"sft.num_workers": dcfg.num_workers})
    name = run_name(dcfg, "sft", weights_sha256(src), file_sha256(data_path))
    with (
        ctx.progress.task("sft", cfg.steps, "steps") as bar,
        polling(bar, progress_reader(spec.tracking), PROGRESS_EVERY_S),
    ):
        launch(spec, name, ctx.workdir / "ray_results")
    hist = MlflowClient(ctx.tracker.tracking_uri).get_metric_history(
        ctx.tracker.run_id, "train/loss"
    )
    return out, [m.value for m in sorted(hist, key=lambda m: m.step)]


def _filter(
    ctx: StageContext, cfg: SFTConfig, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]
    kept, reports = apply_filters(train, cfg.filters)
    metrics = reports_metrics(reports, len(train))
    ctx.tracker.log_dict(
        [{**r.__dict__, "dropped": r.dropped} for r in reports], "filter_report.json"
    )
    for r in reports:
        for note in r.notes:
            log.info("filter %s: %s", r.name, note)
    held_kept, _ = apply_filters(held, cfg.filters)  # the eval set is good answers either way
    return (kept if cfg.use == "kept" else train), held_kept, metrics


def run(ctx: StageContext, cfg: SFTConfig) -> StageResult:
    from distill.models.hashing import tokenizer_sha256, weights_sha256
    from distill.models.loader import load_causal_lm, load_tokenizer

    if "generations" not in ctx.artifacts:
        raise DistillError(
            "stage sft needs the generate stage's output: list `generate` before `sft` in stages"
        )
    gen_dir = ctx.artifacts["generations"]
    manifest = read_manifest(gen_dir)
    rows = read_generations(gen_dir)
    train_rows, held_rows, metrics = _filter(ctx, cfg, rows)
    if len(train_rows) < cfg.min_examples:
        raise DistillError(
            f"sft: {len(train_rows)} training example(s) left after filtering, fewer than "
            f"sft.min_examples={cfg.min_examples}; see filter.* metrics ({metrics}) and relax "
            "sft.filters or generate more"
        )
    key, src = ctx.latest_model()
    ctx.tracker.record_input("generations", gen_dir)
    ctx.tracker.record_input(key, src, weights_sha256(src))
    tok = load_tokenizer(src)
    seq_len = cfg.seq_len or ctx.config.data.seq_len
    chat = bool(manifest.get("chat_template", True))
    data, stats = encode_rows(tok, train_rows, chat, seq_len, cfg.packing)
    if stats["rows"] == 0:
        raise DistillError(f"sft: no example fits sft.seq_len={seq_len} ({stats})")
    held, _ = encode_rows(tok, held_rows[: cfg.eval_rows], chat, seq_len, packing=False)
    data_dir = ctx.output_dir("sft_data")  # what a Ray Train SFT source would read
    write_sft_rows(data_dir / "train.parquet", data)
    write_sft_rows(data_dir / "heldout.parquet", held)
    ctx.tracker.record_output("sft_data", data_dir)
    metrics.update({f"data.{k}": float(v) for k, v in stats.items()})
    metrics["data.heldout_examples"] = float(len(held["input_ids"]))

    if cfg.contamination.enabled:
        same_tok = tokenizer_sha256(src) == ctx.teacher.tokenizer_sha256
        extra = {"sft.train": strip_padding(data["input_ids"], data["attention_mask"])}
        report = check_run_contamination(
            ctx.corpus, gen_dir, ctx.teacher.path, cfg.contamination, extra if same_tok else None
        )
        metrics.update(report.metrics())
        ctx.tracker.log_dict(report.to_dict(), "contamination.json")

    from distill.seqkd.completion_loss import completion_loss

    before = completion_loss(load_causal_lm(src), held, cfg.batch_size)
    n_rows = len(data["input_ids"])
    out, losses = train_student(ctx, Path(src), data_dir / "train.parquet", n_rows, seq_len, cfg)
    after = completion_loss(load_causal_lm(out), held, cfg.batch_size)
    metrics.update(
        {
            "train.first_loss": losses[0],
            "train.last_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])),
            "heldout.completion_loss_before": before,
            "heldout.completion_loss_after": after,
            "steps": float(len(losses)),
        }
    )
    metrics = {k: v for k, v in metrics.items() if v == v}  # drop NaN (no held-out rows)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_params(
        {"trainer": "ray_train", "student_source": key, "resolved_seq_len": seq_len}
    )
    sha = weights_sha256(out)
    ctx.tracker.record_output("student", out, sha)
    log_training_curves(ctx.tracker)
    return StageResult(
        outputs={"student": out},
        metrics=metrics,
        summary={
            "trainer": "ray_train",
            "student_source": key,
            "data": stats,
            "weights_sha256": sha,
        },
    )
