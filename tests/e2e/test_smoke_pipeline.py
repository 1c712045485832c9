"""The smoke pipeline end to end through the CLI, then its MLflow lineage chain and a rerun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "configs" / "smoke.yaml"
# artifact produced by each stage, in pipeline order
PRODUCES = {
    "soft_labels": "soft_labels",
    "prune": "pruned",
    "distill": "student",
    "quantize": "int4",
    "teacher_int4": "teacher_int4",
}


def _distill(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


@pytest.mark.timeout(900)
def test_smoke_report_and_table(smoke_run):
    import yaml

    workdir, _, out = smoke_run
    report = json.loads((workdir / "report.json").read_text())
    from distill.eval.config import MODEL_ORDER

    stages = yaml.safe_load(SMOKE.read_text())["stages"]
    made = {"teacher"} | {PRODUCES[s] for s in stages if s in PRODUCES}
    assert [m["model"] for m in report["models"]] == [k for k in MODEL_ORDER if k in made]
    for m in report["models"]:
        assert m["perplexity"] > 1 and 0 <= m["next_token_accuracy"] <= 1
        assert m["parameters"] > 0 and m["size_bytes"] > 0
        assert m["decode_b1_tps"] > 0 and m["decode_b8_tps"] > 0 and m["prefill_tps"] > 0
        assert m["extra"]["rich"]["perplexity"] > 1  # the out-of-domain corpus
        if m["model"] != "teacher":
            assert 0 <= m["agreement"] <= 1 and m["kl_to_reference"] >= 0
    # the quantized teacher: same quantize path as the student, its own lineage branch
    t4 = next(m for m in report["models"] if m["model"] == "teacher_int4")
    assert t4["engine"] == "gptqmodel" and "teacher-int4" in t4["path"]
    assert "held-out ppl" in out and "distill results" in out and "decode tok/s b1" in out
    assert report["extra_corpora"]["rich"]["package"] == "rich"
    # generation checks, the release gate and the readable report
    gen = {m["model"]: m.get("generation") for m in report["models"]}
    assert all(g and 0 <= g["degenerate"] <= 1 for g in gen.values()), gen
    verdicts = report["gate"]["verdicts"]
    assert set(verdicts) == {"student", "int4", "teacher_int4"}
    for name, v in verdicts.items():
        assert f"gate: {name} {'PASS' if v['passed'] else 'FAIL'}" in out
        assert "dominated_by" in v and "in_budget" in v
        if v["dominated_by"]:
            assert f"DOMINATED by {v['dominated_by']}" in out
    assert "## Release gate" in (workdir / "report.md").read_text()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    champ = report["gate"]["champion"]
    if champ:  # the alias follows the verdict: set on the chosen candidate's version
        mv = client.get_model_version_by_alias("smoke-student", "champion")
        assert str(mv.version) == champ["version"] and verdicts[champ["model"]]["eligible"]
        assert mv.tags["kind"] == champ["model"]
    else:
        assert not any(v["eligible"] for v in verdicts.values())


@pytest.mark.timeout(900)
def test_smoke_lineage_chain(smoke_run):
    import yaml

    from distill.lineage.show import lineage

    workdir, run_id, _ = smoke_run
    info = lineage(f"sqlite:///{workdir / 'mlflow.db'}", run_id)
    stages = yaml.safe_load(SMOKE.read_text())["stages"]
    assert [s["stage"] for s in info["stages"]] == stages
    assert all(s["status"] == "FINISHED" for s in info["stages"])
    assert {"corpus", "corpus-heldout"} <= set(info["datasets"])
    produced: dict[str, str] = {}
    for s in info["stages"]:
        for key, uri in s["outputs"].items():
            produced[key] = uri
        if s["stage"] in PRODUCES:
            assert PRODUCES[s["stage"]] in s["outputs"], s
    # every stage after the first reads what an earlier stage wrote (the lineage chain)
    for s in info["stages"][1:]:
        if s["stage"] in ("distill", "quantize", "evaluate"):
            assert set(s["inputs"].values()) & set(produced.values()) or s["inputs"], s
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for s in info["stages"]:
        names = {a.path for a in client.list_artifacts(s["run_id"])}
        if s["stage"] == "distill":
            assert "training_curves.png" in names, names
        if s["stage"] == "evaluate":
            assert {"report.json", "report.md", "pareto.png"} <= names
    cli = _distill("lineage", run_id, "--workdir", str(workdir))
    assert cli.returncode == 0 and "evaluate" in cli.stdout


@pytest.mark.timeout(900)
def test_rerun_continues_from_finished_stages(smoke_copy):
    workdir = smoke_copy
    # a changed stage config invalidates that stage (and everything after it); the stages before
    # it continue from the first run (notebook 01 reruns a copy with nothing changed)
    proc = _distill("run", str(SMOKE), "--workdir", str(workdir), "--set", "evaluate.max_rows=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("soft_labels", "prune", "distill", "quantize", "teacher_int4"):
        assert f"stage {stage}: cached from run" in proc.stdout, stage
    assert "stage evaluate: running" in proc.stdout


@pytest.mark.timeout(900)
def test_a_sweep_reuses_the_finished_stages_of_another_run(smoke_run, tmp_path):
    from mlflow import MlflowClient

    base, _, _ = smoke_run
    other = tmp_path / "sweep"
    proc = _distill(
        "run", str(SMOKE), "--workdir", str(other), "--reuse-from", str(base),
        "--set", "evaluate.batch_size=4",  # not a setting any other test runs
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("soft_labels", "prune", "distill", "quantize", "teacher_int4"):
        assert re.search(rf"stage {stage}: cached from run \w+ in {base}", proc.stdout), stage
    assert "stage evaluate: running" in proc.stdout and not (other / "student").exists()
    report = json.loads((other / "report.json").read_text())
    assert all(str(base) in m["path"] for m in report["models"] if m["model"] != "teacher")
    # the reused models are versions of this run's registry, so the gate can alias them
    client = MlflowClient(f"sqlite:///{other / 'mlflow.db'}")
    kinds = {v.tags["kind"] for v in client.search_model_versions("name='smoke-student'")}
    assert {"student", "int4", "teacher_int4"} <= kinds


def test_bad_inputs_give_one_clear_message(tmp_path, capsys):
    # through a real process once: exit status 2, one line on stderr, no traceback
    proc = _distill(
        "run",
        str(SMOKE),
        "--workdir",
        str(tmp_path),
        "--set",
        "data.corpus.kind=files",
        "--set",
        f"data.corpus.paths=[{tmp_path / 'missing'}]",
    )
    assert (
        proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    )
    # the other bad inputs through the same entry point in this process (a DistillError that
    # escaped main() would fail the test with its traceback)
    from distill.cli import main

    def error(*args: str) -> str:
        assert main(["run", str(SMOKE), "--workdir", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("distill: error: ") and "Traceback" not in err, err
        return err

    assert "unreachable" in error(
        "--set", "tracking.uri=http://127.0.0.1:9", "--set", "tracking.timeout_s=2"
    )
    assert "license refused" in error("--set", "teacher.license=llama3")
    missing = tmp_path / "missing-corpus"
    err = error("--set", f"evaluate.extra_corpora=[{{name: ood, paths: [{missing}]}}]")
    assert "evaluate.extra_corpora[0] (ood)" in err
    assert "unknown metric 'perplexty'" in error("--set", "gate.vs_teacher.perplexty.max=2")
