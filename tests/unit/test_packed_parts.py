"""Packed rows stored as a directory of part files (what the Ray Data corpus stage writes)."""

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.data.packed import count_rows, read_rows, take_rows, write_rows


def _parts(root, rows, cuts):
    from distill.data.packed import part_name

    root.mkdir()
    for lo, hi in zip([0, *cuts], [*cuts, len(rows)], strict=True):
        write_rows(root / part_name(lo), rows[lo:hi])
    return root


def test_parts_read_in_row_order(tmp_path):
    from distill.data.packed import check_parts

    rows = np.arange(40 * 8, dtype=np.int32).reshape(40, 8)
    d = _parts(tmp_path / "train.parquet", rows, [7, 30])
    assert count_rows(d) == 40
    assert np.array_equal(read_rows(d), rows)
    assert np.array_equal(read_rows(d, limit=10), rows[:10])
    idx = np.array([0, 6, 7, 29, 30, 39])
    assert np.array_equal(take_rows(d, idx), rows[idx])
    check_parts(d, 40)
    with pytest.raises(DistillError, match="the plan has 41"):
        check_parts(d, 41)
    (d / "rows-000000000007.parquet").unlink()
    with pytest.raises(DistillError, match="does not start at row 7"):
        check_parts(d, 40)
    # a single file works the same way
    write_rows(tmp_path / "one.parquet", rows)
    assert np.array_equal(take_rows(tmp_path / "one.parquet", idx), rows[idx])
