"""distill.quant: GPTQ / RTN weight quantization through GPT-QModel.

    from distill.quant import load_quantized, quantize
    model = load_quantized("runs/smoke/student-int4", device="cpu")

Attributes are imported lazily so ``import distill.quant`` does not import GPT-QModel or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_quantized", "quantize", "fake_quantize_rtn", "check_group_size"]

_LAZY = {
    "load_quantized": "distill.quant.gptq",
    "quantize": "distill.quant.gptq",
    "fake_quantize_rtn": "distill.quant.rtn",
    "check_group_size": "distill.quant.validate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distill.quant' has no attribute {name!r}")
