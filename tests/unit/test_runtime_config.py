"""CPU int4 engine settings and the checks that run before any export."""

from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.quant.config import QuantizeConfig
from distill.runtime.config import EngineConfig


def test_engine_defaults_off_and_validated():
    assert QuantizeConfig().engine.kind == "none"
    with pytest.raises(ValidationError, match="block_size"):
        EngineConfig(kind="ort-genai", source="fp", block_size=48)
    with pytest.raises(ValidationError, match="unknown|extra"):
        EngineConfig.model_validate({"kind": "ort-genai", "bitz": 4})


@pytest.mark.parametrize(
    "quant",
    [{"method": "rtn"}, {"bits": 8}, {"sym": False}, {"group_size": -1}],
)
def test_gptq_source_needs_4bit_symmetric_grouped_gptq(quant):
    with pytest.raises(ValidationError, match="engine"):
        QuantizeConfig(**quant, engine={"kind": "ort-genai", "source": "gptq"})
    QuantizeConfig(**quant, engine={"kind": "ort-genai", "source": "fp"})  # the engine's own int4


def test_builder_options(tmp_path):
    from distill.runtime.export import builder_options

    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    fp = builder_options(tmp_path, EngineConfig(kind="ort-genai", source="fp"), group_size=64)
    assert fp["block_size"] == "64" and fp["algo_config"] == "k_quant"
    assert fp["shared_embeddings"] == "true"
    head8 = builder_options(tmp_path, EngineConfig(kind="ort-genai", lm_head_bits=8), 64)
    assert head8["matmul_mixed_precision"] == "last_matmul:int8"
    assert head8["shared_embeddings"] == "false"
    cfg = {"tie_word_embeddings": True, "quantization_config": {"quant_method": "gptq"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    gptq = builder_options(tmp_path, EngineConfig(kind="ort-genai"), 64)
    assert "block_size" not in gptq  # the checkpoint's own groups are carried


def test_checkpoint_the_engine_cannot_import(tmp_path):
    from distill.runtime.export import check_source

    q = {"quant_method": "gptq", "bits": 3, "sym": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": q}))
    with pytest.raises(DistillError, match="4-bit GPTQ"):
        check_source(tmp_path, EngineConfig(kind="ort-genai"))


def test_engine_not_installed_names_the_extra(monkeypatch):
    from distill.runtime.ort_genai import require_ort_genai

    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)
    with pytest.raises(DistillError, match=r"distill\[cpu-int4\]"):
        require_ort_genai()


def test_embedding_bits_resolved_and_checked():
    assert EngineConfig(kind="ort-genai").embedding == 4
    assert EngineConfig(kind="ort-genai", lm_head_bits=8).embedding == 8  # tied at the head's
    assert EngineConfig(kind="ort-genai", lm_head_bits=8, embedding_bits=32).embedding == 32
    with pytest.raises(ValidationError, match="embedding_bits: 8 .*lm_head_bits: 8"):
        EngineConfig(kind="ort-genai", embedding_bits=8)
    with pytest.raises(ValidationError, match="embedding_bits: 4 .*lm_head_bits: 4"):
        EngineConfig(kind="ort-genai", lm_head_bits=8, embedding_bits=4)
    with pytest.raises(ValidationError, match="lm_head_block_size"):
        EngineConfig(kind="ort-genai", lm_head_bits=8, lm_head_block_size=48)


def test_builder_unties_what_distill_shares_later(tmp_path):
    from distill.runtime.export import builder_options

    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    fp32_emb = EngineConfig(kind="ort-genai", source="fp", embedding_bits=32)
    assert builder_options(tmp_path, fp32_emb, 32)["shared_embeddings"] == "false"
    t8 = builder_options(tmp_path, EngineConfig(kind="ort-genai", lm_head_bits=8), 32)
    assert t8["shared_embeddings"] == "false"  # the int8 head is shared after the build


def test_int8_grid_is_symmetric_and_reproduces_q8_0_blocks():
    """absmax/127 per block: a GGUF Q8_0 block (d * q, |q| <= 127, 127 reached) comes back
    exactly, and any weight is within half a step."""
    import numpy as np

    from distill.config.base import DistillError
    from distill.runtime.tied_int8 import dequantize_int8, quantize_int8

    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (6, 64))
    q[:, [0, 32]] = 127
    d = rng.uniform(1e-3, 1e-1, (6, 2)).astype(np.float16).astype(np.float32)
    w = (q.reshape(6, 2, 32) * d[..., None]).reshape(6, 64).astype(np.float32)
    codes, scales = quantize_int8(w, 32)
    assert codes.dtype == np.uint8 and scales.shape == (6, 2)
    np.testing.assert_array_equal(codes.astype(int) - 128, q)
    np.testing.assert_allclose(dequantize_int8(codes, scales, 32), w, rtol=1e-6)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    xc, xs = quantize_int8(x, 16)
    assert np.all(np.abs(dequantize_int8(xc, xs, 16) - x) <= np.repeat(xs, 16, 1) / 2 + 1e-7)
    with pytest.raises(DistillError, match="lm_head_block_size=48"):
        quantize_int8(x, 48)


def test_q4_1_is_an_fp_source_at_block_32():
    EngineConfig(kind="ort-genai", source="fp", algo="q4_1")
    for bad in ({"source": "gptq"}, {"source": "fp", "block_size": 64}):
        with pytest.raises(ValidationError, match="algo: q4_1"):
            EngineConfig(kind="ort-genai", algo="q4_1", **bad)


def test_q4_1_grid_recovers_codes_and_refuses_other_weights():
    import numpy as np

    from distill.runtime.q4_1 import q4_1_grid

    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (4, 64))
    q[:, [0, 32]], q[:, [1, 33]] = 0, 15
    q[3, 32:] = np.where(q[3, 32:] > 12, 12, q[3, 32:])  # a block whose top code is not 15
    q[3, 33] = 1
    d = rng.uniform(1e-3, 1e-2, (4, 2)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.1, 0.0, (4, 2)).astype(np.float16).astype(np.float32)
    w = (m[..., None] + d[..., None] * q.reshape(4, 2, 32)).reshape(4, 64).astype(np.float32)
    codes, scale, lo = q4_1_grid(w)
    back = (lo[..., None] + scale[..., None] * codes.reshape(4, 2, 32)).reshape(4, 64)
    np.testing.assert_allclose(back, w, atol=1e-6)
    np.testing.assert_array_equal(codes[:3], q[:3])
    assert q4_1_grid(rng.standard_normal((4, 64)).astype(np.float32)) is None


def test_default_zero_points_are_dropped():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from distill.runtime.graph import drop_default_zero_points

    def mnb(name, zp):
        return helper.make_node(
            "MatMulNBits",
            ["x", "w", "s", zp],
            [name],
            domain="com.microsoft",
            K=96,
            N=2,
            bits=4,
            block_size=32,
        )

    sym = np.array([0x88, 0x08, 0x88, 0x08], np.uint8)  # 3 blocks a row: the pad nibble is 0
    other = np.array([0x88, 0x07, 0x88, 0x08], np.uint8)
    inits = [numpy_helper.from_array(a, n) for a, n in ((sym, "zs"), (other, "zo"))]
    graph = helper.make_graph(
        [mnb("a", "zs"), mnb("b", "zo")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 96])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"],
        inits,
    )
    model = helper.make_model(graph)
    assert drop_default_zero_points(model) == 1
    a, b = model.graph.node
    assert list(a.input) == ["x", "w", "s"] and b.input[3] == "zo"
    assert [t.name for t in model.graph.initializer] == ["zo"]
