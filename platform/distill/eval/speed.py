"""Prefill and decode speed of a model in the runtime that serves it (transformers, GPT-QModel's
kernels or ONNX Runtime GenAI), as ``evaluate`` reports it beside quality and size::

    speed = serving_speed(model, prompts, SpeedConfig())
    speed["decode_b1_tps"], speed["decode_b8_tps"], speed["prefill_tps"]

Decode is timed after the prompt's prefill and its first token, over ``new_tokens - 1`` greedy
steps that never stop early (no EOS check), so every model does the same work: a batch-1 figure
is what one user waits for, a batch-8 figure what a busy replica gives. Each figure is the median
of ``repeats`` runs. Torch models decode with their KV cache one token per forward (the loop the
serving engine runs); ONNX Runtime GenAI models step their own generator.

``serving_speeds`` times several models with their runs interleaved (each repeat times every
model once, in turn), so a load change on a shared machine lands on all of them alike and the
ratios the gate's budget reads (``decode_b1_tps`` vs ``teacher_int4``'s) hold::

    speeds = serving_speeds({"teacher_int4": t, "int4_cpu": s}, prompts, SpeedConfig())
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from distill.eval.config import SpeedConfig


def speed_prompts(rows: np.ndarray, cfg: SpeedConfig) -> np.ndarray:
    """``[n, length]`` prompts: the first ``prompt_tokens`` tokens of the first rows."""
    n = max(cfg.batch_sizes)
    if len(rows) < n:  # fewer rows than the largest batch: repeat them
        rows = np.concatenate([rows] * -(-n // len(rows)))
    return np.ascontiguousarray(rows[:n, : cfg.prompt_tokens], dtype=np.int64)


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


Timers = tuple[Callable[[np.ndarray], float], Callable[[np.ndarray], float]]


def model_timers(model: Any, new_tokens: int) -> Timers:
    """``(prefill, decode)``: each times one call on prompt ids and returns its seconds."""
    engine = getattr(model, "engine", None)  # an engine model wrapped for the torch metrics
    if engine is not None:
        return _engine_timers(engine, new_tokens)
    return _torch_timers(model, new_tokens)


def _measurements(prompts: np.ndarray, cfg: SpeedConfig) -> dict[str, tuple[int, Callable]]:
    """``{figure: (tokens of work, run(timers) -> seconds)}``: prefill, then decode per batch."""
    out: dict[str, tuple[int, Callable]] = {"prefill_tps": (prompts.size, lambda t: t[0](prompts))}
    for b in cfg.batch_sizes:
        out[f"decode_b{b}_tps"] = (b * (cfg.new_tokens - 1), lambda t, ids=prompts[:b]: t[1](ids))
    return out


def speed_rounds(cfg: SpeedConfig) -> int:
    """How many rounds (one timing of every model) ``serving_speeds`` runs."""
    return (1 + len(cfg.batch_sizes)) * cfg.repeats


def serving_speeds(
    models: Mapping[str, Any],
    prompts: np.ndarray,
    cfg: SpeedConfig,
    on_round: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``serving_speed`` of every model, runs interleaved; a model whose runtime fails gets
    ``{"speed_error": ...}`` instead, and the others go on. ``on_round(figure)`` follows each
    of the ``speed_rounds`` rounds."""
    out: dict[str, dict[str, Any]] = {}
    timers: dict[str, Timers] = {}

    def failed(key: str, e: Exception) -> None:
        out[key] = {"speed_error": f"{type(e).__name__}: {e}"[:500]}
        timers.pop(key, None)

    for key, model in models.items():
        try:
            timers[key] = model_timers(model, cfg.new_tokens)
            timers[key][0](prompts[:1, :8])  # warm-up: first-call allocations, kernel selection
        except Exception as e:  # noqa: BLE001 (any runtime failure: reported in the row)
            failed(key, e)
    work = _measurements(prompts, cfg)
    seconds: dict[str, dict[str, list[float]]] = {k: {f: [] for f in work} for k in timers}
    for figure, (_, run) in work.items():
        for _ in range(cfg.repeats):
            for key in list(timers):
                try:
                    seconds[key][figure].append(run(timers[key]))
                except Exception as e:  # noqa: BLE001
                    failed(key, e)
            if on_round is not None:
                on_round(figure)
    for key in timers:
        out[key] = {
            f: n / max(statistics.median(seconds[key][f]), 1e-9) for f, (n, _) in work.items()
        }
    return {k: out[k] for k in models}


def serving_speed(model: Any, prompts: np.ndarray, cfg: SpeedConfig) -> dict[str, float]:
    """``prefill_tps`` (every prompt in one forward) and ``decode_b<n>_tps`` per batch size;
    raises what the model's runtime raised."""
    timers = model_timers(model, cfg.new_tokens)
    timers[0](prompts[:1, :8])  # warm-up
    return {
        f: n / max(statistics.median(run(timers) for _ in range(cfg.repeats)), 1e-9)
        for f, (n, run) in _measurements(prompts, cfg).items()
    }
