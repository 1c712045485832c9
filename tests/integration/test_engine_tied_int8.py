"""int8 tied embedding + LM head in the CPU engine (``engine.embedding_bits: 8``) on the tiny GPTQ
Llama: one set of int8 weights feeds both the head and the embedding lookup, the fp32 embedding is
gone, and the reloaded model's logits are those of the HF model whose tied embedding is int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.timeout(600)


def _graph(path):
    import onnx
    from onnx import helper

    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    attrs = {
        n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}
        for n in model.graph.node
    }
    return model.graph, inits, nodes, attrs


@pytest.fixture(scope="module")
def tied_dir(tiny_gptq, tmp_path_factory):
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai

    # accuracy_level 1: fp32 activations, so the comparison below is exact up to float rounding
    cfg = EngineConfig(kind="ort-genai", lm_head_bits=8, accuracy_level=1)
    return export_ort_genai(tiny_gptq, tmp_path_factory.mktemp("t8") / "int4-cpu", cfg)


def test_embedding_and_head_share_one_int8_tensor(tied_dir):
    graph, inits, nodes, attrs = _graph(tied_dir)
    gather = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    head = [n for n in graph.node if n.op_type == "MatMulNBits" and "logits" in n.output]
    assert len(gather) == 1 and len(head) == 1
    g, h = gather[0], head[0]
    assert attrs[g.name]["bits"] == 8 and attrs[h.name]["bits"] == 8
    reshape = next(n for n in graph.node if g.input[0] in n.output)
    assert reshape.op_type == "Reshape" and reshape.input[0] == h.input[1]  # same bytes
    assert g.input[2] == h.input[2]  # same scales
    vocab, hidden = 512, 64
    assert inits[h.input[1]] == [vocab, hidden // 32, 32]
    assert not any(d == [vocab, hidden] for d in inits.values())  # no fp32 embedding left
    m = json.loads((tied_dir / "distill_engine.json").read_text())
    assert m["embedding_bits"] == 8 and m["tied"] is True


def test_logits_match_the_hf_model_with_an_int8_tied_embedding(tied_dir, tiny_gptq, tiny_rows):
    """The reference is the GPTQ checkpoint dequantized exactly (fake-quant start) with its tied
    embedding / head on the same int8 grid."""
    from distill.runtime.ort_genai import OrtGenAIModel
    from distill.runtime.tied_int8 import dequantize_int8, quantize_int8
    from distill.train.fakequant import load_fake_quant

    rows = tiny_rows[16:20]
    ids = torch.as_tensor(rows).long()
    ref = load_fake_quant(tiny_gptq)
    with torch.no_grad():
        fp_emb = ref(input_ids=ids).logits.numpy()
        w = ref.get_input_embeddings().weight
        w.copy_(torch.from_numpy(dequantize_int8(*quantize_int8(w.numpy(), 32), 32)))
        assert ref.get_output_embeddings().weight is w  # tied: the head changed with it
        int8_emb = ref(input_ids=ids).logits.numpy()
    got = OrtGenAIModel.load(tied_dir, threads=1).logits(rows)
    err = np.abs(got - int8_emb).max()
    assert err < 1e-4
    assert np.abs(got - fp_emb).max() > 20 * err  # the tolerance tells the two grids apart


def test_untied_model_gets_its_own_int8_embedding(tiny_gqa, tiny_rows, tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.models.files import copy_tokenizer_files
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai
    from distill.runtime.ort_genai import OrtGenAIModel

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gqa.path), tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.lm_head.weight * 1.5)
    src = tmp_path / "untied"
    model.save_pretrained(src)
    copy_tokenizer_files(tiny_gqa.path, src)
    assert json.loads((src / "config.json").read_text())["tie_word_embeddings"] is False

    base = dict(kind="ort-genai", source="fp", algo="rtn", lm_head_bits=8, accuracy_level=1)
    out = {
        b: export_ort_genai(src, tmp_path / f"e{b}", EngineConfig(**base, embedding_bits=b))
        for b in (8, 32)
    }
    graph, inits, _, _ = _graph(out[8])
    (g,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    (h,) = [n for n in graph.node if n.op_type == "MatMulNBits" and "logits" in n.output]
    assert g.input[0] in inits and g.input[0] not in h.input  # not shared with the head
    rows = tiny_rows[16:18]
    l8, l32 = (OrtGenAIModel.load(out[b], threads=1).logits(rows) for b in (8, 32))
    assert np.abs(l8 - l32).max() < 0.05 * np.abs(l32).max()  # only the embedding's grid differs
    assert json.loads((out[8] / "distill_engine.json").read_text())["tied"] is False


def test_an_older_runtime_is_refused_before_the_build_and_at_load(
    tied_dir, tiny_gptq, tmp_path, monkeypatch
):
    from distill.config.base import DistillError
    from distill.runtime import tied_int8
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai
    from distill.runtime.ort_genai import OrtGenAIModel

    monkeypatch.setattr(tied_int8, "_gather_int8_error", lambda: "op not implemented")
    cfg = EngineConfig(kind="ort-genai", lm_head_bits=8)
    with pytest.raises(DistillError, match=r"embedding_bits: 8 needs .*embedding_bits: 32"):
        export_ort_genai(tiny_gptq, tmp_path / "x", cfg)
    assert not (tmp_path / "x").exists()
    with pytest.raises(DistillError, match="quantize.engine.embedding_bits"):
        OrtGenAIModel.load(tied_dir)
