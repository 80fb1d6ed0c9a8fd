"""Reading results back: MLflow runs and Optuna studies as pandas frames, fronts and fits, and
the plots the notebooks (``analysis/*.py``) and the study report share. Nothing here writes to
MLflow or Optuna, and imports nothing that runs a study.

- ``frames``: runs, curves, the trial table, compute per state, samples from the best models.
- ``fits``: the Pareto front, power-law fits and when a scaling fit means something.
- ``plots``: matplotlib figures of the above (and of ``charlstm.scaling``'s answer), and Optuna's own views.
- ``notebooks``: running the notebooks with papermill (import it on its own: it needs the
  notebook tools).

A notebook writes ``from charlstm import analysis`` and ``analysis.load_runs(...)``.
"""

from charlstm.analysis.fits import (
    PowerLaw,
    Scaling,
    fit_power_law,
    pareto_front,
    scaling_fit,
    scaling_note,
)
from charlstm.analysis.frames import (
    LN2,
    STATE_ORDER,
    load_curves,
    load_runs,
    load_study,
    state_summary,
    study_experiment,
    study_tracking_uri,
    top_samples,
    trial_table,
)
from charlstm.analysis.plots import (
    OPTUNA_VIEWS,
    SIZE_KEYS,
    explain,
    figure_png,
    metric_label,
    optuna_figure,
    plot_at_equal_compute,
    plot_confirmation,
    plot_curves,
    plot_scaling,
    plot_scaling_answer,
    plot_states,
    plot_train_and_val,
    plot_vs_config,
    plot_vs_params,
    png_data_uri,
)

__all__ = [
    "LN2", "OPTUNA_VIEWS", "SIZE_KEYS", "STATE_ORDER", "PowerLaw", "Scaling", "explain", "figure_png", "fit_power_law",
    "load_curves", "load_runs", "load_study", "metric_label", "optuna_figure", "pareto_front", "plot_confirmation", "plot_curves",
    "plot_at_equal_compute", "plot_scaling", "plot_scaling_answer", "plot_states", "plot_train_and_val", "plot_vs_config", "plot_vs_params", "png_data_uri", "scaling_fit", "scaling_note",
    "state_summary", "study_experiment", "study_tracking_uri", "top_samples", "trial_table",
]
