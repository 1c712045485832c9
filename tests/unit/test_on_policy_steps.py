"""On-policy distillation pieces on tiny models (no Ray): the step schedule, the student's
KV-cached samples, which positions carry the loss, and that on-policy steps teach."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.losses import LossWeights, total_loss
from distill.train.config import DistillConfig
from distill.train.inputs import check_inputs
from distill.train.loop import LoopSpec, stop_ids
from distill.train.rollout import is_on_policy, rollout_rows, sample, step_generator
from distill.train.teacher import LocalTeacher


@pytest.fixture(scope="module")
def pair(tiny_gqa, cache_dir):
    """A sharp teacher (final norm × 8) and a 2-layer random student, in memory."""
    from distill.models.config import TinySource
    from distill.models.loader import load_causal_lm, resolve_source

    teacher = load_causal_lm(tiny_gqa.path)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(8.0)
    student = load_causal_lm(resolve_source(TinySource(num_hidden_layers=2, seed=1)).path)
    return teacher.eval().requires_grad_(False), student


def test_on_policy_steps_are_an_even_share_fixed_by_the_step():
    for lmbda in (0.25, 0.5, 0.7):
        picks = [is_on_policy(s, lmbda) for s in range(40)]
        assert sum(picks) == int(40 * lmbda) and not picks[0]
    assert not any(is_on_policy(s, 0.0) for s in range(10))
    assert all(is_on_policy(s, 1.0) for s in range(10))
    a = torch.rand(5, generator=step_generator(0, 3, 1, 0))
    assert torch.equal(a, torch.rand(5, generator=step_generator(0, 3, 1, 0)))
    assert not torch.equal(a, torch.rand(5, generator=step_generator(0, 4, 1, 0)))


def test_rollout_counts_generated_tokens_up_to_the_first_stop():
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    completion = torch.tensor([[11, 0, 12, 13], [14, 15, 16, 17]])  # row 0 stops (id 0) early
    r = rollout_rows(prompts, completion, torch.tensor([0]))
    assert r.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [1] * 7]
    assert r.labels.tolist() == [
        [-100, -100, -100, 11, 0, -100, -100],
        [-100, -100, -100, 14, 15, 16, 17],
    ]
    assert r.generated == 6 and r.tokens == 12


def test_kv_cached_sampling_matches_greedy_generate_and_is_seeded(pair):
    _, student = pair
    prompts = torch.randint(5, 500, (3, 10), generator=torch.Generator().manual_seed(0))
    cold = sample(student, prompts, 12, 1e-4, [], 0, step_generator(0, 0, 0, 0))
    ref = student.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.equal(cold.input_ids, ref)
    a = sample(student, prompts, 12, 1.0, [], 0, step_generator(0, 5, 0, 0))
    b = sample(student, prompts, 12, 1.0, [], 0, step_generator(0, 5, 0, 0))
    assert torch.equal(a.input_ids, b.input_ids) and a.generated == 36
    student.train()
    sample(student, prompts, 2, 1.0, [], 0)
    assert student.training  # sampling runs in eval mode and gives the mode back


def _loss(student, teacher_logits, roll, name="reverse_kl"):
    spec = LossWeights(ce=0.0, kd=1.0, name=name)
    out = student(input_ids=roll.input_ids, attention_mask=roll.attention_mask)
    t_out = type("T", (), {"logits": teacher_logits})()
    loss, _ = total_loss(
        spec, out, roll.input_ids, roll.attention_mask, roll.labels, teacher_out=t_out
    )
    return loss


def test_rollout_positions_carry_the_loss_and_prompt_positions_do_not(pair):
    teacher, student = pair
    prompts = torch.randint(5, 500, (2, 8), generator=torch.Generator().manual_seed(1))
    roll = sample(student, prompts, 6, 1.0, [], 0, step_generator(0, 0, 0, 0))
    with torch.no_grad():
        t = teacher(input_ids=roll.input_ids).logits
        base = _loss(student, t, roll)
        p = roll.prompt_len
        noisy_prompt = t.clone()
        noisy_prompt[:, : p - 1] += torch.randn_like(noisy_prompt[:, : p - 1]) * 5
        assert torch.allclose(_loss(student, noisy_prompt, roll), base)
        noisy_gen = t.clone()
        noisy_gen[:, p - 1 :] += torch.randn_like(noisy_gen[:, p - 1 :]) * 5
        assert not torch.allclose(_loss(student, noisy_gen, roll), base)
    # the gradient reaches the student only through positions p-1 .. end (they predict samples)
    ids = roll.input_ids.clone()
    emb = student.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = student(inputs_embeds=emb, attention_mask=roll.attention_mask)
    t_out = type("T", (), {"logits": t})()
    loss, _ = total_loss(
        LossWeights(ce=0.0, kd=1.0, name="reverse_kl"),
        out,
        ids,
        roll.attention_mask,
        roll.labels,
        teacher_out=t_out,
    )
    loss.backward()
    assert emb.grad[:, p:].abs().sum() > 0  # completion inputs feed later counted positions


def _reverse_kl_on_own_samples(student, teacher, prompts) -> float:
    """Mean over three sampling seeds no training step used."""
    out = []
    with torch.no_grad():
        for seed in (7, 8, 9):
            roll = sample(student, prompts, 8, 1.0, [], 0, step_generator(seed, 0, 0, 0))
            t = teacher(input_ids=roll.input_ids).logits
            out.append(float(_loss(student, t, roll)))
    return sum(out) / len(out)


def test_on_policy_steps_lower_the_reverse_kl_on_the_students_own_samples(pair, tiny_rows):
    teacher, student = pair
    student = copy.deepcopy(student).train()
    local = LocalTeacher(teacher)
    prompts = torch.as_tensor(tiny_rows[:8, :16], dtype=torch.long)
    before = _reverse_kl_on_own_samples(student, teacher, prompts)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    spec = LossWeights(ce=0.0, kd=1.0, name="reverse_kl")
    for step in range(20):
        roll = sample(student, prompts, 8, 1.0, [], 0, step_generator(0, step, 0, 0))
        t_out, _ = local(roll.input_ids, roll.attention_mask, fused=False)
        out = student(input_ids=roll.input_ids, attention_mask=roll.attention_mask)
        loss, _ = total_loss(
            spec, out, roll.input_ids, roll.attention_mask, roll.labels, teacher_out=t_out
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _reverse_kl_on_own_samples(student, teacher, prompts)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"on_policy": {"lmbda": 1.5}}, r"on_policy.lmbda must be in \[0, 1\]"),
        ({"on_policy": {"lmbda": -0.1}}, r"on_policy.lmbda must be in \[0, 1\]"),
        ({"mode": "sft", "on_policy": {"lmbda": 0.5}}, "not sft"),
        ({"zero_stage": 3, "on_policy": {"lmbda": 0.5}}, "zero_stage 0, 1 or 2"),
        ({"on_policy": {"lmbda": 0.5}, "loss": {"alpha": 1, "kd_weight": 0}}, "kd_weight > 0"),
        (
            {
                "mode": "online",
                "teacher_placement": "actor",
                "feature": {"weight": 1, "pairs": [[1, 0]]},
            },
            "teacher_placement: worker",
        ),
        ({"on_policy": {"lmbda": 0.5, "loss": {"name": "jsd", "alpha": 1}}}, "Extra inputs"),
    ],
)
def test_on_policy_config_refuses_what_cannot_run(kw, msg):
    with pytest.raises(ValidationError, match=msg):
        DistillConfig.model_validate(kw)


def test_on_policy_divergence_defaults_to_the_kd_loss():
    cfg = DistillConfig(on_policy={"lmbda": 0.5}, loss={"name": "jsd", "beta": 0.3})
    assert cfg.needs_teacher and cfg.on_policy_divergence().param() == 0.3
    cfg = DistillConfig(on_policy={"lmbda": 0.5, "loss": {"name": "reverse_kl"}})
    assert cfg.on_policy_divergence().name == "reverse_kl" and cfg.loss.name == "forward_kl"
    assert not DistillConfig().needs_teacher


def test_loop_spec_needs_a_teacher_and_room_for_prompts():
    base = {"student_path": "s", "seq_len": 32, "total_steps": 2, "out_dir": "o"}
    cfg = DistillConfig(on_policy={"lmbda": 0.5, "prompt_tokens": 16})
    with pytest.raises(ValidationError, match="needs the live teacher"):
        LoopSpec(cfg=cfg, **base)
    with pytest.raises(ValidationError, match="must be below the rows' seq_len"):
        LoopSpec(
            cfg=cfg.model_copy(
                update={"on_policy": cfg.on_policy.model_copy(update={"prompt_tokens": 32})}
            ),
            teacher_path="t",
            **base,
        )
    LoopSpec(cfg=cfg, teacher_path="t", **base)


def test_on_policy_with_a_store_but_no_teacher_weights_is_refused(tmp_path, tiny_gqa, tiny_mha):
    bare = tmp_path / "teacher-config-only"
    bare.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_gqa.path / f).exists():
            (bare / f).write_text((tiny_gqa.path / f).read_text())
    cfg = DistillConfig(on_policy={"lmbda": 0.5})
    with pytest.raises(DistillError, match="on_policy.lmbda 0.5 needs the live teacher"):
        check_inputs(cfg, bare, tiny_mha.path, tmp_path / "store", tiny_gqa)
    assert json.loads((bare / "config.json").read_text())["vocab_size"] == 512


def test_stop_ids_come_from_the_students_configs(pair):
    _, student = pair
    ids, pad = stop_ids(student)
    assert student.config.eos_token_id in ids and isinstance(pad, int)
