import json

import pytest

from distill.eval.config import EvaluateConfig
from distill.eval.stage import run

GEN = {"code_prompts": 1, "chat_prompts": 1, "text_prompts": 1, "max_new_tokens": 4}


@pytest.mark.timeout(120)
def test_evaluate_compares_models_to_teacher(stage_ctx, tiny_mha):
    ctx = stage_ctx(["evaluate"])
    ctx.artifacts["student"] = tiny_mha.path  # a different model with the same tokenizer
    result = run(ctx, EvaluateConfig(max_rows=4, batch_size=2, speed_rows=2, generation=GEN))
    report = json.loads((ctx.workdir / "report.json").read_text())
    by = {m["model"]: m for m in report["models"]}
    assert set(by) == {"teacher", "student"}
    assert "agreement" not in by["teacher"]
    assert 0 <= by["student"]["agreement"] <= 1 and by["student"]["kl_to_reference"] > 0
    assert result.metrics["student.perplexity"] == pytest.approx(by["student"]["perplexity"])
    # the teacher compared with itself would agree fully: check the metric is computed, not assumed
    ctx.artifacts["student"] = ctx.teacher.path
    again = run(
        ctx, EvaluateConfig(max_rows=4, batch_size=2, speed_rows=2, generation=GEN)
    ).summary["models"]
    s = {m["model"]: m for m in again}["student"]
    assert s["agreement"] == 1.0 and s["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.timeout(120)
def test_evaluate_fails_on_planted_contamination(stage_ctx):
    from distill.config.base import DistillError
    from distill.data.packed import write_rows

    ctx = stage_ctx(["evaluate"])
    write_rows(ctx.corpus.heldout_path, ctx.corpus.train()[:4])  # held-out copied from train
    with pytest.raises(DistillError, match="corpus.heldout"):
        run(ctx, EvaluateConfig(max_rows=4, batch_size=2, speed_rows=2, generation=GEN))
    assert not (ctx.workdir / "report.json").exists()
