"""Plan a prune by the decode speed-up it buys in the engine that will serve the student, not by a
parameter count (``prune.target_speedup``): what users buy is tokens/s at batch 1.

Each probe builds a randomly initialised model of a planned shape (speed does not depend on the
weights' values), exports it to the CPU engine the pipeline quantizes to (``quantize.engine``;
transformers fp32 when there is none) and times batch-1 decode against the source's shape built
the same way, the two runs interleaved (a load change on a shared machine lands on both, so the
ratio holds); a bisection over ``target_params`` finds the largest model that reaches the
speed-up::

    search = plan_for_speedup(PruneConfig(policy="width", target_speedup=1.5), teacher_dir,
                              EngineConfig(kind="ort-genai", source="fp"), Path("/tmp/probes"))
    search.target_params, search.probes   # [(target_params, measured speed-up), ...]
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.eval.config import SpeedConfig
from distill.eval.speed import serving_speeds
from distill.models.files import copy_tokenizer_files
from distill.models.loader import load_causal_lm
from distill.prune.config import PruneConfig
from distill.prune.planner import make_plan
from distill.prune.shape import ModelShape
from distill.runtime.config import EngineConfig
from distill.runtime.export import export_ort_genai
from distill.runtime.ort_genai import OrtGenAIModel
from distill.runtime.torch_adapter import engine_as_torch

# probes of a bisection over target_params in [LOW or the policy's smallest plan, 1]; each probe
# costs one engine export
LOW, PROBES = 0.15, 6
SPEED = SpeedConfig(prompt_tokens=64, new_tokens=48, batch_sizes=[1], repeats=5)


@dataclass
class SpeedupSearch:
    target_params: float  # the largest budget whose shape reached the speed-up
    speedup: float  # measured at that budget
    source_tps: float  # the source shape's batch-1 decode tokens/s (median over the probes)
    probes: list[tuple[float, float]] = field(default_factory=list)  # (target_params, speed-up)


def probe_model(src_dir: Path, shape: ModelShape, out: Path) -> Path:
    """A random model of ``shape`` (the source's config otherwise) saved as an HF checkpoint with
    the source's tokenizer (the engine's exporter reads it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src_cfg = json.loads((Path(src_dir) / "config.json").read_text())
    fields = {k: v for k, v in src_cfg.items() if k not in ("model_type", "architectures")}
    cfg = AutoConfig.for_model(src_cfg["model_type"], **{**fields, **shape.target_dict()})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    copy_tokenizer_files(Path(src_dir), out)
    return out


def probe_engine_dir(model_dir: Path, work: Path) -> Path:
    """Where ``export_probe`` writes ``model_dir``'s engine export."""
    return work / f"{model_dir.name}-engine"


def export_probe(model_dir: Path, engine: EngineConfig, work: Path) -> Path:
    """``model_dir`` exported to the CPU int4 ``engine`` with RTN weights (the speed of int4
    kernels does not depend on how the weights were chosen): ``probe_engine_dir``."""
    probe = engine.model_copy(update={"source": "fp", "algo": "rtn"})
    return export_ort_genai(model_dir, probe_engine_dir(model_dir, work), probe, group_size=32)


def _load_probe(model_dir: Path, engine: EngineConfig, work: Path) -> Any:
    """``model_dir`` ready to time: exported to ``engine`` and loaded (transformers fp32 for
    none)."""
    if engine.kind == "none":
        return load_causal_lm(model_dir)
    out = export_probe(model_dir, engine, work)
    return engine_as_torch(OrtGenAIModel.load(out, threads=engine.threads))


def paired_decode(source: Any, probe: Any, prompts: np.ndarray) -> tuple[float, float]:
    """Batch-1 decode tokens/s of ``source`` and ``probe``, their runs interleaved; a probe the
    engine cannot run is a ``DistillError`` naming it."""
    speeds = serving_speeds({"source": source, "probe": probe}, prompts, SPEED)
    failed = {k: v["speed_error"] for k, v in speeds.items() if "speed_error" in v}
    if failed:
        raise DistillError(f"prune.target_speedup: the engine could not time a probe: {failed}")
    return speeds["source"]["decode_b1_tps"], speeds["probe"]["decode_b1_tps"]


def smallest_budget(cfg: PruneConfig, src: ModelShape) -> float:
    """The smallest ``target_params`` (from LOW up, in steps of 0.05) the policy can plan."""
    t = LOW
    while t < 1.0:
        try:
            make_plan(cfg.model_copy(update={"target_params": t}), src)
            return t
        except DistillError:
            t = round(t + 0.05, 2)
    return 1.0


def plan_for_speedup(
    cfg: PruneConfig, src_dir: Path, engine: EngineConfig, work: Path | None = None
) -> SpeedupSearch:
    """The largest ``target_params`` whose planned shape decodes ``cfg.target_speedup`` times as
    fast as the source at batch 1 in ``engine``; ``DistillError`` when even the smallest probed
    budget does not."""
    assert cfg.target_speedup is not None
    src_cfg = json.loads((Path(src_dir) / "config.json").read_text())
    src = ModelShape.from_config(src_cfg)
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="distill-speedup-")) if own else Path(work)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, src.vocab_size, (1, SPEED.prompt_tokens), dtype=np.int64)
    try:
        source = _load_probe(probe_model(src_dir, src, work / "source"), engine, work)
        probes: list[tuple[float, float]] = []
        source_tps: list[float] = []

        def speedup(t: float) -> float:
            plan = make_plan(cfg.model_copy(update={"target_params": t}), src)
            d = probe_model(src_dir, plan.shape, work / f"probe-{len(probes)}")
            base, tps = paired_decode(source, _load_probe(d, engine, work), prompts)
            source_tps.append(base)
            probes.append((t, tps / base))
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(probe_engine_dir(d, work), ignore_errors=True)
            return tps / base

        lo, hi = smallest_budget(cfg, src), 1.0  # the bisection keeps speed-up(lo) >= target
        if speedup(lo) < cfg.target_speedup:
            raise DistillError(
                f"prune.target_speedup={cfg.target_speedup}: even a {lo:.0%} budget (the "
                f"smallest policy {cfg.policy!r} can plan) only reaches {probes[-1][1]:.2f}x in "
                "the engine; lower the target or allow more axes (policy: combined)"
            )
        best = (lo, probes[-1][1])
        for _ in range(PROBES - 1):
            mid = round((lo + hi) / 2, 3)
            s = speedup(mid)
            if s >= cfg.target_speedup:
                lo, best = mid, (mid, s)
            else:
                hi = mid
        return SpeedupSearch(best[0], best[1], statistics.median(source_tps), probes)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
