"""Settings of the ``evaluate`` stage (``evaluate:`` section) and of the release gate (``gate:``).

Metric names the gate may use are the keys of a model's entry in ``report.json``: top-level
quality/speed numbers (``perplexity``), generation checks (``generation.syntax_valid``) and extra
corpora (``extra.<corpus name>.perplexity``)::

    gate:
      vs_teacher: {next_token_accuracy: {min: 0.7}, perplexity: {max: 3.0}}
      vs_fp_student: {perplexity: {max: 1.25}}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import StrictModel
from distill.data.config import ContaminationConfig

# Per model entry of report.json: what the gate may name.
QUALITY_METRICS = ("perplexity", "next_token_accuracy", "agreement", "kl_to_reference")
SIZE_METRICS = ("parameters", "size_bytes")
SPEED_METRIC = re.compile(r"^(prefill|decode_b[1-9][0-9]*)_tps$")  # decode_b1_tps, prefill_tps
GENERATION_METRICS = (
    "syntax_valid",  # share of code answers that parse (signature + docstring + answer)
    "chrf_teacher",  # chrF (0-100) of the answer against the teacher's answer
    "chrf_reference",  # chrF (0-100) against the held-out document's own continuation
    "repetition",  # mean share of repeated word 4-grams in an answer
    "degenerate",  # share of answers that are empty or mostly repetition
    "length_ratio",  # answer characters / the teacher's answer characters
    "confidence",  # mean exp(mean token log-prob) of the model's own answers
)
GATE_METRICS = (
    *QUALITY_METRICS,
    *SIZE_METRICS,
    *(f"generation.{m}" for m in GENERATION_METRICS),
)
# Metrics where less is better (for ranking and dominance); every other metric: more is better.
LOWER_IS_BETTER = frozenset(
    {"perplexity", "kl_to_reference", "parameters", "size_bytes", "repetition", "degenerate"}
)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def metric_problem(name: str) -> str | None:
    """Why ``name`` is not a gate metric (None when it is one)."""
    if name in GATE_METRICS or SPEED_METRIC.match(name):
        return None
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "extra" and parts[2] in QUALITY_METRICS:
        return None
    return (
        f"unknown metric {name!r}: use one of {', '.join(GATE_METRICS)}, prefill_tps, "
        f"decode_b<batch>_tps, or extra.<corpus>.<{'|'.join(QUALITY_METRICS)}>"
    )


def lower_is_better(name: str) -> bool:
    return name.split(".")[-1] in LOWER_IS_BETTER


class ExtraCorpus(StrictModel):
    """A second held-out corpus, scored like the held-out split and reported on its own."""

    name: str = Field(..., pattern=NAME_PATTERN, description="label in report.json and MLflow")
    paths: list[Path] = Field(default_factory=list, description="files or directories")
    package: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="instead of paths: the source files of this installed Python package "
        "(found with importlib, not imported; its version goes into the report)",
    )
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = Field("text", description="column / JSON key holding the text")
    glob: str | None = Field(
        None,
        description="pattern for files inside directories; None = **/* (paths), **/*.py (package)",
    )
    max_documents: int | None = Field(None, ge=1)
    max_rows: int = Field(32, ge=1, description="packed rows of data.seq_len tokens scored")
    max_doc_chars: int = Field(
        4000,
        ge=1,
        description="characters scored from the start of each document, so that max_rows span "
        "many documents (taken in a seeded hash order of their ids), not the first long one",
    )

    @model_validator(mode="after")
    def _source(self) -> ExtraCorpus:
        if bool(self.paths) == bool(self.package):
            raise ValueError("give either paths (files or directories) or package (a name)")
        return self


class GenerationEvalConfig(StrictModel):
    """Generation-level checks: teacher and every model answer the same fixed prompt set."""

    enabled: bool = True
    code_prompts: int = Field(8, ge=0, description="function signature + docstring -> body")
    chat_prompts: int = Field(4, ge=0, description="'what does this function do?' (chat template)")
    text_prompts: int = Field(4, ge=0, description="continue a held-out passage")
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(8, ge=1)
    prompt_tokens: int = Field(96, ge=8, description="longest prompt, in tokens")
    max_rows: int | None = Field(
        1024, ge=1, description="held-out rows searched for prompts (None = all)"
    )


class SpeedConfig(StrictModel):
    """Prefill and decode speed of every model in the runtime that serves it (``distill.eval
    .speed``): ``prompts`` held-out prompts of ``prompt_tokens`` tokens, ``new_tokens`` greedy
    tokens per decode run, the median of ``repeats`` runs per figure."""

    enabled: bool = True
    prompt_tokens: int = Field(128, ge=1, description="prompt length (cut from held-out rows)")
    new_tokens: int = Field(64, ge=2, description="tokens decoded per run (no early stop)")
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 8], min_length=1, description="decode_b<n>_tps for each n"
    )
    repeats: int = Field(3, ge=1, description="runs per figure; the median is reported")

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError(f"batch_sizes must be distinct positive integers, got {v}")
        return sorted(v)


# The models of a run evaluate can score, in the order of its report.
MODEL_ORDER = (
    "teacher",
    "teacher_int4",
    "teacher_int4_gptq_cpu",
    "initial_student",
    "pruned",
    "student",
    "int4_gptq",
    "int4",
    "int4_cpu",
)


class EvaluateConfig(StrictModel):
    models: list[str] | None = Field(
        None,
        description="the run's models to score (None = every one it made); the teacher, the "
        "reference of agreement and KL, is always scored",
    )
    max_rows: int | None = Field(64, ge=1, description="held-out rows evaluated (None = all)")
    batch_size: int = Field(4, ge=1)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    dtype: str = "float32"
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig,
        description="n-gram overlap check of held-out vs training/generation sets (fails the run)",
    )
    extra_corpora: list[ExtraCorpus] = Field(
        default_factory=list, description="more held-out corpora (text dir / JSONL / Parquet)"
    )
    generation: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig)

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: list[str] | None) -> list[str] | None:
        bad = [m for m in v or [] if m not in MODEL_ORDER]
        if bad:
            raise ValueError(f"unknown model(s) {bad}: use {', '.join(MODEL_ORDER)}")
        return v

    @field_validator("extra_corpora")
    @classmethod
    def _unique_names(cls, v: list[ExtraCorpus]) -> list[ExtraCorpus]:
        names = [c.name for c in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"extra corpus names listed twice: {dup}")
        return v


class Bound(StrictModel):
    """``min`` and/or ``max``; relative sections multiply them by the reference's value."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min and/or max")
        return self


Rules = dict[str, Bound]


class BudgetBound(Bound):
    """A budget bound: absolute, or with ``vs`` relative to that model's value in the report
    (``decode_b1_tps: {min: 1.5, vs: teacher_int4}``: at least 1.5x its batch-1 decode)."""

    vs: str | None = Field(None, description="model of the report the bound multiplies")


CANDIDATES = (
    "initial_student",
    "pruned",
    "student",
    "int4",
    "int4_cpu",
    "teacher_int4",
    "teacher_int4_gptq_cpu",
)
# The default axes of dominance: held-out quality, batch-1 decode speed, size on disk.
DOMINANCE_AXES = ["perplexity", "decode_b1_tps", "size_bytes"]


class GateConfig(StrictModel):
    """Release gate: which model to serve. Every candidate gets a verdict; the champion is the
    best-ranked candidate (``rank_by``) that passes its rules, fits the ``budget`` and is not
    dominated; it gets the registry alias.

    ``vs_teacher``: value compared with the teacher's value times the bound (every judged model);
    ``vs_fp_student``: quantized models (``int4``, ``int4_cpu``; ``teacher_int4`` and
    ``teacher_int4_gptq_cpu`` against the teacher) against the fp model they were made from;
    ``absolute``: plain bounds. A metric the model lacks fails its rule, unless its reference
    lacks it too (e.g. no code prompts in a prose corpus): then the rule is skipped and listed.
    ``budget``: what a model must reach to be served at all (speed, size); a model outside it
    keeps its verdict but cannot be champion.
    A candidate is **dominated** when another candidate is at least as good on every axis of
    ``dominance`` and better on one: nobody should serve it.
    """

    enabled: bool = True
    models: list[str] = Field(
        default_factory=lambda: [
            "student",
            "int4",
            "int4_cpu",
            "teacher_int4",
            "teacher_int4_gptq_cpu",
        ],
        description="candidates judged (when present in the report)",
    )
    rank_by: str = Field("perplexity", description="the champion: best candidate by this metric")
    budget: dict[str, BudgetBound] = Field(
        default_factory=dict, description="bounds a candidate must meet to become champion"
    )
    dominance: list[str] = Field(
        default_factory=lambda: list(DOMINANCE_AXES),
        description="metrics compared for dominance (quality, speed, size); empty = off",
    )
    alias: str = Field("champion", pattern=NAME_PATTERN)
    vs_teacher: Rules = Field(
        default_factory=lambda: {
            "next_token_accuracy": Bound(min=0.7),
            "perplexity": Bound(max=3.0),
            "generation.syntax_valid": Bound(min=0.5),
        }
    )
    vs_fp_student: Rules = Field(
        default_factory=lambda: {
            "perplexity": Bound(max=1.25),
            "next_token_accuracy": Bound(min=0.95),
        }
    )
    absolute: Rules = Field(default_factory=lambda: {"generation.degenerate": Bound(max=0.5)})

    @field_validator("vs_teacher", "vs_fp_student", "absolute", "budget")
    @classmethod
    def _known_metrics(cls, v: dict[str, Bound]) -> dict[str, Bound]:
        problems = [p for p in (metric_problem(k) for k in v) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("rank_by")
    @classmethod
    def _rank_metric(cls, v: str) -> str:
        problem = metric_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("dominance")
    @classmethod
    def _axes(cls, v: list[str]) -> list[str]:
        problems = [p for p in (metric_problem(k) for k in v) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("models")
    @classmethod
    def _model_keys(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in CANDIDATES]
        if bad:
            raise ValueError(f"unknown model(s) {bad}: use {', '.join(CANDIDATES)}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget_refs(cls, v: dict[str, BudgetBound]) -> dict[str, BudgetBound]:
        refs = {"teacher", *CANDIDATES}
        bad = sorted({b.vs for b in v.values() if b.vs is not None and b.vs not in refs})
        if bad:
            raise ValueError(
                f"budget: vs names unknown model(s) {bad}: use {', '.join(sorted(refs))}"
            )
        return v

    def extra_corpora_named(self) -> set[str]:
        names = [
            *self.vs_teacher,
            *self.vs_fp_student,
            *self.absolute,
            *self.budget,
            *self.dominance,
            self.rank_by,
        ]
        return {k.split(".")[1] for k in names if k.startswith("extra.")}
