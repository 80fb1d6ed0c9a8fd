"""``charlstm train`` and ``charlstm generate``: one experiment, and text from a trained model."""

from __future__ import annotations

import argparse
from dataclasses import replace

from charlstm import interrupt, names
from charlstm.cli.common import command, stopped

EPILOG_TRAIN = """examples:
  charlstm train baseline                                      # a shipped experiment, by name
  charlstm train experiments/baseline.yaml
  charlstm train experiments/baseline.yaml --set train.lr=3e-3 --set model.hidden_size=256
  charlstm train experiments/baseline.yaml --resume            # newest run of this experiment
  charlstm train experiments/smoke.yaml --dry-run              # a few steps, nothing tracked
"""


def add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train one experiment (tracked in MLflow)",
        description="Train one experiment config; the run is tracked in MLflow.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="experiment YAML, or the name of a shipped one (baseline, large, smoke)")
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override one config field by its dotted path, e.g. model.hidden_size=256 (repeatable)",
    )
    t.add_argument(
        "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
        help="continue from a checkpoint file or run dir (default: this experiment's newest run)",
    )
    t.add_argument("--dry-run", action="store_true", help="3 steps, no tracking: a smoke test")
    t.add_argument("--dry-run-dir", default="/tmp/charlstm-dry-run", help=argparse.SUPPRESS)
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train, defer=True)


def cmd_train(args: argparse.Namespace) -> int:
    from charlstm import checkpoint
    from charlstm.config import load_config, parse_set_args
    from charlstm.train import train

    overrides = parse_set_args(args.set)
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        cfg = replace(
            cfg,
            train=replace(
                cfg.train, max_steps=3, max_chars=None, max_seconds=None, sample_length=20,
                out_dir=args.dry_run_dir,
            ),
            tracking=replace(cfg.tracking, enabled=False),
        )
    resume = None
    if args.resume is not None:
        resume = checkpoint.latest_run_dir(cfg.train.out_dir, cfg.name) if args.resume == "latest" else args.resume
        checkpoint.load(resume)  # fail early, before any tracking run is touched

    try:
        if not cfg.tracking.enabled:
            result = train(cfg, resume=resume, progress=not args.quiet)
        else:
            from charlstm.tracking import MLflowTracker

            with MLflowTracker(cfg.tracking, run_name=cfg.name) as tracker:
                result = train(cfg, tracker, resume=resume, progress=not args.quiet)
            print(f"mlflow run: {tracker.run_id}")
    except interrupt.Interrupted as e:  # raised at a step boundary, once last.pt is saved
        return stopped(f"interrupted by {e.signal_name} {e.where}, {e.checkpoint} saved",
                        command("train", args.config, set=args.set, resume=str(e.checkpoint.parent)))
    print(
        f"best val loss {result.best_val_loss:.4f} nats/char ({result.best_val_bpc:.4f} bits/char) "
        f"after {result.step} steps, {result.chars_seen:,} chars, "
        f"{result.chars_per_sec:,.0f} chars/s; checkpoints in {result.run_dir}"
    )
    return 0


EPILOG_GENERATE = """examples:
  charlstm generate checkpoints/baseline/20261124-101500/best.pt --prime "ROMEO:"
  charlstm generate 3f2a...c9 --length 1000 --temperature 0.8 --top-k 20 --num-samples 3
"""


def add_generate(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="sample text from a checkpoint or MLflow run",
        description="Sample text from a trained model.",
        epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("source", help="checkpoint file / run dir, MLflow run id, or models:/NAME@ALIAS")
    g.add_argument("--prime", default=names.GEN_PRIME, help="text to start from (default: a newline)")
    g.add_argument("--escapes", action="store_true", help="read \\n etc. in --prime as escapes")
    g.add_argument("--length", type=int, default=names.GEN_LENGTH, help=f"characters to generate ({names.GEN_LENGTH})")
    g.add_argument("--temperature", type=float, default=names.GEN_TEMPERATURE,
                   help=f"softmax temperature; 0 = greedy ({names.GEN_TEMPERATURE})")
    g.add_argument("--top-k", type=int, default=None, help="sample only from the K likeliest chars")
    g.add_argument("--num-samples", type=int, default=1, help="independent samples, run as one batch")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (auto)")
    g.add_argument("--tracking-uri", default=None, help="MLflow URI for run ids (default: as train)")
    g.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from charlstm.device import resolve_device
    from charlstm.sample import generate
    from charlstm.tracking import load_model

    model, vocab, _ = load_model(args.tracking_uri, args.source, resolve_device(args.device))
    prime = args.prime.encode("utf-8").decode("unicode_escape") if args.escapes else args.prime
    texts = generate(
        model, vocab, prime, args.length, args.temperature, args.top_k, args.num_samples, args.seed
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0
