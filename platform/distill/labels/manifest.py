"""``manifest.json`` of a soft-label store: what the shards hold and how they were made.

The manifest is rewritten (temp name + rename) after every finished shard with
``complete: false`` and once more with ``complete: true`` at the end; readers refuse an
incomplete store. The *identity* (teacher, tokenizer, k, corpus, encodings, ...) decides
whether a rerun may reuse shards::

    m = read_manifest(Path("runs/smoke/labels"))
    print(m.k, m.bytes_per_token, m.fidelity)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from distill.atomic import atomic_file
from distill.config.base import DistillError, StrictModel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class TeacherRef(StrictModel):
    name: str
    weights_sha256: str


class CorpusRef(StrictModel):
    fingerprint: str
    path: str
    rows: int = Field(..., description="rows the store covers (first N train rows)")


class Encodings(StrictModel):
    """Column dtypes. ``topk_ids`` is the dtype of every stored token id (``sample_ids`` too);
    ``topk_logprobs`` / ``tail_mass`` only exist in top-k stores."""

    input_ids: Literal["uint16", "int32"]
    topk_ids: Literal["uint16", "int32"]
    topk_logprobs: Literal["float16", "int8"] | None = "float16"
    tail_mass: Literal["float16"] | None = "float16"
    sample_counts: Literal["uint8"] | None = None
    entropy: Literal["float16"] | None = None


class ShardFidelity(StrictModel):
    positions: int = 0
    kl_sum: float = 0.0
    mass_sum: float = 0.0
    tv_sum: float = 0.0
    rel_sum: float = 0.0


class ShardEntry(StrictModel):
    file: str
    start_row: int
    rows: int
    sha256: str
    bytes: int
    tokens: int
    tail_sum: float = Field(0.0, description="top-k: Σ stored tail mass over the shard's tokens")
    fidelity: ShardFidelity = Field(default_factory=ShardFidelity)
    nodes: list[str] = Field(default_factory=list, description="Ray node ids that scored it")


class Fidelity(StrictModel):
    positions: int = Field(..., description="positions compared with the full distribution")
    captured_mass: float | None = Field(
        None, description="mean Σ p over the stored ids (top-k, or the unique sampled ids)"
    )
    kl: float | None = Field(None, description="top-k: mean KL(full ‖ top-k + uniform tail), nats")
    target_tv: float | None = Field(
        None, description="mean ½‖t − p‖₁ of the stored target t against the full p"
    )
    grad_rel_err: float | None = Field(
        None,
        description="mean ‖t − p‖₂ / ‖u − p‖₂: forward-KL gradient error at a uniform student",
    )
    captured_mass_all: float | None = Field(
        None, description="top-k: mean 1 − tail over every stored token"
    )


class Manifest(StrictModel):
    format_version: int = FORMAT_VERSION
    complete: bool = False
    teacher: TeacherRef
    tokenizer_sha256: str
    vocab_size: int
    k: int = Field(..., description="top-k: ids per position; sampled: draws per position (N)")
    encoding: Literal["topk", "sampled"] = "topk"
    sample_seed: int | None = Field(None, description="sampled: the draws' seed (per row)")
    seq_len: int
    compute_dtype: str
    encodings: Encodings
    corpus: CorpusRef
    rows_per_shard: int
    shards: list[ShardEntry] = Field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    bytes_per_token: float = 0.0
    fidelity: Fidelity | None = None
    nodes: list[str] = Field(default_factory=list, description="Ray nodes that scored shards")

    def identity(self) -> dict[str, object]:
        """What must match for shards to be reused (or mixed) across runs."""
        return {
            "format_version": self.format_version,
            "teacher.weights_sha256": self.teacher.weights_sha256,
            "tokenizer_sha256": self.tokenizer_sha256,
            "vocab_size": self.vocab_size,
            "k": self.k,
            "encoding": self.encoding,
            "sample_seed": self.sample_seed,
            "seq_len": self.seq_len,
            "corpus.fingerprint": self.corpus.fingerprint,
            "encodings": self.encodings.model_dump(),
            "compute_dtype": self.compute_dtype,
            "rows_per_shard": self.rows_per_shard,
        }

    def finalize(self) -> None:
        """Totals, bytes/token and the aggregated fidelity from the shard entries."""
        self.shards.sort(key=lambda s: s.start_row)
        self.rows = sum(s.rows for s in self.shards)
        self.nodes = sorted({n for s in self.shards for n in s.nodes})
        self.tokens = sum(s.tokens for s in self.shards)
        total_bytes = sum(s.bytes for s in self.shards)
        self.bytes_per_token = total_bytes / self.tokens if self.tokens else 0.0
        n = sum(s.fidelity.positions for s in self.shards)

        def mean(attr: str) -> float | None:
            return sum(getattr(s.fidelity, attr) for s in self.shards) / n if n else None

        topk = self.encoding == "topk"
        self.fidelity = Fidelity(
            positions=n,
            captured_mass=mean("mass_sum"),
            kl=mean("kl_sum") if topk else None,
            target_tv=mean("tv_sum"),
            grad_rel_err=mean("rel_sum"),
            captured_mass_all=(
                1.0 - sum(s.tail_sum for s in self.shards) / max(self.tokens, 1) if topk else None
            ),
        )


def identity_mismatch(old: Manifest, new: Manifest) -> list[str]:
    """Human-readable ``key: stored → requested`` lines for every identity difference."""
    a, b = old.identity(), new.identity()
    return [
        f"{key}: store has {a[key]!r}, this run wants {b[key]!r}" for key in a if a[key] != b[key]
    ]


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST
    with atomic_file(path) as tmp:
        tmp.write_text(manifest.model_dump_json(indent=1))
    return path


def read_manifest(directory: Path) -> Manifest:
    """Parse ``<dir>/manifest.json``; a missing or malformed one is a ``DistillError``."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise DistillError(
            f"no soft-label store at {directory} (missing {MANIFEST}); run the soft_labels stage"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DistillError(f"{path} is not valid JSON ({e}); rerun the soft_labels stage") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise DistillError(
            f"{path}: format_version {version!r}, this distill reads {FORMAT_VERSION}; "
            "rerun the soft_labels stage with overwrite: true"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise DistillError(f"{path} is malformed: {e}") from None


def encodings_for(encoding: str, ids: str, logprob_encoding: str) -> Encodings:
    """The column dtypes of a store with this encoding (``ids``: uint16 or int32)."""
    if encoding == "sampled":
        return Encodings(
            input_ids=ids,  # type: ignore[arg-type]
            topk_ids=ids,  # type: ignore[arg-type]
            topk_logprobs=None,
            tail_mass=None,
            sample_counts="uint8",
            entropy="float16",
        )
    return Encodings(input_ids=ids, topk_ids=ids, topk_logprobs=logprob_encoding)  # type: ignore[arg-type]
