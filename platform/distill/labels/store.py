"""Read a soft-label store (``<workdir>/labels/``) for training.

    from distill.labels.store import LabelStore
    store = LabelStore.open(Path("runs/smoke/labels"))
    store.check_compatible(teacher.weights_sha256, teacher.tokenizer_sha256, k=16)
    for batch in store.iter_batches(8, rank=0, world_size=2):
        batch["topk_logprobs"]   # float32 [8, L, k]; also input_ids, topk_ids, tail_mass
    batch = store.read_rows(np.array([17, 3, 250]))   # random access, in the order asked

Rows go to ranks round-robin by global row index (rank ``r`` of ``W`` reads rows
``r, r+W, r+2W, ...``); ``start_row`` counts rows this rank already consumed. A sampled store
(``manifest.encoding == "sampled"``) yields ``sample_ids [B, L, U]`` (long), ``sample_weights
[B, L, U]`` (count / N, 0 in padding slots) and ``entropy [B, L]`` instead of the top-k columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.labels.manifest import Manifest, read_manifest
from distill.labels.sampled import pad_samples
from distill.labels.shards import read_shard, sha256_of
from distill.labels.topk import decode_logprobs


class LabelStore:
    """A complete, validated soft-label store (see ``distill.labels.shards`` for the format)."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, root: Path, verify: bool = False) -> LabelStore:
        """Validate the manifest and that every shard exists whole (size; sha256 if ``verify``).

        Raises ``DistillError`` for a missing, incomplete or damaged store.
        """
        root = Path(root)
        m = read_manifest(root)
        if not m.complete:
            raise DistillError(
                f"soft-label store {root} is incomplete ({len(m.shards)} shards written, run "
                "interrupted?): rerun the soft_labels stage to finish it"
            )
        expected = 0
        for s in sorted(m.shards, key=lambda s: s.start_row):
            if s.start_row != expected:
                raise DistillError(f"{root}: shards do not cover rows contiguously at {expected}")
            expected += s.rows
            path = root / s.file
            if not path.exists():
                raise DistillError(f"{root}: shard {s.file} is missing; rerun soft_labels")
            if path.stat().st_size != s.bytes:
                raise DistillError(
                    f"{root}: shard {s.file} has {path.stat().st_size} bytes, manifest says "
                    f"{s.bytes} (truncated or replaced); rerun soft_labels"
                )
            if verify and sha256_of(path) != s.sha256:
                raise DistillError(f"{root}: shard {s.file} fails its sha256; rerun soft_labels")
        if expected != m.rows:
            raise DistillError(f"{root}: shards hold {expected} rows, manifest says {m.rows}")
        return cls(root, m)

    @property
    def num_rows(self) -> int:
        return self.manifest.rows

    @property
    def k(self) -> int:
        return self.manifest.k

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    def shard_paths(self) -> list[Path]:
        return [self.root / s.file for s in sorted(self.manifest.shards, key=lambda s: s.start_row)]

    def check_compatible(
        self, teacher_weights_sha256: str, tokenizer_sha256: str, k: int | None = None
    ) -> None:
        """Raise ``DistillError`` naming what differs between this store and the consumer."""
        m = self.manifest
        problems = []
        if teacher_weights_sha256 != m.teacher.weights_sha256:
            problems.append(
                f"teacher weights sha256 {m.teacher.weights_sha256[:12]}… ({m.teacher.name}) "
                f"!= {teacher_weights_sha256[:12]}…"
            )
        if tokenizer_sha256 != m.tokenizer_sha256:
            problems.append(
                f"tokenizer sha256 {m.tokenizer_sha256[:12]}… != {tokenizer_sha256[:12]}…"
            )
        if k is not None and k > m.k:
            problems.append(f"k={k} requested but the store holds only top-{m.k}")
        if problems:
            raise DistillError(
                f"soft-label store {self.root} does not match: "
                + "; ".join(problems)
                + " (rerun soft_labels with this teacher, or set soft_labels.overwrite: true)"
            )

    def _rank_rows(self, start_row: int, rank: int, world_size: int) -> np.ndarray:
        if not 0 <= rank < world_size:
            raise DistillError(f"rank {rank} outside world_size {world_size}")
        return np.arange(rank, self.num_rows, world_size)[start_row:]

    def iter_batches(
        self,
        batch_size: int,
        *,
        start_row: int = 0,
        rank: int = 0,
        world_size: int = 1,
        k: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Batches of torch tensors: ``input_ids [B,L]`` long, ``topk_ids [B,L,k]`` long,
        ``topk_logprobs [B,L,k]`` float32, ``tail_mass [B,L]`` float32 (last batch may be short).

        ``k`` below the stored k keeps the k most likely ids and adds the rest to the tail.
        """
        if batch_size < 1:
            raise DistillError(f"batch_size must be ≥ 1, got {batch_size}")
        self._check_k(k)
        wanted = self._rank_rows(start_row, rank, world_size)
        buf: list[dict[str, np.ndarray]] = []
        have = 0
        for part in self._read_rows(wanted):
            buf.append(part)
            have += len(part["input_ids"])
            while have >= batch_size:
                batch, buf, have = _take(buf, batch_size)
                yield self._to_torch(batch, k)
        if have:
            batch, buf, have = _take(buf, have)
            yield self._to_torch(batch, k)

    def read_rows(self, rows: np.ndarray, k: int | None = None) -> dict[str, Any]:
        """The global rows ``rows`` (any order, e.g. a shuffled batch) as one batch of torch
        tensors, in the order given; reads only the shards that hold them."""
        self._check_k(k)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise DistillError(f"rows outside the store's 0..{self.num_rows - 1}")
        order = np.argsort(rows, kind="stable")
        parts = list(self._read_rows(rows[order]))
        cols, _, _ = _take(parts, len(rows))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return self._to_torch({key: v[inverse] for key, v in cols.items()}, k)

    def _check_k(self, k: int | None) -> None:
        if k is None:
            return
        if self.manifest.encoding != "topk":
            raise DistillError("k selects top-k ids: this store holds sampled soft labels")
        if not 1 <= k <= self.k:
            raise DistillError(f"k={k}: the store holds top-{self.k} (allowed 1..{self.k})")

    def _read_rows(self, wanted: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Decoded numpy columns of the ``wanted`` global rows (sorted; repeats allowed),
        shard by shard, in order."""
        m = self.manifest
        for s in sorted(m.shards, key=lambda s: s.start_row):
            lo, hi = np.searchsorted(wanted, [s.start_row, s.start_row + s.rows])
            if lo == hi:
                continue
            local = wanted[lo:hi] - s.start_row
            cols = read_shard(self.root / s.file, m.seq_len, m.k, rows=local)
            if "topk_logprobs" in cols:
                scale = cols.pop("logprob_scale", None)
                cols["topk_logprobs"] = decode_logprobs(cols["topk_logprobs"], scale)
            yield cols

    def _to_torch(self, batch: dict[str, np.ndarray], k: int | None) -> dict[str, Any]:
        if self.manifest.encoding == "sampled":
            return _sampled_to_torch(batch, self.manifest.k)
        return _to_torch(batch, k)

    def ray_dataset(self):
        """``ray.data.Dataset`` over the shards (int8 log-probs decoded to float16)."""
        import ray.data

        ds = ray.data.read_parquet([str(p) for p in self.shard_paths()])
        if self.manifest.encodings.topk_logprobs == "int8":
            ds = ds.map_batches(_decode_int8_batch, batch_format="numpy", fn_kwargs={"k": self.k})
        return ds


def _decode_int8_batch(batch: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    q = np.stack(list(batch["topk_logprobs"])).astype(np.float32)
    scale = np.stack(list(batch.pop("logprob_scale"))).astype(np.float32)
    n, lk = q.shape
    lp = decode_logprobs(q.reshape(n, -1, k), scale.reshape(n, -1))
    batch["topk_logprobs"] = lp.reshape(n, lk).astype(np.float16)
    return batch


def _take(buf: list[dict[str, np.ndarray]], n: int):
    cols = {key: np.concatenate([b[key] for b in buf]) for key in buf[0]}
    head = {key: v[:n] for key, v in cols.items()}
    rest = {key: v[n:] for key, v in cols.items()}
    left = len(rest["input_ids"])
    return head, ([rest] if left else []), left


def _sampled_to_torch(batch: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    import torch

    ids, weights = pad_samples(
        list(batch["sample_ids"]), list(batch["sample_counts"]), batch["sample_nuniq"], n
    )
    return {
        "input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)),
        "sample_ids": torch.from_numpy(ids),
        "sample_weights": torch.from_numpy(weights),
        "entropy": torch.from_numpy(batch["entropy"].astype(np.float32)),
    }


def _to_torch(batch: dict[str, np.ndarray], k: int | None) -> dict[str, Any]:
    import torch

    lp = torch.from_numpy(np.asarray(batch["topk_logprobs"], dtype=np.float32))
    ids = torch.from_numpy(batch["topk_ids"].astype(np.int64))
    tail = torch.from_numpy(batch["tail_mass"].astype(np.float32))
    if k is not None and k < lp.shape[-1]:
        dropped = lp[..., k:].exp().sum(-1)
        lp, ids, tail = lp[..., :k], ids[..., :k], (tail + dropped).clamp(0.0, 1.0)
    return {
        "input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)),
        "topk_ids": ids.contiguous(),
        "topk_logprobs": lp.contiguous(),
        "tail_mass": tail,
    }
