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
