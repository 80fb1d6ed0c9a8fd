"""A run's files in the store: its checkpoints fetched back, the copy a retry on another machine
resumes from, how much a run keeps, deleting it, and a study report on its parent run."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import suppress
from pathlib import Path

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from charlstm import names
from charlstm.errors import TrackingError, redact
from charlstm.tracking.store import client_for, store_errors


def download_checkpoint(uri: str | None, run_id: str, name: str = names.BEST_PT, dst: Path | None = None) -> Path:
    """Fetch ``checkpoints/<name>`` of an MLflow run into ``dst`` (default: a new temporary
    directory, left for the caller: a model loaded from it may read it later)."""
    client = client_for(uri)
    try:
        client.get_run(run_id)
    except Exception:
        raise TrackingError(f"no MLflow run {run_id} in {redact(client.tracking_uri)}") from None
    dst = str(dst) if dst is not None else tempfile.mkdtemp(prefix="charlstm-")
    try:
        return Path(client.download_artifacts(run_id, f"{names.ARTIFACT_CHECKPOINTS}/{name}", dst))
    except Exception:
        raise TrackingError(f"MLflow run {run_id} has no {names.ARTIFACT_CHECKPOINTS}/{name} artifact") from None


def fetch_travelled(uri: str | None, run_id: str, folder: Path) -> Path | None:
    """A run's travelled ``resume/last.pt`` (see ``MLflowTracker.checkpoint_saved``) fetched
    as ``folder/last.pt``, else the ``checkpoints/last.pt`` a run that ended uploaded (it
    retired its travelled copy then); None when it has neither or the store cannot give them."""
    for artifact in (names.ARTIFACT_TRAVEL, f"{names.ARTIFACT_CHECKPOINTS}/{names.LAST_PT}"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                got = Path(client_for(uri).download_artifacts(run_id, artifact, tmp))
                folder.mkdir(parents=True, exist_ok=True)
                return Path(shutil.move(got, folder / names.LAST_PT))
        except Exception:  # (no such artifact, a store that is down: the next, or the retry starts over)
            continue
    return None


TRAVELLED = names.ARTIFACT_TRAVEL.rsplit("/", 1)[0]  # the folder of a run's travelled copy


def retire_travelled(uri: str | None, run_id: str) -> None:
    """Delete a run's travelled copy once no retry will read it; a store that cannot says
    nothing here (``charlstm gc`` and ``doctor`` list what is left)."""
    with suppress(TrackingError):
        delete_artifacts(uri, run_id, TRAVELLED)


def artifact_bytes(uri: str | None, run_id: str, path: str) -> int:
    """The size of a run's artifacts under ``path`` (0 when there are none)."""
    with store_errors(f"listing the artifacts of run {run_id}"):
        return sum(a.file_size or 0 for a in client_for(uri).list_artifacts(run_id, path) if not a.is_dir)


def delete_artifacts(uri: str | None, run_id: str, path: str) -> None:
    """Delete a run's artifacts under ``path``. MlflowClient has no public way: the artifact
    repository behind the run's artifact URI does (local, proxied or cloud stores alike); this
    is the one place charlstm asks it."""
    with store_errors(f"deleting {path} of run {run_id}"):
        repo = get_artifact_repository(client_for(uri).get_run(run_id).info.artifact_uri)
        repo.delete_artifacts(path)


def log_report(uri: str | None, run_id: str, directory: Path, artifact_path: str = names.ARTIFACT_REPORT) -> None:
    """A study report (HTML, Markdown, plots) as artifacts of the study's parent run."""
    client_for(uri).log_artifacts(run_id, str(directory), artifact_path)
