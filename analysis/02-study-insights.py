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
# Which settings mattered: for a scaling study each of hidden_size, seq_length and
# embedding_dim at equal compute; then how the search went: optimisation history,
# hyperparameter importances (fANOVA), parallel coordinates, a hidden_size x seq_length contour
# and slices.
# A view Optuna cannot draw yet (too few complete trials) says why instead.

# %% tags=["parameters"]
study = "default"  # Optuna study name
experiment = "charlstm"  # unused here; every notebook takes the same parameters
storage = None  # Optuna storage; None means studies/journal.log
tracking_uri = None  # unused here

# %%
import pandas as pd

from charlstm import analysis, names, scaling

pd.set_option("display.width", 160)
opt_study = analysis.load_study(study, storage)
table = analysis.trial_table(opt_study)
print(f"study {study!r}: {len(table)} trials")
table.drop(columns=[names.ATTR_RUN], errors="ignore")

# %% [markdown]
# ## Each setting at equal compute
#
# A scaling study's trials, one row per compute budget: val against hidden_size (the
# iso-compute profile), then seq_length and embedding_dim with size taken out: each trial's
# residual from its budget's fitted profile (below 0: better than its size predicts). The
# settings not on an axis are marginalised over the sampler's draws; the star is the seed
# baseline. The table gives, per budget, each seq_length's mean residual.

# %%
settings = opt_study.user_attrs.get(names.STUDY_SPEC, {})
if settings.get("scaling"):
    answer = scaling.study_answer(opt_study.get_trials(deepcopy=False), settings,
                                  opt_study.user_attrs.get(names.STUDY_PREDICTION))
    for p in answer.profiles:
        print(f"budget {p.budget:g}:", scaling.context_table(p, "data.seq_length").to_dict("records"))
    analysis.plot_at_equal_compute(answer)
else:
    print("not a scaling study: its trials did not run at equal compute by design")

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
