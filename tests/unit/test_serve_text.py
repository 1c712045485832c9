"""Incremental detokenization, stop strings and the batched sampler (no model, no Ray)."""

import random

import pytest
import torch

from distill.serve.engines.base import SamplingParams
from distill.serve.engines.sampling import sample_step
from distill.serve.engines.text import IncrementalDetokenizer, StopMatcher


@pytest.fixture(scope="module")
def tok(tiny_gqa):
    from distill.models.loader import load_tokenizer

    return load_tokenizer(tiny_gqa.path)


class CountingTok:
    """Wraps a tokenizer and records the length of every decode call."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def decode(self, ids, **kw):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, **kw)


def test_deltas_join_to_the_full_decode_with_a_bounded_window(tok):
    rng = random.Random(0)
    texts = ["def add(a, b):\n    return a + b  # ünïcödé ✓ 🙂", "x = 7\n\n\nprint('héllo')"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids = ids + [rng.randrange(len(tok)) for _ in range(40)]  # arbitrary ids too
        counting = CountingTok(tok)
        detok = IncrementalDetokenizer(counting)
        out = "".join(detok.add(i) for i in ids) + detok.flush()
        assert out == tok.decode(ids, skip_special_tokens=True)
        assert max(counting.lengths) <= 8  # never re-decodes the prefix


def test_stop_matcher_holds_back_and_cuts():
    m = StopMatcher(["END", "\n\n"])
    assert m.feed("abc E") == ("abc ", False)  # "E" may start "END"
    assert m.feed("N") == ("", False)
    assert m.feed("D tail") == ("", True)
    assert m.text.startswith("abc END") and m.emitted == 4
    m2 = StopMatcher(["END"])
    assert m2.feed("xE") == ("x", False)
    assert m2.feed("x") == ("Ex", False)  # not a stop after all
    assert m2.flush("yE") == "yE"  # the end releases what was held back
    assert StopMatcher().feed("anything") == ("anything", False)


def test_sampler_greedy_bias_penalties_and_top_logprobs():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = SamplingParams()
    biased = SamplingParams(logit_bias=((7, 100.0),), top_logprobs=3)
    out = sample_step(logits, [greedy, biased, greedy], [None] * 3)
    assert out.ids[0] == int(logits[0].argmax()) and out.ids[1] == 7
    raw = torch.log_softmax(logits, -1)
    assert out.logprobs[1] == pytest.approx(float(raw[1, 7]))  # raw, before the bias
    top = out.top[1]
    assert [t for t, _ in top] == raw[1].topk(3).indices.tolist()
    assert all(0 <= e <= 1 for e in out.entropies)
    penal = SamplingParams(presence_penalty=2.0, frequency_penalty=2.0)
    counts = torch.zeros(50)
    first = sample_step(logits[:1], [penal], [None], [counts]).ids[0]
    assert counts[first] == 1
    counts[first] = 50  # a token used 50 times is pushed far down
    assert sample_step(logits[:1], [penal], [None], [counts]).ids[0] != first


def test_seeded_sampling_repeats_per_row():
    logits = torch.zeros(2, 1000)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=3)

    def draw():
        gens = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)]
        return [sample_step(logits, [p, p], gens).ids for _ in range(5)]

    a, b = draw(), draw()
    assert a == b and all(x == y for x, y in a)  # same seed, same row draws
