"""The total distillation loss ``L = α·CE + β·KD + γ·feature + δ·attention``::

    spec = LossWeights(ce=0.1, kd=1.0, name="forward_kl", temperature=2.0)
    loss, parts = total_loss(spec, student_out, input_ids, attention_mask, teacher_logits=t_logits)

The teacher is either full logits (online) or a stored top-k target (``topk = {"topk_ids",
"topk_logprobs", "tail_mass"}``, offline). Position ``t`` predicts token ``t + 1``; padding and
``-100`` labels never count (see ``shift_for_next_token``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from distill.losses.features import FeatureLoss, attention_loss
from distill.losses.kd import hard_ce, kd_full, kd_topk, shift_for_next_token


@dataclass(frozen=True)
class LossWeights:
    """Weights and settings of each term; a term with weight 0 is not computed."""

    ce: float = 0.0
    kd: float = 1.0
    feature: float = 0.0
    attention: float = 0.0
    name: str = "forward_kl"
    temperature: float = 1.0
    param: float | None = None
    attention_kind: str = "kl"
    attention_pairs: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def total_loss(
    spec: LossWeights,
    student_out: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    teacher_out: Any | None = None,
    topk: dict[str, torch.Tensor] | None = None,
    feature_loss: FeatureLoss | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum and its parts (as floats, for logging)."""
    logits = student_out.logits[:, :-1]
    targets, mask = shift_for_next_token(input_ids, attention_mask, labels)
    parts: dict[str, torch.Tensor] = {}
    if spec.ce:
        parts["ce"] = hard_ce(logits, targets, mask)
    if spec.kd:
        if topk is not None:
            parts["kd"] = kd_topk(
                logits,
                topk["topk_ids"][:, :-1],
                topk["topk_logprobs"][:, :-1],
                topk["tail_mass"][:, :-1] if topk.get("tail_mass") is not None else None,
                mask,
                spec.name,
                spec.temperature,
                spec.param,
            )
        elif teacher_out is not None:
            t_logits = teacher_out.logits[:, :-1].detach()
            parts["kd"] = kd_full(logits, t_logits, mask, spec.name, spec.temperature, spec.param)
        else:
            raise ValueError("KD weight > 0 needs teacher logits (online) or a top-k target")
    # Feature / attention losses look at the input positions themselves: a real token counts.
    in_mask = attention_mask.bool() if attention_mask is not None else None
    if spec.feature:
        if feature_loss is None or teacher_out is None:
            raise ValueError("feature loss needs a live teacher and a FeatureLoss module")
        parts["feature"] = feature_loss(
            student_out.hidden_states, teacher_out.hidden_states, in_mask
        )
    if spec.attention:
        if teacher_out is None:
            raise ValueError("attention loss needs a live teacher")
        parts["attention"] = attention_loss(
            student_out.attentions,
            teacher_out.attentions,
            spec.attention_pairs,
            in_mask,
            spec.attention_kind,
        )
    weights = {"ce": spec.ce, "kd": spec.kd, "feature": spec.feature, "attention": spec.attention}
    loss = sum(
        (weights[k] * v for k, v in parts.items()), logits.new_zeros((), dtype=torch.float32)
    )
    return loss, {k: float(v.detach()) for k, v in parts.items()}
