"""Settings of the ``soft_labels`` stage (``soft_labels:`` section of a pipeline YAML)."""

from __future__ import annotations

from distill.config.base import StrictModel


class SoftLabelsConfig(StrictModel):
    """Placeholder: filled in by the soft_labels stage's implementation."""
