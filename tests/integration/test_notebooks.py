"""Execute every notebooks/*.ipynb top to bottom (nbclient, this venv's python3 kernel).

Each notebook runs in its own temporary working directory; ``$DISTILL_REPO`` tells it where the
repository is and ``$DISTILL_NOTEBOOK_WORKDIR`` where to write its outputs. The quickstart (01)
gets a copy of the session's smoke run (``smoke_copy`` in tests/conftest.py) as its workdir, so
its ``run_pipeline`` cell finds every stage cached and the notebook reads that run's outputs
instead of training again. A notebook that raises fails the test with the failing cell's
traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert any(p.name.startswith("01-") for p in NOTEBOOKS)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch, request):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # jupyter_client runs the "python3" kernel with sys.executable (argv[0] "python" is
    # replaced), i.e. this venv; put the venv first on PATH for anything the notebook spawns.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISTILL_REPO", str(REPO))
    monkeypatch.setenv("DISTILL_NOTEBOOK_WORKDIR", str(tmp_path / "workdir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if path.name.startswith("01-"):
        monkeypatch.setenv("DISTILL_NOTEBOOK_WORKDIR", str(request.getfixturevalue("smoke_copy")))

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}")
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: error outputs {errors}"
    if path.name.startswith("01-"):
        images = [
            o
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        assert images, "the quickstart should render its quality-vs-size plot"
        text = "".join(
            o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
        )
        assert "MLflow run:" in text
        for stage in ("soft_labels", "prune", "distill", "quantize", "teacher_int4", "evaluate"):
            assert f"stage {stage}: cached from run" in text, stage  # read, not retrained
