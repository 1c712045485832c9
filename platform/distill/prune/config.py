"""Settings of the ``prune`` stage (``prune:`` section of a pipeline YAML)."""

from __future__ import annotations

from distill.config.base import StrictModel


class PruneConfig(StrictModel):
    """Placeholder: filled in by the prune stage's implementation."""
