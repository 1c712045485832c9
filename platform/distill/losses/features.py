"""Intermediate-layer losses: hidden-state matching through learned projections, and attention
transfer. Both need a live teacher (online mode)::

    feat = FeatureLoss(pairs=[(3, 1)], student_hidden=64, teacher_hidden=128, kind="mse")
    loss = feat(student_out.hidden_states, teacher_out.hidden_states, mask)
    att = attention_loss(student_out.attentions, teacher_out.attentions, [(3, 1)], mask, "kl")

Layer ``i`` is the output of decoder layer ``i`` (0-based), i.e. ``hidden_states[i + 1]`` of an
HF model called with ``output_hidden_states=True`` (for the last layer HF returns the output
*after* the final norm). Attention maps come from
``output_attentions=True``, which needs ``attn_implementation="eager"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.losses.kd import masked_mean

FEATURE_KINDS = ("mse", "cosine")
ATTENTION_KINDS = ("mse", "kl", "cosine")


def check_layer_pairs(
    pairs: Sequence[tuple[int, int]], teacher_layers: int, student_layers: int
) -> None:
    """Raise ``ValueError`` naming the first (teacher, student) pair outside the models' layers."""
    for t, s in pairs:
        if not 0 <= t < teacher_layers:
            raise ValueError(
                f"layer pair ({t}, {s}): teacher layer {t} out of range 0..{teacher_layers - 1}"
            )
        if not 0 <= s < student_layers:
            raise ValueError(
                f"layer pair ({t}, {s}): student layer {s} out of range 0..{student_layers - 1}"
            )


class FeatureLoss(nn.Module):
    """Hidden-state loss over (teacher layer, student layer) pairs, one ``Linear`` per pair
    projecting the student's hidden size to the teacher's (trained with the student)."""

    def __init__(
        self,
        pairs: Sequence[tuple[int, int]],
        student_hidden: int,
        teacher_hidden: int,
        kind: str = "mse",
    ) -> None:
        super().__init__()
        if kind not in FEATURE_KINDS:
            raise ValueError(f"feature loss kind {kind!r}; choose one of {FEATURE_KINDS}")
        self.pairs = [(int(t), int(s)) for t, s in pairs]
        self.kind = kind
        self.proj = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden) for _ in self.pairs)

    def forward(
        self,
        student_hidden: Sequence[torch.Tensor],
        teacher_hidden: Sequence[torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mean over pairs of the masked per-position loss. ``mask [B, L]`` (1 = counts)."""
        total = student_hidden[0].new_zeros((), dtype=torch.float32)
        for proj, (t, s) in zip(self.proj, self.pairs, strict=True):
            hs = proj(student_hidden[s + 1].to(proj.weight.dtype)).float()
            ht = teacher_hidden[t + 1].detach().float()
            if self.kind == "mse":
                per_pos = (hs - ht).pow(2).mean(-1)
            else:
                per_pos = 1 - torch.nn.functional.cosine_similarity(hs, ht, dim=-1)
            total = total + masked_mean(per_pos, mask)
        return total / max(len(self.pairs), 1)


def _match_heads(a_s: torch.Tensor, a_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same head count: per head. Different: average both over heads -> ``[B, 1, L, L]``."""
    if a_s.shape[1] != a_t.shape[1]:
        return a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
    return a_s, a_t


def attention_loss(
    student_attn: Sequence[torch.Tensor],
    teacher_attn: Sequence[torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    mask: torch.Tensor | None,
    kind: str = "kl",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Attention transfer over (teacher layer, student layer) pairs; maps are ``[B, H, L, L]``.

    ``mse``: mean squared difference over keys; ``kl``: per-query ``KL(A_T || A_S)`` over keys;
    ``cosine``: ``1 - cos`` of each query's row. Queries where ``mask [B, L]`` is 0 do not count.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention loss kind {kind!r}; choose one of {ATTENTION_KINDS}")
    if not pairs:
        raise ValueError("attention loss needs at least one (teacher, student) layer pair")
    total = torch.zeros((), dtype=torch.float32, device=student_attn[0].device)
    for t, s in pairs:
        a_s, a_t = _match_heads(student_attn[s].float(), teacher_attn[t].detach().float())
        if kind == "mse":
            per_q = (a_s - a_t).pow(2).mean(-1)
        elif kind == "kl":
            per_q = (a_t * ((a_t + eps).log() - (a_s + eps).log())).sum(-1)
        else:
            per_q = 1 - torch.nn.functional.cosine_similarity(a_s, a_t, dim=-1, eps=eps)
        per_q = per_q.mean(1)  # over heads -> [B, L]
        total = total + masked_mean(per_q, mask)
    return total / len(pairs)
