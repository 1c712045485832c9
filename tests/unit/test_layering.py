"""Layers you can see from the imports (style.md): library packages form an acyclic graph, no
library module imports a stage module (``*/stage.py``, ``*_stage.py``, ``runner``, ``cli``,
``jobs``), and distill modules are imported at the top of a file, not inside functions, save a
few that are heavy or optional. Function-local imports count."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "platform" / "distill"
ENTRY = {"runner.py", "cli.py", "jobs.py"}
MAX_LOCAL_DISTILL_IMPORTS = 20


def is_stage(path: Path) -> bool:
    return path.name in ENTRY or path.name == "stage.py" or path.name.endswith("_stage.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """``distill.eval.stage`` -> ``eval``; a top-level module is its own unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "distill"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            out |= {id(x) for x in ast.walk(n)}
    return out


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported distill module, inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    local = {
        id(x)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for x in ast.walk(f)
    }
    known = {module_name(p) for p in LIB.rglob("*.py")}
    out = []
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            # `from distill.eval import stage` imports the module distill.eval.stage
            subs = [f"{n.module}.{a.name}" for a in n.names if f"{n.module}.{a.name}" in known]
            names = subs or [n.module]
        else:
            continue
        out += [(m, id(n) in local) for m in names if m.split(".")[0] == "distill"]
    return out


def graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    into_stage, local = [], []
    stages = {module_name(p) for p in LIB.rglob("*.py") if is_stage(p)}
    for path in sorted(LIB.rglob("*.py")):
        if is_stage(path):
            continue
        me = module_name(path)
        for target, inside in imports(path):
            if target in stages:
                into_stage.append(f"{me} -> {target}")
            if inside:
                local.append(f"{me} -> {target}")
            if unit(target) != unit(me):
                edges[unit(me)].add(unit(target))
    return edges, into_stage, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_library_packages_form_no_cycle():
    edges, _, _ = graph()
    found = cycles(edges)
    detail = {c: sorted(edges[c] & set(comp)) for comp in found for c in comp}
    assert not found, f"import cycles between distill packages: {found}; edges: {detail}"


def test_no_library_module_imports_a_stage():
    _, into_stage, _ = graph()
    assert not into_stage, into_stage


def test_distill_modules_are_imported_at_the_top():
    _, _, local = graph()
    assert len(local) <= MAX_LOCAL_DISTILL_IMPORTS, (len(local), local)
