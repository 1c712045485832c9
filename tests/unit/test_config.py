from pathlib import Path

import pytest

from distill.config.base import DistillError
from distill.config.loader import apply_overrides, load_config
from distill.config.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_YAMLS = sorted((ROOT / "pipelines" / "configs").rglob("*.yaml"))


def test_there_are_pipeline_configs():
    names = {p.name for p in PIPELINE_YAMLS}
    assert {"smoke.yaml", "smollm2.yaml"} <= names


@pytest.mark.parametrize("path", PIPELINE_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pipeline_yaml_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig) and cfg.stages
    first = path.read_text().splitlines()[0]
    assert first.startswith("# distill run") or first.startswith("# ray job submit"), first


def test_overrides_parse_yaml_values(tmp_path):
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d.e=x"])
    assert data == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": "x"}}


def test_override_applies_to_config():
    cfg = load_config(ROOT / "pipelines/configs/smoke.yaml", ["data.seq_len=32", "workdir=/tmp/x"])
    assert cfg.data.seq_len == 32 and str(cfg.workdir) == "/tmp/x"


def test_offline_objective_the_store_cannot_give_fails_at_load():
    smoke = ROOT / "pipelines/configs/smoke.yaml"
    with pytest.raises(DistillError, match="only forward_kl has an unbiased estimate"):
        load_config(smoke, ["soft_labels.encoding=sampled", "distill.loss.name=jsd"])
    with pytest.raises(DistillError, match="temperature=2 with an offline topk store"):
        load_config(smoke, ["distill.loss.temperature=2.0"])
    assert load_config(smoke, ["soft_labels.encoding=sampled"]).soft_labels.encoding == "sampled"


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstages: [evaluate]\ndata:\n  seq_lenn: 3\n")
    with pytest.raises(DistillError) as e:
        load_config(p)
    assert "bad.yaml" in str(e.value) and "data.seq_lenn" in str(e.value)
    assert "unknown key" in str(e.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(DistillError, match="malformed YAML"):
        load_config(p)
    with pytest.raises(DistillError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(DistillError, match="expected KEY=VALUE"):
        load_config(ROOT / "pipelines/configs/smoke.yaml", ["novalue"])


def test_stage_validation(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\nstages: [evaluate, evaluate]\n")
    with pytest.raises(DistillError, match="listed twice"):
        load_config(p)
    p.write_text("name: x\nstages: [fly]\n")
    with pytest.raises(DistillError, match="stages.0"):
        load_config(p)


def test_teacher_union_discriminates():
    cfg = PipelineConfig.model_validate(
        {"name": "x", "stages": ["evaluate"], "teacher": {"kind": "tiny", "hidden_size": 32}}
    )
    assert cfg.teacher.kind == "tiny" and cfg.teacher.hidden_size == 32
    with pytest.raises(Exception, match="divisible"):
        PipelineConfig.model_validate(
            {"name": "x", "stages": ["evaluate"], "teacher": {"kind": "tiny", "hidden_size": 30}}
        )
