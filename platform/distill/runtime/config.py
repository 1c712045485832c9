"""Settings of the CPU int4 engine export (``quantize.engine:`` in a pipeline YAML)::

    quantize:
      engine: {kind: ort-genai, source: gptq, lm_head_bits: 4, accuracy_level: 4}

``kind: none`` keeps the GPTQ checkpoint only (served by GPT-QModel's torch kernels).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from distill.config.base import StrictModel

# GGUF quantizations distill exports (``quantize.gguf``, ``distill export --format gguf --quant``);
# q4_k_m is made by llama.cpp's llama-quantize
GGUFQuant = Literal["f32", "f16", "q8_0", "q4_k_m"]
GGUF_QUANTS: tuple[str, ...] = get_args(GGUFQuant)


class EngineConfig(StrictModel):
    """Export of the quantized student to a CPU int4 runtime (ONNX Runtime GenAI MatMulNBits)."""

    kind: Literal["none", "ort-genai"] = Field(
        "none",
        description="none: GPTQ checkpoint only; ort-genai: also an ONNX Runtime GenAI model",
    )
    source: Literal["gptq", "fp"] = Field(
        "gptq",
        description="gptq: carry the GPTQ int4 weights into the engine (no re-quantization of "
        "the body); fp: the engine's own int4 (algo) from the fp student, its own lineage artifact",
    )
    algo: Literal["rtn", "k_quant"] = Field(
        "k_quant",
        description="the engine's quantizer (round-to-nearest or k-quant) for what is not "
        "already int4: the whole model from an fp source, the LM head/embedding from GPTQ",
    )
    block_size: int | None = Field(
        None, description="source fp only: int4 block size; None = quantize.group_size"
    )
    lm_head_bits: Literal[4, 8] = Field(
        4,
        description="4: the LM head shares the int4 embedding (tied models); 8: an int8 head "
        "(untied from the embedding: larger)",
    )
    accuracy_level: Literal[1, 2, 3, 4] = Field(
        4, description="MatMulNBits compute: 4 = int8 activations (fastest on CPU), 1 = fp32"
    )
    threads: int | None = Field(
        None, ge=1, description="intra-op threads when evaluate/serve load it (None = all cores)"
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.block_size is not None and self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(
                f"engine.block_size={self.block_size}: ONNX Runtime GenAI takes 16/32/64/128/256"
            )
        return self
