"""The Generator on a tiny checkpoint (no Ray): pieces, stop strings, scores, context checks."""

import pytest

from distill.serve.engine import Generator, GenParams, PromptError


@pytest.fixture(scope="module")
def gen(tiny_gqa):
    return Generator(tiny_gqa.path, torch_threads=1)


def test_greedy_is_deterministic_and_pieces_join(gen):
    text = gen.render(prompt="def add(a, b):\n    return")
    a = gen.generate(text, GenParams(max_tokens=6))
    b = gen.generate(text, GenParams(max_tokens=6))
    assert a.text == b.text and "".join(a.pieces) == a.text
    assert a.completion_tokens == 6 and a.finish_reason == "length"
    assert a.prompt_tokens == len(gen.encode(text))
    assert set(a.scores) == {"mean_logprob", "min_prob", "entropy"}
    assert all(0 <= v <= 1 for v in a.scores.values())
    assert a.scores["min_prob"] <= a.scores["mean_logprob"]


def test_seeded_sampling_repeats(gen):
    text = gen.render(prompt="import os")
    p = GenParams(max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    assert gen.generate(text, p).text == gen.generate(text, p).text


def test_stop_string_trims_text_and_pieces(gen):
    text = gen.render(prompt="def add(a, b):\n    return")
    full = gen.generate(text, GenParams(max_tokens=8))
    if len(full.text) < 2:
        pytest.skip("tiny model produced too little text to cut")
    stop = full.text[len(full.text) // 2 :][:2]
    cut = gen.generate(text, GenParams(max_tokens=8, stop=(stop,)))
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text) and "".join(cut.pieces) == cut.text


def test_chat_template_and_context_limit(gen):
    chat = gen.render(messages=[{"role": "user", "content": "hi"}])
    assert chat.startswith("<|im_start|>user") and chat.endswith("<|im_start|>assistant\n")
    out = gen.generate(chat, GenParams(max_tokens=3), chat=True)
    assert out.completion_tokens == 3
    with pytest.raises(PromptError, match="exceeds the context limit of 32"):
        gen.generate("word " * 40, GenParams(max_tokens=4), context_limit=32)
