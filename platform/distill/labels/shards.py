"""Parquet shards of a soft-label store: the deterministic row split, writing and reading.

Columns per row (``L = seq_len``): ``input_ids`` fixed_size_list<uint16|int32>[L],
``topk_ids`` fixed_size_list<uint16|int32>[L·k] (row-major ``[L, k]``), ``topk_logprobs``
fixed_size_list<float16>[L·k] (int8 encoding: uint8 codes, plus ``logprob_scale``
fixed_size_list<float16>[L]), ``tail_mass`` fixed_size_list<float16>[L]. The sampled encoding
stores ``sample_ids`` list<uint16|int32> and ``sample_counts`` list<uint8> (ragged: Σ unique ids
of the row), ``sample_nuniq`` fixed_size_list<uint8>[L] and ``entropy``
fixed_size_list<float16>[L]. Position ``t`` holds the teacher distribution of the token at
``t + 1`` (``logits[:, t]``)::

    for index, start, rows in shard_plan(1000, 64): ...
    sha, size = write_shard(path, columns, seq_len=256, k=16)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.atomic import atomic_file
from distill.labels.manifest import ShardFidelity
from distill.models.hashing import file_sha256


@dataclass(frozen=True)
class ShardSpec:
    index: int
    start_row: int
    rows: int

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.parquet"

    @property
    def stop_row(self) -> int:
        return self.start_row + self.rows


def shard_plan(num_rows: int, rows_per_shard: int) -> list[ShardSpec]:
    """Row ranges ``[i·R, min((i+1)·R, N))``: a rerun maps the same rows to the same shards."""
    return [
        ShardSpec(i, start, min(rows_per_shard, num_rows - start))
        for i, start in enumerate(range(0, num_rows, rows_per_shard))
    ]


def id_dtype(vocab_size: int) -> str:
    """``uint16`` when every id fits (vocab ≤ 65,536), else ``int32``."""
    return "uint16" if vocab_size <= 65536 else "int32"


def _fixed(values: np.ndarray, width: int):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _ragged(values: np.ndarray):
    """An object array of 1-D arrays (one per row) as a Parquet ``list<...>`` column."""
    import pyarrow as pa

    parts = [np.asarray(v) for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in parts])]).astype(np.int32)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def write_shard(path: Path, columns: dict[str, np.ndarray], compression: str = "zstd") -> int:
    """Write ``columns`` (each ``[rows, ...]``) as one Parquet file via a temp name + rename.

    Returns the file size in bytes. Every column becomes a fixed-size list of its trailing
    dimensions flattened (``[rows, L, k]`` → list of ``L·k``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns.items():
        if values.dtype == object:
            arrays[name] = _ragged(values)
            continue
        width = int(np.prod(values.shape[1:]))
        arrays[name] = _fixed(values, width)
    table = pa.table(arrays)
    with atomic_file(Path(path)) as tmp:
        pq.write_table(table, tmp, compression=None if compression == "none" else compression)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path.stat().st_size


def read_shard(path: Path, seq_len: int, k: int, rows: np.ndarray | None = None):
    """Columns of a shard as numpy: ``input_ids [n, L]``, ``topk_ids [n, L, k]``,
    ``topk_logprobs [n, L, k]`` (float16 or uint8), ``tail_mass [n, L]`` and, for int8,
    ``logprob_scale [n, L]``; ragged (list) columns come back as object arrays of 1-D arrays.
    ``rows`` selects shard-local row indices."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, memory_map=True)
    if rows is not None:
        table = table.take(rows)
    out: dict[str, np.ndarray] = {}
    n = table.num_rows
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            offsets = col.offsets.to_numpy()
            out[name] = np.empty(n, dtype=object)
            for i in range(n):
                out[name][i] = flat[offsets[i] - offsets[0] : offsets[i + 1] - offsets[0]]
            continue
        flat = col.flatten().to_numpy(zero_copy_only=False)
        per_row = flat.size // n if n else 0
        shape = (n, seq_len, k) if per_row == seq_len * k and name.startswith("topk") else (n, -1)
        out[name] = flat.reshape(shape)
    return out


def sha256_of(path: Path) -> str:
    return file_sha256(Path(path))


STORE_COLUMNS = (
    "input_ids",
    "topk_ids",
    "topk_logprobs",
    "tail_mass",
    "logprob_scale",
    "sample_ids",
    "sample_counts",
    "sample_nuniq",
    "entropy",
)


def shard_fidelity(cols: dict[str, np.ndarray]) -> ShardFidelity:
    """Sum the scorer's per-row ``_fid_*`` columns into a shard's fidelity entry."""
    return ShardFidelity(
        positions=int(cols["_fid_n"].sum()),
        kl_sum=float(cols["_fid_kl"].sum()),
        mass_sum=float(cols["_fid_mass"].sum()),
        tv_sum=float(cols["_fid_tv"].sum()),
        rel_sum=float(cols["_fid_rel"].sum()),
    )
