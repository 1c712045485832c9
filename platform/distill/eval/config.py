"""Settings of the ``evaluate`` stage (``evaluate:`` section) and of the release gate (``gate:``).

Metric names the gate may use are the keys of a model's entry in ``report.json``: top-level
quality/speed numbers (``perplexity``), generation checks (``generation.syntax_valid``) and extra
corpora (``extra.<corpus name>.perplexity``)::

    gate:
      vs_teacher: {next_token_accuracy: {min: 0.7}, perplexity: {max: 3.0}}
      vs_fp_student: {perplexity: {max: 1.25}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import StrictModel
from distill.eval.contamination import ContaminationConfig

# Per model entry of report.json: what the gate may name.
QUALITY_METRICS = ("perplexity", "next_token_accuracy", "agreement", "kl_to_reference")
SIZE_SPEED_METRICS = ("parameters", "size_bytes", "tokens_per_s")
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
    *SIZE_SPEED_METRICS,
    *(f"generation.{m}" for m in GENERATION_METRICS),
)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def metric_problem(name: str) -> str | None:
    """Why ``name`` is not a gate metric (None when it is one)."""
    if name in GATE_METRICS:
        return None
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "extra" and parts[2] in QUALITY_METRICS:
        return None
    return (
        f"unknown metric {name!r}: use one of {', '.join(GATE_METRICS)}, "
        f"or extra.<corpus>.<{'|'.join(QUALITY_METRICS)}>"
    )


class ExtraCorpus(StrictModel):
    """A second held-out corpus, scored like the held-out split and reported on its own."""

    name: str = Field(..., pattern=NAME_PATTERN, description="label in report.json and MLflow")
    paths: list[Path] = Field(..., min_length=1, description="files or directories")
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = Field("text", description="column / JSON key holding the text")
    glob: str = Field("**/*", description="pattern for files inside directories")
    max_documents: int | None = Field(None, ge=1)
    max_rows: int = Field(32, ge=1, description="packed rows of data.seq_len tokens scored")


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


class EvaluateConfig(StrictModel):
    max_rows: int | None = Field(64, ge=1, description="held-out rows evaluated (None = all)")
    batch_size: int = Field(4, ge=1)
    speed_rows: int = Field(4, ge=1, description="rows of the forward-throughput measurement")
    dtype: str = "float32"
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig,
        description="n-gram overlap check of held-out vs training/generation sets (fails the run)",
    )
    extra_corpora: list[ExtraCorpus] = Field(
        default_factory=list, description="more held-out corpora (text dir / JSONL / Parquet)"
    )
    generation: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig)

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


class GateConfig(StrictModel):
    """Release gate: which models may be served. A passing model gets the registry alias.

    ``vs_teacher``: value compared with the teacher's value times the bound (every judged model);
    ``vs_fp_student``: quantized models (``int4``) against the fp model they were made from;
    ``absolute``: plain bounds. A metric the model lacks fails its rule, unless its reference
    lacks it too (e.g. no code prompts in a prose corpus): then the rule is skipped and listed.
    """

    enabled: bool = True
    models: list[str] = Field(
        default_factory=lambda: ["student", "int4"], description="models judged (when present)"
    )
    champion_order: list[str] = Field(
        default_factory=lambda: ["student", "int4"],
        description="the first passing model in this order gets the alias",
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

    @field_validator("vs_teacher", "vs_fp_student", "absolute")
    @classmethod
    def _known_metrics(cls, v: Rules) -> Rules:
        problems = [p for p in (metric_problem(k) for k in v) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("models", "champion_order")
    @classmethod
    def _model_keys(cls, v: list[str]) -> list[str]:
        known = ("initial_student", "pruned", "student", "int4")
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown model(s) {bad}: use {', '.join(known)}")
        return v

    def extra_corpora_named(self) -> set[str]:
        rules = {**self.vs_teacher, **self.vs_fp_student, **self.absolute}
        return {k.split(".")[1] for k in rules if k.startswith("extra.")}
