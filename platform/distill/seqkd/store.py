"""The generation store: ``<workdir>/generations/`` = ``manifest.json`` + ``shard-*.parquet``.

Like the soft-label store, each shard is written to a temp name and renamed when whole; the
directory itself is built under a temp name and renamed only after its manifest is written, so a
directory without ``manifest.json`` (or with a shard whose sha256 differs) is never read::

    writer = GenerationWriter(tmp_dir); writer.write(rows); writer.finish(manifest)
    rows = read_generations(Path("runs/smoke-seqkd/generations"))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from distill.atomic import atomic_file
from distill.config.base import DistillError
from distill.models.hashing import file_sha256

FORMAT_VERSION = 1
COLUMNS = (
    "key",
    "id",
    "prompt",
    "messages_json",
    "kind",
    "split",
    "sample",
    "completion",
    "mean_logprob",
    "n_tokens",
    "finish_reason",
)


class GenerationWriter:
    """Writes Parquet shards (temp name → rename) and, last, the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = []

    def write(self, rows: dict[str, list]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(rows["key"])
        if n == 0:
            return
        lp = [None if v is None or math.isnan(float(v)) else float(v) for v in rows["mean_logprob"]]
        cols = {c: list(rows[c]) for c in COLUMNS if c != "mean_logprob"}
        table = pa.table(
            {
                **{c: pa.array([str(v) for v in cols[c]], pa.string()) for c in COLUMNS[:6]},
                "sample": pa.array([int(v) for v in cols["sample"]], pa.int32()),
                "completion": pa.array([str(v) for v in cols["completion"]], pa.string()),
                "mean_logprob": pa.array(lp, pa.float32()),
                "n_tokens": pa.array([int(v) for v in cols["n_tokens"]], pa.int32()),
                "finish_reason": pa.array([str(v) for v in cols["finish_reason"]], pa.string()),
            }
        )
        name = f"shard-{len(self.shards):05d}.parquet"
        with atomic_file(self.root / name) as tmp:
            pq.write_table(table, tmp)
        self.shards.append({"file": name, "rows": n, "sha256": file_sha256(self.root / name)})

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = {
            "format_version": FORMAT_VERSION,
            **manifest,
            "shards": self.shards,
            "rows": sum(s["rows"] for s in self.shards),
        }
        with atomic_file(self.root / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=1))
        return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise DistillError(
            f"{root} is not a complete generation set (no manifest.json): rerun the generate stage"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DistillError(
            f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    return manifest


def read_generations(root: Path, verify: bool = True) -> list[dict[str, Any]]:
    """All rows of a complete store, shards checked against the manifest's sha256."""
    import pyarrow.parquet as pq

    root = Path(root)
    manifest = read_manifest(root)
    rows: list[dict[str, Any]] = []
    for s in manifest["shards"]:
        path = root / s["file"]
        if not path.exists():
            raise DistillError(f"generation shard {path} listed in the manifest is missing")
        if verify and file_sha256(path) != s["sha256"]:
            raise DistillError(f"generation shard {path} does not match its manifest sha256")
        rows.extend(pq.read_table(path).to_pylist())
    return rows
