"""The Serve app end to end on tiny models, through the real ``openai`` client and raw HTTP.

Student = tiny MHA Llama in Student replicas, teacher = tiny GQA Llama hosted by the Router
replica itself (``placement: router``; same tokenizer). Serve starts once for the module; every
test shares it: batching, streaming, the early decision, limits, 503 on overload, cancellation on
disconnect (both placements), the OpenAI fields.
"""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.timeout(300)
MAX_INFLIGHT = 6


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
    batching = {"max_batch_size": 8, "max_waiting": 8, "batch_wait_ms": 10}
    args = {
        "served_model_name": "tiny",
        "student": {"model": str(tiny_mha.path), "num_cpus": 0.5, "batching": batching},
        "teacher": {
            "model": str(tiny_gqa.path),
            "num_cpus": 0.5,
            "batching": batching,
            "placement": "router",  # no Teacher replicas: the Router holds the engine
        },
        # threshold 0 (default 0.5) and the scoring reach the Router as its user_config
        "cascade": {"threshold": 0.0, "scoring": "min_prob", "decide_after_tokens": 2},
        "max_tokens_limit": 400,
        "default_max_tokens": 4,
        # every answered request becomes a record at once (rows_per_file 1), prompts included
        "request_log": {"path": str(log_dir), "rows_per_file": 1, "include_prompts": True},
        "context_limit": 512,
        "limits": {
            "max_inflight": MAX_INFLIGHT,
            "max_prompt_chars": 2000,
            "max_messages": 4,
            "max_stop_chars": 8,
            "max_request_bytes": 8192,
        },
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
    yield {"base": base, "log": log_dir, "port": port}
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
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _engine(server, role="student"):
    return _get(server, "/healthz")[1][role]["stats"]


def _open_stream(server, body: dict) -> tuple[http.client.HTTPConnection, list[str]]:
    """POST a streaming request and read its first SSE event; returns the open connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return conn, [resp.readline().decode()]


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
    assert all(c.usage is None for c in chunks)  # usage only with stream_options.include_usage


def test_chat_plain_and_streamed_with_usage(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    stream = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join((c.choices[0].delta.content or "") for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    pinned = client.chat.completions.create(model="tiny-teacher", messages=msgs, max_tokens=5)
    assert pinned.model_extra["distill"]["answered_by"] == "teacher"


def test_standard_openai_fields_and_logprobs(client, server):
    r = client.chat.completions.create(
        model="tiny-student", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"7": 1.0}, logprobs=True,
        top_logprobs=2, user="u-1", seed=3, n=1, response_format={"type": "text"},
        temperature=0.7, top_p=0.9,
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and len(content[0].top_logprobs) == 2
    assert all(t.logprob <= 0 for t in content)
    c = client.completions.create(model="tiny-student", prompt="x = ", max_tokens=3, logprobs=2)
    assert (
        len(c.choices[0].logprobs.tokens) == 3 and len(c.choices[0].logprobs.top_logprobs[0]) == 2
    )
    for body, field in [
        ({"n": 2}, "n"),
        ({"echo": True}, "echo"),
        ({"prompt": "x", "bogus_field": 1}, "bogus_field"),
    ]:
        payload = {"model": "tiny", "prompt": "x", **body}
        code, err, _ = _post(server, "/v1/completions", json.dumps(payload).encode())
        assert 400 <= code < 500 and field in err["error"]["message"], err
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="n=2"):
        client.completions.create(model="tiny", prompt="x", n=2)


def test_models_health_and_stats(server):
    status, models = _get(server, "/v1/models")
    assert status == 200 and {m["id"] for m in models["data"]} == {
        "tiny",
        "tiny-student",
        "tiny-teacher",
    }
    status, health = _get(server, "/healthz")
    assert status == 200 and health["student"]["max_context"] == 512
    assert health["student"]["engine"] == "hf"
    status, stats = _get(server, "/v1/stats")
    assert status == 200 and stats["requests"] >= 1 and "student" in stats["latency_ms"]
    assert stats["cascade"]["threshold"] == 0.0 and stats["cascade"]["scoring"] == "min_prob"
    assert health["teacher"]["engine"] == "hf" and health["teacher"]["stats"]["requests"] >= 0


def test_a_router_hosted_model_has_no_replicas_of_its_own(server):
    from ray import serve

    deployments = serve.status().applications["distill"].deployments
    assert set(deployments) == {"Router", "Student"}


def test_the_router_replica_serves_http_directly(server):
    """High-throughput mode (set by conftest as by ``distill serve``): the Router replica has an
    HTTP port of its own, bound to the configured host, that answers like the proxy."""
    from openai import OpenAI

    from distill.serve.ingress import direct_ingress_urls

    urls = direct_ingress_urls("distill", "127.0.0.1", server["port"])
    assert len(urls) == 1 and urls[0] != server["base"]
    client = OpenAI(base_url=urls[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.completions.create(model="tiny-student", prompt="def f(x):", max_tokens=3)
    assert out.usage.completion_tokens >= 1 and out.model == "tiny-student"
    chunks = list(client.completions.create(model="tiny", prompt="x = 1", stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_two_concurrent_requests_share_a_forward_pass(server):
    before = _engine(server)["max_batch"]
    body = json.dumps({"model": "tiny-student", "prompt": "def f(x):", "max_tokens": 64}).encode()
    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda _: _post(server, "/v1/completions", body)[0], range(2)))
    assert codes == [200, 200]
    stats = _engine(server)
    assert stats["max_batch"] >= 2 or before >= 2
    assert stats["mean_batch"] is not None


def test_early_decision_and_takeover(client):
    def ask(max_tokens=12, **distill):
        r = client.completions.create(
            model="tiny", prompt="import os", max_tokens=max_tokens, extra_body={"distill": distill}
        )
        return r, r.model_extra["distill"]

    r, info = ask(threshold=1, decide_after_tokens=2)
    assert info["answered_by"] == "teacher" and info["reason"] == "low_confidence"
    assert info["discarded_tokens"] >= 2 and info["segments"] == [
        {"model": "teacher", "tokens": 12}
    ]
    assert set(info["latency_ms"]) == {"student", "teacher"}
    # a long answer: chunks merge while the Router is busy, and a student that has already
    # finished by the decision is not continued (the teacher answers from the prompt); 12
    # tokens of the tiny student could all arrive in the first chunk on a loaded box
    r, info = ask(max_tokens=256, threshold=1, decide_after_tokens=3, takeover="prefix")
    kept = info["segments"][0]
    assert kept["model"] == "student" and kept["tokens"] >= 3, info
    assert info["segments"][1]["model"] == "teacher" and r.usage.completion_tokens == 256
    r, info = ask(threshold=0, decide_after_tokens=2)
    assert info["answered_by"] == "student" and info["segments"] == [
        {"model": "student", "tokens": 12}
    ]


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
        (b'{"model": "tiny", "prompt": "x", "max_tokens": 401}', 400, "limit of 400"),
        (b'{"model": "gpt-9", "prompt": "x"}', 400, "unknown model 'gpt-9'"),
        (
            json.dumps({"model": "tiny", "prompt": "word " * 390, "max_tokens": 200}).encode(),
            400,
            "context limit",
        ),
        (b'{"model": "tiny", "prompt": "x", "temprature": 0}', 422, "temprature: unknown field"),
        (json.dumps({"model": "tiny", "prompt": "y" * 2001}).encode(), 400, "prompt is 2001 char"),
        (b'{"model": "tiny", "prompt": "x", "stop": ["123456789"]}', 400, "stop strings"),
        (json.dumps({"model": "tiny", "prompt": "z" * 9000}).encode(), 413, "the limit is 8192"),
    ],
)
def test_bad_input_gets_4xx_and_server_keeps_serving(server, body, status, message):
    t0 = time.perf_counter()
    code, err, _ = _post(server, "/v1/completions", body)
    assert code == status and message in err["error"]["message"], err
    assert time.perf_counter() - t0 < 10  # answered, not hung (generous: shared CI machine)
    ok, out, _ = _post(
        server, "/v1/completions", b'{"model": "tiny", "prompt": "ok", "max_tokens": 2}'
    )
    assert ok == 200 and out["usage"]["completion_tokens"] == 2


def test_bad_chat_input(server):
    code, err, _ = _post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": []}')
    assert code == 422 and "messages" in err["error"]["message"]
    body = b'{"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}'
    assert _post(server, "/v1/chat/completions", body)[0] == 422
    many = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}] * 5}
    code, err, _ = _post(server, "/v1/chat/completions", json.dumps(many).encode())
    assert code == 400 and "5 messages; the limit is 4" in err["error"]["message"]


@pytest.mark.parametrize("role", ["student", "teacher"])  # placement replica, router
def test_overload_gets_503_and_disconnects_free_the_slots(server, role):
    """Fill every slot with open streams, get a 503 at once, hang up: generations cancelled."""
    before = _engine(server, role)
    body = {"model": f"tiny-{role}", "prompt": "def f(x):", "max_tokens": 400, "stream": True}
    with ThreadPoolExecutor(MAX_INFLIGHT) as pool:
        streams = list(pool.map(lambda _: _open_stream(server, body), range(MAX_INFLIGHT)))
    assert all(first[0].startswith("data: ") for _, first in streams)  # streaming has begun
    t0 = time.perf_counter()
    code, err, headers = _post(server, "/v1/completions", b'{"model": "tiny", "prompt": "x"}')
    assert code == 503 and "capacity" in err["error"]["message"]
    assert headers.get("retry-after") == "1" and time.perf_counter() - t0 < 5
    for conn, _ in streams:  # the clients go away mid-stream
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    for _ in range(200):
        stats = _engine(server, role)
        if stats["active"] == 0 and _get(server, "/v1/stats")[1]["inflight"] == 0:
            break
        time.sleep(0.05)
    assert stats["active"] == 0 and stats["cancelled"] >= before["cancelled"] + MAX_INFLIGHT
    assert stats["tokens"] - before["tokens"] < MAX_INFLIGHT * 400  # stopped early
    _, summary = _get(server, "/v1/stats")
    assert summary["status"].get("499", 0) >= MAX_INFLIGHT and summary["status"]["503"] >= 1
    ok, out, _ = _post(server, "/v1/completions", b'{"model": "tiny", "prompt": "x"}')
    assert ok == 200


def test_bounded_concurrent_load_has_no_errors(client):
    def worker(w: int) -> int:
        errors = 0
        for i in range(10):
            try:
                r = client.completions.create(model="tiny", prompt=f"{w}:{i}", max_tokens=2)
                errors += r.usage.completion_tokens != 2
            except Exception:
                errors += 1
        return errors

    with ThreadPoolExecutor(MAX_INFLIGHT) as pool:
        assert sum(pool.map(worker, range(MAX_INFLIGHT))) == 0
