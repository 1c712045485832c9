"""``engine: onnxruntime-genai``: the CPU int4 runtime (``distill.runtime.OrtGenAIModel``) in a
replica, with the shared admission / cancellation / text plumbing of :class:`ThreadedEngine`::

    student: {model: runs/smollm2/student-int4-ort, engine: onnxruntime-genai, num_cpus: 2}
    # engine_kwargs: {spin: false}   # intra-op threads sleep between ops (a busy shared node)

The runtime decodes a *static* batch (ONNX Runtime GenAI cannot add a sequence to a running
generator), so this adapter batches the requests waiting when a batch starts (those sharing
temperature / top_p / seed) and runs it until every row has finished or was cancelled. Requests
arriving meanwhile do not wait for it: up to ``batching.max_batches`` batches (at most
``batching.max_batch_size`` rows in all) are decoded side by side, one step each in turn, and a
request that has waited half of ``max_queue_wait_s`` gets a batch even past ``max_batches``.
(ONNX Runtime GenAI's ``og.Engine`` decodes a concurrent load slower than a static batch on a
CPU, and its paged ``dynamic_batching`` needs a paged-attention model, which the CPU int4 export
is not.) The runtime itself runs in a child
process of the replica (``ort_table.ProcessTable``): its Python bindings hold the GIL while they
compute, which stalled the replica's event loop. Per-token log-probs come from the runtime,
entropies and ``top_logprobs`` from the step logits (computed in the child). The runtime's
sampler has no logit bias or presence / frequency penalties: such requests get a 400.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distill.models.loader import load_tokenizer
from distill.models.stopping import stop_token_ids
from distill.runtime.export import read_manifest
from distill.serve.config import BatchingConfig
from distill.serve.engines.base import (
    EngineRequest,
    PromptError,
    SamplingParams,
    Sequence,
    ThreadedEngine,
)
from distill.serve.engines.ort_table import BatchTable, ProcessTable, Scored
from distill.serve.engines.prompt import PromptBuilder


def _tokenizer(path: Path):
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        return load_tokenizer(path)

    return load_tokenizer(Path(read_manifest(path)["source"]))


class OrtGenAIEngine(ThreadedEngine):
    kind = "onnxruntime-genai"

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int | None = None,
        batching: BatchingConfig | None = None,
        runtime: Any = None,
        spin: bool = True,
    ) -> None:
        # The runtime holds the GIL while it computes, so a replica runs it in a child process
        # (ort_table.py); a ``runtime`` object given here is stepped in this process instead.
        # ``spin``: idle intra-op threads busy-wait between ops (ONNX Runtime's default): with
        # the child decoding ahead it answers a single request faster (docs/serving.md);
        # ``engine_kwargs: {spin: false}`` for a node whose cores are busy with other work.
        if runtime is None:
            self.table: Any = ProcessTable(Path(path), threads=torch_threads, spin=spin)
        else:
            self.table = BatchTable(runtime)
        meta = self.table.info()
        self.pad_id = int(meta["pad_id"])
        self.path = Path(path)
        self.max_context = int(meta["context_length"])
        tok = _tokenizer(self.path)
        self.prompts = PromptBuilder(tok, self.max_context, self.path.name)
        super().__init__(
            tok, set(stop_token_ids(tok, meta["eos_ids"])), batching or BatchingConfig()
        )
        self.batches: dict[int, list[Sequence]] = {}  # the engine thread's, by table id
        self._next_id = 0

    def prepare(self, prompt=None, messages=None, params=None, *args, **kw) -> EngineRequest:
        p = params or SamplingParams()
        if p.logit_bias or p.penalized:
            field = "logit_bias" if p.logit_bias else "presence_penalty / frequency_penalty"
            raise PromptError(f"{field}: not supported by engine {self.kind}")
        return super().prepare(prompt, messages, p, *args, **kw)

    def close(self) -> None:
        super().close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.table.shutdown()

    def _running(self) -> list[Sequence]:
        return [seq for rows in list(self.batches.values()) for seq in rows]

    def _run_loop(self) -> None:
        batches = self.batches
        closes: list[int] = []
        while not self._closed:
            opens = self._admit(batches)
            if not (opens or closes or batches):
                continue
            results = self.table.cycle(opens, closes, list(batches))
            self.counters["prefills"] += len(opens)  # the child prefills a batch on its 1st step
            closes = []
            for bid, res in results.items():
                if self._deliver(batches[bid], res):
                    closes.append(bid)
                    self._end(batches.pop(bid), res)
            self.active = sum(len(rows) for rows in batches.values())
        for rows in batches.values():
            self._end(rows, None)

    def _deliver(self, rows: list[Sequence], res: Scored | str | None) -> bool:
        """Hand one step's tokens to their sequences; True when the batch has ended."""
        if not isinstance(res, Scored):
            return True
        pushed = 0
        for i, seq in enumerate(rows):
            tok = int(res.token_ids[i])
            if seq.finished or seq.cancelled or tok < 0:
                continue
            pushed += 1
            top = None
            if res.top_ids is not None and res.top_logprobs is not None:
                top = list(zip(res.top_ids[i].tolist(), res.top_logprobs[i].tolist(), strict=True))
            seq.push(tok, float(res.logprobs[i]), float(res.entropies[i]), top)
        c = self.counters
        c["steps"] += 1
        c["batched_tokens"] += pushed
        c["tokens"] += pushed
        c["max_batch"] = max(c["max_batch"], pushed)
        return all(s.finished or s.cancelled for s in rows)

    def _end(self, rows: list[Sequence], res: Scored | str | None) -> None:
        """A batch has ended: fail the rows it left unfinished, count every row."""
        for seq in rows:
            if isinstance(res, str):
                if not seq.finished:
                    self.counters["failed"] += 1
                seq.fail(RuntimeError(f"generation failed: {res}"))
            elif not seq.finished and not seq.cancelled:  # the runtime stopped early
                seq.fail(RuntimeError("the runtime ended the batch before this request"))
            self._finish(seq)

    def _admit(self, batches: dict[int, list[Sequence]]) -> list[tuple[int, dict]]:
        """New batches from the waiting requests (blocks while nothing runs): their ids and
        ``generate_steps`` arguments, already entered in ``batches``."""
        free = self.batching.max_batch_size - len(self._running())
        if free <= 0:
            return []
        # past max_batches, a request still gets a batch of its own once it has waited half
        # of max_queue_wait_s: free rows never turn into 503s, only a full replica does
        # (ThreadedEngine._slots_taken)
        if len(batches) >= self.batching.max_batches and not self._waited(
            self.batching.max_queue_wait_s / 2
        ):
            return []
        opens = []
        for rows in self._groups(self._take_new(not batches, free, 1 << 30)):
            self._next_id += 1
            batches[self._next_id] = rows
            opens.append((self._next_id, batch_args(rows)))
        return opens

    def _waited(self, seconds: float) -> bool:
        """True when the oldest waiting request has waited at least ``seconds``."""
        with self._cond:
            return (
                bool(self._waiting) and time.perf_counter() - self._waiting[0].submitted >= seconds
            )

    def _groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Requests the runtime can decode in one batch (same sampling, safe padding), split
        by prompt length: every row is right-padded to the longest prompt of its batch, and
        prefill and attention pay for the padding."""
        groups: dict[tuple, list[Sequence]] = {}
        for s in seqs:
            p = s.params
            key = (p.temperature, p.top_p if p.temperature else 1.0, p.seed)
            if s.req.input_ids[-1] == self.pad_id:  # would be taken for padding
                key = (*key, id(s))
            groups.setdefault(key, []).append(s)
        return [part for g in groups.values() for part in length_buckets(g)]


def length_buckets(seqs: list[Sequence], slack: int = 32) -> list[list[Sequence]]:
    """``seqs`` by prompt length, cut where a row would be padded to more than twice its
    length plus ``slack`` tokens."""
    out: list[list[Sequence]] = []
    for seq in sorted(seqs, key=lambda s: len(s.req.input_ids)):
        n = len(seq.req.input_ids)
        if out and n <= 2 * len(out[-1][0].req.input_ids) + slack:
            out[-1].append(seq)
        else:
            out.append([seq])
    return out


def batch_args(rows: list[Sequence]) -> dict[str, Any]:
    """``generate_steps`` arguments (and ``top_logprobs``) of one static batch."""
    p = rows[0].params
    return {
        "prompts": [s.req.input_ids for s in rows],
        "max_new_tokens": max(s.params.max_tokens - len(s.req.continue_ids) for s in rows),
        "temperature": p.temperature,
        "top_p": p.top_p,
        "seed": p.seed,
        "top_logprobs": max(s.params.top_logprobs for s in rows),
    }
