"""Quality filters for teacher generations (sequence-level KD), each reporting in/kept/dropped.

Rows are dicts with at least ``prompt`` and ``completion``; optional ``n_tokens``,
``finish_reason`` (``"length"`` = truncated), ``mean_logprob`` (None = unknown) and ``kind``
(``"code"`` enables the syntax check)::

    kept, reports = apply_filters(rows, FiltersConfig())
    # the sft stage logs reports as filter.<name>.{in,kept,dropped}:
    distill run pipelines/configs/smoke-seqkd.yaml
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from distill.config.base import StrictModel
from distill.data.dedup import NearDuplicateIndex, signature, text_shingle_hashes

Row = dict[str, Any]

DEFAULT_REFUSALS = (
    r"\bI(?:'m| am) sorry\b",
    r"\bI (?:cannot|can't|can not|won't) (?:help|assist|do|provide|write|comply)",
    r"\bas an AI\b",
    r"\bI'm not able to\b",
)


class LengthFilter(StrictModel):
    enabled: bool = True
    unit: Literal["tokens", "chars"] = Field(
        "tokens", description="tokens = the row's n_tokens (chars/4 when unknown)"
    )
    min: int = Field(1, ge=0)
    max: int | None = Field(None, ge=1, description="unset = no upper bound")

    @model_validator(mode="after")
    def _bounds(self) -> LengthFilter:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"length.max ({self.max}) must be ≥ length.min ({self.min})")
        return self


class QualityFilter(StrictModel):
    """Empty, refused and truncated completions."""

    enabled: bool = True
    drop_empty: bool = True
    drop_truncated: bool = Field(True, description="finish_reason == 'length'")
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))

    @model_validator(mode="after")
    def _regex(self) -> QualityFilter:
        for p in self.refusal_patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"quality.refusal_patterns: {p!r} is not a regex ({e})") from None
        return self


class RepetitionFilter(StrictModel):
    enabled: bool = True
    ngram: int = Field(3, ge=1, description="word n-gram size")
    max_repeated_fraction: float = Field(
        0.5, ge=0, le=1, description="drop when more than this share of n-grams are repeats"
    )


class DedupFilter(StrictModel):
    enabled: bool = True
    exact: bool = Field(True, description="same prompt and same normalized completion")
    near: bool = True
    method: Literal["minhash", "jaccard"] = "minhash"
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard of word shingles")
    shingle: int = Field(3, ge=1, description="word shingle size")
    num_perm: int = Field(64, ge=16, le=512)
    scope: Literal["global", "per_prompt"] = "global"


class LogprobFilter(StrictModel):
    enabled: bool = True
    min_mean_logprob: float | None = Field(
        None, le=0, description="drop below this mean teacher log-prob; unset = off"
    )


class SyntaxFilter(StrictModel):
    enabled: bool = True
    kinds: list[str] = Field(default_factory=lambda: ["code"], description="row kinds checked")


class FiltersConfig(StrictModel):
    quality: QualityFilter = Field(default_factory=QualityFilter)
    length: LengthFilter = Field(default_factory=LengthFilter)
    repetition: RepetitionFilter = Field(default_factory=RepetitionFilter)
    syntax: SyntaxFilter = Field(default_factory=SyntaxFilter)
    logprob: LogprobFilter = Field(default_factory=LogprobFilter)
    dedup: DedupFilter = Field(default_factory=DedupFilter)


@dataclass
class FilterReport:
    name: str
    n_in: int
    kept: int
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.n_in - self.kept

    def metrics(self) -> dict[str, float]:
        p = f"filter.{self.name}"
        return {f"{p}.in": self.n_in, f"{p}.kept": self.kept, f"{p}.dropped": self.dropped}


# --- single-row predicates ---------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def repeated_fraction(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct)."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_code(text: str) -> str:
    """The fenced code blocks of a completion (joined), else the completion itself."""
    blocks = _FENCE.findall(text)
    return "\n\n".join(blocks) if blocks else text


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return bool(code.strip())


def _length(row: Row, unit: str) -> int:
    if unit == "chars" or row.get("n_tokens") is None:
        n = len(row["completion"])
        return n if unit == "chars" else (n + 3) // 4
    return int(row["n_tokens"])


# --- filters: rows in, kept rows + report out -------------------------------------------------


def _keep(
    name: str, rows: Sequence[Row], pred: Callable[[Row], bool]
) -> tuple[list[Row], FilterReport]:
    kept = [r for r in rows if pred(r)]
    return kept, FilterReport(name, len(rows), len(kept))


def filter_quality(rows: Sequence[Row], cfg: QualityFilter) -> tuple[list[Row], FilterReport]:
    pats = [re.compile(p, re.I) for p in cfg.refusal_patterns]

    def ok(r: Row) -> bool:
        text = r["completion"] or ""
        if cfg.drop_empty and not text.strip():
            return False
        if cfg.drop_truncated and r.get("finish_reason") == "length":
            return False
        return not any(p.search(text) for p in pats)

    return _keep("quality", rows, ok)


def filter_length(rows: Sequence[Row], cfg: LengthFilter) -> tuple[list[Row], FilterReport]:
    def ok(r: Row) -> bool:
        n = _length(r, cfg.unit)
        return n >= cfg.min and (cfg.max is None or n <= cfg.max)

    kept, rep = _keep("length", rows, ok)
    if cfg.unit == "tokens" and any(r.get("n_tokens") is None for r in rows):
        rep.notes.append("n_tokens unknown for some rows: estimated as chars/4")
    return kept, rep


def filter_repetition(rows: Sequence[Row], cfg: RepetitionFilter) -> tuple[list[Row], FilterReport]:
    return _keep(
        "repetition",
        rows,
        lambda r: repeated_fraction(r["completion"], cfg.ngram) <= cfg.max_repeated_fraction,
    )


def filter_syntax(rows: Sequence[Row], cfg: SyntaxFilter) -> tuple[list[Row], FilterReport]:
    kinds = set(cfg.kinds)
    return _keep(
        "syntax",
        rows,
        lambda r: r.get("kind") not in kinds or parses(extract_code(r["completion"])),
    )


def filter_logprob(rows: Sequence[Row], cfg: LogprobFilter) -> tuple[list[Row], FilterReport]:
    """Rows whose log-prob is unknown (an HTTP teacher without logprobs) pass, with a note."""
    thr = cfg.min_mean_logprob
    kept, rep = _keep(
        "logprob",
        rows,
        lambda r: thr is None or r.get("mean_logprob") is None or r["mean_logprob"] >= thr,
    )
    unknown = sum(r.get("mean_logprob") is None for r in rows)
    if thr is not None and unknown:
        rep.notes.append(f"{unknown} row(s) without teacher log-probs: log-prob filter skipped")
    return kept, rep


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, n: int) -> set[str]:
    w = words(text)
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def filter_dedup(rows: Sequence[Row], cfg: DedupFilter) -> tuple[list[Row], FilterReport]:
    """Exact duplicates, then near duplicates (MinHash LSH or exact shingle Jaccard); first wins."""
    kept: list[Row] = []
    seen: set[str] = set()
    for r in rows:
        key = hashlib.sha256(f"{r['prompt']}\0{_norm(r['completion'])}".encode()).hexdigest()
        if cfg.exact and key in seen:
            continue
        seen.add(key)
        kept.append(r)
    n_exact = len(rows) - len(kept)
    if cfg.near:
        kept = _near_dedup(kept, cfg)
    rep = FilterReport("dedup", len(rows), len(kept))
    rep.notes.append(
        f"exact duplicates: {n_exact}, near duplicates: {len(rows) - n_exact - len(kept)}"
    )
    return kept, rep


def _near_dedup(rows: list[Row], cfg: DedupFilter) -> list[Row]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["prompt"] if cfg.scope == "per_prompt" else "", []).append(i)
    drop: set[int] = set()
    for idx in groups.values():
        sh = [shingles(rows[i]["completion"], cfg.shingle) for i in idx]
        if cfg.method == "jaccard":
            local: set[int] = set()
            for a in range(len(idx)):
                if any(
                    b not in local and jaccard(sh[a], sh[b]) >= cfg.near_threshold for b in range(a)
                ):
                    local.add(a)
        else:
            local = _minhash_dups(sh, cfg)
        drop |= {idx[a] for a in local}
    return [r for i, r in enumerate(rows) if i not in drop]


def _minhash_dups(sh: list[set[str]], cfg: DedupFilter) -> set[int]:
    index = NearDuplicateIndex(cfg.near_threshold, cfg.num_perm)
    dups: set[int] = set()
    for i, s in enumerate(sh):
        sig = signature(text_shingle_hashes(s), cfg.num_perm)
        # LSH candidates are confirmed with the exact Jaccard (no false positives)
        if any(jaccard(s, sh[j]) >= cfg.near_threshold for j in index.candidates(sig)):
            dups.add(i)
            continue
        index.add(i, sig)
    return dups


def apply_filters(rows: Sequence[Row], cfg: FiltersConfig) -> tuple[list[Row], list[FilterReport]]:
    """Every enabled filter in order (cheap first, dedup last); one report per filter."""
    steps: list[tuple[Any, Callable[..., tuple[list[Row], FilterReport]]]] = [
        (cfg.quality, filter_quality),
        (cfg.length, filter_length),
        (cfg.repetition, filter_repetition),
        (cfg.syntax, filter_syntax),
        (cfg.logprob, filter_logprob),
        (cfg.dedup, filter_dedup),
    ]
    out = list(rows)
    reports: list[FilterReport] = []
    for sub, fn in steps:
        if sub.enabled:
            out, rep = fn(out, sub)
            reports.append(rep)
    return out, reports


def reports_metrics(reports: Sequence[FilterReport], n_in: int) -> dict[str, float]:
    m: dict[str, float] = {"filter.total.in": n_in}
    for r in reports:
        m.update(r.metrics())
    m["filter.total.kept"] = reports[-1].kept if reports else n_in
    m["filter.total.kept_fraction"] = m["filter.total.kept"] / n_in if n_in else 0.0
    return m
