"""The MLflow Model a run logs (charlstm.serving): what it takes, what it returns, and how it
refuses bad input (a 400 with the reason, never a server error)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from charlstm import serving
from charlstm.config import load_config
from charlstm.tracking import run_url
from charlstm.train import train
from tests.conftest import EXPERIMENTS, smoke_overrides


@pytest.fixture
def model(corpus, tmp_path):
    result = train(load_config(EXPERIMENTS / "smoke.yaml", smoke_overrides(corpus)), progress=False)
    serving.save_model(result.run_dir / "best.pt", tmp_path / "model")
    return mlflow.pyfunc.load_model(str(tmp_path / "model"))


def test_the_model_generates_from_each_row_with_defaults(model, tmp_path):
    texts = model.predict(pd.DataFrame({"prime": ["ROMEO:", "O"], "length": [12, 5], "seed": [1, 1]}))
    assert texts[0].startswith("ROMEO:") and texts[1].startswith("O") and [len(t) for t in texts] == [18, 6]
    again = model.predict(pd.DataFrame({"prime": ["ROMEO:"], "length": [12], "seed": [1]}))
    assert again[0] == texts[0]  # a seed makes a row reproducible
    requirements = (tmp_path / "model" / "requirements.txt").read_text()
    assert "torch==" in requirements and "+cpu" not in requirements
    assert not list((tmp_path / "model" / "code").rglob("__pycache__"))


@pytest.mark.parametrize("row, reason", [
    ({"prime": "\u00e9"}, "outside the model's vocab"),
    ({"prime": "RO", "length": 10**6}, "ask for less"),
    ({"prime": "RO", "top_k": 0}, "top_k >= 1"),
])
def test_bad_input_is_an_invalid_parameter_with_the_reason(model, row, reason):
    with pytest.raises(MlflowException, match=reason) as e:
        model.predict(pd.DataFrame([row]))
    assert e.value.get_http_status_code() == 400


def test_a_run_url_never_carries_credentials_or_a_query():
    url = run_url("https://user:secret@mlflow.example.org:8443/base/?token=abc", "3", "f" * 32)
    assert url == f"https://mlflow.example.org:8443/base/#/experiments/3/runs/{'f' * 32}"
    assert run_url("sqlite:///mlflow.db", "3", "f" * 32) is None
