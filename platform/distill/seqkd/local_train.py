"""Fallback SFT trainer: one process, AdamW, cross-entropy on pre-masked labels (``trainer=local``).

Used by the ``sft`` stage until the Ray Train + DeepSpeed loop in ``distill.train`` takes rows
with ``labels``; the stage tags its MLflow run ``trainer=local``::

    losses = train_local(model, rows, SFTConfig(steps=20), on_step=lambda s, m: print(s, m))
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from distill.seqkd.config import SFTConfig
from distill.seqkd.sft_data import IGNORE


def _batch(rows: dict[str, np.ndarray], idx: np.ndarray):
    import torch

    return {k: torch.as_tensor(v[idx], dtype=torch.long) for k, v in rows.items()}


def completion_loss(model, rows: dict[str, np.ndarray], batch_size: int = 4) -> float:
    """Mean cross-entropy over label tokens (completion tokens only), no grad."""
    import torch

    n = len(rows["input_ids"])
    if n == 0:
        return float("nan")
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            b = _batch(rows, np.arange(i, min(i + batch_size, n)))
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            labels = b["labels"][:, 1:]
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(ce)
            count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / max(count, 1)


def train_local(
    model,
    rows: dict[str, np.ndarray],
    cfg: SFTConfig,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 5,
) -> list[float]:
    """``cfg.steps`` AdamW steps over shuffled rows (epochs repeat); returns the step losses."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1))
    )
    n = len(rows["input_ids"])
    order = rng.permutation(n)
    pos = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if pos >= n:
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        b = _batch(rows, idx)
        loss = model(**b).loss  # HF shifts labels and ignores -100
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if on_step and (step % log_every == 0 or step == cfg.steps - 1):
            tokens = int(b["attention_mask"].sum())
            on_step(
                step,
                {
                    "train.loss": losses[-1],
                    "train.grad_norm": float(grad_norm),
                    "train.lr": sched.get_last_lr()[0],
                    "train.tokens_in_batch": float(tokens),
                    "train.elapsed_s": time.perf_counter() - t0,
                },
            )
    model.eval()
    return losses
