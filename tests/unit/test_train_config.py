"""DistillConfig validation, DeepSpeed config, LR schedule, data positions and bad-input checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from distill.config.base import DistillError
from distill.train.config import DistillConfig
from distill.train.data import Batches, batches_per_epoch, heldout_shard
from distill.train.engine import build_ds_config, lr_lambda
from distill.train.inputs import check_inputs


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"max_steps": None}, "max_steps and/or max_tokens"),
        ({"feature": {"weight": 1.0, "pairs": [[1, 0]]}}, "needs mode: online"),
        ({"mode": "online", "attention": {"weight": 1.0}}, "pairs is empty"),
        (
            {"mode": "online", "zero_stage": 3, "feature": {"weight": 1, "pairs": [[1, 0]]}},
            "zero_stage 1 or 2",
        ),
        ({"dtype": "bfloat16"}, "use_gpu: true"),
        ({"loss": {"alpha": 0, "kd_weight": 0}}, "every loss weight is 0"),
        ({"loss": {"name": "hellinger"}}, "forward_kl"),
        ({"zero_stage": 4}, "0, 1, 2 or 3"),
        ({"betas": [0.9, 1.0]}, "betas must be in"),
        ({"batchsize": 4}, "Extra inputs"),
    ],
)
def test_config_rejects_bad_settings(kw, msg):
    with pytest.raises(ValidationError, match=msg):
        DistillConfig.model_validate(kw)


def test_budget_and_dtype():
    cfg = DistillConfig(max_steps=100, max_tokens=1000, batch_size=2, num_workers=2, grad_accum=2)
    assert cfg.tokens_per_step(32) == 256
    assert cfg.total_steps(32) == 4  # ceil(1000 / 256), below max_steps
    assert DistillConfig(max_steps=None, max_tokens=257, batch_size=2).total_steps(32) == 3
    assert DistillConfig().compute_dtype == "float32"
    assert DistillConfig(use_gpu=True).compute_dtype == "bfloat16"
    assert DistillConfig(loss={"name": "jsd", "beta": 0.3}).loss.param() == 0.3
    assert DistillConfig(loss={"name": "skew_reverse_kl", "skew": 0.2}).loss.param() == 0.2
    assert DistillConfig().loss.param() is None


def test_deepspeed_config():
    ds = build_ds_config(DistillConfig(zero_stage=3, batch_size=2, grad_accum=3, clip=0.5), 2)
    assert ds["train_batch_size"] == 12 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["torch_adam"] is True and not ds["bf16"]["enabled"]
    assert build_ds_config(DistillConfig(use_gpu=True), 1)["bf16"]["enabled"]


def test_warmup_cosine():
    f = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.55)
    assert f(20) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    vals = [f(i) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))


def test_data_position_is_a_function_of_the_step():
    rows = {"input_ids": np.arange(10 * 4).reshape(10, 4)}
    kw = {"shuffle": False}
    r0, r1 = (Batches.for_arrays(rows, 2, r, 2, **kw) for r in (0, 1))
    assert r0.per_epoch == 2  # floor(10 / 4): the short tail of an epoch is skipped
    assert r0.get(0)["input_ids"][:, 0].tolist() == [0, 4]
    assert r1.get(0)["input_ids"][:, 0].tolist() == [8, 12]
    assert r0.get(1)["input_ids"][:, 0].tolist() == [16, 20]
    assert r0.get(2)["input_ids"].tolist() == r0.get(0)["input_ids"].tolist()  # next epoch


def test_shuffled_order_is_a_seeded_permutation_per_epoch():
    """Every row once per epoch, ranks disjoint, a new order each epoch, the same order after a
    restart (a fresh object) and for the same seed; another seed gives another order."""
    n = 40
    rows = {"input_ids": np.arange(n)[:, None].repeat(3, 1)}

    def epoch_rows(seed: int, epoch: int) -> list[int]:
        srcs = [Batches.for_arrays(rows, 2, r, 2, seed=seed) for r in (0, 1)]
        per = srcs[0].per_epoch
        out: list[int] = []
        for m in range(epoch * per, (epoch + 1) * per):
            for s in srcs:
                out += s.get(m)["input_ids"][:, 0].tolist()
        return out

    e0, e1 = epoch_rows(0, 0), epoch_rows(0, 1)
    assert sorted(e0) == list(range(n)) and sorted(e1) == list(range(n))
    assert e0 != list(range(n)) and e0 != e1
    assert epoch_rows(0, 1) == e1  # restart at epoch 1: same rows
    assert epoch_rows(1, 0) != e0
    with pytest.raises(DistillError, match="only 3 training rows"):
        batches_per_epoch(3, 2, 2)
    h = np.arange(7)[:, None]
    assert heldout_shard(h, 7, 0, 2).ravel().tolist() == [0, 1, 2]
    assert heldout_shard(h, 7, 1, 2).ravel().tolist() == [3, 4, 5]


def _copy_with(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_bad_inputs_fail_before_training(tmp_path, tiny_gqa, tiny_mha):
    online = DistillConfig(mode="online")
    check_inputs(online, tiny_gqa.path, tiny_mha.path, None, tiny_gqa)  # compatible: fine
    padded = _copy_with(tiny_mha.path, tmp_path / "padded", vocab_size=576)
    with pytest.raises(DistillError, match="vocab_size 512 != student vocab_size 576"):
        check_inputs(online, tiny_gqa.path, padded, None, tiny_gqa)
    other_tok = _copy_with(tiny_mha.path, tmp_path / "tok", vocab_size=512)
    tj = json.loads((other_tok / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, different token ids
    (other_tok / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(DistillError, match="tokenizer"):
        check_inputs(online, tiny_gqa.path, other_tok, None, tiny_gqa)
    feat = DistillConfig(mode="online", feature={"weight": 1.0, "pairs": [[3, 4]]})
    with pytest.raises(DistillError, match="student layer 4 out of range 0..3"):
        check_inputs(feat, tiny_gqa.path, tiny_mha.path, None, tiny_gqa)
    with pytest.raises(DistillError, match="no soft-label store"):
        check_inputs(DistillConfig(mode="offline"), tiny_gqa.path, tiny_mha.path, None, tiny_gqa)
    with pytest.raises(DistillError, match="no soft-label store at"):
        check_inputs(DistillConfig(), tiny_gqa.path, tiny_mha.path, tmp_path / "none", tiny_gqa)


def test_sft_mode_is_plain_ce_and_refuses_kd_extras():
    cfg = DistillConfig(mode="sft", loss={"alpha": 0, "kd_weight": 0})  # loss section ignored
    assert cfg.loss_weights() == (1.0, 0.0)
    assert DistillConfig(loss={"alpha": 0.5, "kd_weight": 2}).loss_weights() == (0.5, 2)
    with pytest.raises(ValidationError, match="needs mode: online"):
        DistillConfig(mode="sft", feature={"weight": 1.0, "pairs": [[1, 0]]})


def test_sft_batches_follow_step_positions_and_keep_masks():
    from distill.train.data import sft_columns

    n, seq = 10, 6
    ids = np.arange(n * seq, dtype=np.int32).reshape(n, seq)
    rows = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()}
    rows["labels"][:, :2] = -100
    cols = sft_columns(rows)
    r0, r1 = (Batches.for_arrays(cols, 2, r, 2, shuffle=False) for r in (0, 1))
    assert r0.per_epoch == 2
    b0, b1 = r0.get(1), r1.get(1)
    assert b0["input_ids"][:, 0].tolist() == [4 * seq, 5 * seq]
    assert b1["input_ids"][:, 0].tolist() == [6 * seq, 7 * seq]
    assert r0.get(3)["input_ids"].equal(b0["input_ids"])  # epoch wrap, same as a restart
    assert (b0["labels"][:, :2] == -100).all() and b0["labels"].dtype == torch.long
    with pytest.raises(DistillError, match="labels"):
        sft_columns({"input_ids": ids})


def test_sft_loss_counts_only_labelled_real_positions():
    """CE with labels: changing logits/targets where labels are -100 or padding changes nothing."""
    from types import SimpleNamespace

    from distill.losses import LossWeights, total_loss

    torch.manual_seed(0)
    b, seq, v = 2, 8, 11
    ids = torch.randint(0, v, (b, seq))
    am = torch.ones_like(ids)
    am[1, 6:] = 0  # padding
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    labels[am == 0] = -100
    logits = torch.randn(b, seq, v)
    w = LossWeights(ce=1.0, kd=0.0)
    loss, _ = total_loss(w, SimpleNamespace(logits=logits), ids, am, labels)
    # reference: mean CE over the shifted completion targets only
    tgt = labels[:, 1:]
    keep = tgt != -100
    ref = torch.nn.functional.cross_entropy(logits[:, :-1][keep], tgt[keep])
    assert torch.allclose(loss, ref, atol=1e-6)
    noisy = logits.clone()
    noisy[:, :3] += 10 * torch.randn(b, 3, v)  # positions predicting prompt tokens 1..3
    noisy[1, 5:] += 10 * torch.randn(3, v)  # positions predicting padding
    ids2 = ids.clone()
    ids2[:, :4] = 0  # prompt token values do not enter the loss either (targets are labels)
    loss2, _ = total_loss(w, SimpleNamespace(logits=noisy), ids2, am, labels)
    assert torch.allclose(loss, loss2, atol=1e-6)
    full, _ = total_loss(w, SimpleNamespace(logits=logits), ids, am)  # no labels: all tokens
    assert not torch.allclose(full, loss)


def test_sft_loss_weighs_every_label_token_equally_across_ranks_and_accumulation():
    """Uneven completion lengths: averaging the micro-batch gradients the way DeepSpeed does
    (over ranks and accumulation steps) gives the gradient of the mean CE over *all* label
    tokens of the step, not a mean of per-batch means."""
    from types import SimpleNamespace

    from distill.losses import LossWeights, total_loss
    from distill.train.data import sft_columns
    from distill.train.loop import LoopSpec, step_denominator

    torch.manual_seed(0)
    n, seq, v, world, accum = 8, 6, 7, 2, 2
    ids = np.random.default_rng(0).integers(0, v, (n, seq))
    labels = ids.copy()
    for r, keep in enumerate([1, 5, 2, 4, 5, 1, 3, 2]):  # label tokens per row, uneven
        labels[r, : seq - keep] = -100
    cols = sft_columns({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels})
    logits = torch.randn(n, seq, v, requires_grad=True)
    cfg = DistillConfig(mode="sft", batch_size=1, num_workers=world, grad_accum=accum)
    spec = LoopSpec(cfg=cfg, student_path="-", seq_len=seq, total_steps=2, out_dir="-")
    w = SimpleNamespace(spec=spec, world=world, step=0, sft_columns=cols)
    grads = torch.zeros_like(logits)
    for step in range(2):
        w.step = step
        w.source = Batches.for_arrays(cols, 1, 0, world, shuffle=False)
        denom = step_denominator(w)  # type: ignore[arg-type]
        for rank in range(world):
            src = Batches.for_arrays(cols, 1, rank, world, shuffle=False)
            for j in range(accum):
                rows = src.rows(step * accum + j)
                b = {k: torch.as_tensor(cols[k][rows]) for k in cols}
                out = SimpleNamespace(logits=logits[rows])
                loss, _ = total_loss(
                    LossWeights(ce=1.0, kd=0.0), out, b["input_ids"], b["attention_mask"],
                    b["labels"], denominator=denom,
                )  # fmt: skip
                (g,) = torch.autograd.grad(loss / (world * accum), logits)
                grads += g
    ref = torch.zeros_like(logits)
    for step in range(2):
        rows = np.arange(step * 4, step * 4 + 4)
        tgt = torch.as_tensor(labels[rows][:, 1:])
        keep = tgt != -100
        ce = torch.nn.functional.cross_entropy(logits[rows][:, :-1][keep], tgt[keep])
        (g,) = torch.autograd.grad(ce, logits)
        ref += g
    torch.testing.assert_close(grads, ref, rtol=1e-5, atol=1e-6)


def test_offline_objectives_the_store_cannot_give_are_refused():
    from distill.train.config import check_offline_objective

    check_offline_objective(DistillConfig(), "topk")
    check_offline_objective(DistillConfig(), "sampled")
    with pytest.raises(DistillError, match="temperature=2 with an offline topk store"):
        check_offline_objective(DistillConfig(loss={"temperature": 2.0}), "topk")
    with pytest.raises(DistillError, match="only forward_kl has an unbiased estimate"):
        check_offline_objective(DistillConfig(loss={"name": "reverse_kl"}), "sampled")
    ce_only = DistillConfig(loss={"name": "jsd", "alpha": 1.0, "kd_weight": 0.0})
    check_offline_objective(ce_only, "sampled")  # no KD term: nothing to estimate
