"""Feature and attention losses against hand-written formulas; the combined loss on tiny models."""

from __future__ import annotations

import pytest
import torch

from distill.losses import FeatureLoss, LossWeights, attention_loss, total_loss
from distill.losses.features import check_layer_pairs


def test_feature_mse_and_cosine_by_hand():
    torch.manual_seed(0)
    hs = [torch.randn(2, 3, 4) for _ in range(3)]
    ht = [torch.randn(2, 3, 6) for _ in range(5)]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    for kind in ("mse", "cosine"):
        fl = FeatureLoss([(3, 1)], 4, 6, kind)
        got = fl(hs, ht, mask)
        proj = fl.proj[0](hs[2])
        vals = []
        for b, i in mask.nonzero().tolist():
            a, t = proj[b, i], ht[4][b, i]
            if kind == "mse":
                vals.append(((a - t) ** 2).mean())
            else:
                vals.append(1 - torch.dot(a, t) / (a.norm() * t.norm()))
        assert got.item() == pytest.approx(torch.stack(vals).mean().item(), rel=1e-5)
        got.backward()
        assert fl.proj[0].weight.grad is not None


def _attn(b, h, n, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, h, n, n, generator=g)
    z = z.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    return z.softmax(-1)


@pytest.mark.parametrize("kind", ["mse", "kl", "cosine"])
def test_attention_loss_by_hand_with_head_averaging(kind):
    a_s, a_t = _attn(1, 2, 4, 0), _attn(1, 4, 4, 1)  # different head counts -> average
    mask = torch.tensor([[1, 1, 1, 0]]).bool()
    got = attention_loss([a_s], [None, a_t], [(1, 0)], mask, kind)
    s, t = a_s.mean(1)[0], a_t.mean(1)[0]
    vals = []
    for q in range(3):
        if kind == "mse":
            vals.append(((s[q] - t[q]) ** 2).mean())
        elif kind == "kl":
            vals.append((t[q] * ((t[q] + 1e-8).log() - (s[q] + 1e-8).log())).sum())
        else:
            vals.append(1 - torch.dot(s[q], t[q]) / (s[q].norm() * t[q].norm()))
    assert got.item() == pytest.approx(torch.stack(vals).mean().item(), rel=1e-4, abs=1e-7)
    assert attention_loss([a_t], [a_t], [(0, 0)], mask, kind).item() == pytest.approx(0, abs=1e-6)


def test_layer_pairs_out_of_range():
    check_layer_pairs([(3, 1)], 4, 2)
    with pytest.raises(ValueError, match="teacher layer 4 out of range 0..3"):
        check_layer_pairs([(4, 1)], 4, 2)
    with pytest.raises(ValueError, match="student layer 2 out of range 0..1"):
        check_layer_pairs([(0, 2)], 4, 2)


def test_total_loss_on_tiny_models(tiny_gqa, tiny_mha):
    from distill.models.loader import load_causal_lm

    t = load_causal_lm(tiny_gqa.path)
    s = load_causal_lm(tiny_mha.path).train()
    t.config._attn_implementation = "eager"
    s.config._attn_implementation = "eager"
    ids = torch.randint(0, 500, (2, 16))
    am = torch.ones_like(ids)
    am[1, 10:] = 0
    kw = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        t_out = t(input_ids=ids, attention_mask=am, **kw)
    s_out = s(input_ids=ids, attention_mask=am, **kw)
    fl = FeatureLoss([(3, 1)], s.config.hidden_size, t.config.hidden_size)
    spec = LossWeights(ce=0.5, kd=1.0, feature=0.1, attention=0.1, attention_pairs=((3, 1),))
    loss, parts = total_loss(spec, s_out, ids, am, teacher_out=t_out, feature_loss=fl)
    assert set(parts) == {"ce", "kd", "feature", "attention"}
    want = 0.5 * parts["ce"] + parts["kd"] + 0.1 * parts["feature"] + 0.1 * parts["attention"]
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in fl.parameters())
    # Top-k target from the same teacher with k = V gives the same KD term.
    lp, top = torch.log_softmax(t_out.logits, -1).topk(t.config.vocab_size, dim=-1)
    topk = {"topk_ids": top, "topk_logprobs": lp, "tail_mass": torch.zeros(lp.shape[:-1])}
    _, p2 = total_loss(LossWeights(), s_out, ids, am, topk=topk)
    assert p2["kd"] == pytest.approx(parts["kd"], rel=1e-3, abs=1e-4)
