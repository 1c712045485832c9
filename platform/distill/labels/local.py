"""A one-shard soft-label store written in-process (no Ray), in the same format as the stage.

For tests and benchmarks that need a small store quickly; the pipeline uses ``distill.labels.stage``::

    write_local_store(Path("/tmp/labels"), teacher_dir, rows, k=16)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def write_local_store(
    root: Path, teacher_dir: Path, rows: np.ndarray, k: int, batch_size: int = 4,
    fingerprint: str = "local",
) -> float:  # fmt: skip
    """Score ``rows`` with the teacher, write ``root/shard-00000.parquet`` + manifest; return the
    teacher's tokens/s. Token ids are stored as uint16 (vocabularies ≤ 65,536)."""
    import torch

    from distill.labels.manifest import (
        CorpusRef,
        Encodings,
        Manifest,
        ShardEntry,
        TeacherRef,
        write_manifest,
    )
    from distill.labels.shards import sha256_of, write_shard
    from distill.labels.topk import encode_logprobs, topk_with_tail
    from distill.models.hashing import tokenizer_sha256, weights_sha256
    from distill.models.loader import load_causal_lm

    teacher = load_causal_lm(teacher_dir)
    parts: dict[str, list[np.ndarray]] = {"topk_ids": [], "topk_logprobs": [], "tail_mass": []}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = torch.as_tensor(rows[i : i + batch_size]).long()
            ids, lp, tail = topk_with_tail(teacher(input_ids=batch).logits, k)
            parts["topk_ids"].append(ids.numpy().astype(np.uint16))
            parts["topk_logprobs"].append(encode_logprobs(lp.numpy(), "float16")["topk_logprobs"])
            parts["tail_mass"].append(tail.numpy().astype(np.float16))
    tokens_per_s = rows.size / (time.perf_counter() - t0)
    cols = {"input_ids": rows.astype(np.uint16), **{c: np.concatenate(v) for c, v in parts.items()}}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shard = root / "shard-00000.parquet"
    size = write_shard(shard, cols)
    n, seq_len = rows.shape
    m = Manifest(
        complete=True,
        teacher=TeacherRef(name=Path(teacher_dir).name, weights_sha256=weights_sha256(teacher_dir)),
        tokenizer_sha256=tokenizer_sha256(teacher_dir),
        vocab_size=teacher.config.vocab_size,
        k=k,
        seq_len=seq_len,
        compute_dtype="float32",
        encodings=Encodings(input_ids="uint16", topk_ids="uint16", topk_logprobs="float16"),
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
                tail_sum=float(cols["tail_mass"].astype(np.float64).sum()),
            )
        ],
    )
    m.finalize()
    write_manifest(root, m)
    return tokens_per_s
