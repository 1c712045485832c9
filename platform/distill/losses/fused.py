"""One fused, chunked loss over the LM head: CE and every KD target from one pass per chunk.

The full ``[positions, vocab]`` logits are never held at once. Positions are processed in
chunks of ``chunk`` rows; per chunk the student logits ``z = h Wᵀ`` are computed once, the
weighted CE + KD sum and its gradient ``∂loss/∂z`` come from a small local autograd graph
over ``z`` only, and the gradients of the head's inputs are accumulated right away
(``∂h = ∂z W``, ``∂W += ∂zᵀ h``), as Liger-Kernel's fused linear losses do on GPU, in plain
PyTorch. Backward then only scales the stored gradients. FLOPs equal the unfused path; memory
for logits drops from ``positions × V`` to ``chunk × V``::

    loss, parts = fused_head_loss(h, lm_head.weight, LossTargets(labels=y, topk=...), spec)

Per position ``z`` gives ``lse = logsumexp(z)`` and the student log-probs ``z − lse``:
- CE: ``lse − z[y]`` (label −100 does not count);
- top-k (T = 1, k + 1 buckets: the k ids, then the rest as one bucket): the registry divergence
  over the buckets, exactly ``kd_topk``;
- sampled (forward KL only): ``lse·Σw − Σ w_i z_i − H(p)``, ``w = count / N``: unbiased
  (``distill.labels.sampled``);
- full teacher logits (online; the teacher's head is chunked too): the registry divergence at
  temperature T, times T², exactly ``kd_full``.
Returned values are *sums* over positions; the caller divides by its token count (the trainer
uses the global count across ranks and accumulation steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distill.losses.kd import divergence
from distill.losses.spec import LossTargets, LossWeights
from distill.losses.targets import topk_target_logprobs

ChunkLoss = Callable[[torch.Tensor, slice], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def chunk_loss_fn(spec: LossWeights, targets: LossTargets) -> ChunkLoss:
    """``f(z [c, V], positions) -> (weighted sum, {"ce": sum, "kd": sum})`` for one chunk."""
    temperature = spec.temperature

    def f(z: torch.Tensor, sl: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lse = torch.logsumexp(z, dim=-1)
        parts: dict[str, torch.Tensor] = {}
        if spec.ce:
            y = targets.labels[sl]  # type: ignore[index]
            valid = y != -100
            nll = lse - z.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            parts["ce"] = torch.where(valid, nll, torch.zeros_like(nll)).sum()
        if spec.kd:
            parts["kd"] = _kd_sum(z, lse, sl, spec, targets, temperature)
        weights = {"ce": spec.ce, "kd": spec.kd}
        total = sum((weights[k] * v for k, v in parts.items()), z.new_zeros(()))
        return total, parts

    return f


def _kd_sum(
    z: torch.Tensor,
    lse: torch.Tensor,
    sl: slice,
    spec: LossWeights,
    targets: LossTargets,
    temperature: float,
) -> torch.Tensor:
    if targets.sampled is not None:
        ids, w, entropy = (t[sl] for t in targets.sampled)
        return (lse * w.sum(-1) - (z.gather(-1, ids) * w).sum(-1) - entropy).sum()
    if targets.topk is not None:
        ids, lp, tail = (t[sl] for t in targets.topk)
        top = z.gather(-1, ids) - lse.unsqueeze(-1)
        rest = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6)).unsqueeze(-1)
        s = torch.cat([top, rest], dim=-1)
        t = topk_target_logprobs(lp, 1.0, tail)
        return divergence(spec.name, s, t, spec.param).sum()
    if targets.teacher is not None:
        t_hidden, t_weight = targets.teacher
        with torch.no_grad():
            tz = t_hidden[sl].float() @ t_weight.float().T
    elif targets.teacher_logits is not None:
        tz = targets.teacher_logits[sl].float()
    else:
        raise ValueError("KD weight > 0 needs a top-k, sampled or full teacher target")
    s = torch.log_softmax(z / temperature, dim=-1) if temperature != 1.0 else z - lse[:, None]
    t = torch.log_softmax(tz / temperature, dim=-1)
    return temperature**2 * divergence(spec.name, s, t, spec.param).sum()


class _ChunkedHead(torch.autograd.Function):
    """``loss(h Wᵀ)`` with the gradients of ``h`` and ``W`` computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, loss_fn, chunk, parts_out):  # type: ignore[override]
        n = hidden.shape[0]
        w = weight.detach()
        grad_h = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            h = hidden[sl].detach()
            z = (h @ w.T).float()
            with torch.enable_grad():
                z.requires_grad_(True)
                loss_c, parts = loss_fn(z, sl)
                (dz,) = torch.autograd.grad(loss_c, z)
            dz = dz.to(h.dtype)
            if grad_h is not None:
                grad_h[sl] = dz @ w
            if grad_w is not None:
                grad_w.addmm_(dz.T.float(), h.float())
            total += loss_c.detach()
            for key, v in parts.items():
                parts_out[key] = parts_out.get(key, 0.0) + v.detach()
        ctx.save_for_backward(
            grad_h if grad_h is not None else hidden.new_zeros(0),
            grad_w if grad_w is not None else hidden.new_zeros(0),
        )
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.w_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        has_h, has_w = ctx.has
        return (
            grad_h * g if has_h else None,
            (grad_w * g).to(ctx.w_dtype) if has_w else None,
            None,
            None,
            None,
        )


class _ChunkedLogits(torch.autograd.Function):
    """The same loss on given logits ``[P, V]`` (ZeRO-3, where the head weight is sharded)."""

    @staticmethod
    def forward(ctx, logits, loss_fn, chunk, parts_out):  # type: ignore[override]
        grad = torch.zeros_like(logits)
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, logits.shape[0], chunk):
            sl = slice(start, min(start + chunk, logits.shape[0]))
            with torch.enable_grad():
                z = logits[sl].detach().float().requires_grad_(True)
                loss_c, parts = loss_fn(z, sl)
                (dz,) = torch.autograd.grad(loss_c, z)
            grad[sl] = dz.to(grad.dtype)
            total += loss_c.detach()
            for key, v in parts.items():
                parts_out[key] = parts_out.get(key, 0.0) + v.detach()
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None


def fused_head_loss(
    hidden: torch.Tensor | None,
    weight: torch.Tensor | None,
    targets: LossTargets,
    spec: LossWeights,
    chunk: int = 256,
    logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted CE + KD *sum* over ``P`` positions and its parts (detached sums).

    Give ``hidden [P, H]`` and the head ``weight [V, H]`` (logits never materialized), or
    ``logits [P, V]`` (ZeRO-3 fallback: only the loss temporaries are chunked).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}")
    fn = chunk_loss_fn(spec, targets)
    parts: dict[str, torch.Tensor] = {}
    if logits is not None:
        loss = _ChunkedLogits.apply(logits, fn, chunk, parts)
    else:
        if hidden is None or weight is None:
            raise ValueError("fused_head_loss needs hidden + weight, or logits")
        loss = _ChunkedHead.apply(hidden, weight, fn, chunk, parts)
    return loss, parts
