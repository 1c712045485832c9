"""Settings of the ``quantize`` stage (``quantize:`` section of a pipeline YAML)."""

from __future__ import annotations

from distill.config.base import StrictModel


class QuantizeConfig(StrictModel):
    """Placeholder: filled in by the quantize stage's implementation."""
