"""Where the pipeline's Ray cluster is (``ray:`` section of a pipeline YAML)::

ray: {address: auto}          # a running cluster; unset = $RAY_ADDRESS or a local ray.init()
"""

from __future__ import annotations

from pydantic import Field

from distill.config.base import StrictModel


class RayConfig(StrictModel):
    address: str | None = Field(None, description="unset = $RAY_ADDRESS or a local ray.init()")
    num_cpus: int | None = Field(None, ge=1, description="local cluster only")
    num_gpus: int | None = Field(None, ge=0, description="local cluster only")
    parquet_footer_actors: int | None = Field(
        2,
        ge=1,
        description="Ray Data FooterReader actors per read_parquet "
        "($RAY_DATA_PARQUET_FOOTER_NUM_ACTORS wins when set; None = Ray's default, 32 worker "
        "processes per read, meant for object stores with many files; a few actors start "
        "faster on a small machine)",
    )
