"""ONNX Runtime GenAI int4 model on CPU: load, batched generate step by step, score.

The ``quantize`` stage exports the student to this format (``distill.runtime.export``);
``evaluate`` scores it and a Serve engine adapter wraps it::

    m = OrtGenAIModel.load(Path("runs/smollm2/student-int4-ort"), threads=2)
    for step in m.generate_steps([[1, 2, 3], [4, 5]], max_new_tokens=16):
        step.token_ids, step.logprobs, step.finished     # one entry per prompt
    outs = m.generate([[1, 2, 3]], max_new_tokens=16)    # [Completion(token_ids, logprobs, ...)]
    m.logprobs(rows)                                     # [B, S-1] log p(next token): ppl

Prompts of different lengths are right-padded with the model's ``pad_token_id`` (that is how ONNX
Runtime GenAI tells padding from tokens in a batch: trailing pad ids of a row are ignored), so a
prompt must not end with the pad id when it is batched with others. Greedy when
``temperature == 0``. Log-probs are of the raw (temperature 1) distribution, as the HF engine's
confidence scores are. One ``generate_steps`` at a time per instance (the GenAI generator is not
thread-safe); open one instance per thread or serialize calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill.config.base import DistillError
from distill.runtime.tied_int8 import require_int8_gather

ENGINE = "onnxruntime-genai"
EXTRA = "cpu-int4"  # pip install 'distill[cpu-int4]'
MANIFEST = "distill_engine.json"  # written by distill.runtime.export beside the model


def require_ort_genai():
    """Import ``onnxruntime_genai`` or fail with one message naming the extra to install."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise DistillError(
            f"engine {ENGINE!r} is not installed: pip install 'distill[{EXTRA}]' "
            "(or: pip install onnxruntime-genai onnx-ir onnxscript)"
        ) from None
    return og


@dataclass
class Step:
    """One decoding step of a batch: entry ``i`` belongs to prompt ``i``.

    A finished row keeps ``finished[i] = True`` and ``token_ids[i] = -1`` in later steps.
    ``logits`` (``[B, vocab]``, float32) only when asked for (``return_logits=True``).
    """

    token_ids: np.ndarray
    logprobs: np.ndarray
    finished: np.ndarray
    logits: np.ndarray | None = None


@dataclass
class Completion:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (an EOS id) | "length"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _token_logprobs(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``log_softmax(logits)[i, tokens[i]]`` with one pass of exp over the vocabulary."""
    m = logits.max(-1)
    log_z = np.log(np.exp(logits - m[:, None]).sum(-1))
    return logits[np.arange(len(tokens)), tokens] - m - log_z


class OrtGenAIModel:
    """An exported ONNX Runtime GenAI model directory (``genai_config.json`` + ``model.onnx``)."""

    engine = ENGINE

    def __init__(self, model, path: Path, cfg: dict) -> None:
        self._og = require_ort_genai()
        self._model = model
        self.path = path
        m = cfg["model"]
        eos = m.get("eos_token_id", [])
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(m.get("pad_token_id", next(iter(self.eos_ids), 0)))
        self.vocab_size = int(m["vocab_size"])
        self.context_length = int(m.get("context_length", 2048))

    @classmethod
    def load(cls, path: Path, threads: int | None = None, spin: bool = True) -> OrtGenAIModel:
        """Open ``path`` on the CPU; ``threads``: intra-op threads (None = ONNX Runtime's);
        ``spin=False``: idle intra-op threads sleep instead of busy-waiting (ONNX Runtime's
        ``session.intra_op.allow_spinning``), which leaves the cores to other processes."""
        og = require_ort_genai()
        path = Path(path)
        cfg_file = path / "genai_config.json"
        if not cfg_file.exists():
            raise DistillError(
                f"{path} is not an {ENGINE} model (no genai_config.json); export one with "
                "the quantize stage (quantize.engine: ort-genai)"
            )
        cfg = json.loads(cfg_file.read_text())
        manifest = path / MANIFEST
        if manifest.exists() and json.loads(manifest.read_text()).get("embedding_bits") == 8:
            require_int8_gather()  # an older runtime: one message naming the setting
        config = og.Config(str(path))
        config.clear_providers()
        opts: dict[str, int | str] = {}
        if threads:
            opts.update(intra_op_num_threads=int(threads), inter_op_num_threads=1)
        if not spin:  # a string value under session_options is a session config entry
            opts["session.intra_op.allow_spinning"] = "0"
        if opts:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
        return cls(og.Model(config), path, cfg)

    # ---- generation -------------------------------------------------------------------------

    def _padded(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        width = max(len(p) for p in prompts)
        if len(prompts) > 1 and any(int(p[-1]) == self.pad_id for p in prompts):
            raise ValueError(
                f"a prompt ends with the pad id {self.pad_id}: batched prompts are right-padded "
                "with it, so it would be dropped; generate that prompt on its own"
            )
        out = np.full((len(prompts), width), self.pad_id, dtype=np.int32)
        for i, p in enumerate(prompts):
            out[i, : len(p)] = np.asarray(p, dtype=np.int32)
        return out

    def _generator(self, batch: int, max_length: int, sampling: dict):
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=max_length, batch_size=batch, **sampling)
        return og.Generator(self._model, params)

    def generate_steps(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        return_logits: bool = False,
    ) -> Iterator[Step]:
        """Yield one :class:`Step` per generated position until every row is finished."""
        ids = self._padded(prompts)
        if ids.shape[1] + max_new_tokens > self.context_length:
            raise ValueError(
                f"prompt of {ids.shape[1]} tokens + max_new_tokens {max_new_tokens} exceeds the "
                f"context length {self.context_length}"
            )
        sampling: dict = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
            if seed is not None:
                sampling["random_seed"] = int(seed)
        gen = self._generator(len(ids), ids.shape[1] + max_new_tokens, sampling)
        gen.append_tokens(ids)
        done = np.zeros(len(ids), dtype=bool)
        for _ in range(max_new_tokens):
            logits = np.asarray(gen.get_logits())[:, -1].astype(np.float32)
            gen.generate_next_token()
            tokens = np.asarray(gen.get_next_tokens()).astype(np.int64)
            lp = _token_logprobs(logits, tokens)
            tokens = np.where(done, -1, tokens)
            lp = np.where(done, 0.0, lp)
            done = done | np.isin(tokens, list(self.eos_ids))
            yield Step(tokens, lp, done.copy(), logits if return_logits else None)
            if done.all() or gen.is_done():
                return

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kw
    ) -> list[Completion]:
        """All steps collected: one :class:`Completion` per prompt (EOS included when hit)."""
        outs = [Completion() for _ in prompts]
        for step in self.generate_steps(prompts, max_new_tokens, **kw):
            for i, c in enumerate(outs):
                if c.finish_reason == "stop":
                    continue
                c.token_ids.append(int(step.token_ids[i]))
                c.logprobs.append(float(step.logprobs[i]))
                if step.finished[i]:
                    c.finish_reason = "stop"
        return outs

    def decode_seconds(self, prompts: np.ndarray, new_tokens: int) -> float:
        """Seconds of ``new_tokens - 1`` greedy steps of a batch after its prefill and first
        token, never stopping early (the decode speed ``distill.eval.speed`` reports)."""
        ids = np.asarray(prompts, dtype=np.int32)
        total = ids.shape[1] + new_tokens
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=total, min_length=total, batch_size=len(ids))
        gen = og.Generator(self._model, params)
        gen.append_tokens(ids)
        gen.generate_next_token()  # the first token comes from the prefill's logits
        t0 = time.perf_counter()
        for _ in range(new_tokens - 1):
            gen.generate_next_token()
        return time.perf_counter() - t0

    def cursor(self, max_length: int) -> Cursor:
        """One sequence that can be rolled back (a greedy batch-1 generator: ONNX Runtime GenAI
        rewinds only those), for drafting tokens the caller may take back."""
        return Cursor(
            self._generator(1, min(max_length, self.context_length), {"do_sample": False})
        )

    # ---- scoring ----------------------------------------------------------------------------

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """``[B, S, vocab]`` float32 logits of full rows (one prefill, no padding)."""
        rows = np.asarray(rows)
        gen = self._generator(rows.shape[0], rows.shape[1], {"do_sample": False})
        gen.append_tokens(rows.astype(np.int32))
        return np.asarray(gen.get_output("logits")).astype(np.float32)

    def logprobs(self, rows: np.ndarray) -> np.ndarray:
        """``[B, S-1]``: log p(row[t+1] | row[:t+1]); ``exp(-mean)`` is the perplexity."""
        rows = np.asarray(rows)
        logp = _log_softmax(self.logits(rows)[:, :-1])
        return np.take_along_axis(logp, rows[:, 1:, None].astype(np.int64), -1)[..., 0]

    def stored_parameters(self) -> int:
        """Weights as stored (packed int4 counted as stored elements), for reports."""
        import onnx

        model = onnx.load(str(self.path / "model.onnx"), load_external_data=False)
        total = 0
        for t in model.graph.initializer:
            total += int(np.prod(t.dims)) if t.dims else 1
        return total


class Cursor:
    """A batch-1 generator fed token by token, rewound to the longest prefix a new context
    shares with what it holds (speculative drafting: the tokens the teacher rejected go)::

        cur = model.cursor(max_length=256)
        logits = cur.sync(prompt_ids)          # [vocab] next-token logits
        logits = cur.feed([token])
        logits = cur.sync(prompt_ids + kept)   # rewinds past what ``kept`` does not share
    """

    def __init__(self, generator) -> None:
        self.generator = generator
        self.tokens: list[int] = []

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` (one or more); the logits after the last of them."""
        self.generator.append_tokens(np.asarray([list(tokens)], dtype=np.int32))
        self.tokens += [int(t) for t in tokens]
        return np.asarray(self.generator.get_logits(), dtype=np.float32)[0, -1]

    def sync(self, context: Sequence[int]) -> np.ndarray:
        """Hold exactly ``context``: rewind to the prefix it shares with what is held, then feed
        the rest (at least its last token: the logits after a rewind are not the last token's)."""
        n = min(len(self.tokens), len(context) - 1)
        keep = next((i for i in range(n) if self.tokens[i] != context[i]), n)
        if keep < len(self.tokens):
            self.generator.rewind_to(keep)
            self.tokens = self.tokens[:keep]
        return self.feed(context[keep:])
