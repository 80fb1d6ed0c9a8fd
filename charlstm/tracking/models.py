"""A run's model: its best checkpoint logged as an MLflow Model (``charlstm.serving``), the best
trial of a study registered as ``charlstm-<study>@best``, and a model loaded back from a file,
a run or a registered version."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from charlstm import checkpoint, names, serving
from charlstm.config import Config
from charlstm.data import Vocab
from charlstm.errors import CharlstmError, TrackingError, first_line, redact
from charlstm.model import CharacterLSTM
from charlstm.tracking.artifacts import download_checkpoint
from charlstm.tracking.store import RUN_ID, client_for, store_errors


def log_model(uri: str | None, run_id: str, ckpt_path: Path) -> None:
    """The MLflow Model of a checkpoint (``charlstm.serving``) as the run's ``model/`` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        serving.save_model(ckpt_path, Path(tmp) / names.ARTIFACT_MODEL)
        client_for(uri).log_artifacts(run_id, str(Path(tmp) / names.ARTIFACT_MODEL), names.ARTIFACT_MODEL)


def has_model(uri: str | None, run_id: str) -> bool:
    """Whether a run logged its MLflow Model (``model/MLmodel``)."""
    try:
        return any(a.path.endswith("MLmodel") for a in client_for(uri).list_artifacts(run_id, names.ARTIFACT_MODEL))
    except MlflowException:
        return False


def register_best(uri: str | None, name: str, run_id: str, tags: dict[str, str], description: str) -> str:
    """Register the best trial's MLflow Model as a version of ``name`` with alias ``best``, its
    ``tags`` and one-line ``description``; a run registered before gets its version back rather
    than a new one. The run's commit and corpus digest join the tags."""
    client = client_for(uri)
    with store_errors(f"registering {name}"):
        try:
            client.get_registered_model(name)
        except Exception:
            client.create_registered_model(name, description="charlstm: the best trial of each run of a study")
        run = client.get_run(run_id)
        if not has_model(uri, run_id):  # a run trained before models were logged: log it now
            log_model(uri, run_id, download_checkpoint(uri, run_id))
        source = f"{run.info.artifact_uri}/{names.ARTIFACT_MODEL}"
        mine = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                if v.source == source]
        if mine:
            version = min(mine, key=lambda v: int(v.version)).version
        else:
            version = client.create_model_version(name, source=source, run_id=run_id, description=description).version
        run_tags = {"commit": names.TAG_COMMIT, names.STUDY_CORPUS: names.TAG_CORPUS}
        tags = {**tags, **{k: run.data.tags[t] for k, t in run_tags.items() if t in run.data.tags}}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))
        client.set_registered_model_alias(name, names.MODEL_ALIAS, version)
    return version


def registered_runs(uri: str | None, name: str) -> set[str]:
    """The runs behind every version of registered model ``name`` (none if it is not there)."""
    with store_errors(f"reading registered model {name}"):
        return {v.run_id for v in client_for(uri).search_model_versions(f"name = '{name}'")}


def load_registered(uri: str | None, model_uri: str) -> serving.CharlstmModel:
    """A registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) as MLflow
    loads it for anyone: the same pyfunc that ``mlflow models serve`` runs."""
    client = client_for(uri)  # and points MLflow's registry at the same store
    try:
        return serving.load(model_uri)
    except MlflowException as e:
        raise TrackingError(f"{model_uri}: cannot load it from {redact(client.tracking_uri)}: {first_line(e)}") from None


def _registered_checkpoint(uri: str | None, model_uri: str) -> Path:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> its run's ``best.pt``."""
    client = client_for(uri)
    name, sep, alias = model_uri.removeprefix("models:/").partition("@")
    try:
        version = (client.get_model_version_by_alias(name, alias) if sep
                   else client.get_model_version(*name.rsplit("/", 1)))
    except Exception:
        raise TrackingError(f"{model_uri}: no such registered model version in {redact(client.tracking_uri)}") from None
    return download_checkpoint(uri, version.run_id)


def load_model(uri: str | None, source: str, device: Any = "cpu") -> tuple[CharacterLSTM, Vocab, Config]:
    """``source``: a checkpoint file or run directory, an MLflow run id, or a ``models:/`` URI.
    Returns (model, vocab, config)."""
    m = None
    if source.startswith("models:/"):
        try:
            m = load_registered(uri, source)
        except TrackingError:  # a version registered before versions were MLflow Models
            path = _registered_checkpoint(uri, source)
    elif Path(source).exists():
        path = Path(source)
    elif RUN_ID.match(source):
        if has_model(uri, source):  # the run's MLflow Model: it outlives charlstm gc
            m = serving.load(f"runs:/{source}/{names.ARTIFACT_MODEL}")
        else:
            path = download_checkpoint(uri, source)
    else:
        raise CharlstmError(f"{source}: not a checkpoint file, run directory, MLflow run id or models:/ URI")
    if m is not None:
        return m.model.to(device), m.vocab, m.cfg
    return checkpoint.load_model(path, device)
