"""Contamination check: planted overlap caught, clean sets pass, report details."""

from __future__ import annotations

import numpy as np
import pytest

from distill.config.base import DistillError
from distill.eval.contamination import check_contamination, item_hashes


def _rows(seed: int, n: int = 6, length: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5000, size=(n, length), dtype=np.int32)


def test_planted_token_overlap_is_caught():
    train, held = _rows(0), _rows(1)
    clean = check_contamination({"heldout": held}, {"train": train}, n=13, threshold=0.05)
    assert clean.max_rate == 0.0 and clean.pairs[0].eval_ngrams == 6 * (64 - 13 + 1)
    held[2] = train[4]  # plant one training row in the held-out set
    with pytest.raises(DistillError) as e:
        check_contamination({"heldout": held}, {"train": train}, n=13, threshold=0.05)
    msg = str(e.value)
    assert "'heldout'" in msg and "'train'" in msg and "16.7%" in msg
    rep = check_contamination({"heldout": held}, {"train": train}, 13, 0.05, raise_error=False)
    assert rep.pairs[0].rate == pytest.approx(1 / 6) and rep.pairs[
        0
    ].items_touched == pytest.approx(1 / 6)
    assert rep.metrics()["contamination.heldout__train.rate"] == pytest.approx(1 / 6)


def test_word_ngrams_on_texts_and_every_pair():
    sentence = "the quick brown fox jumps over the lazy dog near the river bank today"
    evals = {"qa": ["what is the capital of france", f"Copied: {sentence.upper()}!"]}
    trains = {"gen": [f"intro text. {sentence}"], "other": ["nothing shared with anything here"]}
    rep = check_contamination(evals, trains, n=8, threshold=1.0)
    by = {(p.eval_set, p.train_set): p for p in rep.pairs}
    assert set(by) == {("qa", "gen"), ("qa", "other")}
    assert by[("qa", "gen")].shared_ngrams > 0 and by[("qa", "other")].shared_ngrams == 0
    assert by[("qa", "gen")].items_touched == 0.5
    with pytest.raises(DistillError, match="'qa' shares"):
        check_contamination(evals, trains, n=8, threshold=0.1)


def test_mixed_kinds_and_short_items():
    with pytest.raises(DistillError, match="tokenize both the same way"):
        check_contamination({"e": ["some text"]}, {"t": _rows(0)}, n=4)
    assert all(len(h) == 0 for h in item_hashes([[1, 2, 3]], 13))
    rep = check_contamination({"e": [[1, 2]]}, {"t": [[1, 2]]}, n=13, threshold=0.0)
    assert rep.max_rate == 0.0


def test_hashes_match_exact_ngrams():
    rows = _rows(3, n=2, length=40)
    exact = {tuple(r[i : i + 5]) for r in rows for i in range(36)}
    assert sum(len(h) for h in item_hashes(rows, 5)) == len(exact)


def test_run_level_check_on_packed_corpus_rows(tmp_path):
    from types import SimpleNamespace

    from distill.data.config import ContaminationConfig
    from distill.eval.contamination import check_run_contamination

    train, held = _rows(5), _rows(6)
    corpus = SimpleNamespace(train=lambda limit=None: train, heldout=lambda limit=None: held)
    cfg = ContaminationConfig(threshold=0.2)
    rep = check_run_contamination(corpus, None, tmp_path, cfg, {"sft.train": [held[0]]})
    assert {(p.eval_set, p.train_set) for p in rep.pairs} == {
        ("corpus.heldout", "corpus.train"),
        ("corpus.heldout", "sft.train"),
    }
    held[:3] = train[:3]
    with pytest.raises(DistillError, match="'corpus.heldout' shares 50.0%"):
        check_run_contamination(corpus, None, tmp_path, cfg)
    warn = ContaminationConfig(threshold=0.2, action="warn")
    assert check_run_contamination(corpus, None, tmp_path, warn).max_rate == 0.5
