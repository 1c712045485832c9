"""``train_loop_per_worker``: one DeepSpeed rank of a Ray Train distillation run.

Everything arrives through the config argument (a ``LoopSpec`` as a dict); nothing is read from
globals. ``distill.train.launch.launch(spec)`` starts it on a ``TorchTrainer``::

    launch(LoopSpec(cfg=DistillConfig(mode="online"), student_path=..., ...), run_name="x")

The worker runs named phases: ``build`` (models, DeepSpeed engine), ``restore`` (the step of
the last Ray checkpoint), ``data`` (this rank's batches), then per step ``train_step`` (on an
on-policy step first the student's rollouts, ``distill.train.rollout``; then forward, fused
loss, backward, optimizer) and ``finish_step`` (metrics, held-out eval, MLflow on rank 0,
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

from pydantic import Field, model_validator

from distill.config.base import StrictModel
from distill.data.packed import read_rows
from distill.losses import FeatureLoss, LossWeights, total_loss
from distill.models.loader import ensure_offline
from distill.seqkd.sft_data import read_sft_rows
from distill.train.config import DistillConfig
from distill.train.data import Batches, heldout_shard, label_positions, open_store, sft_columns
from distill.train.engine import (
    DistillModule,
    build_ds_config,
    export_student,
    head_weight,
    lr_lambda,
    setup_worker_env,
)
from distill.train.fakequant import load_fake_quant, pack_gptq
from distill.train.rollout import is_on_policy, sample, step_generator
from distill.train.teacher import LocalTeacher, RemoteTeacher

PART_NAMES = ("loss", "ce", "kd", "feature", "attention")
FAIL_ENV = "DISTILL_FAIL_AT_STEP"  # tests: "<step>:<marker prefix>" raises once per rank


class LoopSpec(StrictModel):
    """What one worker needs, JSON-serializable (it travels as ``train_loop_config``)."""

    cfg: DistillConfig
    student_path: str = Field(..., description="HF dir the student starts from")
    teacher_path: str | None = Field(
        None, description="online mode / on-policy steps: the live teacher"
    )
    teacher_actor: str | None = Field(
        None, description="teacher_placement actor: name prefix of the per-node teacher actors"
    )
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
    fake_quant: bool = Field(
        False,
        description="student_path is a GPTQ checkpoint: train it on its int4 grid "
        "(distill.train.fakequant: STE, scales trainable) and export it repacked as GPTQ",
    )

    @model_validator(mode="after")
    def _check(self) -> LoopSpec:
        cfg = self.cfg
        if cfg.needs_teacher and not self.teacher_path:
            why = "mode online" if cfg.mode == "online" else "distill.on_policy.lmbda > 0"
            raise ValueError(f"{why} needs the live teacher: teacher_path is not set")
        if cfg.on_policy.lmbda > 0 and cfg.on_policy.prompt_tokens >= self.seq_len:
            raise ValueError(
                f"distill.on_policy.prompt_tokens ({cfg.on_policy.prompt_tokens}) must be below "
                f"the rows' seq_len ({self.seq_len})"
            )
        return self


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
    on_policy_weights: Any = None
    stop_ids: list[int] = field(default_factory=list)
    pad_id: int = 0
    source: Any = None
    heldout: Any = None
    sft_columns: dict | None = None
    step: int = 0
    start_step: int = 0
    train_time: float = 0.0  # training clock of the whole run (restored on resume)
    attempt_time: float = 0.0  # ... of this attempt (the tokens/s denominator)
    tokens: float = 0.0  # tokens the training forwards saw, all ranks, whole run
    attempt_tokens: float = 0.0
    rollout_time: float = 0.0  # seconds sampling on-policy completions, mean over ranks
    rollout_tokens: float = 0.0  # tokens sampled, all ranks
    on_policy_steps: int = 0
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

    cfg, spec = w.spec.cfg, w.spec
    torch.manual_seed(cfg.seed)
    eager = {"attn_implementation": "eager"} if cfg.attention.weight else {}
    if spec.fake_quant:
        student = load_fake_quant(Path(spec.student_path)).train()
    else:
        student = AutoModelForCausalLM.from_pretrained(
            spec.student_path, dtype=torch.float32, local_files_only=True, **eager
        )
    if cfg.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)
    if cfg.needs_teacher:
        w.teacher = load_teacher(spec, w.device, eager=bool(eager))
    w.stop_ids, w.pad_id = stop_ids(student)
    feature = None
    if cfg.feature.weight:
        t_hidden = w.teacher.hidden_size
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
    div = cfg.on_policy_divergence()
    w.on_policy_weights = LossWeights(  # no CE: the targets are the student's own samples
        ce=0.0, kd=cfg.loss.kd_weight, name=div.name, temperature=div.temperature, param=div.param()
    )


def load_teacher(spec: LoopSpec, device: Any, eager: bool = False) -> Any:
    """The live teacher: a copy in this worker, or the teacher actor on this node."""

    cfg = spec.cfg
    path = spec.teacher_path or ""
    if cfg.teacher_placement == "actor":
        prefix = spec.teacher_actor or "distill-teacher"
        return RemoteTeacher.for_this_node(prefix, path, cfg, device)
    return LocalTeacher.load(path, cfg.compute_dtype, device, eager)


def stop_ids(model: Any) -> tuple[list[int], int]:
    """The student's stop tokens (generation config and model config) and its pad id."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None:
        pad = min(ids) if ids else 0
    return sorted(ids), int(pad)


def restore(w: Worker) -> None:
    """Continue from the last Ray checkpoint (same data positions, optimizer and LR state)."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            _, client_state = w.engine.load_checkpoint(d, tag="state")
        state = client_state or {}
        w.step = int(state.get("step", 0))
        w.train_time = float(state.get("train_seconds", 0.0))
        w.tokens = float(state.get("tokens", w.step * w.spec.cfg.tokens_per_step(w.spec.seq_len)))
        w.rollout_time = float(state.get("rollout_seconds", 0.0))
        w.rollout_tokens = float(state.get("rollout_tokens", 0.0))
        w.on_policy_steps = int(state.get("on_policy_steps", 0))
    w.start_step = w.step


def client_state(w: Worker) -> dict[str, float]:
    """What a checkpoint carries besides the engine state (``restore`` reads it back)."""
    return {
        "step": w.step,
        "train_seconds": w.train_time,
        "tokens": w.tokens,
        "rollout_seconds": w.rollout_time,
        "rollout_tokens": w.rollout_tokens,
        "on_policy_steps": w.on_policy_steps,
    }


def data(w: Worker) -> None:
    """This rank's training batches and held-out rows."""
    import numpy as np

    cfg, spec = w.spec.cfg, w.spec
    kw = {"shuffle": cfg.shuffle, "seed": cfg.seed}
    if cfg.mode == "offline":
        store = open_store(Path(spec.store_path or ""))
        w.source = Batches.for_store(store, cfg.batch_size, w.rank, w.world, **kw)
    elif cfg.mode == "sft":
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

    order = w.source.order
    first = w.step * cfg.grad_accum
    rows = [order.rows(first + j) for j in range(cfg.grad_accum)]
    total = sum(label_positions(w.sft_columns, r) for r in rows)
    return max(total, 1) / (w.world * cfg.grad_accum)


def rollouts(w: Worker) -> tuple[list[dict[str, Any]], float, float]:
    """The student's samples for every micro-batch of this (on-policy) step: prompts are the
    first ``prompt_tokens`` of the step's rows. Returns the batches, the step's denominator
    (generated positions, as ``step_denominator``) and the seconds spent sampling."""
    import torch
    import torch.distributed as dist

    cfg, op = w.spec.cfg, w.spec.cfg.on_policy
    t0 = time.perf_counter()
    out = []
    for j in range(cfg.grad_accum):
        m = w.step * cfg.grad_accum + j
        prompts = w.source.get(m)["input_ids"][:, : op.prompt_tokens].to(w.device)
        gen = step_generator(cfg.seed, w.step, w.rank, j, w.device)
        roll = sample(
            w.engine.module.student,
            prompts,
            op.max_new_tokens,
            op.temperature,
            w.stop_ids,
            w.pad_id,
            gen,
        )
        out.append(
            {
                "input_ids": roll.input_ids,
                "attention_mask": roll.attention_mask,
                "labels": roll.labels,
            }
        )
    seconds = time.perf_counter() - t0
    count = torch.tensor(
        [sum(float((b["labels"][:, 1:] != -100).sum()) for b in out)], dtype=torch.float64
    )
    if dist.is_initialized():
        dist.all_reduce(count)
    return out, max(float(count[0]), 1.0) / (w.world * cfg.grad_accum), seconds


def micro_step(
    w: Worker, batch: dict[str, Any], denominator: float, on_policy: bool = False
) -> list[float]:
    """Forward, fused loss and backward of one micro-batch; returns logged parts."""

    cfg, dev = w.spec.cfg, w.device
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
    if w.teacher is not None and (on_policy or cfg.mode == "online"):
        t_out, t_head = w.teacher(ids, am, head is not None, **fwd_kw)
    stored = {k: v.to(dev) for k, v in batch.items() if k not in ("input_ids", "labels")}
    s_out = w.engine(head=head is None, input_ids=ids, attention_mask=am, **fwd_kw)
    loss, parts = total_loss(
        w.on_policy_weights if on_policy else w.weights,
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
    on_policy = is_on_policy(w.step, cfg.on_policy.lmbda)
    first = w.step * cfg.grad_accum
    if on_policy:
        batches, denominator, gen_s = rollouts(w)
        tokens = sum(float(b["attention_mask"].sum()) for b in batches)
        sampled = sum(float((b["labels"] != -100).sum()) for b in batches)
    else:
        batches = [w.source.get(first + j) for j in range(cfg.grad_accum)]
        denominator, gen_s, sampled = step_denominator(w), 0.0, 0.0
        tokens = float(cfg.grad_accum * cfg.batch_size * w.spec.seq_len)
    acc = torch.zeros(len(PART_NAMES), dtype=torch.float64)
    for batch in batches:
        acc += torch.tensor(micro_step(w, batch, denominator, on_policy))
    w.step += 1
    step_s = time.perf_counter() - t0
    # [parts..., tokens, sampled tokens, sampling seconds, step seconds (max over ranks)]
    counts = torch.tensor([tokens, sampled, gen_s], dtype=torch.float64)
    slowest = torch.tensor([step_s], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(acc)
        dist.all_reduce(counts)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    acc /= cfg.grad_accum * w.world
    w.train_time += float(slowest[0])
    w.attempt_time += float(slowest[0])
    w.tokens += float(counts[0])
    w.attempt_tokens += float(counts[0])
    w.rollout_tokens += float(counts[1])
    w.rollout_time += float(counts[2]) / w.world
    w.on_policy_steps += int(on_policy)
    w.last = {f"train/{n}": float(v) for n, v in zip(PART_NAMES, acc.tolist(), strict=True)}
    w.last.update(
        {
            "lr": float(w.engine.get_lr()[0]),
            "tokens_per_s": w.attempt_tokens / max(w.attempt_time, 1e-9),
            "train_seconds": w.train_time,
            "rows_consumed": float(w.step * cfg.grad_accum * cfg.batch_size * w.world),
            "tokens": w.tokens,
            "resumed_from_step": float(w.start_step),
            "on_policy": float(on_policy),
            "on_policy_steps": float(w.on_policy_steps),
            "rollout_seconds": w.rollout_time,
            "rollout_tokens": w.rollout_tokens,
            "rollout_tokens_per_s": w.rollout_tokens / max(w.rollout_time, 1e-9),
        }
    )


def out_of_budget(w: Worker) -> bool:
    """Past ``max_steps`` (the planned steps) or past the ``max_seconds`` training clock.

    ``train_time`` is the slowest rank's step time summed, the same on every rank."""
    cfg = w.spec.cfg
    if w.step >= w.spec.total_steps:
        return True
    return cfg.max_seconds is not None and w.train_time >= cfg.max_seconds


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

    cfg = w.spec.cfg
    final = out_of_budget(w)
    if len(w.heldout) and (final or (cfg.eval_every and w.step % cfg.eval_every == 0)):
        w.last.update(evaluate(w.engine, w.heldout, cfg.batch_size, w.device))
    if w.log is not None:
        w.log(w.last, w.step)
    if not (final or (cfg.checkpoint_every and w.step % cfg.checkpoint_every == 0)):
        return
    if final:
        export(w)
    tmp = tempfile.mkdtemp(prefix=f"distill-ckpt-r{w.rank}-")
    w.engine.save_checkpoint(tmp, tag="state", client_state=client_state(w))
    ray.train.report(
        {**w.last, "step": w.step},
        checkpoint=Checkpoint.from_directory(tmp),
        checkpoint_dir_name=f"checkpoint-step{w.step:07d}",  # one merged dir for all ranks
    )
    shutil.rmtree(tmp, ignore_errors=True)


def export(w: Worker) -> None:
    spec = w.spec
    student = w.engine.module.student
    if spec.fake_quant:  # ZeRO 1/2 (the recover config refuses 3): every rank holds all weights
        if w.rank == 0:
            pack_gptq(student, Path(spec.student_path), Path(spec.out_dir))
        return
    export_student(w.engine, student, Path(spec.out_dir), Path(spec.student_path), w.rank)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = LoopSpec.model_validate(config)
    cfg = spec.cfg
    import ray.train

    ctx = ray.train.get_context()
    setup_worker_env(cfg.use_gpu, int(max(cfg.cpus_per_worker, 1)))
    import torch

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
    resumed_done = out_of_budget(w)
    while not out_of_budget(w):
        train_step(w)
        finish_step(w)
    if resumed_done:  # resumed after the final checkpoint: export again
        export(w)
        ray.train.report({"step": w.step, **w.last})
