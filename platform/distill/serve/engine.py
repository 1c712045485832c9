"""Text generation with one HF checkpoint, scored by the model's own token probabilities.

No Ray here: the Serve deployments wrap a :class:`Generator`, and ``benchmarks/serve.py`` times a
bare :meth:`Generator.generate` against the HTTP path::

    gen = Generator(Path("runs/smollm2/student"))
    out = gen.generate(gen.render(prompt="def add(a, b):"), GenParams(max_tokens=16))
    out.text, out.scores["mean_logprob"]
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCORINGS = ("mean_logprob", "min_prob", "entropy")


@dataclass(frozen=True)
class GenParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Generation:
    text: str
    pieces: list[str]  # streaming deltas; "".join(pieces) == text
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    scores: dict[str, float] = field(default_factory=dict)  # every scoring, in [0, 1]
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PromptError(ValueError):
    """The request cannot be served by this model (too long for the context, empty...)."""


def _trim_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Generator:
    """A causal LM + tokenizer loaded once; ``generate`` is serialized by a lock."""

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int | None = None,
    ) -> None:
        import torch

        from distill.models.loader import load_causal_lm, load_tokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.path = Path(path)
        self.device = device
        self.model = load_causal_lm(self.path, dtype=dtype, device=device)
        self.tok = load_tokenizer(self.path)
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.pad_id = self.tok.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tok.eos_token_id
        self._lock = threading.Lock()

    def render(self, prompt: str | None = None, messages: list[dict] | None = None) -> str:
        """The text the model sees: the prompt, or messages through the chat template."""
        if messages is None:
            return prompt or ""
        if not getattr(self.tok, "chat_template", None):
            raise PromptError(f"model {self.path.name} has no chat template: use /v1/completions")
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, chat: bool = False) -> list[int]:
        return list(self.tok(text, add_special_tokens=not chat)["input_ids"])

    def check_fits(self, n_prompt: int, max_tokens: int, context_limit: int) -> None:
        limit = min(context_limit, self.max_context)
        if n_prompt == 0:
            raise PromptError("prompt is empty after tokenization")
        if n_prompt + max_tokens > limit:
            raise PromptError(
                f"prompt is {n_prompt} tokens; with max_tokens {max_tokens} it exceeds the "
                f"context limit of {limit} tokens: shorten the prompt or lower max_tokens"
            )

    def _pieces(self, ids: list[int]) -> list[str]:
        """Incremental decode: one text delta per token (skipping incomplete characters)."""
        pieces, prev = [], ""
        for i in range(1, len(ids) + 1):
            cur = self.tok.decode(ids[:i], skip_special_tokens=True)
            if cur.startswith(prev) and not cur.endswith("\ufffd"):
                pieces.append(cur[len(prev) :])
                prev = cur
        full = self.tok.decode(ids, skip_special_tokens=True)
        if full != prev:
            pieces = [*pieces, full[len(prev) :]] if full.startswith(prev) else [full]
        return [p for p in pieces if p]

    def generate(
        self, text: str, params: GenParams, chat: bool = False, context_limit: int = 1 << 30
    ):
        """Generate from ``text``; raises :class:`PromptError` before any work if it cannot fit."""
        import torch

        from distill.serve.confidence import confidence

        ids = self.encode(text, chat=chat)
        self.check_fits(len(ids), params.max_tokens, context_limit)
        kw: dict[str, Any] = {"do_sample": params.temperature > 0}
        if params.temperature > 0:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=self.tok)
        input_ids = torch.tensor([ids], device=self.device)
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=params.max_tokens,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                **kw,
            )
            latency = (time.perf_counter() - t0) * 1000
        gen = out.sequences[0, len(ids) :].tolist()
        logits = torch.stack(out.logits, dim=1)[0, : len(gen)].float().cpu()
        scores = {s: confidence(logits, torch.tensor(gen), s) for s in SCORINGS}
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        hit_eos = bool(gen) and gen[-1] in eos_ids
        pieces = self._pieces(gen)
        text_out, hit_stop = _trim_at_stop("".join(pieces), params.stop)
        if hit_stop:
            kept, n = [], 0
            for p in pieces:
                if n >= len(text_out):
                    break
                kept.append(p[: len(text_out) - n])
                n += len(kept[-1])
            pieces = kept
        return Generation(
            text=text_out,
            pieces=pieces,
            finish_reason="stop" if (hit_eos or hit_stop) else "length",
            prompt_tokens=len(ids),
            completion_tokens=len(gen),
            scores=scores,
            latency_ms=latency,
        )
