"""KD losses against brute-force formulas, top-k with k = V equal to the full loss, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses import LOSSES, hard_ce, kd_full, kd_topk, shift_for_next_token
from distill.losses.targets import tail_mass_from_logprobs


def _softmax(z: np.ndarray, T: float) -> np.ndarray:
    e = np.exp((z - z.max()) / T)
    return e / e.sum()


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0))


def brute(name: str, p: np.ndarray, q: np.ndarray, param: float) -> float:
    """D(p_T, p_S) per position, written out from the papers' definitions."""
    if name == "forward_kl":
        return _kl(p, q)
    if name == "reverse_kl":
        return _kl(q, p)
    if name == "jsd":
        m = param * p + (1 - param) * q
        return param * _kl(p, m) + (1 - param) * _kl(q, m)
    if name == "skew_forward_kl":
        return _kl(p, param * p + (1 - param) * q)
    if name == "skew_reverse_kl":
        return _kl(q, (1 - param) * p + param * q)
    if name == "tv":
        return 0.5 * float(np.abs(p - q).sum())
    raise AssertionError(name)


PARAMS = {"jsd": 0.3, "skew_forward_kl": 0.2, "skew_reverse_kl": 0.25}


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 2
    t = torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return s, t, mask


def test_registry_has_every_loss():
    assert set(LOSSES) == {
        "forward_kl",
        "reverse_kl",
        "jsd",
        "skew_forward_kl",
        "skew_reverse_kl",
        "tv",
    }


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_full_matches_brute_force(logits, name, T):
    s, t, mask = logits
    param = PARAMS.get(name)
    got = kd_full(s, t, mask, name, T, param)
    vals = [
        brute(name, _softmax(t[b, i].numpy(), T), _softmax(s[b, i].numpy(), T), param or 0.0)
        for b in range(2)
        for i in range(5)
        if mask[b, i]
    ]
    assert got.item() == pytest.approx(T * T * np.mean(vals), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_with_k_equal_vocab_is_full(logits, name, T):
    s, t, mask = logits
    t_lp = torch.log_softmax(t.float(), -1)
    lp, ids = t_lp.topk(11, dim=-1)
    got = kd_topk(s.float(), ids, lp, tail_mass_from_logprobs(lp), mask, name, T, PARAMS.get(name))
    want = kd_full(s.float(), t.float(), mask, name, T, PARAMS.get(name))
    assert got.item() == pytest.approx(want.item(), rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_topk_buckets_brute_force(logits, name):
    """k < V at T=1: the k+1 bucket distributions, computed by hand."""
    s, t, mask = logits
    k = 4
    t_lp = torch.log_softmax(t, -1)
    lp, ids = t_lp.topk(k, dim=-1)
    got = kd_topk(s, ids, lp, tail_mass_from_logprobs(lp), mask, name, 1.0, PARAMS.get(name))
    vals = []
    for b in range(2):
        for i in range(5):
            if not mask[b, i]:
                continue
            pt, ps = _softmax(t[b, i].numpy(), 1.0), _softmax(s[b, i].numpy(), 1.0)
            sel = ids[b, i].numpy()
            p = np.append(pt[sel], 1 - pt[sel].sum())
            q = np.append(ps[sel], 1 - ps[sel].sum())
            vals.append(brute(name, p, q, PARAMS.get(name, 0.0)))
    assert got.item() == pytest.approx(np.mean(vals), rel=1e-4, abs=1e-6)


def test_topk_temperature_conditions_on_support(logits):
    """T != 1: both sides renormalized over the k ids."""
    s, t, mask = logits
    lp, ids = torch.log_softmax(t, -1).topk(3, dim=-1)
    got = kd_topk(s, ids, lp, tail_mass_from_logprobs(lp), mask, "forward_kl", 2.0)
    vals = []
    for b in range(2):
        for i in range(5):
            if mask[b, i]:
                sel = ids[b, i].numpy()
                p = _softmax(t[b, i].numpy()[sel], 2.0)
                q = _softmax(s[b, i].numpy()[sel], 2.0)
                vals.append(_kl(p, q))
    assert got.item() == pytest.approx(4 * np.mean(vals), rel=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_positions_never_count(logits, name):
    s, t, mask = logits
    base = kd_full(s, t, mask, name, 1.0, PARAMS.get(name))
    s2 = s.clone()
    s2[~mask] = 1e3 * torch.randn_like(s2[~mask])  # garbage where masked
    assert kd_full(s2, t, mask, name, 1.0, PARAMS.get(name)).item() == pytest.approx(base.item())
    assert kd_full(t, t, mask, name).item() == pytest.approx(0.0, abs=1e-6)


def test_losses_have_gradients(logits):
    s, t, mask = logits
    s = s.float().requires_grad_()
    for name in LOSSES:
        loss = kd_full(s, t.float(), mask, name, 2.0)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(g).all() and g[~mask].abs().max() == 0, name
    lp, ids = torch.log_softmax(t.float(), -1).topk(4, dim=-1)
    for name in LOSSES:
        for T in (1.0, 2.0):
            loss = kd_topk(s, ids, lp, tail_mass_from_logprobs(lp), mask, name, T)
            (g,) = torch.autograd.grad(loss, s)
            assert torch.isfinite(g).all(), (name, T)


def test_shift_and_ce_respect_padding_and_ignore():
    ids = torch.tensor([[5, 6, 7, 8, 0, 0]])
    am = torch.tensor([[1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[5, 6, -100, 8, -100, -100]])
    targets, mask = shift_for_next_token(ids, am, labels)
    assert mask.tolist() == [[True, False, True, False, False]]
    logits = torch.randn(1, 5, 10, dtype=torch.float64)
    got = hard_ce(logits, targets, mask)
    lp = torch.log_softmax(logits, -1)
    want = -(lp[0, 0, 6] + lp[0, 2, 8]) / 2
    assert got.item() == pytest.approx(want.item())


def test_unknown_loss_is_a_clear_error(logits):
    s, t, mask = logits
    with pytest.raises(KeyError, match="choose one of"):
        kd_full(s, t, mask, "hellinger")
