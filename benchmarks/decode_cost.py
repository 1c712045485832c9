"""Where a decode step's time goes in the CPU int4 engine: random models of the teacher's shape
with fewer layers, a narrower MLP or a narrower hidden size, exported like the pipeline's
``quantize.engine`` (RTN weights: int4 kernel speed does not depend on the values) and timed
together, runs interleaved (``evaluate``'s ``serving_speeds``)::

    .venv/bin/python benchmarks/decode_cost.py --config pipelines/configs/smollm2.yaml

A least-squares line through batch-1 milliseconds per token against the number of layers (full
width) splits a step into a fixed part (embedding, the tied head over the whole vocabulary,
the engine's own per-token work) and a per-layer part; the fixed part bounds what any prune that
keeps the head can buy: the full shape's step over the fixed part is the speed-up of a model
with no layers at all. The layers a 1.5x speed-up needs follow from the same line. Used to read
the recipe search's ratios against the teacher in the student's own format (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from distill.machine import describe

LAYER_SERIES = (30, 24, 18, 12, 6, 1)
# (name, overrides of the source shape): the recipe search's shapes and a narrower hidden size
# (the head over the vocabulary shrinks with it)
SHAPES = [
    *[(f"layers {n}", {"num_hidden_layers": n}) for n in LAYER_SERIES],
    ("MLP 1152 (width 0.85)", {"intermediate_size": 1152}),
    ("MLP 768 (width 0.7)", {"intermediate_size": 768}),
    ("28 layers, MLP 1280 (combined 0.85)", {"num_hidden_layers": 28, "intermediate_size": 1280}),
    ("hidden 288 (a multiple of the 9 heads and of the group 32)", {"hidden_size": 288}),
]


def fit(layers: list[int], ms: list[float]) -> tuple[float, float]:
    """``(fixed ms, ms per layer)``: least squares of ms/token = fixed + per_layer x layers."""
    per_layer, fixed = np.polyfit(np.asarray(layers, float), np.asarray(ms, float), 1)
    return float(fixed), float(per_layer)


def export_probes(source: Path, src, engine, work: Path) -> dict[str, Path]:
    """Every probe of SHAPES (overrides of ``src``, the source's ``ModelShape``) as an engine
    export under ``work`` (the fp32 probe is dropped)."""
    from distill.prune.speedup import export_probe, probe_model

    dirs: dict[str, Path] = {}
    for i, (name, over) in enumerate(SHAPES):
        d = probe_model(source, src.with_target(**over), work / f"probe-{i}")
        dirs[name] = export_probe(d, engine, work)
        shutil.rmtree(d)  # ~0.5 GB: only its engine export is timed
    return dirs


def report(dirs: dict[str, Path], speeds: dict[str, dict], layers: int) -> str:
    """The probes' table, then the fixed + per-layer line and what it says about a 1.5x prune."""
    from distill.models.hashing import dir_size_bytes

    full = speeds[SHAPES[0][0]]["decode_b1_tps"]
    lines = [
        f"| probe | engine MB | decode b1 tok/s | ms / token | b1 vs {layers} layers | "
        "decode b8 tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in dirs.items():
        s = speeds[name]
        lines.append(
            f"| {name} | {dir_size_bytes(d) / 1e6:.1f} | {s['decode_b1_tps']:.1f} | "
            f"{1e3 / s['decode_b1_tps']:.2f} | {s['decode_b1_tps'] / full:.2f}x | "
            f"{s['decode_b8_tps']:.1f} |"
        )
    ms = [1e3 / speeds[f"layers {n}"]["decode_b1_tps"] for n in LAYER_SERIES]
    fixed, per_layer = fit(list(LAYER_SERIES), ms)
    step = fixed + per_layer * layers
    need = (step / 1.5 - fixed) / per_layer
    lines.append(
        f"\nfit over the layer series: {fixed:.2f} ms fixed + {per_layer:.3f} ms per layer "
        f"(full shape {step:.2f} ms: the fixed part is {fixed / step:.0%}); no layers at all = "
        f"{step / fixed:.2f}x; 1.5x needs <= {need:.1f} full-width layers "
        f"({need / layers:.0%} of them)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("pipelines/configs/smollm2.yaml"))
    ap.add_argument("--source", type=Path, help="HF dir whose shape is probed (default: teacher)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, help="keep the probe exports here (default: a temp dir)")
    args = ap.parse_args(argv)

    from distill.artifacts import load_for_eval
    from distill.eval.config import SpeedConfig
    from distill.eval.speed import serving_speeds
    from distill.models.gguf import convert_gguf, packaged_gguf
    from distill.pipeline import load_config
    from distill.prune.shape import ModelShape

    engine = load_config(args.config).quantize.engine
    if engine.kind != "ort-genai":
        raise SystemExit(f"{args.config}: quantize.engine is {engine.kind!r}, not the CPU engine")
    source = args.source or convert_gguf(packaged_gguf())
    src = ModelShape.from_config(json.loads((source / "config.json").read_text()))
    cfg = SpeedConfig(prompt_tokens=128, new_tokens=64, batch_sizes=[1, 8], repeats=args.repeats)
    print(
        f"# decode_cost: {args.config} engine {engine.kind} (lm_head_bits {engine.lm_head_bits}, "
        f"{engine.threads} threads), source shape {src.num_hidden_layers} layers, MLP "
        f"{src.intermediate_size}, hidden {src.hidden_size}, vocab {src.vocab_size}, "
        f"{cfg.repeats} interleaved repeats\n# machine: {describe()}",
        flush=True,
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="distill-decode-cost-"))
    try:
        dirs = export_probes(source, src, engine, work)
        models = {k: load_for_eval(d, threads=engine.threads) for k, d in dirs.items()}
        rng = np.random.default_rng(0)
        prompts = rng.integers(0, src.vocab_size, (8, cfg.prompt_tokens), dtype=np.int64)
        speeds = serving_speeds(models, prompts, cfg)
        print(report(dirs, speeds, src.num_hidden_layers), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
