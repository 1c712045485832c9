import numpy as np
import pytest

from distill.config.base import DistillError
from distill.data.config import CorpusConfig
from distill.data.corpus import document_ids, is_heldout, resolve_files, stdlib_files
from distill.data.packed import make_calib_loop, read_rows, write_rows
from distill.data.packing import pack, stdlib_split_rows


def test_pack_concatenates_with_eos_and_drops_tail():
    rows = pack([[1, 2, 3], [4, 5]], seq_len=3, eos_id=0)
    assert rows.tolist() == [[1, 2, 3], [0, 4, 5]]
    assert pack([[1, 2, 3, 4, 5, 6, 7]], 2, 0, max_rows=2).shape == (2, 2)
    assert pack([], 4, 0).shape == (0, 4)


def test_split_is_by_document_and_deterministic():
    ids = [f"doc{i}" for i in range(2000)]
    held = [d for d in ids if is_heldout(d, 0.1, seed=0)]
    assert held == [d for d in ids if is_heldout(d, 0.1, seed=0)]
    assert 120 < len(held) < 280
    assert held != [d for d in ids if is_heldout(d, 0.1, seed=1)]


def test_stdlib_corpus_excludes_tests():
    files = stdlib_files()
    assert len(files) > 200
    assert not any("/test/" in str(f) or f.name.startswith("test_") for f in files)


def test_stdlib_split_rows_holds_out_every_tenth_file():
    class Bytes:  # a byte-level stand-in tokenizer: ids are the file's bytes
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text.encode())}

    train, held = stdlib_split_rows(Bytes(), 64, train_rows=5, heldout_rows=3)
    assert train.shape == (5, 64) and held.shape == (3, 64)
    files = stdlib_files()
    assert held[0].tolist() == list(files[0].read_bytes()[:64])
    assert train[0].tolist() == list(files[1].read_bytes()[:64])


def test_corpus_errors(tmp_path):
    with pytest.raises(DistillError, match="does not exist"):
        resolve_files(CorpusConfig(kind="files", paths=[tmp_path / "nope"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="empty"):
        resolve_files(CorpusConfig(kind="files", paths=[tmp_path / "empty"]))
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(DistillError, match="empty"):
        resolve_files(CorpusConfig(kind="files", paths=[tmp_path / "empty"]))


def test_packages_join_the_stdlib_corpus_with_stable_ids():
    plain = CorpusConfig(kind="stdlib")
    mixed = CorpusConfig(kind="stdlib", packages=["yaml"])
    files = resolve_files(mixed)
    ids = document_ids(mixed, files)
    pkg = sorted(i for i in ids.values() if i.startswith("site-packages/"))
    assert pkg and all(i.startswith("site-packages/yaml/") for i in pkg)
    assert "site-packages/yaml/__init__.py" in pkg
    # the stdlib documents keep their ids; the mix is ordered by id hash, like the stdlib alone
    stdlib_ids = document_ids(plain, resolve_files(plain))
    assert sorted(i for i in ids.values() if not i.startswith("site-packages/")) == sorted(
        stdlib_ids.values()
    )
    assert files == resolve_files(mixed)
    from_pkg = [ids[str(f)].startswith("site-packages/") for f in files]
    assert from_pkg != sorted(from_pkg)  # interleaved, not appended
    # empty packages stay out of dumps: corpora without packages keep their cache keys
    assert "packages" not in plain.model_dump(mode="json")
    assert mixed.model_dump(mode="json")["packages"] == ["yaml"]


def test_package_errors_name_the_key():
    with pytest.raises(DistillError, match=r"data.corpus.packages: 'not_a_pkg_xyz' is not"):
        resolve_files(CorpusConfig(packages=["not_a_pkg_xyz"]))
    with pytest.raises(ValueError, match="format jsonl"):
        CorpusConfig(kind="files", paths=["/tmp"], format="jsonl", packages=["yaml"])
    with pytest.raises(ValueError, match="pattern"):
        CorpusConfig(packages=["../etc"])


def test_rows_roundtrip_and_calib_loop(tmp_path, tiny_rows, tiny_gqa):
    from distill.models.loader import load_causal_lm

    write_rows(tmp_path / "r.parquet", tiny_rows)
    back = read_rows(tmp_path / "r.parquet")
    assert np.array_equal(back, tiny_rows) and back.dtype == np.int32
    assert not list(tmp_path.glob(".*tmp"))
    calls = []
    model = load_causal_lm(tiny_gqa.path)
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    make_calib_loop(tiny_rows[:6], batch_size=4)(model)
    assert len(calls) == 2
