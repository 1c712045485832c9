"""Pure serve logic without Ray: confidence scoring, fallback decision, cascade, schemas, stats."""

import asyncio
import math
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from distill.confidence import confidence, score
from distill.config.base import DistillError
from distill.serve.cascade import ModelStream, RequestFailed, Timeouts, start_answer
from distill.serve.confidence import decide, should_fall_back
from distill.serve.config import CascadeConfig, ServeArgs
from distill.serve.engines.base import Chunk
from distill.serve.schemas import ChatCompletionRequest, CompletionRequest, validation_message
from distill.serve.stats import RequestRecord, Stats, percentile

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


def _stream(name, n=6, logprob=-0.1, fail=None, status=400, delay=0.0, log=None):
    """A fake model stream: ``n`` one-token chunks (token ids 100.., text 't0 t1 ...')."""

    async def gen(extra):
        if log is not None:
            log.append((name, extra))
        if fail == "error":
            raise RequestFailed(status, f"{name} refused")
        if fail == "crash":
            raise RuntimeError("replica died")
        start = len((extra or {}).get("continue_ids", []))
        for i in range(start, n):
            await asyncio.sleep(delay)
            yield Chunk(
                [100 + i], f"{name[0]}{i} ", [logprob], [0.5],
                finish_reason="length" if i == n - 1 else None, prompt_tokens=3,
            )  # fmt: skip

    def open_(extra):
        return ModelStream(name, gen(extra), Timeouts(first_token_s=1, total_s=5))

    return open_


def _answer(route, student, teacher, **cfg):
    async def run():
        ans = await start_answer(route, student, teacher, CascadeConfig(**cfg))
        chunks = [c async for c in ans.chunks()]
        await ans.close()
        return ans, "".join(c.text for c in chunks)

    return asyncio.run(run())


def test_confident_student_keeps_streaming_its_answer():
    log = []
    ans, text = _answer(
        "cascade", _stream("student", log=log), _stream("teacher", log=log),
        threshold=0.5, decide_after_tokens=2,
    )  # fmt: skip
    assert text == "s0 s1 s2 s3 s4 s5 " and [x[0] for x in log] == ["student"]
    info = ans.final_info()
    assert info["answered_by"] == "student" and not info["fallback"]
    assert info["confidence"] == pytest.approx(math.exp(-0.1))
    assert info["segments"] == [{"model": "student", "tokens": 6}]
    assert ans.usage() == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}


def test_unconfident_student_is_stopped_after_decide_after_tokens():
    log = []
    ans, text = _answer(
        "cascade", _stream("student", n=50, logprob=-5.0, log=log), _stream("teacher", log=log),
        threshold=0.5, decide_after_tokens=3,
    )  # fmt: skip
    assert text == "t0 t1 t2 t3 t4 t5 " and [x[0] for x in log] == ["student", "teacher"]
    info = ans.final_info()
    assert info["answered_by"] == "teacher" and info["fallback"]
    assert info["reason"] == "low_confidence" and info["discarded_tokens"] == 3
    assert set(info["latency_ms"]) == {"student", "teacher"}
    assert ans.opened[0].closed and ans.opened[0].tokens == 3  # cancelled early


def test_prefix_takeover_keeps_the_student_tokens():
    log = []
    ans, text = _answer(
        "cascade", _stream("student", n=50, logprob=-5.0, log=log), _stream("teacher", log=log),
        threshold=0.5, decide_after_tokens=2, takeover="prefix",
    )  # fmt: skip
    assert log[1] == ("teacher", {"continue_ids": [100, 101], "continue_emitted": 6})
    assert text == "s0 s1 t2 t3 t4 t5 "
    info = ans.final_info()
    assert info["segments"] == [
        {"model": "student", "tokens": 2},
        {"model": "teacher", "tokens": 4},
    ]
    assert info["discarded_tokens"] == 0 and ans.usage()["completion_tokens"] == 6


def test_pinned_routes_and_student_failures():
    log = []
    ans, text = _answer("teacher", _stream("student", log=log), _stream("teacher", log=log))
    assert text.startswith("t0") and log == [("teacher", None)]
    ans, _ = _answer("student", _stream("student", logprob=-3.0), _stream("teacher"), threshold=1)
    info = ans.final_info()
    assert info["answered_by"] == "student" and info["confidence"] == pytest.approx(math.exp(-3))
    for fail in ("crash", "slow"):
        student = _stream("student", fail=fail if fail == "crash" else None, delay=0.5)
        ans, text = _answer("cascade", student, _stream("teacher"), student_timeout_s=0.2)
        assert ans.info["reason"] == "student_error" and text.startswith("t0")
    with pytest.raises(RequestFailed) as e:  # a bad request is not retried on the teacher
        _answer("cascade", _stream("student", fail="error"), _stream("teacher"))
    assert e.value.status == 400
    with pytest.raises(RequestFailed) as e:
        _answer(
            "cascade", _stream("student", fail="crash"), _stream("teacher"),
            fallback_on_error=False,
        )  # fmt: skip
    assert e.value.status == 503
    with pytest.raises(RequestFailed, match="did not produce a first token"):
        _answer("teacher", _stream("student"), _stream("teacher", delay=2))


def test_request_schemas():
    r = CompletionRequest(model="m", prompt=["hello"], stop="\n")
    assert r.prompt == "hello" and r.stop_list() == ["\n"]
    for bad in (
        {"model": "m", "prompt": "  "},
        {"model": "m", "prompt": ["a", "b"]},
        {"model": "m", "prompt": "x", "max_tokens": 0},
        {"model": "m", "prompt": "x", "temperature": 3},
        {"model": "m", "prompt": "x", "max_token": 3},
        {"model": "m", "prompt": "x", "stop": ["a"] * 5},
        {"model": "m", "prompt": "x", "logprobs": 6},
        {"model": "m", "prompt": "x", "logit_bias": {"abc": 1}},
        {"model": "m", "prompt": "x", "logit_bias": {"5": 101}},
        {"model": "m", "prompt": "x", "stream_options": {"include_usage": True, "bogus": 1}},
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


def test_standard_openai_fields_are_accepted_or_named():
    chat = {
        "model": "m",
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "hi"}]}],
    }
    ok = ChatCompletionRequest.model_validate({
        **chat, "presence_penalty": 0.5, "frequency_penalty": 0.1, "logit_bias": {"7": -100},
        "logprobs": True, "top_logprobs": 3, "user": "u", "seed": 1, "n": 1,
        "response_format": {"type": "text"}, "stream": True,
        "stream_options": {"include_usage": True}, "metadata": {"a": "b"}, "store": False,
        "service_tier": "auto", "parallel_tool_calls": False, "tool_choice": "none",
    })  # fmt: skip
    assert ok.unsupported() is None and ok.want_logprobs() == (True, 3)
    assert ok.messages[0].for_template() == {"role": "system", "content": "hi"}
    cases = [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ]
    for patch, field in cases:
        assert ChatCompletionRequest.model_validate({**chat, **patch}).unsupported()[0] == field
    comp = {"model": "m", "prompt": "x"}
    assert CompletionRequest.model_validate({**comp, "logprobs": 2}).want_logprobs() == (True, 2)
    for patch, field in [
        ({"echo": True}, "echo"),
        ({"suffix": "s"}, "suffix"),
        ({"best_of": 3}, "best_of"),
    ]:
        assert CompletionRequest.model_validate({**comp, **patch}).unsupported()[0] == field


def test_formatter_logprobs_and_usage_only_when_asked():
    from distill.serve.sse import Formatter

    c = Chunk([5, 6], "ab", [-0.5, -1.0], [0.1, 0.2], tokens=["a", "b"],
              top=[[("a", -0.5), ("z", -2.0)], [("b", -1.0)]])  # fmt: skip
    chat = Formatter("chat", "id", "m", logprobs=True)
    block = chat.logprobs_block([c])["content"]
    assert block[0]["token"] == "a" and block[0]["bytes"] == [97]
    assert block[0]["top_logprobs"][1] == {"token": "z", "logprob": -2.0, "bytes": [122]}
    comp = Formatter("completion", "id", "m", logprobs=True)
    lp = comp.choice([c], "length")["logprobs"]
    assert lp["tokens"] == ["a", "b"] and lp["text_offset"] == [0, 1]
    assert lp["top_logprobs"][0] == {"a": -0.5, "z": -2.0}
    info = {"answered_by": "student"}
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    plain = Formatter("completion", "id", "m")
    assert plain.event(Chunk([1], "x", [-1.0], [0.0]))[:6] == "data: "
    without = list(plain.end("stop", info, usage, include_usage=False))
    assert len(without) == 2 and '"usage"' not in "".join(without)
    with_usage = list(plain.end("stop", info, usage, include_usage=True))
    assert '"choices":[],"usage"' in with_usage[1] and with_usage[-1] == "data: [DONE]\n\n"


def test_score_matches_logits_confidence():
    torch.manual_seed(1)
    logits = torch.randn(5, 30)
    ids = torch.randint(0, 30, (5,))
    logp = torch.log_softmax(logits, -1)
    lps = logp[torch.arange(5), ids].tolist()
    ents = (-(logp.exp() * logp).sum(-1) / math.log(30)).tolist()
    for s in ("mean_logprob", "min_prob", "entropy"):
        assert score(lps, ents, s) == pytest.approx(confidence(logits, ids, s), abs=1e-6)
    assert score([], [], "entropy") == 1.0


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
        ({"student": {"model": "s", "placement": "router", "replicas": 2}}, "router_replicas"),
        ({"student": {"model": "s", "placement": "gpu"}}, "'replica' or 'router'"),
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
    rec = RequestRecord
    s.record(rec("cascade", 200, False, "teacher", 0.1, True, "low_confidence", 20, 3,
                 model_ms={"student": 5, "teacher": 9}))  # fmt: skip
    s.record(rec("cascade", 200, True, "student", 0.9, False, "confident", 6, 2,
                 model_ms={"student": 4}))  # fmt: skip
    s.record(rec("teacher", 200, answered_by="teacher", reason="pinned", model_ms={"teacher": 8}))
    s.record(rec("-", 400, error="bad"))
    out = s.summary()
    assert out["fallback_rate"] == 0.5 and out["requests"] == 3
    assert out["status"] == {"200": 3, "400": 1}
    assert out["latency_ms"]["teacher"]["count"] == 2 and out["latency_ms"]["student"]["p50"] == 4.5
    assert out["latency_ms"]["ttft.cascade"]["count"] == 2


def test_resource_check_fails_before_deploying():
    from distill.serve.app import check_resources, required_resources, router_resources

    args = ServeArgs.model_validate(
        {"student": {"model": "s", "num_cpus": 1, "replicas": 2}, "teacher": {"model": "t"}}
    )
    assert required_resources(args) == {"CPU": pytest.approx(3.1), "GPU": 0.0}
    check_resources(args, {"CPU": 4.0})
    with pytest.raises(DistillError, match="reserves 3.1 CPU .* has 2"):
        check_resources(args, {"CPU": 2.0})
    # placement router: no Student replicas; each Router replica reserves the student's CPUs
    hosted = ServeArgs.model_validate(
        {
            "student": {"model": "s", "num_cpus": 0.95, "placement": "router"},
            "teacher": {"model": "t", "num_cpus": 0.95},
            "router_replicas": 2,
        }
    )
    assert router_resources(hosted) == {"num_cpus": pytest.approx(1.05), "num_gpus": 0.0}
    assert required_resources(hosted) == {"CPU": pytest.approx(3.05), "GPU": 0.0}


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


def test_serve_env_defaults_leave_a_users_value(monkeypatch):
    from distill.serve.config import apply_serve_env

    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    apply_serve_env()
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    apply_serve_env()
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"


def test_a_router_hosted_model_client_refuses_cancels_and_health_checks():
    """``placement: router``: LocalModelClient turns the host's refusals into RequestFailed and
    closes the host's generation when the Router stops reading early."""
    from distill.serve.client import LocalModelClient

    class Host:  # the ModelHost contract: generate / info / check_health / close
        def __init__(self) -> None:
            self.closed_streams, self.healthy, self.closed = 0, True, False

        async def generate(self, payload):
            if payload["prompt"] in ("long", "busy"):
                status = 400 if payload["prompt"] == "long" else 503
                yield {"error": f"refused: {payload['prompt']}", "status": status}
                return
            try:
                for i in range(5):
                    yield Chunk(
                        [i], f"t{i}", [-0.1], [0.5], finish_reason="length" if i == 4 else None
                    )
            finally:
                self.closed_streams += 1

        def info(self):
            return {"role": "student", "engine": "fake"}

        def check_health(self) -> None:
            if not self.healthy:
                raise RuntimeError("engine loop died")

        def close(self) -> None:
            self.closed = True

    host = Host()
    client = LocalModelClient(host, "student")

    async def main() -> None:
        for prompt, status in (("long", 400), ("busy", 503)):
            with pytest.raises(RequestFailed) as e:
                async for _ in client.open({"prompt": prompt}):
                    pass
            assert e.value.status == status and prompt in e.value.message
        whole = [c async for c in client.open({"prompt": "ok"})]
        assert [c.token_ids[0] for c in whole] == [0, 1, 2, 3, 4] and host.closed_streams == 1
        gen = client.open({"prompt": "ok"})
        assert (await anext(gen)).token_ids == [0]
        await gen.aclose()  # the client went away after one chunk
        assert host.closed_streams == 2
        assert (await client.info())["engine"] == "fake"

    asyncio.run(main())
    client.check_health()
    host.healthy = False
    with pytest.raises(RuntimeError, match="engine loop died"):
        client.check_health()
    client.close()
    assert host.closed
