"""distill.runtime: the CPU int4 engine (ONNX Runtime GenAI): export from a checkpoint, load, run.

    from distill.runtime import OrtGenAIModel, export_ort_genai
    m = OrtGenAIModel.load(Path("runs/smollm2/student-int4-ort"), threads=2)

Attributes are imported lazily so ``import distill.runtime`` needs no engine installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OrtGenAIModel", "export_ort_genai", "EngineConfig"]

_LAZY = {
    "OrtGenAIModel": "distill.runtime.ort_genai",
    "export_ort_genai": "distill.runtime.export",
    "EngineConfig": "distill.runtime.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distill.runtime' has no attribute {name!r}")
