"""smoke-seqkd end to end through the CLI: generate → sft → evaluate, and its MLflow lineage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines" / "configs" / "smoke-seqkd.yaml"


@pytest.mark.timeout(600)
def test_smoke_seqkd_pipeline(tmp_path):
    from mlflow import MlflowClient

    from distill.lineage.show import lineage
    from distill.models.loader import load_causal_lm
    from distill.seqkd.sft_data import read_sft_rows
    from distill.seqkd.store import read_generations, read_manifest

    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", str(CONFIG), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ.copy(),
        timeout=580,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = re.search(r"mlflow run: (\w+)", proc.stdout).group(1)

    gens = tmp_path / "generations"
    manifest = read_manifest(gens)
    rows = read_generations(gens)
    assert manifest["prompts"]["count"] == 16 and len(rows) == 32 == manifest["rows"]
    assert manifest["decoding"]["n"] == 2 and manifest["teacher"]["kind"] == "local"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["model"] for m in report["models"]] == ["teacher", "student"]

    info = lineage(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id)
    assert [s["stage"] for s in info["stages"]] == ["generate", "sft", "evaluate"]
    assert all(s["status"] == "FINISHED" for s in info["stages"])
    by = {s["stage"]: s for s in info["stages"]}
    assert "generations" in by["generate"]["outputs"] and "student" in by["sft"]["outputs"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    sft = client.get_run(by["sft"]["run_id"])
    assert sft.data.tags["trainer"] == "ray_train"
    assert sft.data.tags["input.generations.uri"] == str(gens)
    assert sft.data.tags["output.student.uri"] == str(tmp_path / "student")
    m = sft.data.metrics
    assert m["filter.total.in"] > 0 and m["filter.dedup.kept"] == m["filter.total.kept"] > 0
    assert m["heldout.completion_loss_after"] < m["heldout.completion_loss_before"]
    assert "train/loss" in m  # the Ray Train loop's per-step metrics reach the stage run

    # the sft stage: every filter accounts for its rows (disabled ones are not reported), the
    # training set it wrote is the one it reports, the student loads alone, progress was shown
    stage = json.loads((tmp_path / "stages" / "sft.json").read_text())["metrics"]
    assert stage["filter.total.in"] == stage["filter.quality.in"] <= len(rows)
    assert "filter.syntax.in" not in stage
    for name in ("quality", "length", "logprob", "dedup"):
        kept, dropped = stage[f"filter.{name}.kept"], stage[f"filter.{name}.dropped"]
        assert kept + dropped == stage[f"filter.{name}.in"], name
    assert stage["steps"] == 8 and stage["data.label_tokens"] > 0
    assert "contamination.max_rate" in stage
    train = read_sft_rows(tmp_path / "sft_data" / "train.parquet")
    assert len(train["input_ids"]) == stage["data.rows"]
    student = tmp_path / "student"
    assert (student / "config.json").exists() and (student / "tokenizer.json").exists()
    load_causal_lm(student)
    assert re.search(r"^\[distill\]   generate: 32/32 completions, tok_s", proc.stdout, re.M)
    assert re.search(r"^\[distill\]   sft: (\d+)/\1 steps, loss [\d.]+, tok_s", proc.stdout, re.M)
