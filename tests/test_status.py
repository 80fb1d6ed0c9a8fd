"""Watching a study: the sweep's live view on a (pseudo-)terminal, one timestamped line per event
in a log, ``charlstm status`` of a study another process runs or has finished, and the machine's
load recorded beside each trial."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import cli_env, tiny_study_dict, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def study_file(corpus: Path, tmp_path: Path, steps: int = 400, **extra) -> Path:
    d = tiny_study_dict(corpus, **extra)
    d["trial_budget"] = {"max_steps": steps}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def run_in_pty(cmd: list[str], timeout: float = 180) -> str:
    """What a terminal 140 columns wide would have received from ``cmd``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the pseudo-terminal
        os.environ.update(cli_env(COLUMNS="140", LINES="50"))
        os.execvp(cmd[0], cmd)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"{cmd} did not end in {timeout} s")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")[-2000:]
    return out.decode("utf-8", "replace")


def frames(raw: str, study: str) -> list[str]:
    """The live view's successive pictures, control codes removed."""
    plain = ANSI.sub("", raw).replace("\r", "")
    return [f"study {study}  " + f for f in plain.split(f"study {study}  ")[1:]]


@pytest.mark.slow
def test_the_live_view_on_a_terminal_shows_counts_best_running_trials_and_time_left(corpus, tmp_path):
    # (trials of a couple of seconds, and enough of them that the estimate is redrawn as they end)
    path = study_file(corpus, tmp_path, steps=600, n_trials=8)
    raw = run_in_pty([sys.executable, "-m", "charlstm", "sweep", str(path), "--workers", "2"])
    assert "\x1b[" in raw  # drawn in place, by rich
    shots = frames(raw, "tiny")
    assert len(shots) >= 5, raw[-2000:]
    counts = [m.group(1) for f in shots if (m := re.search(r"trials: (\d+) of 8 done", f))]
    assert counts[0] == "0" and counts[-1] == "8" and len(set(counts)) >= 3  # the counts move
    bests = {m.group(1) for f in shots if (m := re.search(r"best: val_bpc (\d\.\d+), trial \d+", f))}
    assert bests  # a best appears once a trial is complete
    rows = [m.groups() for f in shots for m in re.finditer(r"^\s+(\d+)\s+H=\d+ E=\d+ T=\d+ .*(worker \d)\s*$", f, re.M)]
    assert {w for _, w in rows} == {"worker 0", "worker 1"}  # a row per running trial, with its worker
    assert len({n for n, _ in rows}) >= 3  # and the rows change as trials end and start
    left = [m.group(1) for f in shots if (m := re.search(r"~(\w+) left", f))]
    assert left and len(set(left)) >= 2  # an estimate, which moves
    assert "finished" in shots[-1] and "8 complete" in shots[-1]
    assert re.search(r"trial \d+ complete: val_bpc", shots[-1])  # the last events
    assert "leaderboard" in ANSI.sub("", raw)  # the end, as before


@pytest.mark.slow
def test_a_sweep_into_a_file_writes_one_timestamped_line_per_event(corpus, tmp_path):
    path = study_file(corpus, tmp_path, steps=60, n_trials=3)
    done = subprocess.run([sys.executable, "-m", "charlstm", "sweep", str(path), "--workers", "2", "-v"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "\x1b" not in out  # nothing that assumes a terminal
    for n in range(3):
        assert len(re.findall(rf"^{STAMP} trial {n} started: H=\d+ E=\d+ T=\d+", done.stdout, re.M)) == 1
        assert len(re.findall(rf"^{STAMP} trial {n} complete: val_bpc \d\.\d{{4}} after \d+s$", done.stdout, re.M)) == 1
        assert re.search(rf"^{STAMP} trial {n} evaluated at [\d,]+ chars: val_bpc", done.stdout, re.M)  # (-v)
    quiet = subprocess.run([sys.executable, "-m", "charlstm", "sweep", str(path), "--n-trials", "1", "--quiet"],
                           capture_output=True, text=True, env=cli_env(), timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert " started: " not in quiet.stdout and "leaderboard" in quiet.stdout  # only the end


def test_events_between_two_looks(corpus, tmp_path):
    from charlstm.status import changes, seen

    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study = optuna.create_study()

    def trial(state, **kw):
        study.add_trial(optuna.trial.create_trial(state=state, params={"x": 0.5}, distributions=dist, **kw))
        return study.get_trials(deepcopy=False)

    trial(TrialState.WAITING)
    before = seen(study.get_trials(deepcopy=False))
    trials = trial(TrialState.COMPLETE, value=1.25, intermediate_values={100: 2.0, 200: 1.25})
    trials = trial(TrialState.PRUNED, intermediate_values={300: 3.5})
    trials = trial(TrialState.FAIL, user_attrs={"fail_reason": "diverged at step 7"})
    # a trial that started and ended between two looks: both
    assert changes(before, trials[:2], "val_bpc") == ["trial 1 started: x=0.5",
                                                      "trial 1 complete: val_bpc 1.2500 after 0s"]
    lines = changes({**before, 1: ("RUNNING", 1, None), 2: ("RUNNING", 0, None), 3: ("RUNNING", 0, None)},
                    trials, "val_bpc", verbose=True)
    assert lines == ["trial 1 evaluated at 200 chars: val_bpc 1.2500", "trial 1 complete: val_bpc 1.2500 after 0s",
                     "trial 2 evaluated at 300 chars: val_bpc 3.5000",
                     "trial 2 pruned at 300 chars (val_bpc 3.5000) after 0s",
                     "trial 3 failed after 0s: diverged at step 7"]
    started = changes({0: ("WAITING", 0, None)}, [_running(study, 0, resumed_from=2)], "val_bpc")
    assert started == ["trial 0 started: x=0.5", "trial 0 resumed from trial 2's checkpoint"]


def _running(study, number, resumed_from):
    t = study.get_trials(deepcopy=False)[number]
    return optuna.trial.FrozenTrial(
        number=number, state=TrialState.RUNNING, value=None, datetime_start=None, datetime_complete=None,
        params=t.params, distributions=t.distributions, user_attrs={"resumed_from_trial": resumed_from},
        system_attrs={}, intermediate_values={}, trial_id=t._trial_id)


@pytest.mark.slow
def test_time_left_is_the_budget_still_to_run_at_the_pace_of_ended_trials(corpus, tmp_path):
    from charlstm.status import Reader
    from charlstm.sweep.spec import load_sweep
    from charlstm.sweep.workers import run_sweep

    spec = load_sweep(study_file(corpus, tmp_path, steps=24, n_trials=3))
    study = run_sweep(spec, quiet=True)
    reader = Reader("tiny", None, None, workers=1)
    assert reader.look().finished and reader.look().left == 0
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
    study.set_user_attr("target_trials", 5)  # two more to run, each of the same budget
    s = reader.look()
    assert not s.finished and s.left == pytest.approx(2 * sum(walls) / len(walls), rel=1e-6)
    reader.workers = 2  # shared by two workers: half as long
    assert reader.look().left == pytest.approx(sum(walls) / len(walls), rel=1e-6)


@pytest.mark.slow
def test_status_shows_a_trial_another_process_is_running_and_changes_nothing(corpus, tmp_path):
    path = study_file(corpus, tmp_path, steps=200_000, n_trials=1)
    sweep = subprocess.Popen([sys.executable, "-m", "charlstm", "sweep", str(path)], env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        journal = Path("studies/journal.log")

        def status() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "charlstm", "status", "tiny"], capture_output=True,
                                  text=True, env=cli_env(), timeout=120)

        # the running trial's row has its budget share and speed once its run has written them
        wait_for(lambda: re.search(r"running: trial 0 .*of its budget.*chars/s", status().stdout), timeout=120)
        before = journal.read_bytes()
        shown = status()
        assert shown.returncode == 0, shown.stderr
        assert "trials: 0 of 1 done, 1 running" in shown.stdout
        assert re.search(r"running: trial 0 \(H=96 E=48 T=\d+\), \d+% of its budget, .*, worker 0", shown.stdout)
        assert journal.read_bytes()[: len(before)] == before  # (the sweep appends; status wrote nothing)
    finally:
        os.killpg(sweep.pid, signal.SIGTERM)  # a pause: its trial is queued to resume
        sweep.wait(timeout=120)
    paused = status()
    assert paused.returncode == 0 and "1 queued" in paused.stdout, paused.stdout


@pytest.mark.slow
def test_status_of_a_finished_study_is_its_summary(corpus, tmp_path):
    path = study_file(corpus, tmp_path, steps=24, n_trials=2)
    assert subprocess.run([sys.executable, "-m", "charlstm", "sweep", str(path), "-q"], env=cli_env(),
                          capture_output=True, timeout=300).returncode == 0
    for args in ([], ["--watch"]):  # (--watch on a finished study: the same, and it returns)
        done = subprocess.run([sys.executable, "-m", "charlstm", "status", "tiny", *args],
                              capture_output=True, text=True, env=cli_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert "finished" in done.stdout and "trials: 2 of 2 done, 2 complete" in done.stdout
        assert "leaderboard (top 2 of 2" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "charlstm", "status", "tiny", "--storage", "nowhere.log"],
                             capture_output=True, text=True, env=cli_env(), timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("charlstm: error: no study storage at nowhere.log")
    assert not Path("nowhere.log").exists()


def test_a_run_records_the_load_of_its_process_and_its_compute_share(corpus, monkeypatch):
    from charlstm import tracking
    from charlstm.config import load_config
    from charlstm.train import train
    from tests.conftest import EXPERIMENTS, smoke_overrides

    monkeypatch.setattr(tracking.tracker, "FLUSH_SECONDS", 0.0)  # (a write at every log: a tiny run has a few)
    cfg = load_config(EXPERIMENTS / "smoke.yaml", smoke_overrides(corpus, **{"train.max_steps": 30}))
    with tracking.MLflowTracker(cfg.tracking, run_name="load") as tracker:
        result = train(cfg, tracker, progress=False)
    client = tracking.client_for(cfg.tracking.uri)
    history = {k: client.get_metric_history(tracker.run_id, k) for k in
               ("machine/process_cpu_percent", "machine/process_rss_mb", "machine/cpu_percent",
                "machine/threads", "budget_fraction", "compute_share")}
    assert all(len(v) >= 2 for v in history.values()), {k: len(v) for k, v in history.items()}  # over time
    assert all(m.value > 10 for m in history["machine/process_rss_mb"])  # a Python process with torch: MBs
    assert [m.value for m in history["budget_fraction"]] == sorted(m.value for m in history["budget_fraction"])
    assert history["budget_fraction"][-1].value == pytest.approx(30 / 30)
    final = client.get_run(tracker.run_id).data.metrics["compute_share"]
    assert final == pytest.approx(result.compute_seconds / result.train_seconds)


def test_the_report_says_when_the_machine_was_busy():
    from charlstm.analysis import state_summary
    from charlstm.report import load_notes

    table = pd.DataFrame({"state": ["COMPLETE", "COMPLETE", "PRUNED"], "compute_share": [0.5, 0.6, None],
                          "train_seconds": [10.0, 10.0, 4.0]})
    (note,) = load_notes(table)
    assert "median 55%" in note and "lowest 50%" in note and "machine was busy" in note
    (calm,) = load_notes(table.assign(compute_share=[0.97, 0.99, None]))
    assert "busy" not in calm
    summary = state_summary(table).set_index("state")
    assert summary.loc["COMPLETE", "compute_share"] == pytest.approx(0.55)
    assert load_notes(pd.DataFrame({"state": ["COMPLETE"]})) == []
