"""Settings of the ``evaluate`` stage (``evaluate:`` section of a pipeline YAML)."""

from __future__ import annotations

from pydantic import Field

from distill.config.base import StrictModel
from distill.eval.contamination import ContaminationConfig


class EvaluateConfig(StrictModel):
    max_rows: int | None = Field(64, ge=1, description="held-out rows evaluated (None = all)")
    batch_size: int = Field(4, ge=1)
    speed_rows: int = Field(4, ge=1, description="rows of the forward-throughput measurement")
    dtype: str = "float32"
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig,
        description="n-gram overlap check of held-out vs training/generation sets (fails the run)",
    )
