"""``train_loop_per_worker``: one DeepSpeed rank of a Ray Train distillation run.

Everything arrives through the config argument (a ``LoopSpec`` as a dict); nothing is read from
globals. ``distill.train.launch.launch(spec)`` starts it on a ``TorchTrainer``::

    launch(LoopSpec(cfg=DistillConfig(mode="online"), student_path=..., ...), run_name="x")
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from distill.config.base import StrictModel
from distill.train.config import DistillConfig


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
    fail_at_step: int | None = Field(None, description="tests: raise once at this step")
    fail_marker: str | None = Field(None, description="tests: marker file prefix for fail_at_step")


class DistillModule:
    """Factory for the module DeepSpeed wraps: the student plus trainable feature projections."""

    @staticmethod
    def build(student: Any, feature: Any | None):
        from torch import nn

        class _Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.student = student
                self.feature = feature

            def forward(self, **kw: Any) -> Any:
                return self.student(**kw)

        return _Wrapped()


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


def _evaluate(engine: Any, rows: Any, batch_size: int, device: Any) -> dict[str, float]:
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


def _maybe_fail(spec: LoopSpec, step: int, rank: int) -> None:
    if spec.fail_at_step is None or step != spec.fail_at_step or not spec.fail_marker:
        return
    marker = Path(f"{spec.fail_marker}.rank{rank}")
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure at step {step} on rank {rank} (first attempt)")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = LoopSpec.model_validate(config)
    cfg = spec.cfg
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    from distill.train.engine import setup_worker_env

    setup_worker_env(cfg.use_gpu, int(max(cfg.cpus_per_worker, 1)))
    import deepspeed
    import numpy as np
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint
    from transformers import AutoModelForCausalLM

    from distill.data.packed import read_rows
    from distill.losses import FeatureLoss, LossWeights, total_loss
    from distill.models.loader import ensure_offline
    from distill.train.data import (
        CorpusBatches,
        SFTBatches,
        StoreBatches,
        heldout_shard,
        open_store,
    )
    from distill.train.engine import build_ds_config, export_student, lr_lambda

    ensure_offline()
    torch.manual_seed(cfg.seed)
    if cfg.use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cpu")
    eager = {"attn_implementation": "eager"} if cfg.attention.weight else {}
    student = AutoModelForCausalLM.from_pretrained(
        spec.student_path, dtype=torch.float32, local_files_only=True, **eager
    )
    teacher = None
    if cfg.mode == "online":
        teacher = AutoModelForCausalLM.from_pretrained(
            spec.teacher_path,
            dtype=getattr(torch, cfg.compute_dtype),
            local_files_only=True,
            **eager,
        )
        teacher.to(device).eval().requires_grad_(False)
    feature = None
    if cfg.feature.weight:
        feature = FeatureLoss(
            cfg.feature.pairs,
            student.config.hidden_size,
            teacher.config.hidden_size,  # type: ignore[union-attr]
            cfg.feature.kind,
        )
    module = DistillModule.build(student, feature)
    sched_fn = lr_lambda(cfg.warmup_steps, spec.total_steps, cfg.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=build_ds_config(cfg, world),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched_fn),
    )

    step = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            _, client_state = engine.load_checkpoint(d, tag="state")
        step = int((client_state or {}).get("step", 0))

    if cfg.mode == "offline":
        source: Any = StoreBatches(
            open_store(Path(spec.store_path or "")), cfg.batch_size, rank, world
        )
    elif cfg.mode == "sft":
        from distill.seqkd.sft_data import read_sft_rows

        source = SFTBatches(read_sft_rows(Path(spec.sft_path or "")), cfg.batch_size, rank, world)
    else:
        source = CorpusBatches(read_rows(Path(spec.train_path or "")), cfg.batch_size, rank, world)
    heldout = np.zeros((0, spec.seq_len), dtype=np.int32)
    if spec.heldout_path:
        heldout = heldout_shard(read_rows(Path(spec.heldout_path)), cfg.eval_rows, rank, world)

    ce_w, kd_w = cfg.loss_weights()
    weights = LossWeights(
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
    fwd_kw = {
        "output_hidden_states": bool(cfg.feature.weight),
        "output_attentions": bool(cfg.attention.weight),
    }
    log = _mlflow_logger(spec.tracking) if rank == 0 else None
    rows_per_micro = cfg.batch_size * world
    tokens_per_step = rows_per_micro * cfg.grad_accum * spec.seq_len
    start_step, train_time = step, 0.0
    last: dict[str, float] = {}
    names = ("loss", "ce", "kd", "feature", "attention")
    while step < spec.total_steps:
        _maybe_fail(spec, step, rank)
        t0 = time.perf_counter()
        acc = torch.zeros(len(names), dtype=torch.float64)
        for j in range(cfg.grad_accum):
            batch = source.get(step * cfg.grad_accum + j)
            ids = batch["input_ids"].to(device)
            am = batch["attention_mask"].to(device) if "attention_mask" in batch else None
            am = torch.ones_like(ids) if am is None else am
            labels = batch["labels"].to(device) if "labels" in batch else None
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(input_ids=ids, attention_mask=am, **fwd_kw)
            topk = None
            if cfg.mode == "offline":
                topk = {
                    k: batch[k].to(device)
                    for k in ("topk_ids", "topk_logprobs", "tail_mass")
                    if k in batch
                }
            s_out = engine(input_ids=ids, attention_mask=am, **fwd_kw)
            loss, parts = total_loss(
                weights,
                s_out,
                ids,
                am,
                labels,
                teacher_out=t_out,
                topk=topk,
                feature_loss=engine.module.feature,
            )
            engine.backward(loss)
            engine.step()
            acc += torch.tensor(
                [float(loss.detach())] + [parts.get(n, 0.0) for n in names[1:]], dtype=torch.float64
            )
        step += 1
        train_time += time.perf_counter() - t0
        if dist.is_initialized():
            dist.all_reduce(acc)
        acc /= cfg.grad_accum * world
        last = {f"train/{n}": float(v) for n, v in zip(names, acc.tolist(), strict=True)}
        last.update(
            {
                "lr": float(engine.get_lr()[0]),
                "tokens_per_s": (step - start_step) * tokens_per_step / max(train_time, 1e-9),
                "rows_consumed": float(step * cfg.grad_accum * rows_per_micro),
                "tokens": float(step * tokens_per_step),
                "resumed_from_step": float(start_step),
            }
        )
        final = step == spec.total_steps
        if len(heldout) and (final or (cfg.eval_every and step % cfg.eval_every == 0)):
            last.update(_evaluate(engine, heldout, cfg.batch_size, device))
        if log is not None:
            log(last, step)
        if final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            if final:
                export_student(
                    engine, engine.module.student, Path(spec.out_dir), Path(spec.student_path), rank
                )
            tmp = tempfile.mkdtemp(prefix=f"distill-ckpt-r{rank}-")
            engine.save_checkpoint(tmp, tag="state", client_state={"step": step})
            ray.train.report(
                {**last, "step": step},
                checkpoint=Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint-step{step:07d}",  # one merged dir for all ranks
            )
            shutil.rmtree(tmp, ignore_errors=True)
    if start_step >= spec.total_steps:  # resumed after the final checkpoint: export again
        export_student(
            engine, engine.module.student, Path(spec.out_dir), Path(spec.student_path), rank
        )
        ray.train.report({"step": step, **last})
