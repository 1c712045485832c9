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
    from distill.train.fakequant import load_fake_quant, pack_gptq

    rows = tiny_rows[16:20, :32]
    fq = load_fake_quant(tiny_gptq)
    ref = _logits(load_quantized(tiny_gptq, device="cpu"), rows)
    assert torch.allclose(_logits(fq, rows), ref, atol=2e-2)

    g = torch.Generator().manual_seed(0)
    target = torch.log_softmax(ref + torch.randn(ref.shape, generator=g), -1)  # a fixed target
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


def test_recovery_without_a_store_is_refused_before_any_work(stage_ctx):
    from distill.config.base import DistillError
    from distill.quant.stage import run

    quant = {"group_size": 32, "calib_rows": 8, "calib_seq_len": 64, "device": "cpu"}
    ctx = stage_ctx(["quantize"], quantize={**quant, "recover": {"steps": 2}})
    fix = r"quantize.recover.steps > 0 .*add the soft_labels stage .*quantize.recover.steps: 0"
    with pytest.raises(DistillError, match=fix):
        run(ctx, ctx.config.quantize)
    ctx.artifacts["soft_labels"] = ctx.workdir / "labels"  # a path with no store in it
    with pytest.raises(DistillError, match="labels holds no manifest.json"):
        run(ctx, ctx.config.quantize)
    assert not (ctx.workdir / "student-int4").exists()


@pytest.mark.slow
def test_stage_recovers_through_the_distill_loop_and_exports(stage_ctx, ray_local):
    """quantize with recover + engine: store -> GPTQ int4 -> recovered int4 -> CPU engine."""
    pytest.importorskip("onnxruntime_genai")
    from mlflow import MlflowClient

    from distill.labels.local import write_local_store
    from distill.models.hashing import weights_sha256
    from distill.quant.stage import run

    quant = {"group_size": 32, "calib_rows": 8, "calib_seq_len": 64, "eval_rows": 4}
    recover = {"steps": 2, "num_workers": 1, "zero_stage": 0, "batch_size": 2, "lr": 1e-4}
    ctx = stage_ctx(
        ["quantize"],
        quantize={**quant, "device": "cpu", "recover": recover, "engine": {"kind": "ort-genai"}},
    )
    labels = ctx.workdir / "labels"
    write_local_store(labels, ctx.teacher.path, ctx.corpus.train(), 8, batch_size=8)
    ctx.artifacts["soft_labels"] = labels
    res = run(ctx, ctx.config.quantize)
    out = res.outputs
    assert set(out) == {"int4", "int4_gptq", "int4_cpu"}
    assert out["int4"].name == "student-int4-recovered"
    assert weights_sha256(out["int4"]) != weights_sha256(out["int4_gptq"])
    m = res.metrics
    for name in ("gptq", "recovered", "engine"):
        assert m[f"{name}.perplexity"] > 1
    assert m["recover.tokens"] > 0
    manifest = (out["int4_cpu"] / "distill_engine.json").read_text()
    assert str(out["int4"]) in manifest  # the engine is built from the recovered checkpoint
    tags = MlflowClient(ctx.tracker.tracking_uri).get_run(ctx.tracker.run_id).data.tags
    assert tags["output.int4_gptq.uri"] == str(out["int4_gptq"])
    assert tags["input.soft_labels.uri"] == str(labels)
    assert tags["output.int4_cpu.uri"] == str(out["int4_cpu"])


def test_recovery_against_the_fp_model_needs_no_store(stage_ctx):
    from distill.quant.config import QuantizeConfig
    from distill.quant.recover import check_store, distill_config

    ctx = stage_ctx(["quantize"])
    cfg = QuantizeConfig(group_size=32, recover={"steps": 2, "target": "fp"})
    assert check_store(ctx, cfg) is None
    assert distill_config(cfg).mode == "online"


@pytest.mark.slow
def test_recover_against_the_fp_model_through_the_loop(stage_ctx, ray_local, tiny_gptq, tiny_gqa):
    """recover.target: fp: the fp model runs live as the teacher (self-distillation)."""
    from mlflow import MlflowClient

    from distill.models.hashing import weights_sha256
    from distill.quant.config import QuantizeConfig
    from distill.quant.recover import recover

    ctx = stage_ctx(["quantize"])
    rec = {"steps": 2, "target": "fp", "num_workers": 1, "zero_stage": 0, "batch_size": 2}
    cfg = QuantizeConfig(group_size=32, device="cpu", recover={**rec, "lr": 1e-4})
    out, m = recover(ctx, cfg, tiny_gptq, output_name="x-recovered", fp_dir=tiny_gqa.path)
    assert out.name == "x-recovered" and m["recover.tokens"] > 0
    assert weights_sha256(out) != weights_sha256(tiny_gptq)
    tags = MlflowClient(ctx.tracker.tracking_uri).get_run(ctx.tracker.run_id).data.tags
    assert tags["input.recover_target.uri"] == str(tiny_gqa.path)
