"""prune.target_speedup: the budget search over planned shapes, on a fake engine speed and on a
real probe of a tiny model."""

import json

import pytest

import distill.prune.speedup as speedup
from distill.config.base import DistillError
from distill.prune.config import PruneConfig
from distill.runtime.config import EngineConfig


def _fake_engine(monkeypatch):
    """Decode time proportional to the probe's parameters plus a fixed per-token cost."""

    def tps(model_dir, engine, work, prompts):
        cfg = json.loads((model_dir / "config.json").read_text())
        layer = 3 * cfg["hidden_size"] * cfg["intermediate_size"]
        return 1e6 / (cfg["num_hidden_layers"] * layer + 2e4)

    monkeypatch.setattr(speedup, "_decode_tps", tps)


def test_the_largest_budget_that_reaches_the_speedup_is_chosen(tiny_gqa, monkeypatch, tmp_path):
    _fake_engine(monkeypatch)
    cfg = PruneConfig(policy="width", target_speedup=1.5, prune_hidden=False, prune_heads=False)
    s = speedup.plan_for_speedup(cfg, tiny_gqa.path, EngineConfig(), tmp_path)
    assert s.speedup >= 1.5 and len(s.probes) == speedup.PROBES
    # every probed budget above the chosen one was too slow
    assert all(sp < 1.5 for t, sp in s.probes if t > s.target_params)


def test_an_unreachable_speedup_is_one_clear_error(tiny_gqa, monkeypatch, tmp_path):
    _fake_engine(monkeypatch)
    cfg = PruneConfig(policy="width", target_speedup=15, prune_hidden=False, prune_heads=False)
    with pytest.raises(DistillError, match="target_speedup=15.0: even a [0-9]+% budget"):
        speedup.plan_for_speedup(cfg, tiny_gqa.path, EngineConfig(), tmp_path)


def test_a_probe_is_a_random_model_of_the_planned_shape_timed_in_the_engine(tiny_gqa, tmp_path):
    from distill.prune.planner import make_plan
    from distill.prune.shape import ModelShape

    src_cfg = json.loads((tiny_gqa.path / "config.json").read_text())
    plan = make_plan(
        PruneConfig(policy="depth", target_params=0.6), ModelShape.from_config(src_cfg)
    )
    d = speedup.probe_model(tiny_gqa.path, plan.shape, tmp_path / "probe")
    made = json.loads((d / "config.json").read_text())
    assert made["num_hidden_layers"] == plan.shape.num_hidden_layers < src_cfg["num_hidden_layers"]
    prompts = speedup.np.zeros((1, 8), dtype=speedup.np.int64)
    assert speedup._decode_tps(d, EngineConfig(kind="none"), tmp_path, prompts) > 0
    # the CPU int4 engine: the probe carries the source's tokenizer, which the exporter reads
    engine = EngineConfig(kind="ort-genai", source="fp", lm_head_bits=8, threads=1)
    assert speedup._decode_tps(d, engine, tmp_path, prompts) > 0
    assert (tmp_path / "probe-engine" / "genai_config.json").exists()


def test_target_speedup_excludes_the_other_targets():
    with pytest.raises(ValueError, match="give one of"):
        PruneConfig(target_speedup=1.5, target_params=0.5)
    with pytest.raises(ValueError):
        PruneConfig(target_speedup=1.0)
