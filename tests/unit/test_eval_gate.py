"""The release gate's rules on plain report dicts, and its config errors."""

import pytest

from distill.config.base import DistillError
from distill.config.loader import validate
from distill.eval.config import GateConfig
from distill.eval.gate import choose_champion, judge
from distill.eval.release import verdict_lines
from distill.pipeline import PipelineConfig


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
    assert choose_champion(report, v, cfg).model == "student"


def test_good_int4_passes_and_the_best_ranked_eligible_model_is_champion():
    report = _report(
        TEACHER,
        _entry("student", 24.65, 0.418, syntax=0.625),
        _entry("int4", 27.44, 0.409, syntax=0.625),
    )
    cfg = GateConfig(dominance=[])
    v = judge(report, cfg)
    assert v["student"].passed and v["int4"].passed
    assert choose_champion(report, v, cfg).model == "student"  # lower perplexity
    by_size = GateConfig(dominance=[], rank_by="next_token_accuracy")
    assert choose_champion(report, judge(report, by_size), by_size).model == "student"
    assert choose_champion(report, {}, cfg).model is None


def _speed_report():
    """A run like the demo's: fp teacher, int4 teacher, student and its int4 forms."""
    return _report(
        _entry("teacher", 12.1, 0.50, syntax=0.0, decode_b1_tps=15.0, size_bytes=538e6),
        _entry("teacher_int4", 13.0, 0.48, syntax=0.0, decode_b1_tps=140.0, size_bytes=85e6),
        _entry("student", 29.4, 0.38, syntax=0.4, decode_b1_tps=21.0, size_bytes=312e6),
        _entry("int4", 34.4, 0.36, syntax=0.0, decode_b1_tps=10.0, size_bytes=88e6),
        _entry("int4_cpu", 39.5, 0.35, syntax=0.0, decode_b1_tps=235.0, size_bytes=49e6),
    )


def test_budget_picks_the_best_candidate_inside_it():
    report = _speed_report()
    base = {"vs_teacher": {}, "vs_fp_student": {}, "absolute": {}}
    models = ["student", "int4", "int4_cpu", "teacher_int4"]
    # no budget: the quantized teacher wins on quality
    cfg = GateConfig(models=models, **base)
    v = judge(report, cfg)
    assert choose_champion(report, v, cfg).model == "teacher_int4"
    # a speed budget the quantized teacher cannot meet: the fast int4 student
    cfg = GateConfig(
        models=models, budget={"decode_b1_tps": {"min": 1.5, "vs": "teacher_int4"}}, **base
    )
    v = judge(report, cfg)
    assert not v["teacher_int4"].in_budget and v["int4_cpu"].in_budget
    assert (
        "decode_b1_tps 140 FAILS ≥ 210 = 1.5 × teacher_int4 140" in v["teacher_int4"].outside_budget
    )
    assert choose_champion(report, v, cfg).model == "int4_cpu"
    # an absolute size budget
    cfg = GateConfig(models=models, budget={"size_bytes": {"max": 60e6}}, **base)
    assert choose_champion(report, judge(report, cfg), cfg).model == "int4_cpu"


def test_a_budget_nobody_meets_names_the_closest_candidate_and_makes_no_champion():
    report = _speed_report()
    cfg = GateConfig(
        models=["int4_cpu", "teacher_int4"],
        vs_teacher={},
        vs_fp_student={},
        absolute={},
        budget={"decode_b1_tps": {"min": 300}},
    )
    v = judge(report, cfg)
    choice = choose_champion(report, v, cfg)
    assert choice.model is None
    assert "no candidate meets the budget; closest: int4_cpu" in choice.why
    assert "decode_b1_tps 235" in choice.why and "perplexity 39.5" in choice.why


def test_dominated_candidates_are_reported_and_never_champion():
    report = _speed_report()
    cfg = GateConfig(
        models=["student", "int4", "int4_cpu", "teacher_int4"],
        vs_teacher={},
        vs_fp_student={},
        absolute={},
    )
    v = judge(report, cfg)
    # the gptqmodel int4 student: worse, slower and larger than the int4 teacher
    assert v["int4"].dominated_by == "teacher_int4" and not v["int4"].eligible
    # the fp student is slower and larger than teacher_int4 and worse: dominated
    assert v["student"].dominated_by == "teacher_int4"
    # the int4_cpu student is faster and smaller: not dominated
    assert v["int4_cpu"].dominated_by is None and v["teacher_int4"].dominated_by is None
    assert v["int4"].to_dict()["dominated_by"] == "teacher_int4"
    # when only dominated candidates fit the budget, there is no champion, and it says why
    cfg = GateConfig(
        models=["student", "teacher_int4"],
        vs_teacher={},
        vs_fp_student={},
        absolute={},
        budget={"size_bytes": {"max": 400e6}},
    )
    report["models"][1]["size_bytes"] = 500e6  # the int4 teacher now outside the budget
    v = judge(report, cfg)
    assert v["student"].dominated_by is None  # smaller than the int4 teacher now
    assert choose_champion(report, v, cfg).model == "student"


def test_the_teacher_in_the_students_format_is_a_baseline_candidate():
    """teacher_int4_gptq_cpu is held against the fp teacher, and inside a budget written
    against teacher_int4 it can take the champion from a student that only outruns Q4_1."""
    report = _speed_report()
    report["models"].append(
        _entry(
            "teacher_int4_gptq_cpu", 14.5, 0.47, syntax=0.0, decode_b1_tps=215.0, size_bytes=80e6
        )
    )
    cfg = GateConfig(
        vs_teacher={},
        vs_fp_student={"perplexity": {"max": 1.25}},
        absolute={},
        budget={"decode_b1_tps": {"min": 1.5, "vs": "teacher_int4"}},
    )
    assert "teacher_int4_gptq_cpu" in cfg.models  # a default candidate
    v = judge(report, cfg)
    ref = next(c for c in v["teacher_int4_gptq_cpu"].checks if c.rule == "vs_fp_student")
    assert ref.reference == "teacher" and ref.limit == pytest.approx(1.25 * 12.1)
    assert v["teacher_int4_gptq_cpu"].in_budget and v["int4_cpu"].in_budget
    assert v["int4_cpu"].dominated_by is None  # faster than both teachers, smaller
    assert choose_champion(report, v, cfg).model == "teacher_int4_gptq_cpu"  # better ppl


def test_dominance_needs_every_axis_and_one_strict():
    report = _report(
        _entry("teacher", 10.0, 0.5),
        _entry("a", 12.0, 0.4, decode_b1_tps=100.0, size_bytes=50.0),
        _entry("b", 12.0, 0.4, decode_b1_tps=100.0, size_bytes=50.0),  # identical: no one wins
        _entry("c", 11.0, 0.4, decode_b1_tps=90.0, size_bytes=40.0),  # better but slower
    )
    from distill.eval.gate import dominator

    entries = {m["model"]: m for m in report["models"]}
    axes = ["perplexity", "decode_b1_tps", "size_bytes"]
    assert dominator("a", entries, ["a", "b", "c"], axes) is None
    entries["b"]["size_bytes"] = 45.0
    assert dominator("a", entries, ["a", "b", "c"], axes) == "b"
    entries["a"].pop("decode_b1_tps")  # a model without a speed figure cannot be compared
    assert dominator("a", entries, ["a", "b", "c"], axes) is None


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
        absolute={"decode_b1_tps": {"min": 100}},
    )
    report = _report(
        _entry("teacher", 10.0, 0.5, extra={"ood": {"perplexity": 20.0}}, decode_b1_tps=50.0),
        _entry("student", 12.0, 0.45, extra={"ood": {"perplexity": 50.0}}, decode_b1_tps=150.0),
    )
    v = judge(report, cfg)["student"]
    assert not v.passed and v.reasons == ["extra.ood.perplexity 50 FAILS ≤ 40 = 2 × teacher 20"]
    report["models"][1]["decode_b1_tps"] = 80.0  # a failing absolute rule has no reference
    v = judge(report, cfg)["student"]
    assert "decode_b1_tps 80 FAILS ≥ 100" in v.reasons


@pytest.mark.parametrize(
    "gate, needle",
    [
        ({"vs_teacher": {"perplexty": {"max": 2}}}, "unknown metric 'perplexty'"),
        ({"absolute": {"generation.chrf": {"min": 1}}}, "unknown metric 'generation.chrf'"),
        ({"vs_teacher": {"perplexity": {}}}, "give min and/or max"),
        ({"models": ["studnet"]}, "unknown model(s) ['studnet']"),
        ({"vs_teacher": {"extra.ood.perplexity": {"max": 2}}}, "extra corpora ['ood']"),
        ({"dominance": ["extra.ood.perplexity"]}, "extra corpora ['ood']"),
        ({"budget": {"decode_b1_tps": {"min": 2, "vs": "studnet"}}}, "vs names unknown model"),
        ({"budget": {"tokens_per_s": {"min": 2}}}, "unknown metric 'tokens_per_s'"),
        ({"rank_by": "speed"}, "unknown metric 'speed'"),
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
    assert lines[-1] == "gate: no champion (); alias 'champion' not moved"


def test_no_champion_says_why_each_candidate_inside_the_budget_is_out():
    report = _speed_report()  # today's demo: the fast int4 student is too poor, the rest slow
    cfg = GateConfig(
        models=["student", "int4", "int4_cpu", "teacher_int4"],
        vs_teacher={"perplexity": {"max": 3.0}},
        vs_fp_student={},
        absolute={},
        budget={"decode_b1_tps": {"min": 1.5, "vs": "teacher_int4"}},
    )
    v = judge(report, cfg)
    choice = choose_champion(report, v, cfg)
    assert choice.model is None
    assert choice.why == "inside the budget: int4_cpu fails its rules"
