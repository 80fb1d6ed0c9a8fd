"""Every name charlstm writes and reads back, once: metrics and their units, Optuna attribute
keys, MLflow tag keys, artifact paths, default paths, the seed baseline's numbers and the
generation defaults. A name changed here changes everywhere; ``tests/test_names.py`` keeps a
literal of any of them out of every other module of the package and out of the shipped
notebooks (the benchmarks' own result keys are theirs). States are Optuna's ``TrialState`` and
MLflow's ``RunStatus``, never strings.

Where each name lives::

    Optuna study (user attrs)   STUDY_*    its definition, target, deadline, parent run, ...
    Optuna trial (user attrs)   ATTR_*     its run, its worker, its kind flags, its results
    MLflow run (metrics)        metric names below, step = characters seen
    MLflow run (tags)           TAG_*      who ran it, its study and trial, its state
    MLflow run (artifacts)      ARTIFACT_* checkpoints/, resume/last.pt, model/, config.yaml
    this directory              DEFAULT_*  studies/journal.log, mlflow.db, checkpoints/, ...

This module imports nothing of charlstm's and nothing heavy: the CLI reads its defaults
before it imports torch or MLflow.
"""

from __future__ import annotations

import math

# ---------------------------------------------------------------------------------------------
# Metrics (MLflow metric keys; a study's objective is one of VAL_BPC, VAL_LOSS)

VAL_BPC, VAL_LOSS = "val_bpc", "val_loss"  # validation loss in bits / nats per character
BEST_VAL_LOSS = "best_val_loss"  # the best whole-split val loss so far, nats/char
VAL_CHARS = "val_chars"  # the characters an evaluation read (the whole split, or a slice)
TRAIN_LOSS, LR = "train_loss", "lr"  # mean train loss since the last log; the lr in use
CHARS_SEEN, CHARS_PER_SEC = "chars_seen", "chars_per_sec"
BUDGET_FRACTION = "budget_fraction"  # how far through its budget a run is, 0..1
COMPUTE_SHARE = "compute_share"  # compute seconds over training wall-clock (< 1: a busy machine)
TRAIN_SECONDS, COMPUTE_SECONDS = "train_seconds", "compute_seconds"  # a run's totals
FINAL_CHARS_PER_SEC = "final_chars_per_sec"
TRAVEL_SECONDS = "travel_seconds"  # what sending checkpoints for a retry elsewhere cost the run so far
MACHINE_PREFIX = "machine/"  # the process's load: machine/process_cpu_percent, ...

LN2 = math.log(2)  # nats -> bits
UNITS = {VAL_BPC: "bits/char", VAL_LOSS: "nats/char"}


def unit(metric: str) -> str:
    """What a loss metric is measured in: ``bits/char`` for val_bpc, ``nats/char`` for val_loss."""
    return UNITS.get(metric, "nats/char")


# ---------------------------------------------------------------------------------------------
# An Optuna study's user attrs

STUDY_SPEC = "sweep"  # the study definition (SweepSpec.as_dict) its workers read
STUDY_TARGET = "target_trials"  # trials the current sweep aims at (None: until the deadline)
STUDY_DEADLINE = "deadline"  # unix time after which no trial starts (None: none)
STUDY_PARENT = "mlflow_parent_run_id"  # the study's MLflow parent run
STUDY_TRACKING = "tracking_uri"  # its MLflow URI (never stored when it carries a password)
STUDY_MACHINE = "machine"  # charlstm.machine.describe() of the sweep's machine
STUDY_PREDICTION = "scaling_prediction"  # what a scaling study predicted before its check ran
STUDY_CORPUS = "corpus_sha256"  # the digest of the corpus every worker must train on
STUDY_CONFIRM = "confirm"  # a confirmation's summary, on the confirmed study

# ---------------------------------------------------------------------------------------------
# An Optuna trial's user attrs

ATTR_RUN = "mlflow_run_id"
ATTR_RUN_URL = "mlflow_run_url"  # the run's page, where the tracking store is a server
ATTR_OWNER = "worker"  # host:pid:start of the process running the trial (charlstm.owner)
ATTR_WORKER = "worker_name"  # 'worker 2': which of its sweep's workers runs it
# what kind of trial it is (charlstm.sweep.kinds): flags set when it is queued, kept by a retry
ATTR_BASELINE = "baseline"  # the seed notebook's setting
ATTR_FINAL = "final"  # the best config trained again with the final budget
ATTR_FINAL_OF = "final_of"  # ... of this trial
ATTR_CHECK = "check"  # a scaling study's final: the predicted optimum
ATTR_CONFIRMS = "confirms"  # a confirmation's re-run of this trial ...
ATTR_SEED = "seed"  # ... with this train.seed
# what happened to it
ATTR_PARAMS_TOTAL = "params_total"
ATTR_FAIL_REASON = "fail_reason"
ATTR_PRUNED_REASON = "pruned_reason"
ATTR_RESUMED_FROM = "resumed_from_trial"  # the trial whose checkpoint a retry went on from
ATTR_TRAIN_FLOPS = "train_flops"  # training FLOP: the portable measure of what a budget bought
ATTR_EPOCHS = "epochs"  # passes over the training split
# (its totals share the metrics' names: CHARS_PER_SEC, TRAIN_SECONDS, COMPUTE_SECONDS, CHARS_SEEN,
# BEST_VAL_LOSS)

# an Optuna trial's system attrs that charlstm writes: a retry, in the keys Optuna's own retry
# callback writes and reads (its retry_history), and the crashes it counts against max_retry
SYS_FIXED_PARAMS = "fixed_params"
SYS_FAILED_TRIAL, SYS_RETRY_HISTORY = "failed_trial", "retry_history"
SYS_CRASHES = "crashes"

# ---------------------------------------------------------------------------------------------
# An MLflow run's tags

TAG_HOST, TAG_OWNER = "charlstm.host", "charlstm.owner"  # which host, which process (owner)
TAG_STUDY, TAG_TRIAL = "charlstm.study", "charlstm.trial"  # a study's runs
TAG_ROLE, ROLE_PARENT = "charlstm.role", "parent"  # a study's parent run
STATE = "state"  # a trial's state, as Optuna names it: its run's tag, the frames' and leaderboard's column
TAG_STATE = STATE  # a trial's run: its Optuna state's name (RUNNING while it trains)
TAG_ERROR = "error"  # why a run stopped
TAG_BASELINE, TAG_FINAL_OF = "charlstm.baseline", "charlstm.final_of"
TAG_CONFIRMS, TAG_SEED = "charlstm.confirms", "charlstm.seed"
TAG_RESUMED_FROM_RUN = "charlstm.resumed_from_run"  # a retry's run: the run it went on from
TAG_PRUNED_AT_CHARS, TAG_PRUNED_AT_STEP = "pruned_at_chars", "pruned_at_step"
TAG_UNSENT = "charlstm.unsent"  # artifacts a run ended without sending (doctor lists them)
TAG_UNSENT_LOST = "charlstm.unsent_lost"  # ... those doctor could not make again
TAG_GC = "charlstm.gc"  # its checkpoints were deleted by charlstm gc
TAG_REPRODUCES = "reproduces"  # a reproduction's run: the run it re-trained
TAG_TORCH, TAG_DEVICE = "charlstm.torch", "charlstm.device"  # what a reproduction compares
TAG_COMMIT = "mlflow.source.git.commit"  # MLflow's own
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own
TAG_CORPUS = "data.sha256"

# ---------------------------------------------------------------------------------------------
# An MLflow run's artifacts

ARTIFACT_CHECKPOINTS = "checkpoints"  # best.pt and last.pt, at the end of a run
ARTIFACT_TRAVEL = "resume/last.pt"  # mid-run: what a retry on another machine resumes from
ARTIFACT_MODEL = "model"  # the best checkpoint as an MLflow Model (charlstm.serving)
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_SAMPLES = "samples"
ARTIFACT_REPORT = "report"  # a study report, on its parent run
BEST_PT, LAST_PT = "best.pt", "last.pt"  # a run's checkpoint files

# ---------------------------------------------------------------------------------------------
# The model registry: a study's best trial is the version ``models:/charlstm-<study>@best``

MODEL_ALIAS = "best"


def registered_model(study: str) -> str:
    """The registered model of a study's best trials."""
    return f"charlstm-{study}"


def best_model_uri(study: str) -> str:
    """``models:/charlstm-<study>@best``: what ``make serve`` and ``charlstm generate`` load."""
    return f"models:/{registered_model(study)}@{MODEL_ALIAS}"


# ---------------------------------------------------------------------------------------------
# Default paths, relative to the working directory

DEFAULT_STORAGE = "studies/journal.log"  # the Optuna journal file
DEFAULT_DB = "mlflow.db"  # the MLflow store (SQLite)
DEFAULT_ARTIFACTS = "mlartifacts"  # ... and its artifacts
DEFAULT_CHECKPOINTS = "checkpoints"  # train.out_dir
DEFAULT_REPORTS = "analysis/reports"  # charlstm report --out
DEFAULT_NOTEBOOKS_OUT = "analysis/out"  # charlstm notebooks --out
DEFAULT_EXPERIMENT = "charlstm"  # tracking.experiment

# ---------------------------------------------------------------------------------------------
# The seed notebook's setting: the baseline every study is compared with

SEED_EMBEDDING_DIM, SEED_HIDDEN_SIZE = 48, 96
SEED_BATCH_SIZE, SEED_SEQ_LENGTH = 36, 48

# ---------------------------------------------------------------------------------------------
# Generation (charlstm generate, the served model)

GEN_PRIME = "\n"
GEN_LENGTH = 500  # characters after the prime
GEN_TEMPERATURE = 0.8  # 0: greedy
