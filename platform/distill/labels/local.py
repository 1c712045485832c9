"""A one-shard soft-label store written in-process (no Ray), in the same format as the stage.

For tests and benchmarks that need a small store quickly; the pipeline uses ``distill.labels.stage``::

    write_local_store(Path("/tmp/labels"), teacher_dir, rows, k=16)
    write_local_store(Path("/tmp/sampled"), teacher_dir, rows, k=32, encoding="sampled")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distill.labels.encode import EncodingSpec, encode_batch
from distill.labels.manifest import (
    CorpusRef,
    Manifest,
    ShardEntry,
    TeacherRef,
    encodings_for,
    write_manifest,
)
from distill.labels.shards import STORE_COLUMNS, sha256_of, shard_fidelity, write_shard
from distill.models.hashing import tokenizer_sha256, weights_sha256
from distill.models.loader import load_causal_lm

if TYPE_CHECKING:
    from distill.labels.encode import EncodingSpec


def write_local_store(
    root: Path,
    teacher_dir: Path,
    rows: np.ndarray,
    k: int,
    batch_size: int = 4,
    fingerprint: str = "local",
    encoding: str = "topk",
    seed: int = 0,
    fidelity_stride: int = 0,
) -> float:
    """Score ``rows`` with the teacher, write ``root/shard-00000.parquet`` + manifest; return the
    teacher's tokens/s. ``k`` is the top-k, or the draws per position when ``encoding`` is
    ``sampled``. Token ids are stored as uint16 (vocabularies ≤ 65,536)."""

    spec = EncodingSpec(
        encoding=encoding,  # type: ignore[arg-type]
        k=k,
        seed=seed,
        fidelity_stride=fidelity_stride,
    )
    return write_local_stores({Path(root): spec}, teacher_dir, rows, batch_size, fingerprint)


def write_local_stores(
    stores: dict[Path, EncodingSpec],
    teacher_dir: Path,
    rows: np.ndarray,
    batch_size: int = 4,
    fingerprint: str = "local",
) -> float:
    """Several stores (e.g. top-k and sampled) of the same ``rows`` from ONE teacher pass;
    returns the teacher's tokens/s (forward + encoding)."""
    import torch

    teacher = load_causal_lm(teacher_dir)
    parts: dict[Path, list[dict[str, np.ndarray]]] = {root: [] for root in stores}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = torch.as_tensor(rows[i : i + batch_size]).long()
            logits = teacher(input_ids=batch).logits
            index = np.arange(i, i + len(batch))
            for root, spec in stores.items():
                parts[root].append(encode_batch(logits, index, spec))
    tokens_per_s = rows.size / (time.perf_counter() - t0)
    for root, spec in stores.items():
        merged = {key: np.concatenate([p[key] for p in parts[root]]) for key in parts[root][0]}
        _write(Path(root), spec, merged, rows, teacher_dir, teacher.config.vocab_size, fingerprint)
    return tokens_per_s


def _write(
    root: Path,
    spec: EncodingSpec,
    merged: dict[str, np.ndarray],
    rows: np.ndarray,
    teacher_dir: Path,
    vocab_size: int,
    fingerprint: str,
) -> None:
    cols = {"input_ids": rows.astype(np.uint16)}
    cols.update({key: merged[key] for key in STORE_COLUMNS if key in merged and key != "input_ids"})
    root.mkdir(parents=True, exist_ok=True)
    shard = root / "shard-00000.parquet"
    size = write_shard(shard, cols)
    n, seq_len = rows.shape
    tail = cols.get("tail_mass")
    m = Manifest(
        complete=True,
        teacher=TeacherRef(name=Path(teacher_dir).name, weights_sha256=weights_sha256(teacher_dir)),
        tokenizer_sha256=tokenizer_sha256(teacher_dir),
        vocab_size=vocab_size,
        k=spec.k,
        encoding=spec.encoding,
        sample_seed=spec.seed if spec.encoding == "sampled" else None,
        seq_len=seq_len,
        compute_dtype="float32",
        encodings=encodings_for(spec.encoding, "uint16", spec.logprob_encoding),
        corpus=CorpusRef(fingerprint=fingerprint, path="-", rows=n),
        rows_per_shard=n,
        shards=[
            ShardEntry(
                file=shard.name,
                start_row=0,
                rows=n,
                sha256=sha256_of(shard),
                bytes=size,
                tokens=rows.size,
                tail_sum=float(tail.astype(np.float64).sum()) if tail is not None else 0.0,
                fidelity=shard_fidelity(merged),
            )
        ],
    )
    m.finalize()
    write_manifest(root, m)
