"""The ``quantize`` stage through ``stage_ctx``: train-only calibration, checks before work, MLflow."""

from __future__ import annotations

import io

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.console import Progress
from distill.quant.config import QuantizeConfig

TINY = {"group_size": 32, "calib_rows": 8, "calib_seq_len": 64, "eval_rows": 8, "device": "cpu"}


def test_bad_group_size_fails_before_any_work(stage_ctx):
    ctx = stage_ctx(["quantize"], quantize={**TINY, "group_size": 128})
    from distill.quant.stage import run

    with pytest.raises(DistillError, match="largest valid group_size: 64"):
        run(ctx, ctx.config.quantize)
    assert not ctx.output_dir("student-int4").exists()


def test_gguf_q4_k_m_without_llama_quantize_fails_before_any_work(stage_ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_LLAMACPP_BIN", str(tmp_path / "nowhere"))
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ctx = stage_ctx(["quantize"], quantize={**TINY, "gguf": ["f16", "q4_k_m"]})
    from distill.quant.stage import run

    with pytest.raises(DistillError, match=r"quantize.gguf=\['f16', 'q4_k_m'\]: .*llama-quantize"):
        run(ctx, ctx.config.quantize)
    assert not ctx.output_dir("student-int4").exists()
    assert not ctx.output_dir("student-gguf").exists()


def test_calibration_never_uses_heldout_rows(stage_ctx, tiny_rows):
    from distill.data.packed import write_rows
    from distill.quant.checkpoint import calibration_rows
    from distill.quant.stage import run

    ctx = stage_ctx(["quantize"], quantize=TINY)
    cfg = ctx.config.quantize
    rows = calibration_rows(ctx.corpus, cfg)
    heldout = {r.tobytes() for r in ctx.corpus.heldout()}
    assert len(rows) and not any(r.tobytes() in heldout for r in rows)
    assert np.array_equal(rows, ctx.corpus.train(len(rows)))
    # a leaked held-out row in train is refused
    write_rows(ctx.corpus.train_path, np.concatenate([tiny_rows[16:18], tiny_rows[:6]]))
    with pytest.raises(DistillError, match="also appear in the held-out split"):
        run(ctx, cfg)
    # an empty train split is refused
    write_rows(ctx.corpus.train_path, np.zeros((0, 64), np.int32))
    with pytest.raises(DistillError, match="empty calibration set"):
        run(ctx, cfg)
    assert not ctx.output_dir("student-int4").exists()


@pytest.mark.timeout(600)
def test_stage_run_writes_int4_and_logs(stage_ctx):
    from mlflow import MlflowClient

    from distill.models.hashing import file_sha256
    from distill.quant.stage import run

    ctx = stage_ctx(["quantize"], quantize={**TINY, "gguf": ["f16"]})
    assert isinstance(ctx.config.quantize, QuantizeConfig)
    ctx.progress = Progress(console := io.StringIO())  # not a terminal: plain lines
    res = run(ctx, ctx.config.quantize)
    # the bar followed GPT-QModel's per-layer callback to the last of the 4 layers
    assert "[distill]   quantize: 4/4 layers, phase held-out eval" in console.getvalue()
    out = res.outputs["int4"]
    assert out == ctx.workdir / "student-int4" and (out / "model.safetensors").exists()
    m = res.metrics
    assert m["compression_ratio"] > 2 and m["quantize_seconds"] > 0 and m["peak_rss_mb"] > 0
    for name in ("fp", "gptq", "rtn"):
        assert m[f"{name}.perplexity"] > 1 and 0 <= m[f"{name}.next_token_accuracy"] <= 1
    run_data = MlflowClient(ctx.tracker.tracking_uri).get_run(ctx.tracker.run_id).data
    assert run_data.tags["output.int4.uri"] == str(out)
    assert run_data.tags["input.model.uri"] == str(ctx.teacher.path)
    assert run_data.params["quantize.group_size"] == "32"
    assert run_data.params["calib_split"] == "train"
    assert "gptq.perplexity" in run_data.metrics
    # the GGUF export of the fp source, with its lineage
    gguf = res.outputs["gguf_f16"]
    assert gguf == ctx.workdir / "student-gguf" / "teacher-f16.gguf" and gguf.is_file()
    assert run_data.tags["output.gguf_f16.uri"] == str(gguf)
    assert run_data.tags["output.gguf_f16.sha256"] == file_sha256(gguf)


def test_quantize_refuses_empty_or_short_calibration(tmp_path, tiny_gqa):
    from distill.quant.gptq import quantize

    cfg = QuantizeConfig(**TINY)
    for calib in ([], [[1, 2, 3], [4, 5]], np.zeros((0, 64), np.int32)):
        with pytest.raises(DistillError, match="empty calibration set"):
            quantize(tiny_gqa.path, cfg, calib, tmp_path / "int4")
    assert not (tmp_path / "int4").exists()


def test_teacher_calibration_continues_train_prefixes_with_the_teachers_samples(stage_ctx):
    from distill.quant.checkpoint import calibration_rows

    ctx = stage_ctx(["quantize"], quantize=TINY)
    cfg = ctx.config.quantize.model_copy(
        update={"calib_source": "teacher", "calib_rows": 4, "calib_seq_len": 24, "calib_prefix": 8}
    )
    rows = calibration_rows(ctx.corpus, cfg, ctx.teacher.path)
    train = ctx.corpus.train(4).reshape(-1)
    assert rows.shape == (4, 24)
    # each sample opens with a run of train tokens, then the teacher's continuation
    assert all(
        any(np.array_equal(r[:8], train[s : s + 8]) for s in range(len(train) - 7)) for r in rows
    )
    with pytest.raises(DistillError, match="needs the teacher's checkpoint"):
        calibration_rows(ctx.corpus, cfg)
    with pytest.raises(ValueError, match="calib_prefix"):
        QuantizeConfig(calib_source="teacher", calib_prefix=256, calib_seq_len=256)


def test_teacher_int4_also_exports_its_gptq_checkpoint_in_the_students_format(stage_ctx):
    pytest.importorskip("onnxruntime_genai")
    import json

    from mlflow import MlflowClient

    from distill.quant.teacher_stage import run

    fp_rtn = {"kind": "ort-genai", "source": "fp", "algo": "rtn", "block_size": 32}
    ctx = stage_ctx(
        ["quantize", "teacher_int4", "evaluate"],
        quantize={**TINY, "engine": {"kind": "ort-genai", "source": "gptq", "lm_head_bits": 8}},
        teacher_int4={"quantize": {**TINY, "engine": fp_rtn}},
    )
    res = run(ctx, ctx.config.teacher_int4)
    out = res.outputs
    assert out["teacher_int4"] == ctx.workdir / "teacher-int4-cpu"
    second = out["teacher_int4_gptq_cpu"]
    assert second == ctx.workdir / "teacher-int4-gptq-cpu"
    manifest = json.loads((second / "distill_engine.json").read_text())
    assert manifest["source_kind"] == "gptq" and manifest["source"] == str(out["teacher_int4_gptq"])
    assert manifest["lm_head_bits"] == 8  # the student's engine settings, not teacher_int4's
    first = json.loads((out["teacher_int4"] / "distill_engine.json").read_text())
    assert first["source_kind"].startswith("fp")
    assert res.metrics["gptq_engine_export_seconds"] > 0
    tags = MlflowClient(ctx.tracker.tracking_uri).get_run(ctx.tracker.run_id).data.tags
    assert tags["output.teacher_int4_gptq_cpu.uri"] == str(second)
