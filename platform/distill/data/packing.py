"""Packing tokenized documents into fixed-length rows (pure numpy; no Ray)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


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
