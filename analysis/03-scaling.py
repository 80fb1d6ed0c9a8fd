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
# # 03 · Scaling: how quality moves with size and compute
#
# Complete trials only. A power law `val_bpc = a * x^b`, fitted in log-log space, against the
# parameter count and against the training compute each trial spent (FLOP = 6 x the model's
# multiply-adds per character x characters seen), extrapolated to 10x the largest trial.
# Trials of a short budget are far from converged: read the exponent as a trend of this
# budget, not as the asymptotic law.

# %% tags=["parameters"]
study = "default"  # Optuna study name; None: every run of the experiment
experiment = "charlstm"
storage = None
tracking_uri = None
scale = 10.0  # extrapolate to this multiple of the largest trial

# %%
from charlstm import analysis

if study:
    opt_study = analysis.load_study(study, storage)
    tracking_uri = analysis.study_tracking_uri(opt_study, tracking_uri)
    experiment = analysis.study_experiment(opt_study, tracking_uri)
runs = analysis.load_runs(experiment, study=study, tracking_uri=tracking_uri)
done = runs[runs["state"] == "COMPLETE"]
print(f"{len(done)} complete of {len(runs)} runs")
done.sort_values("params_total")[["trial", "params_total", "train_flops", "chars_seen", "val_bpc"]]

# %% [markdown]
# ## Against parameters

# %%
fig, by_params = analysis.plot_scaling(runs, "params_total", scale=scale)
print(analysis.scaling_note(by_params, scale, "parameters"))

# %% [markdown]
# ## Against training compute

# %%
fig, by_compute = analysis.plot_scaling(runs, "train_flops", scale=scale)
print(analysis.scaling_note(by_compute, scale, "training FLOP"))
