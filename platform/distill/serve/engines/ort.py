"""``engine: onnxruntime-genai``: placeholder until the int4 runtime lands (see engines/__init__)."""

from __future__ import annotations

from distill.config.base import DistillError


class OrtGenAIEngine:
    def __init__(self, *args, **kwargs) -> None:
        raise DistillError("engine onnxruntime-genai is not available in this build")
