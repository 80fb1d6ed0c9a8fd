"""The training loop: budgets, schedule, evaluation, checkpoints, determinism and resume."""

from __future__ import annotations

import math

import pytest
import torch

from charlstm.checkpoint import load as load_checkpoint
from charlstm.checkpoint import model_from_checkpoint
from charlstm.checkpoint import save as save_checkpoint
from charlstm.config import load_config
from charlstm.errors import CheckpointError, ConfigError
from charlstm.model import CharacterLSTM
from charlstm.schedule import AUTO_LR_RANGE, AUTO_LR_SECONDS, auto_lr, lr_at, resolve_lr
from charlstm.train import Tracker, eval_layout, evaluate, train
from tests.conftest import EXPERIMENTS, smoke_overrides


def smoke(corpus, **extra):
    return load_config(EXPERIMENTS / "smoke.yaml", smoke_overrides(corpus, **extra))


class Recorder(Tracker):
    """A tracker that remembers what train() told it."""

    def __init__(self):
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.config = self.counts = self.dataset = None
        self.texts, self.checkpoints = [], []

    def log_config(self, cfg):
        self.config = cfg

    def log_param_counts(self, counts):
        self.counts = counts

    def log_dataset(self, corpus, vocab, n_train, n_val):
        self.dataset = (corpus.sha256, len(vocab), n_train, n_val)

    def log_metrics(self, metrics, step):
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, v))

    def log_text(self, text, artifact_file):
        self.texts.append((artifact_file, text))

    def log_checkpoint(self, path):
        self.checkpoints.append(path.name)


def test_train_learns_and_reports_everything(corpus):
    rec = Recorder()
    result = train(smoke(corpus), rec, progress=False)
    assert result.step == 40 and result.chars_seen == 40 * 4 * 16
    first, last = result.evals[0]["val_loss"], result.evals[-1]["val_loss"]
    assert last < first < math.log(60)  # it learns, starting near uniform
    assert result.best_val_loss == min(e["val_loss"] for e in result.evals)
    assert result.best_val_bpc == pytest.approx(result.best_val_loss / math.log(2))
    for key in ("train_loss", "lr", "chars_per_sec", "chars_seen", "val_loss", "val_bpc"):
        assert rec.metrics[key], key
    assert rec.counts["total"] == sum(rec.counts[k] for k in ("embedding", "lstm", "fc"))
    assert rec.dataset[1] > 20 and rec.dataset[3] > 0
    assert rec.texts and all(name.startswith("samples/step_") for name, _ in rec.texts)
    assert sorted(rec.checkpoints) == ["best.pt", "last.pt"]
    assert (result.run_dir / "best.pt").is_file() and (result.run_dir / "last.pt").is_file()
    assert not list(result.run_dir.glob(".*tmp"))  # atomic writes leave no temp files


def test_same_seed_same_curve(corpus):
    a = train(smoke(corpus), progress=False)
    b = train(smoke(corpus), progress=False)
    c = train(smoke(corpus, **{"train.seed": 7}), progress=False)
    assert a.train_curve == b.train_curve
    assert [e["val_loss"] for e in a.evals] == [e["val_loss"] for e in b.evals]
    assert a.train_curve != c.train_curve


@pytest.mark.parametrize("batching", ["stream", "random"])
def test_resume_equals_uninterrupted(corpus, batching):
    extra = {"data.batching": batching, "model.dropout": 0.2, "model.num_layers": 2}
    full = train(smoke(corpus, **extra), progress=False)

    def interrupt_at_second_eval(record):
        if len(seen) == 1:
            raise KeyboardInterrupt
        seen.append(record)

    seen: list = []
    with pytest.raises(KeyboardInterrupt):
        train(smoke(corpus, **extra), on_eval=interrupt_at_second_eval, progress=False)
    run_dirs = list((corpus.parent / "checkpoints" / "smoke").iterdir())
    interrupted = max(run_dirs, key=lambda p: p.stat().st_mtime)
    ckpt = load_checkpoint(interrupted / "last.pt")
    assert 0 < ckpt["step"] < full.step
    resumed = train(smoke(corpus, **extra), resume=interrupted, progress=False)
    assert resumed.train_curve == full.train_curve
    assert [e["val_loss"] for e in resumed.evals] == [e["val_loss"] for e in full.evals]


def test_budget_in_chars(corpus):
    result = train(smoke(corpus, **{"train.max_steps": None, "train.max_chars": 1000}), progress=False)
    assert result.chars_seen == 16 * 64  # the first step at or past 1000 characters


def test_lr_schedule(corpus):
    cfg = smoke(corpus, **{"train.lr": 1.0, "train.warmup_steps": 10, "train.min_lr_ratio": 0.1})
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 10, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55)
    assert lr_at(cfg, 99, 1.0) == pytest.approx(0.1)
    const = smoke(corpus, **{"train.schedule": "constant", "train.warmup_steps": 0})
    assert lr_at(const, 99, 0.9) == resolve_lr(const.train)


def test_lr_auto_follows_the_budget_and_runs_record_the_number(corpus):
    """train.lr: auto (the default) falls with the budget as measured (benchmarks/lr_budget.py);
    a run logs and checkpoints the number it used, never the word."""
    by_budget = [auto_lr(load_config(None, {"train.max_seconds": s}).train) for s in (10, 60, 600, 10**6)]
    assert by_budget == sorted(by_budget, reverse=True) and by_budget[0] > by_budget[2]
    assert all(AUTO_LR_RANGE[0] <= lr <= AUTO_LR_RANGE[1] for lr in by_budget)
    assert by_budget[-1] == AUTO_LR_RANGE[0]  # held within its measured range
    cfg = smoke(corpus)  # a budget of steps: the lr of AUTO_LR_SECONDS
    assert cfg.train.lr == "auto"
    rec = Recorder()
    result = train(cfg, rec, progress=False)
    expected = auto_lr(load_config(None, {"train.max_seconds": AUTO_LR_SECONDS}).train)
    assert rec.config.train.lr == pytest.approx(expected)
    assert load_checkpoint(result.run_dir / "last.pt")["config"]["train"]["lr"] == pytest.approx(expected)
    assert 0 < max(v for _, v in rec.metrics["lr"]) <= expected  # (the schedule's peak)
    assert resolve_lr(smoke(corpus, **{"train.lr": 0.01}).train) == 0.01  # a number is kept


def test_lr_scale_multiplies_the_rule_and_is_recorded_beside_it(corpus):
    """A study searches train.lr_scale, a multiple of the auto rule: the peak is lr x lr_scale,
    and both numbers are recorded (the rule's lr, the multiplier), so a budget change moves it."""
    base, scaled = Recorder(), Recorder()
    train(smoke(corpus, **{"train.schedule": "constant", "train.warmup_steps": 0}), base, progress=False)
    train(smoke(corpus, **{"train.schedule": "constant", "train.warmup_steps": 0, "train.lr_scale": 0.5}), scaled,
          progress=False)
    assert scaled.config.train.lr == pytest.approx(base.config.train.lr) and scaled.config.train.lr_scale == 0.5
    assert [v for _, v in scaled.metrics["lr"]] == pytest.approx([0.5 * base.config.train.lr] * len(scaled.metrics["lr"]))
    with pytest.raises(ConfigError, match="train.lr_scale must be > 0"):
        smoke(corpus, **{"train.lr_scale": 0})


def test_eval_points_give_every_run_that_many_evaluations_the_last_on_the_whole_split(corpus):
    """train.eval_points: evaluations at each 1/N of the budget whatever the run's speed; with
    eval_slice_chars the ones before the last read a slice, and only whole-split ones count as best."""
    for budget in ({"train.max_steps": 30}, {"train.max_steps": None, "train.max_seconds": 1.0}):
        rec = Recorder()
        result = train(smoke(corpus, **budget, **{"train.eval_points": 5, "train.eval_slice_chars": 200}), rec,
                       progress=False)
        assert [e["val_chars"] for e in result.evals][:4] == [200] * 4
        assert len(result.evals) == 5 and result.evals[-1]["full"] and not any(e["full"] for e in result.evals[:4])
        assert result.evals[-1]["val_chars"] > 200 and [v for _, v in rec.metrics["val_chars"]][-1] > 200
        assert result.best_val_loss == result.evals[-1]["val_loss"]  # a slice's value is never the run's best
        assert len(rec.metrics["best_val_loss"]) == 1  # logged from the first whole-split evaluation on
    steps = [e["step"] for e in train(smoke(corpus, **{"train.max_steps": 30, "train.eval_points": 3}),
                                      progress=False).evals]
    assert steps == [10, 20, 30]


@pytest.mark.parametrize("n,streams", [(10, 1), (5000, 2), (100_000, 8), (123_457, 32)])
def test_eval_layout_scores_every_target_once(n, streams):
    pos, scored = eval_layout(n, streams)
    assert sorted(pos[scored].tolist()) == list(range(n))


def test_evaluate_streams_match_one_stream(corpus):
    result = train(smoke(corpus, **{"train.max_steps": 60}), progress=False)
    model, vocab, _ = model_from_checkpoint(load_checkpoint(result.run_dir / "best.pt"))
    ids = torch.as_tensor(vocab.encode((corpus.read_text()) * 3))
    one = evaluate(model, ids, 1)
    assert evaluate(model, ids, 4) == pytest.approx(one, rel=1e-3)


def test_evaluate_uniform_model_is_log_v():
    model = CharacterLSTM(10, 4, 8)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    ids = torch.randint(0, 10, (500,))
    assert evaluate(model, ids, 1) == pytest.approx(math.log(10), rel=1e-6)


def test_checkpoint_contents_load_weights_only(corpus):
    result = train(smoke(corpus), progress=False)
    ckpt = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["config"]["model"]["hidden_size"] == 16
    model, vocab, cfg = model_from_checkpoint(ckpt)
    assert len(vocab) == model.vocab_size and cfg.name == "smoke"


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    save_checkpoint(tmp_path / "other.pt", {"hello": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a charlstm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_resume_on_another_vocab_is_refused(corpus, tmp_path):
    result = train(smoke(corpus), progress=False)
    before = (result.run_dir / "last.pt").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("xyz" * 3000 + "QQQ" * 1000)
    with pytest.raises(CheckpointError, match="another vocab"):
        train(smoke(other), resume=result.run_dir, progress=False)
    assert (result.run_dir / "last.pt").read_bytes() == before


def test_resume_with_another_model_is_refused(corpus):
    result = train(smoke(corpus), progress=False)
    with pytest.raises(CheckpointError, match="differs"):
        train(smoke(corpus, **{"model.hidden_size": 32}), resume=result.run_dir, progress=False)


def test_precision_auto_resolves_to_what_the_hardware_has(monkeypatch):
    from charlstm import device as device_module
    from charlstm.device import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "bfloat16_runs", lambda device: True)
    assert resolve_precision("float32", cpu) == "float32"
    assert resolve_precision("bfloat16", cpu) == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", cpu) == "float32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_precision("auto", cpu) == "bfloat16"
    # units that torch's LSTM cannot use (oneDNN without AVX-512): auto stays in float32 and an
    # explicit bfloat16 is refused before anything runs
    monkeypatch.setattr(device_module, "bfloat16_runs", lambda device: False)
    assert resolve_precision("auto", cpu) == "float32"
    with pytest.raises(ConfigError, match="train.precision=bfloat16: .*AVX-512"):
        resolve_precision("bfloat16", cpu)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_both_precisions_learn_and_record_what_ran(corpus, precision, monkeypatch):
    """auto is resolved before anything is logged: the checkpoint and the tracker see the
    precision that actually ran; both precisions learn where they can run, and a bfloat16 this
    CPU cannot run is one config error (the probe is the real one: no monkeypatching)."""
    from charlstm.device import bfloat16_runs

    if precision == "bfloat16" and not bfloat16_runs(torch.device("cpu")):
        with pytest.raises(ConfigError, match="cannot run in bfloat16"):
            train(smoke(corpus, **{"train.precision": "bfloat16"}), progress=False)
        return
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: precision == "bfloat16",
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    rec = Recorder()
    result = train(smoke(corpus), rec, progress=False)
    assert rec.config.train.precision == precision
    assert load_checkpoint(result.run_dir / "last.pt")["config"]["train"]["precision"] == precision
    losses = [v for _, v in rec.metrics["train_loss"]]
    assert losses[-1] < losses[0]
    assert next(iter(model_from_checkpoint(load_checkpoint(result.run_dir / "last.pt"))[0].parameters())).dtype \
        == torch.float32  # autocast leaves the weights in float32


def test_a_stop_request_pauses_at_the_next_step_and_resumes_exactly(corpus):
    """A signal only sets a request; the loop acts on it at a step boundary: last.pt holds that
    step, and resuming from it draws the uninterrupted curve."""
    from charlstm import interrupt

    full = train(smoke(corpus), progress=False)
    at = []

    def stop_at_first_eval(record):
        if not at:
            at.append(record["step"])
            interrupt.request("SIGTERM")

    try:
        with pytest.raises(interrupt.Interrupted) as stopped:
            train(smoke(corpus), on_eval=stop_at_first_eval, progress=False)
    finally:
        interrupt.reset()
    assert stopped.value.signal_name == "SIGTERM" and f"at step {at[0]}" in str(stopped.value)
    assert load_checkpoint(stopped.value.checkpoint)["step"] == at[0] < full.step
    resumed = train(smoke(corpus), resume=stopped.value.checkpoint.parent, progress=False)
    assert resumed.train_curve == full.train_curve


@pytest.mark.parametrize("extra,shown", [
    ({"train.lr": 1e9}, "train loss"),  # finite, but far above uniform guessing after warm-up
    ({"train.lr": 1e38, "train.grad_clip": 0.0, "train.warmup_steps": 0}, "nan"),  # overflows
])
def test_a_diverged_run_stops_at_once(corpus, extra, shown):
    from charlstm.errors import Diverged

    rec = Recorder()
    with pytest.raises(Diverged, match="diverged at step") as e:
        train(smoke(corpus, **extra), rec, progress=False)
    assert shown in str(e.value).lower()
    step = int(str(e.value).split("at step ")[1].split(":")[0])
    assert step <= 10 + smoke(corpus, **extra).train.warmup_steps  # within a logging window of warm-up
    assert "val_loss" not in rec.metrics or len(rec.metrics["val_loss"]) <= 1


def test_a_loss_above_uniform_during_warm_up_is_not_divergence(corpus):
    from charlstm.train import check_finite

    cfg = smoke(corpus, **{"train.warmup_steps": 50})
    check_finite(20.0, 40, cfg, 60)  # still warming up: the loss may wander
    with pytest.raises(Exception, match="diverged at step 60"):
        check_finite(20.0, 60, cfg, 60)
    with pytest.raises(Exception, match="diverged at step 3"):
        check_finite(float("nan"), 3, cfg, 60)  # non-finite: at once, warm-up or not


def test_a_seconds_budget_counts_compute_and_the_wall_clock_is_a_separate_cap():
    from types import SimpleNamespace

    from charlstm.config import TrainConfig
    from charlstm.schedule import budget_progress, budget_spent

    tc = TrainConfig(max_seconds=10, max_wall_seconds=30)
    at = lambda compute, wall: SimpleNamespace(step=1, chars=1, compute_time=compute, train_time=wall)  # noqa: E731
    assert not budget_spent(tc, at(9.9, 29))  # a busy machine: wall ran ahead, compute did not
    assert budget_spent(tc, at(10, 12)) and budget_spent(tc, at(5, 30))
    assert budget_progress(tc, at(5, 6)) == 0.5 and budget_progress(tc, at(2, 24)) == 0.8
    implied = TrainConfig(max_seconds=10)  # no cap given: 4 x max_seconds of wall-clock
    assert not budget_spent(implied, at(5, 39)) and budget_spent(implied, at(5, 40))
    assert budget_progress(implied, at(5, 39)) == 0.5  # a safety net, not the schedule's clock


def test_the_compute_clock_counts_cpu_time_over_threads_not_waiting():
    import time

    from charlstm.schedule import compute_clock

    clock, threads = compute_clock(torch.device("cpu")), torch.get_num_threads()
    c0 = clock()
    time.sleep(0.3)  # waiting (as for a core another process holds) is not compute
    assert clock() - c0 < 0.05 / threads
    c0, p0 = clock(), time.process_time()
    while time.process_time() - p0 < 0.2:  # 0.2 s of CPU on one thread
        pass
    assert clock() - c0 == pytest.approx(0.2 / threads, rel=0.25)
