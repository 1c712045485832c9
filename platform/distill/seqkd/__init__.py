"""Sequence-level (black-box) distillation: teacher generation, filtering, SFT of the student."""
