"""``charlstm gc``: the checkpoints a study no longer needs, listed and (with ``--yes``) deleted,
locally and among its runs' MLflow artifacts. Every trial keeps its MLflow Model (``model/``,
a third of a checkpoint), its curves and its record; what goes is ``best.pt`` / ``last.pt``.

Kept whatever ``--keep`` says: a registered version's run, a trial still running or queued,
a failed trial whose retry has not finished (the retry resumes from its ``last.pt``), and a run
with no MLflow Model (its checkpoint is the only way to load it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from charlstm import names, tracking
from charlstm.analysis.fits import pareto_front
from charlstm.errors import ConfigError, human_bytes
from charlstm.sweep.store import load_study, open_storage, retried_as, study_spec, tracking_uri_of


@dataclass
class Garbage:
    """One trial's checkpoints that may go: the local folder's files and its run's artifacts."""
    trial: int
    state: str
    value: float | None
    run_id: str | None
    files: list[Path]
    local_bytes: int
    mlflow_bytes: int
    paths: tuple[str, ...] = (names.ARTIFACT_CHECKPOINTS, tracking.TRAVELLED)  # the run's artifact folders that go


def parse_keep(keep: str) -> tuple[str, int]:
    """``top:K`` or ``pareto`` -> (rule, K)."""
    if keep == "pareto":
        return "pareto", 0
    rule, _, k = keep.partition(":")
    if rule != "top" or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"--keep {keep!r}: expected top:K (K >= 1) or pareto")
    return "top", int(k)


def kept_by_rule(trials, keep: str) -> set[int]:
    """The COMPLETE trials ``--keep`` names: the K best, or the Pareto front of size and value."""
    rule, k = parse_keep(keep)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if rule == "top":
        return {t.number for t in sorted(done, key=lambda t: t.value)[:k]}
    df = pd.DataFrame({"trial": [t.number for t in done], "value": [t.value for t in done],
                       names.ATTR_PARAMS_TOTAL: [t.user_attrs.get(names.ATTR_PARAMS_TOTAL) for t in done]})
    return set(df["trial"][pareto_front(df, names.ATTR_PARAMS_TOTAL, "value")]) if not df.empty else set()


def still_needed(trials, registered_runs: set[str]) -> set[int]:
    """Trials whose checkpoints something still needs, whatever the rule says."""
    again = retried_as(trials)
    by_number = {t.number: t for t in trials}
    unfinished = {TrialState.RUNNING, TrialState.WAITING}
    return {t.number for t in trials
            if t.state in unfinished or t.user_attrs.get(names.ATTR_RUN) in registered_runs
            or (t.number in again and by_number[again[t.number]].state in unfinished)}


def collect(study_name: str, keep: str, storage: str | None = None, tracking_uri: str | None = None):
    """(what may go, the trials kept, the tracking URI)."""
    study = load_study(study_name, open_storage(storage))
    uri = tracking.resolve_uri(tracking_uri_of(study, tracking_uri))
    trials = study.get_trials(deepcopy=False)
    registered = tracking.registered_runs(uri, names.registered_model(study_name))
    kept = kept_by_rule(trials, keep) | still_needed(trials, registered)
    folder = Path(study_spec(study).base_config.train.out_dir) / study_name
    out = []
    for t in sorted((t for t in trials if t.number not in kept), key=lambda t: t.number):
        files = sorted((folder / f"trial-{t.number:04d}").glob("*.pt"))
        run_id = t.user_attrs.get(names.ATTR_RUN)
        if run_id and not tracking.has_model(uri, run_id):  # its checkpoints are its only model
            kept.add(t.number)
            continue
        remote = sum(tracking.artifact_bytes(uri, run_id, a) for a in Garbage.paths) if run_id else 0
        if files or remote:
            out.append(Garbage(t.number, t.state.name, t.value, run_id, files,
                               sum(f.stat().st_size for f in files), remote))
    # a kept trial that has ended needs no copy for a retry elsewhere (its checkpoints/ hold its last)
    for t, run_id, size in travelled_left(uri, trials, [t for t in trials if t.number in kept]):
        out.append(Garbage(t.number, t.state.name, t.value, run_id, [], 0, size, (tracking.TRAVELLED,)))
    return out, sorted(kept), uri


def travelled_left(uri: str | None, trials, among=None) -> list[tuple]:
    """(trial, run id, bytes) of each copy of a checkpoint sent for a retry elsewhere that no
    retry will read: an ended trial's whose retry, if any, has run (``among``: only these
    trials; the rest of ``trials`` tell which retries have run). A run ends by deleting its
    own; what is left, a crash left."""
    needed = still_needed(trials, set())
    out = []
    for t in among if among is not None else trials:
        run_id = t.user_attrs.get(names.ATTR_RUN)
        if run_id and t.number not in needed and (size := tracking.artifact_bytes(uri, run_id, tracking.TRAVELLED)):
            out.append((t, run_id, size))
    return out


def delete(garbage: list[Garbage], uri: str) -> int:
    """Delete what ``collect`` listed; returns the bytes freed."""
    freed = 0
    for g in garbage:
        for f in g.files:
            f.unlink(missing_ok=True)
        if g.run_id and g.mlflow_bytes:
            for path in g.paths:
                tracking.delete_artifacts(uri, g.run_id, path)
            if names.ARTIFACT_CHECKPOINTS in g.paths:
                tracking.set_tags(uri, g.run_id, {names.TAG_GC: "checkpoints deleted by charlstm gc"})
        freed += g.local_bytes + g.mlflow_bytes
    return freed


def describe(garbage: list[Garbage], kept: list[int]) -> str:
    lines = [f"kept: trial {', '.join(map(str, kept))}" if kept else "kept: no trial"]
    for g in garbage:
        value = "-" if g.value is None else f"{g.value:.4f}"
        lines.append(f"  trial {g.trial:>4} {g.state:<9} {value:>8}  local {human_bytes(g.local_bytes):>9}"
                     f"  MLflow {human_bytes(g.mlflow_bytes):>9}"
                     + ("  (kept; only the copy a retry elsewhere would have resumed from)"
                        if g.paths == (tracking.TRAVELLED,) else ""))
    total = sum(g.local_bytes + g.mlflow_bytes for g in garbage)
    lines.append(f"{len(garbage)} trial(s), {human_bytes(total)} of checkpoints")
    return "\n".join(lines)
