"""Quality and speed metrics on held-out rows, for one model or several against a teacher.

All models see the same batches in one pass, so the teacher's logits are computed once per batch:

    evaluate_models({"teacher": t, "student": s}, rows, batch_size=4, reference="teacher")
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Acc:
    nll: float = 0.0
    correct: int = 0
    tokens: int = 0
    agree: int = 0
    kl: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def evaluate_models(
    models: Mapping[str, object],
    rows: np.ndarray,
    batch_size: int = 4,
    reference: str | None = None,
) -> dict[str, dict[str, float]]:
    """Per model: ``perplexity``, ``next_token_accuracy``; and against ``reference``:
    ``agreement`` (top-1 match rate) and ``kl_to_reference`` (mean KL(reference ‖ model), nats)."""
    import torch

    if len(rows) == 0:
        raise ValueError("no held-out rows to evaluate")
    acc = {name: _Acc() for name in models}
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids = torch.as_tensor(rows[i : i + batch_size], dtype=torch.long)
            labels = ids[:, 1:]
            ref = None if reference is None else _Reference(_logp(models[reference], ids))
            for name, model in models.items():
                logp = ref.logp if ref is not None and name == reference else _logp(model, ids)
                a = acc[name]
                a.nll += -logp.gather(-1, labels.unsqueeze(-1)).sum().item()
                pred = logp.argmax(-1)
                a.correct += (pred == labels).sum().item()
                a.tokens += labels.numel()
                if ref is not None and name != reference:
                    a.agree += (pred == ref.top1).sum().item()
                    a.kl += ref.kl_sum(logp)
    out: dict[str, dict[str, float]] = {}
    for name, a in acc.items():
        m = {
            "perplexity": math.exp(a.nll / a.tokens),
            "next_token_accuracy": a.correct / a.tokens,
            "eval_tokens": float(a.tokens),
        }
        if reference is not None and name != reference:
            m["agreement"] = a.agree / a.tokens
            m["kl_to_reference"] = a.kl / a.tokens
        out[name] = m
    return out


class _Reference:
    """The reference's log-probabilities of one batch and what every other model is compared
    with, computed once per batch instead of once per model: its top-1 and its probabilities."""

    def __init__(self, logp) -> None:
        self.logp = logp
        self.top1 = logp.argmax(-1)
        self.p = logp.exp()

    def kl_sum(self, logp) -> float:
        """KL(reference ‖ model) summed over the batch's positions, with torch's sums (a
        vocabulary dot product through einsum is faster but loses precision here)."""
        return (self.p * (self.logp - logp)).sum(-1).sum().item()


def _logp(model, ids):
    import torch

    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device)).logits[:, :-1].float().cpu()
    return torch.log_softmax(logits, dim=-1)


def forward_tokens_per_s(model, rows: np.ndarray, repeats: int = 2) -> float:
    """Forward-pass throughput (tokens/s) over ``rows`` as one batch, best of ``repeats``."""
    import torch

    device = next(model.parameters()).device
    ids = torch.as_tensor(rows, dtype=torch.long, device=device)
    best = math.inf
    with torch.no_grad():
        model(input_ids=ids[:, :8])  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return ids.numel() / best
