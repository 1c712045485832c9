"""YAML → a config model with ``--set a.b=c`` overrides and errors naming file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from distill.config.base import DistillError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DistillError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise DistillError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``x=3`` is an int, ``x=[a]`` a list)."""
    for item in overrides:
        if "=" not in item:
            raise DistillError(f"--set {item!r}: expected KEY=VALUE, e.g. prune.target_params=0.5")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise DistillError(f"--set {item!r}: empty key")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise DistillError(f"--set {item!r}: {p!r} is not a mapping")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise DistillError(f"--set {item!r}: bad value: {e}") from None
    return data


def format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({e.error_count()} error(s)):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise DistillError(format_validation_error(e, source)) from None


def load_model(path: Path, model: type[M], overrides: list[str] | None = None) -> M:
    """Load a YAML file into ``model`` with overrides applied (a pipeline: ``distill.pipeline``)."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate(model, data, str(path))
