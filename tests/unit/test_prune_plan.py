"""Prune config validation, shape checks against a source, parameter counting and the planner."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.prune.config import PruneConfig, TargetShape
from distill.prune.planner import make_plan
from distill.prune.shape import ModelShape, resolve_shape

# SmolLM2-135M's config (the real teacher): 30 layers, hidden 576, 9 q / 3 kv heads, tied.
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def _tiny_cfg(**kw):
    from transformers import LlamaConfig

    base = dict(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        tie_word_embeddings=True,
    )
    return LlamaConfig(**{**base, **kw})


def test_default_config_is_a_budget():
    cfg = PruneConfig()
    assert cfg.target_params == 0.6 and cfg.shape is None


@pytest.mark.parametrize(
    "section, fragment",
    [
        ({"target_params": 0}, "greater than 0"),
        ({"target_params": 1.5}, "less than or equal to 1"),
        ({"target_params": 0.5, "shape": {"num_hidden_layers": 2}}, "give one of"),
        ({"shape": {"num_hidden_layers": 0}}, "greater than or equal to 1"),
        ({"shape": {"num_attention_heads": 0}}, "greater than or equal to 1"),
        ({"shape": {"num_attention_heads": 5, "num_key_value_heads": 2}}, "multiple of"),
        ({"shape": {"hidden_size": 60, "num_attention_heads": 8}}, "divisible"),
        ({"policy": "sideways"}, "depth"),
        ({"shapes": {}}, "Extra inputs"),
    ],
)
def test_config_rejects_impossible_targets(section, fragment):
    with pytest.raises(ValidationError, match=fragment):
        PruneConfig.model_validate(section)


@pytest.mark.parametrize(
    "target, fragment",
    [
        ({"num_hidden_layers": 31}, "allowed 1..30"),
        ({"num_key_value_heads": 4}, "allowed 1..3"),
        ({"num_attention_heads": 8}, "allowed 3, 6, 9"),
        ({"num_attention_heads": 12, "num_key_value_heads": 3}, "at most 3 query heads"),
        ({"hidden_size": 640}, "up to 576"),
        ({"hidden_size": 500}, "multiple of num_attention_heads"),
        ({"intermediate_size": 2048}, "allowed 1..1536"),
    ],
)
def test_shape_must_fit_the_source(target, fragment):
    src = ModelShape.from_config(SMOLLM2)
    with pytest.raises(DistillError, match=fragment):
        resolve_shape(TargetShape(**target), src)


def test_smollm2_param_count_matches_the_known_size():
    src = ModelShape.from_config(SMOLLM2)
    assert src.params() == 134_515_008  # SmolLM2-135M, tied embeddings counted once


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kv", [1, 2, 4])
def test_param_formula_matches_a_real_model(tie, kv):
    from transformers import LlamaForCausalLM

    from distill.models.loader import count_parameters

    cfg = _tiny_cfg(num_key_value_heads=kv, tie_word_embeddings=tie, attention_bias=kv == 1)
    assert ModelShape.from_config(cfg).params() == count_parameters(LlamaForCausalLM(cfg))


@pytest.mark.parametrize("policy", ["depth", "width", "combined"])
@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.8])
def test_budget_plan_lands_within_two_percent(policy, ratio):
    src = ModelShape.from_config(SMOLLM2)
    plan = make_plan(PruneConfig(policy=policy, target_params=ratio), src)
    assert abs(plan.params - ratio * src.params()) <= 0.02 * ratio * src.params()
    s = plan.shape
    if policy == "depth":
        assert s.target_dict() | {"num_hidden_layers": 30} == src.target_dict()
    if policy == "width":
        assert s.num_hidden_layers == 30
    assert s.num_attention_heads % s.num_key_value_heads == 0
    assert s.hidden_size % s.num_attention_heads == 0
    # the plan is itself a valid explicit shape
    assert resolve_shape(TargetShape(**s.target_dict()), src) == s


def test_width_plan_respects_switches_and_rounding():
    src = ModelShape.from_config(SMOLLM2)
    cfg = PruneConfig(policy="width", target_params=0.7, prune_hidden=False, prune_heads=False)
    s = make_plan(cfg, src).shape
    assert (s.hidden_size, s.num_attention_heads, s.num_key_value_heads) == (576, 9, 3)
    assert s.intermediate_size % cfg.round_to == 0 and s.intermediate_size < 1536
    s64 = make_plan(PruneConfig(policy="width", target_params=0.7, round_to=64), src).shape
    assert s64.intermediate_size % 64 == 0 and s64.hidden_size % 64 == 0


def test_unreachable_budget_says_what_to_do():
    src = ModelShape.from_config(_tiny_cfg(num_key_value_heads=4))
    with pytest.raises(DistillError, match="closest ratio it can make: 0.58"):
        make_plan(PruneConfig(policy="depth", target_params=0.6), src)


def test_explicit_shape_fills_unset_fields():
    src = ModelShape.from_config(SMOLLM2)
    plan = make_plan(PruneConfig(shape={"num_hidden_layers": 20, "num_attention_heads": 6}), src)
    assert plan.shape.num_hidden_layers == 20 and plan.shape.num_attention_heads == 6
    assert plan.shape.num_key_value_heads == 3 and plan.shape.hidden_size == 576
    assert plan.target_params is None and plan.summary()["policy"] == "shape"
