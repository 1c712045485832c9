import os


def test_scoped_tracking_uri_does_not_leak_into_the_environment(monkeypatch):
    from distill.lineage.registry import scoped_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with scoped_tracking_uri("sqlite:////tmp/distill-scope-test.db"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("scope-test.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    with scoped_tracking_uri("sqlite:////tmp/distill-scope-test.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"


def test_registering_leaves_no_tracking_uri_behind(stage_ctx, tiny_gqa, monkeypatch):
    from distill.lineage.registry import register_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ctx = stage_ctx(["distill"])
    version = register_checkpoint(ctx.tracker, tiny_gqa.path, "leak-test", {"kind": "student"})
    assert version == "1"
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_registered_model_pins_installed_requirements_and_carries_the_code(
    stage_ctx, tiny_gqa, monkeypatch
):
    from importlib.metadata import version
    from pathlib import Path

    import mlflow
    from mlflow import MlflowClient

    from distill.lineage.registry import register_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ctx = stage_ctx(["distill"])
    v = register_checkpoint(ctx.tracker, tiny_gqa.path, "pin-test", {"kind": "student"})
    uri = ctx.tracker.tracking_uri
    source = MlflowClient(uri, registry_uri=uri).get_model_version_download_uri("pin-test", v)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri)

    reqs = (Path(local) / "requirements.txt").read_text().split()
    assert "distill" not in reqs and f"torch=={version('torch')}" in reqs
    assert f"transformers=={version('transformers')}" in reqs
    assert all("==" in r for r in reqs if not r.startswith("mlflow"))
    assert (Path(local) / "code" / "distill" / "eval" / "stage.py").exists()
