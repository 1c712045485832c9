"""On-policy distillation in the Ray Train loop, and the teacher as a Ray actor (tiny models).

Each run takes ~20-40 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config.base import DistillError
from distill.losses import LossWeights, total_loss
from distill.train.config import DistillConfig
from distill.train.launch import launch
from distill.train.loop import LoopSpec
from distill.train.rollout import sample, step_generator
from distill.train.teacher import FAIL_ENV, LocalTeacher, RemoteTeacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_gqa, cache_dir):
    """A teacher with sharp distributions (final norm × 8) and a 2-layer random student."""
    from distill.models.config import TinySource
    from distill.models.files import copy_tokenizer_files
    from distill.models.loader import load_causal_lm, resolve_source

    teacher_dir = tmp_path_factory.mktemp("sharp-teacher")
    t = load_causal_lm(tiny_gqa.path)
    with torch.no_grad():
        t.model.norm.weight.mul_(8.0)
    t.save_pretrained(teacher_dir)
    copy_tokenizer_files(tiny_gqa.path, teacher_dir)
    student = resolve_source(TinySource(num_hidden_layers=2, seed=1), cache_dir)
    return Path(teacher_dir), student.path


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_rows):
    from distill.data.packed import write_rows

    d = tmp_path_factory.mktemp("rows32")
    rows = np.concatenate([tiny_rows[:, :32], tiny_rows[:, 32:]])  # 48 rows of 32
    write_rows(d / "train.parquet", rows[:40])
    write_rows(d / "heldout.parquet", rows[40:])
    return d, rows


def _spec(models, data, out: Path, **kw) -> LoopSpec:
    base = {
        "mode": "online",
        "num_workers": 1,
        "cpus_per_worker": 2,
        "zero_stage": 0,
        "batch_size": 4,
        "max_steps": 8,
        "lr": 5e-3,
        "warmup_steps": 1,
        "min_lr_ratio": 1.0,
        "eval_rows": 8,
        "seed": 0,
        "max_failures": 0,
        "teacher_placement": "actor",
        "on_policy": {"lmbda": 1.0, "max_new_tokens": 8, "prompt_tokens": 16},
        "loss": {"name": "reverse_kl"},
    }
    cfg = DistillConfig.model_validate({**base, **kw})
    return LoopSpec(
        cfg=cfg,
        student_path=str(models[1]),
        teacher_path=str(models[0]),
        train_path=str(data[0] / "train.parquet"),
        heldout_path=str(data[0] / "heldout.parquet"),
        seq_len=32,
        total_steps=cfg.total_steps(32),
        out_dir=str(out),
    )


def _rkl_on_own_samples(student_dir: Path, teacher_dir: Path, rows: np.ndarray) -> float:
    from distill.models.loader import load_causal_lm

    student, teacher = load_causal_lm(student_dir), load_causal_lm(teacher_dir)
    prompts = torch.as_tensor(rows[:16, :16], dtype=torch.long)
    vals = []
    with torch.no_grad():
        for seed in (7, 8, 9):
            roll = sample(student, prompts, 8, 1.0, [], 0, step_generator(seed, 0, 0, 0))
            out = student(input_ids=roll.input_ids, attention_mask=roll.attention_mask)
            t = type("T", (), {"logits": teacher(input_ids=roll.input_ids).logits})()
            loss, _ = total_loss(
                LossWeights(ce=0.0, kd=1.0, name="reverse_kl"),
                out,
                roll.input_ids,
                roll.attention_mask,
                roll.labels,
                teacher_out=t,
            )
            vals.append(float(loss))
    return sum(vals) / len(vals)


@pytest.mark.timeout(240)
def test_on_policy_loop_with_a_teacher_actor_lowers_reverse_kl_on_own_samples(
    tmp_path, ray_local, models, data
):
    spec = _spec(models, data, tmp_path / "student", max_steps=16, batch_size=8, lr=1e-2)
    metrics = launch(spec, "op-actor", tmp_path / "ray")
    assert metrics["step"] == 16 and metrics["on_policy_steps"] == 16
    assert 0 < metrics["rollout_tokens"] <= 16 * 8 * 8 and metrics["rollout_seconds"] > 0
    before = _rkl_on_own_samples(models[1], models[0], data[1])
    after = _rkl_on_own_samples(tmp_path / "student", models[0], data[1])
    assert after < 0.95 * before, (before, after)  # seeded: the same samples every run


@pytest.mark.timeout(120)
def test_teacher_actor_gives_the_loss_of_the_in_worker_teacher(ray_local, models, data):
    """Same rollout, same student: the actor's hidden states + head (fused loss) and its logits
    (unfused) give the in-worker teacher's loss."""
    from distill.models.loader import load_causal_lm
    from distill.train.engine import head_weight

    teacher_dir, student_dir = models
    student = load_causal_lm(student_dir)
    cfg = DistillConfig(mode="online", teacher_placement="actor", cpus_per_worker=1)
    local = LocalTeacher.load(str(teacher_dir), "float32", torch.device("cpu"))
    remote = RemoteTeacher.for_this_node("test-equal", str(teacher_dir), cfg, torch.device("cpu"))
    prompts = torch.as_tensor(data[1][:4, :16], dtype=torch.long)
    roll = sample(student, prompts, 8, 1.0, [], 0, step_generator(0, 0, 0, 0))
    spec = LossWeights(ce=0.0, kd=1.0, name="jsd", param=0.5)
    losses = {}
    for name, teacher in (("local", local), ("actor", remote)):
        for fused in (True, False):
            t_out, t_head = teacher(roll.input_ids, roll.attention_mask, fused)
            head = head_weight(student) if fused else None
            with torch.no_grad():
                s_out = (student.base_model if fused else student)(
                    input_ids=roll.input_ids, attention_mask=roll.attention_mask
                )
                loss, _ = total_loss(
                    spec,
                    s_out,
                    roll.input_ids,
                    roll.attention_mask,
                    roll.labels,
                    teacher_out=t_out,
                    head=head,
                    teacher_head=t_head,
                    chunk=7,
                )
            losses[name, fused] = float(loss)
    assert losses["actor", True] == pytest.approx(losses["local", True], rel=1e-6)
    assert losses["actor", False] == pytest.approx(losses["local", False], rel=1e-6)
    assert losses["local", True] == pytest.approx(losses["local", False], rel=1e-4)


@pytest.mark.timeout(300)
def test_a_dead_teacher_actor_restarts_the_run_from_its_checkpoint(
    tmp_path, ray_local, models, data
):
    """The actor ends at its 3rd call (the third step; online mode scores every step; checkpoint
    every 2): with no actor restarts left the worker fails naming the actor, and Ray Train
    resumes from the step-2 checkpoint with a new actor."""
    marker = tmp_path / "teacher-died"
    spec = _spec(
        models,
        data,
        tmp_path / "student",
        max_failures=1,
        checkpoint_every=2,
        teacher_actor={"max_restarts": 0},
        on_policy={"lmbda": 0.5, "max_new_tokens": 8, "prompt_tokens": 16},
        loss={"name": "forward_kl"},
    )
    metrics = launch(spec, "op-dies", tmp_path / "ray", env={FAIL_ENV: f"3:{marker}"})
    assert marker.exists()
    assert metrics["step"] == 8 and metrics["resumed_from_step"] > 0
    assert (tmp_path / "student" / "model.safetensors").exists()


@pytest.mark.timeout(240)
def test_a_dead_teacher_actor_without_restarts_left_is_one_clear_error(
    tmp_path, ray_local, models, data
):
    spec = _spec(models, data, tmp_path / "student", teacher_actor={"max_restarts": 0})
    with pytest.raises(DistillError, match="teacher actor .* died"):
        launch(spec, "op-fails", tmp_path / "ray", env={FAIL_ENV: f"2:{tmp_path / 'm'}"})
    assert not (tmp_path / "student").exists()  # nothing half-written
    assert not list(tmp_path.glob(".student-tmp-*"))
