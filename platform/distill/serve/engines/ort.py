"""``engine: onnxruntime-genai``: the CPU int4 runtime (``distill.runtime.OrtGenAIModel``) in a
replica, with the shared admission / cancellation / text plumbing of :class:`ThreadedEngine`::

    student: {model: runs/smollm2/student-int4-ort, engine: onnxruntime-genai, num_cpus: 2}

The runtime decodes a *static* batch (ONNX Runtime GenAI cannot add a sequence to a running
generator), so this adapter batches the requests waiting when a batch starts (up to
``batching.max_batch_size``, those sharing temperature / top_p / seed) and runs it until every row
has finished or was cancelled; requests arriving meanwhile wait for the next batch. Per-token
log-probs come from the runtime, entropies and ``top_logprobs`` from the step logits. The
runtime's sampler has no logit bias or presence / frequency penalties: such requests get a 400.
"""

from __future__ import annotations

import math
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

            runtime = OrtGenAIModel.load(Path(path), threads=torch_threads)
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
        while not self._closed:
            taken = self._take_new(True, self.batching.max_batch_size, 1 << 30)
            for group in self._groups(taken):
                try:
                    self._run_batch(group)
                except Exception as e:  # fail this batch's requests, keep serving
                    for seq in group:
                        seq.fail(RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
                    self.counters["failed"] += len(group)

    def _groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Requests the runtime can decode in one batch (same sampling, safe padding)."""
        groups: dict[tuple, list[Sequence]] = {}
        for s in seqs:
            p = s.params
            key = (p.temperature, p.top_p if p.temperature else 1.0, p.seed)
            if s.req.input_ids[-1] == self.runtime.pad_id:  # would be taken for padding
                key = (*key, id(s))
            groups.setdefault(key, []).append(s)
        return list(groups.values())

    def _run_batch(self, rows: list[Sequence]) -> None:
        import numpy as np

        self.rows = rows
        self.active = len(rows)
        p = rows[0].params
        steps = self.runtime.generate_steps(
            [s.req.input_ids for s in rows],
            max_new_tokens=max(s.params.max_tokens - len(s.req.continue_ids) for s in rows),
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            return_logits=True,
        )
        k = max(s.params.top_logprobs for s in rows)
        try:
            for step in steps:
                logp = step.logits - step.logits.max(-1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
                ent = -(np.exp(logp) * logp).sum(-1) / math.log(logp.shape[-1])
                pushed = 0
                for i, seq in enumerate(rows):
                    if seq.finished or seq.cancelled or step.token_ids[i] < 0:
                        continue
                    pushed += 1
                    top = None
                    if k:
                        best = np.argsort(-logp[i])[:k]
                        top = [(int(t), float(logp[i, t])) for t in best]
                    seq.push(int(step.token_ids[i]), float(step.logprobs[i]), float(ent[i]), top)
                self.counters["steps"] += 1
                self.counters["batched_tokens"] += pushed
                self.counters["tokens"] += pushed
                self.counters["max_batch"] = max(self.counters["max_batch"], pushed)
                if all(s.finished or s.cancelled for s in rows):
                    break
        finally:
            steps.close()
            for seq in rows:
                if not seq.finished and not seq.cancelled:  # the runtime stopped early
                    seq.fail(RuntimeError("the runtime ended the batch before this request"))
                self._finish(seq)
            self.rows = []
            self.active = 0
