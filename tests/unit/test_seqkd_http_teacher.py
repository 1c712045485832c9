"""The HTTP teacher against a local OpenAI-compatible stub (127.0.0.1, free port, stopped here)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distill.config.base import DistillError
from distill.seqkd.config import DecodingConfig, HTTPTeacher
from distill.seqkd.teachers import HTTPClient


class Stub:
    """Records requests; ``fail`` = status codes to answer before succeeding."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, dict]] = []
        self.fail: list[int] = []
        self.logprobs = True
        self.reject_logprobs = False
        self.max_choices = 8


@pytest.fixture
def stub():
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(
                (time.monotonic(), self.path, {**req, "auth": self.headers.get("Authorization")})
            )
            if state.fail:
                return self._send(state.fail.pop(0), {"error": "try later"})
            if state.reject_logprobs and req.get("logprobs"):
                return self._send(400, {"error": "logprobs not supported"})
            chat = self.path == "/v1/chat/completions"
            choices = []
            for i in range(min(req["n"], state.max_choices)):
                text = f"answer {i} to {req['messages'][-1]['content'] if chat else req['prompt']}"
                c: dict = {"index": i, "finish_reason": "stop" if i == 0 else "length"}
                if chat:
                    c["message"] = {"role": "assistant", "content": text}
                    if state.logprobs and req.get("logprobs"):
                        c["logprobs"] = {"content": [{"logprob": -0.5}, {"logprob": -1.5}]}
                else:
                    c["text"] = text
                    if state.logprobs and req.get("logprobs"):
                        c["logprobs"] = {"token_logprobs": [-1.0, -2.0, -3.0]}
                choices.append(c)
            self._send(200, {"choices": choices})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def client(url: str, decoding: dict | None = None, **kw) -> HTTPClient:
    kw.setdefault("requests_per_s", 1000.0)
    cfg = HTTPTeacher(base_url=url, model="stub-1", backoff_s=0.01, **kw)
    dec = DecodingConfig(**(decoding or {"n": 2, "max_new_tokens": 5}))
    return HTTPClient(cfg.model_dump(), dec.model_dump(), None, cfg.requests_per_s)


ROW = {"prompt": "hi", "messages_json": ""}


def test_chat_completions_with_logprobs_and_settings(stub):
    out = client(stub.url).complete(ROW)
    assert [o["completion"] for o in out] == ["answer 0 to hi", "answer 1 to hi"]
    assert out[0]["mean_logprob"] == pytest.approx(-1.0) and out[0]["n_tokens"] == 2
    assert [o["finish_reason"] for o in out] == ["stop", "length"]
    _, path, req = stub.requests[0]
    assert path == "/v1/chat/completions" and req["model"] == "stub-1"
    assert req["messages"] == [{"role": "user", "content": "hi"}]
    assert (req["n"], req["max_tokens"], req["temperature"], req["top_p"], req["seed"]) == (
        2,
        5,
        0.7,
        0.95,
        0,
    )


def test_completions_endpoint_and_missing_logprobs_are_null(stub):
    c = client(stub.url, endpoint="completions")
    out = c.complete(ROW)
    assert out[0]["mean_logprob"] == pytest.approx(-2.0) and out[0]["n_tokens"] == 3
    assert stub.requests[0][1] == "/v1/completions" and stub.requests[0][2]["prompt"] == "hi"
    stub.logprobs = False
    out = c.complete(ROW)
    assert all(o["mean_logprob"] is None and o["n_tokens"] == -1 for o in out)


def test_server_rejecting_logprobs_is_retried_without(stub):
    stub.reject_logprobs = True
    c = client(stub.url)
    out = c.complete(ROW)
    assert len(out) == 2 and out[0]["mean_logprob"] is None
    assert c.notes and "logprobs" in c.notes[0] and "logprobs" not in stub.requests[-1][2]


def test_retries_with_backoff_then_succeeds(stub):
    stub.fail = [503, 429]
    out = client(stub.url, max_retries=3).complete(ROW)
    assert len(out) == 2 and len(stub.requests) == 3


def test_fewer_choices_than_n_are_topped_up(stub):
    stub.max_choices = 1
    out = client(stub.url, {"n": 3, "max_new_tokens": 4}).complete(ROW)
    assert len(out) == 3 and [r[2]["n"] for r in stub.requests] == [3, 2, 1]


def test_client_error_fails_at_once_with_the_body(stub):
    stub.fail = [404]
    with pytest.raises(DistillError, match="refused the request .*HTTP 404"):
        client(stub.url, max_retries=5).complete(ROW)
    assert len(stub.requests) == 1


def test_rate_limit_spaces_requests(stub):
    c = client(stub.url, {"n": 1, "max_new_tokens": 4}, requests_per_s=20)
    for _ in range(4):
        c.complete(ROW)
    times = [t for t, _, _ in stub.requests]
    # 3 gaps of 1/20 s at the client; received times jitter on a loaded box (a 41 ms gap after a
    # late one was seen), so the span is asserted: unthrottled, the 4 took 7 ms here
    assert times[-1] - times[0] >= 3 * 0.05 * 0.9


def test_api_key_is_sent(stub):
    c = client(stub.url, api_key_env="STUB_KEY")
    c.api_key = "sekret"
    c.complete(ROW)
    assert stub.requests[0][2]["auth"] == "Bearer sekret"


def test_unreachable_teacher_fails_clearly_after_retries():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(DistillError) as e:
        client(f"http://127.0.0.1:{port}", max_retries=2, timeout_s=1).complete(ROW)
    msg = str(e.value)
    assert f"127.0.0.1:{port}/v1/chat/completions unreachable after 3 attempt(s)" in msg
    assert "Connection refused" in msg or "Errno" in msg
    assert time.monotonic() - t0 >= 0.03  # backoff 0.01 + 0.02
