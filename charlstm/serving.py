"""A trained model as an MLflow Model: a ``pyfunc`` that turns prompts into text, so that
``mlflow.pyfunc.load_model``, ``mlflow models serve`` and ``charlstm generate`` load the same
thing. Code-based (MLflow's "models from code", ``mlflow_model.py``): nothing is pickled; the
weights, vocab and config travel as a model-only checkpoint, charlstm's own code as the model's
``code`` folder, and the pip requirements name only what installs from PyPI.

Input: a DataFrame with a ``prime`` column and optional ``length`` (characters to generate
after the prime), ``temperature``, ``top_k`` and ``seed``; output: one string per row, the
prime followed by ``length`` generated characters.
"""

from __future__ import annotations

import importlib.metadata
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, Schema

from charlstm import checkpoint, names
from charlstm.errors import CharlstmError
from charlstm.sample import generate

CHECKPOINT = "checkpoint"  # the model's one artifact: a model-only checkpoint
DEFAULTS: dict[str, Any] = {"length": names.GEN_LENGTH, "temperature": names.GEN_TEMPERATURE, "top_k": None,
                            "seed": None}
MAX_LENGTH = 100_000  # characters per row: one request must not hold the server for minutes
# integers are "long" (JSON numbers without a point); give a column in every row or in none:
# a missing value in one row turns the column into floats, which MLflow will not narrow
SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec("string", "prime"),
        ColSpec("long", "length", required=False),
        ColSpec("double", "temperature", required=False),
        ColSpec("long", "top_k", required=False),
        ColSpec("long", "seed", required=False),
    ]),
    outputs=Schema([ColSpec("string")]),
)
INPUT_EXAMPLE = pd.DataFrame({"prime": ["ROMEO:"], "length": [40], "temperature": [0.8], "seed": [0]})
# what the model's code imports (charlstm itself travels in the model's code folder)
REQUIREMENTS = ("torch", "mlflow", "pandas", "numpy", "pyyaml")


class CharlstmModel(mlflow.pyfunc.PythonModel):
    """Generates text from a charlstm checkpoint, one row of the input per prompt."""

    def load_context(self, context) -> None:
        self.model, self.vocab, self.cfg = checkpoint.load_model(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        try:
            return [self.generate(**row) for row in model_input.to_dict("records")]
        except CharlstmError as e:  # bad input: a 400 with the reason, not a server error
            raise MlflowException(str(e), INVALID_PARAMETER_VALUE) from None

    def generate(self, prime: str | None, **options: Any) -> str:
        """One continuation of ``prime``; options missing or NaN take ``DEFAULTS``."""
        o = {k: v if options.get(k) is None or pd.isna(options[k]) else options[k] for k, v in DEFAULTS.items()}
        if not isinstance(prime, str):
            raise CharlstmError("every row needs a prime (text to start from)")
        if int(o["length"]) > MAX_LENGTH:
            raise CharlstmError(f"length {int(o['length'])} > {MAX_LENGTH:,}: ask for less per row")
        as_int = lambda v: None if v is None else int(v)  # noqa: E731
        return generate(self.model, self.vocab, prime, int(o["length"]), float(o["temperature"]),
                        as_int(o["top_k"]), seed=as_int(o["seed"]))[0]


def requirements() -> list[str]:
    """Pins of the running versions, without local labels (``2.13.0+cpu`` -> ``2.13.0``),
    which PyPI would not know."""
    pins = [f"{name}=={re.sub(r'[+].*$', '', importlib.metadata.version(name))}" for name in REQUIREMENTS]
    if importlib.metadata.version("torch").endswith("+cpu"):  # not PyPI's multi-GB CUDA build
        pins.insert(0, "--extra-index-url https://download.pytorch.org/whl/cpu")
    return pins


def save_model(ckpt_path: Path, path: Path) -> None:
    """Write the MLflow Model of the checkpoint at ``ckpt_path`` into the new folder ``path``."""
    package = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"  # without the optimizer and counters: a third the size
        checkpoint.save(weights, checkpoint.model_only(checkpoint.load(ckpt_path)))
        mlflow.pyfunc.save_model(
            str(path), python_model=str(package / "mlflow_model.py"), artifacts={CHECKPOINT: str(weights)},
            code_paths=[str(package)], signature=SIGNATURE, input_example=INPUT_EXAMPLE,
            pip_requirements=requirements(),
        )
    for cache in (path / "code").rglob("__pycache__"):  # bytecode of this Python only
        for f in cache.iterdir():
            f.unlink()
        cache.rmdir()


def load(model_uri: str) -> CharlstmModel:
    """The ``CharlstmModel`` behind a pyfunc URI (``models:/...``, ``runs:/...``, a folder)."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
