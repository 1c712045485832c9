def test_stage_ctx_fixture(stage_ctx):
    ctx = stage_ctx(["evaluate"])
    assert ctx.corpus.train().shape == (16, 64)
    assert ctx.latest_model() == ("teacher", ctx.teacher.path)
    ctx.tracker.log_metrics({"x": 1.0})
    ctx.tracker.log_params({"a": {"b": 1}})
    ctx.tracker.record_output("thing", ctx.workdir, "abc")
