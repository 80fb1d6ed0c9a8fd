"""Workers of a study on a cluster, through submitit: a Slurm job array of N ``charlstm worker``
processes (or N local processes with ``cluster='local'``, which runs the same code without a
scheduler). The study must already exist (``charlstm sweep FILE --n-trials 0`` sets one up) in
a storage every node reaches: PostgreSQL, or a journal file on a shared file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from charlstm.errors import ConfigError
from charlstm.sweep.store import is_rdb, load_study, open_storage
from charlstm.sweep.workers import run_worker


def worker_job(study: str, storage: str, tracking_uri: str | None, threads: int, index: int) -> int:
    """What one job runs (submitit pickles it by reference): a worker of the study until its
    target; returns the trials it ran."""
    return run_worker(study, storage, tracking_uri, threads, index)


def launch(study: str, storage: str, tracking_uri: str | None, workers: int, cluster: str | None,
           folder: str | Path, threads: int = 1, slurm: dict[str, Any] | None = None) -> list:
    """Submit ``workers`` jobs (one array on Slurm) that each run a worker of ``study``; returns
    submitit's jobs. ``cluster``: 'slurm', 'local', or None (Slurm where ``sbatch`` is found)."""
    if workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {workers}")
    load_study(study, open_storage(storage))  # (one line now, not N failed jobs later)
    if cluster == "slurm" and not is_rdb(storage):
        print(f"note: {storage} is a journal file: every node must see it on a shared file system")
    slurm = slurm or {}
    executor = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=cluster)
    executor.update_parameters(name=f"charlstm-{study}", cpus_per_task=threads, timeout_min=slurm.get("time_min") or 240,
                               **({"mem_gb": slurm["mem_gb"]} if slurm.get("mem_gb") else {}),
                               **({"slurm_partition": slurm["partition"]} if slurm.get("partition") else {}),
                               slurm_array_parallelism=workers)
    with executor.batch():  # (one job array)
        jobs = [executor.submit(worker_job, study, storage, tracking_uri, threads, i) for i in range(workers)]
    return jobs
