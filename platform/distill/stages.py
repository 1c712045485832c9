"""The stage contract: every stage is ``run(ctx: StageContext, cfg) -> StageResult``.

The runner (``distill.runner``) builds one ``StageContext`` per stage, opens the stage's MLflow
child run (``ctx.tracker``), calls the stage, and records ``StageResult.outputs`` as the
artifacts later stages read from ``ctx.artifacts``. Artifact keys:
``teacher``, ``soft_labels``, ``generations``, ``pruned``, ``student``, ``int4``,
``int4_cpu``, ``teacher_int4``, ``teacher_int4_gptq``, ``teacher_int4_gptq_cpu``. A stage module
may also define ``preflight(cfg, model_dir)``: the runner calls it for every configured stage
before any pipeline work.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.console import Progress

if TYPE_CHECKING:
    from distill.data.packed import PackedCorpus
    from distill.lineage.tracker import StageRun
    from distill.models.loader import ModelInfo
    from distill.pipeline import PipelineConfig

# Lazily imported so `import distill` stays light: stage name -> "module:function".
STAGES: dict[str, str] = {
    "soft_labels": "distill.labels.stage:run",
    "generate": "distill.seqkd.generate_stage:run",
    "prune": "distill.prune.stage:run",
    "distill": "distill.train.stage:run",
    "sft": "distill.seqkd.sft_stage:run",
    "quantize": "distill.quant.stage:run",
    "teacher_int4": "distill.quant.teacher_stage:run",
    "evaluate": "distill.eval.stage:run",
}

# Stages keyed on the teacher, the corpus and their own settings alone, not on the stages before
# them: their output does not depend on the student, so a rerun with a new student reuses it.
INDEPENDENT = frozenset({"teacher_int4"})

# Which earlier artifact becomes the model a stage works on, most preferred first.
STUDENT_CHAIN = ("student", "pruned", "initial_student", "teacher")


@dataclass
class StageResult:
    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    config: PipelineConfig
    workdir: Path
    teacher: ModelInfo
    corpus: PackedCorpus
    tracker: StageRun
    artifacts: dict[str, Path] = field(default_factory=dict)
    progress: Progress = field(default_factory=lambda: Progress(None))

    def output_dir(self, name: str) -> Path:
        """``<workdir>/<name>``: where a stage writes its artifact."""
        return self.workdir / name

    def latest_model(self, chain: tuple[str, ...] = STUDENT_CHAIN) -> tuple[str, Path]:
        """The newest model artifact: student, else pruned, else initial student, else teacher."""
        for key in chain:
            if key in self.artifacts:
                return key, self.artifacts[key]
        return "teacher", self.teacher.path


def stage_function(name: str) -> Callable[[StageContext, Any], StageResult]:
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)


def run_preflights(cfg: PipelineConfig, model_dir: Path) -> None:
    """Call each configured stage's ``preflight(section, model_dir)``, where its module has one:
    the checks that need no pipeline work (config.json of the model to compress, input files),
    so an impossible setting fails before the corpus is built."""
    for name in cfg.stages:
        module = importlib.import_module(STAGES[name].split(":")[0])
        check = getattr(module, "preflight", None)
        if check is not None:
            check(getattr(cfg, name), model_dir)
