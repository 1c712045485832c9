"""Packing tokenized documents into fixed-length rows (pure numpy; no Ray)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from distill.stdlib import stdlib_files


def pack(
    docs: Iterable[list[int] | np.ndarray], seq_len: int, eos_id: int, max_rows: int | None = None
) -> np.ndarray:
    """Concatenate documents separated by ``eos_id`` and cut into ``[n, seq_len]`` int32 rows.

    The final partial row is dropped; ``max_rows`` stops early.
    """
    rows: list[np.ndarray] = []
    buf: list[int] = []
    for doc in docs:
        buf.extend(int(t) for t in doc)
        buf.append(eos_id)
        while len(buf) >= seq_len:
            rows.append(np.asarray(buf[:seq_len], dtype=np.int32))
            buf = buf[seq_len:]
            if max_rows is not None and len(rows) >= max_rows:
                return np.stack(rows)
    if not rows:
        return np.zeros((0, seq_len), dtype=np.int32)
    return np.stack(rows)


def pack_concat(docs: list[np.ndarray], seq_len: int, eos_id: int, rows: int) -> np.ndarray:
    """Vectorized ``pack``: documents joined by ``eos_id`` (one after each), the first ``rows``
    full rows of ``seq_len`` as ``[rows, seq_len]`` int32 (what each packing group does)."""
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    stream = np.full(int(lengths.sum()), eos_id, dtype=np.int32)
    if docs:
        is_token = np.ones(len(stream), dtype=bool)
        is_token[np.cumsum(lengths) - 1] = False  # the EOS closing each document
        stream[is_token] = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs])
    rows = max(0, min(rows, len(stream) // seq_len))
    return stream[: rows * seq_len].reshape(rows, seq_len)


def stdlib_split_rows(
    tok, seq_len: int, train_rows: int, heldout_rows: int, shuffle_seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out rows of the stdlib corpus, split by document (every 10th file held
    out), tokenized with ``tok`` and packed to ``seq_len``; what the benchmarks use::

        .venv/bin/python benchmarks/kd_recovery.py      # and prune.py, quantize.py

    ``shuffle_seed``: pack the documents in a seeded random order, so the first rows are a
    random sample of the corpus instead of its alphabetical head.
    """
    files = stdlib_files()
    if shuffle_seed is not None:
        files = [files[i] for i in np.random.default_rng(shuffle_seed).permutation(len(files))]

    def docs(keep_heldout: bool):
        for i, p in enumerate(files):
            if (i % 10 == 0) == keep_heldout:
                text = p.read_text(encoding="utf-8", errors="replace")
                yield tok(text, add_special_tokens=False)["input_ids"]

    return (
        pack(docs(False), seq_len, tok.eos_token_id, max_rows=train_rows),
        pack(docs(True), seq_len, tok.eos_token_id, max_rows=heldout_rows),
    )
