"""Command line: ``python -m normshape_core train | evaluate | grid | diagnose | reproduce``
(the installed ``normshape`` command has the same subcommands, plus ``normshape app``).

Invalid input exits with status 2 and one clear line, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import List, Optional

from .config import ConfigError, TrainConfig

BOOL_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool)}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 2."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def _default_text(name: str, default) -> str:
    from .presets import DATASET_PRESETS

    if default is not None:
        return f"default: {default}"
    per = {d: p.get(name) for d, p in DATASET_PRESETS.items() if p.get(name) is not None}
    if name == "step_size":
        return "default: eps/4 (cifar10: 2/255)"
    if not per:
        return "default: none"
    vals = set(map(str, per.values()))
    if len(vals) == 1:
        return f"default: {vals.pop()}"
    return "default per dataset: " + ", ".join(f"{d} {v:.4g}" if isinstance(v, float) else f"{d} {v}"
                                               for d, v in per.items())


def add_train_args(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} ({_default_text(f.name, f.default)})".replace("%", "%%")
        if f.name in BOOL_FIELDS:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_text)
            continue
        typ = {"Optional[float]": float, "float": float, "Optional[int]": int,
               "int": int}.get(str(f.type), str)
        p.add_argument(flag, dest=f.name, type=typ, default=None, help=help_text,
                       metavar=f.name.upper())
    p.add_argument("--preset", default=None, help="start from a named preset (cifar10-paper: the "
                   "paper's CIFAR-10 setting); flags given override it (default: none)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    p.add_argument("--name", default=None, help="run folder name (default: built from settings)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder "
                   "from its last saved epoch (default: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: 1 "
                   "on machines with at most 4 cores, where more threads spin against each "
                   "other on these small models; else torch's own choice)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from .presets import TRAIN_PRESETS

    values = {}
    if args.preset:
        if args.preset not in TRAIN_PRESETS:
            raise ConfigError(f"unknown preset {args.preset!r}; choose one of: "
                              f"{', '.join(TRAIN_PRESETS)}")
        values.update(TRAIN_PRESETS[args.preset])
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    cfg = TrainConfig(**values).resolved()
    cfg.check_paths()
    return cfg


def set_threads(threads: Optional[int]) -> None:
    import os

    import torch

    if threads is None and (os.cpu_count() or 1) <= 4:
        threads = 1
    if threads is not None:
        if not 1 <= threads <= 1024:
            raise ConfigError(f"threads must be in [1, 1024], got {threads}")
        torch.set_num_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import distributed
    from .config import check_writable_dir, sanitize_name
    from .training import train

    cfg = config_from_args(args)
    check_writable_dir(args.out, "--out")
    if args.name is not None and not sanitize_name(args.name) == args.name:
        raise ConfigError(f"--name {args.name!r} may hold only letters, digits, '.', '_' and "
                          f"'-' (and not start with '.'), e.g. {sanitize_name(args.name)!r}")
    set_threads(args.threads)
    run_dir = Path(args.out) / sanitize_name(args.name or cfg.run_name())
    check_writable_dir(run_dir, "run folder")
    main_rank = distributed.is_main()  # under torchrun only rank 0 prints (and writes)
    # A finished run, a run in progress and other settings on --resume are refused by the
    # trainer, under the run folder's lock (training.Trainer.fit).
    nothing_saved = not (run_dir / "state.json").exists()
    try:
        result = train(cfg, run_dir, resume=args.resume, progress=not args.quiet)
    finally:
        distributed.cleanup()  # leave torchrun's process group; nothing on one process
    if not main_rank:
        return 0
    if args.resume and nothing_saved:  # said after the run: an error stays one line
        print(f"note: there was nothing to resume in {run_dir}; the run started from scratch",
              file=sys.stderr)
    for k, v in result.final_metrics.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def build_parser(prog: str = "python -m normshape_core") -> argparse.ArgumentParser:
    """The parser of every subcommand; ``parser.subcommands`` is where a front end (the
    ``normshape`` command) adds its own."""
    parser = OneLineParser(prog=prog,
                           description="Batch-Norm Shaping in adversarial training: train, "
                                       "evaluate, grid (Table IV), diagnose, reproduce.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    parser.subcommands = sub
    from . import diagnostics, evaluation, reproduce

    commands = [  # name, help, add the arguments, run
        ("train", "train one run and write its checkpoint", add_train_args, cmd_train),
        ("evaluate", "robustness table of a checkpoint", evaluation.add_evaluate_args,
         evaluation.cli_evaluate),
        ("grid", "Table IV: training ratio x inference ratio", evaluation.add_grid_args,
         evaluation.cli_grid),
        ("diagnose", "the confounding measurements of a checkpoint",
         diagnostics.add_diagnose_args, diagnostics.cli_diagnose),
        ("reproduce", "train and evaluate the paper's set of models",
         reproduce.add_reproduce_args, reproduce.cli_reproduce),
        ("report", "rewrite REPRODUCTION.md's generated tables from the results files",
         reproduce.add_report_args, reproduce.cli_report)]
    for name, help_text, add_args, run in commands:
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def one_line(text: str, limit: int = 4000) -> str:
    """A message as one line (an error is one line on stderr, whatever it quotes)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def report_unexpected(exc: BaseException, argv) -> str:
    """The one line for an unexpected failure; the traceback goes to a log file."""
    import platform
    import traceback

    from ._version import __version__
    from .userdata import write_error_log

    text = (f"normshape {__version__}, Python {platform.python_version()}\n"
            f"command: {' '.join(map(str, sys.argv[:1] + list(argv or sys.argv[1:])))}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    try:
        where = f"details in {write_error_log(text)}"
    except OSError:
        where = "no log file could be written"
    return one_line(f"error: unexpected {type(exc).__name__}: {exc}", 240) + \
        f" -- this is a bug, please report it ({where})"


def main(argv: Optional[List[str]] = None,
         parser: Optional[argparse.ArgumentParser] = None) -> int:
    """Run one subcommand. Invalid input: one line on stderr, exit 2. Anything unexpected:
    one line with "please report" and the path of a log file holding the traceback, exit 1."""
    from .checkpoints import CheckpointError
    from .data import DatasetUnavailable

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (ConfigError, CheckpointError, DatasetUnavailable) as e:
        print(one_line(f"error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with the same command and --resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the catch-all: one line + a log, never a traceback
        print(report_unexpected(e, argv), file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
