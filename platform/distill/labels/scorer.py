"""``TeacherScorer``: the Ray Data callable class that turns token rows into soft labels.

One teacher per actor; each call scores a batch of rows ``{"row": [B], "input_ids": [B, L]}``
and returns the store columns plus per-row fidelity sums (``_fid_*``, dropped before writing)::

    ds.map_batches(TeacherScorer, fn_constructor_kwargs=scorer_kwargs, batch_size=4,
                   compute=ActorPoolStrategy(size=1), num_cpus=0.5, batch_format="numpy")

It also runs without Ray (``TeacherScorer(**kwargs)(batch)``), which the tests use.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


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
    ) -> None:
        import torch

        from distill.models.loader import load_causal_lm

        if device == "cpu":
            torch.set_num_threads(num_threads or max(1, os.cpu_count() or 1))
        elif device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TeacherScorer asked for cuda but no GPU is visible to the actor")
        self.model = load_causal_lm(Path(model_path), dtype=dtype, device=device)
        self.device = device
        self.k = k
        self.encoding = logprob_encoding
        self.id_dtype = np.dtype(id_dtype)
        self.seq_len = seq_len
        self.fidelity_stride = fidelity_stride
        self.node_id = _node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from distill.labels.topk import (
            decode_logprobs,
            encode_logprobs,
            fidelity,
            topk_with_tail,
        )

        rows = np.asarray(batch["row"], dtype=np.int64)
        ids = as_matrix(batch["input_ids"]).astype(np.int64)
        b, length = ids.shape
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.as_tensor(ids, device=self.device)
            logits = self.model(input_ids=x).logits  # [B, L, V]; position t predicts t+1
            top_ids, top_lp, tail = topk_with_tail(logits, self.k)
            top_ids_np = top_ids.cpu().numpy()
            enc = encode_logprobs(top_lp.cpu().numpy(), self.encoding)
            tail16 = tail.cpu().numpy().astype(np.float16)
            fid_n = np.zeros(b, dtype=np.int64)
            fid_kl = np.zeros(b, dtype=np.float64)
            fid_mass = np.zeros(b, dtype=np.float64)
            if self.fidelity_stride > 0:
                flat = rows[:, None] * length + np.arange(length)[None, :]
                sel = np.nonzero(flat % self.fidelity_stride == 0)
                if len(sel[0]):
                    stored = decode_logprobs(
                        enc["topk_logprobs"][sel],
                        enc["logprob_scale"][sel] if "logprob_scale" in enc else None,
                    )
                    kl, mass = fidelity(
                        logits[sel[0], sel[1]],
                        top_ids[sel[0], sel[1]],
                        torch.from_numpy(stored).to(logits.device),
                        torch.from_numpy(tail16[sel].astype(np.float32)).to(logits.device),
                    )
                    np.add.at(fid_n, sel[0], 1)
                    np.add.at(fid_kl, sel[0], kl.double().cpu().numpy())
                    np.add.at(fid_mass, sel[0], mass.double().cpu().numpy())
        took = time.perf_counter() - t0
        return {
            "row": rows,
            "input_ids": ids.astype(self.id_dtype),
            "topk_ids": top_ids_np.astype(self.id_dtype),
            **enc,
            "tail_mass": tail16,
            "_fid_n": fid_n,
            "_fid_kl": fid_kl,
            "_fid_mass": fid_mass,
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
