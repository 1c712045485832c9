"""Registered model versions for checkpoints (MLflow 3 registers logged models only).

A checkpoint directory is logged as a pyfunc model (artifacts = the HF directory, the ``distill``
package as code, requirements pinned to the versions installed here) under the stage run that
produced it, then registered; version tags point back to that run and to the parent version it
was made from (student → int4). The release gate (``distill.eval.release``) moves the alias
``champion``; ``distill.lineage.resolve`` turns ``models:/NAME@champion`` into a local path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import distill
from distill.artifacts import load_for_eval
from distill.lineage.tracker import StageRun
from distill.models.loader import load_tokenizer


def _python_model():
    import mlflow.pyfunc

    class HFCheckpoint(mlflow.pyfunc.PythonModel):
        """Greedy text completion with the logged checkpoint (fp, GPTQ or a CPU engine export)."""

        def load_context(self, context):
            self.model = load_for_eval(Path(context.artifacts["checkpoint"]))
            self.tok = load_tokenizer(Path(context.artifacts["checkpoint"]))

        def predict(self, context, model_input, params=None):
            prompts = list(model_input["prompt"]) if hasattr(model_input, "__getitem__") else []
            out = []
            for p in prompts:
                ids = self.tok(p, return_tensors="pt").input_ids
                gen = self.model.generate(ids, max_new_tokens=32, do_sample=False)
                out.append(self.tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
            return out

    return HFCheckpoint()


# What loading a logged checkpoint imports (distill.artifacts.load_for_eval + the tokenizer).
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pydantic")
GPTQ_PACKAGES = ("gptqmodel", "optimum")
ENGINE_PACKAGES = ("onnxruntime-genai", "onnxruntime")


def pinned_requirements(checkpoint: Path) -> list[str]:
    """``name==version`` of what is installed here for the packages loading ``checkpoint``
    needs (GPT-QModel too for a GPTQ checkpoint). distill itself travels as logged code."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    names = list(RUNTIME_PACKAGES)
    if (Path(checkpoint) / "genai_config.json").exists():  # a CPU int4 engine export
        names += ENGINE_PACKAGES
    elif "quantization_config" in json.loads((Path(checkpoint) / "config.json").read_text()):
        names += GPTQ_PACKAGES
    out = []
    for n in names:
        try:
            out.append(f"{n}=={version(n)}")
        except PackageNotFoundError:
            continue
    return out


def distill_code_path() -> str:
    """The ``distill`` package directory, logged with the model (``code_paths``)."""

    return str(Path(distill.__file__).parent)


@contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``, which child processes
    (Ray jobs, later pipelines in the same process) would inherit: restore both afterwards."""
    import mlflow

    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri() if before_env else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(before)
            os.environ["MLFLOW_TRACKING_URI"] = before_env


def register_checkpoint(
    run: StageRun, checkpoint: Path, name: str, tags: dict[str, Any] | None = None
) -> str:
    """Log ``checkpoint`` as a model of ``run``, register it as ``name``; return the version."""
    import mlflow

    with scoped_tracking_uri(run.tracking_uri), mlflow.start_run(run_id=run.run_id):
        info = mlflow.pyfunc.log_model(
            name="checkpoint",
            python_model=_python_model(),
            artifacts={"checkpoint": str(checkpoint)},
            pip_requirements=pinned_requirements(checkpoint),
            code_paths=[distill_code_path()],
        )
        mv = mlflow.register_model(
            info.model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()}
        )
    client = run.client
    client.set_model_version_tag(name, mv.version, "source_run_id", run.run_id)
    run.set_tags({f"registered.{name}": mv.version})
    return str(mv.version)
