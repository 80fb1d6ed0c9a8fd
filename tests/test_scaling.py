"""The iso-compute fits (charlstm.scaling): a known law is recovered from synthetic profiles,
and each degenerate case is refused with its sentence."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from charlstm import scaling

BUDGETS = [4.0, 12.0, 36.0]
SIZES = np.geomspace(1e4, 3e6, 12)
N0, EXPONENT, L0, L_EXPONENT, CURVATURE = 1e5, 0.5, 2.6, -0.05, 0.15


def true_n(c):
    return N0 * (c / 4) ** EXPONENT


def true_l(c):
    return L0 * (c / 4) ** L_EXPONENT


def profiles_frame(noise: float, seed: int = 1, budgets=BUDGETS, sizes=SIZES) -> pd.DataFrame:
    """One trial per size and budget: val = L_opt(C) + k (log10 N/N_opt(C))^2 + noise."""
    rng = np.random.default_rng(seed)
    rows = [{"trial": i, "budget": c, "params_total": n, "final": False, "baseline": False, "train_flops": math.nan,
             "value": true_l(c) + CURVATURE * math.log10(n / true_n(c)) ** 2 + rng.normal(0, noise)}
            for i, (c, n) in enumerate((c, n) for c in budgets for n in sizes)]
    return pd.DataFrame(rows)


def test_noise_free_profiles_give_back_the_law_exactly():
    a = scaling.analyse(profiles_frame(0.0), BUDGETS, 144.0)
    for p in a.profiles:
        assert p.ok, p.reason
        assert p.n_opt == pytest.approx(true_n(p.budget), rel=1e-6)
        assert p.l_opt == pytest.approx(true_l(p.budget), rel=1e-6)
    assert a.n_law.exponent == pytest.approx(EXPONENT, abs=1e-6)
    assert a.l_law.exponent == pytest.approx(L_EXPONENT, abs=1e-6)
    assert a.prediction.n_opt == pytest.approx(true_n(144.0), rel=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_known_law_is_recovered_through_noise_with_intervals_around_it(seed):
    a = scaling.analyse(profiles_frame(0.01, seed), BUDGETS, 144.0)
    for p in a.profiles:
        assert p.ok, p.reason
        lo, hi = p.n_interval
        assert lo < p.n_opt < hi
        assert p.n_opt == pytest.approx(true_n(p.budget), rel=0.25)
        assert 0.004 < p.noise < 0.02  # the residuals' sd is about the noise put in
    lo, hi = a.n_law.exponent_interval
    assert lo < a.n_law.exponent < hi and abs(a.n_law.exponent - EXPONENT) < 0.1
    pr = a.prediction
    assert pr.ok and pr.n_interval[0] < pr.n_opt < pr.n_interval[1]
    assert pr.val_interval[0] <= pr.val <= pr.val_interval[1]
    assert pr.val_interval[0] < true_l(144.0) < pr.val_interval[1]  # the truth is inside the predicted val
    assert pr.check(true_l(144.0)).startswith("held: measured")
    assert pr.check(pr.val_interval[1] + 0.05).startswith("did not hold: measured") and "above" in pr.check(9.0)


def test_intervals_widen_with_the_noise():
    quiet = scaling.analyse(profiles_frame(0.005), BUDGETS, 144.0).profiles[1]
    loud = scaling.analyse(profiles_frame(0.03), BUDGETS, 144.0).profiles[1]
    width = lambda p: math.log(p.n_interval[1] / p.n_interval[0])  # noqa: E731
    assert width(loud) > 2 * width(quiet)


def one_profile(values, sizes=None) -> pd.DataFrame:
    sizes = SIZES[: len(values)] if sizes is None else sizes
    return pd.DataFrame({"params_total": sizes, "value": values, "baseline": False, "trial": range(len(values))})


def test_too_few_sizes_is_refused_with_its_sentence():
    p = scaling.fit_profile(4.0, one_profile([2.6, 2.5, 2.7]))
    assert not p.ok and "3 size(s) complete, a profile needs 4 or more" in p.reason


@pytest.mark.parametrize("values, side", [([2.9, 2.8, 2.7, 2.6, 2.5], "above"), ([2.5, 2.6, 2.7, 2.8, 2.9], "below")])
def test_an_optimum_at_the_edge_of_the_range_is_refused(values, side):
    p = scaling.fit_profile(4.0, one_profile(values))
    assert not p.ok and f"extend scaling.hidden_sizes {side} it" in p.reason


def test_a_profile_with_no_minimum_is_refused():
    p = scaling.fit_profile(4.0, one_profile([2.0, 2.5, 1.9, 2.5, 2.0]))
    assert not p.ok and "the profile has no minimum" in p.reason


def test_an_interval_as_wide_as_the_range_is_refused():
    # flat and noisy everywhere: the minimum could be anywhere in the range
    p = scaling.fit_profile(4.0, one_profile([2.56, 2.50, 2.57, 2.49, 2.58, 2.50, 2.56, 2.55], SIZES[:8]))
    assert not p.ok and "the optimum's interval is as wide as the searched range" in p.reason, p.reason


def test_an_interval_reaching_an_end_of_the_range_is_refused():
    # the best is the second size and the noise moves the minimum onto the first: not pinned inside the range
    p = scaling.fit_profile(4.0, one_profile([2.49, 2.48, 2.53, 2.50, 2.60, 2.62, 2.75, 2.80], SIZES[:8]))
    assert not p.ok and "reaches the smallest size searched: extend scaling.hidden_sizes below it" in p.reason, p.reason


def test_laws_and_predictions_need_three_budgets_with_an_optimum():
    frame = profiles_frame(0.0)
    frame.loc[frame["budget"] == 12.0, "value"] = np.linspace(2.9, 2.5, len(SIZES))  # falls to the largest
    a = scaling.analyse(frame, BUDGETS, 144.0)
    assert not a.profiles[1].ok
    assert "2 budget(s) have an optimum and a law needs 3" in a.n_law.reason and "budget 12" in a.n_law.reason
    assert not a.prediction.ok and a.prediction.check(2.0) == "no prediction to check"
    lines = scaling.summary(a)
    assert any(line.startswith("at 12 s: no optimum: the best trial is at the largest size") for line in lines)
    assert any(line.startswith("no prediction for 144 s") for line in lines)


@pytest.mark.parametrize("check_epochs, says", [(1.5, True), (0.8, False)])
def test_a_check_that_read_its_text_more_often_than_the_search_says_so(check_epochs, says):
    frame = profiles_frame(0.01).assign(epochs=0.5)
    final = {"trial": 99, "budget": 144.0, "final": True, "baseline": False, "params_total": 5e5,
             "train_flops": math.nan, "value": 2.3, "epochs": check_epochs}
    a = scaling.analyse(pd.concat([frame, pd.DataFrame([final])], ignore_index=True), BUDGETS, 144.0)
    assert a.measured == 2.3 and a.check.startswith("did not hold")
    assert ("read the training split 1.5 times, each budget's best trial at most 0.5 times" in a.check) is says


def test_an_exponent_whose_interval_includes_zero_says_so():
    moving = scaling.Law("N_opt", 1e4, 0.4, (0.2, 0.6), (4.0, 12.0, 36.0))
    still = scaling.Law("N_opt", 1e4, 0.05, (-0.1, 0.2), (4.0, 12.0, 36.0))
    assert "does not measurably move" not in moving.describe()
    assert "the interval includes 0: N_opt does not measurably move with compute here" in still.describe()


def test_the_predicted_config_has_the_parameter_count_nearest_the_optimum():
    from charlstm.model import count_params

    pr = scaling.Prediction(144.0, 400_000.0, (3e5, 5e5), 2.2, (2.1, 2.3))
    like = pd.Series({"model.embedding_dim": 40, "data.seq_length": 96, "train.max_seconds": 36.0, "value": 2.3})
    cfg = scaling.predicted_config(pr, like, vocab_size=80)
    h = cfg["model.hidden_size"]
    assert h % scaling.SIZE_STEP == 0 and cfg["data.seq_length"] == 96 and cfg["model.embedding_dim"] == 40
    near = [abs(math.log(count_params(80, 40, x)["total"] / 4e5)) for x in (h - 8, h, h + 8)]
    assert near[1] == min(near)


def test_a_stored_prediction_round_trips_and_is_what_the_answer_shows():
    a = scaling.analyse(profiles_frame(0.01), BUDGETS, 144.0)
    stored = a.prediction.as_dict()
    again = scaling.analyse(profiles_frame(0.02, seed=9), BUDGETS, 144.0, stored=stored)
    assert again.prediction == scaling.Prediction.from_dict(stored) == a.prediction


# ---------------------------------------------------------------------------------------------
# A scaling study: its grid queued, every trial evaluated eval_points times, and its check


def scaling_study(corpus, **extra) -> dict:
    from tests.conftest import tiny_study_dict

    d = tiny_study_dict(corpus, scaling={"budget": "max_steps", "budgets": [8, 16], "hidden_sizes": [8, 16, 32],
                                         "predict": 2, "bootstrap": 200}, n_trials=None, trial_budget={})
    d["overrides"].update({"train.eval_points": 5, "train.eval_slice_chars": 100})
    d["space"].pop("model.hidden_size")
    d.update(extra)
    return d


def test_a_scaling_study_queues_its_grid_largest_budget_first_and_leads_with_the_answer(corpus, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from charlstm.cli import main
    from charlstm.sweep.spec import parse_sweep
    from charlstm.sweep.workers import run_sweep

    study = run_sweep(parse_sweep(scaling_study(corpus)))
    out = capsys.readouterr().out
    cells = [(t.params["train.max_steps"], t.params["model.hidden_size"]) for t in study.trials]
    assert cells == [(16, 8), (16, 16), (16, 32), (8, 8), (8, 16), (8, 32)]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    client = MlflowClient(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    for t in study.trials:
        history = client.get_metric_history(t.user_attrs["mlflow_run_id"], "val_chars")
        read = [m.value for m in sorted(history, key=lambda m: m.step)]
        assert len(read) == 5 and read[:4] == [100] * 4 and read[4] > 100  # the last reads the whole split
        values = [m.value for m in client.get_metric_history(t.user_attrs["mlflow_run_id"], "val_bpc")]
        assert t.value == pytest.approx(values[-1])  # its value is the whole-split evaluation, not a slice's
        assert t.user_attrs["train_flops"] > 0
    # two budgets: no law, so no check; the answer says why, before the leaderboard
    assert out.index("the answer (") < out.index("leaderboard")
    assert "at 16 steps:" in out and "no prediction for 32 steps:" in out and "a law needs 3" in out
    assert not any(t.user_attrs.get("final") for t in study.trials)
    assert main(["report", "tiny", "--no-samples", "--no-log", "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "tiny" / "report.md").read_text()
    assert page.index("## The answer") < page.index("## Leaderboard") and "plots/answer.png" in page
    assert "evaluations before its last read the first 100 characters" in page
    html = (tmp_path / "r" / "tiny" / "report.html").read_text()
    assert html.index("<h2>The answer</h2>") < html.index("alt='the scaling answer'") < html.index("<h2>Leaderboard</h2>")
    assert "machine: " in html and "GEMM peak" in html and "per trial" in html
    # the notebooks draw it too: 03's answer and picture, 02's settings at equal compute
    import nbformat

    assert main(["notebooks", "tiny", "--out", str(tmp_path / "nb"), "--only", "02-study-insights",
                 "--only", "03-scaling", "-q"]) == 0
    for name, needle in (("03-scaling", "no prediction for 32 steps"), ("02-study-insights", "budget 16:")):
        nb = nbformat.read(tmp_path / "nb" / "tiny" / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name
        assert needle in "".join(o.get("text", "") for o in outputs), name
        assert any("image/png" in o.get("data", {}) for o in outputs), name


def test_the_check_trains_the_predicted_config_at_the_final_budget(corpus, tmp_path):
    import optuna

    from charlstm.model import count_params
    from charlstm.names import STUDY_PREDICTION
    from charlstm.sweep.spec import parse_sweep, vocab_size
    from charlstm.sweep.study import next_action

    d = scaling_study(corpus)
    d["scaling"].update(budgets=[10, 30, 90], hidden_sizes=[8, 12, 16, 24, 32, 48, 64, 96], predict=3)
    spec = parse_sweep(d)
    vocab = vocab_size(spec)
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("target_trials", 24)
    for budget in (10, 30, 90):
        n_opt = 2000 * (budget / 10) ** 0.5
        for h in (8, 12, 16, 24, 32, 48, 64, 96):
            params = {"train.max_steps": budget, "model.hidden_size": h, "model.embedding_dim": 8, "data.seq_length": 16}
            study.enqueue_trial(params)
            trial = study.ask()
            for key, dist in spec.space.items():
                dist.suggest(trial, key)
            n = count_params(vocab, 8, h)["total"]
            trial.set_user_attr("params_total", n)
            study.tell(trial, 3.0 - 0.1 * math.log(budget) + 0.2 * math.log10(n / n_opt) ** 2)
    assert next_action(study, False, spec, str(tmp_path / "journal.log")) == "run"
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["final"] is True
    fixed = waiting[0].system_attrs["fixed_params"]
    prediction = scaling.Prediction.from_dict(study.user_attrs[STUDY_PREDICTION])
    assert prediction.ok and prediction.n_opt == pytest.approx(2000 * 27**0.5, rel=0.05)
    assert fixed["train.max_steps"] == 270 and fixed["data.seq_length"] == 16
    got = count_params(vocab, 8, fixed["model.hidden_size"])["total"]
    assert abs(math.log(got / prediction.n_opt)) < math.log(1.5)


def test_sampler_seed_from_the_command_line_is_the_one_the_study_stores(corpus, tmp_path):
    import yaml

    from charlstm.cli import main
    from charlstm.sweep.store import load_study, open_storage
    from tests.conftest import tiny_study_dict

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(corpus, n_trials=1, enqueue_baseline=False)))
    assert main(["sweep", str(path), "--sampler-seed", "7", "--storage", str(tmp_path / "s.log")]) == 0
    study = load_study("tiny", open_storage(str(tmp_path / "s.log")))
    assert study.user_attrs["sweep"]["sampler"] == {"name": "random", "seed": 7}


def test_a_scaling_study_before_any_trial_completes_reports_sentences_and_no_picture(corpus):
    from charlstm.report import scaling_answer
    from charlstm.sweep.spec import parse_sweep
    from charlstm.sweep.study import setup_study

    d = scaling_study(corpus, final={"max_wall_seconds": 60})  # (a final without the scaling budget gets it)
    spec = parse_sweep(d)
    assert spec.final == {"max_steps": 32, "max_wall_seconds": 60}
    study, _ = setup_study(spec, None, None, None, None)
    assert len(study.trials) == 6  # the grid, queued
    lines, png = scaling_answer(study, study.user_attrs["sweep"], "val_bpc")
    assert png is None and lines[0] == "at 8 steps: no complete trial yet"
