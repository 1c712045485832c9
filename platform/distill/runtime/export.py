"""Export an HF checkpoint (fp or GPTQ) to an ONNX Runtime GenAI int4 model directory.

    export_ort_genai(Path("runs/x/student-int4"), Path("runs/x/student-int4-ort"), EngineConfig(
        kind="ort-genai", source="gptq"))

Runs ONNX Runtime GenAI's model builder (``python -m onnxruntime_genai.models.builder``) in a
child process (it imports its own torch/transformers code paths and holds the whole model in
memory), into a temp directory renamed when whole. A GPTQ checkpoint's packed int4 weights are
carried into ``MatMulNBits`` as they are; an fp checkpoint is quantized by the builder itself.
The builder's graph is then edited (:mod:`distill.runtime.graph`): with ``embedding_bits: 8`` its
int8 head is shared with an int8 embedding lookup (:mod:`distill.runtime.tied_int8`), with
``algo: q4_1`` a GGUF Q4_1 model's own grid is carried (:mod:`distill.runtime.q4_1`), and zero
points that equal the default are dropped. ``distill_engine.json`` beside the model records the
engine, its version and the options.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from distill.atomic import atomic_dir
from distill.config.base import DistillError
from distill.runtime.config import EngineConfig
from distill.runtime.graph import drop_default_zero_points, edit_model
from distill.runtime.ort_genai import ENGINE, MANIFEST, require_ort_genai
from distill.runtime.q4_1 import carry_q4_1, is_q4_1_checkpoint
from distill.runtime.tied_int8 import require_int8_gather, tie_int8_embedding

__all__ = ["MANIFEST", "builder_options", "check_source", "export_ort_genai", "read_manifest"]


def builder_options(src: Path, cfg: EngineConfig, group_size: int) -> dict[str, str]:
    """``--extra_options`` for the builder (values as the builder's CLI takes them)."""
    raw = json.loads((Path(src) / "config.json").read_text())
    qcfg = raw.get("quantization_config")
    # algo: the body's quantizer from an fp source; from GPTQ only the layers GPTQ left in fp
    # (the LM head, and with it the tied embedding)
    algo = "rtn" if cfg.algo == "q4_1" else cfg.algo  # q4_1 replaces the builder's int4 after
    opts = {"accuracy_level": str(cfg.accuracy_level), "algo_config": algo}
    if qcfg is None:
        opts["block_size"] = "32" if cfg.algo == "q4_1" else str(cfg.block_size or group_size)
    if cfg.lm_head_bits == 8:  # an int8 embedding is shared after the build (tied_int8)
        opts["matmul_mixed_precision"] = "last_matmul:int8"
        opts["shared_embeddings"] = "false"
    elif raw.get("tie_word_embeddings"):
        opts["shared_embeddings"] = "true" if cfg.embedding == 4 else "false"
    return opts


def check_source(src: Path, cfg: EngineConfig) -> None:
    """What the engine cannot import, refused before the export (naming the fix)."""
    raw = json.loads((Path(src) / "config.json").read_text())
    qcfg = raw.get("quantization_config")
    if cfg.source == "gptq" and qcfg is None:
        raise DistillError(
            f"quantize.engine.source=gptq but {src} is not a GPTQ checkpoint; "
            "run GPTQ first (quantize.method: gptq) or set engine.source: fp"
        )
    if qcfg is not None:
        method = qcfg.get("quant_method")
        if method != "gptq" or qcfg.get("bits") != 4:
            raise DistillError(
                f"engine {ENGINE!r} imports 4-bit GPTQ checkpoints; {src} is "
                f"{method} {qcfg.get('bits')}-bit: use quantize.bits: 4 or engine.source: fp"
            )
        if not qcfg.get("sym", True):
            raise DistillError(
                f"engine {ENGINE!r}: asymmetric GPTQ ({src}) is not carried exactly; "
                "use quantize.sym: true or engine.source: fp"
            )


def export_ort_genai(src: Path, out: Path, cfg: EngineConfig, group_size: int = 32) -> Path:
    """Build the engine model from ``src`` into ``out`` (temp dir + rename); return ``out``."""
    src, out = Path(src), Path(out)
    require_ort_genai()
    check_source(src, cfg)
    if cfg.embedding == 8:  # an older ONNX Runtime fails here, before the build
        require_int8_gather()
    if cfg.algo == "q4_1" and not is_q4_1_checkpoint(src):
        raise DistillError(
            f"quantize.engine.algo: q4_1 carries a GGUF Q4_1 model's grid, but {src} is not on "
            "one (its first q_proj); use algo: rtn or k_quant, or source: gptq"
        )
    tied = bool(json.loads((src / "config.json").read_text()).get("tie_word_embeddings"))
    opts = builder_options(src, cfg, group_size)
    cache = Path(tempfile.mkdtemp(prefix="ort-builder-cache-"))
    try:
        with atomic_dir(out) as tmp:
            cmd = [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "-i",
                str(src),
                "-o",
                str(tmp),
                "-p",
                "int4",
                "-e",
                "cpu",
                "-c",
                str(cache),
                "--extra_options",
                *[f"{k}={v}" for k, v in opts.items()],
            ]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0 or not (tmp / "genai_config.json").exists():
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
                raise DistillError(f"engine {ENGINE!r} could not import {src}:\n{tail}")
            with edit_model(tmp) as model:
                if cfg.algo == "q4_1":
                    carry_q4_1(model, src)
                if cfg.embedding == 8:
                    tie_int8_embedding(model, tied=tied, block_size=cfg.lm_head_block_size)
                drop_default_zero_points(model)
            manifest = {
                "engine": ENGINE,
                "version": metadata.version("onnxruntime-genai"),
                "onnxruntime": metadata.version("onnxruntime"),
                "source": str(src),
                "source_kind": "gptq" if cfg.source == "gptq" else f"fp+{cfg.algo}",
                "builder_options": opts,
                "lm_head_bits": cfg.lm_head_bits,
                "embedding_bits": cfg.embedding,
                "tied": tied and cfg.embedding != 32,
                "threads": cfg.threads,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def read_manifest(path: Path) -> dict:
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.exists() else {"engine": ENGINE}
