"""The Serve app end to end on tiny models, through the real ``openai`` client on loopback.

Student = tiny MHA Llama, teacher = tiny GQA Llama (same tokenizer). Serve starts once per module.
"""

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_gqa, tiny_mha, tmp_path_factory):
    """``distill serve``'s entry point on a config file: serve.start(127.0.0.1, free port)."""
    import ray
    import yaml
    from ray import serve

    from distill.serve import run_from_config

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False)
    port = _free_port()
    log_dir = tmp_path_factory.mktemp("request-log")
    args = {
        "served_model_name": "tiny",
        "student": {"model": str(tiny_mha.path), "num_cpus": 0.5},
        "teacher": {"model": str(tiny_gqa.path), "num_cpus": 0.5},
        # threshold 0 (default 0.5) and the scoring reach the Router as its user_config
        "cascade": {"threshold": 0.0, "scoring": "min_prob"},
        "max_tokens_limit": 16,
        "default_max_tokens": 4,
        "context_limit": 64,
        # every answered request becomes a record at once (rows_per_file 1), prompts included
        "request_log": {"path": str(log_dir), "rows_per_file": 1, "include_prompts": True},
    }
    cfg = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "distill",
                "route_prefix": "/",
                "import_path": "distill.serve.app:build_app",
                "args": args,
            }
        ],
    }
    path = tmp_path_factory.mktemp("serve") / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    base = run_from_config(path, blocking=False)
    assert base == f"http://127.0.0.1:{port}"
    yield {"base": base, "log": log_dir}
    serve.shutdown()
    if started_ray:
        ray.shutdown()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _get(server, path):
    with urllib.request.urlopen(server["base"] + path, timeout=30) as r:
        return r.status, json.loads(r.read())


def _post(server, path, body: bytes):
    req = urllib.request.Request(
        server["base"] + path, data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_completions_plain_and_streamed(client):
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt="def add(a, b):", max_tokens=6, temperature=0
    )
    # the deploy config's threshold 0 (default 0.5) and scoring reach the Router: never falls back
    assert raw.headers["x-distill-model"] == "student"
    conf = float(raw.headers["x-distill-confidence"])
    r = raw.parse()
    info = r.model_extra["distill"]
    assert info["answered_by"] == "student" and info["confidence"] == pytest.approx(conf, abs=1e-5)
    assert info["scoring"] == "min_prob" and info["threshold"] == 0.0
    assert r.object == "text_completion" and r.usage.completion_tokens == 6
    assert r.choices[0].finish_reason == "length"
    chunks = list(
        client.completions.create(
            model="tiny", prompt="def add(a, b):", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].model_extra["distill"]["answered_by"] == "student"


def test_chat_plain_and_streamed(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    stream = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=5, temperature=0, stream=True
    )
    parts = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(parts) == text
    pinned = client.chat.completions.create(model="tiny-teacher", messages=msgs, max_tokens=5)
    assert pinned.model_extra["distill"]["answered_by"] == "teacher"


def test_models_health_and_stats(server):
    status, models = _get(server, "/v1/models")
    assert status == 200 and {m["id"] for m in models["data"]} == {
        "tiny",
        "tiny-student",
        "tiny-teacher",
    }
    status, health = _get(server, "/healthz")
    assert status == 200 and health["student"]["max_context"] == 64
    status, stats = _get(server, "/v1/stats")
    assert status == 200 and stats["requests"] >= 1 and "student" in stats["latency_ms"]
    assert stats["cascade"]["threshold"] == 0.0 and stats["cascade"]["scoring"] == "min_prob"


def test_threshold_one_always_falls_back_zero_never(server, client):
    for i in range(3):
        one = client.completions.create(
            model="tiny", prompt=f"x = {i}", max_tokens=3, extra_body={"distill": {"threshold": 1}}
        ).model_extra["distill"]
        assert one["answered_by"] == "teacher" and one["fallback"] and one["threshold"] == 1
        zero = client.completions.create(
            model="tiny", prompt=f"x = {i}", max_tokens=3, extra_body={"distill": {"threshold": 0}}
        ).model_extra["distill"]
        assert zero["answered_by"] == "student" and not zero["fallback"]
    _, stats = _get(server, "/v1/stats")
    assert stats["fallbacks"] >= 3 and 0 < stats["fallback_rate"] < 1


def test_router_logs_each_answered_request(server, client):
    from distill.monitor.log import read_request_log

    client.completions.create(
        model="tiny", prompt="y = 1", max_tokens=2, extra_body={"distill": {"threshold": 1}}
    )
    rows = read_request_log(server["log"]).to_pylist()
    last = rows[-1]
    assert last["route"] == "cascade" and last["answered_by"] == "teacher" and last["fallback"]
    assert last["prompt"] == "y = 1" and last["completion_tokens"] <= 2
    assert last["confidence"] is not None and last["teacher_ms"] > 0 and last["latency_ms"] > 0
    assert {r["route"] for r in rows} >= {"cascade"}


@pytest.mark.parametrize(
    "body,status,message",
    [
        (b'{"model": "tiny", "prompt": ', 400, "invalid JSON"),
        (b'{"model": "tiny"}', 422, "prompt: Field required"),
        (b'{"model": "tiny", "prompt": "x", "max_tokens": "many"}', 422, "max_tokens"),
        (b'{"model": "tiny", "prompt": ""}', 422, "prompt is empty"),
        (b'{"model": "tiny", "prompt": "x", "max_tokens": 17}', 400, "limit of 16"),
        (b'{"model": "gpt-9", "prompt": "x"}', 400, "unknown model 'gpt-9'"),
        (json.dumps({"model": "tiny", "prompt": "word " * 80}).encode(), 400, "context limit"),
        (b'{"model": "tiny", "prompt": "x", "temprature": 0}', 422, "temprature: unknown field"),
    ],
)
def test_bad_input_gets_4xx_and_server_keeps_serving(server, body, status, message):
    code, err = _post(server, "/v1/completions", body)
    assert code == status and message in err["error"]["message"], err
    ok, out = _post(
        server, "/v1/completions", b'{"model": "tiny", "prompt": "ok", "max_tokens": 2}'
    )
    assert ok == 200 and out["usage"]["completion_tokens"] == 2


def test_bad_chat_input(server):
    code, err = _post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": []}')
    assert code == 422 and "messages" in err["error"]["message"]
    body = b'{"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}'
    assert _post(server, "/v1/chat/completions", body)[0] == 422


def test_bounded_concurrent_load_has_no_errors(client):
    def worker(w: int) -> int:
        errors = 0
        for i in range(25):
            try:
                r = client.completions.create(model="tiny", prompt=f"{w}:{i}", max_tokens=2)
                errors += r.usage.completion_tokens != 2
            except Exception:
                errors += 1
        return errors

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 0
