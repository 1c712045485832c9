"""Deterministic batches for the training loop: the data position is a function of the step.

Global micro-batch ``m`` (``m = step · grad_accum + j``) holds the ``G = batch_size ·
world_size`` consecutive rows starting at ``(m mod ⌊N / G⌋) · G``; rank ``r`` takes rows
``r·B .. (r+1)·B`` of it. A restart at step ``s`` therefore reads exactly the rows an
uninterrupted run would, and "rows consumed" is ``m · G``::

    src = CorpusBatches(read_rows(train_path), batch_size=4, rank=0, world_size=2)
    batch = src.get(m)      # {"input_ids": LongTensor[4, L]}
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.config.base import DistillError


def batches_per_epoch(num_rows: int, batch_size: int, world_size: int) -> int:
    g = batch_size * world_size
    if num_rows < g:
        raise DistillError(
            f"only {num_rows} training rows for a global micro-batch of {g} "
            f"(batch_size {batch_size} × {world_size} workers): lower batch_size/num_workers "
            "or add data"
        )
    return num_rows // g


class CorpusBatches:
    """Online mode: rows of the packed corpus (the teacher scores them live)."""

    def __init__(self, rows: np.ndarray, batch_size: int, rank: int, world_size: int) -> None:
        self.rows = rows
        self.b, self.rank, self.world = batch_size, rank, world_size
        self.per_epoch = batches_per_epoch(len(rows), batch_size, world_size)

    def get(self, m: int) -> dict[str, torch.Tensor]:
        g = self.b * self.world
        start = (m % self.per_epoch) * g + self.rank * self.b
        return {"input_ids": torch.as_tensor(self.rows[start : start + self.b], dtype=torch.long)}


class SFTBatches:
    """SFT mode: ``input_ids`` / ``attention_mask`` / ``labels`` rows (``-100`` = no loss), as
    ``distill.seqkd.sft_data.write_sft_rows`` writes them; same positions as ``CorpusBatches``."""

    KEYS = ("input_ids", "attention_mask", "labels")

    def __init__(
        self, rows: dict[str, np.ndarray], batch_size: int, rank: int, world_size: int
    ) -> None:
        missing = [k for k in self.KEYS if k not in rows]
        if missing:
            raise DistillError(f"SFT rows lack column(s) {missing}; expected {list(self.KEYS)}")
        self.rows = rows
        self.b, self.rank, self.world = batch_size, rank, world_size
        self.per_epoch = batches_per_epoch(len(rows["input_ids"]), batch_size, world_size)

    def get(self, m: int) -> dict[str, torch.Tensor]:
        g = self.b * self.world
        start = (m % self.per_epoch) * g + self.rank * self.b
        return {
            k: torch.as_tensor(self.rows[k][start : start + self.b], dtype=torch.long)
            for k in self.KEYS
        }


class StoreBatches:
    """Offline mode: top-k soft labels from ``distill.labels.store.LabelStore``.

    Reads global micro-batches sequentially with ``iter_batches(G, start_row=...)`` and keeps
    this rank's slice; a jump (restart, epoch wrap) reopens the iterator at the right row.
    """

    def __init__(self, store: Any, batch_size: int, rank: int, world_size: int) -> None:
        self.store = store
        self.b, self.rank, self.world = batch_size, rank, world_size
        self.per_epoch = batches_per_epoch(int(store.num_rows), batch_size, world_size)
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._next_pos = -1

    def get(self, m: int) -> dict[str, torch.Tensor]:
        g = self.b * self.world
        pos = m % self.per_epoch
        if self._it is None or pos != self._next_pos:
            self._it = iter(self.store.iter_batches(g, start_row=pos * g))
        batch = next(self._it)
        self._next_pos = pos + 1
        lo, hi = self.rank * self.b, (self.rank + 1) * self.b
        keys = ("input_ids", "topk_ids", "topk_logprobs", "tail_mass")
        out = {k: torch.as_tensor(batch[k])[lo:hi] for k in keys if k in batch}
        out["input_ids"] = out["input_ids"].long()
        out["topk_ids"] = out["topk_ids"].long()
        out["topk_logprobs"] = out["topk_logprobs"].float()
        if "tail_mass" in out:
            out["tail_mass"] = out["tail_mass"].float()
        return out


def open_store(path: Path):
    """``LabelStore.open(path)`` with a clear error when the soft-label store is unusable."""
    try:
        from distill.labels.store import LabelStore
    except ImportError as e:  # pragma: no cover - the store module ships with distill.labels
        raise DistillError(f"offline mode needs distill.labels.store ({e})") from None
    return LabelStore.open(Path(path))


def heldout_shard(rows: np.ndarray, limit: int, rank: int, world_size: int) -> np.ndarray:
    """An equal-sized slice of the held-out rows per rank (all ranks must run the same
    number of forwards under ZeRO-3)."""
    rows = rows[:limit]
    per = len(rows) // world_size
    if per == 0:
        return rows
    return rows[rank * per : (rank + 1) * per]
