"""``sweep-confoundings``: the flags of the confounding sweep (``normshape_core.sweep``), checked
before any cell is trained; the sweep's functions train, measure and write CONFOUNDINGS.md."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import MAX_SEED, ConfigError
from ..sweep import (DATASETS, build_grid, cost_text, load_results, run_sweep, ship_lessons,
                     update_document)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", choices=("full", "tiny"), default="full", help="full: the whole "
                   "grid (about 40 min on one core); tiny: base + one deeper model per "
                   "dataset (default: full)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: "
                   + ", ".join(DATASETS) + ")")
    p.add_argument("--work", default=None, help="folder of the trained cells (default: "
                   "sweep/ in the user's normshape folder)")
    p.add_argument("--out", default="checkpoints/sweep/confoundings.json", help="results file "
                   "(default: checkpoints/sweep/confoundings.json)")
    p.add_argument("--doc", default="CONFOUNDINGS.md", help="document whose generated block "
                   "is rewritten; 'none' to skip (default: CONFOUNDINGS.md)")
    p.add_argument("--lessons", default="checkpoints/lessons", help="where the lesson "
                   "checkpoints go (full grid only); 'none' to skip (default: "
                   "checkpoints/lessons)")
    p.add_argument("--report-only", action="store_true", help="rewrite the document (and "
                   "nothing else) from the results file (default: off)")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every "
                   "training (default: the sweep's settings)")
    p.add_argument("--n-test", type=int, default=None, help="test samples per measurement "
                   "(default: 500 for 2-D, 397 digits, 300 Fashion-MNIST)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")


def cli_sweep(args: argparse.Namespace) -> int:
    import torch

    from ..userdata import data_home

    results_path = Path(args.out)
    if args.report_only:
        if not results_path.exists():
            raise ConfigError(f"no results file {results_path}: run the sweep first")
        if args.doc == "none":
            raise ConfigError("--report-only with --doc none has nothing to do")
        update_document(Path(args.doc), load_results(results_path))
        print(f"updated {args.doc} from {results_path}")
        return 0
    for name in ("epochs", "n_test", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    torch.set_num_threads(args.threads)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be a whole number in [0, {MAX_SEED}], got {args.seed}")
    cells = build_grid(datasets, tiny=args.grid == "tiny")
    work = Path(args.work) if args.work else data_home() / "sweep"
    results = run_sweep(cells, work, results_path, seed=args.seed, epochs=args.epochs,
                        n_test=args.n_test, device=args.device, grid=args.grid)
    if args.lessons != "none" and args.grid == "full" and not results["missing"]:
        ship_lessons(results, work, Path(args.lessons), seed=args.seed, device=args.device)
    if args.doc != "none":
        update_document(Path(args.doc), results)
    print(f"results: {results_path} ({cost_text(results)})")
    return 0
