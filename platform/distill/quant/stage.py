"""Stage ``quantize``: the latest model (student, else pruned, else teacher) to ``student-int4/``.

Calibration rows come from the TRAIN split only (checked disjoint from held-out); the stage logs
the quantization config, time, peak memory, size on disk before/after and held-out perplexity /
next-token accuracy of the fp model, the GPTQ int4 model and (``compare_rtn``) an RTN baseline::

    distill run pipelines/configs/smoke.yaml     # stages: [..., quantize, evaluate]
"""

from __future__ import annotations

import time
from pathlib import Path

from distill.models.hashing import dir_sha256, file_sha256, weights_sha256
from distill.quant.checkpoint import (
    Outputs,
    calibration_rows,
    heldout_quality,
    num_layers,
    peak_rss_mb,
    quantize_checkpoint,
)
from distill.quant.config import QuantizeConfig
from distill.quant.gptq import validate
from distill.quant.recover import check_store, recover
from distill.runtime.ort_genai import require_ort_genai
from distill.stages import StageContext, StageResult

OUTPUT_NAME = "student-int4"
ENGINE_OUTPUT_NAME = "student-int4-cpu"
GGUF_OUTPUT_NAME = "student-gguf"


def run(ctx: StageContext, cfg: QuantizeConfig) -> StageResult:
    key, model_dir = ctx.latest_model()
    validate(model_dir, cfg)
    if cfg.recover.steps:  # a missing store fails before any work
        check_store(ctx, cfg)
    if cfg.engine.kind != "none":  # so does an engine that is not installed
        require_ort_genai()
    if cfg.gguf:  # and an architecture or a llama.cpp tool the GGUF export lacks
        from distill.runtime.gguf_export import preflight

        preflight(model_dir, cfg.gguf)
    rows = calibration_rows(ctx.corpus, cfg, ctx.teacher.path)
    ctx.tracker.log_params(cfg.model_dump(), prefix="quantize.")
    ctx.tracker.log_params({"source": key, "calib_split": "train", "calib_tokens": int(rows.size)})
    ctx.tracker.record_input("model", model_dir, weights_sha256(model_dir))
    ctx.tracker.set_tags({"input.calibration.uri": str(ctx.corpus.train_path)})

    # lineage: soft labels -> int4 (GPTQ) -> recovered int4
    rec = (lambda gptq_dir: recover(ctx, cfg, gptq_dir)) if cfg.recover.steps else None
    where = Outputs(ctx.output_dir(OUTPUT_NAME), ctx.output_dir(ENGINE_OUTPUT_NAME))
    layers = num_layers(model_dir)
    with ctx.progress.task("quantize", layers, "layers") as bar:

        def bar_layer(i: int) -> None:
            bar.update(i + 1, phase="GPTQ" if i + 1 < layers else "export")

        outputs, metrics = quantize_checkpoint(
            model_dir, cfg, rows, where, ctx.corpus.heldout(), recover=rec, on_layer=bar_layer
        )
        bar.update(phase="held-out eval")  # reads no GGUF file: before the GGUF exports
        metrics.update(heldout_quality(ctx.corpus.heldout(cfg.eval_rows), cfg, model_dir, outputs))
    if "int4_gptq" in outputs:
        ctx.tracker.record_output(
            "int4_gptq", outputs["int4_gptq"], weights_sha256(outputs["int4_gptq"])
        )
    if "int4_cpu" in outputs:
        src = outputs["int4"] if cfg.engine.source == "gptq" else Path(model_dir)
        ctx.tracker.set_tags(
            {
                "engine.kind": cfg.engine.kind,
                "engine.source": cfg.engine.source,
                "engine.from": str(src),
            }
        )
    for quant in cfg.gguf:
        outputs[f"gguf_{quant}"] = export_gguf_file(ctx, model_dir, key, quant, metrics)
    metrics["peak_rss_mb"] = peak_rss_mb()
    sha = weights_sha256(outputs["int4"])
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.record_output("int4", outputs["int4"], sha)
    if "int4_cpu" in outputs:
        ctx.tracker.record_output("int4_cpu", outputs["int4_cpu"], dir_sha256(outputs["int4_cpu"]))
    for quant in cfg.gguf:
        path = outputs[f"gguf_{quant}"]
        ctx.tracker.record_output(f"gguf_{quant}", path, file_sha256(path))
    summary = {
        "source": key,
        "method": cfg.method,
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "recovered": bool(cfg.recover.steps),
        "int4_sha256": sha,
        **{k: round(v, 4) for k, v in metrics.items()},
    }
    ctx.tracker.log_dict(summary, "quantize_summary.json")
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)


def export_gguf_file(ctx: StageContext, fp_dir: Path, key: str, quant: str, metrics: dict) -> Path:
    """``student-gguf/<source>-<quant>.gguf`` from the fp model (llama.cpp's own quantization)."""
    from distill.runtime.gguf_export import export_gguf

    t0 = time.perf_counter()
    out = export_gguf(fp_dir, ctx.output_dir(GGUF_OUTPUT_NAME) / f"{key}-{quant}.gguf", quant)
    metrics[f"gguf_{quant}_export_seconds"] = time.perf_counter() - t0
    metrics[f"gguf_{quant}_size_bytes"] = float(out.stat().st_size)
    return out
