"""Engines behind a model replica, chosen per model by ``engine:`` in ``deploy/serve.yaml``.

In-replica engines implement :class:`~distill.serve.engines.base.Engine` and run inside distill's
``ModelServer`` deployment::

    engine = build_engine("hf", Path("runs/smollm2/student"), EngineOptions(threads=2))

| engine | where | module |
|---|---|---|
| ``hf`` | CPU / CUDA, any full-attention transformers LM; continuous batching (the reference) | ``hf.py`` |
| ``onnxruntime-genai`` | CPU, an int4 ONNX export (``genai_config.json``) | ``ort.py`` |
| ``vllm`` | GPU, a Ray Serve LLM (``ray.serve.llm``) deployment the Router calls directly | ``vllm.py`` |

Speculative decoding (``cascade.mode: speculative``): the teacher's engine is built with a
:class:`DraftSpec` (the student) and verifies its drafts; engines in ``VERIFY_ENGINES`` can, the
student's engine must be one of ``DRAFT_ENGINES`` (``distill.serve.config``).

A new in-replica engine subclasses :class:`~distill.serve.engines.base.ThreadedEngine` (admission,
cancellation, stop strings and text are shared) and adds one line to ``ENGINES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config.base import DistillError
from distill.serve.config import VERIFY_ENGINES, BatchingConfig
from distill.serve.engines.base import Engine
from distill.serve.engines.draft import build_drafter

ENGINES = {
    "hf": "distill.serve.engines.hf:HFEngine",
    "onnxruntime-genai": "distill.serve.engines.ort:OrtGenAIEngine",
}


@dataclass(frozen=True)
class DraftSpec:
    """The student a teacher's engine drafts with (``cascade.mode: speculative``)."""

    engine: str
    path: Path
    dtype: str = "float32"
    max_length: int = 2048


@dataclass(frozen=True)
class EngineOptions:
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    kwargs: dict[str, Any] = field(default_factory=dict)


def build_engine(
    kind: str, path: Path, options: EngineOptions, draft: DraftSpec | None = None
) -> Engine:
    """Load ``path`` with the engine ``kind`` (see the table above); with ``draft``, the engine
    also loads that student and verifies its drafts (speculative decoding)."""
    if kind not in ENGINES:
        raise DistillError(
            f"engine {kind!r} does not run inside a distill replica (known: {', '.join(ENGINES)})"
        )
    extra: dict[str, Any] = {}
    if draft is not None:
        if kind not in VERIFY_ENGINES:
            raise DistillError(
                f"engine {kind!r} cannot verify draft tokens (speculative decoding needs one "
                f"forward over several tokens per row, with rollback): serve the teacher with "
                f"engine {' or '.join(VERIFY_ENGINES)}"
            )

        extra["draft"] = build_drafter(
            draft.engine, draft.path, options.device, draft.dtype, options.threads,
            draft.max_length,
        )  # fmt: skip
    module, name = ENGINES[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(
        Path(path),
        device=options.device,
        dtype=options.dtype,
        torch_threads=options.threads,
        batching=options.batching,
        **options.kwargs,
        **extra,
    )
