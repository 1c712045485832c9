"""One call: plan, score importance from calibration batches, prune in place.

The data stays with the caller (``calib_loop(model)`` runs the forward passes)::

    from distill.data.packed import make_calib_loop
    from distill.prune.core import prune_model
    result = prune_model(model, PruneConfig(policy="width", target_params=0.6),
                         make_calib_loop(rows, batch_size=4))
    model.save_pretrained(out)    # reloads with AutoModelForCausalLM.from_pretrained alone
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.config.base import DistillError
from distill.prune.apply import apply_plan
from distill.prune.config import PruneConfig
from distill.prune.importance import CalibLoop, Importance, compute_importance
from distill.prune.planner import Plan, make_plan
from distill.prune.shape import ModelShape

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM")


@dataclass
class PruneResult:
    plan: Plan
    scores: Importance
    kept: dict[str, Any]


def check_architecture(archs: list[str] | None) -> None:
    """Llama-layout decoders only (q/k/v/o + gate/up/down + RMSNorm): fail before any work."""
    if not any(a in SUPPORTED for a in archs or []):
        raise DistillError(
            f"prune supports {', '.join(SUPPORTED)}; this model is {archs or 'unknown'}"
        )


def plan_for(model: Any, cfg: PruneConfig) -> Plan:
    check_architecture([type(model).__name__])
    return make_plan(cfg, ModelShape.from_config(model.config))


def prune_model(
    model: Any, cfg: PruneConfig, calib_loop: CalibLoop, plan: Plan | None = None
) -> PruneResult:
    """Prune ``model`` in place to ``plan`` (made from ``cfg`` when not given)."""
    plan = plan or plan_for(model, cfg)
    scores = compute_importance(model, calib_loop, block=cfg.block_importance)
    kept = apply_plan(model, plan, scores)
    return PruneResult(plan, scores, kept)
