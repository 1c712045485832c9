"""Top-k extraction, compact encodings and fidelity of the stored teacher distribution.

Pure torch/numpy (no Ray), used by ``TeacherScorer`` inside Ray Data actors::

    ids, lp, tail = topk_with_tail(logits, k=16)          # T=1 log-probs, sorted descending
    enc = encode_logprobs(lp.numpy(), "int8")             # {"topk_logprobs": u8, "logprob_scale": f16}
    kl, mass = fidelity(logits, ids, decode_logprobs(**enc), tail16)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

LOGPROB_FLOOR = -60000.0  # float16 holds ±65504; log-probs of masked ids (-inf) are clamped here


def topk_with_tail(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``logits [..., V]`` → top-k ids ``[..., k]``, their T=1 log-probs ``[..., k]`` (fp32,
    sorted descending) and the tail mass ``1 − Σ top-k probs`` ``[...]``.

    The tail is ``-expm1(logsumexp(top-k log-probs))``: accurate even when it is tiny.
    """
    import torch

    if k > logits.shape[-1]:
        raise ValueError(f"k={k} is larger than the vocabulary ({logits.shape[-1]})")
    lp = torch.log_softmax(logits.float(), dim=-1)
    top = lp.topk(k, dim=-1, sorted=True)
    tail = (-torch.expm1(torch.logsumexp(top.values, dim=-1))).clamp(0.0, 1.0)
    return top.indices, top.values, tail


def encode_logprobs(lp: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
    """Compact log-probs ``[..., k]``.

    ``float16``: ``{"topk_logprobs": f16}``. ``int8``: uint8 codes ``q`` with one float16 scale per
    position, ``lp ≈ -q · scale`` and ``scale = -min(lp) / 255`` (error ≤ scale / 2).
    """
    lp = np.maximum(np.asarray(lp, dtype=np.float32), LOGPROB_FLOOR)
    if encoding == "float16":
        return {"topk_logprobs": lp.astype(np.float16)}
    if encoding != "int8":
        raise ValueError(f"unknown logprob encoding {encoding!r} (float16 or int8)")
    scale = np.maximum(-lp.min(axis=-1), 1e-3) / 255.0
    scale16 = scale.astype(np.float16)
    scale16 = np.where(scale16.astype(np.float32) < scale, np.nextafter(scale16, np.inf), scale16)
    q = np.clip(np.rint(-lp / scale16.astype(np.float32)[..., None]), 0, 255).astype(np.uint8)
    return {"topk_logprobs": q, "logprob_scale": scale16.astype(np.float16)}


def decode_logprobs(
    topk_logprobs: np.ndarray, logprob_scale: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of :func:`encode_logprobs`: float32 log-probs ``[..., k]``."""
    if logprob_scale is None:
        return np.asarray(topk_logprobs, dtype=np.float32)
    scale = np.asarray(logprob_scale, dtype=np.float32)[..., None]
    return -np.asarray(topk_logprobs, dtype=np.float32) * scale


def fidelity(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    stored_logprobs: torch.Tensor,
    stored_tail: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position ``[N]``: ``KL(p ‖ q)`` and the captured mass ``Σ_{top-k} p``.

    ``p = softmax(logits)`` is the full teacher distribution; ``q`` is what the store can
    rebuild: the stored (encoded) top-k probs and the stored tail mass spread evenly over the
    other ``V − k`` ids, renormalized. ``logits [N, V]``, ``topk_ids/stored_logprobs [N, k]``,
    ``stored_tail [N]``.
    """
    import torch

    lpf = torch.log_softmax(logits.float(), dim=-1)
    vocab, k = lpf.shape[-1], topk_ids.shape[-1]
    ids = topk_ids.long()
    mass = lpf.gather(-1, ids).exp().sum(-1)
    rest = max(vocab - k, 1)
    fill = (stored_tail.float().clamp_min(1e-12) / rest).log()
    logq = fill.unsqueeze(-1).expand_as(lpf).clone()
    logq.scatter_(-1, ids, stored_logprobs.float())
    logq = logq - torch.logsumexp(logq, dim=-1, keepdim=True)
    kl = (lpf.exp() * (lpf - logq)).sum(-1).clamp_min(0.0)
    return kl, mass
