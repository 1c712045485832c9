"""Prefill and decode speed of a model in the runtime that serves it (transformers, GPT-QModel's
kernels or ONNX Runtime GenAI), as ``evaluate`` reports it beside quality and size::

    speed = serving_speed(model, prompts, SpeedConfig())
    speed["decode_b1_tps"], speed["decode_b8_tps"], speed["prefill_tps"]

Decode is timed after the prompt's prefill and its first token, over ``new_tokens - 1`` greedy
steps that never stop early (no EOS check), so every model does the same work: a batch-1 figure
is what one user waits for, a batch-8 figure what a busy replica gives. Each figure is the median
of ``repeats`` runs. Torch models decode with their KV cache one token per forward (the loop the
serving engine runs); ONNX Runtime GenAI models step their own generator.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distill.eval.config import SpeedConfig


def speed_prompts(rows: np.ndarray, cfg: SpeedConfig) -> np.ndarray:
    """``[n, length]`` prompts: the first ``prompt_tokens`` tokens of the first rows."""
    n = max(cfg.batch_sizes)
    if len(rows) < n:  # fewer rows than the largest batch: repeat them
        rows = np.concatenate([rows] * -(-n // len(rows)))
    return np.ascontiguousarray(rows[:n, : cfg.prompt_tokens], dtype=np.int64)


def _median_rate(work: float, timed: Callable[[], float], repeats: int) -> float:
    """``work`` / the median of ``repeats`` timings (seconds) of ``timed``."""
    return work / max(statistics.median(timed() for _ in range(repeats)), 1e-9)


def _torch_timers(model: Any, new_tokens: int):
    import torch

    device = next(model.parameters()).device

    def prefill(ids: np.ndarray) -> float:
        x = torch.as_tensor(ids, device=device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(input_ids=x)
            return time.perf_counter() - t0

    def decode(ids: np.ndarray) -> float:
        x = torch.as_tensor(ids, device=device)
        with torch.inference_mode():
            out = model(input_ids=x, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t0

    return prefill, decode


def _engine_timers(engine: Any, new_tokens: int):
    def prefill(ids: np.ndarray) -> float:
        t0 = time.perf_counter()
        engine.logits(ids)
        return time.perf_counter() - t0

    def decode(ids: np.ndarray) -> float:
        return engine.decode_seconds(ids, new_tokens)

    return prefill, decode


def serving_speed(model: Any, prompts: np.ndarray, cfg: SpeedConfig) -> dict[str, float]:
    """``prefill_tps`` (every prompt in one forward) and ``decode_b<n>_tps`` per batch size."""
    engine = getattr(model, "engine", None)  # an engine model wrapped for the torch metrics
    prefill, decode = (
        _engine_timers(engine, cfg.new_tokens)
        if engine is not None
        else _torch_timers(model, cfg.new_tokens)
    )
    prefill(prompts[:1, :8])  # warm-up: first-call allocations and kernel selection
    out = {"prefill_tps": _median_rate(prompts.size, lambda: prefill(prompts), cfg.repeats)}
    steps = cfg.new_tokens - 1
    for b in cfg.batch_sizes:
        ids = prompts[:b]
        out[f"decode_b{b}_tps"] = _median_rate(b * steps, lambda ids=ids: decode(ids), cfg.repeats)
    return out
