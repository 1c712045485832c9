"""``PackedRowsDatasink``: Ray Data writes packed rows as ``<split>.parquet/rows-<first>.parquet``.

Each write task sorts its rows by their global index and writes every contiguous run as one file
named by its first row (temp name + rename), so the files read in name order are the rows in
order, whatever the block order was::

    ds.write_datasink(PackedRowsDatasink("runs/x/.data-tmp"))    # columns split, row, input_ids
    check_parts(Path("runs/x/.data-tmp/train.parquet"), expected_rows)   # distill.data.packed
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from distill.data.packed import ROW_GROUP, part_name


class PackedRowsDatasink(Datasink[list]):
    def __init__(self, root: str) -> None:
        self.root = root
        self.written: list[tuple[str, int, int]] = []

    def on_write_start(self, schema: Any = None) -> None:
        for split in ("train", "heldout"):
            Path(self.root, f"{split}.parquet").mkdir(parents=True, exist_ok=True)

    def write(self, blocks: Iterable[Block], ctx: Any) -> list[tuple[str, int, int]]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        out: list[tuple[str, int, int]] = []
        for split in pc.unique(table.column("split")).to_pylist():
            part = table.filter(pc.equal(table.column("split"), split))
            part = part.sort_by("row")
            rows = part.column("row").to_numpy()
            cuts = np.nonzero(np.diff(rows) != 1)[0] + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
                first = int(rows[lo])
                dest = Path(self.root, f"{split}.parquet", part_name(first))
                tmp = dest.with_name(f".{dest.name}.tmp")
                pq.write_table(
                    part.slice(lo, hi - lo).select(["input_ids"]), tmp, row_group_size=ROW_GROUP
                )
                tmp.rename(dest)
                out.append((split, first, int(hi - lo)))
        return out

    def on_write_complete(self, write_result: Any) -> None:
        for ret in write_result.write_returns:
            self.written.extend(ret)
