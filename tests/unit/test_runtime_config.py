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
