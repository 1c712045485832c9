"""The reference engine: continuous batching over a transformers causal LM (CPU or CUDA).

One background thread steps the running batch: each step prefills the sequences that arrived
(left-padded, one forward) and merges their KV cache into the running batch, then decodes one
token for every running sequence in a single forward pass. A sequence leaves the batch as soon as
it finishes or is cancelled; a new one joins at the next step, so requests never wait for a whole
batch to end. All rows share one left-padded cache length; position ids come from the attention
mask, so padding never shifts a sequence's positions::

    engine = HFEngine(Path("runs/smollm2/student"), batching=BatchingConfig(max_batch_size=16))
    req = engine.prepare(prompt="def add(a, b):", params=SamplingParams(max_tokens=32))
    async for chunk in engine.stream(req): ...

Supports models whose transformers cache is made of full-attention ``DynamicLayer`` s (Llama,
Qwen2, Mistral without sliding window, ...); others are refused at load time.

Speculative decoding (``cascade.mode: speculative``): built with a ``draft``
(:class:`~distill.serve.engines.draft.Drafter`, the student), the engine decodes the rows whose
request carries a :class:`~distill.serve.engines.base.Speculation` by letting the student draft
``k`` tokens for all of them, then scoring every row's last token plus its drafts in one forward
(``k + 1`` logits per row, the ragged block left-padded); each row keeps the drafts the teacher
accepts and one token of its own, and the cache takes the rejected drafts back
(:meth:`~distill.serve.engines.kv.KVBatch.discard`). Other rows decode one token in the same
forward. ``k`` is the request's, or adaptive (:class:`~distill.serve.speculative.DraftLength`).
transformers' own assisted generation (``generate(assistant_model=...)``) does the same for one
sequence at batch 1 only, with a transformers draft; this engine batches every concurrent request
and takes an int4 ONNX Runtime GenAI draft too.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from distill.config.base import DistillError
from distill.models.loader import load_causal_lm, load_tokenizer
from distill.models.stopping import stop_token_ids
from distill.serve.config import BatchingConfig
from distill.serve.engines.base import Sequence, ThreadedEngine
from distill.serve.engines.draft import Drafter, DraftRow
from distill.serve.engines.kv import KVBatch, lm_forward, ragged
from distill.serve.engines.prompt import PromptBuilder
from distill.serve.engines.sampling import biased, sample_step, sampling_probs, score_tokens
from distill.serve.speculative import DraftLength, verify_greedy, verify_sampled


class HFEngine(ThreadedEngine):
    kind = "hf"

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int | None = None,
        batching: BatchingConfig | None = None,
        draft: Drafter | None = None,
    ) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.path = Path(path)
        self.device = device
        self.model = load_causal_lm(self.path, dtype=dtype, device=device)
        tok = load_tokenizer(self.path)
        self._check_cache_layout()
        cfg = self.model.config
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        self.vocab = int(cfg.vocab_size)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0
        model_eos = (self.model.generation_config.eos_token_id, cfg.eos_token_id)
        eos_ids = set(stop_token_ids(tok, *model_eos))
        self.prompts = PromptBuilder(tok, self.max_context, self.path.name)
        super().__init__(tok, eos_ids, batching or BatchingConfig())
        self.rows: list[Sequence] = []
        self.prefilling: list[Sequence] = []  # taken from the queue, their prefill under way
        self.kv = KVBatch()
        self.drafter = draft  # speculative decoding: the student that drafts for this teacher
        self.can_verify = draft is not None
        self.draft_length = DraftLength()
        self.counters.update(drafted=0, accepted=0, spec_steps=0)

    def _check_cache_layout(self) -> None:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        kinds = {type(layer) for layer in DynamicCache(config=self.model.config).layers}
        if kinds - {DynamicLayer}:
            names = ", ".join(sorted(k.__name__ for k in kinds))
            raise DistillError(
                f"engine hf batches full-attention models only; {self.path} uses {names}: "
                "serve it with engine: vllm"
            )

    def _running(self) -> list[Sequence]:
        return [*self.rows, *self.prefilling]

    def _run_loop(self) -> None:
        import torch

        with torch.inference_mode():
            while not self._closed:
                self._drop_done()
                free = self.batching.max_batch_size - len(self.rows)
                new = []
                if free > 0:
                    new = self._take_new(not self.rows, free, self.batching.max_prefill_tokens)
                try:
                    if new:
                        self._prefill(new)
                        self._drop_done()
                    if self.rows:
                        self._decode()
                except Exception as e:  # fail this step's requests, keep serving the next ones
                    self._fail_step(new, e)

    def _fail_step(self, new: list[Sequence], error: Exception) -> None:
        """A step raised: every sequence in it fails with the error; the batch starts afresh."""
        import logging

        logging.getLogger(__name__).exception("engine step failed")
        for seq in {id(s): s for s in [*self.rows, *new]}.values():
            seq.fail(RuntimeError(f"generation failed: {type(error).__name__}: {error}"))
            self.counters["failed"] += 1
        self.rows = []
        self.prefilling = []
        self.kv = KVBatch()
        if self.drafter is not None:
            self.drafter.reset()
        self.active = 0

    # -- one step -------------------------------------------------------------------------
    def _setup(self, seq: Sequence) -> None:
        import torch

        p = seq.params
        if p.temperature > 0:
            seed = p.seed % (1 << 64) if p.seed is not None else random.getrandbits(63)
            seq.generator = torch.Generator(device="cpu").manual_seed(seed)
        if p.penalized:
            seq.counts = torch.zeros(self.vocab, device=self.device)
        if p.temperature > 0 and seq.req.speculation is not None:
            seed = int(torch.randint(0, 1 << 62, (1,), generator=seq.generator))
            seq.draft_generator = torch.Generator(device="cpu").manual_seed(seed)

    def _prefill(self, new: list[Sequence]) -> None:
        from transformers.cache_utils import DynamicCache

        self.prefilling = new
        for seq in new:
            self._setup(seq)
        ids, mask = ragged([s.req.input_ids for s in new], self.pad_id, self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, cache)
        self.kv.merge(cache, mask)
        self.rows.extend(new)
        self.prefilling = []
        self.counters["prefills"] += 1
        self._push(new, logits)

    def _decode(self) -> None:
        spec = [s for s in self.rows if self._speculates(s)]
        if spec:
            auto = self.draft_length.choose(
                len(self.rows), max(s.req.speculation.max_k for s in spec)
            )
            caps = {id(s): self._draft_cap(s, auto) for s in spec}
            k = max(caps.values())
            if k > 0:
                self._speculate(spec, k, caps)
                return
        t0 = time.perf_counter()
        self._decode_one()
        if spec:
            self.draft_length.record(len(self.rows), 0, len(self.rows), time.perf_counter() - t0)

    def _decode_one(self) -> None:
        import torch

        last = torch.tensor([[s.last_token] for s in self.rows], device=self.device)
        ones = torch.ones((len(self.rows), 1), dtype=self.kv.mask.dtype, device=self.device)
        mask = torch.cat([self.kv.mask, ones], dim=1)
        logits = self._forward(last, mask, self.kv.cache)
        self.kv.mask = mask
        n = len(self.rows)
        self.counters["steps"] += 1
        self.counters["batched_tokens"] += n
        self.counters["max_batch"] = max(self.counters["max_batch"], n)
        self._push(list(self.rows), logits)

    def _forward(self, ids, mask, cache, keep: int = 0):
        """Next-token logits ``[B, vocab]`` after the last column; ``[B, keep, vocab]`` after each
        of the last ``keep`` columns when ``keep`` is given."""
        logits = lm_forward(self.model, ids, mask, cache, keep or 1)
        return logits if keep else logits[:, -1]

    # -- speculative decoding: the student drafts, this model verifies ---------------------------
    def _speculates(self, seq: Sequence) -> bool:
        """Rows that draft: asked for it, no presence / frequency penalty (they decode as the
        teacher alone: penalties would depend on drafts not yet kept), room for a draft."""
        spec = seq.req.speculation
        return (
            spec is not None
            and self.drafter is not None
            and not seq.params.penalized
            and seq.params.max_tokens - len(seq.generated) > 1
        )

    def _draft_cap(self, seq: Sequence, k: int) -> int:
        """Drafts this row uses: its own ``k`` if it set one (else the adaptive ``k``), never
        past ``max_tokens``."""
        spec = seq.req.speculation
        want = k if spec is None or spec.k is None else spec.k
        return max(0, min(want, seq.params.max_tokens - len(seq.generated) - 1))

    def _speculate(self, spec: list[Sequence], k: int, caps: dict[int, int]) -> None:
        """One step: the drafter proposes ``k`` tokens per speculating row; one forward scores
        every row's last token plus its drafts; each row keeps what the teacher accepts
        (``distill.serve.speculative``) and the cache takes the rest back."""
        import torch

        t0 = time.perf_counter()
        rows = [
            DraftRow(id(s), [*s.req.prompt_ids, *s.generated], s.params, s.draft_generator,
                     len(s.req.prompt_ids) + s.params.max_tokens + 1)
            for s in spec
        ]  # fmt: skip
        proposals = {id(s): p for s, p in zip(spec, self.drafter.propose(rows, k), strict=True)}
        blocks, drafts = [], []
        for seq in self.rows:
            prop = proposals.get(id(seq))
            d = prop.tokens[: caps[id(seq)]] if prop is not None else []
            drafts.append(d)
            blocks.append([seq.last_token, *d])
        ids, block = ragged(blocks, self.pad_id, self.device)
        mask = torch.cat([self.kv.mask, block.to(self.kv.mask.dtype)], dim=1)
        logits = self._forward(ids, mask, self.kv.cache, ids.shape[1])
        self.kv.mask = mask
        taken_back, emitted, plain = [], 0, []
        for i, seq in enumerate(self.rows):
            if not drafts[i]:  # decodes one token as usual (penalties included)
                plain.append(i)
                taken_back.append(0)
                continue
            prop = proposals[id(seq)]
            q = prop.q[: len(drafts[i])] if prop.q is not None else None
            kept = self._verify(seq, drafts[i], q, logits[i, -len(blocks[i]) :])
            taken_back.append(len(drafts[i]) - kept)
            emitted += kept + 1
        if plain:
            self._push([self.rows[i] for i in plain], logits[plain, -1])
            emitted += len(plain)
        self.kv.discard(taken_back)
        if self.kv.holes() > self.kv.mask.numel() // 2:
            self.kv.compact()
        c = self.counters
        c["steps"] += 1
        c["spec_steps"] += 1
        c["batched_tokens"] += len(self.rows)
        c["max_batch"] = max(c["max_batch"], len(self.rows))
        c["tokens"] += emitted - len(plain)  # _push counted those
        self.draft_length.record(len(self.rows), k, emitted, time.perf_counter() - t0)

    def _verify(self, seq: Sequence, drafts: list[int], q, logits) -> int:
        """Keep the drafts the teacher accepts and push them with its own next token; returns
        how many drafts were kept. ``logits``: ``[len(drafts) + 1, vocab]``, raw."""
        adjusted = biased(logits.float(), seq.params)
        if seq.params.temperature <= 0:
            verdict = verify_greedy(drafts, adjusted.argmax(-1).tolist())
        else:
            p = sampling_probs(adjusted, seq.params)
            verdict = verify_sampled(drafts, q, p, seq.generator)
        emitted = [*drafts[: verdict.accepted], verdict.token]
        scores = score_tokens(logits[: len(emitted)], emitted, seq.params.top_logprobs)
        seq.drafted += len(drafts)
        seq.accepted += verdict.accepted
        self.counters["drafted"] += len(drafts)
        self.counters["accepted"] += verdict.accepted
        for j, tok in enumerate(emitted):
            if seq.cancelled or seq.finished:
                break
            top = scores.top[j] if scores.top is not None else None
            seq.push(tok, scores.logprobs[j], scores.entropies[j], top)
        return verdict.accepted

    def _push(self, rows: list[Sequence], logits) -> None:
        params = [s.params for s in rows]
        out = sample_step(logits, params, [s.generator for s in rows], [s.counts for s in rows])
        for i, seq in enumerate(rows):
            if seq.cancelled or seq.finished:
                continue
            top = out.top[i] if out.top is not None else None
            seq.push(out.ids[i], out.logprobs[i], out.entropies[i], top)
        self.counters["tokens"] += len(rows)

    def _drop_done(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if not (s.finished or s.cancelled)]
        if len(keep) == len(self.rows):
            self.active = len(self.rows)
            return
        for i, seq in enumerate(self.rows):
            if i not in keep:
                self._finish(seq)
        if self.drafter is not None:
            self.drafter.release([id(s) for i, s in enumerate(self.rows) if i not in keep])
        self.rows = [self.rows[i] for i in keep]
        self.kv.select(keep)
        self.active = len(self.rows)
