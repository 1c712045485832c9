"""Engine adapters without their runtimes: ONNX Runtime GenAI through a fake runtime, vLLM's
config mapping and stream parsing (the vLLM deployment itself only on a GPU); the overload rule
every engine shares, run on the HF engine and the ORT adapter alike."""

import asyncio
import json
import time

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.serve.config import BatchingConfig, ModelDeployment
from distill.serve.engines import EngineOptions, build_engine
from distill.serve.engines.base import PromptError, SamplingParams


class FakeRuntime:
    """The slice of distill.runtime.OrtGenAIModel the adapter uses: next token = last + 1."""

    eos_ids = frozenset({0})
    pad_id = 0
    context_length = 128
    vocab_size = 512

    def __init__(self, step_s: float = 0.0):
        self.batches = []
        self.step_s = step_s

    def generate_steps(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None,
                       return_logits=False):  # fmt: skip
        self.batches.append(len(prompts))
        last = np.array([p[-1] for p in prompts])
        for _ in range(max_new_tokens):
            time.sleep(self.step_s)
            nxt = (last % 500) + 1
            logits = np.zeros((len(prompts), self.vocab_size), dtype=np.float32)
            logits[np.arange(len(prompts)), nxt] = 5.0
            lp = logits[np.arange(len(prompts)), nxt] - np.log(np.exp(logits).sum(-1))
            yield type("Step", (), {"token_ids": nxt, "logprobs": lp, "logits": logits})
            last = nxt


def test_ort_adapter_batches_waiting_requests_and_streams(tiny_gqa):
    from distill.serve.engines.ort import OrtGenAIEngine

    rt = FakeRuntime()
    eng = OrtGenAIEngine(
        tiny_gqa.path, runtime=rt, batching=BatchingConfig(batch_wait_ms=50, max_batch_size=4)
    )

    async def one(prompt, n, top=0):
        req = eng.prepare(prompt=prompt, params=SamplingParams(max_tokens=n, top_logprobs=top))
        chunks = [c async for c in eng.stream(req)]
        return req, chunks

    async def main():
        return await asyncio.gather(one("def f", 5, top=2), one("import os", 3), one("x", 4))

    try:
        results = asyncio.run(main())
    finally:
        eng.close()
    assert rt.batches == [3]  # the three waiting requests shared one batch
    for req, chunks in results:
        ids = [i for c in chunks for i in c.token_ids]
        assert ids == [(req.prompt_ids[-1] % 500) + 1 + k for k in range(len(ids))]
        assert len(ids) == req.params.max_tokens and chunks[-1].finish_reason == "length"
        assert all(0 <= e <= 1 for c in chunks for e in c.entropies)
    assert results[0][1][0].top is not None and len(results[0][1][0].top[0]) == 2
    with pytest.raises(PromptError, match="logit_bias"):
        eng.prepare(prompt="x", params=SamplingParams(logit_bias=((1, 2.0),)))


@pytest.mark.parametrize(("max_batches", "queue_wait_s"), [(1, 10.0), (2, 10.0), (1, 0.2)])
def test_ort_adapter_starts_a_late_request_beside_the_running_batch(
    tiny_gqa, max_batches, queue_wait_s
):
    """A request arriving mid-batch is decoded in a second batch at once (max_batches 2) and
    ends first; with max_batches 1 it waits for the running batch to end, unless it has waited
    half of max_queue_wait_s (then it gets a batch of its own rather than a 503)."""
    from distill.serve.engines.ort import OrtGenAIEngine

    rt = FakeRuntime(step_s=0.01)
    batching = BatchingConfig(
        batch_wait_ms=0, max_batch_size=4, max_batches=max_batches, max_queue_wait_s=queue_wait_s
    )
    eng = OrtGenAIEngine(tiny_gqa.path, runtime=rt, batching=batching)
    ended: list[str] = []

    async def one(name, n, started=None, after=None):
        if after is not None:
            await after.wait()
        req = eng.prepare(prompt=name, params=SamplingParams(max_tokens=n))
        async for _ in eng.stream(req):
            if started is not None:
                started.set()
        ended.append(name)

    async def main():
        started = asyncio.Event()
        await asyncio.gather(one("long", 60, started=started), one("late", 3, after=started))

    try:
        asyncio.run(main())
    finally:
        eng.close()
    assert rt.batches == [1, 1]
    late_first = max_batches == 2 or queue_wait_s < 1
    assert ended == (["late", "long"] if late_first else ["long", "late"])
    assert eng.stats()["finished"] == 2 and eng.stats()["prefills"] == 2  # one per batch


def test_engine_registry_and_config_errors():
    with pytest.raises(DistillError, match="does not run inside a distill replica"):
        build_engine("vllm", "/nowhere", EngineOptions())
    with pytest.raises(ValueError, match="engine vllm needs a GPU"):
        ModelDeployment(model="m", engine="vllm")
    with pytest.raises(ValueError, match="engine_kwargs are for"):
        ModelDeployment(model="m", engine_kwargs={"x": 1})
    dep = ModelDeployment(model="m", batching={"max_batch_size": 8, "max_waiting": 4})
    assert dep.max_ongoing_requests == 12 and dep.threads == 1


def test_vllm_config_mapping_and_stream_parsing(tiny_gqa, tmp_path):
    from distill.models.loader import load_tokenizer
    from distill.serve.cascade import RequestFailed
    from distill.serve.engines.vllm import llm_config_kwargs, parse_events

    dep = ModelDeployment(
        model="m", engine="vllm", device="cuda", num_gpus=1, replicas=2,
        engine_kwargs={"gpu_memory_utilization": 0.4},
    )  # fmt: skip
    kw = llm_config_kwargs("student", dep, tmp_path, 2048)
    assert kw["model_loading_config"] == {
        "model_id": "distill-student",
        "model_source": str(tmp_path),
    }
    assert kw["engine_kwargs"] == {
        "max_model_len": 2048, "dtype": "float32", "gpu_memory_utilization": 0.4,
    }  # fmt: skip
    assert kw["deployment_config"]["num_replicas"] == 2
    try:  # Ray's own validation of the mapping, where its config module imports without vLLM
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

        LLMConfig(**kw)
    except ImportError:
        pass
    tok = load_tokenizer(tiny_gqa.path)
    event = {
        "choices": [
            {
                "text": "ab",
                "finish_reason": None,
                "logprobs": {
                    "tokens": ["token_id:5", "token_id:6"],
                    "token_logprobs": [-0.1, -0.2],
                    "top_logprobs": [
                        {"token_id:5": -0.1, "token_id:9": -3.0},
                        {"token_id:6": -0.2},
                    ],
                },
            }
        ]
    }
    chunks = parse_events([f"data: {json.dumps(event)}\n\n", "data: [DONE]\n\n"], tok, 512, 1)
    assert chunks[0].token_ids == [5, 6] and chunks[0].logprobs == [-0.1, -0.2]
    assert chunks[0].tokens == [tok.decode([5]), tok.decode([6])] and len(chunks[0].top[0]) == 1
    assert all(0 <= e <= 1 for e in chunks[0].entropies)
    err = {"error": {"message": "prompt too long", "code": 400}}
    with pytest.raises(RequestFailed, match="prompt too long"):
        parse_events(f"data: {json.dumps(err)}\n\n", tok, 512, 0)


@pytest.mark.gpu
def test_vllm_deployment_builds_on_a_gpu(tiny_gqa):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("engine vllm needs CUDA")
    pytest.importorskip("vllm")
    from distill.serve.engines.vllm import vllm_deployment

    dep = ModelDeployment(model="m", engine="vllm", device="cuda", num_gpus=1)
    app = vllm_deployment("student", dep, tiny_gqa.path, 512)
    assert type(app).__name__ == "Application"


def test_length_buckets_bound_the_padding():
    from types import SimpleNamespace

    from distill.serve.engines.ort import length_buckets

    seqs = [SimpleNamespace(req=SimpleNamespace(input_ids=[1] * n)) for n in (40, 188, 34, 66, 26)]
    groups = [[len(s.req.input_ids) for s in g] for g in length_buckets(seqs, slack=32)]
    assert groups == [[26, 34, 40, 66], [188]]  # 188 > 2 * 26 + 32: a batch of its own
    assert length_buckets([]) == []


def test_step_scores_match_a_log_softmax():
    from distill.serve.engines.ort_table import score

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 4
    step = type("Step", (), {"token_ids": np.array([1, 2, 3]), "logprobs": np.zeros(3),
                             "logits": logits})  # fmt: skip
    s = score(step, top_k=4)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(-1) / np.log(50)
    assert s.entropies == pytest.approx(ent, abs=1e-5)
    best = np.argsort(-logp, -1)[:, :4]
    assert (s.top_ids == best).all()
    assert s.top_logprobs == pytest.approx(np.take_along_axis(logp, best, -1), abs=1e-5)
    assert score(step, top_k=0).top_ids is None


def _slow_hf(tiny_gqa, batching, step_s):
    from distill.serve.engines.hf import HFEngine

    eng = HFEngine(tiny_gqa.path, torch_threads=1, batching=batching)
    forward = eng._forward

    def slow(*a, **kw):
        time.sleep(step_s)
        return forward(*a, **kw)

    eng._forward = slow
    return eng


def _slow_ort(tiny_gqa, batching, step_s):
    from distill.serve.engines.ort import OrtGenAIEngine

    return OrtGenAIEngine(tiny_gqa.path, runtime=FakeRuntime(step_s=step_s), batching=batching)


@pytest.mark.parametrize("slow_engine", [_slow_hf, _slow_ort], ids=["hf", "ort"])
@pytest.mark.parametrize(("max_batch_size", "refused"), [(4, False), (1, True)])
def test_a_long_step_refuses_a_waiting_request_only_when_every_row_is_taken(
    tiny_gqa, slow_engine, max_batch_size, refused
):
    """Every engine: a step longer than max_queue_wait_s keeps a late request waiting past the
    limit; it is refused (503) only if every row is taken, else it joins at the next step."""
    from distill.serve.engines.base import Overloaded

    batching = BatchingConfig(
        batch_wait_ms=0, max_batch_size=max_batch_size, max_batches=1, max_queue_wait_s=0.2
    )
    eng = slow_engine(tiny_gqa, batching, 0.4)

    async def main():
        running = eng.stream(eng.prepare(prompt="long", params=SamplingParams(max_tokens=4)))
        await anext(running)
        late = eng.prepare(prompt="late", params=SamplingParams(max_tokens=2))
        try:
            return [c async for c in eng.stream(late)]
        finally:
            await running.aclose()

    try:
        if refused:
            with pytest.raises(Overloaded, match="within 0.2 s"):
                asyncio.run(main())
        else:
            chunks = asyncio.run(main())
            assert sum(len(c.token_ids) for c in chunks) == 2
    finally:
        eng.close()


def test_ort_adapter_checks_a_waiting_request_again_after_the_queue_wait(tiny_gqa):
    """Rows free at the first check (so no 503 then) but taken by an earlier request at the
    next admission: the later request is refused at its next check instead of waiting for the
    running batches to end."""
    from distill.serve.engines.base import Overloaded
    from distill.serve.engines.ort import OrtGenAIEngine

    batching = BatchingConfig(
        batch_wait_ms=0, max_batch_size=2, max_batches=1, max_queue_wait_s=0.2
    )
    eng = OrtGenAIEngine(tiny_gqa.path, runtime=FakeRuntime(step_s=0.4), batching=batching)

    async def later(prompt: str):
        req = eng.prepare(prompt=prompt, params=SamplingParams(max_tokens=2))
        t0 = time.perf_counter()
        try:
            return [c async for c in eng.stream(req)], time.perf_counter() - t0
        except Overloaded as e:
            return e, time.perf_counter() - t0

    async def main():
        running = eng.stream(eng.prepare(prompt="long", params=SamplingParams(max_tokens=8)))
        await anext(running)
        try:
            return await asyncio.gather(later("a"), later("b"))
        finally:
            await running.aclose()

    try:
        (a, _), (b, b_s) = asyncio.run(main())
    finally:
        eng.close()
    assert sum(len(c.token_ids) for c in a) == 2  # took the free row
    assert isinstance(b, Overloaded) and b_s < 2.0  # not after the long batch (3.2 s)


def test_a_step_decoded_ahead_is_the_step_the_next_cycle_returns():
    """The child process decodes each running batch's next step while the replica delivers the
    last one; the next cycle returns exactly the steps it would have decoded then, and a batch
    closed meanwhile drops its step."""
    from distill.serve.engines.ort_table import BatchTable

    def run(ahead: bool) -> list[list[int]]:
        table = BatchTable(FakeRuntime())
        kw = {"max_new_tokens": 4, "top_logprobs": 1}
        out = table.cycle(
            [(1, {"prompts": [[5], [9]], **kw}), (2, {"prompts": [[7]], **kw})], [], [1, 2]
        )
        seen = [out[1].token_ids.tolist(), out[2].token_ids.tolist()]
        for _ in range(4):
            if ahead:
                table.step_ahead([1, 2])
                assert set(table.ahead) == {1, 2}
            out = table.cycle([], [], [1, 2])
            seen += [r.token_ids.tolist() if r is not None else None for r in out.values()]
        if ahead:
            table.step_ahead([2])
            table.cycle([], [2], [])
            assert table.ahead == {} and 2 not in table.batches
        return seen

    assert run(ahead=True) == run(ahead=False)
    assert run(ahead=False)[:2] == [[6, 10], [8]] and run(ahead=False)[-1] is None
