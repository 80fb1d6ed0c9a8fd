"""MLflow runs and Optuna studies as pandas frames: one row per run (``load_runs``), one per
evaluation (``load_curves``), the study's leaderboard joined with its runs (``trial_table``),
compute per state, and text from the best models side by side. Nothing here writes.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.entities import RunStatus
from optuna.trial import TrialState

from charlstm import names
from charlstm.errors import CharlstmError, ConfigError, redact
from charlstm.model import flops_per_char
from charlstm.names import LN2
from charlstm.sample import generate
from charlstm.sweep.spec import SEED_BASELINE
from charlstm.sweep.store import STATE_ORDER as TRIAL_STATES
from charlstm.sweep.store import leaderboard, open_storage, tracking_uri_of
from charlstm.sweep.store import load_study as load_study_from
from charlstm.tracking import client_for, load_model, resolve_uri

# A trial's state (the frames' state column holds its name), from Optuna's side; single runs
# (no study) get theirs from the run status, an interrupted one MLflow's KILLED (no trial state says it).
KILLED = RunStatus.to_string(RunStatus.KILLED)
STATUS_TO_STATE = {RunStatus.to_string(status): state for status, state in (
    (RunStatus.FINISHED, TrialState.COMPLETE.name), (RunStatus.KILLED, KILLED),
    (RunStatus.FAILED, TrialState.FAIL.name), (RunStatus.RUNNING, TrialState.RUNNING.name),
    (RunStatus.SCHEDULED, TrialState.RUNNING.name))}
STATE_ORDER = [*TRIAL_STATES, KILLED]  # KILLED: an interrupted single run


def load_study(study: str, storage: str | None = None):
    """An existing Optuna study by name (``storage`` as for ``charlstm sweep``)."""
    return load_study_from(study, open_storage(storage))


def study_tracking_uri(study, tracking_uri: str | None = None) -> str:
    """The MLflow URI a study's trials were logged to: given > stored by the study > default."""
    return resolve_uri(tracking_uri_of(study, tracking_uri))


def _numeric(series: pd.Series) -> pd.Series:
    converted = pd.to_numeric(series, errors="coerce")
    # keep text columns (optimizer names, paths) as they are
    return converted if converted.notna().sum() >= series.notna().sum() else series


def load_runs(experiment: str = names.DEFAULT_EXPERIMENT, study: str | None = None, tracking_uri: str | None = None,
              include_parents: bool = False) -> pd.DataFrame:
    """One row per run of ``experiment`` (only the trials of ``study`` if given).

    Columns: ``run_id``, ``run_name``, ``trial``, ``state`` (COMPLETE / PRUNED / FAIL / RUNNING,
    KILLED for an interrupted single run), ``status`` (MLflow's), every config field by its dotted
    name (numeric where it is a number), ``params_total``, ``val_bpc`` (the last evaluation),
    ``best_val_bpc``, ``chars_seen``, ``chars_per_sec``, ``train_seconds``, ``wall_seconds``,
    ``vocab_size``, ``train_flops`` (training compute so far) and ``baseline``.
    """
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} at {redact(client.tracking_uri)}")
    raw = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`{names.TAG_STUDY}` = '{study}'" if study is not None else "",
        output_format="pandas",
        max_results=50_000,
    )
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "trial", names.STATE, names.VAL_BPC, names.ATTR_PARAMS_TOTAL,
                                     names.ATTR_BASELINE])
    role = f"tags.{names.TAG_ROLE}"
    if not include_parents and role in raw:  # (a != filter in MLflow would
        raw = raw[raw[role].fillna("") != names.ROLE_PARENT]  # drop untagged runs too)
    return _runs_frame(raw)


def _runs_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """``load_runs``' frame from ``mlflow.search_runs``' (its tags, metrics and params columns)."""
    now = pd.Timestamp.now(tz="UTC")

    def col(name: str, default=None) -> pd.Series:
        return raw[name] if name in raw else pd.Series(default, index=raw.index)

    def tag(name: str) -> pd.Series:
        return col(f"tags.{name}")

    def metric(name: str) -> pd.Series:
        return col(f"metrics.{name}")

    df = pd.DataFrame({"run_id": raw["run_id"], "run_name": col("tags.mlflow.runName"), "status": raw["status"]})
    df["trial"] = pd.to_numeric(tag(names.TAG_TRIAL), errors="coerce").astype("Int64")
    state = tag(names.TAG_STATE).where(tag(names.TAG_STATE).notna(), raw["status"].map(STATUS_TO_STATE))
    # a run still RUNNING in MLflow is running, whatever its last tag said
    running = raw["status"] == RunStatus.to_string(RunStatus.RUNNING)
    df[names.STATE] = state.where(~running, TrialState.RUNNING.name)
    for name in raw.columns:
        if name.startswith("params.") and not name.startswith("params.params."):
            df[name.removeprefix("params.")] = _numeric(raw[name])
    df[names.ATTR_PARAMS_TOTAL] = pd.to_numeric(col("params.params.total"), errors="coerce")
    df[names.VAL_BPC] = metric(names.VAL_BPC)
    df["best_val_bpc"] = metric(names.BEST_VAL_LOSS) / LN2
    df[names.CHARS_SEEN] = metric(names.CHARS_SEEN)
    df[names.CHARS_PER_SEC] = metric(names.FINAL_CHARS_PER_SEC).fillna(metric(names.CHARS_PER_SEC))
    df[names.TRAIN_SECONDS] = metric(names.TRAIN_SECONDS)
    end = col("end_time").where(~running, now)
    df["start_time"] = raw["start_time"]
    df["wall_seconds"] = (pd.to_datetime(end, utc=True) - pd.to_datetime(raw["start_time"], utc=True)).dt.total_seconds()
    df["vocab_size"] = pd.to_numeric(tag("data.vocab_size"), errors="coerce")
    df[names.ATTR_TRAIN_FLOPS] = [
        flops_per_char(int(v), int(e), int(h), int(n)) * c
        if all(pd.notna(x) for x in (v, e, h, n, c)) else float("nan")
        for v, e, h, n, c in zip(df["vocab_size"], col("params.model.embedding_dim"),
                                 col("params.model.hidden_size"), col("params.model.num_layers"),
                                 df[names.CHARS_SEEN], strict=True)
    ]
    df[names.ATTR_BASELINE] = tag(names.TAG_BASELINE).eq("true") | _is_seed(df)
    df = df.sort_values(["trial", "start_time"], na_position="last").reset_index(drop=True)
    return df


def _is_seed(df: pd.DataFrame) -> pd.Series:
    """Runs with the seed notebook's setting (E48 H96 T48 B36, one layer)."""
    out = pd.Series(True, index=df.index)
    for key, value in SEED_BASELINE.items():
        out &= pd.to_numeric(df[key], errors="coerce").eq(value) if key in df else False
    return out


def load_curves(runs: pd.DataFrame, metric: str = names.VAL_BPC, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every evaluation of ``runs``: ``run_id``, ``trial``, ``state``, ``step``, ``chars_seen``,
    ``wall_seconds`` (since the run started), ``metric``; one row per logged value."""
    client = client_for(tracking_uri)
    rows = []
    each = runs[["run_id", "trial", names.STATE, names.ATTR_BASELINE, "start_time"]]
    for run_id, trial, state, baseline, start_time in each.itertuples(index=False):
        values = client.get_metric_history(run_id, metric)
        chars = {m.step: m.value for m in client.get_metric_history(run_id, names.CHARS_SEEN)}
        start = pd.Timestamp(start_time).timestamp() * 1000
        rows += [
            {"run_id": run_id, "trial": trial, names.STATE: state, names.ATTR_BASELINE: baseline,
             "step": m.step, names.CHARS_SEEN: chars.get(m.step, float("nan")),
             "wall_seconds": (m.timestamp - start) / 1000, metric: m.value}
            for m in values
        ]
    cols = ["run_id", "trial", names.STATE, names.ATTR_BASELINE, "step", names.CHARS_SEEN, "wall_seconds", metric]
    return pd.DataFrame(rows, columns=cols).sort_values(["run_id", "step"]).reset_index(drop=True)


def trial_table(study, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's leaderboard (``charlstm.sweep.store.leaderboard``) with what MLflow knows of each
    trial's run: characters seen, wall time, compute. Running trials get their progress so far."""
    board = leaderboard(study)
    if board.empty or runs is None or runs.empty:
        return board
    taken = [names.CHARS_SEEN, "wall_seconds", names.ATTR_TRAIN_FLOPS]  # (not on the leaderboard)
    filled = [names.CHARS_PER_SEC, names.TRAIN_SECONDS]  # (on it once a trial has ended)
    extra = runs.set_index("run_id")[[*taken, *filled, names.VAL_BPC]]
    merged = board.join(extra.rename(columns=lambda c: f"run_{c}"), on=names.ATTR_RUN)
    for name in filled:
        merged[name] = pd.to_numeric(merged[name], errors="coerce").fillna(merged[f"run_{name}"])
    # a running trial has reported nothing to Optuna yet: show its last MLflow evaluation
    merged["value"] = pd.to_numeric(merged["value"], errors="coerce").fillna(merged[f"run_{names.VAL_BPC}"])
    return merged.rename(columns={f"run_{c}": c for c in taken}).drop(
        columns=[f"run_{c}" for c in (*filled, names.VAL_BPC)])


def state_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Trials and the compute they spent, per state (from ``trial_table`` or ``load_runs``)."""
    rows = []
    for state in [s for s in STATE_ORDER if s in set(table[names.STATE])]:
        part = table[table[names.STATE] == state]

        def total(name: str, part=part) -> float:
            return float(pd.to_numeric(part[name], errors="coerce").sum()) if name in part else float("nan")

        rows.append({names.STATE: state, "trials": len(part), names.TRAIN_SECONDS: total(names.TRAIN_SECONDS),
                     names.COMPUTE_SECONDS: _compute(part), "wall_seconds": total("wall_seconds"),
                     names.CHARS_SEEN: total(names.CHARS_SEEN), "train_pflop": total(names.ATTR_TRAIN_FLOPS) / 1e15})
    cols = [names.STATE, "trials", names.TRAIN_SECONDS, names.COMPUTE_SECONDS, "wall_seconds", names.CHARS_SEEN,
            "train_pflop"]
    out = pd.DataFrame(rows, columns=cols)
    if not out.empty:
        out.loc[len(out)] = {names.STATE: "all", **{c: out[c].sum() for c in out.columns if c != names.STATE}}
        # the share of the training wall-clock that was compute: under 1, the machine was busy
        train = out[names.TRAIN_SECONDS]
        out.insert(4, names.COMPUTE_SHARE, out[names.COMPUTE_SECONDS] / train.where(train > 0))
    return out.drop(columns=names.COMPUTE_SECONDS)


def _compute(part: pd.DataFrame) -> float:
    """Compute seconds of trials with a compute share (train seconds x share)."""
    if names.COMPUTE_SHARE not in part or names.TRAIN_SECONDS not in part:
        return float("nan")
    share = pd.to_numeric(part[names.COMPUTE_SHARE], errors="coerce")
    train = pd.to_numeric(part[names.TRAIN_SECONDS], errors="coerce")
    return float((share * train).sum()) if share.notna().any() else float("nan")


def study_experiment(study, tracking_uri: str) -> str:
    """The MLflow experiment a study's runs live in (that of its parent run)."""
    parent = study.user_attrs.get(names.STUDY_PARENT)
    if parent:
        client = client_for(tracking_uri)
        try:
            return client.get_experiment(client.get_run(parent).info.experiment_id).name
        except Exception:  # the parent run was deleted: fall back to the default experiment
            pass
    return names.DEFAULT_EXPERIMENT


def top_samples(table: pd.DataFrame, tracking_uri: str | None, k: int = 3,
                primes: tuple[str, ...] = ("\n", "ROMEO:"), temperatures: tuple[float, ...] = (0.5, 1.0),
                length: int = 200, seed: int = 0) -> pd.DataFrame:
    """Text from the ``k`` best COMPLETE trials for the same primes, temperatures and seed.
    Rows: (prime, temperature); columns: ``trial N``. A prime outside a model's vocab says so."""
    done = (table[names.STATE] == TrialState.COMPLETE.name) & table[names.ATTR_RUN].notna()
    best = table[done].sort_values("value").head(k)
    columns: dict[str, list[str]] = {}
    for trial, run_id in best[["trial", names.ATTR_RUN]].itertuples(index=False):
        try:
            model, vocab, _ = load_model(tracking_uri, run_id, "cpu")
        except CharlstmError as e:
            columns[f"trial {trial}"] = [f"(no model: {e})"] * (len(primes) * len(temperatures))
            continue
        cells = []
        for prime in primes:
            for temp in temperatures:
                try:
                    cells.append(generate(model, vocab, prime, length, temp, seed=seed)[0])
                except CharlstmError as e:
                    cells.append(f"({e})")
        columns[f"trial {trial}"] = cells
    index = pd.MultiIndex.from_tuples([(p, t) for p in primes for t in temperatures],
                                      names=["prime", "temperature"])
    return pd.DataFrame(columns, index=index)
