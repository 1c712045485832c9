"""``train_loop_per_worker``: one DeepSpeed rank of a Ray Train distillation run.

Everything arrives through the config argument (a ``LoopSpec`` as a dict); nothing is read from
globals. ``distill.train.launch.launch(spec)`` starts it on a ``TorchTrainer``::

    launch(LoopSpec(cfg=DistillConfig(mode="online"), student_path=..., ...), run_name="x")

The worker runs named phases: ``build`` (models, DeepSpeed engine), ``restore`` (the step of
the last Ray checkpoint), ``data`` (this rank's batches), then per step ``train_step`` (forward,
fused loss, backward, optimizer) and ``finish_step`` (metrics, held-out eval, MLflow on rank 0,
checkpoint, export of the final student).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from distill.config.base import StrictModel
from distill.train.config import DistillConfig
from distill.train.engine import head_weight

PART_NAMES = ("loss", "ce", "kd", "feature", "attention")
FAIL_ENV = "DISTILL_FAIL_AT_STEP"  # tests: "<step>:<marker prefix>" raises once per rank


class LoopSpec(StrictModel):
    """What one worker needs, JSON-serializable (it travels as ``train_loop_config``)."""

    cfg: DistillConfig
    student_path: str = Field(..., description="HF dir the student starts from")
    teacher_path: str | None = Field(None, description="online mode: the live teacher")
    store_path: str | None = Field(None, description="offline mode: the soft-label store")
    train_path: str | None = Field(None, description="online mode: packed train rows (parquet)")
    sft_path: str | None = Field(
        None, description="sft mode: input_ids/attention_mask/labels rows (write_sft_rows parquet)"
    )
    heldout_path: str | None = Field(None, description="packed held-out rows (parquet)")
    seq_len: int = Field(..., ge=2)
    total_steps: int = Field(..., ge=1)
    out_dir: str = Field(..., description="final student HF dir (written by rank 0)")
    tracking: dict[str, str] | None = Field(None, description="StageRun.client_info()")


@dataclass
class Worker:
    """The state of one rank between phases."""

    spec: LoopSpec
    rank: int
    world: int
    device: Any
    engine: Any = None
    teacher: Any = None
    weights: Any = None
    source: Any = None
    heldout: Any = None
    sft_columns: dict | None = None
    step: int = 0
    start_step: int = 0
    train_time: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    log: Any = None


def _mlflow_logger(tracking: dict[str, str] | None):
    if not tracking:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, run_id = MlflowClient(tracking["tracking_uri"]), tracking["run_id"]

    def log(metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        client.log_batch(run_id, metrics=items)

    return log


def _maybe_fail(step: int, rank: int) -> None:
    """Fault injection for the resume tests (``DISTILL_FAIL_AT_STEP=<step>:<marker>``)."""
    raw = os.environ.get(FAIL_ENV)
    if not raw:
        return
    at, marker = raw.split(":", 1)
    path = Path(f"{marker}.rank{rank}")
    if step == int(at) and not path.exists():
        path.touch()
        raise RuntimeError(f"injected failure at step {step} on rank {rank} (first attempt)")


def build(w: Worker) -> None:
    """Load the student (and online teacher), wrap them in a DeepSpeed engine."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    from distill.losses import FeatureLoss, LossWeights
    from distill.train.engine import DistillModule, build_ds_config, lr_lambda

    cfg, spec = w.spec.cfg, w.spec
    torch.manual_seed(cfg.seed)
    eager = {"attn_implementation": "eager"} if cfg.attention.weight else {}
    student = AutoModelForCausalLM.from_pretrained(
        spec.student_path, dtype=torch.float32, local_files_only=True, **eager
    )
    if cfg.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)
    if cfg.mode == "online":
        w.teacher = AutoModelForCausalLM.from_pretrained(
            spec.teacher_path,
            dtype=getattr(torch, cfg.compute_dtype),
            local_files_only=True,
            **eager,
        )
        w.teacher.to(w.device).eval().requires_grad_(False)
    feature = None
    if cfg.feature.weight:
        t_hidden = w.teacher.config.hidden_size  # type: ignore[union-attr]
        feature = FeatureLoss(
            cfg.feature.pairs, student.config.hidden_size, t_hidden, cfg.feature.kind
        )
    module = DistillModule.build(student, feature)
    sched = lr_lambda(cfg.warmup_steps, spec.total_steps, cfg.min_lr_ratio)
    w.engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=build_ds_config(cfg, w.world),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched),
    )
    ce_w, kd_w = cfg.loss_weights()
    w.weights = LossWeights(
        ce=ce_w,
        kd=kd_w,
        feature=cfg.feature.weight,
        attention=cfg.attention.weight,
        name=cfg.loss.name,
        temperature=cfg.loss.temperature,
        param=cfg.loss.param(),
        attention_kind=cfg.attention.kind,
        attention_pairs=tuple(cfg.attention.pairs),
    )


def restore(w: Worker) -> None:
    """Continue from the last Ray checkpoint (same data positions, optimizer and LR state)."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            _, client_state = w.engine.load_checkpoint(d, tag="state")
        w.step = int((client_state or {}).get("step", 0))
    w.start_step = w.step


def data(w: Worker) -> None:
    """This rank's training batches and held-out rows."""
    import numpy as np

    from distill.data.packed import read_rows
    from distill.train.data import Batches, heldout_shard, open_store, sft_columns

    cfg, spec = w.spec.cfg, w.spec
    kw = {"shuffle": cfg.shuffle, "seed": cfg.seed}
    if cfg.mode == "offline":
        store = open_store(Path(spec.store_path or ""))
        w.source = Batches.for_store(store, cfg.batch_size, w.rank, w.world, **kw)
    elif cfg.mode == "sft":
        from distill.seqkd.sft_data import read_sft_rows

        w.sft_columns = sft_columns(read_sft_rows(Path(spec.sft_path or "")))
        w.source = Batches.for_arrays(w.sft_columns, cfg.batch_size, w.rank, w.world, **kw)
    else:
        rows = {"input_ids": read_rows(Path(spec.train_path or ""))}
        w.source = Batches.for_arrays(rows, cfg.batch_size, w.rank, w.world, **kw)
    w.heldout = np.zeros((0, spec.seq_len), dtype=np.int32)
    if spec.heldout_path:
        held = read_rows(Path(spec.heldout_path))
        w.heldout = heldout_shard(held, cfg.eval_rows, w.rank, w.world)


def step_denominator(w: Worker) -> float:
    """Counted positions of one micro-batch on average over the whole step: the global count
    (all ranks, all accumulation steps) divided by ``world · grad_accum``. DeepSpeed averages
    gradients over both, so each token weighs the same however unevenly they fall."""
    cfg = w.spec.cfg
    if w.sft_columns is None:  # packed rows: every position counts
        return float(cfg.batch_size * (w.spec.seq_len - 1))
    from distill.train.data import label_positions

    order = w.source.order
    first = w.step * cfg.grad_accum
    rows = [order.rows(first + j) for j in range(cfg.grad_accum)]
    total = sum(label_positions(w.sft_columns, r) for r in rows)
    return max(total, 1) / (w.world * cfg.grad_accum)


def micro_step(w: Worker, m: int, denominator: float) -> list[float]:
    """Forward, fused loss and backward of global micro-batch ``m``; returns logged parts."""
    import torch

    from distill.losses import total_loss

    cfg, dev = w.spec.cfg, w.device
    batch = w.source.get(m)
    ids = batch["input_ids"].to(dev)
    am = batch["attention_mask"].to(dev) if "attention_mask" in batch else None
    labels = batch["labels"].to(dev) if "labels" in batch else None
    student = w.engine.module.student
    fused = cfg.loss_chunk > 0 and w.engine.zero_optimization_stage() != 3
    head = head_weight(student) if fused else None
    fwd_kw = {
        "output_hidden_states": bool(cfg.feature.weight),
        "output_attentions": bool(cfg.attention.weight),
    }
    t_out, t_head = None, None
    if w.teacher is not None:
        t_head = head_weight(w.teacher) if head is not None else None
        with torch.no_grad():
            t_model = w.teacher if t_head is None else w.teacher.base_model
            t_out = t_model(input_ids=ids, attention_mask=am, **fwd_kw)
    stored = {k: v.to(dev) for k, v in batch.items() if k not in ("input_ids", "labels")}
    s_out = w.engine(head=head is None, input_ids=ids, attention_mask=am, **fwd_kw)
    loss, parts = total_loss(
        w.weights,
        s_out,
        ids,
        am,
        labels,
        teacher_out=t_out,
        topk=stored if "topk_ids" in stored else None,
        sampled=stored if "sample_ids" in stored else None,
        feature_loss=w.engine.module.feature,
        head=head,
        teacher_head=t_head,
        chunk=cfg.loss_chunk if cfg.loss_chunk > 0 else 1 << 30,
        denominator=denominator,
    )
    w.engine.backward(loss)
    w.engine.step()
    return [float(loss.detach())] + [parts.get(n, 0.0) for n in PART_NAMES[1:]]


def train_step(w: Worker) -> None:
    """One optimizer step (``grad_accum`` micro-batches); fills ``w.last`` with its metrics."""
    import torch
    import torch.distributed as dist

    cfg = w.spec.cfg
    _maybe_fail(w.step, w.rank)
    t0 = time.perf_counter()
    denominator = step_denominator(w)
    acc = torch.zeros(len(PART_NAMES), dtype=torch.float64)
    for j in range(cfg.grad_accum):
        acc += torch.tensor(micro_step(w, w.step * cfg.grad_accum + j, denominator))
    w.step += 1
    w.train_time += time.perf_counter() - t0
    if dist.is_initialized():
        dist.all_reduce(acc)
    acc /= cfg.grad_accum * w.world
    tokens_per_step = cfg.batch_size * w.world * cfg.grad_accum * w.spec.seq_len
    w.last = {f"train/{n}": float(v) for n, v in zip(PART_NAMES, acc.tolist(), strict=True)}
    w.last.update(
        {
            "lr": float(w.engine.get_lr()[0]),
            "tokens_per_s": (w.step - w.start_step) * tokens_per_step / max(w.train_time, 1e-9),
            "train_seconds": w.train_time,
            "rows_consumed": float(w.step * cfg.grad_accum * cfg.batch_size * w.world),
            "tokens": float(w.step * tokens_per_step),
            "resumed_from_step": float(w.start_step),
        }
    )


def evaluate(engine: Any, rows: Any, batch_size: int, device: Any) -> dict[str, float]:
    """Held-out next-token loss and perplexity, summed over all ranks."""
    import torch
    import torch.distributed as dist

    engine.eval()
    acc = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids = torch.as_tensor(rows[i : i + batch_size], dtype=torch.long, device=device)
            logits = engine(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            acc += torch.stack([nll.double(), torch.tensor(ids[:, 1:].numel(), device=device)])
    if dist.is_initialized():
        dist.all_reduce(acc)
    engine.train()
    loss = float(acc[0] / acc[1].clamp_min(1))
    return {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 50.0))}


def finish_step(w: Worker) -> None:
    """Held-out eval, MLflow (rank 0), Ray checkpoint; the export after the last step."""
    import ray.train
    from ray.train import Checkpoint

    cfg, spec = w.spec.cfg, w.spec
    final = w.step == spec.total_steps
    if len(w.heldout) and (final or (cfg.eval_every and w.step % cfg.eval_every == 0)):
        w.last.update(evaluate(w.engine, w.heldout, cfg.batch_size, w.device))
    if w.log is not None:
        w.log(w.last, w.step)
    if not (final or (cfg.checkpoint_every and w.step % cfg.checkpoint_every == 0)):
        return
    if final:
        export(w)
    tmp = tempfile.mkdtemp(prefix=f"distill-ckpt-r{w.rank}-")
    w.engine.save_checkpoint(tmp, tag="state", client_state={"step": w.step})
    ray.train.report(
        {**w.last, "step": w.step},
        checkpoint=Checkpoint.from_directory(tmp),
        checkpoint_dir_name=f"checkpoint-step{w.step:07d}",  # one merged dir for all ranks
    )
    shutil.rmtree(tmp, ignore_errors=True)


def export(w: Worker) -> None:
    from distill.train.engine import export_student

    spec = w.spec
    student = w.engine.module.student
    export_student(w.engine, student, Path(spec.out_dir), Path(spec.student_path), w.rank)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = LoopSpec.model_validate(config)
    cfg = spec.cfg
    import ray.train

    from distill.train.engine import setup_worker_env

    ctx = ray.train.get_context()
    setup_worker_env(cfg.use_gpu, int(max(cfg.cpus_per_worker, 1)))
    import torch

    from distill.models.loader import ensure_offline

    ensure_offline()
    if cfg.use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cpu")
    w = Worker(spec, ctx.get_world_rank(), ctx.get_world_size(), device)
    build(w)
    restore(w)
    data(w)
    w.log = _mlflow_logger(spec.tracking) if w.rank == 0 else None
    while w.step < spec.total_steps:
        train_step(w)
        finish_step(w)
    if w.start_step >= spec.total_steps:  # resumed after the final checkpoint: export again
        export(w)
        ray.train.report({"step": w.step, **w.last})
