"""The cascade: the student starts; after its first tokens it keeps the answer or hands over.

Independent of Ray: the Router passes two stream openers (deployment handle calls), so the
decision logic is unit-tested with plain async generators::

    answer = await start_answer("cascade", open_student, open_teacher, cascade_cfg)
    answer.info["answered_by"]                  # known before the first byte is sent
    async for chunk in answer.chunks(): ...     # buffered tokens first, then live ones
    answer.final_info(), answer.usage()

With ``cascade.mode: speculative`` the cascade route is the teacher's engine decoding with the
student as its draft model (``distill.serve.speculative``): every answer is the teacher's.

On the cascade route the student generates its first ``decide_after_tokens`` tokens; their
confidence (``scoring``) decides. Confident: those tokens are sent and the student goes on.
Otherwise the student is cancelled and the teacher takes over, either from the prompt (the
student's tokens are dropped: ``takeover: prompt``) or continuing the student's tokens (kept in
the answer: ``takeover: prefix``). ``info["segments"]`` says which model wrote which tokens of the
answer and ``info["discarded_tokens"]`` how many student tokens were dropped. The pinned routes
(``-student`` / ``-teacher``) stream one model from its first token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from distill.confidence import score
from distill.serve.confidence import decide
from distill.serve.config import CascadeConfig

log = logging.getLogger(__name__)


class RequestFailed(Exception):
    """A request that ends with an HTTP error (``status``) and a message for the client."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Timeouts:
    first_token_s: float = 30.0
    total_s: float = 120.0


class ModelStream:
    """One model's generation as the Router consumes it: chunks under deadlines, then closed."""

    def __init__(self, model: str, gen: AsyncIterator[Any], timeouts: Timeouts) -> None:
        self.model = model
        self.gen = gen
        self.timeouts = timeouts
        self.t0 = time.perf_counter()
        self.t_end: float | None = None
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.text = ""
        self.finish: str | None = None
        self.prompt_tokens = 0
        self.drafted = 0  # speculative decoding: draft tokens verified, and kept
        self.accepted = 0
        self.closed = False

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def ms(self) -> float:
        return ((self.t_end or time.perf_counter()) - self.t0) * 1000

    async def next(self) -> Any | None:
        """The next chunk, or None at the end; raises RequestFailed(503) past a deadline."""
        if self.finish is not None or self.closed:
            return None
        if self.tokens == 0:
            limit, what = self.timeouts.first_token_s, "a first token"
        else:
            limit, what = self.timeouts.total_s - (time.perf_counter() - self.t0), "its answer"
        try:
            async with asyncio.timeout(max(0.0, limit)):
                chunk = await anext(self.gen)
        except StopAsyncIteration:
            self.t_end = time.perf_counter()
            return None
        except TimeoutError:
            await self.close()
            raise RequestFailed(
                503, f"the {self.model} did not produce {what} in time (server overloaded)"
            ) from None
        self.ids += chunk.token_ids
        self.logprobs += chunk.logprobs
        self.entropies += chunk.entropies
        self.text += chunk.text
        self.prompt_tokens = self.prompt_tokens or chunk.prompt_tokens
        self.drafted += getattr(chunk, "drafted", 0)
        self.accepted += getattr(chunk, "accepted", 0)
        if chunk.finish_reason:
            self.finish = chunk.finish_reason
            self.t_end = time.perf_counter()
        return chunk

    async def close(self) -> None:
        """Cancel the generation unless it finished (frees the replica's batch slot)."""
        if not self.closed:
            self.closed = True
            self.t_end = self.t_end or time.perf_counter()
            await self.gen.aclose()


Opener = Callable[[dict[str, Any] | None], ModelStream]


@dataclass
class Answer:
    """A decided answer: ``head`` chunks are ready, ``stream`` produces the rest."""

    route: str
    info: dict[str, Any]
    head: list[Any]
    stream: ModelStream
    opened: list[ModelStream]
    prefix_tokens: int = 0  # student tokens kept in the answer (takeover: prefix)
    segments: list[dict[str, Any]] = field(default_factory=list)

    async def chunks(self) -> AsyncIterator[Any]:
        for chunk in self.head:
            yield chunk
        while (chunk := await self.stream.next()) is not None:
            yield chunk

    @property
    def finish_reason(self) -> str | None:
        return self.stream.finish

    def usage(self) -> dict[str, int]:
        prompt = self.stream.prompt_tokens
        completion = self.prefix_tokens + self.stream.tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def final_info(self) -> dict[str, Any]:
        """``info`` plus per-model latency and which model wrote which part of the answer."""
        info = dict(self.info)
        if self.route == "student":  # pinned: score the whole answer
            s = self.stream
            info["confidence"] = score(s.logprobs, s.entropies, info["scoring"], info["quantile"])
        latency: dict[str, float] = {}
        for s in self.opened:
            latency[s.model] = latency.get(s.model, 0.0) + s.ms
        info["latency_ms"] = latency
        segments = [*self.segments, {"model": self.stream.model, "tokens": self.stream.tokens}]
        info["segments"] = [s for s in segments if s["tokens"]]
        if info.get("reason") == "speculative":
            d, a = self.stream.drafted, self.stream.accepted
            info["speculative"] = {
                "draft_tokens": d,
                "accepted_tokens": a,
                "acceptance_rate": a / d if d else None,
            }
        return info

    async def close(self) -> None:
        for s in self.opened:
            await s.close()


async def _first(stream: ModelStream, opened: list[ModelStream]) -> list[Any]:
    opened.append(stream)
    chunk = await stream.next()
    return [chunk] if chunk is not None else []


async def start_answer(
    route: str, open_student: Opener, open_teacher: Opener, cascade: CascadeConfig
) -> Answer:
    """Start answering on ``route`` ('cascade' | 'student' | 'teacher'); returns once decided."""
    base = {
        "scoring": cascade.scoring,
        "quantile": cascade.quantile,
        "threshold": cascade.threshold,
        "discarded_tokens": 0,
    }
    opened: list[ModelStream] = []
    try:
        if route in ("student", "teacher"):
            stream = (open_student if route == "student" else open_teacher)(None)
            head = await _first(stream, opened)
            info = {"answered_by": route, "confidence": None, "fallback": False}
            return Answer(route, {**info, "reason": "pinned", **base}, head, stream, opened)
        if cascade.mode == "speculative":
            return await _speculative(open_teacher, cascade, base, opened)
        return await _cascade(open_student, open_teacher, cascade, base, opened)
    except BaseException:
        for s in opened:
            await s.close()
        raise


async def _speculative(
    open_teacher: Opener, cascade: CascadeConfig, base: dict[str, Any], opened: list[ModelStream]
) -> Answer:
    """``mode: speculative``: the teacher's engine answers, the student drafting for it (the
    answer is the teacher's; ``info["speculative"]`` counts the drafts it kept)."""
    spec = cascade.speculative
    k = None if spec.draft_tokens == "auto" else spec.draft_tokens
    teacher = open_teacher({"speculative": {"k": k, "max_k": spec.max_draft_tokens}})
    head = await _first(teacher, opened)
    info = {"answered_by": "teacher", "confidence": None, "fallback": False}
    return Answer("cascade", {**info, "reason": "speculative", **base}, head, teacher, opened)


async def _student_prefix(
    student: ModelStream, cascade: CascadeConfig
) -> tuple[list[Any], Exception | None]:
    """The student's first ``decide_after_tokens`` tokens (fewer if it finishes or fails)."""
    head: list[Any] = []
    try:
        async with asyncio.timeout(cascade.student_timeout_s):
            while student.tokens < cascade.decide_after_tokens and student.finish is None:
                chunk = await student.next()
                if chunk is None:
                    break
                head.append(chunk)
    except RequestFailed as e:
        if e.status != 503:
            raise  # the request itself is bad: the teacher would refuse it too
        return head, e
    except TimeoutError as e:
        log.warning("the student did not decide within %.1f s", cascade.student_timeout_s)
        return head, e
    except Exception as e:  # a crashed replica
        log.warning("student failed: %s: %s", type(e).__name__, e)
        return head, e
    return head, None


async def _cascade(
    open_student: Opener,
    open_teacher: Opener,
    cascade: CascadeConfig,
    base: dict[str, Any],
    opened: list[ModelStream],
) -> Answer:
    student = open_student(None)
    opened.append(student)
    head, err = await _student_prefix(student, cascade)
    k = cascade.decide_after_tokens
    conf = (
        None
        if err
        else score(student.logprobs[:k], student.entropies[:k], cascade.scoring, cascade.quantile)
    )
    if err is not None and not cascade.fallback_on_error:
        raise RequestFailed(503, f"the student failed ({type(err).__name__}: {err})")
    decision = decide(conf, cascade, student_failed=err is not None)
    info = {"confidence": conf, "fallback": decision.fallback, "reason": decision.reason, **base}
    if decision.answered_by == "student":
        return Answer("cascade", {"answered_by": "student", **info}, head, student, opened)
    await student.close()
    keep = cascade.takeover == "prefix" and err is None and student.finish is None
    extra = {"continue_ids": student.ids, "continue_emitted": len(student.text)} if keep else None
    teacher = open_teacher(extra)
    first = await _first(teacher, opened)
    info = {"answered_by": "teacher", **info, "discarded_tokens": 0 if keep else student.tokens}
    if not keep:
        return Answer("cascade", info, first, teacher, opened)
    segments = [{"model": "student", "tokens": student.tokens}]
    return Answer("cascade", info, head + first, teacher, opened, student.tokens, segments)
