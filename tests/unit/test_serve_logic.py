"""Pure serve logic without Ray: confidence scoring, fallback decision, cascade, schemas, stats."""

import asyncio
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.serve.cascade import RequestFailed, run_cascade
from distill.serve.confidence import confidence, decide, should_fall_back
from distill.serve.config import CascadeConfig, ServeArgs
from distill.serve.schemas import ChatCompletionRequest, CompletionRequest, validation_message
from distill.serve.stats import Stats, percentile

REPO = Path(__file__).resolve().parents[2]


def test_confidence_uniform_and_peaked():
    vocab, steps = 50, 4
    ids = torch.tensor([3, 1, 4, 1])
    uniform = torch.zeros(steps, vocab)
    assert confidence(uniform, ids, "mean_logprob") == pytest.approx(1 / vocab)
    assert confidence(uniform, ids, "min_prob") == pytest.approx(1 / vocab)
    assert confidence(uniform, ids, "entropy") == pytest.approx(0.0, abs=1e-6)
    peaked = torch.full((steps, vocab), -30.0)
    peaked[torch.arange(steps), ids] = 30.0
    for s in ("mean_logprob", "min_prob", "entropy"):
        assert confidence(peaked, ids, s) == pytest.approx(1.0, abs=1e-4)


def test_confidence_min_is_below_mean_and_matches_manual():
    torch.manual_seed(0)
    logits = torch.randn(6, 20) * 3
    ids = torch.randint(0, 20, (6,))
    logp = torch.log_softmax(logits, -1)[torch.arange(6), ids]
    assert confidence(logits, ids, "mean_logprob") == pytest.approx(math.exp(logp.mean().item()))
    assert confidence(logits, ids, "min_prob") == pytest.approx(math.exp(logp.min().item()))
    assert confidence(logits, ids, "min_prob") <= confidence(logits, ids, "mean_logprob")
    assert 0 < confidence(logits, ids, "entropy") < 1


def test_confidence_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown scoring"):
        confidence(torch.zeros(2, 5), torch.tensor([0, 1]), "vibes")
    with pytest.raises(ValueError, match="expected logits"):
        confidence(torch.zeros(2, 5), torch.tensor([0]), "min_prob")
    assert confidence(torch.zeros(0, 5), torch.tensor([], dtype=torch.long), "min_prob") == 1.0


def test_fallback_decision_thresholds():
    zero, one = CascadeConfig(threshold=0.0), CascadeConfig(threshold=1.0)
    for c in (0.0, 0.3, 1.0):
        assert not should_fall_back(c, zero)
        assert should_fall_back(c, one)
    mid = CascadeConfig(threshold=0.5)
    assert decide(0.4, mid).answered_by == "teacher" and decide(0.4, mid).reason == "low_confidence"
    assert decide(0.6, mid).answered_by == "student"
    off = CascadeConfig(threshold=1.0, fallback=False)
    assert decide(0.0, off).reason == "fallback_disabled"
    assert decide(None, mid, student_failed=True).reason == "student_error"
    with pytest.raises(RuntimeError):
        decide(None, CascadeConfig(fallback_on_error=False), student_failed=True)


def _gen(text, conf):
    return {
        "text": text,
        "scores": {"mean_logprob": conf, "min_prob": conf, "entropy": conf},
        "latency_ms": 1.0,
        "pieces": [text],
        "finish_reason": "length",
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }


def _run(route, student, teacher, **cfg):
    calls = []

    async def s():
        calls.append("student")
        return await student()

    async def t():
        calls.append("teacher")
        return await teacher()

    out = asyncio.run(run_cascade(route, s, t, CascadeConfig(**cfg)))
    return out, calls


def _ok(text, conf=0.5):
    async def f():
        return {"ok": _gen(text, conf)}

    return f


def test_cascade_routes_and_fallback():
    out, calls = _run("cascade", _ok("s", 0.9), _ok("t"), threshold=0.5)
    assert out.generation["text"] == "s" and calls == ["student"] and not out.info["fallback"]
    out, calls = _run("cascade", _ok("s", 0.1), _ok("t"), threshold=0.5)
    assert out.generation["text"] == "t" and calls == ["student", "teacher"]
    assert (
        out.info["fallback"]
        and out.info["confidence"] == 0.1
        and set(out.model_ms) == {"student", "teacher"}
    )
    out, calls = _run("teacher", _ok("s"), _ok("t"))
    assert calls == ["teacher"] and out.info["answered_by"] == "teacher"
    out, calls = _run("student", _ok("s", 0.0), _ok("t"), threshold=1.0)
    assert calls == ["student"] and out.info["answered_by"] == "student"


def test_cascade_student_error_timeout_and_bad_request():
    async def boom():
        raise RuntimeError("replica died")

    async def slow():
        await asyncio.sleep(5)
        return {"ok": _gen("late", 1.0)}

    async def too_long():
        return {"error": "prompt is 900 tokens", "status": 400}

    out, _ = _run("cascade", boom, _ok("t"))
    assert out.info["reason"] == "student_error" and out.generation["text"] == "t"
    out, _ = _run("cascade", slow, _ok("t"), student_timeout_s=0.05)
    assert out.info["reason"] == "student_error" and out.info["confidence"] is None
    with pytest.raises(RequestFailed) as e:
        _run("cascade", boom, _ok("t"), fallback_on_error=False)
    assert e.value.status == 503
    with pytest.raises(RequestFailed) as e:  # a bad request is not retried on the teacher
        _run("cascade", too_long, _ok("t"))
    assert e.value.status == 400 and "900 tokens" in e.value.message


def test_request_schemas():
    r = CompletionRequest(model="m", prompt=["hello"], stop="\n")
    assert r.prompt == "hello" and r.stop_list() == ["\n"]
    for bad in (
        {"model": "m", "prompt": "  "},
        {"model": "m", "prompt": ["a", "b"]},
        {"model": "m", "prompt": "x", "max_tokens": 0},
        {"model": "m", "prompt": "x", "n": 2},
        {"model": "m", "prompt": "x", "temperature": 3},
        {"model": "m", "prompt": "x", "max_token": 3},
        {"model": "m", "prompt": "x", "stop": ["a"] * 5},
        {"prompt": "x"},
    ):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate(bad)
    c = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=7
    )
    assert c.max_tokens == 7
    with pytest.raises(ValidationError, match="messages are empty"):
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": " "}])
    try:
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_token": 3})
    except ValidationError as e:
        assert validation_message(e.errors()) == "max_token: unknown field"


def test_serve_args_validation():
    base = {"student": {"model": "s"}, "teacher": {"model": "t"}}
    args = ServeArgs.model_validate(base)
    assert args.model_names() == {
        "distill": "cascade",
        "distill-student": "student",
        "distill-teacher": "teacher",
    }
    bad = [
        ({"student": {"model": "models:/x/1"}}, "needs tracking_uri"),
        ({"student": {"model": "models:/x"}}, "models:/NAME/VERSION"),
        ({"teacher": {"model": "t", "device": "cuda"}}, "num_gpus > 0"),
        ({"default_max_tokens": 300}, "exceeds max_tokens_limit"),
        ({"max_tokens_limit": 4096, "context_limit": 2048}, "must be below context_limit"),
        ({"cascade": {"threshold": 1.5}}, "less than or equal to 1"),
        ({"cascade": {"scoring": "vibes"}}, "mean_logprob"),
        ({"bogus": 1}, "Extra inputs"),
    ]
    for patch, msg in bad:
        with pytest.raises(ValidationError, match=msg):
            ServeArgs.model_validate({**base, **patch})


def test_shipped_deploy_config_validates(tmp_path):
    from distill.serve.app import load_serve_config

    for path in sorted((REPO / "deploy").rglob("serve*.yaml")):
        cfg = load_serve_config(path)
        assert cfg["http_options"]["host"] == "127.0.0.1"
        assert isinstance(cfg["applications"][0]["args"], ServeArgs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "applications:\n- import_path: distill.serve.app:build_app\n"
        "  args: {student: {model: s}, teacher: {model: t}, cascade: {threshold: 2}}\n"
    )
    with pytest.raises(DistillError, match=r"applications\[0\].args: cascade.threshold"):
        load_serve_config(bad)


def test_resolve_model_missing_dir_says_run_demo(tmp_path):
    from distill.serve.app import resolve_model

    with pytest.raises(DistillError, match="distill run pipelines/configs/smollm2.yaml"):
        resolve_model(str(tmp_path / "nope"))


def test_stats_summary():
    assert percentile([], 50) is None and percentile([1, 2, 3, 4], 50) == 2.5
    s = Stats()
    s.record_answer("cascade", "teacher", "low_confidence", True, {"student": 5, "teacher": 9}, 20)
    s.record_answer("cascade", "student", "confident", False, {"student": 4}, 6)
    s.record_answer("teacher", "teacher", "pinned", False, {"teacher": 8}, 10)
    s.record_error(400)
    out = s.summary()
    assert out["fallback_rate"] == 0.5 and out["requests"] == 3
    assert out["status"] == {"200": 3, "400": 1}
    assert out["latency_ms"]["teacher"]["count"] == 2 and out["latency_ms"]["student"]["p50"] == 4.5


def test_resource_check_fails_before_deploying():
    from distill.serve.app import check_resources, required_resources

    args = ServeArgs.model_validate(
        {"student": {"model": "s", "num_cpus": 1, "replicas": 2}, "teacher": {"model": "t"}}
    )
    assert required_resources(args) == {"CPU": pytest.approx(3.1), "GPU": 0.0}
    check_resources(args, {"CPU": 4.0})
    with pytest.raises(DistillError, match="reserves 3.1 CPU .* has 2"):
        check_resources(args, {"CPU": 2.0})


def test_ray_typed_builder_validates_args(tiny_gqa, tiny_mha):
    """The path `serve run deploy/serve.yaml` takes: Ray validates args with ServeArgs."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from distill.serve.app import build_app

    args = {"student": {"model": str(tiny_mha.path)}, "teacher": {"model": str(tiny_gqa.path)}}
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    assert type(app).__name__ == "Application"
    with pytest.raises(ValidationError, match="threshold"):
        call_user_app_builder_with_args_if_necessary(
            build_app, {**args, "cascade": {"threshold": -1}}
        )
