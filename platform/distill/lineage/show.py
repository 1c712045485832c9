"""``distill lineage RUN_ID``: the stage tree of a pipeline run with inputs and outputs."""

from __future__ import annotations

from typing import Any

from distill.config.base import DistillError


def lineage(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """The pipeline run and its stage runs, with input/output tags and registered versions."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        parent = client.get_run(run_id)
    except Exception as e:
        raise DistillError(f"run {run_id} not found in {tracking_uri}: {e}") from None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        order_by=["attributes.start_time ASC"],
    )

    def io(tags: dict[str, str], kind: str) -> dict[str, str]:
        return {
            k.split(".")[1]: v
            for k, v in tags.items()
            if k.startswith(f"{kind}.") and k.endswith(".uri")
        }

    stages = []
    for r in children:
        tags = r.data.tags
        stages.append(
            {
                "stage": tags.get("distill.stage", r.info.run_name),
                "run_id": r.info.run_id,
                "status": r.info.status,
                "inputs": io(tags, "input"),
                "outputs": io(tags, "output"),
                "registered": {k[11:]: v for k, v in tags.items() if k.startswith("registered.")},
                "cached_from": tags.get("distill.cached_from_run"),
            }
        )
    datasets = [d.dataset.name for d in (parent.inputs.dataset_inputs if parent.inputs else [])]
    return {
        "run_id": run_id,
        "name": parent.info.run_name,
        "status": parent.info.status,
        "teacher": parent.data.tags.get("teacher.name"),
        "datasets": datasets,
        "stages": stages,
    }


def format_lineage(info: dict[str, Any]) -> str:
    lines = [
        f"pipeline {info['name']} ({info['run_id']}) {info['status']}",
        f"  teacher: {info['teacher']}   datasets: {', '.join(info['datasets'])}",
    ]
    for s in info["stages"]:
        cached = f" (cached from {s['cached_from'][:8]})" if s["cached_from"] else ""
        lines.append(f"  └─ {s['stage']} [{s['run_id'][:8]}] {s['status']}{cached}")
        for k, v in s["inputs"].items():
            lines.append(f"       in  {k}: {v}")
        for k, v in s["outputs"].items():
            lines.append(f"       out {k}: {v}")
        for k, v in s["registered"].items():
            lines.append(f"       registered {k} v{v}")
    return "\n".join(lines)
