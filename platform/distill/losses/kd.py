"""Logit distillation losses: a registry of divergences, on full or top-k teacher distributions.

Every divergence takes student and teacher log-probs over the same support ``[..., C]`` (the full
vocabulary, or the ``k`` / ``k + 1`` buckets of a stored top-k target) and returns one value per
position ``[...]``. ``kd_full`` and ``kd_topk`` add the temperature (both sides at ``T``, loss
times ``T²``) and the mask::

    from distill.losses import kd_full
    loss = kd_full(student_logits, teacher_logits, mask, "skew_forward_kl", temperature=2.0)

Top-k targets at ``T = 1`` with a tail mass use ``k + 1`` buckets (top-k ids, then the rest of the
vocabulary as one bucket), which is exact. At ``T != 1`` (or without a tail mass) the tail's
logits are unknown, so teacher *and* student are conditioned on the top-k support (both
renormalized over the ``k`` ids). With ``k = V`` both forms equal the full-vocabulary loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from distill.losses.targets import student_bucket_logprobs, topk_target_logprobs

Divergence = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _kl(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b) = Σ a (log a - log b)`` over the last dim (0·log 0 counts as 0)."""
    a = logp_a.exp()
    return torch.where(a > 0, a * (logp_a - logp_b), torch.zeros_like(a)).sum(-1)


def _mix(logp_a: torch.Tensor, logp_b: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w·a + (1 - w)·b)`` computed in log space."""
    w = float(min(max(w, 1e-12), 1 - 1e-12))
    return torch.logaddexp(logp_a + math.log(w), logp_b + math.log1p(-w))


def forward_kl(s: torch.Tensor, t: torch.Tensor, _: float = 0.0) -> torch.Tensor:
    """``KL(p_T || p_S)``: mean-seeking, the classic Hinton KD loss."""
    return _kl(t, s)


def reverse_kl(s: torch.Tensor, t: torch.Tensor, _: float = 0.0) -> torch.Tensor:
    """``KL(p_S || p_T)``: mode-seeking (MiniLLM)."""
    return _kl(s, t)


def jsd(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized JSD (GKD): ``β·KL(p_T || m) + (1-β)·KL(p_S || m)``, ``m = β·p_T + (1-β)·p_S``."""
    m = _mix(t, s, beta)
    return beta * _kl(t, m) + (1 - beta) * _kl(s, m)


def skew_forward_kl(s: torch.Tensor, t: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM skew KL: ``KL(p_T || α·p_T + (1-α)·p_S)``."""
    return _kl(t, _mix(t, s, alpha))


def skew_reverse_kl(s: torch.Tensor, t: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM skew reverse KL: ``KL(p_S || (1-α)·p_T + α·p_S)``."""
    return _kl(s, _mix(s, t, alpha))


def total_variation(s: torch.Tensor, t: torch.Tensor, _: float = 0.0) -> torch.Tensor:
    """``½ Σ |p_T - p_S|``."""
    return 0.5 * (t.exp() - s.exp()).abs().sum(-1)


# name -> (divergence, default parameter). The parameter is β for jsd, α for the skew losses.
LOSSES: dict[str, tuple[Divergence, float]] = {
    "forward_kl": (forward_kl, 0.0),
    "reverse_kl": (reverse_kl, 0.0),
    "jsd": (jsd, 0.5),
    "skew_forward_kl": (skew_forward_kl, 0.1),
    "skew_reverse_kl": (skew_reverse_kl, 0.1),
    "tv": (total_variation, 0.0),
}


def get_loss(name: str) -> tuple[Divergence, float]:
    if name not in LOSSES:
        raise KeyError(f"unknown KD loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (0 when none is)."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def divergence(
    name: str, s_logp: torch.Tensor, t_logp: torch.Tensor, param: float | None = None
) -> torch.Tensor:
    fn, default = get_loss(name)
    return fn(s_logp, t_logp, default if param is None else param)


def kd_full(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None,
    name: str = "forward_kl",
    temperature: float = 1.0,
    param: float | None = None,
) -> torch.Tensor:
    """KD loss against a full-vocabulary teacher: ``T² · mean_masked D(p_T^T, p_S^T)``."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student vocab {student_logits.shape[-1]} != teacher vocab {teacher_logits.shape[-1]}"
        )
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * masked_mean(divergence(name, s, t, param), mask)


def topk_logprob_pair(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_mass: torch.Tensor | None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) log-probs over the support a top-k target defines (see module doc)."""
    if temperature == 1.0 and tail_mass is not None:
        t = topk_target_logprobs(topk_logprobs, 1.0, tail_mass)
        s = student_bucket_logprobs(student_logits, topk_ids, 1.0)
        return s, t
    t = topk_target_logprobs(topk_logprobs, temperature)[..., :-1]
    gathered = student_logits.float().gather(-1, topk_ids.long())
    return torch.log_softmax(gathered / temperature, dim=-1), t


def kd_topk(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_mass: torch.Tensor | None,
    mask: torch.Tensor | None,
    name: str = "forward_kl",
    temperature: float = 1.0,
    param: float | None = None,
) -> torch.Tensor:
    """KD loss against a stored top-k target (``topk_* [..., k]``, ``tail_mass [...]``)."""
    s, t = topk_logprob_pair(student_logits, topk_ids, topk_logprobs, tail_mass, temperature)
    return temperature**2 * masked_mean(divergence(name, s, t, param), mask)


def hard_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Next-token cross-entropy on aligned tensors: ``logits[..., t, :]`` predicts ``labels[..., t]``.

    Positions where ``mask`` is false or the label is -100 do not count.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    valid = labels != -100
    if mask is not None:
        valid = valid & mask.bool()
    nll = -logp.gather(-1, labels.clamp_min(0).long().unsqueeze(-1)).squeeze(-1)
    return masked_mean(nll, valid)


def shift_for_next_token(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [B, L-1], mask [B, L-1])`` for positions ``0..L-2`` (position t predicts t+1).

    A position counts when its input token is real (``attention_mask[t] = 1``) and its target is
    neither padding (``attention_mask[t+1] = 0``) nor ignored (``labels[t+1] = -100``).
    """
    targets = (labels if labels is not None else input_ids)[:, 1:]
    mask = targets != -100
    if attention_mask is not None:
        am = attention_mask.bool()
        mask = mask & am[:, :-1] & am[:, 1:]
    return targets, mask
