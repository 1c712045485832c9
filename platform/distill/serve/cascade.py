"""The cascade: ask the student, keep its answer if confident, else ask the teacher.

Independent of Ray: the Router passes two async callables (deployment handle calls), so the
decision logic is unit-tested with plain coroutines::

    outcome = await run_cascade("cascade", call_student, call_teacher, cascade_cfg)
    outcome.generation["text"], outcome.info["answered_by"]
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from distill.serve.confidence import decide
from distill.serve.config import CascadeConfig

log = logging.getLogger(__name__)
Call = Callable[[], Awaitable[dict[str, Any]]]


class RequestFailed(Exception):
    """A request that ends with an HTTP error (``status``) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Outcome:
    generation: dict[str, Any]  # engine.Generation as a dict
    info: dict[str, Any]  # schemas.DistillInfo fields
    model_ms: dict[str, float]


def _unwrap(reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        raise RequestFailed(int(reply.get("status", 400)), str(reply["error"]))
    return reply["ok"]


async def run_cascade(
    route: str, call_student: Call, call_teacher: Call, cascade: CascadeConfig
) -> Outcome:
    """Answer on ``route`` ('cascade' | 'student' | 'teacher')."""
    base = {"scoring": cascade.scoring, "threshold": cascade.threshold}
    if route == "teacher":
        gen = _unwrap(await call_teacher())
        info = {"answered_by": "teacher", "confidence": None, "fallback": False, "reason": "pinned"}
        return Outcome(gen, {**info, **base}, {"teacher": gen["latency_ms"]})
    student_gen: dict[str, Any] | None = None
    try:
        student_gen = _unwrap(await asyncio.wait_for(call_student(), cascade.student_timeout_s))
    except RequestFailed:
        raise  # the request itself is bad: the teacher would refuse it too
    except TimeoutError as e:
        err: Exception = e
        log.warning("student timed out after %.1f s", cascade.student_timeout_s)
    except Exception as e:  # a crashed replica or generation error
        err = e
        log.warning("student failed: %s: %s", type(e).__name__, e)
    if student_gen is None:
        if route == "student" or not cascade.fallback_on_error:
            raise RequestFailed(503, f"the student failed ({type(err).__name__}) {err}")
        conf = None
    else:
        conf = student_gen["scores"][cascade.scoring]
    model_ms = {"student": student_gen["latency_ms"]} if student_gen else {}
    if route == "student":
        info = {"answered_by": "student", "confidence": conf, "fallback": False, "reason": "pinned"}
        return Outcome(student_gen, {**info, **base}, model_ms)  # type: ignore[arg-type]
    decision = decide(conf, cascade, student_failed=student_gen is None)
    info = {"confidence": conf, "fallback": decision.fallback, "reason": decision.reason, **base}
    if decision.answered_by == "student":
        return Outcome(student_gen, {"answered_by": "student", **info}, model_ms)  # type: ignore[arg-type]
    gen = _unwrap(await call_teacher())
    model_ms["teacher"] = gen["latency_ms"]
    return Outcome(gen, {"answered_by": "teacher", **info}, model_ms)
