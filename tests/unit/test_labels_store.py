"""Soft-label store without Ray: shard format round trip, reader API, resume, bad input.

The Ray Data pipeline is replaced by a fake dataset that runs ``TeacherScorer`` in-process
(in a scrambled batch order) and counts the rows it scores.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distill.config.base import DistillError
from distill.labels.manifest import (
    CorpusRef,
    Encodings,
    Manifest,
    TeacherRef,
    read_manifest,
    write_manifest,
)
from distill.labels.resume import prepare_store
from distill.labels.scorer import TeacherScorer
from distill.labels.shards import shard_plan
from distill.labels.stage import score_shards
from distill.labels.store import LabelStore

K, L = 4, 64


class FakeDataset:
    """Stands in for the Ray Data pipeline: scores the ``todo`` rows, batches out of order."""

    def __init__(self, scorer, rows, todo, batch_size=3):
        self.scorer, self.rows, self.todo, self.b = scorer, rows, todo, batch_size
        self.scored_rows: list[int] = []

    def iter_batches(self, batch_size=None, batch_format="numpy"):
        ids = np.concatenate([np.arange(s.start_row, s.stop_row) for s in self.todo])
        chunks = [ids[i : i + self.b] for i in range(0, len(ids), self.b)]
        for c in chunks[::-1]:  # reversed: the driver must not rely on arrival order
            self.scored_rows.extend(c.tolist())
            yield self.scorer({"row": c, "input_ids": self.rows[c]})


@pytest.fixture(scope="module")
def scorer(tiny_gqa):
    return TeacherScorer(str(tiny_gqa.path), k=K, seq_len=L, fidelity_stride=7, num_threads=1)


def _manifest(tiny, n, encoding="float16", k=K, fingerprint="fp"):
    return Manifest(
        teacher=TeacherRef(name="tiny", weights_sha256=tiny.weights_sha256),
        tokenizer_sha256=tiny.tokenizer_sha256,
        vocab_size=512,
        k=k,
        seq_len=L,
        compute_dtype="float32",
        encodings=Encodings(input_ids="uint16", topk_ids="uint16", topk_logprobs=encoding),
        corpus=CorpusRef(fingerprint=fingerprint, path="train.parquet", rows=n),
        rows_per_shard=5,
    )


def build(root, tiny, scorer, rows, overwrite=False, **kw):
    """What ``stage.run`` does around Ray: prepare/resume, score missing shards, finalize."""
    fresh = _manifest(tiny, len(rows), **kw)
    manifest, todo = prepare_store(root, fresh, shard_plan(len(rows), 5), overwrite)
    ds = FakeDataset(scorer, rows, todo)
    if todo:
        score_shards(ds, root, manifest, todo, "zstd")
    manifest.finalize()
    manifest.complete = True
    write_manifest(root, manifest)
    return ds


def _all(store, **kw):
    batches = list(store.iter_batches(4, **kw))
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_round_trip_format_and_reader(tmp_path, tiny_gqa, scorer, tiny_rows):
    rows = tiny_rows[:12]
    build(tmp_path, tiny_gqa, scorer, rows)
    schema = pq.read_schema(tmp_path / "shard-00000.parquet")
    assert schema.field("input_ids").type == pa.list_(pa.uint16(), L)
    assert schema.field("topk_ids").type == pa.list_(pa.uint16(), L * K)
    assert schema.field("topk_logprobs").type == pa.list_(pa.float16(), L * K)
    assert schema.field("tail_mass").type == pa.list_(pa.float16(), L)
    store = LabelStore.open(tmp_path, verify=True)
    m = store.manifest
    assert store.num_rows == 12 and [s.rows for s in m.shards] == [5, 5, 2]
    assert m.tokens == 12 * L and m.bytes_per_token > 0 and m.complete
    assert 0 < m.fidelity.captured_mass < 1 and m.fidelity.kl > 0
    assert m.fidelity.positions == len(range(0, 12 * L, 7))
    got = _all(store)
    assert got["input_ids"].dtype == torch.long and got["topk_ids"].shape == (12, L, K)
    assert got["topk_logprobs"].dtype == torch.float32 and got["tail_mass"].shape == (12, L)
    assert torch.equal(got["input_ids"], torch.as_tensor(rows, dtype=torch.long))
    # position t holds the teacher distribution of token t+1: compare with a direct forward
    ref = scorer({"row": np.arange(12), "input_ids": rows})
    assert torch.equal(got["topk_ids"], torch.from_numpy(ref["topk_ids"].astype(np.int64)))
    assert torch.equal(got["topk_logprobs"], torch.from_numpy(ref["topk_logprobs"]).float())
    mass = got["topk_logprobs"].exp().sum(-1) + got["tail_mass"]
    assert torch.allclose(mass, torch.ones(()), atol=5e-3)


def test_ranks_round_robin_and_start_row(tmp_path, tiny_gqa, scorer, tiny_rows):
    build(tmp_path, tiny_gqa, scorer, tiny_rows[:12])
    store = LabelStore.open(tmp_path)
    full = _all(store)["input_ids"]
    r1 = _all(store, rank=1, world_size=3)["input_ids"]
    assert torch.equal(r1, full[1::3])
    later = _all(store, rank=1, world_size=3, start_row=2)["input_ids"]
    assert torch.equal(later, full[1::3][2:])
    sizes = [len(b["input_ids"]) for b in store.iter_batches(5)]
    assert sizes == [5, 5, 2]
    # fewer ids than stored: the dropped mass moves to the tail
    small = _all(store, k=2)
    assert small["topk_ids"].shape[-1] == 2
    total = small["topk_logprobs"].exp().sum(-1) + small["tail_mass"]
    assert torch.allclose(total, torch.ones(()), atol=5e-3)
    with pytest.raises(DistillError, match="holds top-4"):
        next(store.iter_batches(4, k=5))


def test_int8_store_round_trip(tmp_path, tiny_gqa, scorer, tiny_rows):
    rows = tiny_rows[:5]
    s8 = TeacherScorer(str(tiny_gqa.path), k=K, seq_len=L, logprob_encoding="int8")
    build(tmp_path / "q", tiny_gqa, s8, rows, encoding="int8")
    build(tmp_path / "f", tiny_gqa, scorer, rows)
    q, f = _all(LabelStore.open(tmp_path / "q")), _all(LabelStore.open(tmp_path / "f"))
    assert torch.equal(q["topk_ids"], f["topk_ids"])
    assert torch.allclose(q["topk_logprobs"], f["topk_logprobs"], atol=0.05)
    assert pq.read_schema(tmp_path / "q" / "shard-00000.parquet").field(
        "topk_logprobs"
    ).type == pa.list_(pa.uint8(), L * K)


def test_resume_rescores_only_missing_or_corrupt_shards(tmp_path, tiny_gqa, scorer, tiny_rows):
    rows = tiny_rows[:12]
    build(tmp_path / "ref", tiny_gqa, scorer, rows)
    reference = _all(LabelStore.open(tmp_path / "ref"))
    root = tmp_path / "run"
    build(root, tiny_gqa, scorer, rows)
    mtimes = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*.parquet")}
    (root / "shard-00001.parquet").unlink()
    with open(root / "shard-00002.parquet", "r+b") as f:  # truncated
        f.truncate(100)
    with pytest.raises(DistillError, match="missing"):
        LabelStore.open(root)
    ds = build(root, tiny_gqa, scorer, rows)
    assert sorted(ds.scored_rows) == list(range(5, 12))  # shard 0 not rescored
    assert (root / "shard-00000.parquet").stat().st_mtime_ns == mtimes["shard-00000.parquet"]
    again = _all(LabelStore.open(root, verify=True))
    for key in ("input_ids", "topk_ids"):
        assert torch.equal(again[key], reference[key]), key
    for key in ("topk_logprobs", "tail_mass"):  # other batch shapes: at most fp16 rounding
        assert torch.allclose(again[key], reference[key], atol=2e-3), key
    # a run stopped mid-way: manifest incomplete, only the first shard listed
    m = read_manifest(root)
    m.shards, m.complete = m.shards[:1], False
    write_manifest(root, m)
    (root / "shard-00002.parquet").unlink()
    with pytest.raises(DistillError, match="incomplete"):
        LabelStore.open(root)
    ds = build(root, tiny_gqa, scorer, rows)
    assert sorted(ds.scored_rows) == list(range(5, 12))
    fid, ref_fid = LabelStore.open(root).manifest.fidelity, read_manifest(tmp_path / "ref").fidelity
    assert fid.positions == ref_fid.positions
    assert fid.kl == pytest.approx(ref_fid.kl, rel=1e-3)


def test_changed_settings_are_refused_unless_overwrite(tmp_path, tiny_gqa, scorer, tiny_rows):
    rows = tiny_rows[:5]
    build(tmp_path, tiny_gqa, scorer, rows)
    with pytest.raises(DistillError, match="corpus.fingerprint: store has 'fp'"):
        build(tmp_path, tiny_gqa, scorer, rows, fingerprint="other")
    with pytest.raises(DistillError, match="k: store has 4, this run wants 8"):
        build(tmp_path, tiny_gqa, scorer, rows, k=8)
    assert LabelStore.open(tmp_path).manifest.corpus.fingerprint == "fp"  # untouched
    ds = build(tmp_path, tiny_gqa, scorer, rows, overwrite=True, fingerprint="other")
    assert len(ds.scored_rows) == 5
    assert LabelStore.open(tmp_path).manifest.corpus.fingerprint == "other"


def test_check_compatible_names_the_mismatch(tmp_path, tiny_gqa, tiny_mha, scorer, tiny_rows):
    build(tmp_path, tiny_gqa, scorer, tiny_rows[:5])
    store = LabelStore.open(tmp_path)
    store.check_compatible(tiny_gqa.weights_sha256, tiny_gqa.tokenizer_sha256, k=K)
    with pytest.raises(DistillError, match="teacher weights sha256"):
        store.check_compatible(tiny_mha.weights_sha256, tiny_gqa.tokenizer_sha256)
    with pytest.raises(DistillError, match="tokenizer sha256"):
        store.check_compatible(tiny_gqa.weights_sha256, "0" * 64)
    with pytest.raises(DistillError, match="k=8 requested but the store holds only top-4"):
        store.check_compatible(tiny_gqa.weights_sha256, tiny_gqa.tokenizer_sha256, k=8)


def test_bad_stores_give_clear_errors(tmp_path):
    with pytest.raises(DistillError, match="missing manifest.json"):
        LabelStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DistillError, match="not valid JSON"):
        LabelStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DistillError, match="format_version 99"):
        LabelStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "k": 3}))
    with pytest.raises(DistillError, match="malformed"):
        LabelStore.open(tmp_path)


def test_config_rejects_bad_k():
    from pydantic import ValidationError

    from distill.labels.config import SoftLabelsConfig

    for bad in (0, -3):
        with pytest.raises(ValidationError, match="greater than or equal to 1"):
            SoftLabelsConfig(k=bad)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SoftLabelsConfig(topk=3)
    assert SoftLabelsConfig().resolved_dtype(on_gpu=True) == "bfloat16"


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch):
    from distill.labels import config

    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)
    assert config.SoftLabelsConfig().resolved_dtype(on_gpu=False) == "float32"
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)
    assert config.SoftLabelsConfig().resolved_dtype(on_gpu=False) == "bfloat16"
    assert config.SoftLabelsConfig(dtype="float32").resolved_dtype(on_gpu=True) == "float32"


def test_sampled_store_round_trip_random_access_and_identity(tmp_path, tiny_gqa, tiny_rows):
    """A sampled store written by the stage's shard writer: ragged ids/counts per position
    summing to N, readable in any row order, fidelity recorded; its identity differs from
    top-k's, so one can never be resumed as the other."""
    from distill.labels.manifest import encodings_for

    n_draws, rows = 16, tiny_rows[:12]
    sampler = TeacherScorer(
        str(tiny_gqa.path), k=n_draws, seq_len=L, fidelity_stride=7, encoding="sampled", seed=3
    )
    fresh = _manifest(tiny_gqa, len(rows), k=n_draws).model_copy(
        update={
            "encoding": "sampled",
            "sample_seed": 3,
            "encodings": encodings_for("sampled", "uint16", "float16"),
        }
    )
    manifest, todo = prepare_store(tmp_path, fresh, shard_plan(len(rows), 5), False)
    score_shards(FakeDataset(sampler, rows, todo), tmp_path, manifest, todo, "zstd")
    manifest.finalize()
    manifest.complete = True
    write_manifest(tmp_path, manifest)
    schema = pq.read_schema(tmp_path / "shard-00000.parquet")
    assert schema.field("sample_ids").type == pa.list_(pa.uint16())
    assert schema.field("sample_counts").type == pa.list_(pa.uint8())
    store = LabelStore.open(tmp_path, verify=True)
    f = store.manifest.fidelity
    assert f.kl is None and f.captured_mass_all is None
    assert 0 < f.captured_mass <= 1 and 0 < f.target_tv < 1 and f.grad_rel_err > 0
    batch = store.read_rows(np.array([11, 0, 6, 0]))
    assert torch.equal(batch["input_ids"][:, 0], torch.as_tensor(rows[[11, 0, 6, 0], 0]).long())
    w = batch["sample_weights"]
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-6)  # Σ counts / N = 1 everywhere
    assert torch.equal(batch["input_ids"][1], batch["input_ids"][3])
    assert batch["entropy"].shape == (4, L) and (batch["entropy"] >= 0).all()
    # the draws are a function of (seed, row): scoring row 6 again gives the same samples
    again = sampler({"row": np.array([6]), "input_ids": rows[6:7]})
    stored_ids = batch["sample_ids"][2][w[2] > 0]  # row 6, flattened in position order
    assert np.array_equal(again["sample_ids"][0], stored_ids.numpy())
    with pytest.raises(DistillError, match="encoding: store has 'sampled'"):
        prepare_store(tmp_path, _manifest(tiny_gqa, len(rows), k=n_draws), shard_plan(12, 5), False)
    with pytest.raises(DistillError, match="sampled soft labels"):
        store.read_rows(np.array([0]), k=2)
