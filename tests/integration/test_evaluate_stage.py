import json

import pytest

from distill.eval.config import EvaluateConfig
from distill.eval.stage import run

GEN = {"code_prompts": 1, "chat_prompts": 1, "text_prompts": 1, "max_new_tokens": 4}
SPEED = {"new_tokens": 4, "repeats": 1}


@pytest.mark.timeout(120)
def test_evaluate_compares_models_to_teacher(stage_ctx, tiny_mha):
    ctx = stage_ctx(["evaluate"])
    ctx.artifacts["student"] = tiny_mha.path  # a different model with the same tokenizer
    result = run(ctx, EvaluateConfig(max_rows=4, batch_size=2, speed=SPEED, generation=GEN))
    report = json.loads((ctx.workdir / "report.json").read_text())
    by = {m["model"]: m for m in report["models"]}
    assert set(by) == {"teacher", "student"}
    assert "agreement" not in by["teacher"]
    assert 0 <= by["student"]["agreement"] <= 1 and by["student"]["kl_to_reference"] > 0
    assert result.metrics["student.perplexity"] == pytest.approx(by["student"]["perplexity"])
    for m in by.values():  # speed in the runtime that serves each model
        assert m["prefill_tps"] > 0 and m["decode_b1_tps"] > 0 and m["decode_b8_tps"] > 0
    assert (
        report["speed"]["new_tokens"] == 4
        and "decode tok/s b1" in (ctx.workdir / "report.md").read_text()
    )
    # the teacher compared with itself would agree fully: check the metric is computed, not assumed
    ctx.artifacts["student"] = ctx.teacher.path
    again = run(ctx, EvaluateConfig(max_rows=4, batch_size=2, speed=SPEED, generation=GEN)).summary[
        "models"
    ]
    s = {m["model"]: m for m in again}["student"]
    assert s["agreement"] == 1.0 and s["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.timeout(120)
def test_evaluate_fails_on_planted_contamination(stage_ctx):
    from distill.config.base import DistillError
    from distill.data.packed import write_rows

    ctx = stage_ctx(["evaluate"])
    write_rows(ctx.corpus.heldout_path, ctx.corpus.train()[:4])  # held-out copied from train
    with pytest.raises(DistillError, match="corpus.heldout"):
        run(ctx, EvaluateConfig(max_rows=4, batch_size=2, speed=SPEED, generation=GEN))
    assert not (ctx.workdir / "report.json").exists()


@pytest.mark.timeout(120)
def test_a_model_whose_speed_cannot_be_measured_says_why_and_the_run_goes_on(
    stage_ctx, tiny_mha, monkeypatch
):
    import distill.eval.speed as speed

    real = speed.model_timers

    def flaky(model, new_tokens):
        if getattr(model.config, "num_key_value_heads", 0) == 4:  # the MHA student only
            raise RuntimeError("this runtime cannot decode the artifact")
        return real(model, new_tokens)

    monkeypatch.setattr(speed, "model_timers", flaky)
    ctx = stage_ctx(["evaluate"])
    ctx.artifacts["student"] = tiny_mha.path
    report = run(ctx, EvaluateConfig(max_rows=4, batch_size=2, speed=SPEED, generation=GEN)).summary
    by = {m["model"]: m for m in report["models"]}
    assert "decode_b1_tps" not in by["student"] and by["teacher"]["decode_b1_tps"] > 0
    assert by["student"]["speed_error"] == "RuntimeError: this runtime cannot decode the artifact"
    assert "no speed figures: RuntimeError" in (ctx.workdir / "report.md").read_text()
