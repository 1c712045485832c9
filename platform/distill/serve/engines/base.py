"""The engine interface every model replica serves through, and the plumbing engines share.

An engine turns an :class:`EngineRequest` (prompt token ids + :class:`SamplingParams`) into an
async stream of :class:`Chunk` s (the tokens generated since the previous chunk, their text, raw
log-probabilities and normalized entropies). Closing the stream (``aclose``, a cancelled task)
cancels the generation and frees its batch slot::

    engine = build_engine(spec)                          # engines.build_engine
    req = engine.prepare(prompt="def add(a, b):", params=SamplingParams(max_tokens=16))
    async for chunk in engine.stream(req):
        print(chunk.text, end="")

:class:`ThreadedEngine` is the shared plumbing for engines that generate in a background thread
(HF, ONNX Runtime GenAI...): admission with a bounded waiting queue, per-sequence post-processing
(:class:`Sequence`: EOS, ``max_tokens``, stop strings, incremental text) and delivery of chunks to
the replica's event loop. A subclass only implements :meth:`ThreadedEngine._run_loop`: take new
sequences with :meth:`_take_new`, produce one token per sequence per step and hand it to
:meth:`Sequence.push`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from distill.serve.config import BatchingConfig
from distill.serve.engines.text import IncrementalDetokenizer, StopMatcher


class PromptError(ValueError):
    """The request cannot be served by this model (too long for the context, no template...)."""


class Overloaded(RuntimeError):
    """The engine's waiting queue is full: the caller should answer 503 and retry later."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False  # return each token's string and log-prob
    top_logprobs: int = 0  # and this many alternatives per token

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)


@dataclass(frozen=True)
class Speculation:
    """Decode with the student drafting and the teacher verifying (``cascade.mode:
    speculative``): ``k`` draft tokens per step, or None = adaptive up to ``max_k``."""

    k: int | None = None
    max_k: int = 8


@dataclass(frozen=True)
class EngineRequest:
    """Prompt token ids, optionally followed by another model's answer so far to continue.

    ``continue_ids`` count as already generated (towards ``max_tokens`` and stop strings), and
    ``continue_emitted`` characters of their text already reached the client, so the stream
    starts with whatever of that text was still held back.
    """

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = ""
    continue_ids: tuple[int, ...] = ()
    continue_emitted: int = 0
    speculation: Speculation | None = None

    @property
    def input_ids(self) -> list[int]:
        return [*self.prompt_ids, *self.continue_ids]


@dataclass
class Chunk:
    """Tokens generated since the previous chunk of one sequence."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)  # raw model log-prob of each token
    entropies: list[float] = field(default_factory=list)  # normalized entropy, in [0, 1]
    tokens: list[str] | None = None  # token strings (params.logprobs)
    top: list[list[tuple[str, float]]] | None = None  # alternatives (params.top_logprobs)
    finish_reason: str | None = None  # "stop" | "length" once the sequence ended
    prompt_tokens: int = 0
    drafted: int = 0  # speculative decoding: draft tokens the teacher verified since the last chunk
    accepted: int = 0  # and kept

    def merge(self, other: Chunk) -> Chunk:
        def cat(a: list | None, b: list | None) -> list | None:
            return None if a is None and b is None else [*(a or []), *(b or [])]

        return Chunk(
            token_ids=self.token_ids + other.token_ids,
            text=self.text + other.text,
            logprobs=self.logprobs + other.logprobs,
            entropies=self.entropies + other.entropies,
            tokens=cat(self.tokens, other.tokens),
            top=cat(self.top, other.top),
            finish_reason=other.finish_reason or self.finish_reason,
            prompt_tokens=self.prompt_tokens or other.prompt_tokens,
            drafted=self.drafted + other.drafted,
            accepted=self.accepted + other.accepted,
        )


class Engine(ABC):
    """What a model replica needs from an engine."""

    kind: str = "?"
    max_context: int = 1 << 30
    can_verify: bool = False  # speculative decoding: verifies a draft model's tokens

    @abstractmethod
    def prepare(
        self,
        prompt: str | None = None,
        messages: list[dict] | None = None,
        params: SamplingParams | None = None,
        continue_ids: list[int] | None = None,
        context_limit: int = 1 << 30,
        continue_emitted: int = 0,
    ) -> EngineRequest:
        """Render + tokenize a request; raise :class:`PromptError` if it cannot be served."""

    @abstractmethod
    def stream(self, request: EngineRequest) -> AsyncIterator[Chunk]:
        """Generate; each chunk holds the new tokens. Closing the iterator cancels."""

    def stats(self) -> dict[str, Any]:
        return {}

    def check_health(self) -> None:  # noqa: B027 (optional hook)
        """Raise when the engine cannot serve any more (Serve then replaces the replica)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


class Sequence:
    """One request being generated: tokens -> text, stop conditions, delivery to its stream."""

    def __init__(self, req: EngineRequest, tok: Any, eos_ids: set[int], loop, queue) -> None:
        self.req = req
        self.params = req.params
        self.tok = tok
        self.eos_ids = eos_ids
        self.loop: asyncio.AbstractEventLoop = loop
        self.queue: asyncio.Queue = queue
        self.detok = IncrementalDetokenizer(tok)
        self.stops = StopMatcher(self.params.stop)
        self.generated: list[int] = []
        self.new_tokens = 0
        self.finished = False
        self.cancelled = False
        self.generator: Any = None  # torch.Generator for seeded sampling (engine-owned)
        self.counts: Any = None  # token counts for presence / frequency penalties
        self.draft_generator: Any = None  # torch.Generator of the drafts (speculative, sampled)
        self.drafted = 0  # draft tokens verified for this sequence, not yet sent in a chunk
        self.accepted = 0
        self.submitted = time.perf_counter()
        if req.continue_ids:  # another model's tokens: text the client (mostly) has already
            self.generated = list(req.continue_ids)
            self.stops.feed("".join(self.detok.add(t) for t in req.continue_ids))
            self.stops.emitted = min(req.continue_emitted, len(self.stops.text))

    @property
    def last_token(self) -> int:
        return self.generated[-1] if self.generated else self.req.prompt_ids[-1]

    def push(
        self,
        token_id: int,
        logprob: float,
        entropy: float,
        top: list[tuple[int, float]] | None = None,
    ) -> bool:
        """Record one generated token, send its chunk; True when the sequence has finished."""
        p = self.params
        self.generated.append(token_id)
        self.new_tokens += 1
        is_eos = token_id in self.eos_ids
        delta, stopped = self.stops.feed("" if is_eos else self.detok.add(token_id))
        finish = None
        if is_eos or stopped:
            finish = "stop"
        elif len(self.generated) >= p.max_tokens:
            finish = "length"
        if finish and not stopped:
            delta += self.stops.flush(self.detok.flush())
        chunk = Chunk([token_id], delta, [logprob], [entropy], finish_reason=finish)
        chunk.drafted, chunk.accepted = self.drafted, self.accepted
        self.drafted = self.accepted = 0
        if p.logprobs or p.top_logprobs:
            chunk.tokens = [self.tok.decode([token_id])]
        if p.top_logprobs and top is not None:
            chunk.top = [[(self.tok.decode([t]), lp) for t, lp in top[: p.top_logprobs]]]
        if self.new_tokens == 1:
            chunk.prompt_tokens = len(self.req.prompt_ids)
        self.finished = finish is not None
        self.send(chunk)
        return self.finished

    def send(self, item: Chunk | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.send(error)


class ThreadedEngine(Engine):
    """Admission, stream delivery and cancellation for engines that step in a thread."""

    prompts: Any = None  # engines.prompt.PromptBuilder over the checkpoint's tokenizer

    def prepare(
        self,
        prompt: str | None = None,
        messages: list[dict] | None = None,
        params: SamplingParams | None = None,
        continue_ids: list[int] | None = None,
        context_limit: int = 1 << 30,
        continue_emitted: int = 0,
    ) -> EngineRequest:
        return self.prompts.prepare(
            prompt, messages, params, continue_ids, context_limit, "", continue_emitted
        )

    def __init__(self, tok: Any, eos_ids: set[int], batching: BatchingConfig) -> None:
        self.tok = tok
        self.eos_ids = eos_ids
        self.batching = batching
        self._waiting: deque[Sequence] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.counters = {
            "requests": 0,
            "finished": 0,
            "cancelled": 0,
            "rejected": 0,
            "failed": 0,
            "steps": 0,  # decode forward passes
            "prefills": 0,  # prefill forward passes
            "tokens": 0,
            "batched_tokens": 0,  # sum over decode steps of the batch size
            "max_batch": 0,
        }
        self.active = 0

    # -- the replica side (event loop) ------------------------------------------------------
    async def stream(self, request: EngineRequest) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        seq = Sequence(request, self.tok, self.eos_ids, loop, asyncio.Queue())
        self._submit(seq)
        interval = self.batching.stream_interval_ms / 1000
        first, last_sent = True, 0.0
        try:
            while True:
                item = await (self._first_item(seq) if first else seq.queue.get())
                wait = last_sent + interval - time.perf_counter()
                if wait > 0 and isinstance(item, Chunk) and not item.finish_reason:
                    await asyncio.sleep(wait)  # at most one message per interval: tokens gather
                first = False
                while isinstance(item, Chunk) and not item.finish_reason and not seq.queue.empty():
                    nxt = seq.queue.get_nowait()
                    if isinstance(nxt, BaseException):
                        raise nxt
                    item = item.merge(nxt)
                if isinstance(item, BaseException):
                    raise item
                yield item
                last_sent = time.perf_counter()
                if item.finish_reason:
                    return
        finally:
            if not seq.finished:
                seq.cancelled = True
                with self._cond:
                    self._cond.notify()

    async def _first_item(self, seq: Sequence) -> Chunk | BaseException:
        """The first chunk; a request still waiting for a slot after max_queue_wait_s leaves
        (checked again every max_queue_wait_s while it waits with slots free)."""
        limit = self.batching.max_queue_wait_s
        while True:
            try:
                return await asyncio.wait_for(seq.queue.get(), limit)
            except TimeoutError:
                with self._cond:
                    if seq not in self._waiting:
                        break  # it got a slot meanwhile: prefill is under way
                    if self._slots_taken():
                        self._waiting.remove(seq)
                        seq.finished = True
                        self.counters["rejected"] += 1
                        raise Overloaded(f"no batch slot became free within {limit:g} s") from None
        return await seq.queue.get()

    def _submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._closed:
                raise Overloaded("the engine is shutting down")
            if len(self._waiting) >= self.batching.max_waiting:
                self.counters["rejected"] += 1
                raise Overloaded(
                    f"{len(self._waiting)} requests already wait for this replica "
                    f"(batching.max_waiting {self.batching.max_waiting})"
                )
            self.counters["requests"] += 1
            self._waiting.append(seq)
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._thread_main, daemon=True)
            self._thread.start()

    def stats(self) -> dict[str, Any]:
        c = dict(self.counters)
        c["mean_batch"] = c["batched_tokens"] / c["steps"] if c["steps"] else None
        c["active"] = self.active
        c["waiting"] = len(self._waiting)
        return c

    def check_health(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the engine loop died: {type(self._error).__name__}: {self._error}")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the engine thread ------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            self._run_loop()
        except BaseException as e:  # fail every request rather than hang them
            self._error = e
            with self._cond:
                self._closed = True
                pending = list(self._waiting)
                self._waiting.clear()
            for seq in pending + self._running():
                seq.fail(RuntimeError(f"engine failed: {type(e).__name__}: {e}"))
            raise

    def _running(self) -> list[Sequence]:
        """Sequences the subclass is generating (to fail them if the loop dies)."""
        return []

    def _slots_taken(self) -> bool:
        """Whether a request that waited ``max_queue_wait_s`` found every slot taken (then 503).
        With rows free it waits on, checked every ``max_queue_wait_s``: a step longer than the
        limit is not a full replica (the HF teacher refused fallbacks with 16 of 32 rows free)."""
        return len(self._running()) >= self.batching.max_batch_size

    def _take_new(self, idle: bool, free_slots: int, budget_tokens: int) -> list[Sequence]:
        """Waiting sequences that fit (blocks while ``idle`` and nothing waits)."""
        with self._cond:
            while idle and not self._waiting and not self._closed:
                self._cond.wait(timeout=1.0)
            if idle and self._waiting and self.batching.batch_wait_ms > 0:
                deadline = time.monotonic() + self.batching.batch_wait_ms / 1000
                while len(self._waiting) < free_slots and time.monotonic() < deadline:
                    self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            taken: list[Sequence] = []
            tokens = 0
            while self._waiting and len(taken) < free_slots:
                seq = self._waiting[0]
                n = len(seq.req.input_ids)
                if taken and tokens + n > budget_tokens:
                    break
                self._waiting.popleft()
                if seq.cancelled:
                    self.counters["cancelled"] += 1
                    continue
                taken.append(seq)
                tokens += n
            return taken

    def _finish(self, seq: Sequence) -> None:
        key = "cancelled" if seq.cancelled and not seq.finished else "finished"
        self.counters[key] += 1

    @abstractmethod
    def _run_loop(self) -> None:
        """Generate until ``self._closed``; see the module docstring."""
