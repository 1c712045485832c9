"""The continuous-batching HF engine on a tiny checkpoint (no Ray): batching, streaming,
cancellation, overload, prefix continuation, stop strings, context checks."""

import asyncio
import threading

import pytest
import torch

from distill.models.stopping import stop_token_ids
from distill.serve.config import BatchingConfig
from distill.serve.engines.base import Overloaded, PromptError, SamplingParams
from distill.serve.engines.hf import HFEngine

PROMPTS = ["def add(a, b):\n    return", "import os", "class Foo:\n    def __init__(self):"]


@pytest.fixture(scope="module")
def engine(tiny_gqa):
    eng = HFEngine(tiny_gqa.path, torch_threads=1, batching=BatchingConfig(batch_wait_ms=20))
    yield eng
    eng.close()


def _reference(engine, prompt, n):
    """Greedy HF generate on the prompt alone (batch 1, no padding)."""
    ids = engine.prepare(prompt=prompt, params=SamplingParams(max_tokens=n)).prompt_ids
    x = torch.tensor([ids])
    out = engine.model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
        pad_token_id=engine.pad_id,
    )  # fmt: skip
    return out[0, len(ids) :].tolist()


async def _collect(engine, prompt, params, delay=0.0, **kw):
    await asyncio.sleep(delay)
    req = engine.prepare(prompt=prompt, params=params, **kw)
    chunks = [c async for c in engine.stream(req)]
    return chunks


def _ids(chunks):
    return [i for c in chunks for i in c.token_ids]


def test_concurrent_requests_share_forward_passes_and_match_generate(engine):
    n = 8
    before = dict(engine.counters)

    async def main():
        jobs = [
            _collect(engine, p, SamplingParams(max_tokens=n), i * 0.002)
            for i, p in enumerate(PROMPTS)
        ]
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    steps = engine.counters["steps"] - before["steps"]
    assert engine.counters["max_batch"] >= 2
    assert steps < len(PROMPTS) * (n - 1)  # fewer decode passes than one request at a time
    for prompt, chunks in zip(PROMPTS, results, strict=True):
        assert _ids(chunks) == _reference(engine, prompt, n)  # padding changes nothing
        text = "".join(c.text for c in chunks)
        assert text == engine.tok.decode(_ids(chunks), skip_special_tokens=True)
        assert chunks[-1].finish_reason == "length" and chunks[0].prompt_tokens > 0
        assert len(chunks[0].logprobs) == len(chunks[0].token_ids)


def _gate(engine):
    """Let the test release the engine's forward passes one by one."""
    sem = threading.Semaphore(0)
    real = engine._forward

    def gated(*a, **kw):
        sem.acquire(timeout=30)
        return real(*a, **kw)

    engine._forward = gated
    return sem, real


def test_first_chunk_arrives_before_generation_ends_and_cancel_frees_the_slot(engine):
    sem, real = _gate(engine)
    try:

        async def main():
            req = engine.prepare(prompt="x = 1", params=SamplingParams(max_tokens=50))
            stream = engine.stream(req)
            sem.release()  # only the prefill may run
            first = await asyncio.wait_for(anext(stream), 30)
            assert first.token_ids and first.finish_reason is None
            assert engine.counters["steps"] == steps_before  # no decode step has run yet
            cancelled = engine.counters["cancelled"]
            await stream.aclose()  # the client went away
            for _ in range(5):
                sem.release()
            for _ in range(300):
                if engine.counters["cancelled"] > cancelled and engine.active == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.counters["cancelled"] == cancelled + 1 and engine.active == 0

        steps_before = engine.counters["steps"]
        asyncio.run(main())
    finally:
        engine._forward = real
        for _ in range(10):
            sem.release()


def test_a_full_waiting_queue_refuses_at_once_and_a_long_wait_soon(tiny_gqa):
    batching = BatchingConfig(max_waiting=1, max_batch_size=1, max_queue_wait_s=0.5)
    eng = HFEngine(tiny_gqa.path, torch_threads=1, batching=batching)
    sem, _ = _gate(eng)

    async def main():
        streams = [eng.stream(eng.prepare(prompt="a", params=SamplingParams(max_tokens=4)))]
        first = asyncio.ensure_future(anext(streams[0]))  # submitted; the engine blocks in prefill
        await asyncio.sleep(0.2)
        streams.append(eng.stream(eng.prepare(prompt="b", params=SamplingParams(max_tokens=4))))
        second = asyncio.ensure_future(anext(streams[1]))  # waits
        await asyncio.sleep(0.2)
        third = eng.stream(eng.prepare(prompt="c", params=SamplingParams(max_tokens=4)))
        with pytest.raises(Overloaded, match="max_waiting 1"):
            await anext(third)
        with pytest.raises(Overloaded, match="within 0.5 s"):  # the only slot stays busy
            await asyncio.wait_for(second, 10)
        for _ in range(20):
            sem.release()
        await first
        for s in streams:
            await s.aclose()

    try:
        asyncio.run(main())
    finally:
        eng.close()
        for _ in range(20):
            sem.release()


def test_prefix_continuation_stop_strings_and_limits(engine):
    n = 10
    ref = _reference(engine, PROMPTS[0], n)
    full_text = engine.tok.decode(ref, skip_special_tokens=True)

    async def main():
        prefix_text = engine.tok.decode(ref[:4], skip_special_tokens=True)
        params = SamplingParams(max_tokens=n)
        cont = await _collect(
            engine, PROMPTS[0], params, continue_ids=ref[:4], continue_emitted=len(prefix_text)
        )
        assert _ids(cont) == ref[4:]  # the rest of the same greedy answer
        assert prefix_text + "".join(c.text for c in cont) == full_text
        unseen = await _collect(engine, PROMPTS[0], params, continue_ids=ref[:4])
        assert "".join(c.text for c in unseen) == full_text  # the client had none of it
        if len(full_text) > 4:
            stop = full_text[len(full_text) // 2 :][:2]
            cut = await _collect(engine, PROMPTS[0], SamplingParams(max_tokens=n, stop=(stop,)))
            text = "".join(c.text for c in cut)
            assert cut[-1].finish_reason == "stop" and stop not in text
            assert full_text.startswith(text)

    asyncio.run(main())
    with pytest.raises(PromptError, match="context limit of 32"):
        engine.prepare(prompt="word " * 40, params=SamplingParams(max_tokens=4), context_limit=32)
    with pytest.raises(PromptError, match="characters"):  # refused before tokenization
        engine.prepare(prompt="w" * 10_000, params=SamplingParams(max_tokens=4), context_limit=32)
    chat = engine.prompts.render(messages=[{"role": "user", "content": "hi"}])
    assert chat.startswith("<|im_start|>user") and chat.endswith("<|im_start|>assistant\n")


def test_the_engine_stops_at_end_of_turn_as_evaluate_and_seq_kd_do(engine):
    """One stop rule (distill.models.stopping): the tiny model declares only <|endoftext|>, yet a
    served answer ends at <|im_end|> like an evaluated or seq-KD one."""
    tok, model = engine.tok, engine.model
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    declared = (model.generation_config.eos_token_id, model.config.eos_token_id)
    assert engine.eos_ids == set(stop_token_ids(tok, *declared)) >= {im_end, tok.eos_token_id}
    params = SamplingParams(max_tokens=8, logit_bias=((im_end, 100.0),))
    chunks = asyncio.run(_collect(engine, PROMPTS[0], params))
    assert _ids(chunks) == [im_end] and chunks[-1].finish_reason == "stop"


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine):
    real, calls = engine._forward, []

    def broken(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*a, **kw)

    engine._forward = broken
    try:

        async def main():
            with pytest.raises(RuntimeError, match="generation failed: RuntimeError: boom"):
                await _collect(engine, "x = 1", SamplingParams(max_tokens=3))
            again = await _collect(engine, "x = 1", SamplingParams(max_tokens=3, seed=2**64 - 1))
            assert len(_ids(again)) == 3

        asyncio.run(main())
    finally:
        engine._forward = real
    engine.check_health()
    assert engine.counters["failed"] >= 1
