"""Choosing the cascade's threshold from replayed prompts: quality-vs-fallback curves (pure).

For every held-out prompt we know the student's confidence after ``decide_after_tokens`` tokens
(per scoring method) and how well the student's whole answer agrees with the teacher's (greedy,
position by position). A threshold ``t`` sends the prompts with confidence below ``t`` to the
teacher (agreement 1: with ``takeover: prompt`` the teacher's answer is exactly its own) and keeps
the student's answer for the rest, so each threshold gives one (fallback rate, agreement) point::

    curve = tradeoff(confidences, agreements)            # points sorted by threshold
    choice = choose(curves, Target(min_agreement=0.9))   # lowest fallback meeting the target

``distill calibrate`` (:mod:`distill.serve.calibrate_run`) replays the prompts, picks on one half
and reports the other half, so the stated figures are not the ones the choice was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.config.base import DistillError


@dataclass(frozen=True)
class Point:
    threshold: float
    fallback_rate: float
    agreement: float  # mean token agreement of the cascade's answers with the teacher's
    exact: float  # share of answers identical to the teacher's


@dataclass(frozen=True)
class Target:
    """Either the agreement the cascade must keep, or the fallback rate it may not exceed."""

    min_agreement: float | None = None
    max_fallback: float | None = None

    def __post_init__(self) -> None:
        if (self.min_agreement is None) == (self.max_fallback is None):
            raise DistillError("give exactly one target: --target-agreement or --max-fallback")


@dataclass(frozen=True)
class Choice:
    scoring: str
    point: Point
    met: bool  # False: no threshold meets the target; the closest point is returned


def token_agreement(student: list[int], teacher: list[int]) -> float:
    """Share of the teacher's answer positions where the student wrote the same token."""
    if not teacher:
        return 1.0 if not student else 0.0
    same = sum(a == b for a, b in zip(student, teacher, strict=False))
    return same / max(len(teacher), len(student))


def evaluate(
    threshold: float, confidences: list[float], agreements: list[float], exact: list[bool]
) -> Point:
    """The cascade's fallback rate and agreement on these prompts at ``threshold``."""
    n = len(confidences)
    if n == 0:
        raise DistillError("no prompts to calibrate on")
    fallback = [threshold >= 1.0 or c < threshold for c in confidences]
    agree = sum(1.0 if f else a for f, a in zip(fallback, agreements, strict=True)) / n
    ex = sum(1.0 if f else float(e) for f, e in zip(fallback, exact, strict=True)) / n
    return Point(threshold, sum(fallback) / n, agree, ex)


def tradeoff(confidences: list[float], agreements: list[float], exact: list[bool]) -> list[Point]:
    """One point per distinct threshold (each observed confidence, plus 0 and 1)."""
    thresholds = sorted({0.0, 1.0, *(round(c, 6) for c in confidences)})
    return [evaluate(t, confidences, agreements, exact) for t in thresholds]


def choose(curves: dict[str, list[Point]], target: Target) -> Choice:
    """The scoring method and threshold that meet ``target`` best.

    ``min_agreement``: the lowest fallback rate reaching it (ties: higher agreement);
    ``max_fallback``: the highest agreement within it (ties: lower fallback). When nothing meets
    the target, the point closest to it, with ``met=False``.
    """
    best: tuple[tuple, str, Point, bool] | None = None
    for scoring, points in curves.items():
        for p in points:
            if target.min_agreement is not None:
                met = p.agreement >= target.min_agreement - 1e-12
                key = (not met, p.fallback_rate if met else -p.agreement, -p.agreement)
            else:
                met = p.fallback_rate <= target.max_fallback + 1e-12  # type: ignore[operator]
                key = (not met, -p.agreement if met else p.fallback_rate, p.fallback_rate)
            if best is None or key < best[0]:
                best = (key, scoring, p, met)
    if best is None:
        raise DistillError("no calibration points")
    return Choice(best[1], best[2], best[3])
