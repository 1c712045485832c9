"""Sampled soft labels: ``N`` draws per position from the teacher, stored as unique ids + counts.

Random-Sampling KD (Anshumann et al., "Sparse Logit Sampling", arXiv 2503.16870): a top-k store
renormalizes the head and drops the tail, so its target is biased; drawing ``N`` tokens
``x_1..x_N ~ p`` and using the empirical distribution ``p̂(i) = count_i / N`` is an *unbiased*
estimate of ``p``: ``E[p̂] = p``. For forward KL the student gradient is linear in the target,

    ∇_z KL(p ‖ softmax(z)) = softmax(z) − p      →      E[softmax(z) − p̂] = softmax(z) − p,

so the expected gradient is exactly the full-distribution one (what the tests check
statistically). The loss *value* uses the stored teacher entropy: ``KL̂ = −H(p) − Σ p̂_i log s_i``,
also unbiased. Every other divergence (reverse KL, JSD, TV, skew KL) and any temperature ≠ 1
needs ``p`` outside the samples or is non-linear in ``p``: the trainer refuses them.

Per position the store keeps ``nuniq`` (≤ N), then ``nuniq`` ids (uint16 for vocabularies up
to 65,536) and their counts (uint8, so N ≤ 255), plus ``entropy`` (float16): ≈ 3 bytes per
unique id + 3 bytes per position before Parquet compression::

    ids, counts, nuniq, entropy = sample_positions(logits[0], n=32, seed=row_seed(0, 17))
    batch = pad_samples(rows_of_ids, rows_of_counts, rows_of_nuniq, n=32)  # dense [B, L, U]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MAX_SAMPLES = 255  # counts are stored as uint8


def row_seed(seed: int, row: int) -> int:
    """A per-row generator seed: a rerun draws the same samples for the same global row."""
    return (int(seed) * 1_000_003 + int(row)) % (2**63 - 1)


def sample_positions(
    logits: torch.Tensor, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` tokens per position from ``softmax(logits)`` (``[L, V]``, T = 1).

    Returns ``ids`` (flat, grouped by position, ascending within a position), ``counts``
    (uint8, same length, Σ per position = n), ``nuniq [L]`` (uint8) and ``entropy [L]`` (fp32).
    """
    import torch

    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"samples per position must be in 1..{MAX_SAMPLES}, got {n}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).nan_to_num(0.0).sum(-1)
    gen = torch.Generator(device=probs.device).manual_seed(seed)
    draws = torch.multinomial(probs, n, replacement=True, generator=gen)  # [L, n]
    s, _ = draws.sort(dim=-1)
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    starts = new.reshape(-1).nonzero().squeeze(-1)
    ends = torch.cat([starts[1:], starts.new_tensor([s.numel()])])
    ids = s.reshape(-1)[starts].cpu().numpy()
    counts = (ends - starts).cpu().numpy().astype(np.uint8)
    nuniq = new.sum(-1).cpu().numpy().astype(np.uint8)
    return ids, counts, nuniq, entropy.cpu().numpy().astype(np.float32)


def pad_samples(
    ids: list[np.ndarray], counts: list[np.ndarray], nuniq: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows → dense ``sample_ids [B, L, U]`` (int64) and ``sample_weights [B, L, U]``
    (``count / n``, float32; padding slots have weight 0 and id 0). ``U`` = max ``nuniq``."""
    nuniq = np.asarray(nuniq, dtype=np.int64)  # [B, L]
    b, length = nuniq.shape
    width = max(int(nuniq.max(initial=0)), 1)
    out_ids = np.zeros((b, length, width), dtype=np.int64)
    out_w = np.zeros((b, length, width), dtype=np.float32)
    for r in range(b):
        pos = np.repeat(np.arange(length), nuniq[r])
        first = np.concatenate([[0], np.cumsum(nuniq[r])[:-1]])
        slot = np.arange(len(pos)) - np.repeat(first, nuniq[r])
        out_ids[r, pos, slot] = np.asarray(ids[r], dtype=np.int64)
        out_w[r, pos, slot] = np.asarray(counts[r], dtype=np.float32) / n
    return out_ids, out_w


def sampled_fidelity(
    logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position ``[P]``: total variation ``½‖p̂ − p‖₁`` and the relative gradient error
    ``‖p̂ − p‖₂ / ‖u − p‖₂`` (forward-KL gradient error at a uniform student ``u``) of the
    sampled target ``p̂`` (``ids/weights [P, U]``) against the full ``p = softmax(logits)``."""
    import torch

    p = torch.softmax(logits.float(), dim=-1)
    target = torch.zeros_like(p).scatter_add_(-1, ids.long(), weights.float())
    return target_errors(p, target)


def target_errors(p: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(½‖t − p‖₁, ‖t − p‖₂ / ‖u − p‖₂)`` per position for dense ``p``, ``t`` ``[P, V]``."""
    diff = target - p
    tv = 0.5 * diff.abs().sum(-1)
    uniform = 1.0 / p.shape[-1]
    rel = diff.norm(dim=-1) / (p - uniform).norm(dim=-1).clamp_min(1e-12)
    return tv, rel
