"""Apply a plan to a Llama-family HF model in place, guided by importance scores.

Depth: keep the most important blocks (in order), renumber ``self_attn.layer_idx``.
Heads: sliced here per KV group (torch-pruning 1.6.1 silently skips GQA head pruning when q heads
would equal kv heads): keep the most important whole groups, then the most important q heads in
each. MLP and hidden channels: torch-pruning's dependency graph (it finds every coupled weight:
gate/up/down; embeddings, q/k/v/gate/up inputs, o/down outputs, every RMSNorm, lm_head).
The config is updated so ``save_pretrained`` → ``from_pretrained`` reloads with no extra code::

    apply_plan(model, plan, scores)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.prune.importance import Importance
from distill.prune.planner import Plan
from distill.prune.tp_patch import dependency_graph


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, in ascending index order (stable on ties)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:k])


def _drop(scores: np.ndarray, k: int) -> list[int]:
    keep = set(_top(scores, k))
    return [i for i in range(len(scores)) if i not in keep]


def prune_depth(model: Any, keep: list[int]) -> None:
    """Keep decoder blocks ``keep`` (in order); renumber and update the config."""
    import torch

    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)


def _take(linear: Any, idx: list[int], dim: int) -> None:
    """Keep rows (``dim=0``, outputs) or columns (``dim=1``, inputs) ``idx`` of a Linear."""
    import torch

    index = torch.as_tensor(idx, dtype=torch.long, device=linear.weight.device)
    linear.weight = torch.nn.Parameter(linear.weight.data.index_select(dim, index).clone())
    if dim == 0:
        linear.out_features = len(idx)
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data.index_select(0, index).clone())
    else:
        linear.in_features = len(idx)


def prune_heads(attn: Any, scores: np.ndarray, n_kv: int, n_q: int, head_dim: int) -> None:
    """Keep ``n_kv`` whole KV groups and ``n_q // n_kv`` q heads in each, by head importance."""
    q_total = attn.q_proj.out_features // head_dim
    kv_total = attn.k_proj.out_features // head_dim
    per_group = q_total // kv_total
    per_keep = n_q // n_kv
    by_group = np.asarray(scores, dtype=np.float64).reshape(kv_total, per_group)
    groups = _top(by_group.sum(1), n_kv)
    heads = [g * per_group + j for g in groups for j in _top(by_group[g], per_keep)]

    def rows(units: list[int]) -> list[int]:
        return [u * head_dim + d for u in units for d in range(head_dim)]

    _take(attn.q_proj, rows(heads), 0)
    _take(attn.k_proj, rows(groups), 0)
    _take(attn.v_proj, rows(groups), 0)
    _take(attn.o_proj, rows(heads), 1)
    attn.num_key_value_groups = per_keep
    for name in ("num_heads", "num_attention_heads"):
        if hasattr(attn, name):
            setattr(attn, name, n_q)
    if hasattr(attn, "num_key_value_heads"):
        attn.num_key_value_heads = n_kv


def _retie(model: Any) -> None:
    if getattr(model.config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight


def prune_channels(model: Any, mlp_drop: list[list[int]], hidden_drop: list[int]) -> None:
    """Remove MLP channels per block and hidden channels through torch-pruning groups."""
    import torch
    import torch_pruning as tp

    if not hidden_drop and not any(mlp_drop):
        return
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, 8), device=model.get_input_embeddings().weight.device)
    with torch.enable_grad():  # the graph is traced through autograd
        dg = dependency_graph(model, ids)
    for layer, drop in zip(model.model.layers, mlp_drop, strict=True):
        if drop:
            dg.get_pruning_group(layer.mlp.gate_proj, tp.prune_linear_out_channels, drop).prune()
    if hidden_drop:
        emb = model.get_input_embeddings()
        dg.get_pruning_group(emb, tp.prune_embedding_out_channels, hidden_drop).prune()
        _retie(model)


def apply_plan(model: Any, plan: Plan, scores: Importance) -> dict[str, Any]:
    """Prune ``model`` in place to ``plan.shape``; returns what was kept (indices)."""
    src, t = plan.source, plan.shape
    head_dim = src.head_dim
    kept_layers = _top(scores.block, t.num_hidden_layers)
    if t.num_hidden_layers < len(model.model.layers):
        prune_depth(model, kept_layers)
    heads = scores.heads[kept_layers]
    mlp = scores.mlp[kept_layers]
    if (t.num_attention_heads, t.num_key_value_heads) != (
        src.num_attention_heads,
        src.num_key_value_heads,
    ):
        for i, layer in enumerate(model.model.layers):
            prune_heads(
                layer.self_attn, heads[i], t.num_key_value_heads, t.num_attention_heads, head_dim
            )
    mlp_drop = [_drop(mlp[i], t.intermediate_size) for i in range(len(kept_layers))]
    hidden_drop = _drop(scores.hidden, t.hidden_size)
    prune_channels(model, mlp_drop, hidden_drop)
    update_config(model, plan)
    return {"kept_layers": kept_layers, "dropped_hidden": len(hidden_drop)}


def update_config(model: Any, plan: Plan) -> None:
    """Write the plan's shape into the config and the live module attributes."""
    t = plan.shape
    cfg = model.config
    cfg.num_hidden_layers = t.num_hidden_layers
    cfg.num_attention_heads = t.num_attention_heads
    cfg.num_key_value_heads = t.num_key_value_heads
    cfg.intermediate_size = t.intermediate_size
    cfg.hidden_size = t.hidden_size
    cfg.head_dim = plan.source.head_dim  # explicit: no longer hidden_size // heads
    for layer in model.model.layers:
        if hasattr(layer, "hidden_size"):
            layer.hidden_size = t.hidden_size
        for name, value in (
            ("hidden_size", t.hidden_size),
            ("intermediate_size", t.intermediate_size),
        ):
            if hasattr(layer.mlp, name):
                setattr(layer.mlp, name, value)
        layer.self_attn.num_key_value_groups = t.num_attention_heads // t.num_key_value_heads
