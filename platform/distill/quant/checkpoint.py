"""Quantize one checkpoint directory end to end, the path every model of a run takes (the
student in ``quantize``, the teacher in ``teacher_int4``): GPTQ (or RTN) on train-split
calibration rows → optional recovery → the CPU int4 engine export → held-out quality of each::

    rows = calibration_rows(corpus, cfg)
    outputs, metrics = quantize_checkpoint(model_dir, cfg, rows, Outputs(gptq_dir, engine_dir))
    metrics.update(heldout_quality(corpus, cfg, model_dir, outputs))
"""

from __future__ import annotations

import copy
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.config.base import DistillError
from distill.data.packed import PackedCorpus
from distill.eval.contamination import check_contamination
from distill.eval.metrics import evaluate_models
from distill.models.loader import load_causal_lm
from distill.quant.calib import teacher_generations
from distill.quant.config import QuantizeConfig
from distill.quant.gptq import calibration_samples, load_quantized, quantize
from distill.quant.rtn import fake_quantize_rtn
from distill.runtime.config import EngineConfig
from distill.runtime.export import export_ort_genai
from distill.runtime.ort_genai import OrtGenAIModel
from distill.runtime.torch_adapter import engine_as_torch

# Train a GPTQ checkpoint on its int4 grid: (gptq_dir) -> (recovered_dir, metrics).
Recover = Callable[[Path], tuple[Path, dict[str, float]]]


@dataclass(frozen=True)
class Outputs:
    """Where the quantized forms of one model go."""

    gptq: Path  # the GPTQ (or RTN) checkpoint
    engine: Path  # the CPU engine export (when ``cfg.engine.kind`` is not ``none``)


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


def calibration_rows(
    corpus: PackedCorpus, cfg: QuantizeConfig, teacher_dir: Path | None = None
) -> np.ndarray:
    """Train rows holding ``calib_rows * calib_seq_len`` tokens; never held-out rows (an empty
    array for RTN, which calibrates on nothing). ``calib_source: teacher``: ``calib_rows``
    samples, each a train prefix continued by the teacher at ``teacher_dir``."""
    if cfg.method != "gptq":
        return np.zeros((0, 1), np.int32)
    if cfg.calib_source == "teacher":
        if teacher_dir is None:
            raise DistillError("quantize.calib_source: teacher needs the teacher's checkpoint")
        train = corpus.train(cfg.calib_rows)
        heldout_check(train, corpus)
        return teacher_generations(
            Path(teacher_dir), train, cfg.calib_rows, cfg.calib_seq_len, cfg.calib_prefix
        )
    seq_len = corpus.seq_len or cfg.calib_seq_len
    need = -(-cfg.calib_rows * cfg.calib_seq_len // seq_len)  # ceil
    rows = corpus.train(need)
    if rows.size == 0:
        raise DistillError(
            f"empty calibration set: {corpus.train_path} has no rows; quantization calibrates "
            "on the train split"
        )
    heldout_check(rows, corpus)
    calibration_samples(rows, cfg.calib_rows, cfg.calib_seq_len)  # fails early when short
    return rows


def heldout_check(rows: np.ndarray, corpus: PackedCorpus) -> None:
    """Refuse calibration rows that also appear in the held-out split."""
    overlap = heldout_overlap(rows, corpus.heldout())
    if overlap:
        raise DistillError(
            f"{overlap} calibration row(s) also appear in the held-out split; fix the data split "
            "before quantizing (held-out metrics would be contaminated)"
        )


def num_layers(model_dir: Path) -> int:
    """Decoder layers in a checkpoint's ``config.json`` (the quantize stages' progress total)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("num_hidden_layers") or 1)


def quantize_checkpoint(
    model_dir: Path,
    cfg: QuantizeConfig,
    rows: np.ndarray,
    outputs: Outputs,
    heldout: np.ndarray,
    recover: Recover | None = None,
    on_layer: Callable[[int], None] | None = None,
) -> tuple[dict[str, Path], dict[str, float]]:
    """GPTQ → (``recover``) → engine; returns ``{"int4": ..., "int4_gptq": (when recovered),
    "int4_cpu": (with an engine)}`` and the metrics (time, memory, sizes, calibration overlap).
    ``on_layer``: see ``distill.quant.gptq.quantize``."""
    t0 = time.perf_counter()
    quantize(model_dir, cfg, rows, outputs.gptq, on_layer)
    metrics: dict[str, float] = {
        "quantize_seconds": time.perf_counter() - t0,
        "size_bytes_before": float(weights_bytes(model_dir)),
        "size_bytes_after": float(weights_bytes(outputs.gptq)),
        "calib_samples": float(min(cfg.calib_rows, rows.size // cfg.calib_seq_len)),
    }
    metrics["compression_ratio"] = metrics["size_bytes_before"] / metrics["size_bytes_after"]
    if rows.size:  # measured, not assumed: held-out 13-grams the calibration rows contain
        rep = check_contamination({"heldout": heldout}, {"calib": rows}, 13, 1.0, False)
        metrics["calib_heldout_ngram_overlap"] = rep.max_rate
    out = {"int4": outputs.gptq}
    if recover is not None:
        t0 = time.perf_counter()
        out["int4"], rec = recover(outputs.gptq)
        out["int4_gptq"] = outputs.gptq
        metrics.update(rec, recover_seconds=time.perf_counter() - t0)
    if cfg.engine.kind != "none":
        src = out["int4"] if cfg.engine.source == "gptq" else Path(model_dir)
        metrics.update(export_engine(src, outputs.engine, cfg.engine, cfg.group_size))
        out["int4_cpu"] = outputs.engine
    metrics["peak_rss_mb"] = peak_rss_mb()
    return out, metrics


def export_engine(src: Path, out: Path, engine: EngineConfig, group_size: int) -> dict[str, float]:
    """Export ``src`` to the CPU int4 engine at ``out``; its seconds and size on disk."""
    t0 = time.perf_counter()
    export_ort_genai(src, out, engine, group_size=group_size)
    return {
        "engine_export_seconds": time.perf_counter() - t0,
        "engine_size_bytes": float(sum(f.stat().st_size for f in out.rglob("*.onnx*"))),
    }


def heldout_quality(
    heldout: np.ndarray, cfg: QuantizeConfig, fp_dir: Path, outputs: dict[str, Path]
) -> dict[str, float]:
    """Held-out ppl / accuracy / agreement of the fp model, the GPTQ model (before and after
    recovery), the engine export and (``compare_rtn``) an RTN baseline; ``<name>.ppl_increase``."""
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
        engine = OrtGenAIModel.load(outputs["int4_cpu"], threads=cfg.engine.threads)
        models["engine"] = engine_as_torch(engine)
    if cfg.compare_rtn and cfg.method != "rtn":
        models["rtn"] = copy.deepcopy(fp)
        fake_quantize_rtn(models["rtn"], cfg.bits, cfg.group_size, cfg.sym)
    quality = evaluate_models(models, heldout, cfg.eval_batch_size, reference="fp")
    metrics = {f"{name}.{m}": float(v) for name, q in quality.items() for m, v in q.items()}
    fp_ppl = quality["fp"]["perplexity"]
    for name in models:
        if name != "fp":
            metrics[f"{name}.ppl_increase"] = quality[name]["perplexity"] / fp_ppl - 1
    return metrics
