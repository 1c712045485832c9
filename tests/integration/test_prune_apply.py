"""Pruning each axis of tiny Llama models (MHA and GQA): shapes, forward, round trip, budgets,
importance sanity, and the torch-pruning hang guard."""

from __future__ import annotations

import pytest
import torch

from distill.data.packed import make_calib_loop
from distill.models.loader import count_parameters, load_causal_lm
from distill.prune.config import PruneConfig
from distill.prune.core import prune_model
from distill.prune.importance import compute_importance

# GQA 4q/2kv → 2q/2kv is the case torch-pruning silently skips; MHA uses 1 q head per kv head.
SHAPES = {
    "depth": {"num_hidden_layers": 2},
    "heads": {"num_attention_heads": 2, "num_key_value_heads": 2},
    "kv_groups": {"num_attention_heads": 2, "num_key_value_heads": 1},
    "mlp": {"intermediate_size": 72},
    "hidden": {"hidden_size": 48},
    "all": {
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 96,
        "hidden_size": 32,
    },
}


@pytest.fixture(params=["tiny_mha", "tiny_gqa"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _calib(rows):
    return make_calib_loop(rows[:8], batch_size=4)


def _generate(model, ids):
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1] :]


@pytest.mark.timeout(60)
def test_dependency_graph_builds_without_hanging(tiny_gqa):
    """torch-pruning 1.6.1 hangs forever on Llama's RoPE concat under torch 2.13 unpatched."""
    from torch_pruning.dependency import index_mapping

    from distill.prune.tp_patch import dependency_graph, patch_torch_pruning

    model = load_causal_lm(tiny_gqa.path)
    dg = dependency_graph(model, torch.randint(0, 500, (1, 8)))
    patch_torch_pruning()  # idempotent: one guard, not a chain of them
    fn = index_mapping.update_concat_index_mapping
    assert fn._distill_rope_guard and fn.__closure__[0].cell_contents.__name__ != "guarded"
    assert dg.module2node


@pytest.mark.timeout(120)
@pytest.mark.parametrize("axis", list(SHAPES))
def test_each_axis_shapes_forward_and_round_trip(tiny, tiny_rows, axis, tmp_path):
    from transformers import AutoModelForCausalLM

    shape = dict(SHAPES[axis])
    model = load_causal_lm(tiny.path)
    if model.config.num_key_value_heads == 4 and "num_key_value_heads" in shape:
        shape["num_attention_heads"] = shape["num_key_value_heads"]  # MHA: 1 q head per group
    res = prune_model(model, PruneConfig(shape=shape), _calib(tiny_rows))
    t = res.plan.shape
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        t.num_hidden_layers,
        t.num_attention_heads,
        t.num_key_value_heads,
    )
    assert (cfg.intermediate_size, cfg.hidden_size, cfg.head_dim) == (
        t.intermediate_size,
        t.hidden_size,
        16,
    )
    assert len(model.model.layers) == t.num_hidden_layers
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        assert attn.layer_idx == i
        assert attn.q_proj.weight.shape == (t.num_attention_heads * 16, t.hidden_size)
        assert attn.k_proj.weight.shape == (t.num_key_value_heads * 16, t.hidden_size)
        assert attn.o_proj.weight.shape == (t.hidden_size, t.num_attention_heads * 16)
        assert attn.num_key_value_groups == t.num_attention_heads // t.num_key_value_heads
        assert layer.mlp.down_proj.weight.shape == (t.hidden_size, t.intermediate_size)
        assert layer.input_layernorm.weight.shape == (t.hidden_size,)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert count_parameters(model) == res.plan.params
    ids = torch.as_tensor(tiny_rows[:2, :16], dtype=torch.long)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 16, model.config.vocab_size) and torch.isfinite(logits).all()

    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert count_parameters(again) == count_parameters(model)
    assert torch.equal(_generate(again, ids), _generate(model, ids))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["depth", "width", "combined"])
def test_budget_plan_within_two_percent(tiny_gqa, tiny_rows, policy):
    model = load_causal_lm(tiny_gqa.path)
    before = count_parameters(model)
    res = prune_model(model, PruneConfig(policy=policy, target_params=0.6), _calib(tiny_rows))
    after = count_parameters(model)
    assert abs(after - 0.6 * before) <= 0.02 * 0.6 * before
    assert after == res.plan.params
    with torch.no_grad():
        out = model(torch.as_tensor(tiny_rows[:1], dtype=torch.long)).logits
    assert torch.isfinite(out).all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", ["cosine", "ppl"])
def test_identity_block_is_least_important_and_dropped(tiny_gqa, tiny_rows, block):
    model = load_causal_lm(tiny_gqa.path)
    with torch.no_grad():  # block 2 adds nothing to the residual stream: an identity
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    scores = compute_importance(model, _calib(tiny_rows), block=block)
    if block == "cosine":
        assert int(scores.block.argmin()) == 2
    assert abs(scores.block[2]) < 1e-4
    assert all(abs(v) > 1e-4 for i, v in enumerate(scores.block) if i != 2)
    res = prune_model(model, PruneConfig(shape={"num_hidden_layers": 3}), _calib(tiny_rows))
    assert res.kept["kept_layers"] == [0, 1, 3]


@pytest.mark.timeout(120)
def test_width_importance_drops_dead_channels_heads_and_groups(tiny_gqa, tiny_rows):
    model = load_causal_lm(tiny_gqa.path)
    layer0 = model.model.layers[0]
    with torch.no_grad():
        layer0.mlp.gate_proj.weight[5].zero_()  # act_fn(gate)*up is 0 on channel 5
        layer0.self_attn.v_proj.weight[:16].zero_()  # kv group 0 outputs zeros (q heads 0, 1)
        for norm in [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]:
            norm.weight[7] = 0.0  # hidden channel 7 is zero after every norm
    scores = compute_importance(model, _calib(tiny_rows))
    assert scores.mlp[0, 5] == 0 and scores.mlp[0].argmin() == 5
    assert scores.heads[0, :2].max() == 0 and scores.heads[0, 2:].min() > 0
    assert scores.hidden[7] == 0
    shape = {"num_key_value_heads": 1, "num_attention_heads": 2, "intermediate_size": 127}
    prune_model(model, PruneConfig(shape={**shape, "hidden_size": 62}), _calib(tiny_rows))
    # the surviving k/v rows of block 0 are the old group 1 (group 0 was dead)
    assert layer0.self_attn.v_proj.weight.abs().sum() > 0
