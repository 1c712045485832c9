"""User-facing errors. The CLI prints ``DistillError`` messages without a traceback."""

from distill.config.base import DistillError

__all__ = ["DistillError"]
