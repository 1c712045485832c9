"""Design-card promises: `platform` stays the stdlib's; the library never imports entry points."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "platform" / "distill"


def test_platform_is_the_standard_library():
    assert not (ROOT / "platform" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import distill, platform; print(platform.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert (
        "site-packages" not in out
        and "/platform/" not in out
        and out.strip().endswith("platform.py")
    )


def test_library_never_imports_entry_points():
    forbidden = {"pipelines", "deploy", "notebooks", "benchmarks", "tests"}
    for path in LIB.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path} imports {n}"


def test_import_is_light_and_side_effect_free():
    code = (
        "import os, sys; before = dict(os.environ); import distill, distill.cli, distill.stages;"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy; assert dict(os.environ) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
