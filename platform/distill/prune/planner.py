"""Plans: the target shape, given explicitly or picked for a parameter budget.

The budget planner enumerates shapes the policy allows (depth: blocks; width: MLP channels,
whole KV groups / q heads per group, hidden channels; combined: both), solves the MLP width that
meets the budget for each, keeps those within ``tolerance`` and picks the one whose largest
weighted cut is smallest (ties: closest to the budget)::

    plan = make_plan(PruneConfig(policy="width", target_params=0.6), ModelShape.from_config(cfg))
    plan.shape.num_hidden_layers, plan.params, plan.ratio
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from distill.config.base import DistillError
from distill.prune.config import PruneConfig
from distill.prune.shape import ModelShape, resolve_shape


@dataclass(frozen=True)
class Plan:
    source: ModelShape
    shape: ModelShape
    policy: str
    target_params: float | None  # fraction of the source; None for an explicit shape

    @property
    def params(self) -> int:
        return self.shape.params()

    @property
    def ratio(self) -> float:
        return self.params / self.source.params()

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "target_params": self.target_params,
            "source": self.source.target_dict(),
            "shape": self.shape.target_dict(),
            "params_before": self.source.params(),
            "params_planned": self.params,
            "ratio_planned": round(self.ratio, 5),
        }


def make_plan(cfg: PruneConfig, src: ModelShape) -> Plan:
    """The plan for ``cfg`` on ``src``; raises ``DistillError`` before any work if impossible."""
    if cfg.shape is not None:
        return Plan(src, resolve_shape(cfg.shape, src), "shape", None)
    assert cfg.target_params is not None
    return Plan(src, plan_budget(cfg, src), cfg.policy, cfg.target_params)


def _multiples(step: int, top: int) -> list[int]:
    vals = list(range(step, top + 1, step))
    return vals if vals and vals[-1] == top else [*vals, top]


def _head_options(src: ModelShape, allow: bool) -> list[tuple[int, int]]:
    """(kv heads, q heads) keeping whole KV groups and equal q heads per group."""
    if not allow:
        return [(src.num_key_value_heads, src.num_attention_heads)]
    return [
        (g, g * r)
        for g in range(1, src.num_key_value_heads + 1)
        for r in range(1, src.q_per_kv + 1)
    ]


def _solve_mlp(src: ModelShape, shape: ModelShape, target: float, step: int) -> int | None:
    """The MLP width (a multiple of ``step``, or the source width) closest to ``target``."""
    base = shape.with_target(intermediate_size=0).params()
    per_channel = shape.num_hidden_layers * (3 * shape.hidden_size + (2 if src.mlp_bias else 0))
    exact = (target - base) / per_channel
    if exact <= 0:
        return None
    cands = {
        min(src.intermediate_size, max(step, step * f(exact / step)))
        for f in (math.floor, math.ceil)
    }
    if exact >= src.intermediate_size - step:
        cands.add(src.intermediate_size)
    return min(cands, key=lambda i: abs(shape.with_target(intermediate_size=i).params() - target))


def plan_budget(cfg: PruneConfig, src: ModelShape) -> ModelShape:
    total = src.params()
    target = cfg.target_params * total  # type: ignore[operator]
    depth = cfg.policy in ("depth", "combined")
    width = cfg.policy in ("width", "combined")
    layers = range(1, src.num_hidden_layers + 1) if depth else [src.num_hidden_layers]
    heads = _head_options(src, width and cfg.prune_heads)
    hidden_opts = (
        _multiples(cfg.round_to, src.hidden_size)
        if width and cfg.prune_hidden
        else [src.hidden_size]
    )
    w = cfg.axis_weights
    best: tuple[tuple[float, float], ModelShape] | None = None
    closest: ModelShape | None = None
    for n_layers in layers:
        for kv, q in heads:
            for hidden in hidden_opts:
                if hidden % q:
                    continue
                shape = src.with_target(
                    num_hidden_layers=n_layers,
                    num_key_value_heads=kv,
                    num_attention_heads=q,
                    hidden_size=hidden,
                )
                if width:
                    inter = _solve_mlp(src, shape, target, cfg.round_to)
                    if inter is None:
                        continue
                    shape = shape.with_target(intermediate_size=inter)
                err = abs(shape.params() - target) / target
                if closest is None or err < abs(closest.params() - target) / target:
                    closest = shape
                if err > cfg.tolerance:
                    continue
                cut = max(
                    w.depth * (1 - n_layers / src.num_hidden_layers),
                    w.heads * (1 - q / src.num_attention_heads),
                    w.hidden * (1 - hidden / src.hidden_size),
                    w.mlp * (1 - shape.intermediate_size / src.intermediate_size),
                )
                key = (round(cut, 6), err)
                if best is None or key < best[0]:
                    best = (key, shape)
    if best is None:
        near = f"{closest.params() / total:.3f}" if closest else "none"
        raise DistillError(
            f"prune.policy={cfg.policy} cannot reach target_params={cfg.target_params} within "
            f"{cfg.tolerance:.0%} of {total:,} parameters (closest ratio it can make: {near}); "
            "use policy combined or width, another target_params, or an explicit prune.shape"
        )
    return best[1]
