"""Speculative decoding's decisions, apart from any engine: which drafted tokens the teacher keeps,
and how many tokens to draft next (``cascade.mode: speculative``).

The student drafts ``k`` tokens; the teacher scores the last committed token and the ``k`` drafts in
one forward (``k + 1`` next-token distributions); :func:`verify_greedy` / :func:`verify_sampled`
keep the longest acceptable prefix of the drafts and add one token of the teacher's own (the
correction at the first rejected position, or a bonus token when every draft was kept)::

    v = verify_greedy(drafts, teacher_argmax)            # the teacher's greedy answer, exactly
    v = verify_sampled(drafts, q, p, generator)          # distributed as the teacher's samples
    emitted = drafts[: v.accepted] + [v.token]

Greedy: a draft is kept while it equals the teacher's argmax, so the answer is token for token the
teacher's own. Sampled (Leviathan et al. 2023, Chen et al. 2023): draft ``x ~ q`` is kept with
probability ``min(1, p(x) / q(x))``; at the first rejection the token is drawn from
``norm(max(0, p - q))``; if all are kept, from the teacher's next distribution. Each emitted token
is then distributed exactly as the teacher's sample would be.

:class:`DraftLength` chooses ``k`` per step: fixed, or adaptive (``draft_tokens: auto``), the ``k``
with the best measured tokens/s at the current batch size, ``0`` (no drafting) included, so a
batch where verifying costs more than it saves decodes as the teacher alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch


class Verdict(NamedTuple):
    """The drafts the teacher keeps (``accepted``, a prefix) and its own next token."""

    accepted: int
    token: int


def verify_greedy(drafts: list[int], teacher_ids: list[int]) -> Verdict:
    """``teacher_ids[j]``: the teacher's greedy token after the first ``j`` drafts (``k + 1``)."""
    if len(teacher_ids) != len(drafts) + 1:
        raise ValueError(f"need {len(drafts) + 1} teacher tokens, got {len(teacher_ids)}")
    n = 0
    while n < len(drafts) and drafts[n] == teacher_ids[n]:
        n += 1
    return Verdict(n, int(teacher_ids[n]))


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``: where a rejected draft's replacement is drawn from (``p`` itself
    when ``q`` covers ``p`` everywhere, which only rounding can cause)."""
    r = (p - q).clamp(min=0)
    total = r.sum()
    return r / total if float(total) > 0 else p


def verify_sampled(
    drafts: list[int], q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None
) -> Verdict:
    """Rejection sampling: ``q`` ``[k, vocab]`` the distributions the drafts were drawn from, ``p``
    ``[k + 1, vocab]`` the teacher's (both after temperature / top-p / logit bias)."""
    import torch

    k = len(drafts)
    if q.shape[0] != k or p.shape[0] != k + 1:
        raise ValueError(f"need q [{k}, vocab] and p [{k + 1}, vocab], got {q.shape} and {p.shape}")
    u = torch.rand(k, generator=generator)
    for j, x in enumerate(drafts):
        if float(u[j]) * float(q[j, x]) <= float(p[j, x]):  # kept with probability min(1, p/q)
            continue
        pick = torch.multinomial(residual(p[j], q[j]), 1, generator=generator)
        return Verdict(j, int(pick))
    return Verdict(k, int(torch.multinomial(p[k], 1, generator=generator)))


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verification emits when each draft is kept with probability ``acceptance``
    (independently): ``1 + a + ... + a^k``."""
    return float(sum(acceptance**i for i in range(k + 1)))


def bucket(batch: int) -> int:
    """Batch sizes grouped by powers of two (1, 2, 4, 8, ...): k is chosen per group."""
    return 1 << max(0, batch.bit_length() - 1)


@dataclass
class DraftLength:
    """``k`` for the next step: ``fixed``, or adaptive up to ``max_k``.

    Adaptive: per batch-size group, an exponential average of the tokens/s each ``k`` reached
    (drafting plus verification, wall time); a group starts with ``start`` then ``0`` (the
    teacher alone, the baseline), then uses the best so far, and every ``explore_every``-th step
    tries a neighbour of it (an untried one first), so the choice follows the acceptance rate
    and the cost of a forward at that batch size.
    """

    fixed: int | None = None
    max_k: int = 8
    start: int = 3
    explore_every: int = 6
    weight: float = 0.3  # of the newest measurement in the average
    rates: dict[int, dict[int, float]] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)

    def choose(self, batch: int, cap: int | None = None) -> int:
        top = min(self.max_k, self.max_k if cap is None else cap)
        if self.fixed is not None:
            return min(self.fixed, top)
        g = bucket(batch)
        seen = self.rates.get(g, {})
        n = self.steps[g] = self.steps.get(g, 0) + 1
        tried = {k: r for k, r in seen.items() if k <= top}
        if not tried:
            return min(self.start, top)
        if 0 not in seen:  # the teacher alone, measured once as the baseline
            return 0
        best = max(tried, key=lambda k: tried[k])
        if n % self.explore_every:
            return best
        near = [k for k in (best + 1, best - 1) if 0 <= k <= top]
        fresh = [k for k in near if k not in tried]
        if fresh:
            return fresh[0]
        return near[(n // self.explore_every) % len(near)] if near else best

    def record(self, batch: int, k: int, tokens: int, seconds: float) -> None:
        if self.fixed is not None or seconds <= 0:
            return
        rates = self.rates.setdefault(bucket(batch), {})
        rate = tokens / seconds
        old = rates.get(k)
        rates[k] = rate if old is None else (1 - self.weight) * old + self.weight * rate
