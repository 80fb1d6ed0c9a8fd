"""Shared fixtures: every test works in its own temp directory with its own tiny corpus and
its own MLflow store, so no test sees another's state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SHARED_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# A small public-domain-style corpus written by the tests themselves (no download, no shared
# state): a few speeches repeated so that a tiny model can learn something in a few steps.
SPEECHES = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name.

MERCUTIO:
A plague o' both your houses!
They have made worms' meat of me.

"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run each test in a fresh directory with MLflow pointed at a database inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield


@pytest.fixture
def corpus(tmp_path) -> Path:
    """About 8 KB of text: enough for smoke.yaml's batches and a validation split."""
    path = tmp_path / "corpus.txt"
    path.write_text(SPEECHES * 20, encoding="utf-8")
    return path


def smoke_overrides(corpus: Path, **extra) -> dict:
    """experiments/smoke.yaml shrunk further for a unit test, pointed at ``corpus``."""
    out = {"data.corpus": str(corpus), "train.sample_length": 20}
    out.update(extra)
    return out


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}, **extra)
    return env
