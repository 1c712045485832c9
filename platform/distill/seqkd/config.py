"""Settings of the ``generate`` and ``sft`` stages."""

from __future__ import annotations

from distill.config.base import StrictModel


class GenerateConfig(StrictModel):
    """Placeholder: filled in by the generate stage's implementation."""


class SFTConfig(StrictModel):
    """Placeholder: filled in by the sft stage's implementation."""
