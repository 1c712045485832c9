"""Speculative decoding (``cascade.mode: speculative``) without Ray: the acceptance rules on
fabricated distributions, the adaptive draft length, the KV cache's rollback, the HF engine
verifying a tiny student's drafts (greedy answers identical to the teacher's, whatever the
drafts), the cascade route, stats and config errors."""

import asyncio
import math
from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.serve.cascade import ModelStream, Timeouts, start_answer
from distill.serve.config import BatchingConfig, CascadeConfig, ModelDeployment, ServeArgs
from distill.serve.engines.base import Chunk, SamplingParams, Speculation
from distill.serve.engines.draft import Drafter, HFDrafter, Proposal
from distill.serve.engines.hf import HFEngine
from distill.serve.engines.kv import CachedLM
from distill.serve.schemas import CompletionRequest
from distill.serve.speculative import (
    DraftLength,
    expected_tokens,
    residual,
    verify_greedy,
    verify_sampled,
)
from distill.serve.stats import RequestRecord, Stats

PROMPTS = ["def add(a, b):\n    return", "import os", "class Foo:\n    def __init__(self):"]


# -- the acceptance rules -------------------------------------------------------------------
def test_greedy_keeps_the_agreeing_prefix_and_adds_the_teachers_token():
    assert verify_greedy([5, 6, 7], [5, 6, 7, 8]) == (3, 8)  # all kept + a bonus token
    assert verify_greedy([5, 6, 7], [5, 9, 7, 8]) == (1, 9)  # the correction at the first miss
    assert verify_greedy([5, 6, 7], [4, 6, 7, 8]) == (0, 4)  # every draft rejected
    assert verify_greedy([], [3]) == (0, 3)
    with pytest.raises(ValueError, match="need 3 teacher tokens"):
        verify_greedy([1, 2], [1, 2])


def _dist(*w):
    t = torch.tensor(w, dtype=torch.float)
    return t / t.sum()


def test_sampled_acceptance_follows_the_teachers_distribution():
    """One draft from q, kept with probability min(1, p/q), else the residual: the emitted token
    is distributed as p (here far from q), and the acceptance rate is sum(min(p, q))."""
    p = torch.stack([_dist(0.5, 0.3, 0.15, 0.05), _dist(1, 1, 1, 1)])
    q = _dist(0.1, 0.2, 0.3, 0.4).view(1, 4)
    g = torch.Generator().manual_seed(0)
    n, counts, kept = 6000, torch.zeros(4), 0
    for _ in range(n):
        x = int(torch.multinomial(q[0], 1, generator=g))
        v = verify_sampled([x], q, p, g)
        first = x if v.accepted else v.token
        counts[first] += 1
        kept += v.accepted
    assert torch.allclose(counts / n, p[0], atol=0.02)
    assert kept / n == pytest.approx(float(torch.minimum(p[0], q[0]).sum()), abs=0.02)


def test_sampled_edge_cases():
    g = torch.Generator().manual_seed(1)
    p = torch.stack([_dist(0, 1, 0), _dist(0, 1, 0), _dist(0, 0, 1)])
    same = p[:2].clone()
    assert verify_sampled([1, 1], same, p, g) == (2, 2)  # q == p: every draft kept
    q = torch.stack([_dist(1, 0, 0)])  # a draft the teacher gives no mass: always rejected
    assert verify_sampled([0], q, p[1:], g) == (0, 1)
    # rounding may make q cover p everywhere: the replacement comes from p itself
    assert torch.equal(residual(_dist(1, 1), _dist(1, 1)), _dist(1, 1))
    with pytest.raises(ValueError, match="need q"):
        verify_sampled([0, 1], q, p, g)


def test_draft_length_fixed_adaptive_and_capped():
    assert DraftLength(fixed=4).choose(16) == 4 and DraftLength(fixed=4).choose(1, cap=2) == 2
    dl = DraftLength(max_k=6, start=3, explore_every=4)
    speed = {0: 20, 1: 25, 2: 28, 3: 30, 4: 50, 5: 40, 6: 10}  # tokens/s per k, fabricated
    chosen = []
    for _ in range(12):
        k = dl.choose(1)
        chosen.append(k)
        dl.record(1, k, tokens=speed[k], seconds=1.0)
    assert chosen[:2] == [3, 0]  # the start, then the teacher alone as the baseline
    assert 4 in chosen and dl.choose(1) == 4  # the faster neighbour is found and kept
    # at 16 rows drafting costs more than it saves: k = 0 (the teacher alone) is kept
    for k, rate in ((3, 80.0), (2, 90.0), (1, 95.0), (0, 120.0)):
        dl.record(16, k, tokens=int(rate), seconds=1.0)
    assert dl.choose(16) == 0 and dl.choose(20) == 0  # 20 rows share the 16-31 group
    assert dl.choose(1, cap=2) <= 2
    assert expected_tokens(0.5, 3) == pytest.approx(1.875) and expected_tokens(1.0, 4) == 5


# -- the KV cache's rollback ------------------------------------------------------------------
def test_discarded_tokens_and_compaction_leave_the_same_logits(tiny_gqa, one_torch_thread):
    from distill.models.loader import load_causal_lm

    model = load_causal_lm(tiny_gqa.path)
    a, b = [5, 6, 7, 8, 9], [10, 11]
    with torch.inference_mode():
        lm = CachedLM(model, pad_id=0)
        lm.prefill([a, b])
        lm.extend([[20, 21, 22], [30]])  # then row 0 takes back 21, 22 and row 1 nothing
        lm.discard([2, 0])
        got = lm.extend([[40], [41]], keep=1)[:, -1]
        lm.kv.compact()
        assert lm.kv.mask.shape[1] == 7 and lm.kv.holes() == 3  # row 1 is 3 tokens shorter
        after = lm.extend([[50], [51]], keep=1)[:, -1]
        fresh = CachedLM(model, pad_id=0)
        want = fresh.prefill([[*a, 20, 40], [*b, 30, 41]])
        want2 = fresh.extend([[50], [51]], keep=1)[:, -1]
    assert torch.allclose(got, want, atol=1e-4) and torch.allclose(after, want2, atol=1e-4)


# -- the engine verifying drafts ------------------------------------------------------------------
@pytest.fixture(scope="module")
def draft_lm(cache_dir):
    """A second tiny Llama with other weights and the same tokenizer (the student)."""
    from distill.models.config import TinySource
    from distill.models.loader import resolve_source

    return resolve_source(TinySource(seed=1), cache_dir).path


@pytest.fixture(scope="module")
def engine(tiny_gqa, draft_lm):
    eng = HFEngine(
        tiny_gqa.path, torch_threads=1, batching=BatchingConfig(batch_wait_ms=20),
        draft=HFDrafter.load(draft_lm),
    )  # fmt: skip
    yield eng
    eng.close()


def _reference(engine, prompt, n, **sampling):
    ids = engine.prepare(prompt=prompt, params=SamplingParams(max_tokens=n)).prompt_ids
    x = torch.tensor([ids])
    out = engine.model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
        pad_token_id=engine.pad_id, **sampling,
    )  # fmt: skip
    return out[0, len(ids) :].tolist()


async def _run(engine, prompt, params, spec):
    req = engine.prepare(prompt=prompt, params=params)
    if spec is not None:
        req = replace(req, speculation=spec)
    chunks = [c async for c in engine.stream(req)]
    ids = [i for c in chunks for i in c.token_ids]
    return ids, sum(c.drafted for c in chunks), sum(c.accepted for c in chunks), chunks


def _many(engine, jobs):
    async def main():
        return await asyncio.gather(*(_run(engine, *job) for job in jobs))

    return asyncio.run(main())


class Oracle(Drafter):
    """Drafts from the teacher's known greedy answers (by prompt): the right tokens, or always
    wrong ones."""

    def __init__(self, answers: dict[tuple, list[int]], wrong: bool, vocab: int) -> None:
        self.answers, self.wrong, self.vocab, self.held = answers, wrong, vocab, set()

    def propose(self, rows, k):
        out = []
        for r in rows:
            self.held.add(r.key)
            prompt = next(p for p in self.answers if tuple(r.context[: len(p)]) == p)
            ans, done = self.answers[prompt], len(r.context) - len(prompt)
            toks = [ans[min(done + j, len(ans) - 1)] for j in range(k)]
            out.append(Proposal([(t + 1) % self.vocab if self.wrong else t for t in toks]))
        return out

    def release(self, keys):
        self.held -= set(keys)

    def keys(self):
        return list(self.held)


def test_greedy_speculation_is_the_teachers_answer_whatever_the_drafts(engine):
    n = 20
    refs = {p: _reference(engine, p, n) for p in PROMPTS}
    greedy = SamplingParams(max_tokens=n)
    # a real student, fixed and adaptive k, three rows in one batch with a row not speculating
    jobs = [(p, greedy, Speculation(k)) for p, k in zip(PROMPTS, (3, None, 5), strict=True)]
    results = _many(engine, [*jobs, (PROMPTS[0], greedy, None)])
    for (p, *_), (ids, drafted, accepted, chunks) in zip(jobs, results, strict=False):
        assert ids == refs[p] and 0 <= accepted <= drafted and drafted > 0
        text = "".join(c.text for c in chunks)
        assert text == engine.tok.decode(ids, skip_special_tokens=True)
        assert all(len(c.logprobs) == len(c.token_ids) == len(c.entropies) for c in chunks)
    assert results[-1][0] == refs[PROMPTS[0]] and results[-1][1] == 0
    real = engine.drafter
    answers = {tuple(engine.prepare(prompt=p, params=greedy).prompt_ids): refs[p] for p in PROMPTS}
    try:
        for wrong in (False, True):  # every draft accepted / every draft rejected
            engine.drafter = Oracle(answers, wrong, engine.vocab)
            got = _many(engine, [(p, greedy, Speculation(4)) for p in PROMPTS])
            for p, (ids, drafted, accepted, _) in zip(PROMPTS, got, strict=True):
                assert ids == refs[p] and drafted > 0
                assert accepted == (0 if wrong else drafted)
    finally:
        engine.drafter = real


def test_drafts_stop_at_max_tokens_and_stop_strings(engine):
    ref = _reference(engine, PROMPTS[1], 6)
    ids, drafted, _, chunks = _many(
        engine, [(PROMPTS[1], SamplingParams(max_tokens=6), Speculation(8))]
    )[0]
    assert ids == ref and chunks[-1].finish_reason == "length"
    assert drafted <= 4 + 3 + 2 + 1  # never drafts past max_tokens
    text = engine.tok.decode(ref, skip_special_tokens=True)
    stop = text[len(text) // 2 :][:2]
    params = SamplingParams(max_tokens=6, stop=(stop,))
    got = _many(engine, [(PROMPTS[1], params, Speculation(4))])[0][3]
    assert "".join(c.text for c in got) == text[: text.index(stop)]
    assert got[-1].finish_reason == "stop"


def test_sampled_speculation_and_penalized_rows(engine, tiny_gqa):
    """Seeded sampled requests run through rejection sampling (a draft identical to the teacher
    keeps nearly all its drafts); a penalized request decodes as the teacher alone."""
    sampled = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, seed=3)
    ids, drafted, accepted, _ = _many(engine, [(PROMPTS[0], sampled, Speculation(3))])[0]
    assert len(ids) == 16 and accepted <= drafted
    again = _many(engine, [(PROMPTS[0], sampled, Speculation(3))])[0][0]
    assert again == ids  # the seed fixes the answer
    real = engine.drafter
    engine.drafter = HFDrafter(engine.model, engine.pad_id)  # the teacher drafting for itself
    try:
        _, drafted, accepted, _ = _many(engine, [(PROMPTS[2], sampled, Speculation(4))])[0]
        assert drafted > 0 and accepted >= 0.9 * drafted
    finally:
        engine.drafter = real
    pen = SamplingParams(max_tokens=8, frequency_penalty=1.5)
    alone, spec = _many(engine, [(PROMPTS[1], pen, None), (PROMPTS[1], pen, Speculation(4))])
    assert spec[0] == alone[0] and spec[1] == 0


# -- the cascade route, stats, the API -----------------------------------------------------------
def _teacher(log):
    async def gen(extra):
        log.append(extra)
        for i in range(4):
            yield Chunk([100 + i], f"t{i} ", [-0.1], [0.5], drafted=3, accepted=2 if i else 1,
                        finish_reason="length" if i == 3 else None, prompt_tokens=3)  # fmt: skip

    return lambda extra: ModelStream("teacher", gen(extra), Timeouts(1, 5))


def test_speculative_route_asks_the_teacher_to_verify_drafts():
    log = []

    async def run(cfg):
        ans = await start_answer("cascade", None, _teacher(log), cfg)
        text = "".join([c.text async for c in ans.chunks()])
        return ans, text

    spec = CascadeConfig(mode="speculative", speculative={"draft_tokens": 4})
    ans, text = asyncio.run(run(spec))
    assert text == "t0 t1 t2 t3 " and log == [{"speculative": {"k": 4, "max_k": 8}}]
    info = ans.final_info()
    assert info["answered_by"] == "teacher" and info["reason"] == "speculative"
    assert info["speculative"] == {
        "draft_tokens": 12, "accepted_tokens": 7, "acceptance_rate": pytest.approx(7 / 12),
    }  # fmt: skip
    asyncio.run(run(CascadeConfig(mode="speculative")))
    assert log[-1] == {"speculative": {"k": None, "max_k": 8}}  # auto
    stats = Stats()
    stats.record(RequestRecord("cascade", 200, answered_by="teacher", reason="speculative",
                               draft_tokens=12, accepted_tokens=7))  # fmt: skip
    stats.record(RequestRecord("cascade", 200, answered_by="teacher", reason="speculative",
                               draft_tokens=8, accepted_tokens=1))  # fmt: skip
    s = stats.summary()["speculative"]
    assert s == {"requests": 2, "draft_tokens": 20, "accepted_tokens": 8, "acceptance_rate": 0.4}
    assert Stats().summary()["speculative"] is None
    req = CompletionRequest(model="m", prompt="x", distill={"draft_tokens": "auto"})
    assert req.distill.draft_tokens == "auto"
    with pytest.raises(ValidationError, match="draft_tokens must be 1..16"):
        CompletionRequest(model="m", prompt="x", distill={"draft_tokens": 17})


def _args(student: dict, teacher: dict, **spec):
    return {
        "student": {"model": "s", **student},
        "teacher": {"model": "t", **teacher},
        "cascade": {"mode": "speculative", "speculative": spec},
    }


GPU = {"engine": "vllm", "device": "cuda", "num_gpus": 1}


def test_bad_speculative_configs_name_the_field(tiny_gqa, tmp_path):
    ok = ServeArgs.model_validate(_args({"engine": "onnxruntime-genai"}, {}))
    assert ok.draft("/s") == {"engine": "onnxruntime-genai", "path": "/s", "dtype": "float32"}
    assert ServeArgs.model_validate(_args(GPU, GPU, draft_tokens=3)).cascade.mode == "speculative"
    bad = [
        (_args({}, {"engine": "onnxruntime-genai"}), "teacher.engine onnxruntime-genai cannot verify"),
        (_args(GPU, {}), "both must be engine vllm"),
        (_args(GPU, GPU), "speculative.draft_tokens: vLLM takes a fixed number"),
        (_args({}, {}, draft_tokens=0), "draft_tokens must be 1..16"),
        (_args({}, {}, draft_tokens=99), "draft_tokens must be 1..16"),
        (_args({}, {}, max_draft_tokens=17), "max_draft_tokens"),
    ]  # fmt: skip
    for raw, message in bad:
        with pytest.raises(ValidationError, match=message):
            ServeArgs.model_validate(raw)
    assert ServeArgs.model_validate(_args({}, {})).draft("/s")["engine"] == "hf"
    assert (
        ServeArgs.model_validate({"student": {"model": "s"}, "teacher": {"model": "t"}}).draft("/s")
        is None
    )


def test_a_draft_with_another_tokenizer_is_refused_at_build(tiny_gqa, draft_lm, cache_dir):
    from distill.models.compat import check_draft_compat
    from distill.models.config import TinySource
    from distill.models.loader import resolve_source
    from distill.serve.app import speculative_draft

    args = ServeArgs.model_validate(_args({}, {}))
    paths = {"teacher": tiny_gqa.path, "student": draft_lm}
    assert speculative_draft(args, paths)["path"] == str(draft_lm)
    other = resolve_source(TinySource(vocab_size=600), cache_dir).path
    with pytest.raises(DistillError, match=r"args.student.model .*vocab_size 600"):
        speculative_draft(args, {"teacher": tiny_gqa.path, "student": other})
    with pytest.raises(DistillError, match="draft's tokenizer"):
        check_draft_compat(tiny_gqa.path, _same_vocab_other_tokenizer(draft_lm, cache_dir), "x")


def _same_vocab_other_tokenizer(src, cache_dir):
    import json
    import shutil

    out = cache_dir / "draft-other-tokenizer"
    if not out.exists():
        shutil.copytree(src, out)
        tok = json.loads((out / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        a, b = list(vocab)[300:302]
        vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: another token space
        (out / "tokenizer.json").write_text(json.dumps(tok))
    return out


def test_engines_without_the_capability_say_so(tmp_path):
    from distill.serve.engines import DraftSpec, EngineOptions, build_engine
    from distill.serve.engines.draft import build_drafter

    with pytest.raises(DistillError, match="cannot verify draft tokens"):
        build_engine("onnxruntime-genai", tmp_path, EngineOptions(), DraftSpec("hf", tmp_path))
    with pytest.raises(DistillError, match="cannot draft"):
        build_drafter("vllm", tmp_path)


def test_a_teacher_without_a_draft_refuses_speculative_requests(tiny_gqa):
    from distill.serve.deployments import ModelHost

    host = ModelHost("teacher", str(tiny_gqa.path), ModelDeployment(model="t").model_dump(), 256)
    try:

        async def first():
            payload = {"prompt": "x", "speculative": {"k": 2, "max_k": 8}}
            return [item async for item in host.generate(payload)]

        out = asyncio.run(first())
        assert out[0]["status"] == 400 and "without a draft model" in out[0]["error"]
    finally:
        host.close()


def test_vllm_maps_speculative_mode_to_its_speculative_config(tmp_path):
    from distill.serve.engines.vllm import llm_config_kwargs

    dep = ModelDeployment(model="t", **GPU)
    draft = {"engine": "vllm", "path": "/models/student", "num_speculative_tokens": 4}
    kw = llm_config_kwargs("teacher", dep, tmp_path, 2048, draft)
    assert kw["engine_kwargs"]["speculative_config"] == {
        "method": "draft_model", "model": "/models/student", "num_speculative_tokens": 4,
    }  # fmt: skip
    assert (
        "speculative_config"
        not in llm_config_kwargs("teacher", dep, tmp_path, 2048)["engine_kwargs"]
    )
    clash = ModelDeployment(model="t", **GPU, engine_kwargs={"speculative_config": {}})
    with pytest.raises(DistillError, match="engine_kwargs.speculative_config"):
        llm_config_kwargs("teacher", clash, tmp_path, 2048, draft)
    assert math.isfinite(kw["engine_kwargs"]["max_model_len"])
