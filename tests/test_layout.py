"""The layout's rules, checked on the source: no import cycle inside the package (deferred
imports inside functions count too), `workloads/` and `reports/` never import the engine, the
engine imports nothing from `workloads/`, `reports/` or `cli/`, and no module imports another
module's private (`_name`) helper."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("cli", "workloads", "backends", "reports")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "infer_bench." + ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS:
        for p in (ROOT / folder).rglob("*.py"):
            out[_module_name(p)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module a dotted import names (a module, or a package's __init__)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _resolve(a.name)
                if target:
                    out.append((target, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if not name.startswith("infer_bench"):
                continue
            for a in node.names:           # `from pkg import module` imports the module
                sub = _resolve(f"{name}.{a.name}")
                if sub and sub == f"{name}.{a.name}":
                    out.append((sub, []))
                elif _resolve(name):
                    out.append((_resolve(name), [a.name]))
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_the_walk_sees_the_package():
    assert len(MODULES) > 60
    assert ("infer_bench.workloads.metrics", ["summarize"]) in GRAPH["infer_bench.workloads.runner"]


def test_no_import_cycles():
    edges = {m: {t for t, _ in imps if t != m and not m.startswith(t + ".")}
             for m, imps in GRAPH.items()}   # a module importing its own package's __init__ is fine
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer,forbidden", [
    ("infer_bench.workloads", ("infer_bench.backends.engine",)),
    ("infer_bench.reports", ("infer_bench.backends.engine", "infer_bench.workloads.planning")),
    ("infer_bench.backends.engine", ("infer_bench.workloads", "infer_bench.reports",
                                     "infer_bench.cli")),
])
def test_layering(layer, forbidden):
    bad = [(m, t) for m, imps in GRAPH.items() if m.startswith(layer)
           for t, _ in imps if t.startswith(forbidden)]
    assert not bad, bad


def test_no_private_helper_imported_across_modules():
    bad = [(m, t, n) for m, imps in GRAPH.items() for t, names in imps for n in names
           if n.startswith("_") and not n.startswith("__") and t != m]
    assert not bad, bad
