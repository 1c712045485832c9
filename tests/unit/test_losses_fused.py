"""The fused chunked head loss against the reference formulas (values and gradients), and the
sampled-target estimator's unbiasedness against the full-distribution gradient."""

from __future__ import annotations

import pytest
import torch

from distill.labels.sampled import pad_samples, sample_positions
from distill.labels.topk import topk_with_tail
from distill.losses import LossWeights, hard_ce, kd_full, kd_topk
from distill.losses.fused import fused_head_loss
from distill.losses.spec import LossTargets

P, H, V = 13, 8, 40


@pytest.fixture
def head():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(P, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.7
    t_h = torch.randn(P, H + 2, generator=g, dtype=torch.float64)
    t_w = torch.randn(V, H + 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (P,), generator=g)
    labels[3] = -100
    return h, w, t_h, t_w, labels


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


def _leaf(*xs):
    return [x.clone().requires_grad_(True) for x in xs]


@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "tv"])
def test_topk_and_ce_match_reference(head, chunk, name):
    h0, w0, t_h, t_w, labels = head
    with torch.no_grad():
        ids, lp, tail = topk_with_tail((t_h @ t_w.T).float(), 6)
    spec = LossWeights(ce=0.3, kd=1.0, name=name, param=0.3 if name != "forward_kl" else None)
    h, w = _leaf(h0, w0)
    z = h @ w.T
    mask = torch.ones(P, dtype=torch.bool)
    ref = (
        0.3 * hard_ce(z, labels, mask) * (labels != -100).sum()
        + kd_topk(z, ids, lp.double(), tail.double(), mask, name, 1.0, spec.param) * P
    )
    ref_grads = _grads(ref, h, w)
    h, w = _leaf(h0, w0)
    targets = LossTargets(labels=labels, topk=(ids, lp.double(), tail.double()))
    loss, parts = fused_head_loss(h, w, targets, spec, chunk=chunk)
    torch.testing.assert_close(loss.double(), ref.double(), rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(loss, h, w), ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)
    assert set(parts) == {"ce", "kd"}


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_full_teacher_head_matches_kd_full(head, name, temperature):
    h0, w0, t_h, t_w, labels = head
    spec = LossWeights(ce=0.0, kd=1.0, name=name, temperature=temperature)
    h, w = _leaf(h0, w0)
    ref = kd_full(h @ w.T, t_h @ t_w.T, None, name, temperature) * P
    ref_grads = _grads(ref, h, w)
    h, w = _leaf(h0, w0)
    loss, _ = fused_head_loss(h, w, LossTargets(teacher=(t_h, t_w)), spec, chunk=5)
    torch.testing.assert_close(loss.double(), ref.double(), rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(loss, h, w), ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)


def test_logits_fallback_equals_head_path(head):
    h0, w0, t_h, t_w, labels = head
    spec = LossWeights(ce=1.0, kd=0.5)
    targets = LossTargets(labels=labels, teacher_logits=t_h @ t_w.T)
    h, w = _leaf(h0, w0)
    a, _ = fused_head_loss(h, w, targets, spec, chunk=3)
    ga = _grads(a, h, w)
    h, w = _leaf(h0, w0)
    b, _ = fused_head_loss(None, None, targets, spec, chunk=3, logits=h @ w.T)
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, _grads(b, h, w), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_frozen_head_weight_gets_no_gradient(head):
    h0, w0, _, _, labels = head
    h = h0.clone().requires_grad_(True)
    loss, _ = fused_head_loss(h, w0, LossTargets(labels=labels), LossWeights(ce=1.0, kd=0.0))
    loss.backward()
    assert h.grad is not None and w0.grad is None


def test_sampled_loss_value_is_kl_estimate(head):
    """With the empirical distribution as the target, the value is -H(p) + CE(p̂, s)."""
    h0, w0, t_h, t_w, _ = head
    t_logits = (t_h @ t_w.T).float()
    ids, counts, nuniq, entropy = sample_positions(t_logits, 16, seed=3)
    pid, pw = pad_samples([ids], [counts], nuniq[None], 16)
    z = (h0 @ w0.T).float()
    s = torch.log_softmax(z, -1)
    target = torch.zeros(P, V).scatter_add_(-1, torch.from_numpy(pid[0]), torch.from_numpy(pw[0]))
    ref = (-torch.from_numpy(entropy) - (target * s).sum(-1)).sum()
    loss, _ = fused_head_loss(
        h0.float(),
        w0.float(),
        LossTargets(
            sampled=(torch.from_numpy(pid[0]), torch.from_numpy(pw[0]), torch.from_numpy(entropy))
        ),
        LossWeights(ce=0.0, kd=1.0),
    )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert (counts.astype(int).reshape(-1).sum()) == P * 16


def test_sampled_gradient_is_unbiased_and_topk_is_not():
    """Mean gradient over many sampled stores → the full forward-KL gradient (within 5σ of the
    Monte-Carlo error); the top-k + tail target's gradient stays off by more than that."""
    g = torch.Generator().manual_seed(1)
    t_logits = torch.randn(4, 30, generator=g) * 2.5
    z0 = torch.randn(4, 30, generator=g)
    n, draws = 8, 400
    z = z0.clone().requires_grad_(True)
    (full,) = torch.autograd.grad(kd_full(z, t_logits, None) * 4, z)
    spec = LossWeights(ce=0.0, kd=1.0)
    total = torch.zeros_like(z0)
    for seed in range(draws):
        ids, counts, nuniq, ent = sample_positions(t_logits, n, seed=seed)
        pid, pw = pad_samples([ids], [counts], nuniq[None], n)
        zz = z0.clone().requires_grad_(True)
        targets = LossTargets(
            sampled=(torch.from_numpy(pid[0]), torch.from_numpy(pw[0]), torch.from_numpy(ent))
        )
        loss, _ = fused_head_loss(None, None, targets, spec, logits=zz)
        (gz,) = torch.autograd.grad(loss, zz)
        total += gz
    mean = total / draws
    p = torch.softmax(t_logits, -1)
    sigma = (p * (1 - p) / (n * draws)).sqrt()
    assert ((mean - full).abs() <= 5 * sigma + 1e-6).all()
    ids, lp, tail = topk_with_tail(t_logits, 3)
    zz = z0.clone().requires_grad_(True)
    loss, _ = fused_head_loss(None, None, LossTargets(topk=(ids, lp, tail)), spec, logits=zz)
    (gt,) = torch.autograd.grad(loss, zz)
    assert ((gt - full).abs() > 5 * sigma + 1e-6).any()
