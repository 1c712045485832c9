"""The generate stage on the tiny local teacher (Ray Data actor pool) and its store."""

from __future__ import annotations

import json

import pytest

from distill.seqkd.config import GenerateConfig
from distill.seqkd.store import read_generations, read_manifest


@pytest.mark.timeout(240)
def test_generate_with_tiny_local_teacher(ray_local, stage_ctx, tmp_path):
    from distill.seqkd.generate_stage import run

    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"Say something about topic {i}."}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.append(
        json.dumps({"messages": [{"role": "user", "content": "Hi there"}], "kind": "chat"})
    )
    prompts.write_text("\n".join(lines) + "\n")
    section = {
        "prompts": {"source": "file", "path": str(prompts), "heldout_fraction": 0.3},
        "decoding": {"n": 2, "temperature": 0.8, "max_new_tokens": 8, "seed": 1},
        "teacher": {"kind": "local", "batch_size": 3, "torch_threads": 1},
        "shard_rows": 5,
    }
    ctx = stage_ctx(["generate"], generate=section)
    result = run(ctx, GenerateConfig.model_validate(section))
    out = result.outputs["generations"]
    assert out == ctx.workdir / "generations"
    manifest = read_manifest(out)
    rows = read_generations(out)
    assert len(rows) == 12 == manifest["rows"] == result.metrics["completions"]
    assert len(manifest["shards"]) == 3  # 12 rows in shards of 5
    assert manifest["decoding"] == {**section["decoding"], "top_p": 0.95}
    assert manifest["teacher"]["weights_sha256"] == ctx.teacher.weights_sha256
    assert result.metrics["prompts.bad_lines"] == 1
    by_key: dict[str, list] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
        assert r["finish_reason"] in {"stop", "length"}
        assert 0 <= r["n_tokens"] <= 8
        assert r["mean_logprob"] is not None and r["mean_logprob"] < 0
        if r["finish_reason"] == "length":
            assert r["n_tokens"] == 8
    assert len(by_key) == 6 and all(
        sorted(x["sample"] for x in v) == [0, 1] for v in by_key.values()
    )
    assert {r["split"] for r in rows} <= {"train", "heldout"}
    chat = [r for r in rows if r["kind"] == "chat"]
    assert chat and json.loads(chat[0]["messages_json"])[0]["content"] == "Hi there"
    assert not list(ctx.workdir.glob(".generations-*"))  # the temp dir was renamed


@pytest.fixture
def openai_stub():
    """A minimal OpenAI-compatible chat endpoint on 127.0.0.1 (no logprobs), stopped at teardown."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = "```python\ndef f():\n    return 1\n```"
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i in range(req["n"])
            ]
            body = json.dumps({"choices": choices}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()
    t.join(5)


@pytest.mark.timeout(240)
def test_generate_with_http_teacher_and_dead_endpoint(ray_local, stage_ctx, openai_stub, tmp_path):
    from distill.config.base import DistillError
    from distill.seqkd.generate_stage import run

    url, server = openai_stub
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"task {i}"}) + "\n" for i in range(3)))
    section = {
        "prompts": {"source": "file", "path": str(prompts)},
        "decoding": {"n": 2, "max_new_tokens": 16},
        "teacher": {"kind": "http", "base_url": url, "model": "stub", "requests_per_s": 50},
    }
    ctx = stage_ctx(["generate"], generate=section)
    result = run(ctx, GenerateConfig.model_validate(section))
    rows = read_generations(result.outputs["generations"])
    assert len(rows) == 6 and all(r["mean_logprob"] is None for r in rows)
    assert all(r["n_tokens"] > 0 for r in rows)  # counted with the local tokenizer
    assert result.metrics["without_logprob"] == 6
    assert read_manifest(result.outputs["generations"])["teacher"] == {
        "kind": "http",
        "name": "stub",
        "base_url": url,
        "endpoint": "chat",
    }
    server.shutdown()
    server.server_close()
    dead = {**section, "teacher": {**section["teacher"], "max_retries": 1, "backoff_s": 0.01}}
    with pytest.raises(DistillError, match="unreachable after 2 attempt"):
        run(ctx, GenerateConfig.model_validate(dead))
    assert (ctx.workdir / "generations" / "manifest.json").exists()  # the old store is untouched
    # without the driver's preflight the failure comes from inside the Ray actor pool
    no_probe = {**dead, "teacher": {**dead["teacher"], "preflight": False}}
    with pytest.raises(DistillError, match="unreachable after 2 attempt"):
        run(ctx, GenerateConfig.model_validate(no_probe))
    assert not list(ctx.workdir.glob(".generations-*"))  # no half-written store left behind
