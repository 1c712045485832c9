"""The cascade's fallback decision on the student's confidence (scored by
:mod:`distill.confidence`). Pure functions (no Ray)::

    conf = score(chunk.logprobs[:16], chunk.entropies[:16], "mean_logprob")   # in [0, 1]
    decision = decide(conf, cascade)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.serve.config import CascadeConfig


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
