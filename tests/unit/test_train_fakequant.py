"""Fake quantization on the GPTQ grid (pure torch): packing, the RTN start, STE gradients, and a
few steps of distillation through it lowering the loss on a tiny model."""

from __future__ import annotations

import torch

from distill.quant.rtn import quantize_dequantize
from distill.train.fakequant import (
    FakeQuantLinear,
    fake_quantize_model,
    pack_rows,
    unpack_rows,
)


def test_pack_unpack_roundtrip():
    g = torch.Generator().manual_seed(0)
    vals = torch.randint(0, 16, (64, 24), generator=g, dtype=torch.int32)
    packed = pack_rows(vals, 4)
    assert packed.dtype == torch.int32 and packed.shape == (8, 24)
    assert torch.equal(unpack_rows(packed, 4), vals)


def test_rtn_start_is_the_rtn_grid():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 16, bias=False)
    fq = FakeQuantLinear.from_linear(lin, bits=4, group_size=32)
    expect = quantize_dequantize(lin.weight, 4, 32, sym=True)
    assert torch.allclose(fq.quantized_weight(), expect, atol=1e-6)
    x = torch.randn(3, 64)
    assert torch.allclose(fq(x), x @ expect.T, atol=1e-5)


def test_ste_reaches_weights_and_scales():
    torch.manual_seed(0)
    fq = FakeQuantLinear.from_linear(torch.nn.Linear(32, 8), bits=4, group_size=16)
    fq(torch.randn(4, 32)).pow(2).sum().backward()
    assert fq.weight.grad is not None and fq.weight.grad.abs().sum() > 0
    assert fq.scales.grad is not None and fq.scales.grad.abs().sum() > 0
    assert fq.bias.grad is not None


def test_distilling_through_fake_quant_lowers_the_loss(tiny_gqa):
    from distill.models.loader import load_causal_lm

    teacher = load_causal_lm(tiny_gqa.path)
    student = load_causal_lm(tiny_gqa.path)
    assert fake_quantize_model(student, bits=4, group_size=32) == 4 * 7
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    ids = torch.randint(4, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = torch.log_softmax(teacher(input_ids=ids).logits, -1)
    losses = []
    for _ in range(12):
        logp = torch.log_softmax(student(input_ids=ids).logits, -1)
        loss = torch.nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
