"""charlstm.analysis: runs and studies read back into pandas, fronts, fits and plots."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest

from charlstm import analysis
from charlstm.errors import CharlstmError
from tests.conftest import study_with_every_state


def test_pareto_front_keeps_only_undominated_points():
    df = pd.DataFrame({
        "params_total": [100, 200, 300, 400, 150, 500],
        "val_bpc": [3.0, 2.5, 2.7, 2.0, 3.1, float("nan")],
    })
    front = analysis.pareto_front(df)
    # 300 is beaten by 200 (smaller and better), 150 by 100; the NaN row is never on it
    assert front.tolist() == [True, True, False, True, False, False]
    # with states, only complete trials make the front (a pruned trial's value is not final)
    df["state"] = ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert analysis.pareto_front(df).tolist() == [True, False, True, True, False, False]


def test_power_law_fit_recovers_a_known_exponent():
    x = np.geomspace(1e4, 1e6, 7)
    law = analysis.fit_power_law(x, 3.0 * x**-0.12)
    assert law.exponent == pytest.approx(-0.12, abs=1e-9)
    assert law.coef == pytest.approx(3.0, rel=1e-9)
    assert law.r2 == pytest.approx(1.0)
    assert law.x_max == pytest.approx(1e6)
    assert float(law(1e7)) == pytest.approx(3.0 * 1e7**-0.12)
    assert "10x the largest" in analysis.scaling_note(analysis.Scaling(law))
    with pytest.raises(CharlstmError, match="two distinct points"):
        analysis.fit_power_law([1e4, 1e4, float("nan")], [2.0, 2.1, 1.0])


def scaling_runs(params, chars, bpc) -> pd.DataFrame:
    return pd.DataFrame({"trial": range(len(params)), "state": "COMPLETE", "baseline": False,
                         "params_total": params, "chars_seen": chars, "val_bpc": bpc})


def test_scaling_is_refused_for_equal_seconds_and_drawn_for_equal_chars():
    """The report's and 03-scaling's rule: a fit only over trials that saw the same text."""
    params = np.geomspace(2e4, 2e6, 6)
    law_bpc = 9.0 * params**-0.12  # an honest power law, with a little noise below
    noisy = law_bpc * (1 + 0.01 * np.array([1, -1, 0.5, -0.5, 0.2, -0.2]))
    # equal seconds: the larger models saw ~25x less text (chars ~ 1 / params^0.7)
    equal_seconds = scaling_runs(params, 5e7 * (params / 2e4) ** -0.7, noisy)
    fit = analysis.scaling_fit(equal_seconds, "params_total", "val_bpc")
    assert fit.law is None and "different amounts of text" in fit.reason
    note = analysis.scaling_note(fit)
    assert note.startswith("no fit of val bits/char against parameters is shown") and "max_chars" in note
    with pytest.raises(CharlstmError, match="no scaling fit"):
        analysis.plot_scaling(equal_seconds, fit)
    # equal characters (a max_chars budget: the last batch overshoots it a little)
    equal_chars = scaling_runs(params, 1_000_000 + np.arange(6) * 1_000, noisy)
    fit = analysis.scaling_fit(equal_chars, "params_total", "val_bpc")
    assert fit.law is not None and fit.law.exponent == pytest.approx(-0.12, abs=0.01)
    assert "predicts" in analysis.scaling_note(fit)
    assert analysis.figure_png(analysis.plot_scaling(equal_chars, fit))[:4] == b"\x89PNG"
    # the other refusals: too few trials, a rising curve, a poor fit
    assert "a fit needs 5" in analysis.scaling_fit(equal_chars.head(4)).reason
    rising = equal_chars.assign(val_bpc=law_bpc[::-1])
    assert "does not fall" in analysis.scaling_fit(rising).reason
    scattered = equal_chars.assign(val_bpc=[2.0, 1.6, 2.1, 1.7, 1.65, 1.72])
    assert "poor" in analysis.scaling_fit(scattered).reason


def test_runs_curves_and_table_cover_every_state(corpus, tmp_path):
    study, uri = study_with_every_state(corpus, tmp_path)
    runs = analysis.load_runs("charlstm", study="tiny", tracking_uri=uri)
    states = dict(zip(runs["trial"], runs["state"], strict=True))
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "PRUNED", 3: "COMPLETE", 4: "RUNNING"}
    assert runs["baseline"].tolist() == [True, False, False, False, False]
    assert runs.loc[runs["trial"] == 3, "model.hidden_size"].item() == 24
    assert runs["params_total"].notna().sum() == 4  # the FAIL trial died before logging them
    done = runs[runs["state"] == "COMPLETE"]
    assert (done["train_flops"] > 0).all() and (done["chars_seen"] == 1536).all()

    curves = analysis.load_curves(runs, tracking_uri=uri)
    per_run = curves.groupby("trial")["chars_seen"].apply(list).to_dict()
    assert per_run == {0: [512, 1024, 1536], 3: [512, 1024, 1536], 4: [512, 1024]}
    assert (curves["wall_seconds"] >= 0).all()

    table = analysis.trial_table(study, runs)
    running = table[table["state"] == "RUNNING"].iloc[0]
    assert running["value"] == pytest.approx(3.6 / 0.6931)  # its latest MLflow evaluation
    assert running["model.hidden_size"] == 12
    summary = analysis.state_summary(table).set_index("state")
    assert summary.loc["all", "trials"] == 5
    assert summary.loc["COMPLETE", "chars_seen"] == 3072
    assert summary.loc["RUNNING", "chars_seen"] == 1024

    # every plot draws with all states present, and the size plot has its Pareto front
    figs = [analysis.plot_curves(curves, "chars_seen"), analysis.plot_curves(curves, "wall_seconds"),
            analysis.plot_vs_params(runs), analysis.plot_vs_config(runs), analysis.plot_states(runs),
            analysis.plot_train_and_val(analysis.load_curves(runs, "train_loss", tracking_uri=uri), curves)]
    labels = [t.get_text() for t in figs[2].axes[0].get_legend().get_texts()]
    assert {"complete", "pruned", "seed baseline", "Pareto front (complete)"} <= set(labels)
    assert len(figs[3].axes) == 3
    for fig in figs:
        assert analysis.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    for view in analysis.OPTUNA_VIEWS:
        fig = analysis.optuna_figure(study, view)
        assert not isinstance(fig, str), (view, fig)
        analysis.figure_png(fig)


def test_optuna_views_explain_what_they_cannot_draw():
    study = optuna.create_study()
    reason = analysis.optuna_figure(study, "hyperparameter importances")
    assert isinstance(reason, str) and reason.startswith("not drawn")
    study.optimize(lambda t: t.suggest_float("train.lr", 1e-3, 1e-2), n_trials=2)
    assert "not in this study's search space" in analysis.optuna_figure(study, "contour")


def test_unknown_study_and_experiment_are_one_line_errors(tmp_path):
    with pytest.raises(CharlstmError, match="no study 'nope'"):
        analysis.load_study("nope", str(tmp_path / "journal.log"))
    with pytest.raises(CharlstmError, match="no MLflow experiment 'nope'"):
        analysis.load_runs("nope", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert math.isclose(analysis.LN2, math.log(2))
