"""The command-line layer: every argparse parser of ``python -m normshape_core`` and of the
``normshape`` command. Each subcommand turns its arguments into a validated settings object
(TrainConfig, EvalSettings, DiagnoseSettings, ReproduceSettings, ReportSettings,
AlternativesSettings) and calls the
science functions, which take settings and return results; nothing below this layer imports
argparse (tests/test_architecture.py).

Invalid input exits with status 2 and one clear line, never a traceback.

A subcommand is one line of ``COMMANDS``: (name, help, add its arguments, run it).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..settings.config import ConfigError
from . import alternatives, diagnose, evaluate, reproduce, sweep, train
from ._common import OneLineParser, one_line, report_unexpected

COMMANDS = [  # name, help, add the arguments, run
    ("train", "train one run and write its checkpoint", train.add_train_args, train.cmd_train),
    ("evaluate", "robustness table of a checkpoint", evaluate.add_evaluate_args,
     evaluate.cli_evaluate),
    ("grid", "Table IV: training ratio x inference ratio", evaluate.add_grid_args,
     evaluate.cli_grid),
    ("diagnose", "the confounding measurements of a checkpoint", diagnose.add_diagnose_args,
     diagnose.cli_diagnose),
    ("reproduce", "train and evaluate the paper's set of models",
     reproduce.add_reproduce_args, reproduce.cli_reproduce),
    ("report", "rewrite REPRODUCTION.md's generated tables from the results files",
     reproduce.add_report_args, reproduce.cli_report),
    ("alternatives", "the BN fixes side by side: train dual BN, GroupNorm / LayerNorm and "
     "normalizer-free runs, evaluate every method through its own norms",
     alternatives.add_alternatives_args, alternatives.cli_alternatives),
    ("alternatives-report", "write ALTERNATIVES.md from the alternatives results files",
     alternatives.add_alternatives_report_args, alternatives.cli_alternatives_report),
    ("sweep-confoundings", "where each BN confounding appears: a grid over depth, eps, BN "
     "batch size and dataset", sweep.add_sweep_args, sweep.cli_sweep),
]


def build_parser(prog: str = "python -m normshape_core") -> argparse.ArgumentParser:
    """The parser of every subcommand; ``parser.subcommands`` is where a front end (the
    ``normshape`` command) adds its own."""
    parser = OneLineParser(prog=prog,
                           description="Batch-Norm Shaping in adversarial training: train, "
                                       "evaluate, grid (Table IV), diagnose, reproduce.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    parser.subcommands = sub
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Optional[List[str]] = None,
         parser: Optional[argparse.ArgumentParser] = None) -> int:
    """Run one subcommand. Invalid input: one line on stderr, exit 2. Anything unexpected:
    one line with "please report" and the path of a log file holding the traceback, exit 1."""
    from ..training.checkpoints import CheckpointError
    from ..blocks.data import DatasetUnavailable
    from ..base.files import UnreadableFile

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (ConfigError, CheckpointError, DatasetUnavailable, UnreadableFile) as e:
        print(one_line(f"error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with the same command and --resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the catch-all: one line + a log, never a traceback
        print(report_unexpected(e, argv), file=sys.stderr)
        return 1
    return int(rc or 0)


__all__ = ["COMMANDS", "build_parser", "main", "one_line", "report_unexpected"]
