"""One vocabulary: every name in ``charlstm.names`` (metrics and units, attribute and tag keys,
artifact and default paths) is written there alone, and states are Optuna's and MLflow's own
enums. Read from the source, as ``test_layout`` reads the imports: a literal of a registered
name anywhere else in the package or the shipped notebooks fails, with its file and line."""

from __future__ import annotations

import ast
from pathlib import Path

from mlflow.entities import RunStatus
from optuna.trial import TrialState

from charlstm import names

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [*sorted((ROOT / "charlstm").rglob("*.py")), *sorted((ROOT / "analysis").glob("*.py"))]
# names whose words are too common to be told apart from other uses by reading alone
NOT_SCANNED = {
    names.GEN_PRIME: "a newline is every text's newline",
    names.DEFAULT_EXPERIMENT: "'charlstm' is also the package's and the programs' name",
}
# a registered word that means something else where it stands: (file, word) -> what it is there
OTHER_MEANING: dict[tuple[str, str], str] = {
    ("charlstm/sweep/store.py", "seed"): "an Optuna sampler's seed argument",
    ("charlstm/sweep/spec.py", "seed"): "an Optuna sampler's seed argument",
    ("charlstm/sweep/confirm.py", "seed"): "an Optuna sampler's seed argument",
    ("charlstm/sweep/workers.py", "worker"): "the charlstm worker command a sweep spawns",
    ("charlstm/checkpoint.py", "model"): "a checkpoint's key: the model's state dict",
    ("charlstm/train.py", "model"): "a checkpoint's key: the model's state dict",
    ("charlstm/train.py", "state"): "a memory estimate's part: weights, gradients and optimizer state",
    ("charlstm/model.py", "state"): "a memory estimate's part: weights, gradients and optimizer state",
    ("charlstm/train.py", "lr"): "a torch optimizer param group's key",
    ("charlstm/config.py", "model"): "the config's model section",
    ("charlstm/tracking/tracker.py", "model"): "the kind of an artifact waiting to be sent (text, file, model)",
    ("charlstm/report.py", "best"): "a column heading of the report's comparison table",
    ("charlstm/serving.py", "seed"): "a served request's column: the sampling seed",
    ("charlstm/cli/sweep.py", "seed"): "an Optuna sampler's seed argument (--sampler-seed)",
    ("charlstm/cli/sweep.py", "sweep"): "the charlstm sweep command (and its study file argument)",
    ("charlstm/cli/sweep.py", "worker"): "the charlstm worker command",
    ("charlstm/cli/sweep.py", "confirm"): "the charlstm confirm command",
    ("charlstm/cli/results.py", "report"): "the charlstm report command",
    ("charlstm/cli/results.py", "tracking_uri"): "the analysis notebooks' parameter (papermill)",
    ("charlstm/report.py", "final"): "the study definition's final budget (SweepSpec.final) in its stored settings",
    ("charlstm/scaling.py", "final"): "the study definition's final budget (SweepSpec.final) in its stored settings",
    ("charlstm/status.py", "lr"): "the live view's short label for the train.lr param",
    ("charlstm/status.py", "worker"): "the live view's column heading (the worker's name)",
}


def registered() -> dict[str, str]:
    """Every name ``charlstm.names`` defines (its value -> its constant), and every state."""
    out = {}
    for const, value in vars(names).items():
        values = value.values() if isinstance(value, dict) else [value]
        out.update({v: const for v in values if const.isupper() and isinstance(v, str) and v not in NOT_SCANNED})
    out.update({s.name: "TrialState" for s in TrialState})
    out.update({RunStatus.to_string(s): "RunStatus" for s in RunStatus.all_status()})
    return out


def literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in ``path`` but its docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_module_spells_a_registered_name():
    known = registered()
    found = []
    for path in SCANNED:
        if path == ROOT / "charlstm" / "names.py":
            continue
        rel = str(path.relative_to(ROOT))
        found += [f"{rel}:{line}: {text!r} is names.{known[text]}" for line, text in literals(path)
                  if text in known and (rel, text) not in OTHER_MEANING]
    assert found == [], "\n".join(found)


def test_the_scan_sees_a_planted_literal(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('"""A docstring: val_bpc."""\nx = {"val_bpc": 1, "state": "COMPLETE"}\n')
    known = registered()
    assert [(line, text) for line, text in literals(planted) if text in known] == \
        [(2, "val_bpc"), (2, "state"), (2, "COMPLETE")]
