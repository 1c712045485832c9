"""Settings of the request log (``args.request_log`` of ``deploy/serve.yaml``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from distill.config.base import StrictModel


class RequestLogConfig(StrictModel):
    """A bounded, rotating Parquet log of answered requests (one directory, many files).

    At most ``max_files`` files of at most ``rows_per_file`` records each: the oldest whole file
    is deleted beyond that. Records are buffered and written as one complete file when
    ``rows_per_file`` are waiting or ``flush_interval_s`` has passed (and at shutdown).
    """

    path: Path = Field(..., description="directory of requests-*.parquet files")
    include_prompts: bool = Field(False, description="also store prompts (privacy: off)")
    rows_per_file: int = Field(1000, ge=1, le=1_000_000)
    max_files: int = Field(100, ge=1, description="retention bound: oldest files deleted beyond")
    flush_interval_s: float = Field(30.0, gt=0, description="longest time a record waits in memory")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        """Resolved where the config is first read, so every replica writes to the same place."""
        return Path(v).expanduser().resolve()
