"""Teacher targets over the stored top-k support, at any temperature.

Stored values are teacher log-probs at T=1. Since ``log p_i = z_i - logsumexp(z)``, log-probs and
logits differ by one constant per position, so ``softmax(z/T)`` restricted to the top-k ids is
exactly ``softmax(log p / T)`` over those ids. The rest of the vocabulary is one *tail bucket*
with mass ``1 - Σ top-k p`` (exact at T=1; at T≠1 the tail logits are unknown, so the target is
the exact distribution conditioned on the top-k support and the tail bucket gets zero mass).
"""

from __future__ import annotations

import torch


def tail_mass_from_logprobs(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """``1 - Σ exp(top-k log-probs)``, clamped to [0, 1]. Shape ``[..., k] -> [...]``."""
    return (1.0 - topk_logprobs.float().exp().sum(-1)).clamp(0.0, 1.0)


def topk_target_logprobs(
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
    tail_mass: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Teacher log-probs over ``k + 1`` buckets (top-k ids, then the tail), shape ``[..., k+1]``.

    T=1 with ``tail_mass``: the exact stored distribution. Otherwise: ``log_softmax(lp / T)`` over
    the top-k support with an (almost) empty tail bucket.
    """
    lp = topk_logprobs.float()
    if temperature == 1.0 and tail_mass is not None:
        tail = tail_mass.float().clamp_min(eps).log().unsqueeze(-1)
        return torch.cat([lp, tail], dim=-1)
    top = torch.log_softmax(lp / temperature, dim=-1)
    tail = torch.full_like(top[..., :1], torch.finfo(top.dtype).min / 4)
    return torch.cat([top, tail], dim=-1)


def student_bucket_logprobs(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Student log-probs at temperature T over the same ``k + 1`` buckets as the teacher target.

    ``student_logits [..., V]``, ``topk_ids [..., k]`` -> ``[..., k+1]``: the k gathered log-probs
    then ``log(1 - Σ)`` for everything outside the top-k support.
    """
    logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    top = logp.gather(-1, topk_ids.long())
    tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6)).unsqueeze(-1)
    return torch.cat([top, tail], dim=-1)
