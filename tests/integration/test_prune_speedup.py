"""prune.target_speedup: the budget search over planned shapes, on a fake engine speed and on a
real probe of a tiny model."""

import json

import pytest

import distill.prune.speedup as speedup
from distill.config.base import DistillError
from distill.prune.config import PruneConfig
from distill.runtime.config import EngineConfig


class _FakeEngine:
    """Decode time proportional to the probe's parameters plus a fixed per-token cost."""

    def __init__(self, model_dir):
        cfg = json.loads((model_dir / "config.json").read_text())
        layer = 3 * cfg["hidden_size"] * cfg["intermediate_size"]
        self.step = (cfg["num_hidden_layers"] * layer + 2e4) / 1e6

    def logits(self, ids):
        return None

    def decode_seconds(self, ids, new_tokens):
        return new_tokens * self.step


def _fake_engine(monkeypatch):
    class Loaded:  # what evaluate's speed timers accept: a model carrying an engine
        def __init__(self, model_dir, engine, work):
            self.engine = _FakeEngine(model_dir)

    monkeypatch.setattr(speedup, "_load_probe", Loaded)


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


def test_a_probe_the_engine_cannot_run_is_one_clear_error(tiny_gqa, monkeypatch, tmp_path):
    class Broken:
        def __init__(self, model_dir, engine, work):
            self.engine = _FakeEngine(model_dir)
            if model_dir.name != "source":  # every probe but the source's shape
                self.engine.decode_seconds = self._fail

        @staticmethod
        def _fail(ids, new_tokens):
            raise RuntimeError("MatMulNBits: unsupported shape")

    monkeypatch.setattr(speedup, "_load_probe", Broken)
    cfg = PruneConfig(policy="width", target_speedup=1.5, prune_hidden=False, prune_heads=False)
    with pytest.raises(DistillError, match="could not time a probe.*unsupported shape"):
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
    source = speedup._load_probe(tiny_gqa.path, EngineConfig(kind="none"), tmp_path)
    probe = speedup._load_probe(d, EngineConfig(kind="none"), tmp_path)
    assert all(tps > 0 for tps in speedup.paired_decode(source, probe, prompts))
    # the CPU int4 engine: the probe carries the source's tokenizer, which the exporter reads
    engine = EngineConfig(kind="ort-genai", source="fp", lm_head_bits=8, threads=1)
    in_engine = speedup._load_probe(d, engine, tmp_path)
    assert all(tps > 0 for tps in speedup.paired_decode(in_engine, in_engine, prompts))
    assert (tmp_path / "probe-engine" / "genai_config.json").exists()


def test_target_speedup_excludes_the_other_targets():
    with pytest.raises(ValueError, match="give one of"):
        PruneConfig(target_speedup=1.5, target_params=0.5)
    with pytest.raises(ValueError):
        PruneConfig(target_speedup=1.0)
