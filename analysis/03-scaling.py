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
# # 03 · Scaling: which size wins at a compute budget, and how that moves
#
# A scaling study (a study file with a `scaling:` section, such as `sweeps/default.yaml`)
# trains every hidden size at every compute budget. At each budget the **iso-compute profile**
# (val bits/char against parameters) has a minimum: the compute-optimal size for that budget
# (Hoffmann et al. 2022, approach 2). A parabola in log10(parameters) is fitted to the best
# trial and its neighbours; its minimum's interval comes from a residual bootstrap. Across
# budgets, power laws N_opt(C) and L_opt(C) are fitted through the minima, and the config they
# predict for a larger budget is trained as the study's final trial: **the check**.
#
# Each fit says in one sentence when it means nothing (an optimum at the edge of the range, too
# few sizes, no minimum, an interval wider than the range) and what to change.
#
# For a study without a `scaling:` section the older fit is shown: a power law of val against
# parameters over trials that saw the same amount of text.

# %% tags=["parameters"]
study = "default"  # Optuna study name; None: every run of the experiment
experiment = "charlstm"
storage = None
tracking_uri = None
scale = 10.0  # (studies without scaling:) extrapolate to this multiple of the largest trial

# %%
import pandas as pd
from optuna.trial import TrialState

from charlstm import analysis, names, scaling
from charlstm.machine import machine_line

pd.set_option("display.width", 160)
opt_study = analysis.load_study(study, storage) if study else None
settings = opt_study.user_attrs.get(names.STUDY_SPEC, {}) if opt_study else {}
print(machine_line(opt_study.user_attrs.get(names.STUDY_MACHINE)) if opt_study else "no study")

# %% [markdown]
# ## The answer

# %%
if settings.get("scaling"):
    answer = scaling.study_answer(opt_study.get_trials(deepcopy=False), settings,
                                  opt_study.user_attrs.get(names.STUDY_PREDICTION))
    for line in scaling.summary(answer):
        print("-", line)
else:
    answer = None
    print("this study has no scaling section: see the fits below")

# %% [markdown]
# ## Iso-compute profiles, N_opt(C) and L_opt(C), and the checked prediction
#
# Left: each budget's trials (colour), the parabola fitted near its best trial (dotted where it
# was refused), its minimum with the interval (open circle), the seed baseline (star); the red
# box is the predicted size and val at the final budget, the red diamond what its trial
# measured. Middle and right: the minima against the budget, the fitted law, the prediction
# (red square) and the measurement (black diamond).

# %%
if answer is not None and any(not p.trials.empty for p in answer.profiles):
    analysis.plot_scaling_answer(answer)

# %% [markdown]
# ## Each budget's profile, in numbers

# %%
if answer is not None:
    rows = [{"budget": p.budget, "trials": len(p.trials), "n_opt": p.n_opt, "n_lo": p.n_interval[0],
             "n_hi": p.n_interval[1], "val_opt": p.l_opt, "residual_sd": p.noise, "why not": p.reason}
            for p in answer.profiles]
    print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown]
# ## Studies without a scaling section: val against parameters at equal text

# %%
if answer is None:
    if study:
        tracking_uri = analysis.study_tracking_uri(opt_study, tracking_uri)
        experiment = analysis.study_experiment(opt_study, tracking_uri)
    runs = analysis.load_runs(experiment, study=study, tracking_uri=tracking_uri)
    complete = runs[names.STATE] == TrialState.COMPLETE.name
    print(f"{complete.sum()} complete of {len(runs)} runs")
    for x, name in ((names.ATTR_PARAMS_TOTAL, "parameters"), (names.ATTR_TRAIN_FLOPS, "training FLOP")):
        fit = analysis.scaling_fit(runs, x, x_name=name)
        print(analysis.scaling_note(fit, scale, name))
        if fit.law is not None:
            analysis.plot_scaling(runs, fit, x, scale=scale)
