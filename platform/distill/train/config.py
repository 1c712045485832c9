"""Settings of the ``distill`` stage (``distill:`` section of a pipeline YAML)."""

from __future__ import annotations

from distill.config.base import StrictModel


class DistillConfig(StrictModel):
    """Placeholder: filled in by the distill stage's implementation."""
