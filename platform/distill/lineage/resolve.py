"""Registered model URIs → a local checkpoint directory.

``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (e.g. ``@champion``, moved by the release gate)
is resolved to a version, downloaded once into ``$DISTILL_CACHE/serve-models/<store>-NAME-VERSION``
and the HF checkpoint inside it returned::

    path, tags = resolve_registered("models:/smollm2-student@champion", "sqlite:///runs/smollm2/mlflow.db")
    # deploy/serve.yaml: student: {model: "models:/smollm2-student@champion"}
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from distill.atomic import atomic_dir
from distill.config.base import DistillError
from distill.models.gguf import cache_root

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))/?$")


def parse_model_uri(ref: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` of a registered model URI; ``ValueError`` when malformed."""
    m = _URI.match(ref.strip())
    if not m:
        raise ValueError(
            f"registered model must look like 'models:/NAME/VERSION' or 'models:/NAME@ALIAS', "
            f"got {ref!r}"
        )
    return m["name"], m["version"], m["alias"]


def _version(client, name: str, version: str | None, alias: str | None, where: str):
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except Exception as e:
        hint = " (the release gate sets it when a model passes)" if alias else ""
        raise DistillError(f"cannot resolve {where}{hint}: {type(e).__name__}: {e}") from None


def resolve_registered(ref: str, tracking_uri: str) -> tuple[Path, dict[str, str]]:
    """Download a registered version once; return (checkpoint dir, lineage tags)."""
    import mlflow
    from mlflow import MlflowClient

    try:
        name, version, alias = parse_model_uri(ref)
    except ValueError as e:
        raise DistillError(str(e)) from None
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mv = _version(client, name, version, alias, f"{ref} at {tracking_uri}")
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:8]
    dst = cache_root() / "serve-models" / f"{store}-{name}-{mv.version}"
    if not dst.exists():
        source = client.get_model_version_download_uri(name, mv.version)
        with atomic_dir(dst) as tmp:
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri
            )
    configs = sorted(dst.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise DistillError(f"{ref} holds no HF checkpoint (no config.json under {dst})")
    tags = {"registered": f"models:/{name}/{mv.version}", "source_run_id": str(mv.run_id or "")}
    if alias:
        tags["alias"] = alias
    return configs[0].parent, tags
