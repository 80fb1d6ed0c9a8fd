"""The package's seams, read from its source: a dependency graph without cycles that flows
config -> data -> model -> checkpoint -> train -> tracking -> sweep / analysis -> cli, imports at
the top of each module (the CLI alone defers them, for start-up time), short functions, and the
read side kept off what runs a study."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charlstm"
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


MODULES = modules()


def top_level_deps(name: str) -> set[str]:
    """The charlstm modules ``name`` imports at its top level."""
    deps = set()
    for node in MODULES[name].body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charlstm"):
            deps.add(node.module)
            deps |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("charlstm")}
    return {d for d in deps if d in MODULES and d != name}


def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in top_level_deps(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_package_was_found():
    assert {"charlstm.train", "charlstm.checkpoint", "charlstm.sweep.objective", "charlstm.cli"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_cycle(name):
    assert name not in reachable(name)


def test_imports_sit_at_the_top_of_modules_but_the_cli():
    local = []
    for name, tree in MODULES.items():
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom) and not name.startswith("charlstm.cli"):
                    local.append(f"{name}.{fn.name} line {node.lineno}")
    assert local == []


BENCHMARKS = {f"benchmarks.{p.stem}": ast.parse(p.read_text(encoding="utf-8"))
              for p in sorted((PACKAGE.parent / "benchmarks").glob("*.py"))}


def test_no_function_is_longer_than_a_screen():
    """The package's functions and the benchmarks' alike."""
    long = [f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
            for name, tree in {**MODULES, **BENCHMARKS}.items()
            for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert len(BENCHMARKS) >= 5 and long == []


@pytest.mark.parametrize("reader", ["charlstm.analysis", "charlstm.report", "charlstm.doctor", "charlstm.status"])
def test_the_read_side_does_not_import_what_runs_a_study(reader):
    runs = {"charlstm.sweep.objective", "charlstm.sweep.workers", "charlstm.sweep.study"}
    assert not runs & (reachable(reader) | {reader})


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, anywhere in it (charlstm's and others')."""
    tree = MODULES[name]
    out = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return out | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def _in(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_flow_runs_one_way():
    """Lower layers never import higher ones: train knows nothing of MLflow or Optuna (nor do
    the device, the schedule, the model and the checkpoint beneath it), tracking nothing of
    Optuna or the sweep, and nothing but the CLI imports the CLI."""
    below_train = ("charlstm.train", "charlstm.device", "charlstm.schedule", "charlstm.checkpoint", "charlstm.model",
                   "charlstm.sample")
    for name in below_train:
        assert not {d for d in reachable(name) if _in(d, "charlstm.tracking", "charlstm.sweep", "charlstm.cli")}, name
        assert not {m for m in _imports(name) if _in(m, "optuna", "mlflow")}, name
    for name in (n for n in MODULES if _in(n, "charlstm.tracking")):
        assert not {d for d in reachable(name) if _in(d, "charlstm.sweep", "charlstm.cli")}, name
        assert not {m for m in _imports(name) if _in(m, "optuna")}, name
    for name in (n for n in MODULES if not _in(n, "charlstm.cli") and n != "charlstm.__main__"):
        assert not {m for m in _imports(name) if _in(m, "charlstm.cli")}, name


def test_names_sit_beneath_everything():
    """charlstm.names imports nothing of charlstm (and nothing heavy: the CLI reads it first)."""
    assert not {m for m in _imports("charlstm.names") if m.startswith("charlstm")}
    assert not {m for m in _imports("charlstm.names") if _in(m, "torch", "mlflow", "optuna", "pandas")}


def test_each_command_parser_stands_beside_its_handler():
    """In charlstm/cli/, ``add_X`` builds a command's parser and names its handler with
    ``set_defaults(func=...)``: the function that follows it."""
    pairs = []
    for name in (n for n in MODULES if _in(n, "charlstm.cli")):
        functions = [n for n in MODULES[name].body if isinstance(n, ast.FunctionDef)]
        for i, fn in enumerate(functions):
            if not fn.name.startswith("add_"):
                continue
            handlers = [k.value.id for c in ast.walk(fn) if isinstance(c, ast.Call)
                        and getattr(c.func, "attr", "") == "set_defaults" for k in c.keywords if k.arg == "func"]
            after = [f.name for f in functions[i + 1:] if not f.name.startswith("_")][:1]
            pairs.append((name, fn.name, handlers, after))
    assert len(pairs) >= 13 and all(h == a for _, _, h, a in pairs), pairs
