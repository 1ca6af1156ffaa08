"""The package imports without cycles: every fvtool module alone, in a fresh interpreter.

Why: an import cycle works or fails depending on which module a process imports first (the embed
stage, a test, a spawned DDP rank), and hiding one behind imports inside functions only moves the
failure to run time. Two checks:
- static: the graph of `import` statements of all fvtool modules (those at module level, and all of
  them including imports inside functions) has no cycle; the message names the modules of the cycle;
- dynamic: one fresh interpreter imports each module alone (fvtool's modules are dropped from
  `sys.modules` between two imports; torch and numpy stay loaded, which keeps the test at seconds),
  in dependency order, and reports each module whose import fails.
The checks are first run on a small package with a deliberate cycle, so the test cannot pass by
checking nothing.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fvtool

ROOT = Path(fvtool.__file__).resolve().parent


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for p in sorted(package_dir.rglob("*.py")):
        parts = (package_dir.name, *p.relative_to(package_dir).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph(package_dir: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, all imports) between the package's own modules."""
    files = module_files(package_dir)
    top: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        top[name], every[name] = set(), set()

        def targets(node: ast.Import | ast.ImportFrom, name: str = name, is_pkg: bool = is_pkg) -> set[str]:
            if isinstance(node, ast.Import):
                found = {a.name for a in node.names}
            else:
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_pkg else name.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found = {base} | {f"{base}.{a.name}" for a in node.names}
            return {t for t in found if t in files and t != name}

        def visit(node: ast.AST, nested: bool, name: str = name) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue  # annotations only: never executed
                if isinstance(child, ast.Import | ast.ImportFrom):
                    t = targets(child)
                    every[name] |= t
                    if not nested:
                        top[name] |= t
                inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, inner)

        visit(ast.parse(path.read_text()), False)
    return top, every


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return [*path[path.index(w):], w]
            if w not in state and (found := dfs(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := dfs(v)):
            return found
    return None


def dependency_order(graph: dict[str, set[str]]) -> list[str]:
    """Modules with what they import first (the graph must be acyclic)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(v: str) -> None:
        seen.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in seen:
                visit(w)
        order.append(v)

    for v in sorted(graph):
        if v not in seen:
            visit(v)
    return order


_IMPORT_EACH = """
import importlib, json, sys, traceback
package, names = sys.argv[1], json.loads(sys.argv[2])
failed = {}
for name in names:
    for k in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[k]
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed[name] = traceback.format_exception_only(type(e), e)[-1].strip()
print(json.dumps(failed))
"""


def import_each_alone(package_dir: Path, names: list[str]) -> dict[str, str]:
    """Import each module alone in one fresh interpreter; {module: error} for those that fail."""
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, package_dir.name, json.dumps(names)],
                       capture_output=True, text=True, timeout=600, cwd=package_dir.parent,
                       env={**os.environ, "PYTHONPATH": str(package_dir.parent)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_checks_find_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclic.b import g\n\ndef f():\n    return g\n")
    (pkg / "b.py").write_text("from .a import f\n\ndef g():\n    return f\n")
    (pkg / "c.py").write_text(textwrap.dedent("""
        def late():
            from cyclic.d import x  # hidden in a function: only the full graph sees it
            return x
        """))
    (pkg / "d.py").write_text("from cyclic.c import late\nx = late\n")
    top, every = import_graph(pkg)
    assert find_cycle(top) == ["cyclic.a", "cyclic.b", "cyclic.a"]
    top.pop("cyclic.a")
    assert find_cycle(top) is None
    assert find_cycle(every) == ["cyclic.a", "cyclic.b", "cyclic.a"]
    every.pop("cyclic.a")
    assert find_cycle(every) == ["cyclic.c", "cyclic.d", "cyclic.c"]
    failed = import_each_alone(pkg, ["cyclic.a", "cyclic.b", "cyclic.c", "cyclic.d"])
    assert set(failed) == {"cyclic.a", "cyclic.b"} and "circular import" in failed["cyclic.a"]


def test_fvtool_has_no_import_cycle() -> None:
    top, every = import_graph(ROOT)
    assert len(top) > 50 and "fvtool.inference" in top["fvtool.embedding"]  # the graph is really read
    cycle = find_cycle(top)
    assert cycle is None, f"import cycle between fvtool modules: {' -> '.join(cycle or [])}"
    cycle = find_cycle(every)
    assert cycle is None, (f"import cycle through imports inside functions: {' -> '.join(cycle or [])}; move the "
                           "shared code into a lower module that both import")


def test_every_fvtool_module_imports_alone() -> None:
    top, _ = import_graph(ROOT)
    names = [n for n in dependency_order(top) if not n.endswith("__main__")]
    failed = import_each_alone(ROOT, names)
    assert not failed, "modules that fail to import alone:\n" + "\n".join(f"{k}: {v}" for k, v in failed.items())
