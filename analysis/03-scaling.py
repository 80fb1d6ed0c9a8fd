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
#
# A fit is shown only when it means something (`analysis.scaling_fit`, the report's rule too):
# at least 5 complete trials that saw the same amount of text (a `train.max_chars` budget: in
# trials of equal *seconds* the larger models see less text, and the fit measures the budget),
# a falling curve and R^2 >= 0.8. Otherwise one sentence says why none is shown.

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
by_params = analysis.scaling_fit(runs, "params_total", x_name="parameters")
print(analysis.scaling_note(by_params, scale, "parameters"))
if by_params.law is not None:
    analysis.plot_scaling(runs, by_params, "params_total", scale=scale)

# %% [markdown]
# ## Against training compute

# %%
by_compute = analysis.scaling_fit(runs, "train_flops", x_name="training FLOP")
print(analysis.scaling_note(by_compute, scale, "training FLOP"))
if by_compute.law is not None:
    analysis.plot_scaling(runs, by_compute, "train_flops", scale=scale)
