"""Near-duplicate documents for a leak-free split: MinHash signatures on token shingles, then
clusters (union of every pair whose estimated Jaccard reaches the threshold) that the split keeps
on one side::

    sig = token_signature(ids, shingle=5, num_perm=128)        # in the tokenize actors
    labels = cluster_documents(doc_ids, sigs, threshold=0.3)   # at the driver (signatures only)

Signatures are small (``num_perm`` uint64 per document) and are the only per-document data the
driver gathers besides ids and token counts; texts and tokens stay in Ray Data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from distill.data.config import NearDuplicateConfig

_SEED = 1
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)
_CHUNK = 8192  # shingles per MinHash update (bounds the [chunk, num_perm] temporary)


def window_hashes(seq: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every window of ``n`` consecutive ids (wrapping arithmetic); also the
    n-grams of ``distill.eval.contamination``."""
    if len(seq) < n:
        return np.zeros(0, dtype=np.uint64)
    powers = np.array([pow(int(_BASE), k, 1 << 64) for k in range(n - 1, -1, -1)], np.uint64)
    with np.errstate(over="ignore"):
        x = np.asarray(seq).astype(np.uint64) * _MIX + np.uint64(1)
        win = np.lib.stride_tricks.sliding_window_view(x, n)
        return (win * powers).sum(axis=1, dtype=np.uint64)


def shingle_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Distinct 32-bit hashes of every window of ``n`` consecutive token ids (vectorized)."""
    seq = np.asarray(ids, dtype=np.int64)
    if len(seq) < n:
        seq = np.pad(seq, (0, n - len(seq)), constant_values=-1) if len(seq) else seq
    return np.unique(window_hashes(seq, n) >> np.uint64(32))


def text_shingle_hashes(shingles: Iterable[str]) -> np.ndarray:
    """Distinct 32-bit hashes of text shingles (the first 4 bytes of each one's SHA-1)."""
    h = {int.from_bytes(hashlib.sha1(s.encode()).digest()[:4], "little") for s in shingles}
    return np.array(sorted(h), dtype=np.uint64)


def signature(hashes: np.ndarray, num_perm: int) -> np.ndarray:
    """datasketch MinHash (affine32) of distinct 32-bit shingle hashes as ``uint64[num_perm]``."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=_SEED, hashfunc=int, scheme="affine32")
    for i in range(0, len(hashes), _CHUNK):
        m.update_batch(hashes[i : i + _CHUNK].tolist())
    return np.asarray(m.hashvalues, dtype=np.uint64)


def token_signature(ids: np.ndarray, shingle: int, num_perm: int) -> np.ndarray:
    """MinHash of the document's token shingles as ``uint64[num_perm]``."""
    return signature(shingle_hashes(ids, shingle), num_perm)


class NearDuplicateIndex:
    """MinHash LSH over signatures: the candidates whose estimated Jaccard may reach
    ``threshold`` (the corpus split's clusters and seq-KD's near-duplicate filter)."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    @staticmethod
    def _lean(sig: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=_SEED, hashvalues=sig, scheme="affine32")

    def add(self, key: int, sig: np.ndarray) -> None:
        self.lsh.insert(key, self._lean(sig))

    def candidates(self, sig: np.ndarray) -> list[int]:
        return [int(k) for k in self.lsh.query(self._lean(sig))]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def cluster_documents(
    doc_ids: Sequence[str], sigs: np.ndarray, cfg: NearDuplicateConfig
) -> np.ndarray:
    """Cluster label per document: the index of the cluster's smallest doc id (stable).

    Candidate pairs come from MinHash LSH; a pair joins when the signature-estimated Jaccard is
    at least ``cfg.threshold``. ``cfg.enabled=False`` puts every document in its own cluster.
    """
    n = len(doc_ids)
    if not cfg.enabled or n < 2:
        return np.arange(n, dtype=np.int64)
    order = np.argsort(np.asarray(doc_ids, dtype=object), kind="stable")
    sigs = np.asarray(sigs, dtype=np.uint64)
    index = NearDuplicateIndex(cfg.threshold, cfg.num_perm)
    for i in range(n):
        index.add(i, sigs[i])
    uf = _UnionFind(n)
    for i in range(n):
        for j in index.candidates(sigs[i]):
            if j > i and float(np.mean(sigs[i] == sigs[j])) >= cfg.threshold:
                uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(n)])
    # relabel each cluster by its member with the smallest doc id
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    best: dict[int, int] = {}
    for i, r in enumerate(roots):
        if int(r) not in best or rank[i] < rank[best[int(r)]]:
            best[int(r)] = i
    return np.array([best[int(r)] for r in roots], dtype=np.int64)
