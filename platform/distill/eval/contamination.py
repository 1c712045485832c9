"""Contamination check: n-gram overlap between evaluation sets and training / generation sets.

Texts are compared on word n-grams, token rows on token-id n-grams (hashed to uint64, vectorized).
The overlap rate of a pair is the share of the eval set's distinct n-grams that also occur in the
train set; above ``threshold`` the check raises ``DistillError`` naming both sets::

    report = check_contamination({"heldout": heldout_rows}, {"train": train_rows}, n=13,
                                 threshold=0.05)
    # in a run (the sft stage calls it; so can evaluate):
    report = check_run_contamination(ctx.corpus, ctx.artifacts.get("generations"),
                                     ctx.teacher.path, ContaminationConfig())
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.config.base import DistillError
from distill.data.config import ContaminationConfig
from distill.data.dedup import window_hashes
from distill.models.loader import load_tokenizer
from distill.seqkd.store import read_generations

Items = Sequence[str] | Sequence[Sequence[int]] | np.ndarray


@dataclass
class PairOverlap:
    eval_set: str
    train_set: str
    eval_ngrams: int
    shared_ngrams: int
    rate: float
    items_touched: float  # share of eval items with at least one shared n-gram


@dataclass
class ContaminationReport:
    n: int
    threshold: float
    pairs: list[PairOverlap] = field(default_factory=list)

    @property
    def max_rate(self) -> float:
        return max((p.rate for p in self.pairs), default=0.0)

    def over(self) -> list[PairOverlap]:
        return [p for p in self.pairs if p.rate > self.threshold]

    def metrics(self, prefix: str = "contamination") -> dict[str, float]:
        m = {f"{prefix}.max_rate": self.max_rate}
        for p in self.pairs:
            m[f"{prefix}.{p.eval_set}__{p.train_set}.rate"] = p.rate
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "threshold": self.threshold, "pairs": [asdict(p) for p in self.pairs]}


def _word_ids(text: str) -> np.ndarray:
    ws = re.findall(r"\w+|[^\w\s]", text.lower())
    return np.array(
        [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in ws],
        dtype=np.uint64,
    )


def _kind(items: Items) -> str:
    if isinstance(items, np.ndarray):
        return "tokens"
    if len(items) == 0:
        return "empty"
    return "text" if isinstance(items[0], str) else "tokens"


def item_hashes(items: Items, n: int) -> list[np.ndarray]:
    """Per item, its distinct n-gram hashes (words for texts, ids for token rows)."""
    out = []
    for it in items:
        seq = _word_ids(it) if isinstance(it, str) else np.asarray(it, dtype=np.int64)
        out.append(np.unique(window_hashes(seq, n)))
    return out


def _member(h: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted unique haystack (one binary search per needle)."""
    if not len(sorted_unique) or not len(h):
        return np.zeros(len(h), dtype=bool)
    pos = np.searchsorted(sorted_unique, h).clip(max=len(sorted_unique) - 1)
    return sorted_unique[pos] == h


def check_contamination(
    eval_sets: Mapping[str, Items],
    train_sets: Mapping[str, Items],
    n: int = 13,
    threshold: float = 0.05,
    raise_error: bool = True,
) -> ContaminationReport:
    """Overlap of every eval set with every train set; ``DistillError`` above ``threshold``."""
    report = ContaminationReport(n, threshold)
    train_h: dict[str, tuple[str, np.ndarray]] = {}
    for name, items in train_sets.items():
        hs = item_hashes(items, n)
        train_h[name] = (_kind(items), np.unique(np.concatenate(hs)) if hs else np.zeros(0))
    for ename, items in eval_sets.items():
        ekind = _kind(items)
        per_item = item_hashes(items, n)
        all_e = np.unique(np.concatenate(per_item)) if per_item else np.zeros(0, np.uint64)
        for tname, (tkind, th) in train_h.items():
            if "empty" not in (ekind, tkind) and ekind != tkind:
                raise DistillError(
                    f"contamination check: eval set {ename!r} is {ekind} but train set "
                    f"{tname!r} is {tkind}; tokenize both the same way"
                )
            shared = int(_member(all_e, th).sum())
            touched = sum(bool(_member(h, th).any()) for h in per_item)
            report.pairs.append(
                PairOverlap(
                    ename,
                    tname,
                    len(all_e),
                    shared,
                    shared / len(all_e) if len(all_e) else 0.0,
                    touched / len(per_item) if per_item else 0.0,
                )
            )
    bad = report.over()
    if bad and raise_error:
        lines = [
            f"eval set {p.eval_set!r} shares {p.rate:.1%} of its {n}-grams "
            f"({p.shared_ngrams}/{p.eval_ngrams}) with training set {p.train_set!r}"
            for p in bad
        ]
        raise DistillError(
            f"held-out data overlaps training data above the threshold {threshold:.1%}: "
            + "; ".join(lines)
        )
    return report


def strip_padding(rows: np.ndarray, attention_mask: np.ndarray | None) -> list[np.ndarray]:
    if attention_mask is None:
        return list(rows)
    return [r[m.astype(bool)] for r, m in zip(rows, attention_mask, strict=True)]


def generation_texts(gen_dir: Path, split: str, max_rows: int | None = None) -> list[str]:
    """``prompt + completion`` of one split of a generation store."""
    rows = [r for r in read_generations(gen_dir) if r["split"] == split]
    return [f"{r['prompt']}\n{r['completion']}" for r in rows[:max_rows]]


def check_run_contamination(
    corpus: Any,
    generations: Path | None,
    tokenizer_path: Path,
    cfg: ContaminationConfig,
    extra_train: Mapping[str, Items] | None = None,
) -> ContaminationReport:
    """Every eval set of a run against every train / generation set, on teacher token ids.

    Eval: ``corpus.heldout`` (+ ``generations.heldout``); train: ``corpus.train``
    (+ ``generations.train``, + ``extra_train`` such as the SFT rows).
    """
    eval_sets: dict[str, Items] = {"corpus.heldout": corpus.heldout(cfg.max_rows)}
    train_sets: dict[str, Items] = {"corpus.train": corpus.train(cfg.max_rows)}
    if generations is not None:
        tok = load_tokenizer(tokenizer_path)

        def ids(texts: list[str]) -> list[list[int]]:
            return tok(texts, add_special_tokens=False)["input_ids"] if texts else []

        held = ids(generation_texts(generations, "heldout", cfg.max_rows))
        if held:
            eval_sets["generations.heldout"] = held
        train_sets["generations.train"] = ids(generation_texts(generations, "train", cfg.max_rows))
    train_sets.update(extra_train or {})
    return check_contamination(
        eval_sets, train_sets, cfg.n, cfg.threshold, raise_error=cfg.action == "error"
    )
