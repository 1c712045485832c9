"""Corpus and packing settings (``data:`` section of a pipeline YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.config.base import StrictModel


class CorpusConfig(StrictModel):
    """``kind: stdlib`` = the running interpreter's standard library source (tests excluded)."""

    kind: Literal["stdlib", "files"] = "stdlib"
    paths: list[Path] = Field(default_factory=list, description="files or directories (kind=files)")
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = "text"
    glob: str = Field("**/*", description="pattern for files inside directories")
    max_documents: int | None = Field(None, ge=1)
    max_doc_chars: int = Field(200_000, ge=1)


class DataConfig(StrictModel):
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    seq_len: int = Field(512, ge=8)
    heldout_fraction: float = Field(0.05, gt=0, lt=1)
    max_train_rows: int | None = Field(None, ge=1)
    max_heldout_rows: int | None = Field(None, ge=1)
    seed: int = 0
    tokenize_batch_size: int = Field(16, ge=1)
