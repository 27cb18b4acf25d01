"""``diagnose``: the flags become DiagnoseSettings (checked before a checkpoint is read),
``diagnostics.diagnose_checkpoint`` measures, this module prints the figures."""
from __future__ import annotations

import argparse

from ..settings.config import ConfigError
from ..measuring.diagnostics import DiagnoseSettings, _finite, diagnose_checkpoint
from ._common import document_defaults


def add_diagnose_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``python -m normshape_core diagnose``."""
    parser.add_argument("checkpoint", help="run folder, .safetensors or .json of a checkpoint")
    parser.add_argument("--json", default=None, help="write all figures as JSON to this file")
    parser.add_argument("--ratios", default="1:0,1:3", help="batch compositions adv:clean of the "
                        "moving-target trace (comma-separated)")
    parser.add_argument("--n", type=int, default=256, help="training samples in the batch "
                        "(the paper measured on training inputs)")
    parser.add_argument("--eps", type=float, default=None, help="default: the training eps")
    parser.add_argument("--step-size", type=float, default=None, help="default: the training "
                        "step size")
    parser.add_argument("--steps", type=int, default=None, help="default: the training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch and attack starts")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dataset", default=None, help="expected dataset; a checkpoint of "
                        "another dataset is an error")
    parser.add_argument("--worst-case", default="default", help="ensemble whose worst case "
                        "per sample on the same batch is printed beside the moving-target "
                        "accuracies (through PN and through the batch's own BN); 'none' to skip")
    return document_defaults(parser)


def diagnose_settings_from_args(args: argparse.Namespace) -> DiagnoseSettings:
    from ..settings.config import check_writable_file, parse_device
    from ..measuring.evaluation import ensemble_spec, parse_ratio_list

    parse_device(args.device)
    if args.json is not None:
        check_writable_file(args.json, "--json")
    if args.dataset is not None:
        from ..blocks.data import DATASETS

        if args.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {args.dataset!r}; choose one of: "
                              f"{', '.join(DATASETS)}")
    members = None if str(args.worst_case).strip().lower() == "none" else \
        ensemble_spec(args.worst_case)
    return DiagnoseSettings(ratios=parse_ratio_list(args.ratios), n=args.n, eps=args.eps,
                            step_size=args.step_size, steps=args.steps, seed=args.seed,
                            worst_case=members).validate()


def _pct(v) -> str:
    """A relative difference as +NN%, or "n/a" where it is undefined (a zero or non-finite
    base: e.g. no logit error, or PGD that never moved): never "+nan%"."""
    import math

    return f"{v:+.0%}" if isinstance(v, (int, float)) and math.isfinite(v) else \
        "n/a (undefined: its base is zero or not finite)"


def _num(v, fmt: str = ".4f") -> str:
    import math

    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def cli_diagnose(args: argparse.Namespace) -> int:
    """``diagnose CHECKPOINT``: print the three measurements; write --json."""
    from ..training.checkpoints import atomic_write_json

    given = diagnose_settings_from_args(args)  # every flag checked before any reading
    out, ds = diagnose_checkpoint(args.checkpoint, given, dataset_name=args.dataset,
                                  device=args.device, progress=True)
    steps = ds.steps
    for r, tr in out["moving_target"].items():
        s = tr["summary"]
        print(f"moving target {r}: BN statistics move {_num(s['step_drift_mean'])} (mean, "
              f"per step), end {_num(s['final_distance_to_clean_mean'])} from the clean "
              f"batch's; accuracy after PGD-{steps} crafted through this batch (BN), "
              f"classified with BN: {_num(s['adv_acc'], '.3f')}")
    for w in out.get("worst_case", ()):
        print(f"worst case per sample ({w['ensemble']}) on the same batch, crafted with "
              f"{w['crafted_with']}, classified with {w['classified_with']}: "
              f"{_num(w['robust_acc'], '.3f')} (clean {_num(w['clean_acc'], '.3f')})")
    c2 = out["confounding_ii"]
    print(f"confounding II: logit error with the clean batch's BN "
          f"{_num(c2['error_with_clean_bn'])} vs the adversarial batch's own "
          f"{_num(c2['error_with_adv_bn'])}: {_pct(c2['relative_difference'])} (paper: +63%)")
    c3 = out["confounding_iii"]
    sizes = ", ".join(f"{k} {_num(v['mean_l2'])} (straightness "
                      f"{_num(v['straightness'], '.2f')})" for k, v in c3["modes"].items())
    print(f"confounding III: mean L2 of PGD perturbations: {sizes}; PN vs BN "
          f"{_pct(c3['pn_vs_bn'])} (paper: +17%), shaping vs BN {_pct(c3['shaping_vs_bn'])} "
          f"(paper: +41%)")
    if args.json:
        atomic_write_json(args.json, _finite(out))
    return 0
