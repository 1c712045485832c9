"""Corpus, split and packing settings (``data:`` section of a pipeline YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from distill.config.base import StrictModel


class CorpusConfig(StrictModel):
    """``kind: stdlib`` = the running interpreter's standard library source (tests excluded);
    ``packages`` adds installed packages' sources to it (or to ``kind: files`` text)::

        corpus: {kind: stdlib, packages: [click, jinja2, tornado], max_documents: 400}
    """

    kind: Literal["stdlib", "files"] = "stdlib"
    paths: list[Path] = Field(default_factory=list, description="files or directories (kind=files)")
    # left out of dumps while empty: the cache keys of corpora without packages stay as they were
    packages: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        exclude_if=lambda v: not v,
        description="installed Python packages whose *.py sources (tests excluded) join a text "
        "corpus, found with importlib, not imported; their doc ids are site-packages/<pkg>/<path>",
    )
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = "text"
    glob: str = Field("**/*", description="pattern for files inside directories")
    max_documents: int | None = Field(None, ge=1)
    max_doc_chars: int = Field(200_000, ge=1)

    @model_validator(mode="after")
    def _packages_are_text(self) -> CorpusConfig:
        if self.packages and self.format in ("jsonl", "parquet"):
            raise ValueError(f"packages add Python source files: format {self.format} cannot")
        return self


class NearDuplicateConfig(StrictModel):
    """Near-duplicate documents are clustered before the split; a cluster is never divided.

    The defaults (token 5-gram Jaccard ≥ 0.3) bring the held-out/train 13-gram overlap of the
    stdlib corpus below the contamination check's threshold (``benchmarks/split_contamination.py``
    measures it).
    """

    enabled: bool = True
    shingle: int = Field(5, ge=1, le=64, description="token n-gram size of the MinHash shingles")
    threshold: float = Field(0.3, gt=0, le=1, description="estimated Jaccard that joins two docs")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations per document")
    max_heldout_cluster: float = Field(
        0.5,
        gt=0,
        description="a cluster larger than this × the expected held-out document count always "
        "trains (keeps the held-out size near heldout_fraction)",
    )


class DataConfig(StrictModel):
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    seq_len: int = Field(512, ge=8)
    heldout_fraction: float = Field(0.05, gt=0, lt=1)
    near_duplicates: NearDuplicateConfig = Field(default_factory=NearDuplicateConfig)
    max_train_rows: int | None = Field(
        None, ge=1, description="packed documents are in a seeded random order: a random sample"
    )
    max_heldout_rows: int | None = Field(None, ge=1)
    seed: int = Field(0, description="split and document order (same corpus + seed → same rows)")
    tokenize_batch_size: int = Field(16, ge=1)
    tokenize_actors: int | None = Field(
        None, ge=1, description="tokenizer actors (0.5 CPU each); unset = one per 2 cluster CPUs"
    )
    pack_group_rows: int = Field(
        64,
        ge=1,
        description="documents are packed in groups of about this many rows, each dropping its "
        "last partial row (< 1 row lost per group)",
    )


class ContaminationConfig(StrictModel):
    enabled: bool = True
    n: int = Field(13, ge=2, description="n-gram size (13 on tokens; ~8 is usual on words)")
    threshold: float = Field(
        0.05,
        ge=0,
        le=1,
        description="max share of an eval set's n-grams found in a train set; 5%: well above "
        "what the default split leaves (near-duplicates clustered, distill.data.plan)",
    )
    action: Literal["error", "warn"] = "error"
    max_rows: int | None = Field(2048, ge=1, description="rows / texts read per set")
