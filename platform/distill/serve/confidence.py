"""Student confidence from its own token distributions, and the fallback decision.

Pure functions (torch only, no Ray) used by the Student deployment::

    conf = confidence(step_logits, token_ids, "mean_logprob")   # in [0, 1]
    use_teacher = should_fall_back(conf, cascade)

``step_logits`` are the model's *raw* next-token logits for each generated token
(``generate(..., output_logits=True, return_dict_in_generate=True).logits`` stacked), so the score
does not depend on the request's temperature / top_p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from distill.serve.config import CascadeConfig


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


def confidence(step_logits: torch.Tensor, token_ids: torch.Tensor, scoring: str) -> float:
    """Confidence in [0, 1] of a generation (1.0 when nothing was generated)."""
    if step_logits.ndim != 2 or token_ids.ndim != 1 or step_logits.shape[0] != token_ids.shape[0]:
        raise ValueError(
            f"expected logits [steps, vocab] and ids [steps], got {tuple(step_logits.shape)} "
            f"and {tuple(token_ids.shape)}"
        )
    if token_ids.numel() == 0:
        return 1.0
    if scoring == "mean_logprob":
        value = float(token_logprobs(step_logits, token_ids).mean().exp())
    elif scoring == "min_prob":
        value = float(token_logprobs(step_logits, token_ids).min().exp())
    elif scoring == "entropy":
        value = 1.0 - float(normalized_entropy(step_logits).mean())
    else:
        raise ValueError(f"unknown scoring {scoring!r}: use mean_logprob, min_prob or entropy")
    return min(1.0, max(0.0, value))


def should_fall_back(conf: float, cascade: CascadeConfig) -> bool:
    """The teacher answers when fallback is on and the student's confidence is below threshold.

    A threshold of 0 never falls back; a threshold of 1 always does (confidence 1.0 included).
    """
    if not cascade.fallback:
        return False
    if cascade.threshold >= 1.0:
        return True
    return conf < cascade.threshold


@dataclass(frozen=True)
class Decision:
    """Which model answers a cascade request and why."""

    answered_by: str  # "student" | "teacher"
    fallback: bool
    reason: str  # "confident" | "low_confidence" | "student_error" | "fallback_disabled"


def decide(conf: float | None, cascade: CascadeConfig, student_failed: bool = False) -> Decision:
    """The cascade's choice given the student's confidence (None when the student failed)."""
    if student_failed or conf is None:
        if cascade.fallback_on_error:
            return Decision("teacher", True, "student_error")
        raise RuntimeError("the student failed and fallback_on_error is off")
    if not cascade.fallback:
        return Decision("student", False, "fallback_disabled")
    if should_fall_back(conf, cascade):
        return Decision("teacher", True, "low_confidence")
    return Decision("student", False, "confident")
