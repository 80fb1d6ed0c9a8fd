"""What survives what: real faults on the local (journal + SQLite) set-up, each checked end to end.

SIGKILL and SIGINT mid-trial, a torn journal, processes racing on a fresh store, a diverged
loss, a full disk, a corrupt database, a failed allocation; then `charlstm doctor` on a study
left inconsistent on purpose. Every case: nothing recorded is lost, nothing stays RUNNING,
Optuna and MLflow agree, and the user gets one line and a way to go on.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from charlstm.checkpoint import load as load_checkpoint
from charlstm.cli import main
from charlstm.sweep.spec import load_sweep
from charlstm.sweep.store import open_storage, retried_as, started_trials
from tests.conftest import EXPERIMENTS, cli_env
from tests.conftest import tiny_study_dict as study_dict
from tests.test_cli import fails_cleanly, run_cli, runs, wait_for
from tests.test_sweep import STATUS, mlflow_client, write_study

SMOKE = str(EXPERIMENTS / "smoke.yaml")


def load(name: str = "tiny"):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=open_storage(None))


def slow_study(corpus: Path, tmp_path: Path, **extra) -> Path:
    """Trials of a few seconds that write a checkpoint every ~40 steps: room to kill one mid-way."""
    d = study_dict(corpus, **{"n_trials": 4, "trial_budget": {"max_steps": 1500}, **extra})
    d["overrides"]["train.eval_every_chars"] = 2048
    return write_study(tmp_path, d)


def unstamped(line: str) -> str:
    """An event line of a sweep's log without its timestamp."""
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line)


def start_sweep(path: Path, *args: str, log: str = "sweep") -> subprocess.Popen:
    """`charlstm sweep` in its own session (as a terminal's foreground job would be), its output
    in LOG.out and LOG.err."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "charlstm", "sweep", str(path), *args],
                                stdout=out, stderr=err, env=cli_env(), start_new_session=True)


def running_with_checkpoint(exclude: set[int] = frozenset(), before_step: int = 500):
    """A RUNNING trial (not in ``exclude``) that has written a checkpoint early in its budget
    (at most ``before_step`` of 1500 steps): it is still running a moment later, when the test
    stops or kills it."""
    try:
        study = load()
    except KeyError:  # the sweep has not created the study yet
        return None
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        ckpt = Path(f"checkpoints/tiny/trial-{t.number:04d}/last.pt")
        if t.number not in exclude and t.user_attrs.get("worker") and ckpt.is_file() \
                and load_checkpoint(ckpt)["step"] <= before_step:
            return t
    return None


def assert_consistent(study) -> None:
    """Nothing RUNNING anywhere; every trial's run has the status and `state` tag of its trial."""
    client = mlflow_client()
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert not runs("RUNNING"), [r.info.run_name for r in runs("RUNNING")]
    for t in study.get_trials():
        if t.state.name == "WAITING":
            continue
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert (run.info.status, run.data.tags.get("state")) == (STATUS[t.state.name], t.state.name), t.number
        if t.state.name == "COMPLETE":  # a retry too has its model to register and sample from
            assert "checkpoints/best.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}


def first_step(run_id: str) -> int:
    """The optimizer step of a run's first train-loss log (MLflow's steps count characters)."""
    client = mlflow_client()
    params = client.get_run(run_id).data.params
    chars = min(m.step for m in client.get_metric_history(run_id, "train_loss"))
    return chars // (int(params["data.batch_size"]) * int(params["data.seq_length"]))


def assert_retries_resumed(study) -> dict[int, int]:
    """Every FAIL trial was retried, and the retry went on from the failed trial's checkpoint:
    its first logged step is the first logging step after the checkpoint's (a trial stopped
    before it trained a step had none, and its retry starts at 0). Returns {failed trial: the
    step its retry resumed from}."""
    trials = {t.number: t for t in study.get_trials()}
    again = retried_as(trials.values())
    resumed = {}
    for n in (n for n, t in trials.items() if t.state.name == "FAIL"):
        retry = trials[again[n]]
        ckpt = Path(f"checkpoints/tiny/trial-{n:04d}/last.pt")
        resumed[n] = load_checkpoint(ckpt)["step"] if ckpt.is_file() else 0
        if resumed[n]:
            assert retry.user_attrs["resumed_from_trial"] == n
        assert first_step(retry.user_attrs["mlflow_run_id"]) == (resumed[n] // 10 + 1) * 10, (n, resumed[n])
    return resumed


# --------------------------------------------------------------------------------------------
# The chaos test: a worker SIGKILLed, then the sweep SIGINTed, then resumed


@pytest.mark.slow
def test_sigkilled_worker_and_interrupted_sweep_resume_to_the_target(corpus, tmp_path):
    path = slow_study(corpus, tmp_path)
    sweep = start_sweep(path, "--workers", "2")
    try:
        victim = wait_for(running_with_checkpoint, timeout=120)
        os.kill(int(victim.user_attrs["worker"].split(":")[1]), signal.SIGKILL)
        wait_for(lambda: "started a replacement" in Path("sweep.out").read_text(), timeout=60)
        wait_for(lambda: running_with_checkpoint({victim.number}), timeout=120)
        sweep.send_signal(signal.SIGINT)
        sweep.wait(timeout=60)
    finally:
        sweep.kill()
    err = Path("sweep.err").read_text()
    assert sweep.returncode == 130, err
    assert "Traceback" not in err and "paused by SIGINT" in err and "resume with: charlstm sweep" in err
    paused = load()
    assert any(t.state.name == "WAITING" for t in paused.get_trials())  # queued to resume
    assert_consistent(paused)
    assert mlflow_client().get_run(paused.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"

    resumed = run_cli("sweep", str(path), "--workers", "2", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    study = load()
    assert_consistent(study)
    resumed = assert_retries_resumed(study)
    assert resumed[victim.number] > 0  # the killed trial went on from its checkpoint...
    assert sum(step > 0 for step in resumed.values()) >= 2  # ... and so did an interrupted one
    assert started_trials(study.get_trials()) == 4  # the target, each interrupted trial counted once
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 4
    assert mlflow_client().get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_killed_single_worker_sweep_is_recovered_by_the_next_one(corpus, tmp_path):
    path = slow_study(corpus, tmp_path, n_trials=2)
    sweep = start_sweep(path)
    try:
        victim = wait_for(running_with_checkpoint, timeout=120)
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(timeout=30)
    finally:
        sweep.kill()
    assert load().trials[victim.number].state.name == "RUNNING"  # nobody left to say otherwise
    resumed = run_cli("sweep", str(path), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    study = load()
    assert_consistent(study)
    resumed = assert_retries_resumed(study)
    assert list(resumed) == [victim.number] and resumed[victim.number] > 0
    assert "had died" in study.trials[victim.number].user_attrs["fail_reason"]
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 2


@pytest.mark.slow
def test_sigterm_to_one_worker_pauses_its_trial_and_its_sweep_goes_on(corpus, tmp_path):
    """A stop sent to one worker (not the sweep) is a pause of that trial, not a crash: it is
    queued again, run again from its checkpoint, and the study still reaches its target."""
    sweep = start_sweep(slow_study(corpus, tmp_path), "--workers", "2")
    try:
        victim = wait_for(running_with_checkpoint, timeout=120)
        os.kill(int(victim.user_attrs["worker"].split(":")[1]), signal.SIGTERM)
        sweep.wait(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, Path("sweep.err").read_text()
    study = load()
    assert_consistent(study)
    assert assert_retries_resumed(study)[victim.number] > 0
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 4


# --------------------------------------------------------------------------------------------
# 1. Journal integrity


def test_a_torn_journal_tail_is_set_aside_and_nothing_else_is_lost(corpus, tmp_path, capsys):
    path = write_study(tmp_path, study_dict(corpus, n_trials=1))
    assert main(["sweep", str(path)]) == 0
    journal = Path("studies/journal.log")
    before = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(b'{"op_code":6,"tri')  # a writer killed mid-append
    capsys.readouterr()
    assert main(["sweep", str(path), "--n-trials", "1"]) == 0
    err = capsys.readouterr().err
    assert "torn last record" in err and "journal.log.torn" in err
    assert Path("studies/journal.log.torn").read_bytes() == b'{"op_code":6,"tri\n'
    assert journal.read_bytes().startswith(before)  # every complete record kept, in place
    study = load()
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert main(["report", "tiny", "--no-samples", "--no-log", "--out", "reports"]) == 0
    assert Path("reports/tiny/report.html").is_file()


def test_a_record_glued_onto_a_torn_one_is_recovered(corpus, tmp_path, capsys):
    """What a tool that does not check leaves: an append glued onto the torn record."""
    assert main(["sweep", str(write_study(tmp_path, study_dict(corpus, n_trials=1)))]) == 0
    with open("studies/journal.log", "ab") as f:
        f.write(b'{"op_code":6,"tri')
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("studies/journal.log"))
    optuna.load_study(study_name="tiny", storage=plain).set_user_attr("after_the_tear", 1)
    capsys.readouterr()
    study = load()  # opening repairs it
    assert study.user_attrs["after_the_tear"] == 1 and study.trials[0].state.name == "COMPLETE"
    assert "damaged records" in capsys.readouterr().err
    assert b'{"op_code":6,"tri' in Path("studies/journal.log.torn").read_bytes()


# --------------------------------------------------------------------------------------------
# 4. Divergence


def test_a_diverged_run_fails_with_one_line_naming_step_and_loss(corpus, capsys):
    err = fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={corpus}", "--set", "train.lr=1e9", "-q"],
                        "diverged at step", "train.lr")
    (run,) = runs()
    assert run.info.status == "FAILED" and "diverged at step" in run.data.tags["error"]
    assert err.split("diverged at step ")[1].split(":")[0].isdigit()


def test_a_diverged_trial_fails_and_is_never_the_best(corpus, tmp_path):
    d = study_dict(corpus, space={"train.lr": {"type": "float", "low": 1e-3, "high": 1e9, "log": True}},
                   enqueue_baseline=False)
    path = write_study(tmp_path, d)
    study = optuna.create_study(study_name="tiny", storage=open_storage(None))
    study.enqueue_trial({"train.lr": 1e9})
    study.enqueue_trial({"train.lr": 3e-3})
    assert main(["sweep", str(path), "--n-trials", "2"]) == 0
    diverged, fine = load().trials
    assert diverged.state.name == "FAIL" and "diverged" in diverged.user_attrs["fail_reason"]
    assert fine.state.name == "COMPLETE"
    run = mlflow_client().get_run(diverged.user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["state"]) == ("FAILED", "FAIL") and "diverged" in run.data.tags["error"]
    assert mlflow_client().get_model_version_by_alias("charlstm-tiny", "best").run_id == fine.user_attrs["mlflow_run_id"]


# --------------------------------------------------------------------------------------------
# 5. Concurrency


@pytest.mark.slow
def test_trains_and_sweeps_started_together_on_a_fresh_store_all_succeed(corpus, tmp_path):
    # trials of seconds: the second sweep joins while the first is still at its target (one that
    # set up after the first had finished would rightly start a target of its own)
    path = slow_study(corpus, tmp_path, n_trials=3, trial_budget={"max_steps": 3000})
    train = [sys.executable, "-m", "charlstm", "train", SMOKE, "--set", f"data.corpus={corpus}", "-q"]
    sweep = [sys.executable, "-m", "charlstm", "sweep", str(path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
             for cmd in (train, train, sweep, sweep)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    for out, _ in outs[2:]:  # both sweeps joined the one target
        (line,) = [line for line in out.splitlines() if unstamped(line).startswith("study tiny:")]
        assert "target 3," in line, out
    smoke = [r for r in runs() if r.info.run_name == "smoke"]
    assert len(smoke) == 2 and {r.info.status for r in smoke} == {"FINISHED"}
    assert len(list(Path("checkpoints/smoke").iterdir())) == 2  # a folder each, never shared
    study = load()
    # one target; two processes that finish a trial in the same instant may both start one more
    assert study.user_attrs["target_trials"] == 3 and 3 <= started_trials(study.get_trials()) <= 4
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    assert_consistent(study)
    client = mlflow_client()
    assert len(client.search_model_versions("name = 'charlstm-tiny'")) == 1  # one registration
    parents = client.search_runs([client.get_experiment_by_name("charlstm").experiment_id],
                                 filter_string="tags.`charlstm.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


# --------------------------------------------------------------------------------------------
# 6. Storage faults: one line each, nothing damaged


def test_a_corrupt_mlflow_db_is_one_line_and_left_as_it_was(corpus, capsys):
    for garbage in (os.urandom(8192), b"SQLite format 3\x00" + b"\xff" * 8192):
        Path("mlflow.db").write_bytes(garbage)
        fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={corpus}", "-q"], "mlflow.db", "cannot be used")
        assert Path("mlflow.db").read_bytes() == garbage


def _on_full_disk(folder: Path, size: str, command: str) -> str:
    """Run ``command`` (sh) with a tmpfs of ``size`` mounted on ``folder``, in a mount namespace
    of its own: the full disk is real to the kernel and gone when the command ends."""
    folder.mkdir(parents=True, exist_ok=True)
    root = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "--map-root-user"]
    script = f"mount -t tmpfs -o size={size} tmpfs {folder} && {command}"
    done = subprocess.run([*root, "sh", "-c", script], capture_output=True, text=True, env=cli_env(), timeout=120)
    if "mount" in done.stderr and "EXIT=" not in done.stdout:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but a tmpfs cannot be mounted here: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here ({done.stderr.strip()[:100]})")
    return done.stdout + done.stderr


@pytest.mark.slow
def test_disk_full_while_saving_a_checkpoint(corpus, tmp_path):
    full = tmp_path / "full"
    out = _on_full_disk(full, "24k", f"{sys.executable} -m charlstm train {SMOKE} --set data.corpus={corpus} "
                        f"--set train.out_dir={full} -q; echo EXIT=$?; find {full} -name '*.tmp'")
    lines = [line for line in out.splitlines() if line.startswith("charlstm:")]
    assert "EXIT=2" in out and len(lines) == 1, out
    assert "no space left on device" in lines[0] and f"{full}/smoke/" in lines[0]
    assert ".tmp" not in out.split("EXIT=2")[1]  # the temporary file was removed
    (run,) = runs()
    assert run.info.status == "FAILED" and "no space left on device" in run.data.tags["error"]


@pytest.mark.slow
def test_disk_full_while_uploading_artifacts(corpus, tmp_path):
    """An artifact store that cannot take the artifacts never stops the training: they wait,
    and the run that ends with some unsent says which, in one line, and tags itself so."""
    out = _on_full_disk(tmp_path / "mlartifacts", "40k",
                        f"{sys.executable} -m charlstm train {SMOKE} --set data.corpus={corpus} -q; echo EXIT=$?")
    lines = [line for line in out.splitlines() if line.startswith("charlstm:")]
    assert "EXIT=0" in out and "best val loss" in out and len(lines) == 1, out
    assert "artifact(s) not sent (checkpoints/best.pt, checkpoints/last.pt, model" in lines[0]
    assert "no space left on device" in lines[0] and "charlstm doctor --fix" in lines[0]
    (run,) = runs()
    assert run.info.status == "FINISHED" and "checkpoints/best.pt" in run.data.tags["charlstm.unsent"]
    assert list(Path("checkpoints/smoke").glob("*/best.pt"))  # the checkpoints themselves are kept


@pytest.mark.slow
def test_a_sweep_whose_artifact_store_is_full_loses_no_trial(corpus, tmp_path):
    """A full artifact store is not the trials' fault and stops none of them: they complete,
    their runs say what they could not send; with room again, doctor sends it from this
    machine's checkpoints and the next sweep registers the best."""
    path = write_study(tmp_path, study_dict(corpus, n_trials=2))
    out = _on_full_disk(tmp_path / "mlartifacts", "40k", f"{sys.executable} -m charlstm sweep {path}; echo EXIT=$?")
    assert "EXIT=0" in out and "Traceback" not in out, out
    assert "is not registered" in out and "artifact(s) not sent" in out
    study = load()
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

    listed = run_cli("doctor", "tiny")  # room again (the tmpfs is gone)
    assert listed.returncode == 1 and "artifacts not sent" in listed.stdout, listed.stdout
    fixed = run_cli("doctor", "tiny", "--fix")
    assert fixed.returncode == 0 and "all consistent now" in fixed.stdout, fixed.stdout + fixed.stderr
    again = run_cli("sweep", str(path), "--n-trials", "0")
    assert again.returncode == 0 and "registered models:/charlstm-tiny@best" in again.stdout, again.stderr
    assert_consistent(load())


def test_a_config_too_large_for_memory_is_refused_before_training(corpus, capsys):
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={corpus}", "--set", "model.hidden_size=400000", "-q"],
                  "training needs at least", "TiB", "free", "model.hidden_size")
    assert not runs()


def test_a_failed_allocation_names_its_size_and_what_to_shrink(corpus):
    """A 596-GiB model with the estimate stepped around, in a process whose address space is
    capped at 16 GiB: the allocation fails whatever the kernel's overcommit policy."""
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30));"
        "import charlstm.train as t; t.available_memory = lambda device: 1 << 62;"
        "from charlstm.cli import main;"
        f"sys.exit(main(['train', {SMOKE!r}, '--set', 'data.corpus={corpus}', '--set', "
        "'model.hidden_size=200000', '-q']))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=120)
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("charlstm: error: out of memory: tried to allocate"), done.stderr
    assert "GiB" in line and "model.hidden_size" in line


def test_generate_from_a_file_that_is_no_checkpoint(corpus, capsys):
    fails_cleanly(capsys, ["generate", str(corpus)], "not a charlstm checkpoint")


def test_a_study_name_mlflow_cannot_filter_on_is_refused_when_read(corpus, tmp_path, capsys):
    path = write_study(tmp_path, study_dict(corpus, study="bob's study"))
    fails_cleanly(capsys, ["sweep", str(path)], "bob's study", "letters, digits")
    assert not Path("studies/journal.log").exists() and not Path("mlflow.db").exists()


def test_a_failed_resume_leaves_the_run_it_started_from_as_it_was(corpus, capsys):
    assert main(["train", SMOKE, "--set", f"data.corpus={corpus}", "-q"]) == 0
    (before,) = runs()
    (ckpt,) = Path("checkpoints/smoke").glob("*/last.pt")
    saved = ckpt.read_bytes()
    capsys.readouterr()
    fails_cleanly(capsys, ["train", SMOKE, "--set", f"data.corpus={corpus}", "--set", "train.max_steps=80",
                           "--set", "train.lr=1e9", "--resume", "-q"], "diverged")
    (after,) = runs()
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time
    assert after.data.tags == before.data.tags and ckpt.read_bytes() == saved


# --------------------------------------------------------------------------------------------
# 7. doctor


def test_doctor_finds_and_fixes_a_seeded_inconsistency(corpus, tmp_path, capsys):
    path = write_study(tmp_path, study_dict(corpus, n_trials=2))
    assert main(["sweep", str(path)]) == 0
    study = load()
    client = mlflow_client()
    complete = study.trials[1]
    client.set_tag(complete.user_attrs["mlflow_run_id"], "state", "RUNNING")  # a tag that disagrees
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study.enqueue_trial(complete.params)  # a trial whose worker died mid-way, its checkpoint on disk
    orphan = study.ask()
    for key, dist in load_sweep(path).space.items():
        dist.suggest(orphan, key)
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}:0")
    Path(f"checkpoints/tiny/trial-{orphan.number:04d}").mkdir(parents=True)
    shutil.copy(f"checkpoints/tiny/trial-{complete.number:04d}/last.pt", f"checkpoints/tiny/trial-{orphan.number:04d}/")
    Path("checkpoints/tiny/trial-0099").mkdir()  # a folder of no trial
    first = study.trials[0].user_attrs["mlflow_run_id"]  # a copy sent for a retry elsewhere, left behind
    client.log_artifact(first, f"checkpoints/tiny/trial-{complete.number:04d}/last.pt", "resume")
    capsys.readouterr()

    assert main(["doctor", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "state=RUNNING" in out and "worker process is gone" in out and "trial-0099" in out
    assert "copy of a checkpoint sent for a retry elsewhere" in out
    assert main(["doctor", "tiny", "--fix"]) == 0
    assert "all consistent now" in capsys.readouterr().out
    assert main(["doctor"]) == 0
    study = load()
    assert study.trials[orphan.number].state.name == "FAIL"
    assert study.trials[-1].state.name == "WAITING"  # queued to resume from the checkpoint
    assert client.get_run(complete.user_attrs["mlflow_run_id"]).data.tags["state"] == "COMPLETE"
    assert Path("checkpoints/tiny/orphaned/trial-0099").is_dir()
    assert client.list_artifacts(first, "resume") == []
    assert main(["sweep", str(path), "--n-trials", "0"]) == 0  # runs nothing new...
    assert load().trials[-1].state.name == "WAITING"
    assert main(["sweep", str(path)]) == 0  # ... the next sweep resumes the queued trial
    assert [t.state.name for t in load().trials if t.number != orphan.number] == ["COMPLETE"] * 4
    assert main(["doctor", "tiny"]) == 0


def test_doctor_on_a_study_with_nothing_wrong(corpus, tmp_path, capsys):
    assert main(["sweep", str(write_study(tmp_path, study_dict(corpus, n_trials=1)))]) == 0
    capsys.readouterr()
    assert main(["doctor", "tiny"]) == 0
    assert "all consistent" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# 8. Small ones


def test_a_choice_of_the_wrong_type_is_refused_when_the_study_is_read(corpus, tmp_path, capsys):
    d = study_dict(corpus)
    d["space"]["data.seq_length"] = {"type": "categorical", "choices": [32, "48", None]}
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "space.data.seq_length", "'48'", "integer")
    d["space"]["data.seq_length"] = {"type": "categorical", "choices": [32, None]}
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "space.data.seq_length", "None")
    d["space"]["data.seq_length"] = {"type": "float", "low": 8, "high": 16}
    fails_cleanly(capsys, ["sweep", str(write_study(tmp_path, d))], "space.data.seq_length", "integer")


def test_n_trials_zero_runs_nothing_and_negative_is_refused(corpus, tmp_path, capsys):
    path = str(write_study(tmp_path, study_dict(corpus)))
    assert main(["sweep", path, "--n-trials", "0"]) == 0
    assert [t.state.name for t in load().trials] == ["WAITING"]  # the baseline, queued, not run
    fails_cleanly(capsys, ["sweep", path, "--n-trials", "-1"], "--n-trials", "0 or more")
    fails_cleanly(capsys, ["sweep", path, "--workers", "0"], "--workers")


@pytest.mark.slow
def test_an_impossible_sampled_config_is_one_line_in_the_worker_log(corpus, tmp_path):
    d = study_dict(corpus, n_trials=2, enqueue_baseline=False)
    d["space"]["data.seq_length"]["choices"] = [8, 100_000]  # longer than the corpus
    path = write_study(tmp_path, d)
    study = optuna.create_study(study_name="tiny", storage=open_storage(None))
    study.enqueue_trial({"model.embedding_dim": 4, "model.hidden_size": 8, "data.seq_length": 100_000})
    done = run_cli("sweep", str(path), "--workers", "2")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "trial 0 failed" in line]
    assert unstamped(line).startswith("worker ") and "too short" in line
    assert load().trials[0].state.name == "FAIL"
