"""``PackedCorpus``: the tokenized, packed train and held-out rows every stage reads.

On disk (``<workdir>/data/``): ``train.parquet`` and ``heldout.parquet``, each a Parquet file or
a directory of part files ``rows-<first row>.parquet`` (what the Ray Data corpus stage writes; read
in name order), with the column ``input_ids`` (list<int32>, ``seq_len`` long); ``meta.json``
(fingerprint, counts) and ``documents.parquet`` (per document: id, split, cluster, position)::

    corpus = PackedCorpus.open(Path("runs/smoke/data"))
    rows = corpus.train(limit=64)                 # [64, seq_len] int32, a random sample of docs
    some = take_rows(corpus.train_path, np.array([3, 70, 71]))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.atomic import atomic_file
from distill.config.base import DistillError

PART = re.compile(r"^rows-(\d{12})\.parquet$")
ROW_GROUP = 256  # rows per Parquet row group of a part file: the unit the soft-label stage reads


def part_name(first_row: int) -> str:
    return f"rows-{first_row:012d}.parquet"


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

    @property
    def documents_path(self) -> Path:
        """Per document: id, split, near-duplicate cluster, position (``data.pipeline``)."""
        return self.root / "documents.parquet"

    def heldout_doc_ids(self) -> set[str]:
        """Ids of the held-out documents (empty when the corpus has no ``documents.parquet``)."""
        import pyarrow.parquet as pq

        if not self.documents_path.exists():
            return set()
        t = pq.read_table(self.documents_path, columns=["doc_id", "split"])
        return {
            d
            for d, s in zip(t["doc_id"].to_pylist(), t["split"].to_pylist(), strict=True)
            if s == "heldout"
        }

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
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def part_files(path: Path) -> list[Path]:
    """The Parquet files of a rows path (itself, or the parts of a directory in row order)."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def _as_rows(col) -> np.ndarray:
    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int32)
    seq_len = col.type.list_size if hasattr(col.type, "list_size") else len(col[0])
    return col.flatten().to_numpy().reshape(n, seq_len).astype(np.int32)


def count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in part_files(path))


def read_rows(path: Path, limit: int | None = None) -> np.ndarray:
    """The first ``limit`` rows (all when unset) as ``[n, seq_len]`` int32; reads only the part
    files it needs."""
    import pyarrow.parquet as pq

    out: list[np.ndarray] = []
    got = 0
    for f in part_files(path):
        if limit and got >= limit:
            break
        rows = _as_rows(pq.read_table(f, columns=["input_ids"]).column("input_ids"))
        out.append(rows[: limit - got] if limit else rows)
        got += len(out[-1])
    out = [r for r in out if r.size]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.int32)


def take_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (global indices, sorted) as int32 ``[n, L]``; reads only the row groups
    that hold them."""
    import pyarrow.parquet as pq

    rows = np.asarray(rows, dtype=np.int64)
    parts: list[np.ndarray] = []
    offset = 0
    for f in part_files(path):
        pf = pq.ParquetFile(f, memory_map=True)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        starts = offset + np.cumsum([0] + sizes)
        offset = int(starts[-1])
        mine = rows[(rows >= starts[0]) & (rows < starts[-1])]
        if not len(mine):
            continue
        groups = sorted({int(g) for g in np.searchsorted(starts, mine, side="right") - 1})
        table = pf.read_row_groups(groups, columns=["input_ids"])
        local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])
        parts.append(
            _as_rows(table.column("input_ids").combine_chunks().take(np.searchsorted(local, mine)))
        )
    if len(rows) and sum(len(p) for p in parts) != len(rows):
        raise IndexError(f"{path}: rows {rows.min()}..{rows.max()} are not all in 0..{offset - 1}")
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.int32)


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


def check_parts(path: Path, expected_rows: int) -> None:
    """The part files of ``path`` tile rows ``0..expected_rows-1`` exactly (footers only)."""
    import pyarrow.parquet as pq

    nxt = 0
    for f in sorted(Path(path).glob("*.parquet")):
        m = PART.match(f.name)
        if not m or int(m.group(1)) != nxt:
            raise DistillError(f"{path}: part {f.name} does not start at row {nxt}")
        nxt += pq.ParquetFile(f).metadata.num_rows
    if nxt != expected_rows:
        raise DistillError(f"{path}: {nxt} rows written, the plan has {expected_rows}")
