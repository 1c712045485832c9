"""The corpus split and packing plan (no Ray): near-duplicate clusters never straddle the split,
documents are packed in a seeded order keyed by their id, groups tile the rows."""

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.data.config import DataConfig, NearDuplicateConfig
from distill.data.dedup import cluster_documents, shingle_hashes, token_signature
from distill.data.packing import pack, pack_concat
from distill.data.plan import HELDOUT, TRAIN, make_plan


def _corpus(n_docs: int, seed: int = 0, twins: int = 0):
    """Random token documents; the first ``twins`` documents each get a near-copy."""
    rng = np.random.default_rng(seed)
    docs = {f"d{i:03d}.py": rng.integers(1, 500, rng.integers(20, 400)) for i in range(n_docs)}
    for i in range(twins):
        src = docs[f"d{i:03d}.py"].copy()
        src[::50] = 7  # a few edits: still a near duplicate
        docs[f"twin/d{i:03d}.py"] = src
    return docs


def _plan(docs, **kw):
    ids = np.array(list(docs), dtype=object)
    n = np.array([len(docs[d]) for d in ids])
    cfg = DataConfig(**{"seq_len": 16, "heldout_fraction": 0.2, "pack_group_rows": 4, **kw})
    nd = cfg.near_duplicates
    sigs = np.stack([token_signature(docs[d], nd.shingle, nd.num_perm) for d in ids])
    return make_plan(ids, n, sigs, cfg), cfg


def _rows(plan, docs, cfg, split):
    """Rows of ``split`` built from the plan with the reference ``pack`` (group by group)."""
    out = []
    for g in np.nonzero(plan.group_split == split)[0]:
        members = np.nonzero(plan.doc_group == g)[0]
        members = members[np.argsort(plan.position[members])]
        rows = pack([docs[plan.doc_ids[i]] for i in members], cfg.seq_len, 0)
        out.append(rows[: plan.group_rows[g]])
    return np.concatenate(out)


def test_signatures_estimate_jaccard():
    a = np.arange(1000)
    b = a.copy()
    b[500:] += 5000  # half the shingles differ
    sa, sb, sc = (token_signature(x, 5, 128) for x in (a, b, np.arange(2000, 3000)))
    assert np.array_equal(sa, token_signature(a.copy(), 5, 128))  # deterministic
    assert 0.2 < np.mean(sa == sb) < 0.5 and np.mean(sa == sc) < 0.05
    assert len(shingle_hashes(np.array([3]), 5)) == 1  # short documents still have a shingle


def test_near_duplicates_cluster_and_never_straddle_the_split():
    docs = _corpus(60, twins=20)
    plan, _ = _plan(docs)
    idx = {d: i for i, d in enumerate(plan.doc_ids)}
    for i in range(20):
        a, b = idx[f"d{i:03d}.py"], idx[f"twin/d{i:03d}.py"]
        assert plan.cluster[a] == plan.cluster[b]
        assert plan.split[a] == plan.split[b]
        # the cluster is named by its smallest id
        assert plan.doc_ids[plan.cluster[a]] == min(plan.doc_ids[a], plan.doc_ids[b])
    for c in np.unique(plan.cluster):
        assert len(set(plan.split[plan.cluster == c])) == 1
    assert 0 < (plan.split == HELDOUT).sum() < len(plan.doc_ids)
    off = cluster_documents(
        list(plan.doc_ids), np.zeros((len(plan.doc_ids), 4)), NearDuplicateConfig(enabled=False)
    )
    assert len(set(off.tolist())) == len(plan.doc_ids)


def test_order_is_seeded_and_keyed_by_doc_id():
    docs = _corpus(80)
    plan, cfg = _plan(docs)
    # the same documents listed in another order give the same plan and rows
    shuffled = dict(reversed(list(docs.items())))
    again, _ = _plan(shuffled)
    assert np.array_equal(plan.position, again.position)
    assert np.array_equal(_rows(plan, docs, cfg, TRAIN), _rows(again, shuffled, cfg, TRAIN))
    # the packed order is not the alphabetical one, and another seed gives another order
    train = np.nonzero(plan.split == TRAIN)[0]
    by_pos = plan.doc_ids[train[np.argsort(plan.position[train])]]
    assert list(by_pos) != sorted(by_pos)
    other, _ = _plan(docs, seed=1)
    assert not np.array_equal(other.position, plan.position)


def test_row_caps_take_the_head_of_the_random_order():
    docs = _corpus(80)
    full, cfg = _plan(docs)
    capped, _ = _plan(docs, max_train_rows=10, max_heldout_rows=3)
    assert capped.rows(TRAIN) == 10 and capped.rows(HELDOUT) == 3
    assert np.array_equal(_rows(capped, docs, cfg, TRAIN), _rows(full, docs, cfg, TRAIN)[:10])
    # a larger cap keeps the rows a smaller one had (evaluate scores the first max_rows)
    assert np.array_equal(_rows(capped, docs, cfg, HELDOUT), _rows(full, docs, cfg, HELDOUT)[:3])
    packed = capped.doc_group >= 0
    assert capped.documents(TRAIN) < full.documents(TRAIN)
    # only documents at the head of the order are packed
    tr = capped.split == TRAIN
    assert capped.position[tr & packed].max() < capped.position[tr & ~packed].min()


def test_groups_tile_the_rows():
    docs = _corpus(50)
    plan, cfg = _plan(docs)
    for s in (TRAIN, HELDOUT):
        g = plan.group_split == s
        first, rows = plan.group_first_row[g], plan.group_rows[g]
        assert first[0] == 0 and np.array_equal(first[1:], np.cumsum(rows)[:-1])
        assert (rows <= cfg.pack_group_rows + max(len(d) for d in docs.values()) // 16 + 1).all()


def test_pack_concat_matches_pack():
    rng = np.random.default_rng(0)
    for _ in range(100):
        docs = [rng.integers(1, 100, rng.integers(0, 30)) for _ in range(rng.integers(0, 8))]
        L = int(rng.integers(1, 10))
        assert np.array_equal(pack(docs, L, 0), pack_concat(docs, L, 0, 10**9))
    assert pack_concat([np.arange(1, 10)], 4, 0, rows=1).tolist() == [[1, 2, 3, 4]]


def test_too_small_or_all_duplicates_is_one_clear_error():
    with pytest.raises(DistillError, match="too small for seq_len"):
        _plan({f"d{i}": np.arange(1, 5) + i * 100 for i in range(6)}, seq_len=64)
    same = np.arange(1, 300)
    with pytest.raises(DistillError, match="near-duplicate cluster"):
        _plan({f"d{i}": same.copy() for i in range(6)})
