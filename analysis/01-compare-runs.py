# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Compare runs: which size and context win?
#
# Every trial of a study (or every run of an experiment) from MLflow, side by side: validation
# curves against characters seen and against wall-clock, final quality against size, and against
# each of the settings the study searched. The seed baseline (E=48, H=96, T=48, B=36) is the
# black star / thick black line.
#
# Run it with `make notebooks STUDY=default` (or `charlstm notebooks default`); the parameters
# below are what papermill replaces.

# %% tags=["parameters"]
study = "default"  # Optuna study name; None: compare every run of the experiment
experiment = "charlstm"  # MLflow experiment (read from the study's parent run when there is one)
storage = None  # Optuna storage; None means studies/journal.log
tracking_uri = None  # MLflow URI; None: the one the study stored, else sqlite:///mlflow.db here

# %%
import pandas as pd
from optuna.trial import TrialState

from charlstm import analysis, names

pd.set_option("display.width", 160)
if study:
    opt_study = analysis.load_study(study, storage)
    tracking_uri = analysis.study_tracking_uri(opt_study, tracking_uri)
    experiment = analysis.study_experiment(opt_study, tracking_uri)
runs = analysis.load_runs(experiment, study=study, tracking_uri=tracking_uri)
curves = analysis.load_curves(runs, tracking_uri=tracking_uri)
print(f"{len(runs)} runs of experiment {experiment!r}" + (f", study {study!r}" if study else ""))
runs[names.STATE].value_counts()

# %% [markdown]
# ## The runs, best first

# %%
shown = ["trial", names.STATE, names.VAL_BPC, *[k for k in analysis.SIZE_KEYS if k in runs],
         names.ATTR_PARAMS_TOTAL, names.CHARS_SEEN, names.CHARS_PER_SEC, "wall_seconds", names.ATTR_BASELINE]
runs.sort_values(names.VAL_BPC)[[c for c in shown if c in runs]]

# %% [markdown]
# ## Training and validation curves
# Train loss beside validation against characters seen (equal data), then validation against
# wall-clock (equal time: larger models see fewer characters in the same budget).

# %%
fig = analysis.plot_train_and_val(analysis.load_curves(runs, names.TRAIN_LOSS, tracking_uri=tracking_uri), curves)

# %%
fig = analysis.plot_curves(curves, "wall_seconds")

# %% [markdown]
# ## Quality against size
# The dashed line is the Pareto front: no other run is both smaller and better.

# %%
fig = analysis.plot_vs_params(runs)
runs[analysis.pareto_front(runs)].sort_values(names.ATTR_PARAMS_TOTAL)[[c for c in shown if c in runs]]

# %% [markdown]
# ## Against sequence length, hidden size and embedding size

# %%
fig = analysis.plot_vs_config(runs)

# %% [markdown]
# ## Pruned against complete
# Where each trial stopped and how good it was then; the compute each state took.

# %%
if (runs[names.STATE] == TrialState.PRUNED.name).any():
    analysis.plot_states(runs)
else:
    print("nothing was pruned")
analysis.state_summary(runs)

# %% [markdown]
# ## Confirmed over seeds
# After `charlstm confirm STUDY`: the top trials and the seed baseline re-trained with fresh
# seeds, each config's mean with its 95% interval, every seed, and the single-seed value the
# study ranked it by; then the verdicts (Welch's t-test).

# %%
confirmation = opt_study.user_attrs.get(names.STUDY_CONFIRM) if study else None
if confirmation and confirmation["table"]:
    analysis.plot_confirmation(confirmation["table"])
    print("\n".join(confirmation["verdicts"]) or "one config: nothing to compare")
else:
    print("no confirmation yet: charlstm confirm STUDY")
