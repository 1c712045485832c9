"""Held-out completion loss: mean cross-entropy over the completion tokens of SFT rows.

The ``sft`` stage reports it before and after training (``heldout.completion_loss_before`` /
``_after``); the training itself runs on Ray Train + DeepSpeed (``distill.train``, ``mode: sft``)::

    loss = completion_loss(model, rows, batch_size=4)   # rows: input_ids, attention_mask, labels
"""

from __future__ import annotations

import numpy as np

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
