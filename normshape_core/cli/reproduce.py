"""``reproduce`` and ``report``: the flags become ReproduceSettings / ReportSettings (every
run's settings validated before the first is trained); ``reproduce``'s functions train,
evaluate and write the report."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..settings.config import ConfigError
from ..studies.report import ReportSettings, dataset_section, update_report
from ..studies.reproduce import PAPER_SET, ReproduceSettings, evaluate_set, train_set


def add_reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="moons, spirals, digits or fashion_mnist "
                   "(any registered dataset works; these have reproduction settings)")
    p.add_argument("--out", default=None, help="folder of the runs and results (default: "
                   "checkpoints/DATASET)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--n-test", type=int, default=None, help="test samples evaluated (default: "
                   "moons 1000, digits 397, fashion_mnist 1000)")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every run "
                   "(default: the reproduction setting)")
    p.add_argument("--only", default=None, help="comma-separated run keys to train and "
                   "evaluate (default: the whole set: " + ", ".join(s.key for s in PAPER_SET) + ")")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; the numbers are "
                   "reproducible for a fixed thread count (default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--skip-eval", action="store_true", help="train only (default: off)")
    p.add_argument("--no-worst-case", action="store_true", help="skip the worst-case "
                   "evaluation (the default ensemble), keeping the paper's protocol only "
                   "(default: off)")
    p.add_argument("--worst-n-test", type=int, default=None, help="test samples of the "
                   "headline models' worst case (the first of the same subset; default: "
                   "every evaluated sample)")
    p.add_argument("--worst-n-test-others", type=int, default=None, help="test samples of "
                   "the other models' worst case (default: fashion_mnist 200, else every "
                   "evaluated sample)")
    p.add_argument("--table-iv-worst-n-test", type=int, default=None, help="test samples of "
                   "Table IV's worst case per cell, 0 = skip (default: fashion_mnist 200, "
                   "else every evaluated sample)")


def reproduce_settings_from_args(args: argparse.Namespace) -> ReproduceSettings:
    only = None
    if args.only is not None:
        only = [k.strip() for k in args.only.split(",") if k.strip()]
    worst = {k: v for k, v in (("n_test", args.worst_n_test),
                               ("others_n_test", args.worst_n_test_others),
                               ("table_iv_n_test", args.table_iv_worst_n_test))
             if v is not None}
    return ReproduceSettings(
        dataset=args.dataset, out=Path(args.out or Path("checkpoints") / args.dataset),
        seed=args.seed, n_test=args.n_test, epochs=args.epochs, only=only,
        threads=args.threads, device=args.device, worst=worst).validate()


def cli_reproduce(args: argparse.Namespace) -> int:
    import torch

    from ..training.checkpoints import atomic_write_json

    rs = reproduce_settings_from_args(args)
    if not args.skip_eval:
        check_test_size(rs)
    torch.set_num_threads(rs.threads)
    out, specs, overrides = rs.out, rs.specs(), rs.overrides()
    t0 = time.time()
    runs = train_set(args.dataset, out, seed=args.seed, specs=specs, overrides=overrides,
                     device=args.device, progress=True)
    if args.skip_eval:
        print(f"trained {len(runs)} runs in {out} ({time.time() - t0:.0f} s)")
        return 0
    worst = rs.worst

    def save(partial):
        atomic_write_json(out / "results.json", {**partial, "threads": args.threads,
                                                 "overrides": overrides})

    results = evaluate_set(runs, args.dataset, seed=args.seed, n_test=args.n_test,
                           device=None if args.device == "auto" else args.device,
                           worst_case=not args.no_worst_case, worst=worst, save=save)
    results["threads"] = args.threads
    results["overrides"] = overrides
    results["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", results)
    print(dataset_section(results))
    print(f"results: {out / 'results.json'} ({time.time() - t0:.0f} s)")
    return 0


def check_test_size(rs: ReproduceSettings) -> None:
    """The test samples evaluated (``--n-test``, default the reproduction's) exist in the
    dataset's test set: checked before the first run trains, not after the last."""
    from ..blocks.data import load_dataset
    from ..studies.reproduce import REPRO_N_TEST

    n = rs.n_test or REPRO_N_TEST.get(rs.dataset, 1000)
    n_all = len(load_dataset(rs.dataset, seed=rs.seed).x_test)
    if n > n_all:
        raise ConfigError(f"--n-test {n}{'' if rs.n_test else ' (the default)'} is larger than "
                          f"the {n_all} test samples of {rs.dataset}")


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", default="checkpoints", help="folder whose */results.json "
                   "are reported (default: checkpoints)")
    p.add_argument("--out", default="REPRODUCTION.md", help="report to update (default: "
                   "REPRODUCTION.md)")


def check_report_inputs(rs: ReportSettings) -> None:
    """Every file ``report`` reads is a regular file of bounded size (``files``), checked
    before any is read: a FIFO or a device would hang the reading."""
    from ..base.files import UnreadableFile, check_file
    from ..studies.report import MAX_REPORT_BYTES
    from ..studies.reproduce import MAX_RESULTS_BYTES

    try:
        for p in sorted(Path(rs.checkpoints).glob("*/results.json")):
            check_file(p, MAX_RESULTS_BYTES, "results file")
        if rs.out.exists():
            check_file(rs.out, MAX_REPORT_BYTES, "report")
    except UnreadableFile as e:
        raise ConfigError(str(e)) from None


def cli_report(args: argparse.Namespace) -> int:
    rs = ReportSettings(Path(args.checkpoints), Path(args.out)).validate()
    check_report_inputs(rs)
    paths = rs.results_paths()
    try:
        update_report(Path(args.out), paths)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ConfigError(f"a results file under {args.checkpoints} lacks what the report "
                          f"needs ({type(e).__name__}: {str(e)[:120]})") from None
    print(f"updated {args.out} from {len(paths)} results files")
    return 0
