"""The threshold choice from replayed prompts (pure: no models)."""

import pytest

from distill.config.base import DistillError
from distill.serve.calibrate import Target, choose, evaluate, token_agreement, tradeoff

CONF = [0.9, 0.8, 0.3, 0.2]
AGREE = [1.0, 0.5, 0.25, 0.0]
EXACT = [True, False, False, False]


def test_token_agreement():
    assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_agreement([1, 9, 3], [1, 2, 3]) == pytest.approx(2 / 3)
    assert token_agreement([1, 2], [1, 2, 3, 4]) == 0.5
    assert token_agreement([], []) == 1.0 and token_agreement([1], []) == 0.0


def test_curve_endpoints_and_monotone_fallback():
    pts = tradeoff(CONF, AGREE, EXACT)
    assert pts[0].threshold == 0.0 and pts[0].fallback_rate == 0.0
    assert pts[0].agreement == pytest.approx(sum(AGREE) / 4) and pts[0].exact == 0.25
    assert pts[-1].threshold == 1.0 and pts[-1].fallback_rate == 1.0 and pts[-1].agreement == 1.0
    rates = [p.fallback_rate for p in pts]
    assert rates == sorted(rates)
    mid = evaluate(0.5, CONF, AGREE, EXACT)  # the two unconfident prompts go to the teacher
    assert mid.fallback_rate == 0.5 and mid.agreement == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_choose_meets_either_target_or_says_it_does_not():
    curves = {"a": tradeoff(CONF, AGREE, EXACT), "b": tradeoff([0.1] * 4, AGREE, EXACT)}
    ch = choose(curves, Target(min_agreement=0.85))
    assert ch.met and ch.scoring == "a" and ch.point.fallback_rate == 0.5
    ch = choose(curves, Target(max_fallback=0.25))
    assert ch.met and ch.point.fallback_rate <= 0.25 and ch.point.agreement == pytest.approx(0.6875)
    impossible = choose({"a": tradeoff(CONF, AGREE, EXACT)}, Target(max_fallback=-0.1))
    assert not impossible.met and impossible.point.fallback_rate == 0.0
    with pytest.raises(DistillError, match="exactly one target"):
        Target()


def test_prompts_from_the_corpus_stage_part_directory(tmp_path):
    """``runs/NAME/data/heldout.parquet`` is a directory of part files (the README command)."""
    import numpy as np

    from distill.data.packed import part_name, write_rows
    from distill.serve.calibrate_run import CalibrateConfig, load_prompts

    held = tmp_path / "heldout.parquet"
    held.mkdir()
    rows = np.arange(4 * 64, dtype=np.int32).reshape(4, 64)
    write_rows(held / part_name(0), rows[:2])
    write_rows(held / part_name(2), rows[2:])
    cfg = CalibrateConfig(student="s", prompts=held, out=tmp_path, prompt_tokens=16, num_prompts=4)
    assert load_prompts(cfg, None) == [r[:16].tolist() for r in rows]
    empty = tmp_path / "empty.parquet"
    empty.mkdir()
    with pytest.raises(DistillError, match="prompts not found"):
        load_prompts(cfg.model_copy(update={"prompts": empty}), None)


def test_quantile_score_sits_between_min_and_median():
    import math

    from distill.confidence import quantile, score

    lps = [-0.1, -3.0, -0.2, -0.05, -0.3]
    assert quantile(lps, 0.0) == -3.0 and quantile(lps, 1.0) == -0.05
    assert quantile(lps, 0.5) == -0.2  # median
    assert quantile([-1.0, -2.0], 0.25) == pytest.approx(-1.75)  # linear between order stats
    assert score(lps, [], "quantile", 0.0) == pytest.approx(score(lps, [], "min_prob"))
    assert score(lps, [], "quantile", 0.5) == pytest.approx(math.exp(-0.2))
    # one hard token: the mean hides it less than the low quantile shows it
    assert score(lps, [], "quantile", 0.1) < score(lps, [], "mean_logprob")
    assert score([], [], "quantile") == 1.0
    with pytest.raises(ValueError, match="quantile must be in"):
        score(lps, [], "quantile", 1.5)


def test_calibrate_compares_every_candidate_on_the_held_out_half():
    from distill.serve.calibrate_run import (
        Replayed,
        curves_for,
        fit_and_check,
        parse_candidate,
        scorings,
    )

    assert scorings([0.5, 0.1]) == [
        "mean_logprob",
        "min_prob",
        "entropy",
        "quantile:0.1",
        "quantile:0.5",
    ]
    assert parse_candidate("quantile:0.25@16") == ("quantile", 0.25, 16)
    assert parse_candidate("min_prob@8") == ("min_prob", None, 8)
    # the wrong answers have a few hard tokens among easy ones; the right ones are uniformly
    # moderately sure: their mean is lower, their low quantile higher
    ids = list(range(16))
    right = Replayed(ids, [-0.7] * 16, [0.1] * 16)
    wrong = Replayed(ids, [-0.01] * 13 + [-3.0] * 3, [0.1] * 16)
    student = [right, wrong] * 4
    teacher = [Replayed(ids, [], []), Replayed([99] * 16, [], [])] * 4
    data = curves_for(student, teacher, [16], [0.1, 0.5])
    fitted = fit_and_check(data, Target(min_agreement=1.0))
    per = fitted["per"]
    assert set(per) == {f"{m}@16" for m in scorings([0.1, 0.5])}
    assert per["quantile:0.1@16"]["heldout"]["fallback_rate"] == 0.5  # only the wrong ones
    assert per["quantile:0.1@16"]["heldout"]["agreement"] == 1.0
    assert per["mean_logprob@16"]["heldout"]["fallback_rate"] == 1.0  # the mean ranks them up
    assert fitted["check"].fallback_rate == 0.5 and fitted["check"].agreement == 1.0
