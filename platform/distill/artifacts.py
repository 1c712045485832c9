"""Load a model artifact the way it is served, for evaluation and the registry's pyfunc: an
ONNX Runtime GenAI directory through the engine (wrapped for the torch metrics), a GPTQ
checkpoint through GPT-QModel's kernels, anything else as a transformers checkpoint::

    model = load_for_eval(Path("runs/smollm2/student-int4-cpu"))
    served_as(Path("runs/smollm2/student-int4-cpu"))   # {"engine": "onnxruntime-genai 0.18.0", ...}
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.models.loader import count_parameters, load_causal_lm
from distill.quant.gptq import cpu_dtype, load_quantized
from distill.runtime.export import read_manifest
from distill.runtime.ort_genai import OrtGenAIModel
from distill.runtime.torch_adapter import engine_as_torch


def served_as(path: Path, dtype: str = "float32") -> dict[str, str]:
    """How ``path`` is loaded for evaluation, which is how it is served: engine and dtype."""
    path = Path(path)
    if (path / "genai_config.json").exists():
        m = read_manifest(path)
        return {"engine": f"{m['engine']} {m.get('version', '')}".strip(), "dtype": "int4"}
    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" in cfg:
        import torch

        act = "auto" if torch.cuda.is_available() else cpu_dtype()
        return {"engine": "gptqmodel", "dtype": f"int4/{act}"}
    return {"engine": "transformers", "dtype": dtype}


def load_for_eval(path: Path, dtype: str = "float32", threads: int | None = None):
    """Load a checkpoint the way it is served: an ONNX Runtime GenAI directory through the engine
    (wrapped for the torch metrics), a GPTQ checkpoint through ``distill.quant``, else HF."""
    path = Path(path)
    if (path / "genai_config.json").exists():
        threads = threads or read_manifest(path).get("threads")
        return engine_as_torch(OrtGenAIModel.load(path, threads=threads))
    cfg = json.loads((path / "config.json").read_text())
    if "quantization_config" in cfg:
        return load_quantized(path)
    return load_causal_lm(path, dtype=dtype)


def stored_parameters(model) -> int:
    """Parameters as stored (engine models: their initializers; packed int4 counted as stored)."""
    engine = getattr(model, "engine", None)
    return engine.stored_parameters() if engine is not None else count_parameters(model)
