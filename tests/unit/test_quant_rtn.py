"""Round-to-nearest fake quantization: the grid, its error, and the model-level pass."""

from __future__ import annotations

import pytest
import torch

from distill.quant.rtn import fake_quantize_rtn, quantize_dequantize


@pytest.mark.parametrize("sym", [True, False])
def test_each_group_uses_at_most_2_pow_bits_levels(sym):
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    q = quantize_dequantize(w, bits=4, group_size=32, sym=sym)
    assert q.shape == w.shape and q.dtype == w.dtype
    for group in q.reshape(16, 4, 32).reshape(-1, 32):
        assert len(torch.unique(group)) <= 16
    # no weight moves by more than one grid step of its group
    g = w.reshape(-1, 32)
    step = (g.amax(-1) - g.amin(-1)) / 15
    assert ((q.reshape(-1, 32) - g).abs().amax(-1) <= step + 1e-6).all()


def test_error_shrinks_with_more_bits_and_smaller_groups():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))

    def err(bits, g):
        return (quantize_dequantize(w, bits, g, True) - w).pow(2).mean().item()

    assert err(8, 64) < err(4, 64) < err(3, 64) < err(2, 64)
    assert err(4, 32) < err(4, 128) < err(4, -1)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_dequantize(w, 4, 96, True)


def test_fake_quantize_model_skips_head(tiny_gqa):
    from distill.models.loader import load_causal_lm

    model = load_causal_lm(tiny_gqa.path)
    before = {n: p.clone() for n, p in model.named_parameters()}
    done = fake_quantize_rtn(model, bits=4, group_size=32)
    assert done == 4 * 7  # q, k, v, o, gate, up, down per layer
    after = dict(model.named_parameters())
    assert not torch.equal(
        before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"]
    )
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
