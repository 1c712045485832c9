"""Checks that run before any quantization work: is it a causal LM, does the group size fit?

in_features = check_model_dir(Path("runs/smoke/student"))  # {"model.layers.0.mlp.up_proj": 576}
check_group_size(128, in_features)  # DistillError: ... 576 % 128 = 64 ... largest valid: 64
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from distill.config.base import DistillError

MAX_GROUP = 1024


def largest_valid_group(in_features: dict[str, int], cap: int = MAX_GROUP) -> int:
    """The largest power of two (<= ``cap``) dividing every ``in_features``; 0 if none >= 8."""
    g = 0
    for n in in_features.values():
        g = math.gcd(g, n)
    best = 1
    while best * 2 <= cap and g % (best * 2) == 0:
        best *= 2
    return best if best >= 8 else 0


def check_group_size(group_size: int, in_features: dict[str, int]) -> None:
    """Raise ``DistillError`` naming the first layer ``group_size`` does not divide.

    GPT-QModel quantizes such a model but its CPU kernel crashes at inference, so this check
    runs before any work and suggests the largest group size that fits every layer.
    """
    if not in_features:
        raise DistillError("the model has no linear layers to quantize")
    if group_size == -1:
        return
    bad = {name: n for name, n in in_features.items() if n % group_size}
    if bad:
        name, n = next(iter(bad.items()))
        best = largest_valid_group(in_features)
        hint = f"largest valid group_size: {best}" if best else "use group_size: -1"
        sizes = sorted(set(in_features.values()))
        raise DistillError(
            f"quantize.group_size={group_size} does not divide in_features of {len(bad)} linear "
            f"layer(s), e.g. {name} ({n} % {group_size} = {n % group_size}); layer in_features: "
            f"{sizes}; {hint} (or -1 for per-channel)"
        )


def check_model_dir(path: Path) -> dict[str, int]:
    """Validate a checkpoint to quantize; return ``{linear name: in_features}`` (lm_head excluded).

    Builds the model on the meta device from ``config.json`` (no weights read): fails with a
    ``DistillError`` when the directory is not an unquantized causal LM that GPT-QModel supports.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise DistillError(f"cannot quantize {path}: no config.json (not an HF checkpoint)")
    raw = json.loads(cfg_file.read_text())
    if "quantization_config" in raw:
        raise DistillError(f"cannot quantize {path}: it is already quantized")
    if not any(path.glob("*.safetensors")):
        raise DistillError(f"cannot quantize {path}: no *.safetensors weights")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = raw.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise DistillError(
            f"cannot quantize {path}: model_type={model_type!r} is not a causal LM "
            "(AutoModelForCausalLM does not know it)"
        )
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return {
        name: int(mod.in_features)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and mod is not head
    }


def check_backend_supports(path: Path) -> None:
    """GPT-QModel needs a model definition for the architecture (imported lazily: it is heavy)."""
    from gptqmodel.models.auto import SUPPORTED_MODELS

    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED_MODELS:
        raise DistillError(
            f"GPT-QModel 7.6 cannot quantize model_type={model_type!r}; supported include "
            f"{sorted(SUPPORTED_MODELS)[:20]}..."
        )
