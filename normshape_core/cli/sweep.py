"""``sweep-confoundings``: the flags become SweepSettings (``normshape_core.studies.sweep``),
checked before any cell is trained (numbers bounded, paths usable, an existing results file readable
and of the same settings, every dataset loadable); the sweep's functions train, measure and
write the results and CONFOUNDINGS.md: to the user's folder, or with ``--ship`` to the
shipped files of the source checkout."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..studies.sweep import (MAX_THREADS, SWEEP_DATASETS, SweepSettings, build_grid, cost_text,
                             load_results, report_block, run_sweep, ship_lessons, update_document)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", choices=("full", "tiny"), default="full", help="full: the whole "
                   "grid (about 40 min on one core); tiny: base + one deeper model per "
                   "dataset (default: full)")
    p.add_argument("--datasets", default=",".join(SWEEP_DATASETS),
                   help="comma-separated (default: " + ", ".join(SWEEP_DATASETS) + ")")
    p.add_argument("--ship", action="store_true", help="write the shipped results of this "
                   "source checkout (checkpoints/sweep/confoundings.json, CONFOUNDINGS.md, "
                   "checkpoints/lessons) instead of the user's folder; for regenerating them "
                   "(default: off)")
    p.add_argument("--work", default=None, help="folder of the trained cells (default: "
                   "sweep/ in the user's normshape folder)")
    p.add_argument("--out", default=None, help="results file; new cells are merged into it, "
                   "none is dropped (default: sweep/confoundings.json in the user's folder; "
                   "with --ship: checkpoints/sweep/confoundings.json)")
    p.add_argument("--doc", default=None, help="document whose generated block is "
                   "rewritten; 'none' to skip (default: sweep/CONFOUNDINGS.md in the user's "
                   "folder; with --ship: CONFOUNDINGS.md)")
    p.add_argument("--lessons", default=None, help="where the lesson checkpoints go (full "
                   "grid only); 'none' to skip (default: sweep/lessons/ in the user's folder; "
                   "with --ship: checkpoints/lessons)")
    p.add_argument("--report-only", action="store_true", help="rewrite the document (and "
                   "nothing else) from the results file (default: off)")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every "
                   "training (default: the sweep's settings)")
    p.add_argument("--n-test", type=int, default=None, help="test samples per measurement "
                   "(default: 500 for 2-D, 397 digits, 300 Fashion-MNIST)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--threads", type=int, default=1, help=f"CPU threads, 1 to {MAX_THREADS} "
                   f"(default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    names = [d.strip() for d in str(args.datasets).split(",") if d.strip()]
    datasets = list(dict.fromkeys(names))  # each once, in the order given
    return SweepSettings(
        datasets=datasets, grid=args.grid, epochs=args.epochs, n_test=args.n_test,
        seed=args.seed, threads=args.threads, device=args.device, ship=args.ship,
        report_only=args.report_only, work=args.work, out=args.out, doc=args.doc,
        lessons=args.lessons).validate()


def cli_sweep(args: argparse.Namespace) -> int:
    s = settings_from_args(args)  # every flag and path checked before anything is written
    if s.report_only:
        update_document(Path(s.doc), load_results(s.out))
        print(f"updated {s.doc} from {s.out}")
        return 0
    datasets = s.datasets_checked()  # each dataset there, before the first cell trains
    import torch

    torch.set_num_threads(s.threads)
    cells = build_grid(s.datasets, tiny=s.grid == "tiny")
    results = run_sweep(cells, s.work, s.out, seed=s.seed, epochs=s.epochs, n_test=s.n_test,
                        device=s.device, grid=s.grid, datasets=datasets)
    if s.lessons != "none" and s.grid == "full" and not results["missing"]:
        ship_lessons(results, s.work, Path(s.lessons), seed=s.seed, device=s.device)
    if s.doc != "none":
        report_block(results, f"results file {s.out}")
        update_document(Path(s.doc), results)
    print(f"results: {s.out} ({cost_text(results)})")
    return 0
