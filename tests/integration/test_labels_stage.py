"""Stage ``soft_labels`` on Ray Data with the tiny teacher: store, MLflow lineage, resume."""

import numpy as np
import pytest
import torch

from distill.config.base import DistillError
from distill.labels.config import SoftLabelsConfig
from distill.labels.stage import run
from distill.labels.store import LabelStore
from distill.models.hashing import file_sha256


def _everything(store):
    return {k: v for k, v in next(store.iter_batches(store.num_rows)).items()}


@pytest.mark.timeout(300)
def test_stage_store_lineage_and_resume(ray_local, stage_ctx):
    section = {"k": 8, "rows_per_shard": 6, "batch_size": 4, "fidelity_positions": 64}
    section["dtype"] = "float32"  # bit-stable across batch shapes for the resume comparison
    ctx = stage_ctx(["soft_labels"], soft_labels=section)
    cfg = ctx.config.soft_labels
    result = run(ctx, cfg)
    root = result.outputs["soft_labels"]
    assert root == ctx.workdir / "labels"
    store = LabelStore.open(root, verify=True)
    m = store.manifest
    assert store.num_rows == 16 and [s.rows for s in m.shards] == [6, 6, 4]
    assert m.k == 8 and m.vocab_size == 512 and m.encodings.topk_ids == "uint16"
    assert m.corpus.fingerprint == "test-fingerprint" and m.teacher.name == ctx.teacher.name
    store.check_compatible(ctx.teacher.weights_sha256, ctx.teacher.tokenizer_sha256, k=8)
    got = _everything(store)
    assert torch.equal(got["input_ids"], torch.as_tensor(ctx.corpus.train(), dtype=torch.long))
    assert 0 < m.fidelity.captured_mass < 1 and m.fidelity.kl > 0
    assert m.fidelity.positions == 64
    assert result.metrics["bytes_per_token"] == pytest.approx(m.bytes_per_token)
    assert result.metrics["shards_scored"] == 3 and result.metrics["tokens_per_s"] > 0

    client = ctx.tracker.client
    data = client.get_run(ctx.tracker.run_id).data
    assert data.tags["output.soft_labels.sha256"] == file_sha256(root / "manifest.json")
    assert data.tags["input.corpus.sha256"] == "test-fingerprint"
    assert data.params["k"] == "8" and data.params["resolved.compute_dtype"] == "float32"
    assert data.metrics["kl_full_vs_topk"] == pytest.approx(m.fidelity.kl)
    arts = [a.path for a in client.list_artifacts(ctx.tracker.run_id, "soft_labels")]
    assert arts == ["soft_labels/manifest.json"]

    # resume: one shard lost, one truncated -> only those two are scored again
    mtime0 = (root / "shard-00000.parquet").stat().st_mtime_ns
    (root / "shard-00001.parquet").unlink()
    with open(root / "shard-00002.parquet", "r+b") as f:
        f.truncate(64)
    again = run(ctx, cfg)
    assert again.metrics["shards_scored"] == 2 and again.metrics["shards_reused"] == 1
    assert (root / "shard-00000.parquet").stat().st_mtime_ns == mtime0
    got2 = _everything(LabelStore.open(root, verify=True))
    assert torch.equal(got2["topk_ids"], got["topk_ids"])
    assert torch.allclose(got2["topk_logprobs"], got["topk_logprobs"], atol=2e-3)
    # everything whole: a rerun scores nothing
    assert run(ctx, cfg).metrics["shards_scored"] == 0

    # another k would mix stores: refused before any scoring, allowed with overwrite
    with pytest.raises(DistillError, match="k: store has 8, this run wants 4"):
        run(ctx, SoftLabelsConfig(**{**section, "k": 4}))
    assert LabelStore.open(root).manifest.k == 8
    small = {"k": 4, "max_rows": 5, "fidelity_positions": 0, "logprob_encoding": "int8"}
    ctx2 = stage_ctx(["soft_labels"], soft_labels={**section, **small, "overwrite": True})
    res = run(ctx2, ctx2.config.soft_labels)  # a new MLflow stage run, same workdir
    store = LabelStore.open(res.outputs["soft_labels"], verify=True)
    assert store.manifest.k == 4 and store.manifest.encodings.topk_logprobs == "int8"
    assert sorted(p.name for p in root.glob("shard-*")) == ["shard-00000.parquet"]
    assert store.manifest.fidelity.positions == 0 and "kl_full_vs_topk" not in res.metrics

    # the Ray Data view of the store (for Ray Train dataset shards): int8 decoded to float16
    rows = store.ray_dataset().take_all()
    assert len(rows) == 5 and "logprob_scale" not in rows[0]
    lp = np.asarray(rows[0]["topk_logprobs"], dtype=np.float32).reshape(64, 4)
    ref = next(store.iter_batches(1))["topk_logprobs"][0].numpy()
    assert np.allclose(lp, ref, atol=1e-2)
    assert np.allclose(lp, got["topk_logprobs"][0, :, :4].numpy(), atol=0.05)


@pytest.mark.timeout(300)
def test_stage_sampled_store_on_ray_data(ray_local, stage_ctx):
    """The sampled encoding through the Ray Data actors: ragged shards, manifest fidelity."""
    section = {"encoding": "sampled", "samples": 24, "rows_per_shard": 6, "batch_size": 4}
    ctx = stage_ctx(["soft_labels"], soft_labels={**section, "fidelity_positions": 64})
    result = run(ctx, ctx.config.soft_labels)
    store = LabelStore.open(result.outputs["soft_labels"], verify=True)
    m = store.manifest
    assert m.encoding == "sampled" and m.k == 24 and m.encodings.sample_counts == "uint8"
    got = store.read_rows(np.arange(store.num_rows))
    assert torch.equal(got["input_ids"], torch.as_tensor(ctx.corpus.train(), dtype=torch.long))
    assert torch.allclose(got["sample_weights"].sum(-1), torch.ones(()), atol=1e-6)
    assert m.fidelity.positions == 64 and m.fidelity.grad_rel_err > 0
    assert result.metrics["target_tv"] == pytest.approx(m.fidelity.target_tv)
    assert "kl_full_vs_topk" not in result.metrics
    assert result.summary["encoding"] == "sampled"


@pytest.mark.timeout(60)
def test_k_larger_than_vocab_fails_at_start(stage_ctx):
    ctx = stage_ctx(["soft_labels"])
    with pytest.raises(
        DistillError, match=r"k=513 is larger than the teacher's vocabulary \(512\)"
    ):
        run(ctx, SoftLabelsConfig(k=513))
    assert not (ctx.workdir / "labels").exists()


@pytest.mark.timeout(120)
def test_scorer_pool_that_cannot_start_fails_within_its_timeout(ray_local, stage_ctx):
    """A pool asking for GPUs the cluster lacks: one error naming the setting, no hang, and
    no shard or finished manifest left behind."""
    section = {"num_gpus_per_actor": 1, "actor_start_timeout_s": 3, "rows_per_shard": 8}
    ctx = stage_ctx(["soft_labels"], soft_labels=section)
    with pytest.raises(DistillError, match=r"did not all start within 3 s.*actor_start_timeout_s"):
        run(ctx, ctx.config.soft_labels)
    root = ctx.workdir / "labels"
    assert not list(root.glob("shard-*.parquet"))
    manifest = root / "manifest.json"
    assert not manifest.exists() or '"complete": true' not in manifest.read_text()


@pytest.mark.timeout(120)
def test_strict_spread_pool_on_too_few_nodes_fails_within_its_timeout(ray_local, stage_ctx):
    """One teacher per node on the one-node test session: one error naming the setting and the
    node count, no hang, no finished manifest; the placement group is gone afterwards."""
    import ray
    from ray.util import placement_group_table

    section = {
        "num_actors": 2,
        "placement": "strict_spread",
        "actor_start_timeout_s": 3,
        "rows_per_shard": 8,
    }
    ctx = stage_ctx(["soft_labels"], soft_labels=section)
    with pytest.raises(DistillError, match=r"strict_spread: no 2 distinct nodes.*1 alive node"):
        run(ctx, ctx.config.soft_labels)
    manifest = ctx.workdir / "labels" / "manifest.json"
    assert not manifest.exists() or '"complete": true' not in manifest.read_text()
    states = [pg["state"] for pg in placement_group_table().values()]
    assert "PENDING" not in states and "CREATED" not in states, states
    assert ray.is_initialized()
