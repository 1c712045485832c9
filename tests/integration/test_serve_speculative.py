"""``cascade.mode: speculative`` through the Serve app on tiny models: the cascade route is the
teacher verifying the student's drafts (both engines inside the Router replica), its answers are
the teacher's, streamed or not, and the acceptance rate is in each response and in /v1/stats."""

import json
import socket
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tiny_gqa, cache_dir):
    import ray
    from ray import serve

    from distill.models.config import TinySource
    from distill.models.loader import resolve_source
    from distill.serve.app import build_app
    from distill.serve.config import ServeArgs

    student = resolve_source(TinySource(seed=1), cache_dir).path  # other weights, same tokenizer
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batching = {"max_batch_size": 8, "max_waiting": 8, "batch_wait_ms": 10}
    common = {"num_cpus": 0.5, "batching": batching, "placement": "router"}
    args = ServeArgs.model_validate(
        {
            "served_model_name": "tiny",
            "student": {"model": str(student), **common},
            "teacher": {"model": str(tiny_gqa.path), **common},
            "cascade": {"mode": "speculative", "speculative": {"draft_tokens": 3}},
            "context_limit": 512,
        }
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="spec", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("spec")
    if started_ray:
        serve.shutdown()
        ray.shutdown()


def _post(base, body):
    req = urllib.request.Request(
        base + "/v1/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def test_speculative_answers_are_the_teachers_with_acceptance_stats(server):
    body = {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0}
    spec = json.loads(_post(server, body))
    alone = json.loads(_post(server, {**body, "model": "tiny-teacher"}))
    assert spec["choices"][0]["text"] == alone["choices"][0]["text"]
    info = spec["distill"]
    assert info["answered_by"] == "teacher" and info["reason"] == "speculative"
    s = info["speculative"]
    assert s["draft_tokens"] > 0 and 0 <= s["accepted_tokens"] <= s["draft_tokens"]
    assert alone["distill"].get("speculative") is None  # the pinned teacher does not draft
    # streamed, with a per-request draft length
    events = _post(server, {**body, "stream": True, "distill": {"draft_tokens": 1}})
    data = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")]
    text = "".join(c["text"] for e in data for c in e.get("choices", []))
    assert text == alone["choices"][0]["text"]
    last = data[-1]["distill"]["speculative"]
    assert 0 < last["draft_tokens"] <= 11  # one draft per step at most
    with urllib.request.urlopen(server + "/v1/stats", timeout=30) as r:
        stats = json.loads(r.read())
    agg = stats["speculative"]
    assert agg["requests"] == 2 and agg["draft_tokens"] == s["draft_tokens"] + last["draft_tokens"]
    assert stats["cascade"]["mode"] == "speculative"
