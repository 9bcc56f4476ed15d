"""The layout keeps data flowing one way: no import cycles, and light producer modules."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("tasks", "workers", "specq")


def _modules() -> dict[str, Path]:
    mods = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Module → the project's modules it imports (at any depth of its code, lazy imports included)."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name)
                # A module importing its own package's __init__ is not a cycle of the layout.
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_the_projects_modules():
    graph = _import_graph()
    assert "workers.registry" in graph and "specq.cli" in graph  # the walk sees the project
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Imports run one way: specq (CLI, API) → tasks (everything Celery) → workers (a Celery-free
# library). A package may import those below it, never those above; only tasks imports Celery.
LAYERS = ("specq", "tasks", "workers")
CELERY_PACKAGES = ("celery", "kombu", "billiard")


def _imports_of(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def _direction_violations() -> list[str]:
    wrong = []
    for mod, path in _modules().items():
        layer = LAYERS.index(mod.split(".")[0])
        for name in _imports_of(path):
            top = name.split(".")[0]
            if top in LAYERS and LAYERS.index(top) < layer:
                wrong.append(f"{mod} imports {name}")
            if top in CELERY_PACKAGES and mod.split(".")[0] != "tasks":
                wrong.append(f"{mod} imports {name}")
    return sorted(wrong)


def test_imports_run_one_way_and_only_tasks_speaks_celery():
    assert _direction_violations() == []


def test_the_direction_check_sees_a_wrong_import(tmp_path, monkeypatch):
    bad = tmp_path / "workers" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from tasks.app import app\nimport kombu\n")
    monkeypatch.setattr(sys.modules[__name__], "_modules", lambda: {"workers.bad": bad})
    assert _direction_violations() == ["workers.bad imports kombu", "workers.bad imports tasks.app"]


def test_producer_modules_load_no_model_framework():
    code = ("import sys, tasks, tasks.pipelines, tasks.producer, tasks.watch, specq.cli, specq.status, "
            "workers.registry, workers.store; specq.cli.build_parser(); "
            "print(','.join(m for m in ('torch', 'tensorflow', 'astroNN', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_enqueue_and_status_run_without_a_model_framework(tmp_path):
    """A producer's commands, run to the end (files read, messages sent on the embedded broker), load no framework."""
    from specq.testing.synthetic import make_dataset

    root = tmp_path / "data"
    files = sorted({str(p) for p in make_dataset(root, n_boss=2, n_apogee=0, seed=3, formats=("spec-lite",))["path"]})
    code = ("import sys, specq.cli\n"
            f"assert specq.cli.main(['enqueue', '--pipeline', 'bossnet', *{files!r}]) in (0, None)\n"
            "assert specq.cli.main(['status']) in (0, None)\n"
            "print('frameworks:', ','.join(m for m in ('torch', 'tensorflow', 'astroNN', 'numba') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_DATA_ROOT=str(root), SPECQ_STATE_DIR=str(tmp_path / "state"),
               SPECQ_DATABASE_URL=f"sqlite:///{tmp_path / 'r.sqlite'}", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(line.endswith(": 2 spectra in 1 message") for line in out.stdout.splitlines()), out.stdout
    assert out.stdout.strip().splitlines()[-1] == "frameworks:", out.stdout


def test_the_producer_install_leaves_the_model_frameworks_to_the_worker_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    heavy = ("torch", "astronn", "tensorflow", "numba")

    def names(requirements):
        return {r.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
                for r in requirements}

    assert not names(project["dependencies"]) & set(heavy)
    assert {"torch", "astronn", "numba"} <= names(project["optional-dependencies"]["worker"])
