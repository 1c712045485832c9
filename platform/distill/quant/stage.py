"""Stage ``quantize``: the latest model (student, else pruned, else teacher) to ``student-int4/``.

Calibration rows come from the TRAIN split only (checked disjoint from held-out); the stage logs
the quantization config, time, peak memory, size on disk before/after and held-out perplexity /
next-token accuracy of the fp model, the GPTQ int4 model and (``compare_rtn``) an RTN baseline::

    distill run pipelines/configs/smoke.yaml     # stages: [..., quantize, evaluate]
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np

from distill.config.base import DistillError
from distill.models.hashing import file_sha256, weights_sha256
from distill.quant.config import QuantizeConfig
from distill.stages import StageContext, StageResult

OUTPUT_NAME = "student-int4"
ENGINE_OUTPUT_NAME = "student-int4-cpu"
GGUF_OUTPUT_NAME = "student-gguf"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def heldout_overlap(train: np.ndarray, heldout: np.ndarray) -> int:
    """How many train rows also appear verbatim in the held-out split (must be 0)."""
    if len(train) == 0 or len(heldout) == 0 or train.shape[1] != heldout.shape[1]:
        return 0
    seen = {r.tobytes() for r in np.ascontiguousarray(heldout, dtype=np.int32)}
    return sum(r.tobytes() in seen for r in np.ascontiguousarray(train, dtype=np.int32))


def calibration_rows(ctx: StageContext, cfg: QuantizeConfig) -> np.ndarray:
    """Train rows holding ``calib_rows * calib_seq_len`` tokens; never held-out rows."""
    seq_len = ctx.corpus.seq_len or cfg.calib_seq_len
    need = -(-cfg.calib_rows * cfg.calib_seq_len // seq_len)  # ceil
    rows = ctx.corpus.train(need)
    if rows.size == 0:
        raise DistillError(
            f"empty calibration set: {ctx.corpus.train_path} has no rows; the quantize stage "
            "calibrates on the train split"
        )
    overlap = heldout_overlap(rows, ctx.corpus.heldout())
    if overlap:
        raise DistillError(
            f"{overlap} calibration row(s) also appear in the held-out split; fix the data split "
            "before quantizing (held-out metrics would be contaminated)"
        )
    return rows


def run(ctx: StageContext, cfg: QuantizeConfig) -> StageResult:
    from distill.quant.gptq import calibration_samples, quantize, validate

    key, model_dir = ctx.latest_model()
    validate(model_dir, cfg)
    if cfg.recover.steps:  # a missing store fails before any work
        from distill.quant.recover import check_store

        check_store(ctx)
    if cfg.engine.kind != "none":  # so does an engine that is not installed
        from distill.runtime.ort_genai import require_ort_genai

        require_ort_genai()
    if cfg.gguf:  # and an architecture or a llama.cpp tool the GGUF export lacks
        from distill.runtime.gguf_export import preflight

        preflight(model_dir, cfg.gguf)
    rows = calibration_rows(ctx, cfg) if cfg.method == "gptq" else np.zeros((0, 1), np.int32)
    if cfg.method == "gptq":
        calibration_samples(rows, cfg.calib_rows, cfg.calib_seq_len)  # fails early when short
    ctx.tracker.log_params(cfg.model_dump(), prefix="quantize.")
    ctx.tracker.log_params({"source": key, "calib_split": "train", "calib_tokens": int(rows.size)})
    ctx.tracker.record_input("model", model_dir, weights_sha256(model_dir))
    ctx.tracker.set_tags({"input.calibration.uri": str(ctx.corpus.train_path)})

    out = ctx.output_dir(OUTPUT_NAME)
    t0 = time.perf_counter()
    quantize(model_dir, cfg, rows, out)
    metrics: dict[str, float] = {
        "quantize_seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "size_bytes_before": float(weights_bytes(model_dir)),
        "size_bytes_after": float(weights_bytes(out)),
        "calib_samples": float(min(cfg.calib_rows, rows.size // cfg.calib_seq_len)),
    }
    if rows.size:  # measured, not assumed: held-out 13-grams the calibration rows contain
        from distill.eval.contamination import check_contamination

        held = {"heldout": ctx.corpus.heldout()}
        rep = check_contamination(held, {"calib": rows}, 13, 1.0, raise_error=False)
        metrics["calib_heldout_ngram_overlap"] = rep.max_rate
    metrics["compression_ratio"] = metrics["size_bytes_before"] / metrics["size_bytes_after"]
    outputs = {"int4": out}
    if cfg.recover.steps:  # lineage: soft labels -> int4 (GPTQ) -> recovered int4
        from distill.quant.recover import recover

        t0 = time.perf_counter()
        outputs["int4"], rec = recover(ctx, cfg, out)
        outputs["int4_gptq"] = out
        metrics.update(rec, recover_seconds=time.perf_counter() - t0)
        ctx.tracker.record_output("int4_gptq", out, weights_sha256(out))
    if cfg.engine.kind != "none":
        outputs["int4_cpu"] = export_engine(ctx, cfg, model_dir, outputs["int4"], metrics)
    for quant in cfg.gguf:
        outputs[f"gguf_{quant}"] = export_gguf_file(ctx, model_dir, key, quant, metrics)

    metrics.update(heldout_quality(ctx, cfg, model_dir, outputs))
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


def heldout_quality(
    ctx: StageContext, cfg: QuantizeConfig, fp_dir: Path, outputs: dict[str, Path]
) -> dict[str, float]:
    """Held-out ppl / accuracy / agreement of the fp model, the GPTQ model (before and after
    recovery), the engine export and (``compare_rtn``) an RTN baseline; ``<name>.ppl_increase``."""
    from distill.eval.metrics import evaluate_models
    from distill.models.loader import load_causal_lm
    from distill.quant.gptq import load_quantized
    from distill.quant.rtn import fake_quantize_rtn

    heldout = ctx.corpus.heldout(cfg.eval_rows)
    if not len(heldout):
        return {}
    fp = load_causal_lm(fp_dir)
    q_dir = outputs.get("int4_gptq", outputs["int4"])
    models = {"fp": fp, cfg.method: load_quantized(q_dir, device=cfg.device, backend=cfg.backend)}
    if "int4_gptq" in outputs:
        models["recovered"] = load_quantized(
            outputs["int4"], device=cfg.device, backend=cfg.backend
        )
    if "int4_cpu" in outputs:
        from distill.eval.stage import load_for_eval

        models["engine"] = load_for_eval(outputs["int4_cpu"], threads=cfg.engine.threads)
    if cfg.compare_rtn and cfg.method != "rtn":
        import copy

        models["rtn"] = copy.deepcopy(fp)
        fake_quantize_rtn(models["rtn"], cfg.bits, cfg.group_size, cfg.sym)
    quality = evaluate_models(models, heldout, cfg.eval_batch_size, reference="fp")
    metrics = {f"{name}.{m}": float(v) for name, q in quality.items() for m, v in q.items()}
    fp_ppl = quality["fp"]["perplexity"]
    for name in models:
        if name != "fp":
            metrics[f"{name}.ppl_increase"] = quality[name]["perplexity"] / fp_ppl - 1
    return metrics


def dir_sha256(path: Path) -> str:
    """sha256 over every file of a directory (sorted by name): an engine model's identity."""
    import hashlib

    from distill.models.hashing import file_sha256

    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def export_engine(
    ctx: StageContext, cfg: QuantizeConfig, fp_dir: Path, int4_dir: Path, metrics: dict
) -> Path:
    """Export to the CPU int4 engine: from the GPTQ checkpoint (its weights carried) or, with
    ``engine.source: fp``, the engine's own int4 from the fp model (a separate lineage branch)."""
    from distill.runtime.export import export_ort_genai

    src = int4_dir if cfg.engine.source == "gptq" else fp_dir
    out = ctx.output_dir(ENGINE_OUTPUT_NAME)
    t0 = time.perf_counter()
    export_ort_genai(src, out, cfg.engine, group_size=cfg.group_size)
    metrics["engine_export_seconds"] = time.perf_counter() - t0
    metrics["engine_size_bytes"] = float(sum(f.stat().st_size for f in out.rglob("*.onnx*")))
    ctx.tracker.set_tags(
        {
            "engine.kind": cfg.engine.kind,
            "engine.source": cfg.engine.source,
            "engine.from": str(src),
        }
    )
    return out


def export_gguf_file(ctx: StageContext, fp_dir: Path, key: str, quant: str, metrics: dict) -> Path:
    """``student-gguf/<source>-<quant>.gguf`` from the fp model (llama.cpp's own quantization)."""
    from distill.runtime.gguf_export import export_gguf

    t0 = time.perf_counter()
    out = export_gguf(fp_dir, ctx.output_dir(GGUF_OUTPUT_NAME) / f"{key}-{quant}.gguf", quant)
    metrics[f"gguf_{quant}_export_seconds"] = time.perf_counter() - t0
    metrics[f"gguf_{quant}_size_bytes"] = float(out.stat().st_size)
    return out
