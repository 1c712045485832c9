"""Model refs from the MLflow registry and the deployment record (no Ray, SQLite MLflow)."""

import pytest

from distill.serve.app import record_deployment, resolve_model
from distill.serve.config import ServeArgs

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def registered(tmp_path, tiny_mha):
    from mlflow import MlflowClient

    from distill.lineage.registry import register_checkpoint
    from distill.lineage.tracker import StageRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "mlartifacts"))
    run = client.create_run(exp)
    version = register_checkpoint(
        StageRun(run.info.run_id, uri, "distill"), tiny_mha.path, "tiny-student"
    )
    return uri, version, run.info.run_id


def test_registered_version_resolves_and_deployment_is_recorded(registered, tiny_gqa, tiny_mha):
    from mlflow import MlflowClient

    uri, version, source_run = registered
    ref = f"models:/tiny-student/{version}"
    path, tags = resolve_model(ref, uri)
    assert (path / "config.json").read_bytes() == (tiny_mha.path / "config.json").read_bytes()
    assert tags == {"registered": ref, "source_run_id": source_run}
    assert resolve_model(ref, uri)[0] == path  # cached: no second download
    args = ServeArgs(
        student={"model": ref}, teacher={"model": str(tiny_gqa.path)}, tracking_uri=uri
    )
    resolved = {"student": (path, tags), "teacher": resolve_model(str(tiny_gqa.path))}
    run = MlflowClient(uri).get_run(record_deployment(args, resolved))
    assert run.data.tags["student.registered"] == ref
    assert run.data.tags["student.source_run_id"] == source_run
    assert run.data.tags["teacher.path"] == str(tiny_gqa.path)
    assert run.data.tags["teacher.weights_sha256"] == tiny_gqa.weights_sha256
    assert run.data.params["cascade.threshold"] == "0.5"
