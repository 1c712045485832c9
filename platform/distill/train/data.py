"""Deterministic batches for the training loop: the data position is a function of the step.

Global micro-batch ``m`` (``m = step · grad_accum + j``) of epoch ``e = m // E`` (``E = ⌊N / G⌋``
micro-batches per epoch, ``G = batch_size · world_size``) holds rows ``order_e[p·G : (p+1)·G]``
with ``p = m mod E``, where ``order_e`` is a seeded permutation of the ``N`` rows that depends
only on ``(seed, e)`` (``shuffle: false``: the identity); rank ``r`` takes rows ``r·B .. (r+1)·B``
of it. A restart at step ``s`` therefore reads exactly the rows an uninterrupted run would, and
"rows consumed" is ``m · G``::

    src = Batches.for_rows(read_rows(train_path), batch_size=4, rank=0, world_size=2, seed=0)
    batch = src.get(m)      # {"input_ids": LongTensor[4, L]}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config.base import DistillError
from distill.labels.store import LabelStore

Fetch = Callable[[np.ndarray], dict[str, torch.Tensor]]


def batches_per_epoch(num_rows: int, batch_size: int, world_size: int) -> int:
    g = batch_size * world_size
    if num_rows < g:
        raise DistillError(
            f"only {num_rows} training rows for a global micro-batch of {g} "
            f"(batch_size {batch_size} × {world_size} workers): lower batch_size/num_workers "
            "or add data"
        )
    return num_rows // g


class RowOrder:
    """Which global rows each global micro-batch holds (see the module docstring)."""

    def __init__(self, num_rows: int, global_batch: int, shuffle: bool, seed: int) -> None:
        self.n, self.g, self.shuffle, self.seed = num_rows, global_batch, shuffle, seed
        self.per_epoch = batches_per_epoch(num_rows, global_batch, 1)
        self._epoch, self._order = -1, np.arange(num_rows)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._order = epoch, rng.permutation(self.n)
        return self._order

    def rows(self, m: int) -> np.ndarray:
        """The ``G`` global rows of global micro-batch ``m``."""
        epoch, pos = divmod(m, self.per_epoch)
        return self.order(epoch)[pos * self.g : (pos + 1) * self.g]


class Batches:
    """This rank's slice of each global micro-batch, fetched by row index."""

    def __init__(
        self,
        fetch: Fetch,
        num_rows: int,
        batch_size: int,
        rank: int,
        world_size: int,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.fetch = fetch
        self.b, self.rank, self.world = batch_size, rank, world_size
        batches_per_epoch(num_rows, batch_size, world_size)
        self.order = RowOrder(num_rows, batch_size * world_size, shuffle, seed)

    @property
    def per_epoch(self) -> int:
        return self.order.per_epoch

    def rows(self, m: int) -> np.ndarray:
        return self.order.rows(m)[self.rank * self.b : (self.rank + 1) * self.b]

    def get(self, m: int) -> dict[str, torch.Tensor]:
        return self.fetch(self.rows(m))

    @classmethod
    def for_arrays(
        cls, columns: dict[str, np.ndarray], batch_size: int, rank: int, world_size: int, **kw
    ) -> Batches:
        """Rows held in memory (packed corpus ``input_ids``; SFT ``input_ids`` / ``attention_mask``
        / ``labels``), every column as a LongTensor."""

        def fetch(rows: np.ndarray) -> dict[str, torch.Tensor]:
            return {k: torch.as_tensor(v[rows], dtype=torch.long) for k, v in columns.items()}

        n = len(next(iter(columns.values())))
        return cls(fetch, n, batch_size, rank, world_size, **kw)

    @classmethod
    def for_store(cls, store: Any, batch_size: int, rank: int, world_size: int, **kw) -> Batches:
        """Soft labels from ``distill.labels.store.LabelStore`` (random access by row)."""
        return cls(store.read_rows, int(store.num_rows), batch_size, rank, world_size, **kw)


SFT_KEYS = ("input_ids", "attention_mask", "labels")


def sft_columns(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The SFT columns (``-100`` labels = no loss), as ``write_sft_rows`` writes them."""
    missing = [k for k in SFT_KEYS if k not in rows]
    if missing:
        raise DistillError(f"SFT rows lack column(s) {missing}; expected {list(SFT_KEYS)}")
    return {k: rows[k] for k in SFT_KEYS}


def label_positions(columns: dict[str, np.ndarray], rows: np.ndarray) -> int:
    """Positions that count in these SFT rows (shifted labels ≠ −100 with real tokens)."""
    labels = np.asarray(columns["labels"][rows])[:, 1:]
    am = np.asarray(columns["attention_mask"][rows]).astype(bool)
    return int(((labels != -100) & am[:, :-1] & am[:, 1:]).sum())


def open_store(path: Path):
    """``LabelStore.open(path)`` with a clear error when the soft-label store is unusable."""

    return LabelStore.open(Path(path))


def heldout_shard(rows: np.ndarray, limit: int, rank: int, world_size: int) -> np.ndarray:
    """An equal-sized slice of the held-out rows per rank (all ranks must run the same
    number of forwards under ZeRO-3)."""
    rows = rows[:limit]
    per = len(rows) // world_size
    if per == 0:
        return rows
    return rows[rank * per : (rank + 1) * per]
