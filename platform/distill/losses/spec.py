"""What a loss computes: the weights of its terms (:class:`LossWeights`) and the per-position
targets it compares the student with (:class:`LossTargets`); ``distill.losses.combined`` and
``distill.losses.fused`` both read them::

    spec = LossWeights(ce=0.1, kd=1.0, name="forward_kl")
    targets = LossTargets(labels=labels, topk=(ids, logprobs, tail))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LossWeights:
    """Weights and settings of each term; a term with weight 0 is not computed."""

    ce: float = 0.0
    kd: float = 1.0
    feature: float = 0.0
    attention: float = 0.0
    name: str = "forward_kl"
    temperature: float = 1.0
    param: float | None = None
    attention_kind: str = "kl"
    attention_pairs: tuple[tuple[int, int], ...] = field(default_factory=tuple)


@dataclass
class LossTargets:
    """Per-position targets, already flattened to the ``P`` positions that count.

    ``labels [P]`` (−100 = no CE); exactly one KD target when ``spec.kd > 0``:
    ``topk = (ids [P, k], logprobs [P, k], tail [P])``, ``sampled = (ids [P, U], weights
    [P, U], entropy [P])``, or ``teacher = (hidden [P, Ht], head weight [V, Ht])`` /
    ``teacher_logits [P, V]``.
    """

    labels: torch.Tensor | None = None
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    sampled: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None
    teacher_logits: torch.Tensor | None = None
