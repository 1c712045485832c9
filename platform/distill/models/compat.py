"""Tokenizer compatibility between teacher and student: KD needs identical token spaces."""

from __future__ import annotations

import json
from pathlib import Path

from distill.config.base import DistillError
from distill.models.hashing import tokenizer_sha256


def check_tokenizer_compat(teacher_dir: Path, student_dir: Path) -> None:
    """Raise ``DistillError`` naming the difference when the student's tokenizer differs."""
    t_cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
    s_cfg = json.loads((Path(student_dir) / "config.json").read_text())
    tv, sv = t_cfg.get("vocab_size"), s_cfg.get("vocab_size")
    if tv != sv:
        raise DistillError(
            f"tokenizer mismatch: teacher vocab_size {tv} != student vocab_size {sv} "
            f"(teacher {teacher_dir}, student {student_dir}); padded vocabularies are not supported"
        )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if t_cfg.get(key) != s_cfg.get(key):
            raise DistillError(
                f"tokenizer mismatch: {key} teacher {t_cfg.get(key)} != student {s_cfg.get(key)}"
            )
    th, sh = tokenizer_sha256(teacher_dir), tokenizer_sha256(student_dir)
    if th != sh:
        raise DistillError(
            f"tokenizer mismatch: teacher tokenizer sha256 {th[:12]} != student {sh[:12]} "
            "(the student must use the teacher's tokenizer)"
        )


def vocab_size(model_dir: Path) -> int | None:
    """The logit dimension of an HF checkpoint (``config.json``) or of an ONNX Runtime GenAI
    export (``genai_config.json``)."""
    d = Path(model_dir)
    if (d / "config.json").exists():
        return json.loads((d / "config.json").read_text()).get("vocab_size")
    if (d / "genai_config.json").exists():
        return json.loads((d / "genai_config.json").read_text())["model"].get("vocab_size")
    return None


def check_draft_compat(teacher_dir: Path, draft_dir: Path, field: str) -> None:
    """A draft model for speculative decoding must share the teacher's token ids (same
    tokenizer, same logit dimension); ``DistillError`` naming ``field`` otherwise."""
    tv, dv = vocab_size(teacher_dir), vocab_size(draft_dir)
    if tv != dv:
        raise DistillError(
            f"{field}: the draft's vocab_size {dv} ({draft_dir}) differs from the teacher's {tv} "
            f"({teacher_dir}): speculative decoding needs the teacher's tokenizer"
        )
    try:
        th, dh = tokenizer_sha256(teacher_dir), tokenizer_sha256(draft_dir)
    except FileNotFoundError as e:
        raise DistillError(f"{field}: cannot compare tokenizers: {e}") from None
    if th != dh:
        raise DistillError(
            f"{field}: the draft's tokenizer (sha256 {dh[:12]}, {draft_dir}) differs from the "
            f"teacher's ({th[:12]}, {teacher_dir}): speculative decoding needs the teacher's "
            "tokenizer (a student distilled from this teacher has it)"
        )
