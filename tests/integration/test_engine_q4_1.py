"""A GGUF Q4_1 model's own grid carried into the CPU engine (``engine.algo: q4_1``): the tiny
Llama with every layer rounded to Q4_1 blocks exports with its exact codes and offsets, and
the engine's logits are the HF model's; a model off such a grid is refused before the build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.timeout(600)


def _q4_1(w: torch.Tensor) -> torch.Tensor:
    """llama.cpp's Q4_1 of a weight (blocks of 32 along in_features; d and min in fp16)."""
    n, k = w.shape
    b = w.reshape(n, k // 32, 32)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d = ((hi - lo) / 15).half().float()
    lo = lo.half().float()
    return (lo + d * torch.clamp(torch.round((b - lo) / d), 0, 15)).reshape(n, k)


@pytest.fixture(scope="module")
def q4_1_model(tiny_gqa, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from distill.models.files import copy_tokenizer_files

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gqa.path))
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(_q4_1(mod.weight))
    out = tmp_path_factory.mktemp("q41") / "teacher"
    model.save_pretrained(out)
    copy_tokenizer_files(tiny_gqa.path, out)
    return out, model.eval()


def test_engine_carries_the_q4_1_grid_exactly(q4_1_model, tiny_rows, tmp_path):
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai
    from distill.runtime.ort_genai import OrtGenAIModel
    from distill.runtime.tied_int8 import dequantize_int8, quantize_int8

    src, model = q4_1_model
    base = dict(kind="ort-genai", source="fp", lm_head_bits=8, accuracy_level=1)
    out = export_ort_genai(src, tmp_path / "q41", EngineConfig(**base, algo="q4_1"))
    rtn = export_ort_genai(src, tmp_path / "rtn", EngineConfig(**base, algo="rtn", block_size=32))
    rows = tiny_rows[16:20]
    with torch.no_grad():
        w = model.get_input_embeddings().weight
        w.copy_(torch.from_numpy(dequantize_int8(*quantize_int8(w.numpy(), 32), 32)))
        ref = model(input_ids=torch.as_tensor(rows).long()).logits.numpy()
    got = OrtGenAIModel.load(out, threads=1).logits(rows)
    err = np.abs(got - ref).max()
    assert err < 1e-3 * np.abs(ref).max()  # fp16 offsets: a small fraction of a step
    assert np.abs(OrtGenAIModel.load(rtn, threads=1).logits(rows) - ref).max() > 20 * err

    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    body = [n for n in graph.node if n.op_type == "MatMulNBits" and "logits" not in n.output]
    assert body and all(len(n.input) == 3 for n in body)  # codes + scales, default zero point


def test_a_model_off_the_grid_is_refused_before_the_build(tiny_gqa, tmp_path):
    from distill.config.base import DistillError
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai

    cfg = EngineConfig(kind="ort-genai", source="fp", algo="q4_1")
    with pytest.raises(DistillError, match=r"algo: q4_1 .* not on one.*algo: rtn or k_quant"):
        export_ort_genai(tiny_gqa.path, tmp_path / "x", cfg)
    assert not (tmp_path / "x").exists()
