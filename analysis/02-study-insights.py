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
# # 02 · Study insights: the Optuna side
#
# How the search went and which settings mattered: optimisation history, hyperparameter
# importances (fANOVA), parallel coordinates, a hidden_size x seq_length contour and slices.
# A view Optuna cannot draw yet (too few complete trials) says why instead.

# %% tags=["parameters"]
study = "default"  # Optuna study name
experiment = "charlstm"  # unused here; every notebook takes the same parameters
storage = None  # Optuna storage; None means studies/journal.log
tracking_uri = None  # unused here

# %%
import pandas as pd

from charlstm import analysis

pd.set_option("display.width", 160)
opt_study = analysis.load_study(study, storage)
table = analysis.trial_table(opt_study)
print(f"study {study!r}: {len(table)} trials")
table.drop(columns=["mlflow_run_id"], errors="ignore")

# %% [markdown]
# ## Optimisation history

# %%
analysis.explain(analysis.optuna_figure(opt_study, "optimization history"))

# %% [markdown]
# ## Hyperparameter importances

# %%
analysis.explain(analysis.optuna_figure(opt_study, "hyperparameter importances"))

# %% [markdown]
# ## Parallel coordinates

# %%
analysis.explain(analysis.optuna_figure(opt_study, "parallel coordinates"))

# %% [markdown]
# ## hidden_size x seq_length

# %%
analysis.explain(analysis.optuna_figure(opt_study, "contour", ("model.hidden_size", "data.seq_length")))

# %% [markdown]
# ## Slices: the metric against each parameter

# %%
analysis.explain(analysis.optuna_figure(opt_study, "slices"))
