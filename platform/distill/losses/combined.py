"""The total distillation loss ``L = α·CE + β·KD + γ·feature + δ·attention``::

    spec = LossWeights(ce=0.1, kd=1.0, name="forward_kl", temperature=2.0)
    loss, parts = total_loss(spec, student_out, input_ids, attention_mask, teacher_out=t_out)
    loss, parts = total_loss(spec, hidden_out, ids, head=lm_head.weight, sampled=batch_targets)

CE and KD come from one fused, chunked pass over the LM head (``distill.losses.fused``): give
the student's ``last_hidden_state`` and the ``head`` weight (logits never materialized), or an
output with ``.logits``. The teacher is full logits / hidden states (online), a stored top-k
target (``topk = {"topk_ids", "topk_logprobs", "tail_mass"}``) or a sampled one
(``sampled = {"sample_ids", "sample_weights", "entropy"}``), offline. Position ``t`` predicts
token ``t + 1``; padding and ``-100`` labels never count (see ``shift_for_next_token``). CE and
KD are sums over the counted positions divided by ``denominator`` (default: this batch's count;
the trainer passes the global count of the step, so uneven batches weigh by their tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from distill.losses.features import FeatureLoss, attention_loss
from distill.losses.fused import fused_head_loss
from distill.losses.kd import shift_for_next_token
from distill.losses.spec import LossTargets, LossWeights


def _positions(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x [B, L, ...]`` at the counted next-token positions → ``[P, ...]``."""
    return x[:, :-1][mask]


def _targets(
    spec: LossWeights,
    mask: torch.Tensor,
    targets: torch.Tensor,
    teacher_out: Any | None,
    teacher_head: torch.Tensor | None,
    topk: dict[str, torch.Tensor] | None,
    sampled: dict[str, torch.Tensor] | None,
):
    out = LossTargets(labels=targets[mask] if spec.ce else None)
    if not spec.kd:
        return out
    if sampled is not None:
        keys = ("sample_ids", "sample_weights", "entropy")
        out.sampled = tuple(_positions(sampled[k], mask) for k in keys)  # type: ignore[assignment]
    elif topk is not None:
        if topk.get("tail_mass") is None:
            raise ValueError("a top-k target needs its tail_mass (the k+1-bucket loss)")
        keys = ("topk_ids", "topk_logprobs", "tail_mass")
        out.topk = tuple(_positions(topk[k], mask) for k in keys)  # type: ignore[assignment]
    elif teacher_out is not None and teacher_head is not None:
        out.teacher = (_positions(teacher_out.last_hidden_state.detach(), mask), teacher_head)
    elif teacher_out is not None:
        out.teacher_logits = _positions(teacher_out.logits.detach(), mask)
    else:
        raise ValueError("KD weight > 0 needs teacher logits (online) or a top-k/sampled target")
    return out


def total_loss(
    spec: LossWeights,
    student_out: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    teacher_out: Any | None = None,
    topk: dict[str, torch.Tensor] | None = None,
    sampled: dict[str, torch.Tensor] | None = None,
    feature_loss: FeatureLoss | None = None,
    head: torch.Tensor | None = None,
    teacher_head: torch.Tensor | None = None,
    chunk: int = 256,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum and its parts (as floats, for logging; CE/KD per counted position)."""

    targets, mask = shift_for_next_token(input_ids, attention_mask, labels)
    denom = float(denominator) if denominator is not None else float(mask.sum().clamp_min(1))
    loss = input_ids.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    if spec.ce or spec.kd:
        tg = _targets(spec, mask, targets, teacher_out, teacher_head, topk, sampled)
        if head is not None:
            hidden = _positions(student_out.last_hidden_state, mask)
            head_sum, sums = fused_head_loss(hidden, head, tg, spec, chunk)
        else:
            logits = _positions(student_out.logits, mask)
            head_sum, sums = fused_head_loss(None, None, tg, spec, chunk, logits=logits)
        loss = loss + head_sum / denom
        parts.update({k: float(v) / denom for k, v in sums.items()})
    # Feature / attention losses look at the input positions themselves: a real token counts.
    in_mask = attention_mask.bool() if attention_mask is not None else None
    if spec.feature:
        if feature_loss is None or teacher_out is None:
            raise ValueError("feature loss needs a live teacher and a FeatureLoss module")
        feat = feature_loss(student_out.hidden_states, teacher_out.hidden_states, in_mask)
        loss = loss + spec.feature * feat
        parts["feature"] = float(feat.detach())
    if spec.attention:
        if teacher_out is None:
            raise ValueError("attention loss needs a live teacher")
        att = attention_loss(
            student_out.attentions,
            teacher_out.attentions,
            spec.attention_pairs,
            in_mask,
            spec.attention_kind,
        )
        loss = loss + spec.attention * att
        parts["attention"] = float(att.detach())
    return loss, parts
