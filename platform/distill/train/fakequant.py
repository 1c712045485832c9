"""Fake quantization on the GPTQ int4 grid, for quantization-aware distillation (``quantize.recover``).

A GPTQ checkpoint (GPT-QModel's ``checkpoint_format: gptq``) is unpacked into an ordinary fp model
whose quantized linears are :class:`FakeQuantLinear`: a latent fp weight and per-group scales,
both trainable, quantized in every forward with a straight-through estimator (round's gradient
is the identity; LSQ-style gradient for the scales). At the start the latent weight is the
dequantized GPTQ weight, so the model's output is exactly the GPTQ model's. After training,
:func:`pack_gptq` writes the rounded weights back into a GPTQ checkpoint that GPT-QModel (and the
CPU engine export) loads like the original::

    model = load_fake_quant(Path("runs/x/student-int4"))          # trainable, == GPTQ forward
    ...train against the teacher...
    pack_gptq(model, Path("runs/x/student-int4"), Path("runs/x/student-int4-recovered"))

Pure torch + safetensors; no GPT-QModel import.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.atomic import atomic_dir
from distill.config.base import DistillError

PACK = 32  # int32 words


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """``[r, c]`` int32 words → ``[r * 32/bits, c]`` values (little end first, along rows)."""
    shifts = torch.arange(0, PACK, bits, dtype=torch.int32, device=packed.device)
    vals = (packed.unsqueeze(1) >> shifts[None, :, None]) & ((1 << bits) - 1)
    return vals.reshape(-1, packed.shape[1])


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`unpack_rows`: ``[n, c]`` ints in ``[0, 2**bits)`` → ``[n*bits/32, c]``."""
    per = PACK // bits
    v = values.to(torch.int64).reshape(-1, per, values.shape[1])
    shifts = torch.arange(0, PACK, bits, dtype=torch.int64, device=values.device)
    word = (v << shifts[None, :, None]).sum(1)  # in [0, 2**32): wrap to int32
    return torch.where(word >= 1 << 31, word - (1 << 32), word).to(torch.int32)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class FakeQuantLinear(nn.Module):
    """``y = x @ Q(w).T + b`` with ``Q(w) = s[g] * (clamp(round(w / s[g]) + z, 0, maxq) - z)``.

    ``weight`` [out, in] and ``scales`` [groups, out] are parameters; ``zeros`` [groups, out]
    (integers) and ``g_idx`` [in] (the group of each input column) are buffers.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        g_idx: torch.Tensor,
        bits: int,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.maxq = (1 << bits) - 1
        # contiguous copies: DeepSpeed broadcasts parameters as flat byte views
        self.weight = nn.Parameter(weight.float().contiguous().clone())
        self.scales = nn.Parameter(scales.float().contiguous().clone())
        self.register_buffer("zeros", zeros.float().contiguous().clone())
        self.register_buffer("g_idx", g_idx.long().contiguous().clone())
        self.bias = nn.Parameter(bias.float().contiguous().clone()) if bias is not None else None
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> FakeQuantLinear:
        """Symmetric round-to-nearest start (GPTQ's sym grid: zero point ``2**(bits-1)``)."""
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        g = in_f if group_size == -1 else group_size
        if in_f % g:
            raise DistillError(f"group_size {g} does not divide in_features {in_f}")
        maxq = (1 << bits) - 1
        amax = w.reshape(out_f, in_f // g, g).abs().amax(-1).clamp_min(1e-8)  # [out, groups]
        scales = (2 * amax / maxq).T.contiguous()
        zeros = torch.full_like(scales, (maxq + 1) / 2)
        g_idx = torch.arange(in_f) // g
        return cls(w, scales, zeros, g_idx, bits, linear.bias)

    def codes(self) -> torch.Tensor:
        """Integer codes ``[out, in]`` of the current weight on the grid (no gradient)."""
        s = self.scales.detach()[self.g_idx].T.clamp_min(1e-8)
        z = self.zeros[self.g_idx].T
        return torch.clamp(torch.round(self.weight.detach() / s) + z, 0, self.maxq)

    def quantized_weight(self) -> torch.Tensor:
        s = self.scales[self.g_idx].T  # [out, in]
        z = self.zeros[self.g_idx].T
        s = torch.where(s.abs() < 1e-8, torch.full_like(s, 1e-8), s)
        q = torch.clamp(_round_ste(self.weight / s) + z, 0, self.maxq)
        return s * (q - z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight().to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, w, b)


def fake_quantize_model(model: nn.Module, bits: int, group_size: int) -> int:
    """Replace every linear except the LM head by a :class:`FakeQuantLinear` (RTN start)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]
    for n in names:
        _set_module(model, n, FakeQuantLinear.from_linear(model.get_submodule(n), bits, group_size))
    return len(names)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _qconfig(path: Path) -> dict[str, Any]:
    raw = json.loads((Path(path) / "config.json").read_text())
    q = raw.get("quantization_config")
    if not q or q.get("quant_method") != "gptq":
        raise DistillError(f"{path} is not a GPTQ checkpoint (no gptq quantization_config)")
    fmt = q.get("checkpoint_format", q.get("format", "gptq"))
    if fmt != "gptq":
        raise DistillError(
            f"{path}: checkpoint_format {fmt!r} is not supported for recovery (needs 'gptq')"
        )
    if 32 % q["bits"]:
        raise DistillError(f"{path}: {q['bits']}-bit packing is not supported (use 2, 4 or 8)")
    return q


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def load_fake_quant(path: Path) -> nn.Module:
    """The GPTQ checkpoint at ``path`` as a float32 HF model with :class:`FakeQuantLinear` layers
    (same forward as the packed model, up to float rounding); train it, then :func:`pack_gptq`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    q = _qconfig(path)
    bits = int(q["bits"])
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = _state(path)
    prefixes = sorted(k[: -len(".qweight")] for k in state if k.endswith(".qweight"))
    if not prefixes:
        raise DistillError(f"{path} holds no packed (qweight) tensors")
    for name in prefixes:
        codes = unpack_rows(state[f"{name}.qweight"], bits).T.float()  # [out, in]
        zeros = unpack_rows(state[f"{name}.qzeros"].T.contiguous(), bits).T.float() + 1  # v1
        scales = state[f"{name}.scales"].float()  # [groups, out]
        g_idx = state[f"{name}.g_idx"].long()
        w = scales[g_idx].T * (codes - zeros[g_idx].T)
        bias = state.get(f"{name}.bias")
        _set_module(model, name, FakeQuantLinear(w, scales, zeros, g_idx, bits, bias))
    rest = {k: v.float() for k, v in state.items() if not k.startswith(tuple(prefixes))}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    unexpected = [k for k in unexpected if not k.endswith(("g_idx", "qweight", "qzeros"))]
    missing = [k for k in missing if not k.startswith(tuple(prefixes))]
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise DistillError(
            f"{path}: weights do not match the config: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    return model.eval()


def pack_gptq(model: nn.Module, src: Path, out: Path) -> Path:
    """Write ``model`` (from :func:`load_fake_quant`) as a GPTQ checkpoint at ``out``: the
    quantized layers' codes/scales repacked, every other tensor in the source's dtype; config and
    tokenizer files copied from ``src``. Temp dir + rename."""
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    q = _qconfig(src)
    bits = int(q["bits"])
    old = _state(src)
    new: dict[str, torch.Tensor] = {}
    fq = {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}
    params = dict(model.named_parameters(remove_duplicate=False))
    for key, ref in old.items():
        layer, _, leaf = key.rpartition(".")
        if layer in fq:
            m = fq[layer]
            if leaf == "qweight":
                new[key] = pack_rows(m.codes().T.to(torch.int32), bits)
            elif leaf == "scales":
                new[key] = m.scales.detach().to(ref.dtype).contiguous()
            elif leaf == "bias" and m.bias is not None:
                new[key] = m.bias.detach().to(ref.dtype).contiguous()
            else:  # qzeros, g_idx: unchanged
                new[key] = ref
        elif key in params:
            new[key] = params[key].detach().to(ref.dtype).contiguous()
        else:
            new[key] = ref
    with atomic_dir(out) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        save_file(new, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return out
