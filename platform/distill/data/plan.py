"""The driver's split and packing plan, from per-document metadata only (ids, token counts,
MinHash signatures; never texts or tokens)::

    plan = make_plan(doc_ids, n_tokens, sigs, DataConfig(seq_len=256))
    plan.groups        # one row per packing group: split, first row, rows
    plan.doc_group     # per document: its packing group (-1 = not packed)

Rules, each a function of the corpus and ``data.seed`` only (same corpus + seed → same rows):

1. near-duplicate documents form clusters (``distill.data.dedup``); a cluster is held out or
   trained as a whole, decided by a hash of its smallest doc id (clusters larger than
   ``max_heldout_cluster`` × the expected held-out document count always train);
2. inside each split, documents are ordered by a seeded hash of their id, so any head of the
   packed rows (``max_train_rows``, ``soft_labels.max_rows``) is a random sample of documents;
3. consecutive documents form groups of about ``pack_group_rows`` rows; each group is packed on
   its own (documents joined by EOS, the last partial row dropped), so rows are built in parallel
   and stay deterministic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from distill.config.base import DistillError
from distill.data.config import DataConfig
from distill.data.corpus import is_heldout
from distill.data.dedup import cluster_documents

TRAIN, HELDOUT = 0, 1
SPLITS = ("train", "heldout")


def order_key(doc_id: str, seed: int) -> str:
    """The position key of a document inside its split (seeded, independent of the split)."""
    return hashlib.sha256(f"{seed}:order:{doc_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    doc_ids: np.ndarray  # str, sorted
    n_tokens: np.ndarray  # int64
    cluster: np.ndarray  # int64: index of the cluster's smallest doc id
    split: np.ndarray  # int8: TRAIN / HELDOUT
    position: np.ndarray  # int64: rank inside its split's random order
    doc_group: np.ndarray  # int64: packing group, -1 = no token of it is packed
    group_split: np.ndarray  # int8 per group
    group_first_row: np.ndarray  # int64 per group: first row inside its split
    group_rows: np.ndarray  # int64 per group

    def rows(self, split: int) -> int:
        return int(self.group_rows[self.group_split == split].sum())

    def documents(self, split: int) -> int:
        """Documents of ``split`` with at least one packed token."""
        return int(((self.split == split) & (self.doc_group >= 0)).sum())

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group, position) of each id in ``ids`` (ids absent from the plan get group -1)."""
        pos = np.searchsorted(self.doc_ids, ids).clip(max=max(len(self.doc_ids) - 1, 0))
        known = self.doc_ids[pos] == ids if len(self.doc_ids) else np.zeros(len(ids), bool)
        return np.where(known, self.doc_group[pos], -1), self.position[pos]


def _heldout_clusters(doc_ids: np.ndarray, cluster: np.ndarray, cfg: DataConfig) -> np.ndarray:
    labels, sizes = np.unique(cluster, return_counts=True)
    expected = cfg.heldout_fraction * len(doc_ids)
    cap = max(1.0, cfg.near_duplicates.max_heldout_cluster * expected)
    held = np.array(
        [
            size <= cap and is_heldout(str(doc_ids[lab]), cfg.heldout_fraction, cfg.seed)
            for lab, size in zip(labels, sizes, strict=True)
        ],
        dtype=bool,
    )
    if not held.any():  # tiny corpora: still hold out the smallest cluster with the lowest key
        keys = [
            (int(s), order_key(str(doc_ids[lab]), cfg.seed))
            for lab, s in zip(labels, sizes, strict=True)
        ]
        held[min(range(len(labels)), key=lambda i: keys[i])] = True
    if held.all():
        raise DistillError(
            f"the corpus has {len(doc_ids)} document(s) in {len(labels)} near-duplicate "
            "cluster(s): too few to split into train and held-out"
        )
    return labels[held]


def _groups(
    lengths: np.ndarray, seq_len: int, group_rows: int, max_rows: int | None
) -> tuple[np.ndarray, list[int]]:
    """Group index per document (in order; -1 = not packed) and rows per group."""
    doc_group = np.full(len(lengths), -1, dtype=np.int64)
    rows: list[int] = []
    start, acc, total = 0, 0, 0
    budget = max_rows if max_rows is not None else np.iinfo(np.int64).max

    def close(stop: int) -> None:
        nonlocal total
        r = min(acc // seq_len, budget - total)
        if r <= 0:
            return
        # documents with at least one token inside the group's r rows
        starts = np.concatenate([[0], np.cumsum(lengths[start:stop] + 1)[:-1]])
        used = starts < r * seq_len
        doc_group[start:stop][used] = len(rows)
        rows.append(int(r))
        total += int(r)

    for i, n in enumerate(lengths):
        acc += int(n) + 1
        if acc >= group_rows * seq_len:
            close(i + 1)
            start, acc = i + 1, 0
            if total >= budget:
                return doc_group, rows
    if acc:
        close(len(lengths))
    return doc_group, rows


def make_plan(doc_ids: np.ndarray, n_tokens: np.ndarray, sigs: np.ndarray, cfg: DataConfig) -> Plan:
    """Cluster, split, order and group the documents (see the module docstring)."""
    doc_ids = np.asarray(doc_ids, dtype=object)
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    # exact duplicates (rows with the same content hash) are one document
    doc_ids, first = np.unique(doc_ids, return_index=True)
    n_tokens, sigs = n_tokens[first], np.asarray(sigs)[first]
    keep = n_tokens > 0
    doc_ids, n_tokens, sigs = doc_ids[keep], n_tokens[keep], sigs[keep]
    if not len(doc_ids):
        raise DistillError("the corpus is empty: no document produced any token")
    cluster = cluster_documents(list(doc_ids), sigs, cfg.near_duplicates)
    split = np.where(np.isin(cluster, _heldout_clusters(doc_ids, cluster, cfg)), HELDOUT, TRAIN)
    split = split.astype(np.int8)
    position = np.zeros(len(doc_ids), dtype=np.int64)
    doc_group = np.full(len(doc_ids), -1, dtype=np.int64)
    g_split: list[int] = []
    g_rows: list[int] = []
    g_first: list[int] = []
    for s, cap in ((TRAIN, cfg.max_train_rows), (HELDOUT, cfg.max_heldout_rows)):
        idx = np.nonzero(split == s)[0]
        idx = idx[np.argsort([order_key(str(doc_ids[i]), cfg.seed) for i in idx], kind="stable")]
        position[idx] = np.arange(len(idx))
        groups, rows = _groups(n_tokens[idx], cfg.seq_len, cfg.pack_group_rows, cap)
        doc_group[idx] = np.where(groups >= 0, groups + len(g_rows), -1)
        first = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64) if rows else []
        g_first.extend(int(f) for f in first)
        g_rows.extend(rows)
        g_split.extend([s] * len(rows))
    plan = Plan(
        doc_ids=doc_ids.astype(str),
        n_tokens=n_tokens,
        cluster=cluster,
        split=split,
        position=position,
        doc_group=doc_group,
        group_split=np.asarray(g_split, dtype=np.int8),
        group_first_row=np.asarray(g_first, dtype=np.int64),
        group_rows=np.asarray(g_rows, dtype=np.int64),
    )
    if plan.rows(TRAIN) == 0 or plan.rows(HELDOUT) == 0:
        raise DistillError(
            f"the corpus is too small for seq_len {cfg.seq_len}: {plan.rows(TRAIN)} train and "
            f"{plan.rows(HELDOUT)} held-out rows"
        )
    return plan
