from pathlib import Path

import pytest

from distill.config.base import DistillError
from distill.config.loader import apply_overrides
from distill.pipeline import PipelineConfig, load_config

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


def test_the_quantized_teacher_runs_before_evaluate_with_the_quantize_settings():
    cfg = PipelineConfig.model_validate(
        {"name": "x", "stages": ["quantize", "evaluate"], "quantize": {"group_size": 32}}
    )
    assert cfg.stages == ["quantize", "teacher_int4", "evaluate"]
    assert cfg.teacher_int4.quantize is not None and cfg.teacher_int4.quantize.group_size == 32
    off = {"name": "x", "stages": ["quantize", "evaluate"], "teacher_int4": {"enabled": False}}
    assert PipelineConfig.model_validate(off).stages == ["quantize", "evaluate"]
    own = {
        "name": "x",
        "stages": ["quantize", "evaluate"],
        "teacher_int4": {"quantize": {"group_size": 128}},
    }
    assert PipelineConfig.model_validate(own).teacher_int4.quantize.group_size == 128
    for stages, needle in (
        (["quantize", "evaluate", "teacher_int4"], "teacher_int4 must come before evaluate"),
    ):
        with pytest.raises(ValueError, match=needle):
            PipelineConfig.model_validate({"name": "x", "stages": stages})
    with pytest.raises(ValueError, match="teacher_int4.enabled is false"):
        PipelineConfig.model_validate(
            {"name": "x", "stages": ["teacher_int4"], "teacher_int4": {"enabled": False}}
        )


def test_the_gptq_teacher_is_exported_in_the_students_format_when_that_differs():
    student = {"kind": "ort-genai", "source": "gptq", "lm_head_bits": 8}
    q4_1 = {"kind": "ort-genai", "source": "fp", "algo": "q4_1", "lm_head_bits": 8}
    base = {"name": "x", "stages": ["quantize", "evaluate"]}
    cfg = PipelineConfig.model_validate(
        {**base, "quantize": {"engine": student}, "teacher_int4": {"quantize": {"engine": q4_1}}}
    )
    e = cfg.teacher_int4.gptq_engine
    assert e is not None and e == cfg.quantize.engine  # the student's format
    same = PipelineConfig.model_validate({**base, "quantize": {"engine": student}})
    assert same.teacher_int4.gptq_engine.kind == "none"  # teacher_int4 is that format already
    none = PipelineConfig.model_validate(base)
    assert none.teacher_int4.gptq_engine.kind == "none"  # no engine, no second export
    with pytest.raises(ValueError, match="gptq_engine exports the teacher's GPTQ checkpoint"):
        PipelineConfig.model_validate({**base, "teacher_int4": {"gptq_engine": q4_1}})
    bad = {"quantize": {"engine": q4_1, "group_size": -1}}  # per-channel: no engine blocks
    with pytest.raises(ValueError, match="teacher_int4.gptq_engine .*needs a group_size"):
        PipelineConfig.model_validate(
            {**base, "quantize": {"engine": student}, "teacher_int4": bad}
        )


def test_the_quantized_teacher_is_keyed_on_its_own_settings_alone():
    from distill.runner import stage_keys

    def keys(**over):
        data = {"name": "x", "stages": ["distill", "quantize", "evaluate"], **over}
        return stage_keys(PipelineConfig.model_validate(data), "base")

    a, b = keys(), keys(distill={"max_steps": 7})
    assert a["distill"] != b["distill"] and a["evaluate"] != b["evaluate"]
    assert a["teacher_int4"] == b["teacher_int4"]  # a new student reuses the int4 teacher
    c = keys(quantize={"group_size": 32})
    assert c["teacher_int4"] != a["teacher_int4"] and c["evaluate"] != a["evaluate"]
