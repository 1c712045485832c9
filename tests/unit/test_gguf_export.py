"""GGUF export of a tiny Llama: the file reloads through transformers' GGUF loader with the same
logits (f16 within tolerance, f32 exactly), q8_0 stays close, the tokenizer round-trips, and what
the writer cannot represent is refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.runtime.gguf_export import check_checkpoint, export_gguf, permute_qk


def _logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def _reload(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_gqa):
    out = tmp_path_factory.mktemp("gguf")
    return {
        q: export_gguf(tiny_gqa.path, out / f"tiny-{q}.gguf", q) for q in ("f32", "f16", "q8_0")
    }


def test_permute_qk_is_per_head_pair_interleave():
    w = np.arange(8, dtype=np.float32)[:, None]  # 2 heads x head_dim 4: rows [0 1 2 3 | 4 5 6 7]
    assert permute_qk(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("quant, tol", [("f32", 1e-4), ("f16", 2e-2)])
def test_reload_logits_match(exported, tiny_gqa, tiny_rows, quant, tol, one_torch_thread):
    from distill.models.loader import load_causal_lm

    ids = tiny_rows[:2, :32]
    ref = _logits(load_causal_lm(tiny_gqa.path).eval(), ids)
    got = _logits(_reload(exported[quant]), ids)
    assert np.abs(got - ref).max() < tol * max(1.0, np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.99


def test_q8_0_close_and_smaller(exported, tiny_gqa, tiny_rows, one_torch_thread):
    from distill.models.loader import load_causal_lm

    ids = tiny_rows[:2, :32]
    ref = _logits(load_causal_lm(tiny_gqa.path).eval(), ids)
    got = _logits(_reload(exported["q8_0"]), ids)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert exported["q8_0"].stat().st_size < exported["f16"].stat().st_size


def test_tokenizer_metadata(exported, tiny_gqa):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    r = GGUFReader(str(exported["f16"]))
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert r.fields["general.architecture"].contents() == "llama"
    ours = AutoTokenizer.from_pretrained(tiny_gqa.path)
    back = AutoTokenizer.from_pretrained(
        str(exported["f16"].parent), gguf_file=exported["f16"].name
    )
    text = "def f(x):\n    return x + 12345  # <|im_end|>"
    assert back(text)["input_ids"] == ours(text)["input_ids"]


def _copy(src: Path, dst: Path, **config) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "qwen2"}, "model_type='qwen2'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "RoPE scaling"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ],
)
def test_refused_before_work(tmp_path, tiny_gqa, change, message):
    src = _copy(tiny_gqa.path, tmp_path / "m", **change)
    with pytest.raises(DistillError, match=message):
        export_gguf(src, tmp_path / "out.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".out*"))
    with pytest.raises(DistillError, match=message):
        check_checkpoint(src)


def test_q4_k_m_without_llama_quantize_is_refused(tmp_path, tiny_gqa, monkeypatch):
    monkeypatch.setenv("DISTILL_LLAMACPP_BIN", str(tmp_path / "nowhere"))
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DistillError, match="llama-quantize was not found.*build_llamacpp.sh"):
        export_gguf(tiny_gqa.path, tmp_path / "out.gguf", "q4_k_m")
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_export(tmp_path, tiny_gqa, capsys):
    from distill.cli import main

    out = tmp_path / "tiny.gguf"
    assert (
        main(["export", "--format", "gguf", "--quant", "q8_0", str(tiny_gqa.path), str(out)]) == 0
    )
    assert out.is_file() and "sha256" in capsys.readouterr().out
    bad = _copy(tiny_gqa.path, tmp_path / "m", model_type="gpt2")
    assert main(["export", "--quant", "f16", str(bad), str(tmp_path / "bad.gguf")]) == 2
    assert "model_type='gpt2'" in capsys.readouterr().err


def test_q4_k_m_through_llama_quantize(tmp_path, tiny_gqa):
    """Runs where llama.cpp's tools are built (bash benchmarks/build_llamacpp.sh)."""
    from gguf import GGUFReader, LlamaFileType

    from distill.runtime.llamacpp import find_tool

    try:
        find_tool("llama-quantize")
    except DistillError:
        pytest.skip("llama-quantize not built (bash benchmarks/build_llamacpp.sh)")
    out = export_gguf(tiny_gqa.path, tmp_path / "tiny-q4_k_m.gguf", "q4_k_m", threads=1)
    r = GGUFReader(str(out))
    assert r.fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q4_K_M
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-q4_k_m.gguf"]  # no temp left behind
