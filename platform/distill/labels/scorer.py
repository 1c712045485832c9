"""``TeacherScorer``: the Ray Data callable class that turns token rows into soft labels.

One teacher per actor; each call scores a batch of rows ``{"row": [B], "input_ids": [B, L]}``
(or row numbers ``{"data": [B]}`` of the packed corpus at ``corpus_path``, read here) and
returns the store columns plus per-row fidelity sums (``_fid_*``, dropped before writing)::

    ds.map_batches(TeacherScorer, fn_constructor_kwargs=scorer_kwargs, batch_size=4,
                   compute=ActorPoolStrategy(size=1), num_cpus=0.5, batch_format="numpy")

It also runs without Ray (``TeacherScorer(**kwargs)(batch)``), which the tests use.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from distill.data.packed import take_rows
from distill.labels.encode import EncodingSpec, encode_batch
from distill.models.loader import load_causal_lm


def as_matrix(column) -> np.ndarray:
    """A fixed-size-list column from Ray Data (2-D array or object array of rows) as 2-D."""
    arr = np.asarray(column)
    if arr.dtype == object:
        arr = np.stack([np.asarray(r) for r in column])
    return arr


class TeacherScorer:
    def __init__(
        self,
        model_path: str,
        k: int,
        dtype: str = "float32",
        device: str = "cpu",
        logprob_encoding: str = "float16",
        id_dtype: str = "uint16",
        seq_len: int = 0,
        fidelity_stride: int = 0,
        num_threads: int | None = None,
        encoding: str = "topk",
        seed: int = 0,
        corpus_path: str | None = None,
    ) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(num_threads or max(1, os.cpu_count() or 1))
        elif device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TeacherScorer asked for cuda but no GPU is visible to the actor")
        self.model = load_causal_lm(Path(model_path), dtype=dtype, device=device)
        self.device = device
        self.id_dtype = np.dtype(id_dtype)
        self.seq_len = seq_len
        self.spec = EncodingSpec(
            encoding=encoding,  # type: ignore[arg-type]
            k=k,
            logprob_encoding=logprob_encoding,
            id_dtype=id_dtype,
            seed=seed,
            fidelity_stride=fidelity_stride,
        )
        self.node_id = _node_id()
        self.corpus_path = corpus_path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if "input_ids" in batch:
            rows = np.asarray(batch["row"], dtype=np.int64)
            ids = as_matrix(batch["input_ids"]).astype(np.int64)
        else:  # row numbers: read them from the packed corpus
            if self.corpus_path is None:
                raise ValueError("TeacherScorer got row numbers but no corpus_path")
            rows = np.sort(np.asarray(batch["data"], dtype=np.int64))
            ids = take_rows(Path(self.corpus_path), rows).astype(np.int64)
        b = ids.shape[0]
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.as_tensor(ids, device=self.device)
            logits = self.model(input_ids=x).logits  # [B, L, V]; position t predicts t+1
            cols = encode_batch(logits, rows, self.spec)
        took = time.perf_counter() - t0
        return {
            "row": rows,
            "input_ids": ids.astype(self.id_dtype),
            **cols,
            "_score_s": np.full(b, took / b),
            "_node": np.full(b, self.node_id),
        }


def _node_id() -> str:
    """The Ray node this scorer runs on ("local" outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:
        return "local"
