"""One decoding step for a batch of sequences with different sampling settings (torch, no Ray).

``logits`` are the model's raw next-token logits ``[batch, vocab]``. The log-probs and entropies
returned (for confidence scores and ``logprobs``) come from these *raw* logits, before penalties,
biases, temperature or top-p, so a cascade's confidence does not depend on how a client samples::

    out = sample_step(logits, [seq.params for seq in rows], [seq.generator for seq in rows],
                      [seq.counts for seq in rows])
    out.ids, out.logprobs, out.entropies, out.top

Greedy rows (temperature 0) take the argmax; the others sample with their own
``torch.Generator`` (seeded per request when the request has a ``seed``). Presence / frequency
penalties follow OpenAI: ``logit[t] -= count[t] * frequency + (count[t] > 0) * presence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from distill.serve.engines.base import SamplingParams


@dataclass
class StepOut:
    ids: list[int]
    logprobs: list[float]
    entropies: list[float]  # normalized by log(vocab), in [0, 1]
    top: list[list[tuple[int, float]]] | None  # per row, when any row asked for alternatives


def _adjusted(logits: torch.Tensor, params: list[SamplingParams], counts: list) -> torch.Tensor:
    """Logits with logit_bias and penalties applied (a copy only when some row needs it)."""
    rows = [i for i, p in enumerate(params) if p.logit_bias or p.penalized]
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        p = params[i]
        for tok, bias in p.logit_bias:
            if 0 <= tok < out.shape[-1]:
                out[i, tok] += bias
        if p.penalized and counts[i] is not None:
            c = counts[i]
            out[i] -= c * p.frequency_penalty + (c > 0).to(out.dtype) * p.presence_penalty
    return out


def _sample_row(row: torch.Tensor, p: SamplingParams, generator) -> int:
    import torch

    scaled = row / p.temperature
    if p.top_p < 1.0:
        probs, order = torch.softmax(scaled, -1).sort(descending=True)
        keep = probs.cumsum(-1) - probs < p.top_p  # always keeps the most likely token
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        pick = torch.multinomial(probs / probs.sum(), 1, generator=generator)
        return int(order[pick])
    probs = torch.softmax(scaled, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_step(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list,
    counts: list | None = None,
) -> StepOut:
    """Choose one token per row; return it with its raw log-prob and the step's entropy."""
    import torch

    logits = logits.float()
    counts = counts or [None] * len(params)
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).nan_to_num().sum(-1) / math.log(logits.shape[-1])
    adjusted = _adjusted(logits, params, counts)
    ids = adjusted.argmax(-1).tolist()
    for i, p in enumerate(params):
        if p.temperature > 0:
            ids[i] = _sample_row(adjusted[i], p, generators[i])
    idx = torch.tensor(ids, dtype=torch.long).view(-1, 1)
    chosen = logp.gather(-1, idx).squeeze(-1).tolist()
    k = max((p.top_logprobs for p in params), default=0)
    top = None
    if k:
        vals, toks = logp.topk(k, dim=-1)
        top = [
            list(zip(t.tolist(), v.tolist(), strict=True)) for t, v in zip(toks, vals, strict=True)
        ]
    for i, p in enumerate(params):
        if p.penalized and counts[i] is not None:
            counts[i][ids[i]] += 1
    return StepOut(ids, chosen, entropy.clamp(0, 1).tolist(), top)
