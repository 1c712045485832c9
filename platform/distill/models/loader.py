"""Resolve a ``ModelSource`` to a local HF checkpoint directory and load models from it.

Every model in distill, whatever its source, becomes a plain HF directory that
``AutoModelForCausalLM.from_pretrained`` loads with nothing else (no hub, no remote code)::

    info = resolve_source(TinySource(), cache_dir)
    model = load_causal_lm(info.path)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.atomic import atomic_dir
from distill.config.base import DistillError
from distill.models.config import GGUFSource, HFSource, TinySource
from distill.models.gguf import (
    DEFAULT_NAME,
    cache_root,
    convert_gguf,
    gguf_license,
    package_license,
    packaged_gguf,
)
from distill.models.hashing import tokenizer_sha256, weights_sha256
from distill.models.license import LicenseDecision, check_license
from distill.models.tiny import build_tiny_llama


def ensure_offline() -> None:
    """No run-time downloads, ever: fail fast instead of hanging on an unreachable hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class ModelInfo:
    """A resolved checkpoint: where it is and what it is."""

    name: str
    path: Path
    weights_sha256: str
    tokenizer_sha256: str
    license: str | None

    def to_dict(self) -> dict[str, str | None]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _tiny_dir(src: TinySource, cache: Path) -> Path:
    key = hashlib.sha256(src.model_dump_json(exclude={"name", "license"}).encode()).hexdigest()
    out = cache / "tiny" / key[:16]
    if not (out / "config.json").exists():
        with atomic_dir(out) as tmp:
            build_tiny_llama(src, tmp)
    return out


def resolve_source(src: GGUFSource | HFSource | TinySource, cache: Path | None = None) -> ModelInfo:
    """Materialize a source as an HF directory (converting or building once, cached)."""
    ensure_offline()
    cache = cache or cache_root()
    declared: str | None
    if isinstance(src, GGUFSource):
        gguf = src.path or packaged_gguf()
        path = convert_gguf(gguf, cache)
        declared = src.license or gguf_license(gguf) or (None if src.path else package_license())
        name = src.name or (DEFAULT_NAME if src.path is None else gguf.stem)
    elif isinstance(src, HFSource):
        path = Path(src.path)
        if not (path / "config.json").exists():
            raise DistillError(f"model directory {path} has no config.json (not an HF checkpoint)")
        declared = src.license or _declared_license(path)
        name = src.name or path.name
    else:
        path = _tiny_dir(src, cache)
        declared = src.license or "Apache-2.0"  # built here from random weights
        name = src.name or f"tiny-llama-{src.num_hidden_layers}l-{src.hidden_size}h"
    return ModelInfo(name, path, weights_sha256(path), tokenizer_sha256(path), declared)


def _declared_license(path: Path) -> str | None:
    """License from a model card's front matter or ``config.json`` (``license`` key)."""
    card = path / "README.md"
    if card.exists():
        for line in card.read_text(errors="replace").splitlines()[:40]:
            if line.strip().lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    cfg = json.loads((path / "config.json").read_text())
    return cfg.get("license")


def license_decision(src: GGUFSource | HFSource | TinySource, info: ModelInfo) -> LicenseDecision:
    return check_license(info.license, src.allow_restricted_license, info.name)


def load_causal_lm(path: Path, dtype: str = "float32", device: str = "cpu"):
    """``AutoModelForCausalLM.from_pretrained`` with distill's defaults (local files, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    ensure_offline()
    if not (Path(path) / "config.json").exists():
        raise DistillError(f"not a model checkpoint (no config.json): {path}")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), local_files_only=True
    )
    return model.to(device).eval()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    ensure_offline()
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
