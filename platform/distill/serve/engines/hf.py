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
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.serve.engines.base import BatchingConfig, Sequence, ThreadedEngine
from distill.serve.engines.prompt import PromptBuilder
from distill.serve.engines.sampling import sample_step


class KVBatch:
    """The running batch's KV cache and 2-D attention mask, left-padded to one length."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: Any = None  # LongTensor [batch, length], 0 = padding

    def merge(self, cache: Any, mask: Any) -> None:
        """Append the rows of a freshly prefilled ``cache`` / ``mask``."""
        import torch
        import torch.nn.functional as F

        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])

        def left_pad(x: torch.Tensor, dim_len: int) -> torch.Tensor:
            pad = length - dim_len
            return F.pad(x, (0, 0, pad, 0)) if x.ndim == 4 else F.pad(x, (pad, 0))

        old_len, new_len = self.mask.shape[1], mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, old_len), left_pad(theirs.keys, new_len)])
            mine.values = torch.cat(
                [left_pad(mine.values, old_len), left_pad(theirs.values, new_len)]
            )
        self.mask = torch.cat([left_pad(self.mask, old_len), left_pad(mask, new_len)])

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (finished and cancelled sequences leave)."""
        import torch

        if not keep:
            self.cache = self.mask = None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.mask = self.mask[:, start:]


class HFEngine(ThreadedEngine):
    kind = "hf"

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int | None = None,
        batching: BatchingConfig | None = None,
    ) -> None:
        import torch

        from distill.models.loader import load_causal_lm, load_tokenizer

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
        eos = self.model.generation_config.eos_token_id
        eos_ids = {e for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        if tok.eos_token_id is not None:
            eos_ids.add(tok.eos_token_id)
        self.prompts = PromptBuilder(tok, self.max_context, self.path.name)
        super().__init__(tok, eos_ids, batching or BatchingConfig())
        self.rows: list[Sequence] = []
        self.prefilling: list[Sequence] = []  # taken from the queue, their prefill under way
        self.kv = KVBatch()

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

    def _prefill(self, new: list[Sequence]) -> None:
        import torch
        from transformers.cache_utils import DynamicCache

        self.prefilling = new
        for seq in new:
            self._setup(seq)
        length = max(len(s.req.input_ids) for s in new)
        ids = torch.full((len(new), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), length), dtype=torch.long)
        for i, seq in enumerate(new):
            n = len(seq.req.input_ids)
            ids[i, length - n :] = torch.tensor(seq.req.input_ids)
            mask[i, length - n :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, cache)
        self.kv.merge(cache, mask)
        self.rows.extend(new)
        self.prefilling = []
        self.counters["prefills"] += 1
        self._push(new, logits)

    def _decode(self) -> None:
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

    def _forward(self, ids, mask, cache):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

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
        self.rows = [self.rows[i] for i in keep]
        self.kv.select(keep)
        self.active = len(self.rows)
