"""``alternatives`` and ``alternatives-report``: the BN fixes side by side (``bn_fixes``).
The flags become AlternativesSettings / AlternativesReportSettings (every run's settings
validated before the first is trained)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..studies.bn_fixes import (ALTERNATIVE_SET, REPORT_NAME, RESULTS_NAME,
                                AlternativesReportSettings, AlternativesSettings,
                                evaluate_alternatives, shipped_runs, train_alternatives,
                                update_report, write_results)


def add_alternatives_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="moons, digits or fashion_mnist (any "
                   "registered dataset works; these have reproduction settings)")
    p.add_argument("--out", default=None, help="folder of the runs and of "
                   f"{RESULTS_NAME} (default: checkpoints/DATASET)")
    p.add_argument("--repro", default=None, help="folder of the reproduction's checkpoints "
                   "the table compares with: PGD-AT, TRADES and their shaped runs (default: "
                   "checkpoints/DATASET)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every run "
                   "(default: the reproduction setting)")
    p.add_argument("--only", default=None, help="comma-separated run keys to train (default: "
                   "all the dataset's model has: " + ", ".join(a.key for a in ALTERNATIVE_SET)
                   + ")")
    p.add_argument("--n-test", type=int, default=None, help="test samples of the evaluation "
                   "(default: the reproduction's worst case, reproduce.worst_case_settings)")
    p.add_argument("--ensemble", default=None, help="the worst case's ensemble: a name or "
                   "attacks joined by + (default: worst_case.DEFAULT_ENSEMBLE)")
    p.add_argument("--cache-dir", default=None, help="folder of the evaluation caches "
                   "(default: beside each checkpoint, as reproduce writes the shipped results)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; the numbers are "
                   "reproducible for a fixed thread count (default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--skip-eval", action="store_true", help="train only (default: off)")


def alternatives_settings_from_args(args: argparse.Namespace) -> AlternativesSettings:
    only = None
    if args.only is not None:
        only = [k.strip() for k in args.only.split(",") if k.strip()]
    default = Path("checkpoints") / args.dataset
    return AlternativesSettings(
        dataset=args.dataset, out=Path(args.out or default), repro=Path(args.repro or default),
        seed=args.seed, epochs=args.epochs, only=only, n_test=args.n_test,
        ensemble=args.ensemble, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        threads=args.threads, device=args.device, skip_eval=args.skip_eval).validate()


def cli_alternatives(args: argparse.Namespace) -> int:
    import torch

    s = alternatives_settings_from_args(args)
    torch.set_num_threads(s.threads)
    t0 = time.time()
    runs = train_alternatives(s, progress=True)
    if s.skip_eval:
        print(f"trained {len(runs)} runs in {s.out} ({time.time() - t0:.0f} s)")
        return 0
    runs = {**shipped_runs(s.dataset, s.repro, s.seed), **runs}
    results = evaluate_alternatives(s, runs)
    write_results(s.out / RESULTS_NAME, results)
    print(f"results: {s.out / RESULTS_NAME} ({time.time() - t0:.0f} s); the report: "
          f"python -m normshape_core alternatives-report")
    return 0


def add_alternatives_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", default="checkpoints", help=f"folder whose */{RESULTS_NAME} "
                   "are reported (default: checkpoints)")
    p.add_argument("--out", default=REPORT_NAME, help=f"the report (default: {REPORT_NAME})")


def cli_alternatives_report(args: argparse.Namespace) -> int:
    rs = AlternativesReportSettings(Path(args.checkpoints), Path(args.out)).validate()
    update_report(rs.out, rs.paths)
    print(f"wrote {rs.out} from {len(rs.paths)} results files")
    return 0
