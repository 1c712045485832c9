"""Decide what a (re)run of ``soft_labels`` must score: reuse whole shards, redo the rest.

A shard is reused when the stored manifest has the same identity (teacher, tokenizer, k,
corpus, encodings, dtype, rows per shard), lists that shard with the same row range, and the
file's sha256 matches. A different identity is refused unless ``overwrite`` is set::

    manifest, todo = prepare_store(out_dir, fresh_manifest, plan, overwrite=False)
"""

from __future__ import annotations

from pathlib import Path

from distill.config.base import DistillError
from distill.labels.manifest import (
    MANIFEST,
    Manifest,
    identity_mismatch,
    read_manifest,
    write_manifest,
)
from distill.labels.shards import ShardSpec, sha256_of


def _wipe(root: Path) -> None:
    for p in root.glob("shard-*.parquet"):
        p.unlink()
    for p in root.glob(".*.tmp"):
        p.unlink()
    (root / MANIFEST).unlink(missing_ok=True)


def prepare_store(
    root: Path, fresh: Manifest, plan: list[ShardSpec], overwrite: bool
) -> tuple[Manifest, list[ShardSpec]]:
    """Returns the manifest to continue (reused shard entries, ``complete: false``, already
    written) and the shards still to score. Deletes stale shard files and temp files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    old: Manifest | None = None
    if (root / MANIFEST).exists():
        try:
            old = read_manifest(root)
        except DistillError as e:
            if not overwrite:
                raise DistillError(
                    f"{e} (or set soft_labels.overwrite: true to replace it)"
                ) from None
        if old is not None:
            diffs = identity_mismatch(old, fresh)
            if diffs and not overwrite:
                raise DistillError(
                    f"soft-label store {root} was made with different settings: "
                    + "; ".join(diffs)
                    + ". Refusing to mix; set soft_labels.overwrite: true to replace it "
                    "(or use another workdir)"
                )
            if diffs:
                old = None
        if old is None:
            _wipe(root)
    else:
        _wipe(root)  # shards without a manifest cannot be trusted
        others = sorted(p.name for p in root.iterdir())
        if others and not overwrite:
            raise DistillError(
                f"{root} holds files but no {MANIFEST} ({others[:3]}...): not a soft-label "
                "store; move them away or set soft_labels.overwrite: true"
            )
    for p in root.glob(".*.tmp"):
        p.unlink()

    kept = {}
    if old is not None:
        by_file = {s.file: s for s in old.shards}
        for spec in plan:
            entry = by_file.get(spec.file)
            path = root / spec.file
            if (
                entry is not None
                and entry.start_row == spec.start_row
                and entry.rows == spec.rows
                and path.exists()
                and path.stat().st_size == entry.bytes
                and sha256_of(path) == entry.sha256
            ):
                kept[spec.file] = entry
    planned = {s.file for s in plan}
    for p in root.glob("shard-*.parquet"):
        if p.name not in kept or p.name not in planned:
            p.unlink()
    manifest = fresh.model_copy(deep=True)
    manifest.shards = list(kept.values())
    manifest.complete = False
    write_manifest(root, manifest)
    todo = [s for s in plan if s.file not in kept]
    return manifest, todo
