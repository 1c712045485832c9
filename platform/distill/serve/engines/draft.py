"""The student's side of speculative decoding: a draft model that proposes tokens for many rows
and rolls back whatever the teacher rejected (``cascade.mode: speculative``).

A :class:`Drafter` keeps one cached state per row (``key``). Each call to :meth:`Drafter.propose`
gives every row's whole context (prompt + the answer so far): the drafter keeps the part of its
cache that still agrees with it, feeds the rest (the teacher's correction, the tokens it
accepted), then drafts ``k`` tokens. Rollback is thereby implicit, and a row the drafter has not
seen yet is prefilled::

    drafter = build_drafter("onnxruntime-genai", Path("runs/smollm2/student-int4-cpu"), threads=2)
    props = drafter.propose([DraftRow(key=7, context=ids, params=SamplingParams())], k=4)
    props[0].tokens                      # 4 draft tokens; props[0].q: their distributions (sampled)
    drafter.release([7])                 # the row has finished

| engine | drafter | batching |
|---|---|---|
| ``hf`` | :class:`HFDrafter` | every row in one forward per drafted token (a ragged KV batch) |
| ``onnxruntime-genai`` | :class:`OrtDrafter` | one rewindable generator per row (ONNX Runtime GenAI 0.18 rewinds a generator of batch size 1 only) |

A greedy row drafts the student's argmax (after the request's logit bias); a sampled row draws
from the student's distribution under the request's temperature / top-p and returns it (``q``),
which the teacher's rejection sampling needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.models.loader import load_causal_lm, load_tokenizer
from distill.runtime.ort_genai import OrtGenAIModel
from distill.serve.config import DRAFT_ENGINES
from distill.serve.engines.base import SamplingParams
from distill.serve.engines.kv import CachedLM
from distill.serve.engines.sampling import biased, sampling_probs


@dataclass
class DraftRow:
    key: int
    context: list[int]  # prompt + every token committed so far
    params: SamplingParams
    generator: Any = None  # torch.Generator of a sampled row's drafts
    limit: int = 0  # the row's longest possible context (prompt + max_tokens); 0 = the drafter's


@dataclass
class Proposal:
    tokens: list[int]
    q: Any = None  # [k, vocab] the distributions the tokens were drawn from (sampled rows)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pick(logits: Any, params: SamplingParams, generator: Any) -> tuple[int, Any]:
    """A draft token from one row's next-token ``logits`` ``[vocab]``: (token, q or None)."""
    import torch

    adjusted = biased(logits.float(), params)
    if params.temperature <= 0:
        return int(adjusted.argmax()), None
    q = sampling_probs(adjusted, params)
    return int(torch.multinomial(q, 1, generator=generator)), q


class Drafter(ABC):
    kind = "?"

    @abstractmethod
    def propose(self, rows: list[DraftRow], k: int) -> list[Proposal]:
        """``k`` draft tokens per row (rows this drafter holds but ``rows`` omits are released)."""

    @abstractmethod
    def release(self, keys: list[int]) -> None:
        """Forget these rows."""

    def reset(self) -> None:
        self.release(list(self.keys()))

    @abstractmethod
    def keys(self) -> list[int]:
        """Rows held."""


def _stack(qs: list[Any]) -> Any:
    import torch

    return torch.stack(qs) if qs and qs[0] is not None else None


class HFDrafter(Drafter):
    """A transformers student, every row drafting in one batched forward per token."""

    kind = "hf"

    def __init__(self, model: Any, pad_id: int, device: str = "cpu") -> None:
        self.lm = CachedLM(model, pad_id, device)
        self.order: list[int] = []  # key of each cache row
        self.fed: dict[int, list[int]] = {}  # tokens in each row's cache

    @classmethod
    def load(cls, path: Path, device: str = "cpu", dtype: str = "float32") -> HFDrafter:
        model = load_causal_lm(Path(path), dtype=dtype, device=device)
        tok = load_tokenizer(Path(path))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0
        return cls(model, pad, device)

    def keys(self) -> list[int]:
        return list(self.order)

    def release(self, keys: list[int]) -> None:
        gone = set(keys)
        keep = [i for i, key in enumerate(self.order) if key not in gone]
        if len(keep) == len(self.order):
            return
        self.lm.select(keep)
        self.order = [self.order[i] for i in keep]
        for key in gone:
            self.fed.pop(key, None)

    def reset(self) -> None:
        self.lm.reset()
        self.order, self.fed = [], {}

    def propose(self, rows: list[DraftRow], k: int) -> list[Proposal]:
        import torch

        if k < 1 or not rows:
            return [Proposal([]) for _ in rows]
        with torch.inference_mode():
            wanted = {r.key for r in rows}
            self.release([key for key in self.order if key not in wanted])
            by_key = {r.key: r for r in rows}
            last = self._catch_up(by_key)  # key -> next-token logits [vocab]
            tokens: dict[int, list[int]] = {key: [] for key in self.order}
            qs: dict[int, list[Any]] = {key: [] for key in self.order}
            for step in range(k):
                for key in self.order:
                    tok, q = pick(last[key], by_key[key].params, by_key[key].generator)
                    tokens[key].append(tok)
                    qs[key].append(q)
                if step == k - 1:
                    break
                logits = self.lm.extend([[tokens[key][-1]] for key in self.order], keep=1)
                last = {key: logits[i, -1] for i, key in enumerate(self.order)}
                for key in self.order:
                    self.fed[key].append(tokens[key][-1])
        return [Proposal(tokens[r.key], _stack(qs[r.key])) for r in rows]

    def _catch_up(self, rows: dict[int, DraftRow]) -> dict[int, Any]:
        """Roll every held row back to where it agrees with its context and feed the rest;
        prefill new rows. Next-token logits per key."""
        last: dict[int, Any] = {}
        if self.order:
            drop, pending = [], []
            for key in self.order:
                ctx, fed = rows[key].context, self.fed[key]
                keep = min(common_prefix(fed, ctx), len(ctx) - 1)  # feed >= 1 token
                drop.append(len(fed) - keep)
                pending.append(ctx[keep:])
                self.fed[key] = list(ctx)
            self.lm.discard(drop)
            logits = self.lm.extend(pending, keep=1)
            last = {key: logits[i, -1] for i, key in enumerate(self.order)}
        new = [key for key in rows if key not in self.fed]
        if new:
            logits = self.lm.prefill([rows[key].context for key in new])
            for i, key in enumerate(new):
                self.order.append(key)
                self.fed[key] = list(rows[key].context)
                last[key] = logits[i]
        return last


class OrtDrafter(Drafter):
    """The int4 ONNX Runtime GenAI student, one rewindable batch-1 generator per row, in the
    engine's thread (its intra-op threads do not spin, so they leave the cores to the teacher)."""

    kind = "onnxruntime-genai"

    def __init__(self, runtime: Any, max_length: int) -> None:
        self.runtime = runtime  # distill.runtime.ort_genai.OrtGenAIModel
        self.max_length = max_length
        self.cursors: dict[int, Any] = {}  # key -> runtime.cursor(...)

    @classmethod
    def load(cls, path: Path, threads: int | None, max_length: int) -> OrtDrafter:
        return cls(OrtGenAIModel.load(Path(path), threads=threads, spin=False), max_length)

    def keys(self) -> list[int]:
        return list(self.cursors)

    def release(self, keys: list[int]) -> None:
        for key in keys:
            self.cursors.pop(key, None)

    def propose(self, rows: list[DraftRow], k: int) -> list[Proposal]:
        import torch

        wanted = {r.key for r in rows}
        self.release([key for key in self.cursors if key not in wanted])
        out = []
        for r in rows:
            if k < 1:
                out.append(Proposal([]))
                continue
            cur = self.cursors.get(r.key)
            if cur is None:
                cur = self.cursors[r.key] = self.runtime.cursor(r.limit or self.max_length)
            logits = cur.sync(r.context)
            tokens, qs = [], []
            for step in range(k):
                tok, q = pick(torch.from_numpy(logits), r.params, r.generator)
                tokens.append(tok)
                qs.append(q)
                if step < k - 1:
                    logits = cur.feed([tok])
            out.append(Proposal(tokens, _stack(qs)))
        return out


def build_drafter(
    kind: str,
    path: Path,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    max_length: int = 2048,
) -> Drafter:
    """The student as a draft model, loaded with its engine ``kind``."""
    if kind == "hf":
        return HFDrafter.load(path, device, dtype)
    if kind == "onnxruntime-genai":
        return OrtDrafter.load(path, threads, max_length)
    raise DistillError(
        f"engine {kind!r} cannot draft for speculative decoding (draft engines: "
        f"{', '.join(DRAFT_ENGINES)})"
    )
