"""What a study is doing now, read from its Optuna storage and its MLflow runs alone: the trials
counted against the target, the best so far beside the seed baseline, one row per running
trial, the time left, and what happened between two looks. The sweep's live view and
``charlstm status`` both draw it; reading never changes a study.

::

    look()  ->  Snapshot (counts, best, running rows, time left)  ->  render() / progress_line()
    look() twice  ->  changes(before, after)  ->  event lines (started, ended, resumed, ...)
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from charlstm import machine, names, owner, scaling, tracking
from charlstm.errors import CharlstmError, ConfigError, first_line
from charlstm.sweep.spec import SweepSpec, trial_config
from charlstm.sweep.store import (
    best_trial,
    format_leaderboard,
    is_rdb,
    leaderboard,
    load_study,
    open_storage,
    retried_as,
    retry_history,
    started_trials,
    study_spec,
    tracking_uri_of,
)

# what the view shows of a trial's params, in this order (the size and the context first)
SHORT = {"model.hidden_size": "H", "model.embedding_dim": "E", "data.seq_length": "T",
         "data.batch_size": "B", "model.num_layers": "L", "train.lr": "lr", "train.lr_scale": "lr×",
         "model.dropout": "drop", "train.max_seconds": "s", "train.max_chars": "chars", "train.max_steps": "steps"}
EVENTS_SHOWN = 6  # the live view's last few events
MLFLOW_EVERY = tracking.FLUSH_SECONDS  # s between reads of the running trials' runs: as often as they write
PROGRESS_EVERY = 30.0  # s between progress lines when the output is not a terminal


def short_params(params: dict[str, Any]) -> str:
    """'H=96 E=48 T=48 s=27': the searched params a person compares, size and context first."""
    keys = [k for k in SHORT if k in params] + sorted(k for k in params if k not in SHORT)
    return " ".join(f"{SHORT.get(k, k.rsplit('.', 1)[-1])}={_num(params[k])}" for k in keys)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) and abs(v) >= 10_000 else str(v)


def human_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# ---------------------------------------------------------------------------------------------
# One look at a study


@dataclass
class Running:
    """A RUNNING trial as its run last reported it."""

    number: int
    params: dict[str, Any]
    seconds: float  # wall-clock since it started
    fraction: float | None = None  # of its budget, as of its run's last write
    value: float | None = None  # its latest evaluation of the study's metric
    chars_per_sec: float | None = None
    worker: str = ""
    resumed_from: int | None = None


@dataclass
class Snapshot:
    """A study at one moment."""

    study: str
    metric: str
    target: int | None
    counts: dict[str, int]  # COMPLETE, PRUNED, FAIL (not retried), RUNNING, WAITING
    done: int  # trials that count toward the target and have ended
    best: dict[str, Any] | None  # number, value, params, params_total
    baseline: tuple[int, float] | None  # the seed baseline's (trial, value), at the best trial's budget if it has one
    running: list[Running]
    left: float | None  # estimated seconds until the target (and the final trial) are done
    finished: bool
    started: float | None  # the study's first trial's start, epoch seconds
    machine: str = ""


class Reader:
    """Looks at one study again and again: its storage, its spec and its runs, opened once.
    ``trials`` are the last look's, for ``changes``."""

    def __init__(self, study_name: str, storage_url: str | None, tracking_uri: str | None = None,
                 workers: int | None = None):
        self.study = load_study(study_name, open_storage(storage_url))
        self.spec: SweepSpec = study_spec(self.study)
        self.uri = tracking_uri_of(self.study, tracking_uri)
        self.workers = workers
        self._client: Any = None
        self._budgets: dict[int, float] = {}
        self._final: float | None = None
        self._runs: dict[str, dict[str, float]] = {}  # run id -> latest metrics
        self._runs_read = 0.0
        self.trials: list = []

    def client(self):
        """The study's MLflow client, or None where its store is not there (yet)."""
        if self._client is None and self.uri:
            resolved = tracking.resolve_uri(self.uri)
            path = resolved.removeprefix("sqlite:///")
            if resolved.startswith("sqlite:") and not Path(path).is_file():
                return None  # (opening would create it)
            try:
                self._client = tracking.client_for(resolved)
            except CharlstmError:
                return None
        return self._client

    def look(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        self.trials = trials = self.study.get_trials(deepcopy=False)
        attrs = self.study.user_attrs
        running = [t for t in trials if t.state == TrialState.RUNNING]
        self._read_runs(running, now)
        again = retried_as(trials)
        counts = collections.Counter(
            t.state.name for t in trials if not (t.state == TrialState.FAIL and t.number in again))
        target = attrs.get(names.STUDY_TARGET)
        searching = target is not None and started_trials(trials) < target
        best = best_trial(self.study)  # (once a look: Optuna copies it each time it is asked)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        return Snapshot(
            study=self.study.study_name, metric=self.spec.metric, target=target, counts=dict(counts),
            done=started_trials(trials) - len(running), best=_summary(best), baseline=self._baseline(trials, best),
            running=[self._row(t, now) for t in running], left=self._time_left(trials, now, best),
            finished=not running and not counts.get(TrialState.WAITING.name) and not searching
            and not self._final_due(trials, best),
            started=min(starts) if starts else None,
            machine=machine.machine_line(attrs.get(names.STUDY_MACHINE)) if attrs.get(names.STUDY_MACHINE) else "",
        )

    def _final_due(self, trials, best, now_or_later: bool = False) -> bool:
        """A final trial the study will still queue: it has a ``final`` budget, none yet, a
        complete trial to take it from (``now_or_later``: or one to come), and (a scaling
        study) no prediction refused."""
        if not self.spec.final or any(t.user_attrs.get(names.ATTR_FINAL) for t in trials):
            return False
        if not now_or_later and best is None:
            return False
        refused = (self.study.user_attrs.get(names.STUDY_PREDICTION) or {}).get("reason")
        return not (self.spec.scaling and refused)

    def _read_runs(self, running: list, now: float) -> None:
        """The running trials' latest metrics, every MLFLOW_EVERY seconds (one read per run)."""
        if now - self._runs_read < MLFLOW_EVERY or self.client() is None:
            return
        self._runs_read = now
        ids = {t.user_attrs.get(names.ATTR_RUN) for t in running} - {None}
        for run_id in ids:
            try:
                self._runs[run_id] = dict(self._client.get_run(run_id).data.metrics)
            except Exception:  # (a store that is restarting: the last read stands)
                continue
        self._runs = {k: v for k, v in self._runs.items() if k in ids}

    def _row(self, t, now: float) -> Running:
        metrics = self._runs.get(t.user_attrs.get(names.ATTR_RUN), {})
        value = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        return Running(t.number, t.params or t.system_attrs.get(names.SYS_FIXED_PARAMS, {}),
                       now - t.datetime_start.timestamp() if t.datetime_start else 0.0,
                       metrics.get(names.BUDGET_FRACTION), value, metrics.get(names.CHARS_PER_SEC), _worker(t),
                       t.user_attrs.get(names.ATTR_RESUMED_FROM))

    def _baseline(self, trials, best) -> tuple[int, float] | None:
        """The seed baseline's (trial, value); in a scaling study, the one at the best trial's budget."""
        done = [t for t in trials if t.user_attrs.get(names.ATTR_BASELINE) and t.state == TrialState.COMPLETE]
        key = self.spec.scaling.key if self.spec.scaling else None
        if best is not None and key:
            done = [t for t in done if t.params.get(key) == best.params.get(key)] or done
        top = min(done, key=lambda t: t.value, default=None)
        return (top.number, top.value) if top else None

    def budget(self, t) -> float:
        """A trial's budget in its study's unit (seconds, chars or steps), read from its config."""
        if t.number not in self._budgets:
            params = t.params or t.system_attrs.get(names.SYS_FIXED_PARAMS, {})
            tc = trial_config(self.spec, params, final=bool(t.user_attrs.get(names.ATTR_FINAL))).train
            self._budgets[t.number] = float(tc.max_seconds or tc.max_chars or tc.max_steps or 1)
        return self._budgets[t.number]

    def _time_left(self, trials, now: float, best) -> float | None:
        """Seconds until the study is done: each trial still to run (the running trials' rest,
        the queued ones, those still to be sampled at the mean budget so far, the final trial)
        at the pace of the trials that ended, ``seconds = overhead + rate x budget`` (fitted
        where they had two budgets or more, else overhead 0), shared by the workers."""
        pace = self._pace(trials, now)
        if pace is None:
            return None
        overhead, rate = pace
        running = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        known = [self.budget(t) for t in trials if not t.user_attrs.get(names.ATTR_FINAL)]
        to_sample = max(0, (self.study.user_attrs.get(names.STUDY_TARGET) or 0) - started_trials(trials) - len(waiting))
        todo = [self.budget(t) for t in waiting] + [sum(known) / len(known) if known else 0.0] * to_sample
        rest = sum(rate * self.budget(t) * (1 - (self._row(t, now).fraction or 0)) for t in running)
        rest += sum(overhead + rate * b for b in todo)
        left = rest / max(self.workers or 0, len(running), 1)
        deadline = self.study.user_attrs.get(names.STUDY_DEADLINE)
        if deadline:  # no trial starts after it
            left = min(left, max(0.0, deadline - now))
        if self._final_due(trials, best, now_or_later=True):  # then the final, alone
            left += overhead + rate * self._final_budget()
        return left

    def _pace(self, trials, now: float) -> tuple[float, float] | None:
        """(seconds a trial costs beyond its budget, wall seconds per unit of budget)."""
        ended = [(self.budget(t), (t.datetime_complete - t.datetime_start).total_seconds()) for t in trials
                 if t.state == TrialState.COMPLETE and t.datetime_complete and t.datetime_start
                 and not t.user_attrs.get(names.ATTR_FINAL)]
        if len({b for b, _ in ended}) >= 2:  # least squares of seconds on budget
            mb, ms = sum(b for b, _ in ended) / len(ended), sum(s for _, s in ended) / len(ended)
            rate = sum((b - mb) * (s - ms) for b, s in ended) / sum((b - mb) ** 2 for b, _ in ended)
            if rate > 0 and ms - rate * mb >= 0:
                return ms - rate * mb, rate
        if ended:
            return 0.0, sum(s for _, s in ended) / sum(b for b, _ in ended)
        rows = [(self._row(t, now), self.budget(t)) for t in trials if t.state == TrialState.RUNNING]
        rows = [(r, b) for r, b in rows if r.fraction and r.fraction > 0.05]  # (rough, until one ends)
        return (0.0, sum(r.seconds for r, _ in rows) / sum(b * r.fraction for r, b in rows)) if rows else None

    def _final_budget(self) -> float:
        if self._final is None:
            spec = self.spec
            if spec.scaling:
                self._final = float(spec.final.get(spec.scaling.budget, 0))
            else:
                tc = trial_config(spec, final=True).train
                self._final = float(tc.max_seconds or tc.max_chars or tc.max_steps or 1)
        return self._final


def _summary(best) -> dict[str, Any] | None:
    if best is None:
        return None
    return {"number": best.number, "value": best.value, "params": best.params,
            names.ATTR_PARAMS_TOTAL: best.user_attrs.get(names.ATTR_PARAMS_TOTAL)}


def _worker(t) -> str:
    """'worker 1' (this host), 'node7 worker 1' (another), or the process where unnamed."""
    who = t.user_attrs.get(names.ATTR_OWNER) or ""
    host, pid, _ = owner.parse(who)
    name = t.user_attrs.get(names.ATTR_WORKER) or (f"pid {pid}" if pid else "starting")
    return name if not who or owner.on_this_host(who) else f"{host} {name}"


# ---------------------------------------------------------------------------------------------
# What changed between two looks


def changes(before: dict[int, tuple], trials: list, metric: str, verbose: bool = False) -> list[str]:
    """Event lines for what changed since ``before`` (from ``seen``): a trial started, was
    resumed from a checkpoint, evaluated (``verbose``), completed, was pruned, or failed."""
    out, again = [], retried_as(trials)
    for t in trials:
        old = before.get(t.number)
        state, evals, resumed = seen_key(t)
        if old == (state, evals, resumed) or state == TrialState.WAITING.name:
            continue
        params = short_params(t.params or t.system_attrs.get(names.SYS_FIXED_PARAMS, {}))
        if old is None or old[0] == TrialState.WAITING.name:  # (it may have ended too between the two looks)
            history = retry_history(t)
            out.append(f"trial {t.number} started: {params}" + (f" (retries trial {history[-1]})" if history else ""))
        if resumed is not None and (old is None or old[2] is None):
            out.append(f"trial {t.number} resumed from trial {resumed}'s checkpoint")
        if verbose and evals > (old[1] if old else 0) and t.intermediate_values:
            step = max(t.intermediate_values)
            out.append(f"trial {t.number} evaluated at {step:,} chars: {metric} {t.intermediate_values[step]:.4f}")
        if state != TrialState.RUNNING.name and (old is None or old[0] != state):
            out.append(_ended(t, metric, again))
    return out


def seen_key(t) -> tuple:
    return t.state.name, len(t.intermediate_values), t.user_attrs.get(names.ATTR_RESUMED_FROM)


def seen(trials: list) -> dict[int, tuple]:
    return {t.number: seen_key(t) for t in trials}


def _ended(t, metric: str, again: dict[int, int]) -> str:
    secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    took = f" after {human_seconds(secs)}" if secs is not None else ""
    if t.state == TrialState.COMPLETE:
        return f"trial {t.number} complete: {metric} {t.value:.4f}{took}"
    if t.state == TrialState.PRUNED:
        last = t.intermediate_values
        at = (f"at {max(last):,} chars ({metric} {last[max(last)]:.4f})" if last
              else t.user_attrs.get(names.ATTR_PRUNED_REASON, ""))
        return f"trial {t.number} pruned {at}{took}".rstrip()
    retry = f"; queued to resume as trial {again[t.number]}" if t.number in again else ""
    why = t.user_attrs.get(names.ATTR_FAIL_REASON, "no reason recorded")
    return f"trial {t.number} failed{took}: {why}{retry}"


# ---------------------------------------------------------------------------------------------
# Drawing it


def headline(s: Snapshot) -> str:
    c = s.counts
    parts = [f"{s.done} of {s.target if s.target is not None else '?'} done"]
    said = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail",
            TrialState.RUNNING: "running", TrialState.WAITING: "queued"}
    parts += [f"{c[state.name]} {word}" for state, word in said.items() if c.get(state.name)]
    return ", ".join(parts)


def best_line(s: Snapshot) -> str:
    if s.best is None:
        return "best: none complete yet"
    b = s.best
    size = f", {b[names.ATTR_PARAMS_TOTAL]:,} params" if b.get(names.ATTR_PARAMS_TOTAL) else ""
    base = "" if s.baseline is None else "; it is the seed baseline" if s.baseline[0] == b["number"] else \
        f"; seed baseline {s.baseline[1]:.4f} (trial {s.baseline[0]})"
    return f"best: {s.metric} {b['value']:.4f}, trial {b['number']} ({short_params(b['params'])}{size}){base}"


def time_line(s: Snapshot, elapsed: float | None) -> str:
    if not s.finished and not s.counts.get(TrialState.RUNNING.name) and elapsed is not None and s.left is None:
        return "no trial running (paused, or waiting for a worker)"
    left = "finished" if s.finished else f"~{human_seconds(s.left)} left" if s.left is not None else "time left: estimating"
    return f"{human_seconds(elapsed)} elapsed, {left}" if elapsed is not None else left


def progress_line(s: Snapshot, elapsed: float | None) -> str:
    """The one line a log gets every PROGRESS_EVERY seconds."""
    return f"progress: {headline(s)}; {best_line(s)}; {time_line(s, elapsed)}"


def render(s: Snapshot, events: list[str], elapsed: float | None):
    """The live view: a few lines of summary, a table of running trials, the last events."""
    head = Text.assemble((f"study {s.study}", "bold"), f"  {time_line(s, elapsed)}")
    parts: list[Any] = [head, Text(f"trials: {headline(s)}"), Text(best_line(s))]
    if s.running:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name, justify in (("trial", "right"), ("params", "left"), ("budget", "right"), (s.metric, "right"),
                              ("chars/s", "right"), ("running", "right"), ("worker", "left")):
            table.add_column(name, justify=justify)
        for r in s.running:
            table.add_row(str(r.number) + (f" (from {r.resumed_from})" if r.resumed_from is not None else ""),
                          short_params(r.params), f"{r.fraction:.0%}" if r.fraction is not None else "-",
                          f"{r.value:.4f}" if r.value is not None else "-",
                          f"{r.chars_per_sec:,.0f}" if r.chars_per_sec else "-", human_seconds(r.seconds), r.worker)
        parts.append(table)
    if events:
        parts += [Text("recent:", style="bold"), *(Text(f"  {e}") for e in events[-EVENTS_SHOWN:])]
    if s.machine:
        parts.append(Text(s.machine, style="dim"))
    return Group(*parts)


def print_once(reader: Reader, out: Callable[[str], None] = print) -> None:
    """``charlstm status`` without ``--watch``: the view as plain lines, once."""
    s = reader.look()
    elapsed = time.time() - s.started if s.started and not s.finished else None
    out(f"study {s.study}: {time_line(s, elapsed)}")
    out(f"trials: {headline(s)}")
    out(best_line(s))
    for r in s.running:
        frac = f", {r.fraction:.0%} of its budget" if r.fraction is not None else ""
        val = f", {s.metric} {r.value:.4f}" if r.value is not None else ""
        cps = f", {r.chars_per_sec:,.0f} chars/s" if r.chars_per_sec else ""
        out(f"  running: trial {r.number} ({short_params(r.params)}){frac}{val}{cps}, "
            f"{human_seconds(r.seconds)} so far, {r.worker}")
    if s.machine:
        out(s.machine)
    if s.finished:  # its summary, as the sweep that ended it printed it
        study, spec = reader.study, reader.spec
        if spec.scaling:
            answer = scaling.study_answer(reader.trials, spec.as_dict(), study.user_attrs.get(names.STUDY_PREDICTION))
            out("the answer:")
            for line in scaling.summary(answer):
                out(f"  {line}")
        out(format_leaderboard(leaderboard(study), spec.metric))


# ---------------------------------------------------------------------------------------------
# Watching it


@dataclass
class Watch:
    """Shows a study while it runs: a live view on a terminal (``mode='live'``), one
    timestamped line per event otherwise (``'plain'``), nothing but the end (``'quiet'``).
    Looks in its own thread every ``interval`` seconds; ``event`` takes lines from the caller
    (workers started or replaced). ``logs``: files whose new lines are events too (the output
    of worker processes while a live view holds the terminal)."""

    reader: Reader
    mode: str = "plain"
    verbose: bool = False
    interval: float = 2.0
    logs: list[Path] = field(default_factory=list)
    console: Console | None = None
    _events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=EVENTS_SHOWN))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _snapshot: Snapshot | None = None
    _t0: float = field(default_factory=time.time)

    def event(self, line: str) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "plain":
            print(f"{stamp()} {line}", flush=True)
        with self._lock:
            self._events.append(f"{time.strftime('%H:%M:%S')} {line}")

    def since(self, started: float | None) -> None:
        """Count elapsed time from ``started`` (the study's first trial) rather than from now."""
        self._t0 = started or self._t0

    def finished(self) -> bool:
        with self._lock:
            return self._snapshot is not None and self._snapshot.finished

    def __rich__(self):
        with self._lock:
            s, events = self._snapshot, list(self._events)
        if s is None:
            return Text("reading the study ...")
        return render(s, events, time.time() - self._t0)

    def __enter__(self) -> Watch:
        if self.mode == "quiet":
            return self
        self._before = seen(self.reader.study.get_trials(deepcopy=False))
        self._offsets = {p: p.stat().st_size if p.exists() else 0 for p in self.logs}
        self._live = None
        if self.mode == "live":
            self.console = self.console or Console()
            self._live = Live(self, console=self.console, refresh_per_second=1, redirect_stdout=True,
                              redirect_stderr=True)
            self._live.start()
        self._thread = threading.Thread(target=self._loop, name="charlstm-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.mode == "quiet":
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._look()  # (the end, as it is)
        if self._live is not None:
            self._live.refresh()
            self._live.stop()

    def _loop(self) -> None:
        last_progress = time.monotonic()
        while not self._stop.wait(self.interval):
            self._look()
            if self.mode == "plain" and time.monotonic() - last_progress >= PROGRESS_EVERY and self._snapshot:
                last_progress = time.monotonic()
                print(f"{stamp()} {progress_line(self._snapshot, time.time() - self._t0)}", flush=True)

    def _look(self) -> None:
        try:
            s = self.reader.look()
        except Exception as e:  # a view never stops the work it watches (a store restarting, ...)
            self.event(f"(the view could not read the study: {first_line(e)})")
            return
        for line in changes(self._before, self.reader.trials, s.metric, self.verbose):
            self.event(line)
        self._before = seen(self.reader.trials)
        for line in self._new_log_lines():
            self.event(line)
        with self._lock:
            self._snapshot = s

    def _new_log_lines(self) -> list[str]:
        lines = []
        for path in self.logs:
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]  # (a line being written waits for its end)
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            lines += [ln for ln in complete.decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines


def view_mode(quiet: bool, stream=None) -> str:
    """'live' on a terminal, 'plain' otherwise, 'quiet' when asked."""
    if quiet:
        return "quiet"
    stream = stream or sys.stdout
    return "live" if Console(file=stream).is_terminal else "plain"


def watch_study(study_name: str, storage_url: str | None, tracking_uri: str | None, watch: bool,
                interval: float = 2.0, verbose: bool = False) -> int:
    """``charlstm status``: print the study once, or (``watch``) follow it until it ends or Ctrl-C."""
    url = storage_url or names.DEFAULT_STORAGE
    if not is_rdb(url) and not Path(url.removeprefix("file:")).is_file():
        raise ConfigError(f"no study storage at {url}: pass --storage where the study lives")
    reader = Reader(study_name, storage_url, tracking_uri)
    first = reader.look()
    mode = view_mode(False)
    if not watch or first.finished or mode == "plain":  # (a log gets where it stands, then its events)
        print_once(reader)
    if not watch or first.finished:
        return 0
    with Watch(reader, mode, verbose, interval) as w:
        w.since(first.started)
        while not w.finished():
            time.sleep(interval)
    print_once(reader)  # its summary
    return 0
