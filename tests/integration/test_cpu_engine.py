"""The CPU int4 engine (ONNX Runtime GenAI) on the tiny GPTQ Llama: export carries the GPTQ
weights, the exported model reloads and scores like the checkpoint, batched generation matches
single-prompt generation, and evaluate loads it through the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ort_dir(tiny_gptq, tmp_path_factory):
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai

    out = tmp_path_factory.mktemp("engine") / "student-int4-cpu"
    return export_ort_genai(tiny_gptq, out, EngineConfig(kind="ort-genai", source="gptq"))


@pytest.fixture(scope="module")
def engine(ort_dir):
    from distill.runtime.ort_genai import OrtGenAIModel

    return OrtGenAIModel.load(ort_dir, threads=1)


def test_export_layout_and_manifest(ort_dir, tiny_gptq):
    names = {p.name for p in ort_dir.iterdir()}
    assert {"genai_config.json", "model.onnx", "distill_engine.json", "tokenizer.json"} <= names
    manifest = json.loads((ort_dir / "distill_engine.json").read_text())
    assert manifest["engine"] == "onnxruntime-genai" and manifest["source_kind"] == "gptq"
    assert manifest["source"] == str(tiny_gptq)
    assert not [p for p in ort_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_engine_scores_like_the_gptq_checkpoint(engine, tiny_gptq, tiny_rows):
    from distill.quant import load_quantized

    rows = tiny_rows[16:20]
    with torch.no_grad():
        ref = load_quantized(tiny_gptq, device="cpu")(input_ids=torch.as_tensor(rows).long())
    ref_logits = ref.logits.float().numpy()
    logits = engine.logits(rows)
    assert logits.shape == ref_logits.shape
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).mean() > 0.9
    ref_lp = torch.log_softmax(torch.from_numpy(ref_logits[:, :-1]), -1)
    ref_ppl = float(np.exp(-ref_lp.gather(-1, torch.as_tensor(rows[:, 1:, None]).long()).mean()))
    ppl = float(np.exp(-engine.logprobs(rows).mean()))
    assert ppl == pytest.approx(ref_ppl, rel=0.1)


def test_batched_generation_matches_single_and_scoring(engine, tiny_rows):
    prompts = [list(tiny_rows[20, :12]), list(tiny_rows[21, :7]), list(tiny_rows[22, :9])]
    batch = engine.generate(prompts, max_new_tokens=6)
    for p, out in zip(prompts, batch, strict=True):
        alone = engine.generate([p], max_new_tokens=6)[0]
        assert out.token_ids == alone.token_ids
        assert out.logprobs == pytest.approx(alone.logprobs, abs=1e-3)
        # the step log-probs are the model's own: the scoring path gives the same numbers
        seq = np.asarray([p + out.token_ids], dtype=np.int64)
        scored = engine.logprobs(seq)[0, len(p) - 1 :]
        assert out.logprobs == pytest.approx(scored[: len(out.logprobs)].tolist(), abs=1e-3)
    steps = list(engine.generate_steps(prompts, max_new_tokens=3, return_logits=True))
    assert len(steps) == 3 and steps[0].logits.shape == (3, engine.vocab_size)
    assert [int(t) for t in steps[0].token_ids] == [o.token_ids[0] for o in batch]


def test_no_spin_session_generates_the_same(engine, ort_dir, tiny_rows):
    """spin=False (``engine_kwargs: {spin: false}``; replicas spin by default) is a session
    setting only: same tokens."""
    from distill.runtime.ort_genai import OrtGenAIModel

    quiet = OrtGenAIModel.load(ort_dir, threads=1, spin=False)
    prompt = [list(tiny_rows[23, :10])]
    assert quiet.generate(prompt, 5)[0].token_ids == engine.generate(prompt, 5)[0].token_ids


def test_evaluate_loads_it_through_the_engine(ort_dir, tiny_rows):
    from distill.artifacts import load_for_eval, served_as, stored_parameters
    from distill.eval.metrics import evaluate_models

    model = load_for_eval(ort_dir)
    assert served_as(ort_dir)["engine"].startswith("onnxruntime-genai")
    res = evaluate_models({"int4_cpu": model}, tiny_rows[16:20], batch_size=2)
    assert np.isfinite(res["int4_cpu"]["perplexity"])
    assert stored_parameters(model) > 0
    out = model.generate(torch.as_tensor(tiny_rows[20:21, :8]).long(), max_new_tokens=4)
    assert out.shape == (1, 12)


def test_fp_checkpoint_cannot_be_imported_as_gptq(tiny_gqa, tmp_path):
    from distill.config.base import DistillError
    from distill.runtime.config import EngineConfig
    from distill.runtime.export import export_ort_genai

    with pytest.raises(DistillError, match="not a GPTQ checkpoint"):
        export_ort_genai(tiny_gqa.path, tmp_path / "x", EngineConfig(kind="ort-genai"))
    assert not (tmp_path / "x").exists()


def test_serve_engine_runs_the_runtime_in_a_child_process(engine, ort_dir):
    """A replica's engine steps the runtime in a child process (ONNX Runtime GenAI holds the
    GIL while it computes): same tokens and log-probs as in-process generation; a dead child
    fails the request with its exit code and marks the engine unhealthy; close() ends it."""
    import asyncio

    from distill.serve.engines.base import SamplingParams
    from distill.serve.engines.ort import OrtGenAIEngine

    eng = OrtGenAIEngine(ort_dir, torch_threads=1)

    async def run(prompt: str, n: int):
        params = SamplingParams(max_tokens=n, top_logprobs=2)
        req = eng.prepare(prompt=prompt, params=params)
        return req, [c async for c in eng.stream(req)]

    try:
        proc = eng.table.proc
        # the child's argv ends "... THREADS SPIN LOOKAHEAD": its intra-op threads spin unless
        # engine_kwargs.spin: false
        assert proc.args[-3:] == ["1", "1", "1"]
        req, chunks = asyncio.run(run("def add(a, b):", 6))
        ref = engine.generate([req.input_ids], max_new_tokens=6)[0]
        got = [i for c in chunks for i in c.token_ids]
        assert got == ref.token_ids[: len(got)] and len(got) >= 1
        lps = [lp for c in chunks for lp in c.logprobs]
        assert lps == pytest.approx(ref.logprobs[: len(got)], abs=1e-3)
        top = [t for c in chunks for t in c.top]
        assert all(len(t) == 2 and t[0][1] >= t[1][1] for t in top)
        assert all(0 <= e <= 1 for c in chunks for e in c.entropies)

        proc.kill()
        proc.wait(10)
        with pytest.raises(RuntimeError, match="worker process exited"):
            asyncio.run(run("x = 1", 4))
        with pytest.raises(RuntimeError, match="engine loop died"):
            eng.check_health()
    finally:
        eng.close()
    assert proc.poll() is not None


def test_the_int4_student_drafts_and_rolls_back_for_a_teacher(engine, ort_dir, tiny_gqa, tiny_rows):
    """``OrtDrafter`` (one rewindable batch-1 generator per row): its greedy drafts are the
    runtime's own greedy tokens, also after a rollback to a context that diverged; the HF teacher
    verifying them answers exactly as it does alone."""
    import asyncio
    from dataclasses import replace

    from distill.serve.engines.base import SamplingParams, Speculation
    from distill.serve.engines.draft import DraftRow, OrtDrafter
    from distill.serve.engines.hf import HFEngine

    drafter = OrtDrafter(engine, max_length=128)
    a, b = list(tiny_rows[20, :12]), list(tiny_rows[21, :7])
    want = [engine.generate([p], max_new_tokens=4)[0].token_ids for p in (a, b)]
    rows = [DraftRow(1, a, SamplingParams()), DraftRow(2, b, SamplingParams())]
    assert [p.tokens for p in drafter.propose(rows, 4)] == want
    other = (want[0][1] + 1) % engine.vocab_size  # row 1 keeps one draft, then diverges
    ctx = [*a, want[0][0], other]
    again = drafter.propose([DraftRow(1, ctx, SamplingParams())], 3)[0].tokens
    assert again == engine.generate([ctx], max_new_tokens=3)[0].token_ids
    assert drafter.keys() == [1]  # row 2 was left out: released

    teacher = HFEngine(tiny_gqa.path, torch_threads=1, draft=OrtDrafter(engine, 128))
    try:

        async def answer(spec):
            req = teacher.prepare(prompt="def add(a, b):", params=SamplingParams(max_tokens=12))
            chunks = [c async for c in teacher.stream(replace(req, speculation=spec))]
            return [i for c in chunks for i in c.token_ids], sum(c.drafted for c in chunks)

        alone, spec = asyncio.run(answer(None)), asyncio.run(answer(Speculation(3)))
        assert spec[0] == alone[0] and spec[1] > 0 and teacher.counters["accepted"] > 0
    finally:
        teacher.close()
