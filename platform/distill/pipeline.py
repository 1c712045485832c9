"""``PipelineConfig``: the one typed config a pipeline YAML parses into.

distill run pipelines/configs/smoke.yaml --set prune.target_params=0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from distill.config.base import DistillError, StrictModel
from distill.config.loader import load_model
from distill.data.config import DataConfig
from distill.eval.config import EvaluateConfig, GateConfig
from distill.labels.config import SoftLabelsConfig
from distill.lineage.config import TrackingConfig
from distill.models.config import GGUFSource, ModelSource
from distill.prune.config import PruneConfig
from distill.quant.config import QuantizeConfig, TeacherInt4Config
from distill.ray_config import RayConfig
from distill.runtime.config import EngineConfig
from distill.seqkd.config import GenerateConfig, SFTConfig
from distill.storage import is_uri, local_path
from distill.train.config import DistillConfig, check_offline_objective

StageName = Literal[
    "soft_labels", "generate", "prune", "distill", "sft", "quantize", "teacher_int4", "evaluate"
]


class PipelineConfig(StrictModel):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: Path = Field(
        Path("runs/default"),
        description="a path or file:// URI every Ray node reaches at the same path (shared "
        "filesystem / ReadWriteMany PVC on KubeRay)",
    )
    reuse_from: list[Path] = Field(
        default_factory=list,
        description="finished workdirs of other runs: the corpus and every stage whose cache "
        "key matches are reused from there instead of recomputed (sweeps share their stages)",
    )
    teacher: ModelSource = Field(default_factory=GGUFSource)
    student: ModelSource | None = Field(
        None, description="initial student; unset = the pruned teacher (or the teacher)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[StageName] = Field(..., min_length=1)
    soft_labels: SoftLabelsConfig = Field(default_factory=SoftLabelsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    teacher_int4: TeacherInt4Config = Field(
        default_factory=TeacherInt4Config, description="the quantized teacher, the baseline"
    )
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gate: GateConfig = Field(default_factory=GateConfig, description="release gate after evaluate")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir_uri(cls, v: object) -> object:
        if isinstance(v, str) and is_uri(v):
            try:
                return local_path(v)
            except Exception as e:  # DistillError → a validation error naming the key
                raise ValueError(str(e)) from None
        return v

    @field_validator("stages")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"stages listed twice: {dup}")
        return v

    @model_validator(mode="after")
    def _teacher_int4(self) -> PipelineConfig:
        """The quantized teacher runs before ``evaluate`` in every pipeline that quantizes and
        evaluates, with the pipeline's quantize settings unless it has its own."""
        t = self.teacher_int4
        if "teacher_int4" in self.stages and not t.enabled:
            raise ValueError("stages lists teacher_int4 but teacher_int4.enabled is false")
        wanted = t.enabled and {"quantize", "evaluate"} <= set(self.stages)
        if wanted and "teacher_int4" not in self.stages:
            self.stages.insert(self.stages.index("evaluate"), "teacher_int4")
        if {"teacher_int4", "evaluate"} <= set(self.stages) and self.stages.index(
            "teacher_int4"
        ) > self.stages.index("evaluate"):
            raise ValueError("stages: teacher_int4 must come before evaluate (which scores it)")
        if t.quantize is None:
            t.quantize = self.quantize
        if t.gptq_engine is None:
            e = self.quantize.engine
            second = e.kind != "none" and e.source == "gptq" and e != t.quantize.engine
            t.gptq_engine = e if second else EngineConfig()
            try:  # the teacher's own GPTQ settings must suit the student's engine
                TeacherInt4Config.model_validate(t.model_dump())
            except ValidationError as err:
                first = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(
                    f"teacher_int4.gptq_engine (unset: the pipeline's quantize.engine): {first}; "
                    "set teacher_int4.gptq_engine: {kind: none} or GPTQ settings that suit it"
                ) from None
        return self

    @model_validator(mode="after")
    def _offline_objective(self) -> PipelineConfig:
        """An offline objective the configured store cannot give fails before any stage runs."""
        stages = set(self.stages)
        if {"distill", "soft_labels"} <= stages and self.distill.mode == "offline":
            try:
                check_offline_objective(self.distill, self.soft_labels.encoding)
            except DistillError as e:
                raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _gate_corpora(self) -> PipelineConfig:
        have = {c.name for c in self.evaluate.extra_corpora}
        missing = sorted(self.gate.extra_corpora_named() - have)
        if missing:
            raise ValueError(
                f"gate: metrics name extra corpora {missing} that evaluate.extra_corpora does "
                f"not define (it has {sorted(have) or 'none'})"
            )
        return self


def load_config(path: Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline YAML with ``a.b=c`` overrides applied, validated before any stage runs."""
    return load_model(path, PipelineConfig, overrides)
