"""``PipelineConfig``: the one typed config a pipeline YAML parses into.

distill run pipelines/configs/smoke.yaml --set prune.target_params=0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config.base import DistillError, StrictModel
from distill.data.config import DataConfig
from distill.eval.config import EvaluateConfig
from distill.labels.config import SoftLabelsConfig
from distill.lineage.config import RayConfig, TrackingConfig
from distill.models.config import GGUFSource, ModelSource
from distill.prune.config import PruneConfig
from distill.quant.config import QuantizeConfig
from distill.seqkd.config import GenerateConfig, SFTConfig
from distill.train.config import DistillConfig

StageName = Literal["soft_labels", "generate", "prune", "distill", "sft", "quantize", "evaluate"]


class PipelineConfig(StrictModel):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: Path = Path("runs/default")
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
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("stages")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"stages listed twice: {dup}")
        return v

    @model_validator(mode="after")
    def _offline_objective(self) -> PipelineConfig:
        """An offline objective the configured store cannot give fails before any stage runs."""
        stages = set(self.stages)
        if {"distill", "soft_labels"} <= stages and self.distill.mode == "offline":
            from distill.train.stage import check_offline_objective

            try:
                check_offline_objective(self.distill, self.soft_labels.encoding)
            except DistillError as e:
                raise ValueError(str(e)) from None
        return self
