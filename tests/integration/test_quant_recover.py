"""Quantization-aware recovery on the tiny GPTQ Llama: the fake-quant model starts at the GPTQ
model's output, training moves it, and the repacked checkpoint reloads (GPT-QModel) with the
fake-quant forward's output."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.timeout(600)


def _logits(model, rows):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(rows).long()).logits.float()


def test_recover_then_pack_reloads_with_the_fake_quant_forward(tiny_gptq, tiny_rows, tmp_path):
    from distill.quant import load_quantized
    from distill.quant.fakequant import load_fake_quant, pack_gptq

    rows = tiny_rows[16:20, :32]
    fq = load_fake_quant(tiny_gptq)
    ref = _logits(load_quantized(tiny_gptq, device="cpu"), rows)
    assert torch.allclose(_logits(fq, rows), ref, atol=2e-2)

    teacher = _logits(load_quantized(tiny_gptq, device="cpu"), rows)  # any fixed target
    target = torch.log_softmax(teacher + torch.randn_like(teacher), -1)
    fq.train()
    opt = torch.optim.Adam(fq.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        logp = torch.log_softmax(fq(input_ids=torch.as_tensor(rows).long()).logits, -1)
        loss = torch.nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    fq.eval()
    trained = _logits(fq, rows)
    assert not torch.allclose(trained, ref, atol=1e-3)  # training changed the int4 model

    out = pack_gptq(fq, tiny_gptq, tmp_path / "student-int4-recovered")
    assert (out / "config.json").read_text() == (tiny_gptq / "config.json").read_text()
    reloaded = _logits(load_quantized(out, device="cpu"), rows)
    assert torch.allclose(reloaded, trained, atol=5e-2)  # fp16 scales on disk
    assert (reloaded.argmax(-1) == trained.argmax(-1)).float().mean() > 0.95
    again = _logits(load_fake_quant(out), rows)
    assert torch.allclose(again, trained, atol=5e-2)
