"""DeepSpeed pieces of the training loop: config, LR schedule, CPU setup, HF export, and the
module DeepSpeed wraps (student + feature projections; hidden states for the fused head loss).

``build_ds_config(cfg)`` is a plain dict (ZeRO stage, bf16 on GPU / fp32 on CPU, torch AdamW,
clipping, accumulation)::

    engine, *_ = deepspeed.initialize(model=m, config=build_ds_config(cfg, world_size=2), ...)
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

from distill.atomic import atomic_dir
from distill.models.files import copy_tokenizer_files
from distill.train.config import DistillConfig


def build_ds_config(cfg: DistillConfig, world_size: int) -> dict[str, Any]:
    bf16 = cfg.compute_dtype == "bfloat16"
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
                # Plain torch AdamW: no fused-Adam JIT compile (minutes on a CPU).
                "torch_adam": True,
            },
        },
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(total - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def setup_worker_env(use_gpu: bool, threads: int) -> None:
    """Before ``import deepspeed`` in a worker: CPU accelerator (gloo) and no shm-op compile."""
    import torch

    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(max(threads, 1))
        # DeepSpeed JIT-compiles a shared-memory comm op on CPU (a minute); gloo is enough.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def trained_state_dict(engine: Any, student: Any, rank: int) -> dict[str, Any]:
    """The trained weights in fp32 on rank 0 (``{}`` on other ranks).

    DeepSpeed's optimizer holds the fp32 master weights (partitioned under ZeRO); each one is
    assembled with ``safe_get_full_fp32_param``, one parameter at a time (a collective: every
    rank calls it in the same order) and only rank 0 keeps a CPU copy. Buffers are not
    partitioned. Tied weights appear once (``named_parameters`` deduplicates them).
    """
    import deepspeed
    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    zero3 = engine.zero_optimization_stage() == 3
    state: dict[str, Any] = {}
    for name, p in student.named_parameters():
        full = safe_get_full_fp32_param(p)
        if full is None:  # a parameter without optimizer state (frozen)
            ctx = deepspeed.zero.GatheredParameters([p], modifier_rank=None) if zero3 else _null()
            with ctx:
                full = p.data.clone() if rank == 0 else None
        if rank == 0:
            state[name] = full.detach().to(torch.float32).cpu().clone()
    if rank == 0:  # persistent buffers (tied parameter aliases are Parameters: skipped)
        for name, v in student.state_dict(keep_vars=True).items():
            if not isinstance(v, torch.nn.Parameter):
                state[name] = v.detach().to(torch.float32).cpu().clone()
    return state


def export_student(engine: Any, student: Any, out_dir: Path, source_dir: Path, rank: int) -> None:
    """Write exactly the trained weights as a plain HF dir (fp32 safetensors + tokenizer), temp
    name + rename. Every rank must call this (the weights are assembled collectively); rank 0
    writes."""
    import torch

    state = trained_state_dict(engine, student, rank)
    if rank != 0:
        return
    student.config.dtype = torch.float32
    with atomic_dir(Path(out_dir)) as tmp:
        student.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        copy_tokenizer_files(source_dir, tmp)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


class DistillModule:
    """Factory for the module DeepSpeed wraps: the student plus trainable feature projections.

    ``forward(head=False)`` returns the decoder's hidden states only (the fused loss applies the
    LM head chunk by chunk); ``head=True`` the usual causal-LM output with logits.
    """

    @staticmethod
    def build(student: Any, feature: Any | None):
        from torch import nn

        class _Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.student = student
                self.feature = feature

            def forward(self, head: bool = True, **kw: Any) -> Any:
                return self.student(**kw) if head else self.student.base_model(**kw)

        return _Wrapped()


def head_weight(model: Any) -> Any | None:
    """The LM head weight when ``logits = hidden @ Wᵀ`` exactly (no bias, softcap or scale),
    else None (the loss then uses the model's own logits)."""
    cfg = model.config
    out = model.get_output_embeddings()
    if out is None or getattr(out, "bias", None) is not None:
        return None
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            return None
    return out.weight
