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
