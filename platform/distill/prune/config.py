"""Settings of the ``prune`` stage (``prune:`` section of a pipeline YAML).

A parameter budget (a planner picks the shape under ``policy``), a decode speed-up in the serving
engine (the planner searches the budget that reaches it) or an explicit shape::

    prune: {policy: width, target_params: 0.6}
    prune: {policy: combined, target_speedup: 1.5}
    prune: {shape: {num_hidden_layers: 20, intermediate_size: 1024}}

    distill run pipelines/configs/smollm2.yaml --set prune.target_params=0.5 --set prune.policy=depth
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.config.base import StrictModel

DEFAULT_TARGET_PARAMS = 0.6


class TargetShape(StrictModel):
    """The pruned model's shape; an unset field keeps the source model's value."""

    num_hidden_layers: int | None = Field(None, ge=1, description="decoder blocks kept (≥ 1)")
    num_attention_heads: int | None = Field(
        None, ge=1, description="query heads; a multiple of num_key_value_heads"
    )
    num_key_value_heads: int | None = Field(
        None, ge=1, description="key/value heads (whole GQA groups kept); ≤ the source's"
    )
    intermediate_size: int | None = Field(None, ge=1, description="MLP channels; ≤ the source's")
    hidden_size: int | None = Field(
        None,
        ge=1,
        description="embedding channels; ≤ the source's and divisible by num_attention_heads",
    )

    @model_validator(mode="after")
    def _layout(self) -> TargetShape:
        q, kv, h = self.num_attention_heads, self.num_key_value_heads, self.hidden_size
        if q is not None and kv is not None and q % kv:
            raise ValueError(
                f"num_attention_heads {q} must be a multiple of num_key_value_heads {kv} "
                f"(allowed: {', '.join(str(kv * i) for i in range(1, 5))}, ...)"
            )
        if h is not None and q is not None and h % q:
            raise ValueError(
                f"hidden_size {h} must be divisible by num_attention_heads {q} "
                f"(e.g. {q * max(1, h // q)})"
            )
        return self


class AxisWeights(StrictModel):
    """How much the budget planner dislikes cutting each axis: it minimizes the largest
    ``weight × fraction cut``. Defaults: MLP channels first, then hidden channels and heads,
    depth last: cutting MLP channels costs the least perplexity before recovery and cutting
    depth the most (``benchmarks/prune.py`` measures it)."""

    depth: float = Field(2.0, gt=0)
    heads: float = Field(2.0, gt=0)
    hidden: float = Field(2.0, gt=0)
    mlp: float = Field(1.0, gt=0)


class PruneConfig(StrictModel):
    """Structured pruning of the teacher into ``<workdir>/pruned/`` (a plain HF checkpoint)."""

    policy: Literal["depth", "width", "combined"] = Field(
        "width",
        description="axes the budget planner may cut: depth (blocks), width (MLP channels, "
        "heads, hidden channels) or combined; ignored with an explicit shape",
    )
    target_params: float | None = Field(
        None,
        gt=0,
        le=1,
        description=f"parameter budget as a fraction of the source, in (0, 1]; unset and no "
        f"shape = {DEFAULT_TARGET_PARAMS}",
    )
    shape: TargetShape | None = Field(
        None, description="explicit target shape (instead of target_params)"
    )
    target_speedup: float | None = Field(
        None,
        gt=1,
        le=20,
        description="instead of target_params: the batch-1 decode speed-up over the source in "
        "the serving engine (quantize.engine), measured on probe models; the planner picks the "
        "largest parameter budget under policy that reaches it",
    )
    tolerance: float = Field(
        0.02, gt=0, le=0.1, description="max relative distance of the plan from target_params"
    )
    round_to: int = Field(
        8,
        ge=1,
        description="planned intermediate/hidden sizes are multiples of this (match the GPTQ "
        "group_size if the model is quantized later)",
    )
    prune_hidden: bool = Field(True, description="the planner may cut hidden (embedding) channels")
    prune_heads: bool = Field(True, description="the planner may cut attention heads")
    axis_weights: AxisWeights = Field(default_factory=AxisWeights)
    block_importance: Literal["cosine", "ppl"] = Field(
        "cosine",
        description="depth importance: 1 - cos(block input, output), or the perplexity increase "
        "when the block is skipped (one extra calibration pass per block)",
    )
    calib_rows: int = Field(32, ge=1, description="train rows for the importance statistics")
    calib_batch_size: int = Field(4, ge=1)
    eval_rows: int | None = Field(
        32, ge=1, description="held-out rows for perplexity before/after (None = all)"
    )
    eval_batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        given = [
            k for k in ("target_params", "shape", "target_speedup") if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"give one of prune.target_params, prune.shape, prune.target_speedup; got {given}"
            )
        if not given:
            self.target_params = DEFAULT_TARGET_PARAMS
        return self
