"""Round-to-nearest (RTN) fake quantization: the no-calibration baseline GPTQ is compared to.

Same grid as GPTQ's quantizer (min/max per group along ``in_features``, symmetric or with a
zero point), applied in place to every linear layer except the LM head; weights stay in their
float dtype so any fp model class can evaluate them::

    model = load_causal_lm(path)
    fake_quantize_rtn(model, bits=4, group_size=64, sym=True)
"""

from __future__ import annotations


def quantize_dequantize(weight, bits: int, group_size: int, sym: bool):
    """``weight`` [out, in] rounded to a ``bits``-bit grid per group of ``group_size`` inputs."""
    import torch

    out_f, in_f = weight.shape
    g = in_f if group_size == -1 else group_size
    if in_f % g:
        raise ValueError(f"group_size {g} does not divide in_features {in_f}")
    w = weight.detach().float().reshape(out_f, in_f // g, g)
    maxq = 2**bits - 1
    zero_t = torch.zeros((), dtype=w.dtype)
    xmin = torch.minimum(w.amin(-1, keepdim=True), zero_t)
    xmax = torch.maximum(w.amax(-1, keepdim=True), zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(both_zero, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return (scale * (q - zero)).reshape(out_f, in_f).to(weight.dtype)


def fake_quantize_rtn(model, bits: int, group_size: int, sym: bool = True) -> int:
    """Replace every non-head linear weight of ``model`` by its RTN value; returns layers done."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    done = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod is not head:
                mod.weight.copy_(quantize_dequantize(mod.weight, bits, group_size, sym))
                done += 1
    return done
