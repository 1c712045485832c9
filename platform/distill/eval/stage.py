"""Stage ``evaluate``: every model the run produced, side by side, on the held-out split.

Writes ``<workdir>/report.json`` (one entry per model: parameters, size on disk, perplexity,
next-token accuracy, agreement and KL to the teacher, tokens/s) and logs it to MLflow::

    distill run pipelines/configs/smoke.yaml     # stages: [..., evaluate]
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from distill.eval.config import EvaluateConfig
from distill.eval.contamination import check_run_contamination
from distill.eval.metrics import evaluate_models, forward_tokens_per_s
from distill.eval.plots import quality_size_speed
from distill.models.hashing import dir_size_bytes
from distill.models.loader import count_parameters
from distill.stages import StageContext, StageResult

ORDER = ("teacher", "initial_student", "pruned", "student", "int4_gptq", "int4", "int4_cpu")


def served_as(path: Path, dtype: str = "float32") -> dict[str, str]:
    """How ``path`` is loaded for evaluation, which is how it is served: engine and dtype."""
    path = Path(path)
    if (path / "genai_config.json").exists():
        from distill.runtime.export import read_manifest

        m = read_manifest(path)
        return {"engine": f"{m['engine']} {m.get('version', '')}".strip(), "dtype": "int4"}
    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" in cfg:
        import torch

        from distill.quant.gptq import cpu_dtype

        act = "auto" if torch.cuda.is_available() else cpu_dtype()
        return {"engine": "gptqmodel", "dtype": f"int4/{act}"}
    return {"engine": "transformers", "dtype": dtype}


def load_for_eval(path: Path, dtype: str = "float32", threads: int | None = None):
    """Load a checkpoint the way it is served: an ONNX Runtime GenAI directory through the engine
    (wrapped for the torch metrics), a GPTQ checkpoint through ``distill.quant``, else HF."""
    path = Path(path)
    if (path / "genai_config.json").exists():
        from distill.runtime.export import read_manifest
        from distill.runtime.ort_genai import OrtGenAIModel
        from distill.runtime.torch_adapter import engine_as_torch

        threads = threads or read_manifest(path).get("threads")
        return engine_as_torch(OrtGenAIModel.load(path, threads=threads))
    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" in cfg:
        from distill.quant import load_quantized  # type: ignore[attr-defined]

        return load_quantized(path)
    from distill.models.loader import load_causal_lm

    return load_causal_lm(path, dtype=dtype)


def stored_parameters(model) -> int:
    """Parameters as stored (engine models: their initializers; packed int4 counted as stored)."""
    engine = getattr(model, "engine", None)
    return engine.stored_parameters() if engine is not None else count_parameters(model)


def run(ctx: StageContext, cfg: EvaluateConfig) -> StageResult:
    contamination = None
    if cfg.contamination.enabled:  # fails here, before any model is loaded, when contaminated
        contamination = check_run_contamination(
            ctx.corpus, ctx.artifacts.get("generations"), ctx.teacher.path, cfg.contamination
        )
    rows = ctx.corpus.heldout(cfg.max_rows)
    paths = {k: ctx.artifacts[k] for k in ORDER if k in ctx.artifacts}
    models = {k: load_for_eval(p, cfg.dtype) for k, p in paths.items()}
    for k, p in paths.items():
        ctx.tracker.record_input(k, p)
    quality = evaluate_models(models, rows, cfg.batch_size, reference="teacher")
    entries: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    for key, model in models.items():
        entry: dict[str, Any] = {
            "model": key,
            "path": str(paths[key]),
            **served_as(paths[key], cfg.dtype),
            "parameters": stored_parameters(model),
            "size_bytes": dir_size_bytes(paths[key]),
            **quality[key],
            "tokens_per_s": forward_tokens_per_s(model, rows[: cfg.speed_rows]),
        }
        entries.append(entry)
        for name, value in entry.items():
            if isinstance(value, int | float):
                metrics[f"{key}.{name}"] = float(value)
    report = {
        "pipeline": ctx.config.name,
        "heldout_rows": len(rows),
        "seq_len": int(rows.shape[1]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "models": entries,
    }
    if contamination is not None:
        report["contamination"] = contamination.to_dict()
        metrics.update(contamination.metrics())
    out = ctx.workdir / "report.json"
    tmp = out.with_name(".report.json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_dict(report, "report.json")
    fig = quality_size_speed(entries)
    ctx.tracker.log_figure(fig, "quality_vs_size.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    ctx.tracker.record_output("report", out)
    return StageResult(outputs={"report": out}, metrics=metrics, summary=report)
