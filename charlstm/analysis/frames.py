"""MLflow runs and Optuna studies as pandas frames: one row per run (``load_runs``), one per
evaluation (``load_curves``), the study's leaderboard joined with its runs (``trial_table``),
compute per state, and text from the best models side by side. Nothing here writes.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from charlstm.errors import CharlstmError, ConfigError
from charlstm.model import flops_per_char
from charlstm.sample import generate
from charlstm.sweep.spec import SEED_BASELINE
from charlstm.sweep.store import STATE_ORDER as TRIAL_STATES
from charlstm.sweep.store import USER_ATTR_PARENT, leaderboard, open_storage, tracking_uri_of
from charlstm.sweep.store import load_study as load_study_from
from charlstm.tracking import TAG_STUDY, client_for, load_model, redact, resolve_uri
from charlstm.train import LN2

# A trial's state, from Optuna's side; single runs (no study) get theirs from the run status.
STATUS_TO_STATE = {"FINISHED": "COMPLETE", "KILLED": "KILLED", "FAILED": "FAIL", "RUNNING": "RUNNING",
                   "SCHEDULED": "RUNNING"}
STATE_ORDER = [*TRIAL_STATES, "KILLED"]  # KILLED: an interrupted single run


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


def load_runs(experiment: str = "charlstm", study: str | None = None, tracking_uri: str | None = None,
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
        filter_string=f"tags.`{TAG_STUDY}` = '{study}'" if study is not None else "",
        output_format="pandas",
        max_results=50_000,
    )
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "trial", "state", "val_bpc", "params_total", "baseline"])
    if not include_parents and "tags.charlstm.role" in raw:  # (a != filter in MLflow would
        raw = raw[raw["tags.charlstm.role"].fillna("") != "parent"]  # drop untagged runs too)
    now = pd.Timestamp.now(tz="UTC")

    def col(name: str, default=None) -> pd.Series:
        return raw[name] if name in raw else pd.Series(default, index=raw.index)

    df = pd.DataFrame({"run_id": raw["run_id"], "run_name": col("tags.mlflow.runName"), "status": raw["status"]})
    df["trial"] = pd.to_numeric(col("tags.charlstm.trial"), errors="coerce").astype("Int64")
    state = col("tags.state").where(col("tags.state").notna(), raw["status"].map(STATUS_TO_STATE))
    # a run still RUNNING in MLflow is running, whatever its last tag said
    df["state"] = state.where(raw["status"] != "RUNNING", "RUNNING")
    for name in raw.columns:
        if name.startswith("params.") and not name.startswith("params.params."):
            df[name.removeprefix("params.")] = _numeric(raw[name])
    df["params_total"] = pd.to_numeric(col("params.params.total"), errors="coerce")
    df["val_bpc"] = col("metrics.val_bpc")
    df["best_val_bpc"] = col("metrics.best_val_loss") / LN2
    df["chars_seen"] = col("metrics.chars_seen")
    df["chars_per_sec"] = col("metrics.final_chars_per_sec").fillna(col("metrics.chars_per_sec"))
    df["train_seconds"] = col("metrics.train_seconds")
    end = col("end_time").where(raw["status"] != "RUNNING", now)
    df["start_time"] = raw["start_time"]
    df["wall_seconds"] = (pd.to_datetime(end, utc=True) - pd.to_datetime(raw["start_time"], utc=True)).dt.total_seconds()
    df["vocab_size"] = pd.to_numeric(col("tags.data.vocab_size"), errors="coerce")
    df["train_flops"] = [
        flops_per_char(int(v), int(e), int(h), int(n)) * c
        if all(pd.notna(x) for x in (v, e, h, n, c)) else float("nan")
        for v, e, h, n, c in zip(df["vocab_size"], col("params.model.embedding_dim"),
                                 col("params.model.hidden_size"), col("params.model.num_layers"),
                                 df["chars_seen"], strict=True)
    ]
    df["baseline"] = col("tags.charlstm.baseline").eq("true") | _is_seed(df)
    df = df.sort_values(["trial", "start_time"], na_position="last").reset_index(drop=True)
    return df


def _is_seed(df: pd.DataFrame) -> pd.Series:
    """Runs with the seed notebook's setting (E48 H96 T48 B36, one layer)."""
    out = pd.Series(True, index=df.index)
    for key, value in SEED_BASELINE.items():
        out &= pd.to_numeric(df[key], errors="coerce").eq(value) if key in df else False
    return out


def load_curves(runs: pd.DataFrame, metric: str = "val_bpc", tracking_uri: str | None = None) -> pd.DataFrame:
    """Every evaluation of ``runs``: ``run_id``, ``trial``, ``state``, ``step``, ``chars_seen``,
    ``wall_seconds`` (since the run started), ``metric``; one row per logged value."""
    client = client_for(tracking_uri)
    rows = []
    for r in runs.itertuples(index=False):
        values = client.get_metric_history(r.run_id, metric)
        chars = {m.step: m.value for m in client.get_metric_history(r.run_id, "chars_seen")}
        start = pd.Timestamp(r.start_time).timestamp() * 1000
        rows += [
            {"run_id": r.run_id, "trial": r.trial, "state": r.state, "baseline": r.baseline,
             "step": m.step, "chars_seen": chars.get(m.step, float("nan")),
             "wall_seconds": (m.timestamp - start) / 1000, metric: m.value}
            for m in values
        ]
    cols = ["run_id", "trial", "state", "baseline", "step", "chars_seen", "wall_seconds", metric]
    return pd.DataFrame(rows, columns=cols).sort_values(["run_id", "step"]).reset_index(drop=True)


def trial_table(study, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's leaderboard (``charlstm.sweep.store.leaderboard``) with what MLflow knows of each
    trial's run: characters seen, wall time, compute. Running trials get their progress so far."""
    board = leaderboard(study)
    if board.empty or runs is None or runs.empty:
        return board
    extra = runs.set_index("run_id")[["chars_seen", "chars_per_sec", "train_seconds", "wall_seconds",
                                      "train_flops", "val_bpc"]]
    merged = board.join(extra.rename(columns=lambda c: f"run_{c}"), on="mlflow_run_id")
    for name in ("chars_per_sec", "train_seconds"):
        merged[name] = pd.to_numeric(merged[name], errors="coerce").fillna(merged[f"run_{name}"])
    # a running trial has reported nothing to Optuna yet: show its last MLflow evaluation
    merged["value"] = pd.to_numeric(merged["value"], errors="coerce").fillna(merged["run_val_bpc"])
    return merged.rename(columns={"run_chars_seen": "chars_seen", "run_wall_seconds": "wall_seconds",
                                  "run_train_flops": "train_flops"}).drop(
        columns=["run_chars_per_sec", "run_train_seconds", "run_val_bpc"])


def state_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Trials and the compute they spent, per state (from ``trial_table`` or ``load_runs``)."""
    rows = []
    for state in [s for s in STATE_ORDER if s in set(table["state"])]:
        part = table[table["state"] == state]

        def total(name: str, part=part) -> float:
            return float(pd.to_numeric(part[name], errors="coerce").sum()) if name in part else float("nan")

        rows.append({"state": state, "trials": len(part), "train_seconds": total("train_seconds"),
                     "compute_seconds": _compute(part), "wall_seconds": total("wall_seconds"),
                     "chars_seen": total("chars_seen"), "train_pflop": total("train_flops") / 1e15})
    cols = ["state", "trials", "train_seconds", "compute_seconds", "wall_seconds", "chars_seen", "train_pflop"]
    out = pd.DataFrame(rows, columns=cols)
    if not out.empty:
        out.loc[len(out)] = {"state": "all", **{c: out[c].sum() for c in out.columns if c != "state"}}
        # the share of the training wall-clock that was compute: under 1, the machine was busy
        out.insert(4, "compute_share", out["compute_seconds"] / out["train_seconds"].where(out["train_seconds"] > 0))
    return out.drop(columns="compute_seconds")


def _compute(part: pd.DataFrame) -> float:
    """Compute seconds of trials with a compute share (train seconds x share)."""
    if "compute_share" not in part or "train_seconds" not in part:
        return float("nan")
    share, train = pd.to_numeric(part["compute_share"], errors="coerce"), pd.to_numeric(part["train_seconds"], errors="coerce")
    return float((share * train).sum()) if share.notna().any() else float("nan")


def study_experiment(study, tracking_uri: str) -> str:
    """The MLflow experiment a study's runs live in (that of its parent run)."""
    parent = study.user_attrs.get(USER_ATTR_PARENT)
    if parent:
        client = client_for(tracking_uri)
        try:
            return client.get_experiment(client.get_run(parent).info.experiment_id).name
        except Exception:  # the parent run was deleted: fall back to the default experiment
            pass
    return "charlstm"


def top_samples(table: pd.DataFrame, tracking_uri: str | None, k: int = 3,
                primes: tuple[str, ...] = ("\n", "ROMEO:"), temperatures: tuple[float, ...] = (0.5, 1.0),
                length: int = 200, seed: int = 0) -> pd.DataFrame:
    """Text from the ``k`` best COMPLETE trials for the same primes, temperatures and seed.
    Rows: (prime, temperature); columns: ``trial N``. A prime outside a model's vocab says so."""
    best = table[(table["state"] == "COMPLETE") & table["mlflow_run_id"].notna()].sort_values("value").head(k)
    columns: dict[str, list[str]] = {}
    for r in best.itertuples():
        try:
            model, vocab, _ = load_model(r.mlflow_run_id, "cpu", tracking_uri)
        except CharlstmError as e:
            columns[f"trial {r.trial}"] = [f"(no model: {e})"] * (len(primes) * len(temperatures))
            continue
        cells = []
        for prime in primes:
            for temp in temperatures:
                try:
                    cells.append(generate(model, vocab, prime, length, temp, seed=seed)[0])
                except CharlstmError as e:
                    cells.append(f"({e})")
        columns[f"trial {r.trial}"] = cells
    index = pd.MultiIndex.from_tuples([(p, t) for p in primes for t in temperatures],
                                      names=["prime", "temperature"])
    return pd.DataFrame(columns, index=index)
