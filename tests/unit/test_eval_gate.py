"""The release gate's rules on plain report dicts, and its config errors."""

import pytest

from distill.config.base import DistillError
from distill.config.loader import validate
from distill.config.pipeline import PipelineConfig
from distill.eval.config import GateConfig
from distill.eval.gate import judge, pick_champion
from distill.eval.release import verdict_lines


def _entry(model, ppl, acc, syntax=None, **more):
    e = {"model": model, "perplexity": ppl, "next_token_accuracy": acc, **more}
    if syntax is not None:
        e["generation"] = {"syntax_valid": syntax, "degenerate": 0.0}
    return e


def _report(*entries):
    return {"models": list(entries)}


TEACHER = _entry("teacher", 10.66, 0.525, syntax=0.75)


def test_demo_like_student_passes_pruned_and_broken_int4_fail():
    report = _report(
        TEACHER,
        _entry("pruned", 162.0, 0.217, syntax=0.0),
        _entry("student", 24.65, 0.418, syntax=0.625),
        _entry("int4", 90.0, 0.30, syntax=0.5),
    )
    cfg = GateConfig(models=["pruned", "student", "int4"])
    v = judge(report, cfg)
    assert v["student"].passed and not v["student"].reasons
    assert not v["pruned"].passed
    assert any("perplexity 162 FAILS ≤ 31.98" in r for r in v["pruned"].reasons)
    assert not v["int4"].passed
    # int4 is held against the fp student it came from, not only the teacher
    assert any("1.25 × student 24.65" in r for r in v["int4"].reasons)
    assert pick_champion(v, ["student", "int4"]) == "student"


def test_good_int4_passes_and_champion_order_decides():
    report = _report(
        TEACHER,
        _entry("student", 24.65, 0.418, syntax=0.625),
        _entry("int4", 27.44, 0.409, syntax=0.625),
    )
    v = judge(report, GateConfig())
    assert v["student"].passed and v["int4"].passed
    assert pick_champion(v, ["int4", "student"]) == "int4"
    assert pick_champion({}, ["student"]) is None


def test_metric_missing_for_model_fails_missing_for_both_is_skipped():
    report = _report(
        _entry("teacher", 10.0, 0.5),  # no generation checks at all (prose corpus, disabled)
        _entry("student", 12.0, 0.45),
    )
    v = judge(report, GateConfig())["student"]
    assert v.passed and any("syntax_valid not measured: rule skipped" in s for s in v.skipped)
    report["models"][0]["generation"] = {"syntax_valid": 0.5}
    v = judge(report, GateConfig())["student"]
    assert not v.passed and "generation.syntax_valid not measured" in v.reasons[0]


def test_extra_corpus_and_absolute_rules():
    cfg = GateConfig(
        vs_teacher={"extra.ood.perplexity": {"max": 2.0}},
        vs_fp_student={},
        absolute={"tokens_per_s": {"min": 100}},
    )
    report = _report(
        _entry("teacher", 10.0, 0.5, extra={"ood": {"perplexity": 20.0}}, tokens_per_s=50.0),
        _entry("student", 12.0, 0.45, extra={"ood": {"perplexity": 50.0}}, tokens_per_s=150.0),
    )
    v = judge(report, cfg)["student"]
    assert not v.passed and v.reasons == ["extra.ood.perplexity 50 FAILS ≤ 40 = 2 × teacher 20"]
    report["models"][1]["tokens_per_s"] = 80.0  # a failing absolute rule has no reference
    v = judge(report, cfg)["student"]
    assert "tokens_per_s 80 FAILS ≥ 100" in v.reasons


@pytest.mark.parametrize(
    "gate, needle",
    [
        ({"vs_teacher": {"perplexty": {"max": 2}}}, "unknown metric 'perplexty'"),
        ({"absolute": {"generation.chrf": {"min": 1}}}, "unknown metric 'generation.chrf'"),
        ({"vs_teacher": {"perplexity": {}}}, "give min and/or max"),
        ({"models": ["studnet"]}, "unknown model(s) ['studnet']"),
        ({"vs_teacher": {"extra.ood.perplexity": {"max": 2}}}, "extra corpora ['ood']"),
    ],
)
def test_bad_gate_config_is_one_error_naming_the_key(gate, needle):
    data = {"name": "x", "stages": ["evaluate"], "gate": gate}
    with pytest.raises(DistillError) as e:
        validate(PipelineConfig, data, "cfg.yaml")
    assert needle in str(e.value) and "cfg.yaml" in str(e.value)


def test_extra_corpus_named_by_the_gate_is_accepted(tmp_path):
    data = {
        "name": "x",
        "stages": ["evaluate"],
        "evaluate": {"extra_corpora": [{"name": "ood", "paths": [str(tmp_path)]}]},
        "gate": {"vs_teacher": {"extra.ood.perplexity": {"max": 2}}},
    }
    assert validate(PipelineConfig, data, "cfg.yaml").gate.vs_teacher


def test_verdict_lines_say_why():
    report = _report(TEACHER, _entry("student", 50.0, 0.2, syntax=0.6))
    v = judge(report, GateConfig())
    gate = {
        "alias": "champion",
        "verdicts": {k: x.to_dict() for k, x in v.items()},
        "champion": None,
    }
    lines = verdict_lines({**report, "gate": gate})
    assert lines[0].startswith("gate: student FAIL: next_token_accuracy 0.2 FAILS ≥ 0.3675")
    assert "perplexity 50 FAILS ≤ 31.98" in lines[0]
    assert lines[-1] == "gate: no model passed; alias 'champion' not moved"
