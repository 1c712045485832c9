"""``engine: onnxruntime-genai``: the CPU int4 runtime (``distill.runtime.OrtGenAIModel``) in a
replica, with the shared admission / cancellation / text plumbing of :class:`ThreadedEngine`::

    student: {model: runs/smollm2/student-int4-ort, engine: onnxruntime-genai, num_cpus: 2}

The runtime decodes a *static* batch (ONNX Runtime GenAI cannot add a sequence to a running
generator), so this adapter batches the requests waiting when a batch starts (those sharing
temperature / top_p / seed) and runs it until every row has finished or was cancelled. Requests
arriving meanwhile do not wait for it: up to ``batching.max_batches`` batches (at most
``batching.max_batch_size`` rows in all) are decoded side by side, one step each in turn, and a
request that has waited half of ``max_queue_wait_s`` gets a batch even past ``max_batches``.
(ONNX Runtime GenAI 0.18's ``og.Engine`` was measured instead and lost: on this CPU it decodes
16 prompts at 151 tok/s where a static batch does 292; its paged ``dynamic_batching`` needs a
paged-attention model, which the CPU int4 export is not.) Per-token
log-probs come from the runtime, entropies and ``top_logprobs`` from the step logits. The
runtime's sampler has no logit bias or presence / frequency penalties: such requests get a 400.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from distill.serve.engines.base import (
    BatchingConfig,
    EngineRequest,
    PromptError,
    SamplingParams,
    Sequence,
    ThreadedEngine,
)
from distill.serve.engines.prompt import PromptBuilder


def _tokenizer(path: Path):
    from distill.models.loader import load_tokenizer

    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        return load_tokenizer(path)
    from distill.runtime.export import read_manifest  # the export records its source checkpoint

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
    ) -> None:
        if runtime is None:
            from distill.runtime.ort_genai import OrtGenAIModel

            # no busy-waiting: a replica shares the cores with Serve's proxy and the Router.
            # serve_load, 2 cores, 104-request burst: the Router's 503s p50 1.19 s without
            # spinning vs 3.22 s with it; 16-way HTTP 87.4 vs 80.8-86.0 tok/s; c=1 the same.
            runtime = OrtGenAIModel.load(Path(path), threads=torch_threads, spin=False)
        self.runtime = runtime
        self.path = Path(path)
        self.max_context = int(runtime.context_length)
        tok = _tokenizer(self.path)
        self.prompts = PromptBuilder(tok, self.max_context, self.path.name)
        super().__init__(tok, set(runtime.eos_ids), batching or BatchingConfig())
        self.rows: list[Sequence] = []

    def prepare(self, prompt=None, messages=None, params=None, *args, **kw) -> EngineRequest:
        p = params or SamplingParams()
        if p.logit_bias or p.penalized:
            field = "logit_bias" if p.logit_bias else "presence_penalty / frequency_penalty"
            raise PromptError(f"{field}: not supported by engine {self.kind}")
        return super().prepare(prompt, messages, p, *args, **kw)

    def _running(self) -> list[Sequence]:
        return list(self.rows)

    def _run_loop(self) -> None:
        batches: list[_Batch] = []
        while not self._closed:
            self._admit(batches)
            for batch in list(batches):
                try:
                    done = batch.step(self.counters)
                except Exception as e:  # fail this batch's requests, keep serving
                    for seq in batch.rows:
                        seq.fail(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
                    self.counters["failed"] += len(batch.rows)
                    done = True
                if done:
                    batch.close(self._finish)
                    batches.remove(batch)
            self.rows = [seq for b in batches for seq in b.rows]
            self.active = len(self.rows)
        for batch in batches:
            batch.close(self._finish)

    def _admit(self, batches: list[_Batch]) -> None:
        """Start new batches from the waiting requests (blocks while nothing runs)."""
        running = sum(len(b.rows) for b in batches)
        free = self.batching.max_batch_size - running
        if free <= 0:
            return
        # past max_batches, a request still gets a batch of its own once it has waited half
        # of max_queue_wait_s: free rows never turn into 503s, only a full replica does
        if len(batches) >= self.batching.max_batches and not self._waited(
            self.batching.max_queue_wait_s / 2
        ):
            return
        taken = self._take_new(not batches, free, 1 << 30)
        # a batch's generator starts on its first step: errors surface in _run_loop
        batches.extend(_Batch(self.runtime, group) for group in self._groups(taken))

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
            if s.req.input_ids[-1] == self.runtime.pad_id:  # would be taken for padding
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


class _Batch:
    """One static batch of the runtime, decoded one step per :meth:`step` call."""

    def __init__(self, runtime: Any, rows: list[Sequence]) -> None:
        p = rows[0].params
        self.rows = rows
        self.top_k = max(s.params.top_logprobs for s in rows)
        self.steps = runtime.generate_steps(
            [s.req.input_ids for s in rows],
            max_new_tokens=max(s.params.max_tokens - len(s.req.continue_ids) for s in rows),
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            return_logits=True,
        )

    def step(self, counters: dict[str, Any]) -> bool:
        """Decode one token per row and deliver it; True when the batch has ended."""
        import numpy as np

        step = next(self.steps, None)
        if step is None:
            return True
        logp = step.logits - step.logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        ent = -(np.exp(logp) * logp).sum(-1) / math.log(logp.shape[-1])
        pushed = 0
        for i, seq in enumerate(self.rows):
            if seq.finished or seq.cancelled or step.token_ids[i] < 0:
                continue
            pushed += 1
            top = None
            if self.top_k:
                best = np.argsort(-logp[i])[: self.top_k]
                top = [(int(t), float(logp[i, t])) for t in best]
            seq.push(int(step.token_ids[i]), float(step.logprobs[i]), float(ent[i]), top)
        counters["steps"] += 1
        counters["batched_tokens"] += pushed
        counters["tokens"] += pushed
        counters["max_batch"] = max(counters["max_batch"], pushed)
        return all(s.finished or s.cancelled for s in self.rows)

    def close(self, finish) -> None:
        close = getattr(self.steps, "close", None)
        if close is not None:
            close()
        for seq in self.rows:
            if not seq.finished and not seq.cancelled:  # the runtime stopped early
                seq.fail(RuntimeError("the runtime ended the batch before this request"))
            finish(seq)
