"""The ``prune`` stage on the tiny GQA teacher: checkpoint, metrics, MLflow lineage, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from distill.config.base import DistillError
from distill.console import Progress
from distill.prune.stage import run


@pytest.mark.timeout(180)
def test_prune_stage_writes_a_plain_checkpoint_and_logs(stage_ctx, tmp_path_factory):
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.models.hashing import weights_sha256
    from distill.models.loader import count_parameters

    section = {"policy": "width", "target_params": 0.6, "calib_rows": 8, "eval_rows": 4}
    ctx = stage_ctx(["prune"], prune=section)
    ctx.progress = Progress(console := io.StringIO())  # not a terminal: plain lines
    result = run(ctx, ctx.config.prune)
    assert "[distill]   prune: 4/4 steps, phase done" in console.getvalue()

    out = result.outputs["pruned"]
    assert out == ctx.workdir / "pruned"
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok("def f(): pass")["input_ids"]
    assert not [p for p in ctx.workdir.iterdir() if p.name.startswith(".pruned")]  # no temp left

    m = result.metrics
    assert m["params_after"] == count_parameters(model)
    assert m["params_before"] == count_parameters(
        AutoModelForCausalLM.from_pretrained(ctx.teacher.path, local_files_only=True)
    )
    assert abs(m["ratio"] - 0.6) <= 0.02 * 0.6
    assert m["ppl_before"] > 1 and m["ppl_after"] > 1
    assert result.summary["shape"]["hidden_size"] == model.config.hidden_size

    client = MlflowClient(ctx.tracker.tracking_uri)
    data = client.get_run(ctx.tracker.run_id).data
    assert data.tags["output.pruned.sha256"] == weights_sha256(out)
    assert data.tags["input.model.sha256"] == ctx.teacher.weights_sha256
    assert data.params["plan.policy"] == "width"
    assert data.metrics["ppl_after"] == pytest.approx(m["ppl_after"])
    names = {a.path for a in client.list_artifacts(ctx.tracker.run_id)}
    assert {"importance.json", "importance.png", "plan.json"} <= names
    local = client.download_artifacts(
        ctx.tracker.run_id, "importance.json", str(tmp_path_factory.mktemp("art"))
    )
    scores = json.loads(Path(local).read_text())
    assert len(scores["block"]) == 4 and len(scores["hidden"]) == 64


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "section, fragment",
    [
        ({"shape": {"num_key_value_heads": 3}}, "allowed 1..2"),
        ({"shape": {"hidden_size": 96}}, "up to 64"),
        ({"policy": "depth", "target_params": 0.3}, "closest ratio"),
    ],
)
def test_prune_stage_refuses_impossible_targets_before_work(stage_ctx, section, fragment):
    ctx = stage_ctx(["prune"], prune=section)
    with pytest.raises(DistillError, match=fragment):
        run(ctx, ctx.config.prune)
    assert not (ctx.workdir / "pruned").exists()
