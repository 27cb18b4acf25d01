"""``train``: the flags are TrainConfig's fields (with their help and per-dataset defaults);
the arguments become a validated TrainConfig and ``training.train`` runs it."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..settings.config import ConfigError, TrainConfig
from ..base.names import STATE_NAME
from ._common import set_threads

BOOL_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool)}


def _default_text(name: str, default) -> str:
    from ..settings.presets import DATASET_PRESETS

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
    from ..settings.presets import TRAIN_PRESETS

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


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training import distributed
    from ..settings.config import check_writable_dir, sanitize_name
    from ..training.trainer import train

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
    nothing_saved = not (run_dir / STATE_NAME).exists()
    try:
        result = train(cfg, run_dir, resume=args.resume, progress=not args.quiet)
        distributed.current().barrier()  # ranks leave the group together after a full run
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
