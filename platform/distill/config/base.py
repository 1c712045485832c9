"""Base class for every config model: unknown keys are errors, never silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that forbids unknown keys (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DistillError(Exception):
    """An error a user can act on: the CLI prints its message alone, with no traceback."""
