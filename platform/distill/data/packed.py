"""``PackedCorpus``: the tokenized, packed train and held-out rows every stage reads.

On disk (``<workdir>/data/``): ``train.parquet`` and ``heldout.parquet`` with one column
``input_ids`` (list<int32>, ``seq_len`` long), plus ``meta.json`` (fingerprint, counts, split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PackedCorpus:
    root: Path
    seq_len: int
    fingerprint: str
    train_rows: int
    heldout_rows: int

    @property
    def train_path(self) -> Path:
        return self.root / "train.parquet"

    @property
    def heldout_path(self) -> Path:
        return self.root / "heldout.parquet"

    def train(self, limit: int | None = None) -> np.ndarray:
        return read_rows(self.train_path, limit)

    def heldout(self, limit: int | None = None) -> np.ndarray:
        return read_rows(self.heldout_path, limit)

    @classmethod
    def open(cls, root: Path) -> PackedCorpus:
        meta = json.loads((Path(root) / "meta.json").read_text())
        return cls(
            Path(root),
            meta["seq_len"],
            meta["fingerprint"],
            meta["train_rows"],
            meta["heldout_rows"],
        )


def write_rows(path: Path, rows: np.ndarray) -> None:
    """Write ``[n, seq_len]`` int32 rows as Parquet via a temp name + rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(rows.reshape(-1).astype(np.int32))
    col = (
        pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])
        if rows.size
        else pa.array([], type=pa.list_(pa.int32(), rows.shape[1]))
    )
    table = pa.table({"input_ids": col})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_rows(path: Path, limit: int | None = None) -> np.ndarray:
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["input_ids"]).column("input_ids").combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int32)
    seq_len = col.type.list_size if hasattr(col.type, "list_size") else len(col[0])
    rows = col.flatten().to_numpy().reshape(n, seq_len).astype(np.int32)
    return rows[:limit] if limit else rows


def batches(rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(rows), batch_size):
        yield rows[i : i + batch_size]


def make_calib_loop(rows: np.ndarray, batch_size: int = 4) -> Callable[[object], None]:
    """A ``calib_loop(model)`` callback running forward passes over ``rows`` (no grad).

    Compression functions take this callback so data loading stays with the caller.
    """
    import torch

    def calib_loop(model) -> None:
        device = next(model.parameters()).device
        with torch.no_grad():
            for b in batches(rows, batch_size):
                model(input_ids=torch.as_tensor(b, dtype=torch.long, device=device))

    return calib_loop
