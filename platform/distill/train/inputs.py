"""The ``distill`` stage's input checks (each bad input refused before any worker starts) and
the Ray run name its inputs give; quantize's recovery runs the same checks::

    store = check_inputs(cfg, teacher_dir, student_dir, soft_labels, teacher)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.losses.features import check_layer_pairs
from distill.models.compat import check_tokenizer_compat
from distill.train.config import DistillConfig, check_offline_objective
from distill.train.data import open_store


def _num_layers(model_dir: Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"])


def manifest_value(manifest: Any, key: str) -> Any:
    """A manifest field whether the store exposes a dict or an object."""
    if isinstance(manifest, dict):
        return manifest.get(key)
    return getattr(manifest, key, None)


def check_inputs(
    cfg: DistillConfig, teacher_dir: Path, student_dir: Path, soft_labels: Path | None, teacher: Any
) -> Any:
    """Every bad-input check, before training. Returns the opened store (offline) or None."""

    if cfg.mode == "sft":
        raise DistillError(
            "distill.mode: sft is what the seq-KD `sft` stage uses internally; for the distill "
            "stage use mode offline (soft labels) or online (live teacher)"
        )
    check_teacher_reachable(cfg, teacher_dir)
    check_tokenizer_compat(teacher_dir, student_dir)
    t_layers, s_layers = _num_layers(teacher_dir), _num_layers(student_dir)
    for name, sec in (("feature", cfg.feature), ("attention", cfg.attention)):
        if sec.weight:
            try:
                check_layer_pairs(sec.pairs, t_layers, s_layers)
            except ValueError as e:
                raise DistillError(f"distill.{name}.pairs: {e}") from None
    if cfg.mode != "offline":
        return None
    if soft_labels is None:
        raise DistillError(
            "distill.mode is offline but there is no soft-label store: add the soft_labels stage "
            "before distill, or set distill.mode: online"
        )

    store = open_store(soft_labels)
    store.check_compatible(teacher.weights_sha256, teacher.tokenizer_sha256)
    check_offline_objective(cfg, store.manifest.encoding)
    s_vocab = json.loads((Path(student_dir) / "config.json").read_text())["vocab_size"]
    st_vocab = manifest_value(store.manifest, "vocab_size")
    if st_vocab is not None and int(st_vocab) != int(s_vocab):
        raise DistillError(
            f"soft-label store vocab_size {st_vocab} != student vocab_size {s_vocab}"
        )
    return store


def check_teacher_reachable(cfg: DistillConfig, teacher_dir: Path) -> None:
    """Online mode and on-policy steps load the live teacher: its weights must be there."""
    if not cfg.needs_teacher:
        return
    teacher_dir = Path(teacher_dir)
    weights = [*teacher_dir.glob("*.safetensors"), *teacher_dir.glob("pytorch_model*.bin")]
    if (teacher_dir / "config.json").exists() and weights:
        return
    why = "mode: online" if cfg.mode == "online" else f"on_policy.lmbda {cfg.on_policy.lmbda:g}"
    raise DistillError(
        f"distill.{why} needs the live teacher, but {teacher_dir} holds no loadable checkpoint "
        "(config.json + weights); a soft-label store alone cannot score the student's own "
        "samples. Point teacher: at the teacher's weights, or set distill.on_policy.lmbda: 0"
    )


def run_name(cfg: DistillConfig, *parts: str) -> str:
    """Same inputs + config -> same Ray run name, so a rerun resumes its checkpoints.

    ``parts`` must name everything the run reads (student weights, teacher, corpus, the store's
    manifest hash): a changed input is a new run, never a resume of a finished one."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return f"distill-{h.hexdigest()[:12]}"
