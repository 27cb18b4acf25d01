"""``evaluate`` and ``grid``: the flags become EvalSettings (checked before a checkpoint is
read), ``evaluation.evaluate_checkpoint`` computes the rows, this module prints the tables.
``evaluate --model package.module:factory`` evaluates your own model instead of a checkpoint
(``own_model``: the factory, its weights, your data; ``evaluation.evaluate``)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pandas as pd

from ..attacks import ADAPTIVE_ATTACKS, single_attacks
from ..settings.config import ConfigError, parse_device
from ..measuring.evaluation import (DEFAULT_GAP_THRESHOLD, WORST, EvalSettings, _check_settings,
                                    _parse_craft, ensemble_label, ensemble_log,
                                    eps_sweep_checkpoint, evaluate_checkpoint, format_table,
                                    parse_classify, parse_ratio_list, rows_of, split_attacks,
                                    table_iii, table_iv, table_like_paper, table_worst_case,
                                    training_label)
from ..base.names import INFERENCE_RATIOS
from ..base.stats import INTERVAL_NAME
from ..measuring.worst_case import DEFAULT_ENSEMBLE, SQUARE_QUERIES
from ._common import document_defaults


def _print_bound(update) -> None:
    """A worst case's bound after each member and its final number, on stderr (anytime)."""
    import sys

    if update.current is None:
        from tqdm.auto import tqdm

        tqdm.write(f"  {update.ensemble} [{update.classified_with}]: {update.text()}",
                   file=sys.stderr)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-test", type=int, default=None, help="test samples (seeded subset; "
                   "default: the whole test set)")
    p.add_argument("--eps", type=float, default=None, help="L-inf bound (default: the "
                   "checkpoint's training eps)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--restarts", type=int, default=1, help="PGD / APGD restarts")
    p.add_argument("--apgd-restarts", type=int, default=None, help="APGD-CE's runs in an "
                   "ensemble (default: 5 on vector inputs such as moons, else --restarts)")
    p.add_argument("--square-queries", type=int, default=SQUARE_QUERIES, help="Square's "
                   "queries per sample in an ensemble (AutoAttack's standard version)")
    p.add_argument("--target-classes", type=int, default=9, dest="n_target_classes",
                   help="APGD-T's target classes (the top ones other than the label)")
    p.add_argument("--apgd-steps", type=int, default=100, help="iterations of APGD-CE, "
                   "APGD-DLR and each APGD-T target")
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset, attack starts "
                   "and reference draws")
    p.add_argument("--group-size", type=int, default=None, help="test samples per shaped batch "
                   "(1 = per-sample Eq. 6; default: batches of 100 samples as in the paper)")
    p.add_argument("--batch-size", type=int, default=100, help="test batch size (the paper: 100)")
    p.add_argument("--reference-pool", type=int, default=1000, dest="reference_pool_size",
                   help="size of the reference pool drawn from the training set")
    p.add_argument("--fresh-references", action="store_true", help="draw new references at "
                   "every call (randomised classifier) instead of a seeded fixed draw")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dataset", default=None, help="expected dataset; a checkpoint of another "
                   "dataset is an error")
    p.add_argument("--json", default=None, help="write the rows as JSON to this file")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the "
                   "results cache (read beside the checkpoint or from the user's folder, "
                   "written to the user's folder, NORMSHAPE_HOME)")


def add_evaluate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``python -m normshape_core evaluate``."""
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="run folder, .safetensors or .json of a checkpoint (or --model)")
    own = parser.add_argument_group(
        "your own model (instead of a checkpoint): inputs in [0, 1], BatchNorm layers, logits "
        "[N, classes] out")
    own.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FACTORY",
                     help="a function or class returning your torch.nn.Module, imported with "
                          "the working folder on the import path, e.g. "
                          "torchvision.models:resnet18")
    own.add_argument("--model-kwargs", default=None, metavar="JSON",
                     help="the factory's keyword arguments, e.g. '{\"num_classes\": 10}'")
    own.add_argument("--weights", default=None, metavar="FILE",
                     help=".safetensors, or .pt / .pth read with torch.load(weights_only=True) "
                          "(default: the factory's own weights)")
    own.add_argument("--data", default=None, metavar="FILE_OR_FOLDER",
                     help="an .npz file (x in [0, 1], y; optional x_train for the reference "
                          "pool) or an image folder (<class>/<image>; train/ and test/ "
                          "sub-folders give the pool and the test samples); or --dataset NAME")
    parser.add_argument("--attacks", default=f"pgd,{DEFAULT_ENSEMBLE}",
                        help="comma-separated attacks (" + ", ".join(
                            single_attacks() +
                            ["adaptive"]) +
                        ") and ensembles: default (APGD-CE, transfer from other norms, "
                        "APGD-DLR, APGD-T, Square), full (+ FAB-T), autoattack (APGD-CE, "
                        "APGD-T, FAB-T, Square), paper (PGD, C&W, FGSM, DeepFool, shaping) or "
                        "members joined by + (apgd+transfer+square). "
                        "An attack is crafted with --craft norms and classified with every "
                        "--classify mode (the paper's protocol); an ensemble gives the worst "
                        "case per sample through each classifier's own norms (PN, BN, exact "
                        "shaped batches)")
    parser.add_argument("--classify", default="pn,bn,shaped:1:9",
                        help="inference modes: pn, bn, shaped:ADV:CLEAN (comma-separated)")
    parser.add_argument("--craft", default="pn", help="norms the standard attacks craft with: "
                        "pn (paper), bn, or pn,bn")
    parser.add_argument("--fgsm-eps", type=float, default=None, help="FGSM's eps (default: "
                        "--eps; the paper used twice the training eps)")
    parser.add_argument("--cw-steps", type=int, default=100, help="C&W Adam steps per "
                        "binary-search step")
    parser.add_argument("--eot-draws", type=int, default=8, help="reference draws per step of "
                        "the EOT adaptive attack")
    parser.add_argument("--gap-threshold", type=float, default=DEFAULT_GAP_THRESHOLD,
                        help="warn when PN-crafted robust acc exceeds the adaptive one by more")
    parser.add_argument("--eps-sweep", action="store_true", help="also run the first "
                        "ensemble (or attack) at 1/2, 2 and 4 times eps on the first test "
                        "batch and warn if robust accuracy does not fall with eps")
    _add_common(parser)
    return document_defaults(parser)


def _settings_from_args(args, **extra) -> Dict[str, Any]:
    keys = ("n_test", "eps", "steps", "restarts", "seed", "group_size", "batch_size",
            "reference_pool_size", "fresh_references", "fgsm_eps", "apgd_steps", "cw_steps",
            "eot_draws", "square_queries", "n_target_classes", "apgd_restarts")
    out = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    out.update(extra)
    return out


def _print_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"warning: {w}")


def cli_evaluate(args: argparse.Namespace) -> int:
    """``evaluate CHECKPOINT``: print Tables I/II (and III), warnings; write --json rows."""
    from ..training.checkpoints import atomic_write_json

    if args.model is not None or args.checkpoint is None:
        return cli_evaluate_own(args)
    for flag in ("model_kwargs", "weights", "data"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} goes with --model (your own model), "
                              f"not with a checkpoint")
    attacks, ensembles = split_attacks(args.attacks)
    classify = parse_classify(args.classify)
    craft = _parse_craft(args.craft)
    check_cli_settings(args, attacks=attacks, ensembles=ensembles, classify=classify,
                       craft=craft)
    if not args.no_cache:
        check_cache_files(args.checkpoint)
    df, meta = evaluate_checkpoint(
        args.checkpoint, dataset_name=args.dataset, device=args.device,
        use_cache=not args.no_cache, progress=True, gap_threshold=args.gap_threshold,
        on_bound=_print_bound,
        **_settings_from_args(args, attacks=attacks, ensembles=ensembles, classify=classify,
                              craft=craft))
    _print_tables(df, meta.get("run_name", str(args.checkpoint)))
    warnings = list(df.attrs.get("warnings", []))
    if args.eps_sweep:
        sweep, sweep_warnings = eps_sweep_checkpoint(
            args.checkpoint, attack=(ensembles or attacks)[0], classify=classify,
            device=args.device, **{k: v for k, v in _settings_from_args(args).items()
                                   if k in ("eps", "steps", "restarts", "seed", "group_size",
                                            "batch_size", "reference_pool_size",
                                            "apgd_steps", "square_queries",
                                            "n_target_classes")})
        print("\neps sweep (first test batch):")
        print(format_table(sweep))
        warnings += sweep_warnings
    _print_warnings(warnings)
    if args.json:
        atomic_write_json(args.json, rows_of(df))
    return 0


def _print_tables(df: pd.DataFrame, name: str, note: str = "") -> None:
    """The header line (and ``note``), Tables I/II (and III) and the worst case with its
    member log."""
    n = int(df['n'].iloc[0]) if len(df) else 0
    print(f"{name}: n={n}, eps={df['eps'].max():g}"
          + (" (cached)" if df.attrs.get("cached") else "")
          + f"; every accuracy with its {INTERVAL_NAME} at n={n}")
    if note:
        print(note)
    main = table_like_paper(df)
    if len(main):
        print(format_table(main, n=n))
    if df["attack"].isin(ADAPTIVE_ATTACKS).any():
        print("\nadaptive attacks (Table III):")
        print(format_table(table_iii(df), n=n))
    worst = table_worst_case(df)
    if len(worst):
        print("\nworst case per sample (the headline) beside the paper's protocol:")
        print(format_table(worst.drop(columns=["ensemble"]), n=n))
        print(ensemble_log(df))


def cli_evaluate_own(args: argparse.Namespace) -> int:
    """``evaluate --model package.module:factory [--weights FILE] (--dataset NAME | --data
    FILE_OR_FOLDER)``: your own model, evaluated as a checkpoint is (PN, BN, shaped inference,
    the worst case), printed the same way; no results cache (there is no checkpoint to key it
    by), eps 8/255 unless --eps."""
    from ..training.checkpoints import atomic_write_json
    from ..measuring.evaluation import evaluate
    from ..measuring.own_model import check_own_model, load_data, load_own_model, parse_model_kwargs

    if args.model is None:
        raise ConfigError("give a checkpoint (run folder, .safetensors or .json), or your own "
                          "model with --model package.module:factory")
    if args.checkpoint is not None:
        raise ConfigError(f"give a checkpoint or --model, not both (got {args.checkpoint!r} "
                          f"and --model {args.model})")
    if (args.dataset is None) == (args.data is None):
        raise ConfigError("--model needs its data: --dataset NAME (a registered dataset) or "
                          "--data FILE.npz / IMAGE_FOLDER, one of the two")
    if args.eps_sweep:
        raise ConfigError("--eps-sweep works on checkpoints; for your own model run evaluate "
                          "again with other --eps values")
    attacks, ensembles = split_attacks(args.attacks)
    classify = parse_classify(args.classify)
    craft = _parse_craft(args.craft)
    args.no_cache = True  # nothing to key a cache by: the evaluation runs in memory
    eps = 8 / 255 if args.eps is None else args.eps
    s = check_cli_settings(args, attacks=attacks, ensembles=ensembles, classify=classify,
                           craft=craft, eps=eps)
    kwargs = parse_model_kwargs(args.model_kwargs)
    if args.dataset is not None:
        from ..blocks.data import load_dataset

        dataset = load_dataset(args.dataset, seed=s.seed)
    else:
        dataset = load_data(args.data)
    device = parse_device(args.device)
    model = load_own_model(args.model, args.weights, kwargs)
    check_own_model(model, dataset, device)
    settings = {k: v for k, v in _settings_from_args(args, eps=eps).items() if v is not None}
    df = evaluate(model, dataset, attacks=attacks, ensembles=ensembles, classify=classify,
                  craft=craft, device=device, progress=True, gap_threshold=args.gap_threshold,
                  on_bound=_print_bound, **settings)
    weights = f", weights {Path(args.weights).name}" if args.weights else ", its own weights"
    _print_tables(df, f"{args.model}{weights}", f"data: {dataset.name}, {dataset.description}")
    _print_warnings(df.attrs.get("warnings", []))
    if args.json:
        atomic_write_json(args.json, rows_of(df))
    return 0


def check_cache_files(checkpoint) -> None:
    """The evaluation cache files of ``checkpoint`` that exist (beside it and in the user's
    folder) are regular files of bounded size (``files``), checked before they are read: a
    FIFO there would hang the reading. The checkpoint's own files are checked when read."""
    import os

    from ..training.checkpoints import CheckpointError
    from ..measuring.evaluation import BESIDE, MAX_CACHE_BYTES, cache_path_for
    from ..base.files import UnreadableFile, check_file

    try:
        paths = [cache_path_for(checkpoint, BESIDE), cache_path_for(checkpoint)]
    except (CheckpointError, ConfigError):
        return  # the checkpoint itself is refused, with its own message, when it is read
    for path in paths:
        if os.path.lexists(path):
            try:
                check_file(path, MAX_CACHE_BYTES, "evaluation cache")
            except UnreadableFile as e:
                raise ConfigError(f"{e}; remove it, or pass --no-cache") from None


def _check_json_target(path) -> None:
    """A --json target must be writable before any work starts."""
    from ..settings.config import check_writable_file

    if path is not None:
        check_writable_file(path, "--json")


def check_cli_settings(args, **extra) -> EvalSettings:
    """evaluate / grid: every flag checked before a checkpoint is read (the settings object
    of these commands is ``EvalSettings``; eps may still come from the checkpoint)."""
    parse_device(args.device)
    if args.dataset is not None:
        from ..blocks.data import DATASETS

        if args.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {args.dataset!r}; choose one of: "
                              f"{', '.join(DATASETS)}")
    gap = getattr(args, "gap_threshold", DEFAULT_GAP_THRESHOLD)
    if not math.isfinite(gap) or not 0 <= gap <= 1:
        raise ConfigError(f"gap-threshold must be a finite number in [0, 1], got {gap}")
    _check_json_target(args.json)
    if not args.no_cache:
        from ..settings.config import check_user_folder
        from ..base.userdata import eval_cache_dir

        check_user_folder(eval_cache_dir(), " or pass --no-cache")
    values = EvalSettings().to_dict()
    values.update({k: v for k, v in _settings_from_args(args, **extra).items() if v is not None})
    s = EvalSettings(**values)
    if args.eps is None:
        s.eps = None
    _check_settings(s, eps_given=args.eps is not None)
    return s


def add_grid_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``python -m normshape_core grid`` (Table IV)."""
    parser.add_argument("checkpoints", nargs="+", help="checkpoints, one per training ratio")
    parser.add_argument("--inference-ratios", default=",".join(INFERENCE_RATIOS),
                        help="inference ratios adv:clean (comma-separated)")
    parser.add_argument("--attack", default="pgd", help="attack of the grid: pgd (the paper's "
                        "protocol: crafted with PN) or fgsm / apgd, or an ensemble (default, "
                        "apgd+square): the worst case through each shaped classifier's exact "
                        "shaped batches")
    _add_common(parser)
    return document_defaults(parser)


def n_of(dfs: Dict[str, pd.DataFrame]) -> int:
    """The samples behind a grid's cells (one n for all: the same seeded subset)."""
    ns = {int(df["n"].iloc[0]) for df in dfs.values() if len(df)}
    return ns.pop() if len(ns) == 1 else 0


def cli_grid(args: argparse.Namespace) -> int:
    """``grid CHECKPOINT...``: Table IV, rows training ratio, columns inference ratio."""
    from ..training.checkpoints import atomic_write_json

    ratios = parse_ratio_list(args.inference_ratios)
    singles, ensembles = split_attacks(args.attack)
    if len(singles) + len(ensembles) != 1:
        raise ConfigError("the grid takes one attack or one ensemble (e.g. --attack pgd or "
                          "--attack default)")
    attack = singles[0] if singles else None
    if attack in ADAPTIVE_ATTACKS:
        raise ConfigError("the grid uses one attack crafted once; choose fgsm, pgd or apgd, "
                          "or an ensemble (default)")
    check_cli_settings(args, attacks=singles, ensembles=ensembles,
                       classify=[f"shaped:{r}" for r in ratios])
    if not args.no_cache:
        for ckpt in args.checkpoints:
            check_cache_files(ckpt)
    dfs: Dict[str, pd.DataFrame] = {}
    json_rows: List[Dict[str, Any]] = []
    for ckpt in args.checkpoints:
        df, meta = evaluate_checkpoint(
            ckpt, dataset_name=args.dataset, device=args.device, use_cache=not args.no_cache,
            progress=True, on_bound=_print_bound,
            **_settings_from_args(args, attacks=singles, ensembles=ensembles,
                                  classify=[f"shaped:{r}" for r in ratios]))
        label = training_label(meta)
        if label in dfs:
            label = f"{label} [{Path(ckpt).name}]"
        dfs[label] = df
        for r in rows_of(df):
            json_rows.append({"training_ratio": label, "checkpoint": str(ckpt), **r})
        _print_warnings(df.attrs.get("warnings", []))
    if ensembles:
        print(f"worst case per sample ({ensemble_label(ensembles[0])}), crafted through each "
              f"classifier's exact shaped batches plus transfer, classified with shaped "
              f"inference; n={n_of(dfs)}, {INTERVAL_NAME} in brackets:")
        print(format_table(table_iv(dfs, attack=WORST), n=n_of(dfs)))
    else:
        print(f"{attack} crafted with PN, classified with shaped inference; n={n_of(dfs)}, "
              f"{INTERVAL_NAME} in brackets:")
        print(format_table(table_iv(dfs, attack=attack), n=n_of(dfs)))
    if args.json:
        atomic_write_json(args.json, json_rows)
    return 0
