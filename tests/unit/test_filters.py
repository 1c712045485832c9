"""Each sequence-KD filter on hand-made rows, and the in/kept/dropped counts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distill.data.filters import (
    DedupFilter,
    FiltersConfig,
    LengthFilter,
    LogprobFilter,
    QualityFilter,
    RepetitionFilter,
    SyntaxFilter,
    apply_filters,
    extract_code,
    filter_dedup,
    filter_length,
    filter_logprob,
    filter_quality,
    filter_repetition,
    filter_syntax,
    repeated_fraction,
    reports_metrics,
)


def row(completion: str, **kw) -> dict:
    return {"prompt": kw.pop("prompt", "p"), "completion": completion, **kw}


def texts(rows: list[dict]) -> list[str]:
    return [r["completion"] for r in rows]


def test_quality_drops_empty_refusals_and_truncated():
    rows = [
        row("def f(): return 1", finish_reason="stop"),
        row("   \n", finish_reason="stop"),
        row("I'm sorry, but I cannot help with that.", finish_reason="stop"),
        row("As an AI language model, I won't", finish_reason="stop"),
        row("def g(): return", finish_reason="length"),
    ]
    kept, rep = filter_quality(rows, QualityFilter())
    assert texts(kept) == ["def f(): return 1"]
    assert (rep.n_in, rep.kept, rep.dropped) == (5, 1, 4)
    kept, _ = filter_quality(rows, QualityFilter(drop_truncated=False, refusal_patterns=[]))
    assert len(kept) == 4  # only the empty one goes


def test_length_in_tokens_and_chars():
    rows = [row("a" * 10, n_tokens=2), row("b" * 100, n_tokens=30), row("c" * 40, n_tokens=None)]
    kept, rep = filter_length(rows, LengthFilter(unit="tokens", min=5, max=20))
    assert texts(kept) == ["c" * 40]  # unknown count estimated as chars/4 = 10
    assert rep.notes and "estimated" in rep.notes[0]
    kept, _ = filter_length(rows, LengthFilter(unit="chars", min=0, max=50))
    assert texts(kept) == ["a" * 10, "c" * 40]
    with pytest.raises(ValidationError, match="must be ≥"):
        LengthFilter(min=10, max=5)


def test_repetition():
    loop = "the cat sat " * 20
    assert repeated_fraction(loop, 3) > 0.8
    assert repeated_fraction("one two three four five six", 3) == 0.0
    kept, rep = filter_repetition(
        [row(loop), row("a short distinct answer here")], RepetitionFilter()
    )
    assert texts(kept) == ["a short distinct answer here"] and rep.dropped == 1


def test_syntax_checks_code_rows_only():
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    bad = "```python\ndef add(a, b)\n    return a + b\n```"
    assert extract_code(good).strip().startswith("def add")
    rows = [row(good, kind="code"), row(bad, kind="code"), row("not code (", kind="text")]
    kept, rep = filter_syntax(rows, SyntaxFilter())
    assert texts(kept) == [good, "not code ("] and rep.dropped == 1
    # a bare completion without a fence is parsed as a whole
    kept, _ = filter_syntax([row("x = 1\nprint(x)", kind="code")], SyntaxFilter())
    assert len(kept) == 1


def test_logprob_threshold_and_unknown():
    rows = [row("a", mean_logprob=-0.5), row("b", mean_logprob=-3.0), row("c", mean_logprob=None)]
    kept, rep = filter_logprob(rows, LogprobFilter(min_mean_logprob=-1.0))
    assert texts(kept) == ["a", "c"]
    assert "1 row(s) without teacher log-probs" in rep.notes[0]
    kept, rep = filter_logprob(rows, LogprobFilter())  # no threshold: off
    assert len(kept) == 3 and not rep.notes


BASE = (
    "To reverse a list in Python you can use slicing with a negative step, which returns a new "
    "list, or call the reverse method which changes the list in place and returns None."
)


@pytest.mark.parametrize("method", ["minhash", "jaccard"])
def test_dedup_exact_and_near(method):
    near = BASE.replace("returns None.", "returns nothing.")
    other = "Use sorted() with key=len to order strings by their length, shortest first."
    rows = [
        row(BASE),
        row("  " + BASE.upper() + " "),  # exact after normalization
        row(near),
        row(other),
        row(BASE, prompt="another prompt"),
    ]
    kept, rep = filter_dedup(rows, DedupFilter(method=method, near_threshold=0.8))
    assert texts(kept) == [BASE, other]
    assert rep.dropped == 3 and "exact duplicates: 1" in rep.notes[0]
    kept, _ = filter_dedup(rows, DedupFilter(method=method, scope="per_prompt", near_threshold=0.8))
    assert len(kept) == 3  # the other prompt's copy is kept when deduping per prompt
    kept, _ = filter_dedup(rows, DedupFilter(near=False))
    assert len(kept) == 4


def test_apply_filters_reports_every_enabled_filter():
    rows = [
        row("def f():\n    return 1", kind="code", n_tokens=8, finish_reason="stop"),
        row("def f(:", kind="code", n_tokens=4, finish_reason="stop"),
        row("", kind="text", n_tokens=0, finish_reason="stop"),
    ]
    cfg = FiltersConfig.model_validate({"repetition": {"enabled": False}})
    kept, reports = apply_filters(rows, cfg)
    assert len(kept) == 1
    assert [r.name for r in reports] == ["quality", "length", "syntax", "logprob", "dedup"]
    for a, b in zip(reports, reports[1:], strict=False):
        assert b.n_in == a.kept
    m = reports_metrics(reports, len(rows))
    assert m["filter.total.in"] == 3 and m["filter.total.kept"] == 1
    assert m["filter.syntax.dropped"] == 1 and m["filter.quality.dropped"] == 1
    assert m["filter.total.kept_fraction"] == pytest.approx(1 / 3)


def test_bad_refusal_regex_is_refused():
    with pytest.raises(ValidationError, match="is not a regex"):
        QualityFilter(refusal_patterns=["("])
