"""Outputs appear whole or not at all (distill.atomic): the old output survives a failed write
and no temp name is left behind."""

import pytest

from distill.atomic import atomic_dir, atomic_file


def test_a_folder_replaces_the_old_one_only_when_whole(tmp_path):
    out = tmp_path / "student"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "a").read_text() == "1"
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_a_file_replaces_the_old_one_only_when_whole(tmp_path):
    path = tmp_path / "report.json"
    with atomic_file(path) as tmp:
        assert tmp.suffix == ".tmp" and tmp.parent == tmp_path
        tmp.write_text("{}")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("{")
        raise RuntimeError("interrupted")
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
