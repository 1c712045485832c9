"""Quantize config and pre-work checks: bits, group size against every linear, model kind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.quant.config import QuantizeConfig
from distill.quant.validate import check_group_size, check_model_dir, largest_valid_group

# SmolLM2-135M: q/k/v/gate/up take hidden 576, o_proj 576, down_proj intermediate 1536.
SMOLLM2 = {"layers.0.self_attn.q_proj": 576, "layers.0.mlp.down_proj": 1536}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_supported_bits(bits):
    assert QuantizeConfig(bits=bits).bits == bits


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_unsupported_bits_say_what_is_allowed(bits):
    with pytest.raises(ValidationError, match=r"allowed: \[2, 3, 4, 8\]"):
        QuantizeConfig(bits=bits)


@pytest.mark.parametrize("group", [0, 4, 48, 100, -2])
def test_group_size_must_be_power_of_two_or_minus_one(group):
    with pytest.raises(ValidationError, match="power of two"):
        QuantizeConfig(group_size=group)


def test_unknown_key_and_cuda_backend_on_cpu_rejected():
    with pytest.raises(ValidationError):
        QuantizeConfig(group=64)
    with pytest.raises(ValidationError, match="needs CUDA"):
        QuantizeConfig(device="cpu", backend="marlin")


def test_largest_valid_group():
    assert largest_valid_group(SMOLLM2) == 64
    assert largest_valid_group({"a": 64, "b": 128}) == 64
    assert largest_valid_group({"a": 4096, "b": 11008}) == 256
    assert largest_valid_group({"a": 100}) == 0


def test_group_size_error_names_layer_and_suggests_largest():
    check_group_size(64, SMOLLM2)
    check_group_size(-1, SMOLLM2)
    with pytest.raises(DistillError) as e:
        check_group_size(128, SMOLLM2)
    msg = str(e.value)
    assert "q_proj" in msg and "576 % 128 = 64" in msg and "largest valid group_size: 64" in msg


def test_check_model_dir_reads_every_linear(tiny_gqa):
    feats = check_model_dir(tiny_gqa.path)
    assert sorted(set(feats.values())) == [64, 128]  # hidden, intermediate
    assert not any("lm_head" in n for n in feats)
    assert sum(n.endswith("down_proj") for n in feats) == 4
    with pytest.raises(DistillError, match="largest valid group_size: 64"):
        check_group_size(128, feats)


def test_check_model_dir_rejects_non_causal_lm(tmp_path, tiny_gqa):
    with pytest.raises(DistillError, match="no config.json"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DistillError, match="not a causal LM"):
        check_model_dir(tmp_path)
    cfg = json.loads((tiny_gqa.path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DistillError, match="already quantized"):
        check_model_dir(tmp_path)


def test_calibration_samples_rechunk_and_refuse_empty():
    from distill.quant.gptq import calibration_samples

    rows = np.arange(4 * 64, dtype=np.int32).reshape(4, 64)
    s = calibration_samples(rows, n=3, seq_len=80)
    assert len(s) == 3 and all(len(x["input_ids"]) == 80 for x in s)
    assert s[1]["input_ids"][0] == 80  # contiguous re-chunking of the packed stream
    assert len(calibration_samples(rows, n=99, seq_len=128)) == 2
    with pytest.raises(DistillError, match="empty calibration set"):
        calibration_samples(rows, n=4, seq_len=512)
    with pytest.raises(DistillError, match="empty calibration set"):
        calibration_samples(np.zeros((0, 64), np.int32), n=4, seq_len=8)


def test_heldout_overlap_counts_shared_rows():
    from distill.quant.checkpoint import heldout_overlap

    train = np.arange(40, dtype=np.int32).reshape(5, 8)
    assert heldout_overlap(train, train[:0]) == 0
    assert heldout_overlap(train, train + 100) == 0
    assert heldout_overlap(train, np.concatenate([train[1:3], train[:1] + 7])) == 2


def test_gguf_quants_validated():
    assert QuantizeConfig(gguf=["f16", "q4_k_m"]).gguf == ["f16", "q4_k_m"]
    with pytest.raises(ValidationError, match="gguf"):
        QuantizeConfig(gguf=["q5_k"])
    with pytest.raises(ValidationError, match="twice"):
        QuantizeConfig(gguf=["f16", "f16"])
