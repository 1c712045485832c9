"""GPTQ on the tiny GQA Llama: one quantize call, then reload both ways and generate on CPU.

The first quantize on a fresh machine JIT-compiles GPT-QModel's C++ packing op (~1.5 min,
cached in ~/.cache/gptqmodel), hence the generous timeouts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def int4(tiny_gptq):
    return tiny_gptq


def test_checkpoint_layout(int4, tiny_gqa):
    names = {p.name for p in int4.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    qcfg = json.loads((int4 / "config.json").read_text())["quantization_config"]
    assert (qcfg["bits"], qcfg["group_size"], qcfg["sym"]) == (4, 32, True)
    assert (int4 / "tokenizer.json").read_bytes() == (tiny_gqa.path / "tokenizer.json").read_bytes()
    assert not [p for p in int4.parent.iterdir() if p.name.startswith(".")]  # no temp left
    fp_bytes = (tiny_gqa.path / "model.safetensors").stat().st_size
    assert (int4 / "model.safetensors").stat().st_size < fp_bytes / 2


def test_load_quantized_generates_close_to_fp(int4, tiny_gqa, tiny_rows):
    from distill.eval.metrics import evaluate_models
    from distill.models.loader import load_causal_lm
    from distill.quant import load_quantized

    q = load_quantized(int4, device="cpu")
    assert "qlinear" in type(q.model.layers[0].mlp.down_proj).__module__  # the int4 kernel
    ids = torch.as_tensor(tiny_rows[20:21, :8], dtype=torch.long)
    out = q.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 14)
    fp = load_causal_lm(tiny_gqa.path)
    res = evaluate_models({"fp": fp, "int4": q}, tiny_rows[16:], 4, reference="fp")
    assert res["int4"]["agreement"] > 0.8
    assert res["int4"]["perplexity"] < res["fp"]["perplexity"] * 1.2


def test_transformers_from_pretrained_loads_int4(int4, tiny_rows):
    from transformers import AutoModelForCausalLM

    from distill.quant import load_quantized

    m = AutoModelForCausalLM.from_pretrained(str(int4), device_map="cpu").eval()
    assert "gptqmodel" in type(m.model.layers[0].self_attn.q_proj).__module__
    ids = torch.as_tensor(tiny_rows[20:21, :8], dtype=torch.long)
    a = m.generate(ids, max_new_tokens=6, do_sample=False)
    b = load_quantized(int4, device="cpu").generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_rtn_fake_quant_close_to_gptq_grid(int4, tiny_gqa, tiny_rows):
    """Same bits/group: the in-memory RTN baseline is a sane 4-bit model too."""
    from distill.eval.metrics import evaluate_models
    from distill.models.loader import load_causal_lm
    from distill.quant import fake_quantize_rtn

    fp = load_causal_lm(tiny_gqa.path)
    rtn = load_causal_lm(tiny_gqa.path)
    fake_quantize_rtn(rtn, 4, 32, True)
    res = evaluate_models({"fp": fp, "rtn": rtn}, tiny_rows[16:], 4, reference="fp")
    assert np.isfinite(res["rtn"]["perplexity"]) and res["rtn"]["agreement"] > 0.8


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_dtype_follows_native_bf16(int4, monkeypatch, native_bf16):
    """bf16 only where the CPU computes it natively; emulated bf16 is slower than fp32."""
    from distill.quant import gptq

    monkeypatch.setattr(gptq, "cpu_has_native_bf16", lambda: native_bf16)
    q = gptq.load_quantized(int4, device="cpu")
    assert q.model.embed_tokens.weight.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert gptq.load_quantized(int4, device="cpu", dtype="bfloat16").dtype == torch.bfloat16
