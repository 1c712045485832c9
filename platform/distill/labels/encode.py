"""Teacher logits → the columns of a soft-label store, for either encoding, plus fidelity sums.

One function both writers use (the Ray Data ``TeacherScorer`` and the in-process
``write_local_store``), so the two cannot drift apart::

    spec = EncodingSpec(encoding="sampled", k=32, seed=0, fidelity_stride=64)
    cols = encode_batch(teacher(input_ids=x).logits, rows=np.arange(4), spec=spec)

``topk``: ``topk_ids [B, L, k]``, ``topk_logprobs [B, L, k]`` (float16 or int8 codes +
``logprob_scale``), ``tail_mass [B, L]``. ``sampled`` (``k`` = draws per position N):
``sample_ids`` / ``sample_counts`` (one ragged array per row), ``sample_nuniq [B, L]`` and
``entropy [B, L]``; see ``distill.labels.sampled``. ``_fid_*`` columns hold per-row sums over the
fidelity positions (every ``fidelity_stride``-th token of the store) and are not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from distill.labels.sampled import (
    pad_samples,
    row_seed,
    sample_positions,
    sampled_fidelity,
    target_errors,
)
from distill.labels.topk import decode_logprobs, encode_logprobs, fidelity, topk_with_tail

if TYPE_CHECKING:
    import torch

FIDELITY_KEYS = ("_fid_n", "_fid_kl", "_fid_mass", "_fid_tv", "_fid_rel")


@dataclass(frozen=True)
class EncodingSpec:
    encoding: Literal["topk", "sampled"] = "topk"
    k: int = 16  # topk: ids kept per position; sampled: draws per position (N)
    logprob_encoding: str = "float16"
    id_dtype: str = "uint16"
    seed: int = 0
    fidelity_stride: int = 0


def encode_batch(logits: torch.Tensor, rows: np.ndarray, spec: EncodingSpec) -> dict:
    """Store columns (numpy) of ``logits [B, L, V]`` for the global rows ``rows [B]``."""
    rows = np.asarray(rows, dtype=np.int64)
    b, length = logits.shape[:2]
    fid_sel = _fidelity_positions(rows, length, spec.fidelity_stride)
    if spec.encoding == "sampled":
        cols, fid = _sampled(logits, rows, spec, fid_sel)
    else:
        cols, fid = _topk(logits, spec, fid_sel)
    sums = {k: np.zeros(b, dtype=np.int64 if k == "_fid_n" else np.float64) for k in FIDELITY_KEYS}
    if len(fid_sel[0]):
        np.add.at(sums["_fid_n"], fid_sel[0], 1)
        for key, values in fid.items():
            np.add.at(sums[key], fid_sel[0], values)
    return {**cols, **sums}


def _fidelity_positions(rows: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, ...]:
    if stride <= 0:
        return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    flat = rows[:, None] * length + np.arange(length)[None, :]
    return np.nonzero(flat % stride == 0)


def _topk(logits: torch.Tensor, spec: EncodingSpec, sel: tuple[np.ndarray, ...]):
    import torch

    top_ids, top_lp, tail = topk_with_tail(logits, spec.k)
    enc = encode_logprobs(top_lp.cpu().numpy(), spec.logprob_encoding)
    tail16 = tail.cpu().numpy().astype(np.float16)
    cols = {"topk_ids": top_ids.cpu().numpy().astype(spec.id_dtype), **enc, "tail_mass": tail16}
    fid: dict[str, np.ndarray] = {}
    if len(sel[0]):
        stored = decode_logprobs(
            enc["topk_logprobs"][sel], enc["logprob_scale"][sel] if "logprob_scale" in enc else None
        )
        full = logits[sel[0], sel[1]].float()
        lp = torch.from_numpy(stored).to(full.device)
        tl = torch.from_numpy(tail16[sel].astype(np.float32)).to(full.device)
        ids = top_ids[sel[0], sel[1]]
        kl, mass = fidelity(full, ids, lp, tl)
        # the target a forward-KL gradient pushes a uniform student to: top-k + even tail
        rest = max(full.shape[-1] - spec.k, 1)
        target = (tl / rest).unsqueeze(-1).expand_as(full).clone()
        target.scatter_(-1, ids.long(), lp.exp())
        tv, rel = target_errors(torch.softmax(full, dim=-1), target)
        fid = {"_fid_kl": kl, "_fid_mass": mass, "_fid_tv": tv, "_fid_rel": rel}
    return cols, {key: v.double().cpu().numpy() for key, v in fid.items()}


def _sampled(
    logits: torch.Tensor, rows: np.ndarray, spec: EncodingSpec, sel: tuple[np.ndarray, ...]
):
    import torch

    ids, counts, nuniq, entropy = [], [], [], []
    for i, row in enumerate(rows):
        a, c, u, h = sample_positions(logits[i], spec.k, row_seed(spec.seed, int(row)))
        ids.append(a.astype(spec.id_dtype))
        counts.append(c)
        nuniq.append(u)
        entropy.append(h)
    cols = {
        "sample_ids": _ragged(ids),
        "sample_counts": _ragged(counts),
        "sample_nuniq": np.stack(nuniq),
        "entropy": np.stack(entropy).astype(np.float16),
    }
    fid: dict[str, np.ndarray] = {}
    if len(sel[0]):
        pid, pw = pad_samples(ids, counts, cols["sample_nuniq"], spec.k)
        full = logits[sel[0], sel[1]]
        sid = torch.from_numpy(pid[sel]).to(full.device)
        sw = torch.from_numpy(pw[sel]).to(full.device)
        tv, rel = sampled_fidelity(full, sid, sw)
        mass = (torch.softmax(full.float(), dim=-1).gather(-1, sid) * (sw > 0)).sum(-1)
        fid = {"_fid_tv": tv, "_fid_rel": rel, "_fid_mass": mass}
    return cols, {key: v.double().cpu().numpy() for key, v in fid.items()}


def _ragged(parts: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(parts), dtype=object)
    for i, p in enumerate(parts):
        out[i] = p
    return out
