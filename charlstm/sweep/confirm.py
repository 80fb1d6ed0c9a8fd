"""Is the winner real? A study picks its best trial from one seed each. ``confirm`` re-trains
the top-K complete trials and the seed baseline with N fresh ``train.seed`` values each (same
config, same per-trial budget) as the trials of a companion study ``<study>.confirm`` that the
sweep's own workers run (so a confirmation resumes, and survives what a sweep survives); each
re-run is a child of the study's MLflow parent run, tagged with the trial it confirms and its
seed. Then per config: mean, standard deviation and a 95% t interval over seeds, and verdicts
from Welch's t-test (unequal variances), in plain words.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pandas as pd
from optuna.trial import TrialState
from scipy import stats

from charlstm import names, tracking
from charlstm.errors import ConfigError
from charlstm.sweep.kinds import Kind, confirm_attrs, kind_of
from charlstm.sweep.runs import log_confirmation
from charlstm.sweep.spec import Dist, SweepSpec
from charlstm.sweep.store import (
    load_study,
    open_storage,
    started_trials,
    study_lock,
    study_spec,
    tracking_uri_of,
)
from charlstm.sweep.study import register, setup_study
from charlstm.sweep.workers import work

SUFFIX = ".confirm"  # the companion study's name: <study>.confirm
SEED_KEY = "train.seed"
FIRST_SEED = 1000  # fresh seeds 1000, 1001, ...: never the studies' own train.seed
ALPHA = 0.05  # the verdicts' significance level, and 95% intervals


def confirm_spec(spec: SweepSpec, n_jobs: int) -> SweepSpec:
    """The companion study: the same base, overrides and budget, the seed as one more
    parameter, every trial enqueued (nothing sampled, nothing pruned)."""
    return replace(spec, study=spec.study + SUFFIX, space={**spec.space, SEED_KEY: Dist("int", 0, 2**31 - 1)},
                   sampler={"name": "random", "seed": 0}, pruner={"name": "none"}, n_trials=max(n_jobs, 1),
                   timeout=None, enqueue_baseline=False, confirms=spec.study, final={})


def plan(study, top: int, seeds: int) -> list[dict[str, Any]]:
    """One job per (config, seed): the ``top`` best COMPLETE trials and the seed baseline."""
    if top < 1 or seeds < 2:
        raise ConfigError(f"--top {top} --seeds {seeds}: confirm needs --top 1 or more and --seeds 2 or more")
    # (a final trial is left out: its budget is not the trials', and its config is one of theirs)
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE and kind_of(t.user_attrs) is Kind.SEARCH),
                  key=lambda t: t.value)
    if not done:
        raise ConfigError(f"study {study.study_name} has no complete trial to confirm")
    chosen = done[:top] + [t for t in done[top:] if t.user_attrs.get(names.ATTR_BASELINE)][:1]
    return [{"params": {**t.params, SEED_KEY: FIRST_SEED + i},
             "user_attrs": confirm_attrs(t.number, FIRST_SEED + i, bool(t.user_attrs.get(names.ATTR_BASELINE)))}
            for t in chosen for i in range(seeds)]


def enqueue_missing(confirm_study, jobs: list[dict[str, Any]]) -> int:
    """Enqueue the jobs the companion study has not got yet (a resumed confirmation runs only
    what is left; a job whose trials all failed is queued again). Returns how many were added."""
    have = _have(confirm_study.trials)
    new = [j for j in jobs if _key(j) not in have]
    for job in new:
        confirm_study.enqueue_trial(job["params"], user_attrs=job["user_attrs"])
    return len(new)


def results(study, confirm_study, jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """Per confirmed config: its original value, the seeds' values, mean, std, 95% interval."""
    wanted = {(j["user_attrs"][names.ATTR_CONFIRMS], j["user_attrs"][names.ATTR_SEED]) for j in jobs}
    values: dict[int, dict[int, float]] = {}
    for t in confirm_study.trials:
        key = (t.user_attrs.get(names.ATTR_CONFIRMS), t.user_attrs.get(names.ATTR_SEED))
        if t.state == TrialState.COMPLETE and key in wanted:
            values.setdefault(key[0], {})[key[1]] = t.value
    original = {t.number: t for t in study.trials}
    rows = []
    for number, by_seed in values.items():
        v = pd.Series([by_seed[s] for s in sorted(by_seed)], dtype=float)
        n, mean, sd = len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
        rows.append({"trial": number, names.ATTR_BASELINE: bool(original[number].user_attrs.get(names.ATTR_BASELINE)),
                     "original": original[number].value, "n": n, "mean": mean, "std": sd, "ci95": half,
                     "low": mean - half, "high": mean + half, "seeds": " ".join(map(str, sorted(by_seed))),
                     "values": " ".join(f"{x:.6f}" for x in v), "run_id": original[number].user_attrs.get(names.ATTR_RUN)})
    columns = ["trial", names.ATTR_BASELINE, "original", "n", "mean", "std", "ci95", "low", "high", "seeds", "values", "run_id"]
    return pd.DataFrame(rows, columns=columns).sort_values("mean").reset_index(drop=True)


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean(b) - mean(a), the 95% half-width of that difference, Welch's two-sided p)."""
    diff = sum(b) / len(b) - sum(a) / len(a)
    va, vb = pd.Series(a).var(ddof=1) / len(a), pd.Series(b).var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, 0.0, 0.0 if diff else 1.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return diff, float(stats.t.ppf(1 - ALPHA / 2, df) * se), p


def verdicts(table: pd.DataFrame, metric: str = names.VAL_BPC) -> list[str]:
    """The winner (best mean) against the seed baseline and against the runner-up, in words."""
    if len(table) < 2:
        return []
    unit = names.unit(metric)
    vals = {r.trial: [float(x) for x in r.values.split()] for r in table.itertuples()}
    win = table.iloc[0]
    base = table[table[names.ATTR_BASELINE] & (table["trial"] != win.trial)]
    runner_up = table.iloc[1:2]
    others = [("the seed baseline", base),
              ("runner-up", runner_up if base.empty or runner_up.iloc[0].trial != base.iloc[0].trial else base.iloc[:0])]
    out = []
    for what, rows in others:
        if rows.empty or win.n < 2 or rows.iloc[0].n < 2:  # no variance to test with
            continue
        other = rows.iloc[0]
        diff, half, p = welch(vals[win.trial], vals[other.trial])
        name = f"trial {other.trial}" + (f" ({what})" if what == "the seed baseline" else "")
        if p < ALPHA:
            out.append(f"trial {win.trial} beats {name} by {diff:.4f} ± {half:.4f} {unit} "
                       f"(Welch's t, p={p:.3g}, N={win.n} and {other.n} seeds)")
        else:
            out.append(f"trial {win.trial} vs {name}: no significant difference at N={min(win.n, other.n)} "
                       f"({diff:+.4f} ± {half:.4f} {unit}, Welch's t, p={p:.2g})")
    return out


def run_confirm(study_name: str, storage_url: str | None = None, tracking_uri: str | None = None,
                top: int = 2, seeds: int = 3, workers: int = 1, quiet: bool = False,
                verbose: bool = False) -> dict[str, Any]:
    """Plan, run (or resume) and summarise a confirmation; returns the summary it stored."""
    study = load_study(study_name, open_storage(storage_url))
    spec = study_spec(study)
    if spec.confirms:
        raise ConfigError(f"study {study_name} is itself the confirmation of {spec.confirms}")
    jobs = plan(study, top, seeds)
    cspec = confirm_spec(spec, len(jobs))
    uri = tracking.resolve_uri(tracking_uri_of(study, tracking_uri))
    try:
        have = load_study(cspec.study, open_storage(storage_url))
    except ConfigError:
        have = None
    n_new = len(jobs) if have is None else sum(1 for j in jobs if _key(j) not in _have(have.trials))
    if n_new or have is None or _unfinished(have):
        companion, uri = setup_study(cspec, storage_url, uri, n_new or None, None)
        with study_lock(storage_url, cspec.study):  # the target is exactly what is queued:
            enqueue_missing(companion, jobs)  # a worker never samples a trial of its own
            trials = companion.get_trials(deepcopy=False)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            companion.set_user_attr(names.STUDY_TARGET, started_trials(trials) + waiting)
        work(cspec, companion, storage_url, uri, workers, quiet, verbose)
    companion = load_study(cspec.study, open_storage(storage_url))
    return summarise(study, spec, companion, jobs, uri)


def _have(trials) -> set[tuple]:
    """The (config, seed) jobs a companion study holds, but for those whose trials all failed."""
    return {_key(t) for t in trials if t.state != TrialState.FAIL}


def _key(job_or_trial) -> tuple:
    attrs = job_or_trial["user_attrs"] if isinstance(job_or_trial, dict) else job_or_trial.user_attrs
    return attrs.get(names.ATTR_CONFIRMS), attrs.get(names.ATTR_SEED)


def _unfinished(companion) -> bool:
    """Trials queued or running, or a target not yet reached (an interrupted confirmation)."""
    trials = companion.get_trials(deepcopy=False)
    target = companion.user_attrs.get(names.STUDY_TARGET) or 0
    return started_trials(trials) < target or any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)


def summarise(study, spec: SweepSpec, companion, jobs: list[dict[str, Any]], uri: str) -> dict[str, Any]:
    """The table and verdicts, to the study (user attr), its parent run (confirm.csv, metrics)
    and, when the confirmed winner is not the single-seed best, the ``best`` alias."""
    table = results(study, companion, jobs)
    summary = {"metric": spec.metric, "seeds": sorted({j["user_attrs"][names.ATTR_SEED] for j in jobs}),
               "test": "Welch's t-test, two-sided, unequal variances; 95% intervals", "companion": companion.study_name,
               "table": table.drop(columns=["run_id"]).to_dict("records") if not table.empty else [],
               "verdicts": verdicts(table, spec.metric),
               "complete": bool(len(table) and int(table["n"].sum()) == len(jobs))}
    if summary["complete"]:
        summary["alias"] = _move_best(study, spec, table, uri)
    study.set_user_attr(names.STUDY_CONFIRM, summary)
    metrics = {f"confirm.trial_{r.trial}.{k}": getattr(r, k) for r in table.itertuples() for k in ("mean", "std", "ci95")}
    log_confirmation(uri, study.user_attrs[names.STUDY_PARENT], table.to_csv(index=False), metrics)
    return summary


def _move_best(study, spec: SweepSpec, table: pd.DataFrame, uri: str) -> str:
    """Point ``best`` at the confirmed winner when it is not the single-seed best. A study with
    a complete final trial keeps ``best`` there: no search trial's model had its budget."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    winner = table.iloc[0]
    final = min((t for t in done if kind_of(t.user_attrs).final_budget), key=lambda t: t.value, default=None)
    if final is not None:
        register(uri, spec, final)
        return (f"{names.best_model_uri(spec.study)} stays on the final trial {final.number} (trial "
                f"{final.user_attrs.get(names.ATTR_FINAL_OF)}'s config trained for the final budget); the confirmed "
                f"winner of the search is trial {winner.trial}.")
    single = min(done, key=lambda t: t.value)
    if int(winner.trial) == single.number:  # (re-registering reuses its version: @best is back on it)
        register(uri, spec, single)
        return f"The single-seed best, trial {single.number}, is the confirmed winner: {names.best_model_uri(spec.study)} stays."
    why = (f"confirmed over {winner.n} seeds: mean {winner['mean']:.4f} against trial {single.number}'s "
           f"{table.set_index('trial').loc[single.number, 'mean']:.4f}" if single.number in set(table["trial"])
           else f"confirmed over {winner.n} seeds: mean {winner['mean']:.4f}")
    version = register(uri, spec, study.trials[int(winner.trial)], why=why)
    return f"{names.best_model_uri(spec.study)} moved to trial {winner.trial} (version {version}): {why}"


def format_summary(summary: dict) -> str:
    """A confirmation's summary as a researcher reads it: per config, then the verdicts."""
    unit = names.unit(summary["metric"])
    lines = [f"confirmed over seeds {', '.join(map(str, summary['seeds']))} - {summary['test']}:"]
    for r in summary["table"]:
        who = f"trial {r['trial']}" + (" (seed baseline)" if r[names.ATTR_BASELINE] else "")
        lines.append(f"  {who:<26} single seed {r['original']:.4f}  mean {r['mean']:.4f} ± {r['ci95']:.4f} "
                     f"{unit} (sd {r['std']:.4f}, N={r['n']})")
    lines += [f"  {v}" for v in summary["verdicts"]]
    if summary.get("alias"):
        lines.append(summary["alias"])
    return "\n".join(lines)
