"""Settings of the CPU int4 engine export (``quantize.engine:`` in a pipeline YAML)::

    quantize:
      engine: {kind: ort-genai, source: gptq, lm_head_bits: 8, embedding_bits: 8}

``lm_head_bits: 8`` with ``embedding_bits: 8`` (the default with an int8 head) keeps a tied model
tied at int8 (:mod:`distill.runtime.tied_int8`); ``embedding_bits: 32`` unties it (fp32 embedding).

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
    algo: Literal["rtn", "k_quant", "q4_1"] = Field(
        "k_quant",
        description="the engine's quantizer (round-to-nearest or k-quant) for what is not "
        "already int4: the whole model from an fp source, the LM head/embedding from GPTQ; "
        "q4_1 (source fp, block 32): carry the fp model's own GGUF Q4_1 grid exactly",
    )
    block_size: int | None = Field(
        None, description="source fp only: int4 block size; None = quantize.group_size"
    )
    lm_head_bits: Literal[4, 8] = Field(
        4,
        description="4: an int4 LM head (a tied embedding shares it, the builder's RTN/k-quant); "
        "8: an int8 head (symmetric, per block of lm_head_block_size)",
    )
    embedding_bits: Literal[4, 8, 32] | None = Field(
        None,
        description="the input embedding: None = as lm_head_bits; 8 = int8 GatherBlockQuantized "
        "sharing the int8 head's weights when tied (needs lm_head_bits: 8 and an ONNX Runtime "
        "that runs it); 32 = fp32 (untied from the head: larger); 4 = the int4 head's, shared",
    )
    lm_head_block_size: int = Field(
        32, description="block size of the int8 LM head and embedding (must divide the hidden size)"
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
        if self.algo == "q4_1" and (self.source != "fp" or self.block_size not in (None, 32)):
            raise ValueError(
                "engine.algo: q4_1 carries an fp checkpoint's own Q4_1 grid (blocks of 32): "
                "set engine.source: fp and leave engine.block_size unset (or 32)"
            )
        if self.lm_head_block_size not in (16, 32, 64, 128, 256):
            raise ValueError(
                f"engine.lm_head_block_size={self.lm_head_block_size}: use 16/32/64/128/256"
            )
        emb = self.embedding
        if emb == 8 and self.lm_head_bits != 8:
            raise ValueError(
                "engine.embedding_bits: 8 shares the int8 LM head's weights: set "
                "engine.lm_head_bits: 8 (or embedding_bits: 4 with the int4 head)"
            )
        if emb == 4 and self.lm_head_bits != 4:
            raise ValueError(
                "engine.embedding_bits: 4 is the int4 head's weights, shared: set "
                "engine.lm_head_bits: 4, or embedding_bits: 8 / 32 with the int8 head"
            )
        return self

    @property
    def embedding(self) -> int:
        """The embedding's bits once ``None`` is resolved (as the LM head)."""
        return self.embedding_bits or self.lm_head_bits
