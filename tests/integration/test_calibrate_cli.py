"""``distill calibrate`` on tiny models: replay, choice, MLflow run, registry tags, serve config."""

import json

import pytest
import yaml

from distill.cli import main

pytestmark = pytest.mark.timeout(300)


def test_calibrate_writes_a_calibrated_serve_config(
    tmp_path, tiny_gqa, tiny_mha, tiny_rows, capsys
):
    from mlflow import MlflowClient

    from distill.data.packed import write_rows
    from distill.lineage.registry import register_checkpoint
    from distill.lineage.tracker import StageRun
    from distill.serve.app import load_serve_config

    heldout = tmp_path / "heldout.parquet"
    write_rows(heldout, tiny_rows[:8])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "mlartifacts"))
    src_run = client.create_run(exp).info.run_id
    version = register_checkpoint(StageRun(src_run, uri, "t"), tiny_mha.path, "tiny-student")
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "import_path": "distill.serve.app:build_app",
                        "args": {"student": {"model": "s"}, "teacher": {"model": "t"}},
                    }
                ]
            }
        )
    )
    out = tmp_path / "cal"
    code = main(
        ["calibrate", "--student", str(tiny_mha.path), "--teacher", str(tiny_gqa.path),
         "--prompts", str(heldout), "--out", str(out), "--target-agreement", "0.9",
         "--num-prompts", "8", "--prompt-tokens", "16", "--max-tokens", "6",
         "--decide-after-tokens", "2,3", "--quantiles", "0.2,0.5", "--threads", "1", "--batch-size", "2", "--serve-config", str(serve_cfg),
         "--tracking-uri", uri, "--register", f"models:/tiny-student/{version}"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "calibration.json").read_text())
    # (3 scorings + the quantile one at 2 q) x 2 decision points, each also checked on its own
    assert report["prompts"] == 8 and len(report["curves"]) == 10
    assert set(report["candidates"]) == set(report["curves"])
    assert "quantile:0.2@2" in report["curves"]
    assert all("heldout" in c and "fit" in c for c in report["candidates"].values())
    choice = report["choice"]
    assert choice["met"] and choice["agreement"] >= 0.9
    assert (out / "calibration.png").stat().st_size > 0
    cfg = load_serve_config(out / "serve.yaml")
    cascade = cfg["applications"][0]["args"].cascade
    assert cascade.threshold == pytest.approx(choice["threshold"], abs=1e-6)
    assert cascade.scoring == choice["scoring"] and cascade.decide_after_tokens in (2, 3)
    if choice["scoring"] == "quantile":
        assert cascade.quantile == choice["quantile"] and choice["quantile"] in (0.2, 0.5)
    assert cascade.decide_after_tokens == choice["decide_after_tokens"]
    assert cascade.calibration == f"mlflow run {report['mlflow_run_id']}"
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["fit.agreement"] >= 0.9 and "heldout.fallback_rate" in run.data.metrics
    tags = client.get_model_version("tiny-student", version).tags
    assert tags["distill.cascade.scoring"] == choice["scoring"]
    printed = capsys.readouterr().out
    assert "held-out check on 4 prompts" in printed and "serve config:" in printed
    assert main(["calibrate", "--student", "x", "--prompts", "y", "--out", "z",
                 "--max-fallback", "2"]) == 2  # fmt: skip
