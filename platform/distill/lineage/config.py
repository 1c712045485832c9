"""MLflow settings (``tracking:`` section). Default: SQLite + artifacts inside the workdir."""

from __future__ import annotations

from pydantic import Field

from distill.config.base import StrictModel


class TrackingConfig(StrictModel):
    uri: str | None = Field(
        None, description="MLflow tracking URI; unset = $MLFLOW_TRACKING_URI or workdir SQLite"
    )
    experiment: str = "distill"
    registered_model: str | None = Field(
        None, description="registered model name for students; unset = '<pipeline name>-student'"
    )
    timeout_s: float = Field(10.0, gt=0, description="reachability check of a remote server")
