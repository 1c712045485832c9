"""distill.losses: KD losses on full or top-k teacher distributions, feature and attention losses.

``LOSSES`` is the registry a config chooses from (``distill.loss.name``)::

    from distill.losses import LOSSES, kd_full, kd_topk
"""

from distill.losses.combined import total_loss
from distill.losses.features import ATTENTION_KINDS, FEATURE_KINDS, FeatureLoss, attention_loss
from distill.losses.kd import (
    LOSSES,
    divergence,
    get_loss,
    hard_ce,
    kd_full,
    kd_topk,
    masked_mean,
    shift_for_next_token,
)
from distill.losses.spec import LossTargets, LossWeights

__all__ = [
    "ATTENTION_KINDS",
    "FEATURE_KINDS",
    "LOSSES",
    "FeatureLoss",
    "LossTargets",
    "LossWeights",
    "attention_loss",
    "divergence",
    "get_loss",
    "hard_ce",
    "kd_full",
    "kd_topk",
    "masked_mean",
    "shift_for_next_token",
    "total_loss",
]
