"""Importance from calibration batches: blocks (depth) and channels/heads (width, Minitron).

One ``calib_loop(model)`` pass with forward hooks collects, per decoder block:
``block`` = mean over tokens of 1 - cos(block input, block output);
``mlp`` = mean |x| of the ``down_proj`` input (``act_fn(gate) * up``) per channel;
``heads`` = mean L2 norm of each query head's slice of the ``o_proj`` input;
and ``hidden`` = mean |x| of every RMSNorm output (both per block and the final one) per channel.
``block_importance="ppl"`` replaces ``block`` with the perplexity increase when the block is
skipped (one more pass per block)::

    scores = compute_importance(model, make_calib_loop(rows, 4), block="cosine")
    scores.block.argsort()   # least important blocks first
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

CalibLoop = Callable[[Any], None]


@dataclass
class Importance:
    block: np.ndarray  # [layers]
    mlp: np.ndarray  # [layers, intermediate]
    heads: np.ndarray  # [layers, q heads]
    hidden: np.ndarray  # [hidden]
    block_metric: str = "cosine"
    base_ppl: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "block_metric": self.block_metric,
            "base_ppl": self.base_ppl,
            "block": self.block.tolist(),
            "heads": self.heads.tolist(),
            "mlp": self.mlp.tolist(),
            "hidden": self.hidden.tolist(),
        }


def _first_tensor(x: Any) -> Any:
    return x[0] if isinstance(x, tuple | list) else x


def _layer_input(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def compute_importance(model: Any, calib_loop: CalibLoop, block: str = "cosine") -> Importance:
    """All importance scores of ``model`` (a Llama-family HF causal LM) from ``calib_loop``."""
    import torch

    layers = model.model.layers
    n_layers = len(layers)
    cfg = model.config
    head_dim = layers[0].self_attn.head_dim
    n_heads = layers[0].self_attn.o_proj.in_features // head_dim
    cos_sum = torch.zeros(n_layers, dtype=torch.float64)
    mlp = torch.zeros(n_layers, layers[0].mlp.down_proj.in_features, dtype=torch.float64)
    heads = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    tokens = [0]
    norm_tokens = [0]
    handles = []

    def block_hook(i: int):
        def hook(_m, args, kwargs, out):
            x = _layer_input(args, kwargs).detach().float()
            y = _first_tensor(out).detach().float()
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
            cos_sum[i] += (1 - cos).sum().double()
            if i == 0:
                tokens[0] += cos.numel()

        return hook

    def mlp_hook(i: int):
        def hook(_m, args):
            mlp[i] += args[0].detach().float().abs().reshape(-1, mlp.shape[1]).sum(0).double()

        return hook

    def head_hook(i: int):
        def hook(_m, args):
            x = args[0].detach().float().reshape(-1, n_heads, head_dim)
            heads[i] += x.norm(dim=-1).sum(0).double()

        return hook

    def norm_hook(_m, _args, out):
        y = _first_tensor(out).detach().float().abs().reshape(-1, hidden.numel())
        hidden.add_(y.sum(0).double())
        norm_tokens[0] += y.shape[0]

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(block_hook(i), with_kwargs=True))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(i)))
        handles.append(layer.input_layernorm.register_forward_hook(norm_hook))
        handles.append(layer.post_attention_layernorm.register_forward_hook(norm_hook))
    handles.append(model.model.norm.register_forward_hook(norm_hook))
    try:
        with _no_cache(model):
            calib_loop(model)
    finally:
        for h in handles:
            h.remove()
    n = tokens[0]
    if n == 0:
        raise ValueError("calib_loop ran no forward pass through the model")
    scores = Importance(
        block=(cos_sum / n).numpy(),
        mlp=(mlp / n).numpy(),
        heads=(heads / n).numpy(),
        hidden=(hidden / norm_tokens[0]).numpy(),
    )
    if block == "ppl":
        scores.base_ppl, scores.block = block_ppl_drop(model, calib_loop)
        scores.block_metric = "ppl"
    return scores


class _no_cache:
    """Run calibration passes with ``use_cache=False`` (no KV cache to build or keep)."""

    def __init__(self, model: Any) -> None:
        self.cfg = model.config
        self.old = getattr(self.cfg, "use_cache", None)

    def __enter__(self) -> None:
        self.cfg.use_cache = False

    def __exit__(self, *exc: object) -> None:
        self.cfg.use_cache = self.old


def calib_perplexity(model: Any, calib_loop: CalibLoop) -> float:
    """Next-token perplexity over what ``calib_loop`` feeds the model (via a forward hook)."""
    import torch

    acc = [0.0, 0]

    def hook(_m, args, kwargs, out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        logits = out.logits[:, :-1].float()
        labels = ids[:, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )
        acc[0] += nll.item()
        acc[1] += labels.numel()

    h = model.register_forward_hook(hook, with_kwargs=True)
    try:
        with _no_cache(model):
            calib_loop(model)
    finally:
        h.remove()
    return math.exp(min(acc[0] / max(acc[1], 1), 700.0))


def block_ppl_drop(model: Any, calib_loop: CalibLoop) -> tuple[float, np.ndarray]:
    """Per block: calibration perplexity with the block skipped minus the full model's."""
    base = calib_perplexity(model, calib_loop)
    drops = []
    for layer in model.model.layers:
        h = layer.register_forward_hook(
            lambda _m, args, kwargs, _out: _layer_input(args, kwargs), with_kwargs=True
        )
        try:
            drops.append(calib_perplexity(model, calib_loop) - base)
        finally:
            h.remove()
    return base, np.asarray(drops)
