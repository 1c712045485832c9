"""A model's confidence in its own answer, from its token distributions: what the serve cascade
decides on (``distill.serve.confidence``) and what evaluate records per answer
(``distill.eval.generation``), so both score the same way.

Pure functions (no Ray). Engines report, for every generated token, its raw log-probability and
the normalized entropy of the step's distribution (both from the *raw* logits, so the score does
not depend on the request's temperature / top_p); the cascade scores the first
``decide_after_tokens`` of them::

    conf = score(chunk.logprobs[:16], chunk.entropies[:16], "mean_logprob")   # in [0, 1]
    conf = score(chunk.logprobs[:16], chunk.entropies[:16], "quantile", quantile_q=0.25)

``quantile`` is Chow-Quantile (Gupta et al., "Language Model Cascades: Token-level uncertainty
and beyond", arXiv 2404.10136): the ``q``-th quantile of the token log-probs, as a probability.
A sequence mean lets many easy tokens hide one hard one; a low quantile does not, and it is less
brittle than the single minimum (``q = 0`` is ``min_prob``, ``q = 0.5`` the median).

``confidence(step_logits, token_ids, scoring)`` computes the same score from stacked logits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def token_logprobs(step_logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token: ``[steps]`` from ``[steps, vocab]`` logits."""
    import torch

    logp = torch.log_softmax(step_logits.float(), dim=-1)
    return logp.gather(-1, token_ids.long().view(-1, 1)).squeeze(-1)


def normalized_entropy(step_logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each step's distribution divided by log(vocab): ``[steps]`` in [0, 1]."""
    import torch

    logp = torch.log_softmax(step_logits.float(), dim=-1)
    p = logp.exp()
    ent = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    return ent / math.log(step_logits.shape[-1])


SCORINGS = ("mean_logprob", "min_prob", "entropy", "quantile")


DEFAULT_QUANTILE = 0.25


def quantile(values: list[float], q: float) -> float:
    """The ``q``-th quantile, linear between order statistics (numpy's default method)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def score(
    logprobs: list[float],
    entropies: list[float],
    scoring: str,
    quantile_q: float = DEFAULT_QUANTILE,
) -> float:
    """Confidence in [0, 1] from per-token log-probs and normalized entropies (1.0 if empty)."""
    if scoring not in SCORINGS:
        raise ValueError(
            f"unknown scoring {scoring!r}: use mean_logprob, min_prob, entropy or quantile"
        )
    if not 0.0 <= quantile_q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile_q}")
    if not logprobs:
        return 1.0
    if scoring == "mean_logprob":
        value = math.exp(sum(logprobs) / len(logprobs))
    elif scoring == "min_prob":
        value = math.exp(min(logprobs))
    elif scoring == "quantile":
        value = math.exp(quantile(logprobs, quantile_q))
    else:
        value = 1.0 - sum(entropies) / len(entropies)
    return min(1.0, max(0.0, value))


def confidence(
    step_logits: torch.Tensor,
    token_ids: torch.Tensor,
    scoring: str,
    quantile_q: float = DEFAULT_QUANTILE,
) -> float:
    """:func:`score` of a generation from its stacked raw logits ``[steps, vocab]``."""
    if step_logits.ndim != 2 or token_ids.ndim != 1 or step_logits.shape[0] != token_ids.shape[0]:
        raise ValueError(
            f"expected logits [steps, vocab] and ids [steps], got {tuple(step_logits.shape)} "
            f"and {tuple(token_ids.shape)}"
        )
    lps = token_logprobs(step_logits, token_ids).tolist() if token_ids.numel() else []
    ents = normalized_entropy(step_logits).tolist() if token_ids.numel() else []
    return score(lps, ents, scoring, quantile_q)
