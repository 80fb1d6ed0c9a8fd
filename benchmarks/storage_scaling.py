"""Measure where one Optuna study on PostgreSQL stops scaling: python benchmarks/storage_scaling.py [--tiny].

Issue 20, item 5. For each worker count (2, 4, 8, 16, 32) a fresh study in a fresh PostgreSQL
database (charlstm_bench_*, created here and always dropped) is shared by that many worker
processes, each asking of the storage what a charlstm worker asks per trial:

* the worker loop's reads (``sweep.study.next_action``: the study's user attrs and all its trials),
* ``study.optimize(n_trials=1)`` with charlstm's PatientRDBStorage (heartbeats on, the study
  file's interval and grace), its TPE sampler (seed distinct per worker) and median pruner,
* the Objective's own reads and writes: 12 user attrs, a full read of the trials before the
  suggestions (``_sampled_after_the_search``, a study with a ``final``) and one after them
  (``_retry_checkpoint``), the study file's search space suggested, an intermediate value
  reported and ``should_prune`` asked at each of ``--evals`` evaluations.

The "training" is a sleep (``--trial-seconds`` split over the evaluations), so the CPU goes to
the storage, the sampler and PostgreSQL. Nothing goes through MLflow. Counts start together
and run for ``--window`` seconds; trials that end (COMPLETE or PRUNED) after ``--warmup`` count.

Measured per trial (one worker loop turn), in each worker:
  storage   wall-clock seconds inside the storage object's database-reaching methods (the
            PatientRDBStorage under Optuna's cache: round trips, SQLAlchemy, psycopg, and any
            wait for a CPU), on the trial's own thread; heartbeats (another thread) apart
  sampler   seconds inside TPESampler's methods, less the storage calls they make
  pruner    the same for the median pruner
  cpu       the worker process's CPU seconds (all its threads)
and per count: PostgreSQL's CPU seconds per trial (utime+stime of its processes, from /proc,
the whole server and the bench database's backends), SQL statements and rows read per trial,
the machine's busy share, errors (first line), and the trials in the study at the end.

Then, where it stops: one worker at the largest count under cProfile (CPU time: where the
worker's own cost goes); the cost of one suggestion against the study's size (trials
prefilled, ``--sizes``); and what helps beyond: the workers through Optuna's gRPC storage
proxy (``--grpc``; the proxy's CPU is measured too, and through it there are no heartbeats:
GrpcStorageProxy is no heartbeat storage, so a dead worker's trial is never retried), and
charlstm's worker with fewer
full reads per trial (``--fewer-reads``: without the Objective's two extra reads, and asking
``should_prune`` at every ``--prune-every``-th evaluation: every call reads all running
trials again, though the median pruner looks at complete ones only), at ``--variant-workers``.

On a 2-core machine the workers, the sampler and PostgreSQL share the cores: read the
PostgreSQL CPU per trial as what bounds a real cluster (max trials/min ~ 60 x server cores /
server CPU-s per trial), the worker CPU as what a cluster spreads over its machines.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import pstats
import queue as queues
import random
import re
import socket
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import psutil
import psycopg
import sqlalchemy
from optuna.exceptions import ExperimentalWarning

from charlstm import names, owner
from charlstm.errors import first_line
from charlstm.sweep.spec import Dist, SweepSpec, load_sweep
from charlstm.sweep.store import (
    PatientRDBStorage,
    load_study,
    make_pruner,
    make_sampler,
    open_storage,
    requeue,
    started_trials,
)

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULT_ATTRS = ("chars_per_sec", "train_seconds", "compute_seconds", "chars_seen", "best_val_loss",
                "train_flops", "epochs")  # what Objective sets once a trial has trained
SAMPLER_METHODS = ("infer_relative_search_space", "sample_relative", "sample_independent",
                   "before_trial", "after_trial")  # BaseSampler's public API
DONE = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class Bench:
    """One measurement's settings (every worker gets a copy)."""

    study_file: str = "tinyshakespeare"
    admin_url: str = ADMIN_URL
    window: float = 90.0
    warmup: float = 15.0
    trial_seconds: float = 2.0
    evals: int = 10
    fewer_reads: bool = False  # without the Objective's two extra full reads of the trials
    prune_every: int = 1  # should_prune at every n-th evaluation only


@dataclass(frozen=True)
class Job:
    """What one worker process is told."""

    bench: Bench
    url: str
    study: str
    index: int
    proxy_port: int | None = None  # workers -> Optuna's gRPC proxy -> PostgreSQL
    profile: bool = False


# ---------------------------------------------------------------------------------------------
# Timing inside a worker


class Clock:
    """Wall-clock seconds by category, each exclusive of the timed calls made inside it (TPE's
    own computation without the storage reads it makes), and calls and seconds by method. A
    call on another thread than the main one (Optuna's heartbeat thread) is booked under
    ``<category>_background``: it is not in the trial's path."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.methods: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, category: str, name: str, call):
        @functools.wraps(call)
        def timed(*args, **kwargs):
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # the time of the timed calls made inside this one
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = stack.pop()
                if stack:
                    stack[-1] += elapsed
                where = category if threading.current_thread() is threading.main_thread() else f"{category}_background"
                with self._lock:
                    self.seconds[where] += elapsed - inner
                    self.methods[name][0] += 1
                    self.methods[name][1] += elapsed - inner
        return timed

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds)


def storage_methods(storage) -> list[str]:
    """The methods of ``storage`` to time. On PostgreSQL, every method PatientRDBStorage makes
    patient: exactly the ones that reach the database. Five of them are private (Optuna's cached
    storage calls ``_get_trials`` and the like directly, and store.py names them for that
    reason); this is the one place this benchmark touches private names, and only to time them.
    Through the gRPC proxy: the client's public storage API."""
    if isinstance(storage, PatientRDBStorage):
        return [n for n, v in vars(PatientRDBStorage).items() if callable(v) and not n.startswith("__")]
    return [n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_") and callable(getattr(storage, n))]


def time_storage(storage, clock: Clock) -> None:
    # instance attributes: Optuna's cache calls ``self._backend.<method>``, which finds them first
    for name in storage_methods(storage):
        setattr(storage, name, clock.wrap("storage", name, getattr(storage, name)))


def time_sampler(sampler, clock: Clock):
    for name in SAMPLER_METHODS:
        setattr(sampler, name, clock.wrap("sampler", f"sampler.{name}", getattr(sampler, name)))
    return sampler


def count_statements(engine, counter: collections.Counter) -> None:
    """Count SQL statements, rows read, and statements by verb and table, as they run."""
    table = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)

    def after(conn, cursor, statement, parameters, context, executemany):
        verb = statement.lstrip().split(None, 1)[0].upper()
        match = table.search(statement)
        counter["statements"] += 1
        counter[f"{verb} {match.group(1) if match else '?'}"] += 1
        if verb == "SELECT":
            counter["rows"] += max(cursor.rowcount, 0)

    sqlalchemy.event.listen(engine, "after_cursor_execute", after)


# ---------------------------------------------------------------------------------------------
# A worker


def worker_main(job: Job, messages, go, start) -> None:
    """One worker process: join the study, say ready, wait for the common start, run trials
    until the window ends, send back what it measured."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as charlstm's workers (join_study)
    warnings.simplefilter("ignore", ExperimentalWarning)  # the gRPC proxy is "experimental"
    try:
        clock, sql = Clock(), collections.Counter()
        study, spec = join(job, clock, sql)
        messages.put(("ready", job.index, None))
        go.wait()
        messages.put(("result", job.index, run_trials(job, study, spec, clock, sql, start.value)))
    except BaseException as e:  # (the parent reports it; a worker must never hang the run)
        messages.put(("failed", job.index, error_line(e)))


def join(job: Job, clock: Clock, sql: collections.Counter):
    """The study as charlstm's ``join_study`` builds it: the project's storage with the study
    file's heartbeat settings and a stale-trial handler that queues the trial again, the
    sampler seeded per worker and per resume, the study file's pruner; all of it timed."""
    spec = load_sweep(job.bench.study_file)
    if job.proxy_port is not None:
        storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=job.proxy_port)
        storage.wait_server_ready(timeout=60)
    else:
        def on_stale(study, trial):  # recovery.stale_trial_handler, without MLflow
            requeue(study, trial, crashed=True, max_retry=spec.max_retry)
        storage = open_storage(job.url, spec, on_stale)
        count_statements(storage.engine, sql)
    time_storage(storage, clock)
    n_existing = len(load_study(job.study, storage).get_trials(deepcopy=False))
    sampler = time_sampler(make_sampler(spec, job.index, n_existing), clock)
    pruner = make_pruner(spec)
    pruner.prune = clock.wrap("pruner", "pruner.prune", pruner.prune)
    return load_study(job.study, storage, sampler=sampler, pruner=pruner), spec


def next_action(study) -> str:
    """What charlstm's worker loop reads before each trial (``sweep.study.next_action``, mirrored:
    it imports torch, and 32 copies of it would not fit): the study's user attrs and all
    its trials."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    target = attrs.get("target_trials")
    return "run" if target is None or started_trials(trials) < target else "done"


def run_trials(job: Job, study, spec: SweepSpec, clock: Clock, sql: collections.Counter, start: float) -> dict:
    """The worker loop until the window ends; one record per turn (a trial)."""
    objective = Objective(job, spec)
    records: list[dict] = []
    profiler = cProfile.Profile(time.process_time) if job.profile else None  # CPU: where the worker's own cost goes
    if profiler:
        profiler.enable()
    while time.time() < start + job.bench.window:
        before = (clock.snapshot(), dict(sql), time.process_time(), time.perf_counter())
        objective.number = objective.outcome = None
        try:
            if next_action(study) != "run":
                break
            study.optimize(objective, n_trials=1, catch=(Exception,))  # as run_worker
        except Exception as e:  # the storage failed outside the objective
            objective.errors[error_line(e)] += 1
            time.sleep(0.5)  # (a refusing storage must not be hammered in a loop)
            continue
        records.append(objective.record(before, clock, sql))
    if profiler:
        profiler.disable()
    return {"records": records, "errors": dict(objective.errors), "methods": dict(clock.methods),
            "seconds": clock.snapshot(), "sql": dict(sql), "profile": top_entries(profiler) if profiler else None}


class Objective:
    """charlstm's Objective as the storage sees it, with a sleep for training."""

    def __init__(self, job: Job, spec: SweepSpec):
        self.job, self.spec = job, spec
        self.worker = owner.this_process()
        self.rng = random.Random(job.index)
        self.step_chars = int(spec.overrides.get("train.eval_every_chars", 1))  # steps are characters seen
        self.errors: collections.Counter = collections.Counter()
        self.number: int | None = None
        self.outcome: str | None = None
        self.slept = 0.0

    def __call__(self, trial) -> float:
        self.number, self.outcome, self.slept = trial.number, "FAIL", 0.0
        try:
            value = self._run(trial)
        except optuna.TrialPruned:
            self.outcome = "PRUNED"
            raise
        except Exception as e:  # (Optuna's catch= would hide it: count it first)
            self.errors[error_line(e)] += 1
            raise
        self.outcome = "COMPLETE"
        return value

    def _run(self, trial) -> float:
        bench, spec = self.job.bench, self.spec
        trial.set_user_attr(names.ATTR_OWNER, self.worker)
        trial.set_user_attr(names.ATTR_WORKER, f"worker {self.job.index}")
        if spec.final and not bench.fewer_reads:
            trial.study.get_trials(deepcopy=False)  # objective._sampled_after_the_search
        params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
        trial.set_user_attr(names.ATTR_PARAMS_TOTAL, int(1e5 + 3e6 * self.rng.random()))
        run_id = uuid.uuid4().hex
        trial.set_user_attr(names.ATTR_RUN, run_id)
        trial.set_user_attr(names.ATTR_RUN_URL, f"http://127.0.0.1:5000/#/experiments/1/runs/{run_id}")
        if not bench.fewer_reads:
            trial.study.get_trials(deepcopy=False)  # objective._retry_checkpoint
        final = synthetic_loss(spec, params, self.rng)
        best = math.inf
        for k in range(bench.evals):
            time.sleep(bench.trial_seconds / bench.evals)  # the training between two evaluations
            self.slept += bench.trial_seconds / bench.evals
            best = min(best, final + 1.5 / (k + 1))
            trial.report(final + 1.5 / (k + 1), step=(k + 1) * self.step_chars)
            if (k + 1) % bench.prune_every == 0 and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {(k + 1) * self.step_chars:,} chars")
        for key in RESULT_ATTRS:
            trial.set_user_attr(key, self.rng.random() * 1e6)
        return best

    def record(self, before: tuple, clock: Clock, sql: collections.Counter) -> dict:
        seconds, statements, cpu, wall = before
        now = clock.snapshot()
        spent = {k: now.get(k, 0.0) - seconds.get(k, 0.0) for k in ("storage", "sampler", "pruner")}
        return {"number": self.number, "state": self.outcome, "end": time.time(),
                "wall": time.perf_counter() - wall, "sleep": self.slept, **spent,
                "cpu": time.process_time() - cpu,
                "statements": sql["statements"] - statements.get("statements", 0),
                "rows": sql["rows"] - statements.get("rows", 0)}


def error_line(e: BaseException) -> str:
    """An exception as one line, with the one at the root of its chain: Optuna reports a full
    server ("too many clients") as "an exception is raised during the commit"."""
    root = e
    while (nxt := root.__cause__ or root.__context__) is not None and nxt is not root:
        root = nxt
    line = f"{type(e).__name__}: {first_line(e)}"
    return line if root is e else f"{line} (from {type(root).__name__}: {first_line(root)})"


def synthetic_loss(spec: SweepSpec, params: dict[str, Any], rng: random.Random) -> float:
    """A smooth bowl over the space (best at 60% of each range) plus noise: TPE and the
    pruner see a signal, as on a real study."""
    return 1.3 + sum(0.4 * (_position(d, params[k]) - 0.6) ** 2 for k, d in spec.space.items()) + rng.gauss(0, 0.01)


def _position(dist: Dist, value: Any) -> float:
    if dist.type == "categorical":
        return dist.choices.index(value) / max(len(dist.choices) - 1, 1)
    low, high, v = dist.low, dist.high, value
    if dist.log:
        low, high, v = math.log(low), math.log(high), math.log(v)
    return (v - low) / (high - low) if high > low else 0.0


def top_entries(profiler: cProfile.Profile, n: int = 25) -> dict[str, list[dict]]:
    """The profile's top entries by cumulative and by own time."""
    profile = pstats.Stats(profiler).get_stats_profile()
    rows = [{"function": name, "file": f"{Path(p.file_name).name}:{p.line_number}", "calls": p.ncalls,
             "cumtime": round(p.cumtime, 3), "tottime": round(p.tottime, 3)}
            for name, p in profile.func_profiles.items()]
    return {"cumulative": sorted(rows, key=lambda r: -r["cumtime"])[:n],
            "own": sorted(rows, key=lambda r: -r["tottime"])[:n]}


# ---------------------------------------------------------------------------------------------
# Databases, studies, the proxy


@contextlib.contextmanager
def fresh_database(admin_url: str, label: str):
    """A new database for one measurement (URL, name), dropped however the measurement ends."""
    name = f"charlstm_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        url = sqlalchemy.make_url(admin_url).set(database=name)
        yield url.render_as_string(hide_password=False), name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # (workers may still hold connections)


def create_study(url: str, spec: SweepSpec) -> str:
    """The study, with the user attrs ``setup_study`` stores (read by every worker each trial)."""
    storage = open_storage(url, spec)
    try:
        study = optuna.create_study(study_name=spec.study, storage=storage, direction="minimize")
        attrs = {"sweep": spec.as_dict(), "target_trials": 10**9, "deadline": None,
                 "tracking_uri": "http://127.0.0.1:5000", "mlflow_parent_run_id": uuid.uuid4().hex,
                 "corpus_sha256": "0" * 64}
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    finally:
        storage.engine.dispose()
    return spec.study


def study_end(url: str, study: str) -> dict[str, int]:
    """Trials in the study by state, at the end."""
    storage = open_storage(url)
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    return dict(collections.Counter(t.state.name for t in trials))


def proxy_main(url: str, study_file: str, port: int, stop, messages) -> None:
    """Optuna's gRPC storage proxy on PostgreSQL (through Optuna's cache, as its docs ask),
    until told to stop; then it sends back the SQL it ran."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", ExperimentalWarning)
    storage = open_storage(url, load_sweep(study_file))
    sql: collections.Counter = collections.Counter()
    count_statements(storage.engine, sql)
    serve = functools.partial(optuna.storages.run_grpc_proxy_server, optuna.storages.get_storage(storage),
                              host="127.0.0.1", port=port)
    threading.Thread(target=serve, daemon=True).start()
    stop.wait()
    messages.put(("proxy", -1, dict(sql)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The machine, PostgreSQL's CPU


def machine(admin_url: str) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    with psycopg.connect(admin_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        max_connections = conn.execute("SHOW max_connections").fetchone()[0]
    try:
        import grpc
        grpcio = grpc.__version__
    except ImportError:
        grpcio = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "optuna": optuna.__version__, "sqlalchemy": sqlalchemy.__version__, "postgresql": server,
            "max_connections": int(max_connections), "grpcio": grpcio, "load_average": os.getloadavg()}


def postgres_cpu(database: str) -> tuple[float, float]:
    """(the whole server, the backends of ``database``) CPU seconds so far: utime+stime of the
    processes whose command is postgres (a backend that exited is in its parent's children
    times, which count for the server)."""
    server = backends = 0.0
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        cmdline, times = p.info["cmdline"] or [], p.info["cpu_times"]
        if times is None or not (p.info["name"] == "postgres" or (cmdline and Path(cmdline[0]).name.startswith("postgres"))):
            continue
        server += times.user + times.system + times.children_user + times.children_system
        if f" {database} " in f" {' '.join(cmdline)} ":
            backends += times.user + times.system
    return server, backends


def probe(database: str, proxy_pid: int | None) -> dict[str, float]:
    """The counters a window's start and end are read from."""
    server, backends = postgres_cpu(database)
    cpu = psutil.cpu_times()
    proxy = psutil.Process(proxy_pid).cpu_times() if proxy_pid else None
    return {"time": time.time(), "postgres": server, "backends": backends,
            "busy": sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0), "all": sum(cpu),
            "proxy": proxy.user + proxy.system if proxy else 0.0}


def connections(admin_url: str, database: str | None) -> int:
    """Connections to ``database`` now; None: the connections the server has left."""
    with psycopg.connect(admin_url) as conn:
        if database is None:
            return conn.execute("SELECT current_setting('max_connections')::int - "
                                "current_setting('superuser_reserved_connections')::int - count(*) "
                                "FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()[0]


# ---------------------------------------------------------------------------------------------
# One measurement


def measure(bench: Bench, variant: str, workers: int, profile: bool) -> dict:
    """One worker count of one variant in its own database: the row of the table."""
    spec = load_sweep(bench.study_file)
    label = f"{variant.replace('-', '_')}_{workers}"
    with fresh_database(bench.admin_url, label) as (url, database):
        study = create_study(url, spec)
        ctx = mp.get_context("spawn")  # fresh interpreters, as charlstm spawns its workers
        messages, go, start, stop = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0), ctx.Event()
        proxy, port = None, free_port() if variant == "grpc" else None
        if port is not None:
            proxy = ctx.Process(target=proxy_main, args=(url, bench.study_file, port, stop, messages), daemon=True)
            proxy.start()
        jobs = [Job(bench, url, study, i, port, profile and i == 0) for i in range(workers)]
        procs = [ctx.Process(target=worker_main, args=(job, messages, go, start), daemon=True) for job in jobs]
        free = connections(bench.admin_url, None)  # (a shared server: other clients hold some)
        if free < 2 * workers + 2:  # a worker holds two: its trial's and its heartbeat thread's
            print(f"  only {free} connections free for {workers} workers: some will be refused", flush=True)
        try:
            for p in procs:
                p.start()
            got = run_window(bench, workers, messages, go, start, database, proxy.pid if proxy else None)
            got["free_connections"] = free
            if proxy:
                stop.set()
                sql = wait_for(messages, {-1}, 30, "proxy")[-1]
                got["proxy_sql"] = sql if isinstance(sql, dict) else {}
        finally:
            for p in [*procs, *([proxy] if proxy else [])]:
                p.join(timeout=10)
                if p.is_alive():
                    p.terminate()
        got["study"] = study_end(url, study)
    return summarize(bench, variant, workers, got)


def run_window(bench: Bench, workers: int, messages, go, start, database: str, proxy_pid: int | None) -> dict:
    """Start the workers together once all are ready, read the counters at the warm-up's end
    and the window's, and collect every worker's measurements."""
    ready = wait_for(messages, set(range(workers)), 300, "ready")
    start.value = time.time() + 1.0
    go.set()
    time.sleep(max(0.0, start.value + bench.warmup - time.time()))
    first = probe(database, proxy_pid)
    time.sleep(max(0.0, start.value + bench.window - time.time()))
    last = probe(database, proxy_pid)
    conns = connections(bench.admin_url, database)
    results = wait_for(messages, set(ready) - {i for i, v in ready.items() if isinstance(v, str)},
                       bench.trial_seconds * 20 + 120, "result")
    return {"start": start.value, "first": first, "last": last, "connections": conns, "ready": ready,
            "results": results}


def wait_for(messages, indices: set[int], timeout: float, kind: str) -> dict[int, Any]:
    """index -> payload of the ``kind`` message of each index, or the first line of why that
    worker failed; an index that says nothing within ``timeout`` is reported missing."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while set(got) < indices and time.monotonic() < deadline:
        try:
            what, index, payload = messages.get(timeout=max(0.1, deadline - time.monotonic()))
        except queues.Empty:
            break
        if what in (kind, "failed"):
            got[index] = payload if what == kind else f"worker failed: {payload}"
    for index in indices - set(got):
        got[index] = f"no {kind} message within {timeout:.0f} s"
    return got


# ---------------------------------------------------------------------------------------------
# Summaries


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def summarize(bench: Bench, variant: str, workers: int, got: dict) -> dict:
    """The row of one measurement: throughput, per-trial costs, errors, what the study holds."""
    payloads = {i: r for i, r in got["results"].items() if isinstance(r, dict)}
    errors = collections.Counter(line for line in [*got["ready"].values(), *got["results"].values()]
                                 if isinstance(line, str))  # workers that failed or went silent
    for r in payloads.values():
        errors.update(r["errors"])
    first, last = got["first"], got["last"]
    def in_window(r: dict) -> list[dict]:
        return [rec for rec in r["records"] if rec["state"] in DONE and first["time"] <= rec["end"] <= last["time"]]

    counted = [rec for r in payloads.values() for rec in in_window(r)]
    timed = [rec for r in payloads.values() if not r["profile"] for rec in in_window(r)]  # (cProfile slows its worker)
    minutes = (last["time"] - first["time"]) / 60
    n = max(len(counted), 1)
    row = {"variant": variant, "workers": workers, "trials_counted": len(counted),
           "trials_per_min": round(len(counted) / minutes, 1),
           "storage_s_median": pct([r["storage"] for r in timed], 50),
           "storage_s_p95": pct([r["storage"] for r in timed], 95),
           "sampler_s_median": pct([r["sampler"] for r in timed], 50),
           "sampler_s_p95": pct([r["sampler"] for r in timed], 95),
           "pruner_s_median": pct([r["pruner"] for r in timed], 50),
           "overhead_s_median": pct([r["wall"] - r["sleep"] for r in timed], 50),
           "overhead_s_p95": pct([r["wall"] - r["sleep"] for r in timed], 95),
           "worker_cpu_s_median": pct([r["cpu"] for r in timed], 50),
           "worker_cpu_s_p95": pct([r["cpu"] for r in timed], 95),
           "postgres_cpu_s_per_trial": round((last["postgres"] - first["postgres"]) / n, 4),
           "postgres_backend_cpu_s_per_trial": round((last["backends"] - first["backends"]) / n, 4),
           "proxy_cpu_s_per_trial": round((last["proxy"] - first["proxy"]) / n, 4) if variant == "grpc" else None,
           "machine_busy": round((last["busy"] - first["busy"]) / max(last["all"] - first["all"], 1e-9), 3),
           "connections": got["connections"], "free_connections_before": got["free_connections"], "errors": sum(errors.values()), "error_lines": dict(errors),
           "trials_in_study": sum(got["study"].values()), "states": got["study"],
           "heartbeat_storage_s_per_trial": round(sum(r["seconds"].get("storage_background", 0.0)
                                                      for r in payloads.values()) / n, 4)}
    row["storage_calls_per_trial"] = per_trial_methods(payloads.values())
    # (mean over every trial the workers ran, heartbeats included; through the proxy, the proxy's SQL)
    row["sql_per_trial"] = per_trial_sql([r["sql"] for r in payloads.values()] + [got.get("proxy_sql") or {}],
                                         sum(len(r["records"]) for r in payloads.values()))
    row["statements_per_trial"] = row["sql_per_trial"].get("statements")
    row["rows_per_trial"] = row["sql_per_trial"].get("rows")
    row["profile"] = next((r["profile"] for r in payloads.values() if r["profile"]), None)
    return row


def per_trial_methods(payloads) -> dict[str, dict[str, float]]:
    """Timed method -> calls and seconds per trial, over all workers and all their trials."""
    calls: collections.Counter = collections.Counter()
    seconds: collections.Counter = collections.Counter()
    trials = 0
    for r in payloads:
        trials += len(r["records"])
        for name, (c, s) in r["methods"].items():
            calls[name] += c
            seconds[name] += s
    trials = max(trials, 1)
    ranked = sorted(calls, key=lambda name: -seconds[name])
    return {name: {"calls": round(calls[name] / trials, 2), "seconds": round(seconds[name] / trials, 5)}
            for name in ranked}


def per_trial_sql(counters: list[dict], trials: int) -> dict[str, float]:
    """SQL statements by verb and table per trial (the proxy's too, through the proxy)."""
    total: collections.Counter = collections.Counter()
    for c in counters:
        total.update(c)
    return {k: round(v / max(trials, 1), 2) for k, v in total.most_common(15)}


# ---------------------------------------------------------------------------------------------
# Suggestion cost against the study's size


def study_size_costs(bench: Bench, sizes: list[int], probes: int = 5) -> list[dict]:
    """One worker's cost per trial (sampler, storage, pruner, CPU) in a study already holding
    each of ``sizes`` trials (prefilled, 60% COMPLETE, 40% PRUNED, with the attrs and
    intermediate values a worker writes), and a joining worker's first full read."""
    spec = load_sweep(bench.study_file)
    rows = []
    with fresh_database(bench.admin_url, "size") as (url, _):
        study_name = create_study(url, spec)
        filled = 0
        for size in sizes:
            started = time.perf_counter()
            prefill(url, study_name, spec, size - filled, bench.evals, seed=size)
            rows.append({"trials": size, "prefill_s": round(time.perf_counter() - started, 2),
                         **suggestion_costs(url, study_name, spec, bench, probes)})
            filled = size + probes
    return rows


def prefill(url: str, study_name: str, spec: SweepSpec, n: int, evals: int, seed: int) -> None:
    """``n`` finished trials of the spec's space added to the study (built in memory by a
    random sampler, then added through the public ``add_trials``)."""
    rng = random.Random(seed)
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(max(n, 0)):
        trial = scratch.ask()
        params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
        final = synthetic_loss(spec, params, rng)
        pruned = rng.random() < 0.4
        for k in range(evals // 2 if pruned else evals):
            trial.report(final + 1.5 / (k + 1), step=k + 1)
        for key in (names.ATTR_OWNER, names.ATTR_WORKER, names.ATTR_RUN, names.ATTR_RUN_URL, names.ATTR_PARAMS_TOTAL, *RESULT_ATTRS):
            trial.set_user_attr(key, uuid.uuid4().hex if key.startswith(("worker", "mlflow")) else rng.random())
        if pruned:
            scratch.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            scratch.tell(trial, final)
    storage = open_storage(url, spec)
    try:
        optuna.load_study(study_name=study_name, storage=storage).add_trials(scratch.trials)
    finally:
        storage.engine.dispose()


def suggestion_costs(url: str, study_name: str, spec: SweepSpec, bench: Bench, probes: int) -> dict:
    """A new worker's first read of the study, then ``probes`` trials' own costs (median)."""
    clock, sql = Clock(), collections.Counter()
    storage = open_storage(url, spec)
    count_statements(storage.engine, sql)
    time_storage(storage, clock)
    try:
        started = time.perf_counter()
        n_existing = len(load_study(study_name, storage).get_trials(deepcopy=False))
        cold = time.perf_counter() - started
        sampler = time_sampler(make_sampler(spec, 0, n_existing), clock)
        pruner = make_pruner(spec)
        pruner.prune = clock.wrap("pruner", "pruner.prune", pruner.prune)
        study = load_study(study_name, storage, sampler=sampler, pruner=pruner)
        # ask/tell (one trial at a time, no heartbeat thread): Optuna warns that heartbeats want optimize
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        costs = []
        for _ in range(probes):
            before, cpu = clock.snapshot(), time.process_time()
            trial = study.ask()
            params = {key: dist.suggest(trial, key) for key, dist in spec.space.items()}
            trial.report(synthetic_loss(spec, params, random.Random(0)), step=1)
            trial.should_prune()
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            now = clock.snapshot()
            costs.append({k: now.get(k, 0.0) - before.get(k, 0.0) for k in ("sampler", "storage", "pruner")}
                         | {"cpu": time.process_time() - cpu})
    finally:
        storage.engine.dispose()
    return {"first_read_s": round(cold, 3), **{f"{k}_s_median": pct([c[k] for c in costs], 50) for k in costs[0]}}


# ---------------------------------------------------------------------------------------------
# Capacity, the table, the command line


def capacity(rows: list[dict], info: dict, trial_lengths=(25.0, 150.0), headroom: float = 0.7) -> dict:
    """Workers (machines) one PostgreSQL server like this one carries, for trials of each length:
    by its CPU (``headroom`` of its cores), from a straight-line fit of its CPU per trial against
    workers (each read returns every running trial, so the cost grows with the workers), and by
    its connections (max_connections, 3 kept for superusers, at the measured connections per
    worker); and what each worker then spends of its own CPU per trial (the same fit). An
    extrapolation from this machine, labelled as one."""
    base = [r for r in rows if r["variant"] == "postgres" and r["trials_counted"]]
    if len(base) < 2:
        return {"note": "needs two worker counts of the plain variant"}
    server = _line([r["workers"] for r in base], [r["postgres_cpu_s_per_trial"] for r in base])
    worker = _line([r["workers"] for r in base], [r["worker_cpu_s_median"] for r in base])
    per_worker = max(r["connections"] / r["workers"] for r in base)
    out = {"postgres_cpu_s_per_trial_fit": f"{server[0]:.4f} + {server[1]:.5f} x workers",
           "worker_cpu_s_per_trial_fit": f"{worker[0]:.4f} + {worker[1]:.5f} x workers",
           "server_cores": info["cores"], "headroom": headroom, "connections_per_worker": round(per_worker, 2),
           "workers_by_connections": int((info["max_connections"] - 3) / per_worker)}
    for length in trial_lengths:
        # W workers end W / length trials a second, each costing the server a + b W CPU-s
        w = 1
        while w < 100_000 and (w + 1) / length * (server[0] + server[1] * (w + 1)) <= info["cores"] * headroom:
            w += 1
        usable = min(w, out["workers_by_connections"])
        out[f"workers_by_cpu_at_{length:.0f}s_trials"] = w
        out[f"trials_per_min_at_{length:.0f}s_trials"] = round(60 * usable / length, 1)
        out[f"worker_cpu_share_at_{length:.0f}s_trials"] = round((worker[0] + worker[1] * usable) / length, 4)
    return out


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """(intercept, slope) of a least-squares line, neither below zero."""
    slope, intercept = np.polyfit(x, y, 1)
    return max(float(intercept), 1e-4), max(float(slope), 0.0)


COLUMNS = (("variant", "variant"), ("workers", "workers"), ("trials/min", "trials_per_min"),
           ("storage s/trial median", "storage_s_median"), ("storage s/trial p95", "storage_s_p95"),
           ("sampler s/trial", "sampler_s_median"), ("worker CPU s/trial", "worker_cpu_s_median"),
           ("postgres CPU s/trial", "postgres_cpu_s_per_trial"), ("proxy CPU s/trial", "proxy_cpu_s_per_trial"),
           ("SQL/trial", "statements_per_trial"), ("rows read/trial", "rows_per_trial"),
           ("machine busy", "machine_busy"), ("errors", "errors"), ("trials in study", "trials_in_study"))


def table(info: dict, rows: list[dict]) -> str:
    head = (f"{info['cpu']}, {info['cores']} cores; Python {info['python']}, Optuna {info['optuna']}, "
            f"PostgreSQL {info['postgresql']}, grpcio {info['grpcio'] or 'not installed'}")
    lines = [head, "", "| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(k) is None else str(r[k]) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8] ('' -> [])."""
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=ints, default=[2, 4, 8, 16, 32], help="worker counts (default 2,4,8,16,32)")
    p.add_argument("--window", type=float, default=90.0, help="seconds each count runs (default 90)")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds at the window's start not counted (default 15)")
    p.add_argument("--trial-seconds", type=float, default=2.0, help="a trial's sleep, its 'training' (default 2)")
    p.add_argument("--evals", type=int, default=10, help="evaluations (report + should_prune) per trial (default 10)")
    p.add_argument("--study", default="tinyshakespeare", help="study file whose space, sampler, pruner and heartbeat settings are used")
    p.add_argument("--admin-url", default=ADMIN_URL, help=f"PostgreSQL admin database (default {ADMIN_URL})")
    p.add_argument("--grpc", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the workers through Optuna's gRPC storage proxy at --variant-workers")
    p.add_argument("--fewer-reads", action=argparse.BooleanOptionalAction, default=True,
                   help="also run charlstm's worker with fewer full reads per trial at --variant-workers: without "
                        "the Objective's two extra ones, and should_prune at every --prune-every-th evaluation")
    p.add_argument("--prune-every", type=int, default=2, help="the fewer-reads variant's pruning interval (default 2)")
    p.add_argument("--variant-workers", type=ints, default=None, help="counts the variants run at (default: the largest)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="run worker 0 of the largest count under cProfile (its times are left out of the medians)")
    p.add_argument("--sizes", type=ints, default=[100, 500, 1000, 2000],
                   help="study sizes the cost of one suggestion is measured at ('' to skip)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "storage_scaling.json"))
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run for the tests: 2 workers, a few seconds, no variants, no profile")
    args = p.parse_args(argv)
    if args.tiny:
        args.workers, args.window, args.warmup, args.trial_seconds, args.evals = [2], 8.0, 2.0, 0.5, 4
        args.grpc = args.fewer_reads = args.profile = False
        args.sizes = [30]
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, int, bool]]:
    """(variant, workers, profile) for each measurement, in the order they run."""
    largest = max(args.workers)
    runs = [("postgres", w, args.profile and w == largest) for w in args.workers]
    if args.grpc and importlib.util.find_spec("grpc") is None:  # (not a charlstm dependency)
        print("no gRPC proxy runs: grpcio is not installed (pip install grpcio protobuf)", flush=True)
        args.grpc = False
    for w in args.variant_workers or [largest]:
        if args.grpc:
            runs.append(("grpc", w, False))
        if args.fewer_reads:
            runs.append(("fewer-reads", w, False))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not 'A new study created' at each count
    bench = Bench(args.study, args.admin_url, args.window, args.warmup, args.trial_seconds, args.evals)
    info = machine(args.admin_url)
    print(f"machine: {info}", flush=True)
    rows = []
    for variant, workers, profile in plan(args):
        print(f"{variant}, {workers} workers: {args.window:.0f} s ...", flush=True)
        fewer = replace(bench, fewer_reads=True, prune_every=args.prune_every)
        rows.append(measure(fewer if variant == "fewer-reads" else bench, variant, workers, profile))
        print(f"  {rows[-1]['trials_per_min']} trials/min, {rows[-1]['errors']} errors", flush=True)
    sizes = study_size_costs(bench, args.sizes) if args.sizes else []
    result = {"machine": info, "settings": asdict(bench) | {"argv": vars(args)}, "rows": rows,
              "study_size": sizes, "capacity": capacity(rows, info)}
    print()
    print(table(info, rows))
    for s in sizes:
        print(f"study of {s['trials']} trials: {s}")
    print(f"capacity: {result['capacity']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
