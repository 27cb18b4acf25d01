"""``python -m normshape_core sweep-confoundings``: where each BN confounding appears.

A small grid around each dataset's reproduction setting (moons, spirals, digits,
Fashion-MNIST), varied one axis at a time: model depth and kind (the number of BN layers: MLP
depth on the 2-D sets; the small CNN, a wide ResNet 10-1 and a narrow PreAct ResNet-18 on
images), eps (0.5x, 1x, 1.5x the dataset's) and BN batch size (the training batch, which is
also the batch whose statistics BN uses in every measurement). Each cell trains PGD-AT (adv
only) and PGD + shaping (attack + training, 1:3) with the reproduction's budgets and measures
the three confoundings with ``diagnostics``:

- I: clean accuracy of the PGD-AT model with PN, with the clean test batch's own BN and with
  shaped inference 1:9, the shaped model's; PN's distance to clean batch statistics;
- II: per-step drift of BN statistics under PGD (batches 1:0 and 1:3, the damping between
  them) and the logit-error gap (FGSM of one step, clean batch's BN vs the adversarial
  batch's own; paper +63%);
- III: size of PN- vs BN-crafted PGD perturbations (paper +17%) and through shaped batches
  (paper +41%), and the robust-accuracy gap between BN- and PN-crafted PGD-20 (classified
  with PN); shaped vs plain training.

Caching is ``reproduce``'s: runs are trained by ``reproduce.train_set`` (finished runs are
skipped, interrupted ones resume) and evaluated by ``evaluate_checkpoint`` with the results
cached beside the checkpoint; each finished cell's measurements go into the results file
(written atomically after every cell), and a cell whose settings are unchanged is not
measured again. CONFOUNDINGS.md's generated block is rebuilt from the results file.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..settings.config import MAX_THREADS, ConfigError
from ..base.names import META_NAME, METRICS_NAME, WEIGHTS_NAME
from .reproduce import MAX_RESULTS_BYTES, REPRO_SETTINGS, RunSpec, _fmt, train_set

SWEEP_VERSION = 1
#: the two trainings of every cell (keys as in ``reproduce``)
CELL_SPECS = [RunSpec("pgd/adv-only", "pgd", "none"),
              RunSpec("pgd/shaping-in-attack+training", "pgd", "attack+train")]
PLAIN, SHAPED = (s.key for s in CELL_SPECS)
# Per-dataset base settings of the sweep: the reproduction's, with smaller budgets on the
# image sets (digits 20 epochs, Fashion-MNIST 5,000 training images x 2 epochs) so that the
# whole sweep fits ~40 minutes on one CPU core.
BASE: Dict[str, Dict[str, Any]] = {
    "moons": dict(REPRO_SETTINGS["moons"], model="mlp", model_depth=3),
    "spirals": dict(REPRO_SETTINGS["spirals"], model="mlp", model_depth=3),
    "digits": dict(REPRO_SETTINGS["digits"], model="small_cnn", epochs=20),
    "fashion_mnist": dict(REPRO_SETTINGS["fashion_mnist"], model="small_cnn", epochs=2,
                          n_train=5000),
}
#: the models of the depth axis (more BN layers), per input kind
DEPTH_VARIANTS = {
    "points": [("mlp2", dict(model="mlp", model_depth=2)),
               ("mlp3", dict(model="mlp", model_depth=3)),
               ("mlp6", dict(model="mlp", model_depth=6)),
               ("mlp10", dict(model="mlp", model_depth=10))],
    "images": [("cnn", dict(model="small_cnn")),
               ("wrn10-1", dict(model="wide_resnet", model_depth=10, model_width=1)),
               ("preact18-w8", dict(model="preact_resnet18", model_width=8))],
}
#: eps as a multiple of the dataset's (digits at 2x = 0.6 would leave nothing to learn)
EPS_FACTORS = {"points": (0.5, 1.0, 2.0), "images": (0.5, 1.0, 1.5)}
#: extra training seeds of the base cell: the seed-to-seed spread every effect is read against
EXTRA_SEEDS = (1, 2)
BATCH_SIZES = (32, 64, 128)
#: test samples of the accuracy measurements (the first of a seeded permutation)
N_TEST = {"moons": 500, "spirals": 500, "digits": 397, "fashion_mnist": 300}
#: training samples of the diagnostics (split into batches of the cell's BN batch size)
N_DIAG = 256
SWEEP_DATASETS = tuple(BASE)

# The paper's numbers (ICTAI 2022, section IV-V; CIFAR-10, wide ResNet, eps 8/255).
PAPER = {
    "I": {"value": None, "text": "no PN-vs-BN number; CIFAR-10 natural 0.93 vs PGD-AT "
                                 "< 0.88, 'norm differences an important reason'"},
    "II": {"value": 0.63, "text": "+63% logit error with the clean batch's BN"},
    "III": {"value": 0.17, "text": "+17% perturbation size, PN- vs BN-crafted"},
    "III-shaping": {"value": 0.41, "text": "+41% perturbation size, shaped vs plain PGD"},
}
#: the magnitude plotted and ranked for each confounding: (key in a cell's measures, label)
MAGNITUDE = {
    "I": ("acc_gap_bn_pn", "clean accuracy, clean-batch BN minus PN (PGD-AT model)"),
    "II": ("logit_gap", "logit-error gap, clean batch's BN vs own BN (relative)"),
    "III": ("pn_vs_bn", "PGD perturbation size, PN- vs BN-crafted (relative)"),
}
#: a magnitude counts as an effect in the paper's direction from here (I: accuracy points;
#: II / III: relative size)
EFFECT_THRESHOLD = {"I": 0.02, "II": 0.10, "III": 0.05}


@dataclass(frozen=True)
class Cell:
    dataset: str
    axis: str  # base | depth | eps | batch
    variant: str  # e.g. mlp6, eps0.5x, batch32
    overrides: Dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.variant}"

    def settings(self, epochs: Optional[int] = None) -> Dict[str, Any]:
        """Training settings of the cell (overrides of ``reproduce.run_config``; ``seed``
        only where the cell has its own training seed)."""
        s = {**BASE[self.dataset], **self.overrides}
        if epochs:
            s["epochs"] = epochs
        return s

    @property
    def batch(self) -> int:
        return int(self.settings().get("batch_size", 64))


def _input_kind(dataset: str) -> str:
    return "points" if BASE[dataset]["model"] == "mlp" else "images"


def build_grid(datasets: Sequence[str] = SWEEP_DATASETS, tiny: bool = False) -> List[Cell]:
    """The cells: per dataset the base, then one axis at a time (the base value is not
    repeated). ``tiny``: the base and one deeper model per dataset (for tests)."""
    cells: List[Cell] = []
    for ds in datasets:
        if ds not in BASE:
            raise ConfigError(f"no sweep settings for dataset {ds!r}; choose from: "
                              f"{', '.join(BASE)}")
        base = BASE[ds]
        depth = DEPTH_VARIANTS[_input_kind(ds)]
        base_name = next(n for n, o in depth if all(base.get(k) == v for k, v in o.items()))
        cells.append(Cell(ds, "base", "base", {}))
        for name, o in depth:
            if name != base_name and (not tiny or name == depth[-1][0]):
                cells.append(Cell(ds, "depth", name, dict(o)))
        if tiny:
            continue
        for f in EPS_FACTORS[_input_kind(ds)]:
            if f != 1.0:
                cells.append(Cell(ds, "eps", f"eps{f:g}x", {"eps": round(base["eps"] * f, 6)}))
        for b in BATCH_SIZES:
            if b != base.get("batch_size", 64):
                cells.append(Cell(ds, "batch", f"batch{b}", {"batch_size": b}))
        for s in EXTRA_SEEDS:
            cells.append(Cell(ds, "seed", f"seed{s}", {"seed": s}))
    return cells


#: the largest results file and document read (the shipped ones: 0.2 MB and 30 kB)
MAX_DOC_BYTES = 16 << 20
#: what every cell of a results file holds (a report reads these)
_CELL_FIELDS = {"id": str, "dataset": str, "axis": str, "variant": str, "key": str,
                "measures": dict, "settings": dict, "seconds_train": (int, float),
                "seconds_measure": (int, float)}
_MEASURE_FIELDS = {"model": str, "bn_layers": int, "eps": (int, float), "batch": int}


def load_results(path: str | Path) -> Dict[str, Any]:
    """A sweep's results file, read safely (``files``) and checked: a JSON object whose
    ``cells`` are objects with the fields a report reads. Anything else raises one
    ``ConfigError`` line naming the file and what is wrong."""
    from ..base.files import UnreadableFile, read_json

    try:
        results = read_json(path, MAX_RESULTS_BYTES, "results file")
    except UnreadableFile as e:
        raise ConfigError(str(e)) from None

    def bad(problem: str):
        raise ConfigError(f"results file {path}: {problem}; not the results of "
                          f"sweep-confoundings")

    if not isinstance(results, dict):
        bad(f"a JSON {type(results).__name__}, not an object")
    cells = results.get("cells", [])
    if not isinstance(cells, list):
        bad("'cells' is not a list")
    seen = set()
    for i, c in enumerate(cells):
        if not isinstance(c, dict):
            bad(f"cell {i} is a JSON {type(c).__name__}, not an object")
        for k, t in _CELL_FIELDS.items():
            if not isinstance(c.get(k), t) or isinstance(c.get(k), bool):
                bad(f"cell {i}: {k!r} is missing or not a {getattr(t, '__name__', 'number')}")
        for k, t in _MEASURE_FIELDS.items():
            v = c["measures"].get(k)
            if not isinstance(v, t) or isinstance(v, bool):
                bad(f"cell {c['id'][:60]!r}: measures.{k} is missing or not a "
                    f"{getattr(t, '__name__', 'number')}")
        if c["id"] in seen:
            bad(f"cell {c['id'][:60]!r} appears twice")
        seen.add(c["id"])
    for k in ("seed", "epochs_override", "n_test_override"):
        v = results.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            bad(f"{k!r} is not a whole number")
    return results


def _canonical_order(ids: Sequence[str]) -> List[str]:
    """Cell ids in the full grid's order (dataset, then axis), unknown ids last as given."""
    rank = {c.id: i for i, c in enumerate(build_grid(SWEEP_DATASETS))}
    return sorted(ids, key=lambda i: (rank.get(i, len(rank)), list(ids).index(i)))


def check_merge(old: Dict[str, Any], results_path: Path, *, seed: int,
                epochs: Optional[int], n_test: Optional[int]) -> None:
    """A sweep writes into an existing results file only when the file's run-wide settings
    are this run's (its cells are then kept and added to): a file of another seed, epochs
    or test size is refused rather than mixed."""
    diff = [f"{name} (file {old.get(key)!r}, now {now!r})"
            for name, key, now in (("--seed", "seed", seed), ("--epochs", "epochs_override",
                                                            epochs),
                                   ("--n-test", "n_test_override", n_test))
            if old.get("cells") and old.get(key, 0 if key == "seed" else None) != now]
    if diff:
        raise ConfigError(f"results file {results_path} holds cells measured with other "
                          f"settings: {'; '.join(diff)}; they are kept as they are: write "
                          f"this sweep to another --out")


#: the source tree whose shipped results ``--ship`` rewrites (a checkout)
SOURCE_ROOT = Path(__file__).resolve().parents[2]
MAX_EPOCHS = 100_000


@dataclass
class SweepSettings:
    """The settings of ``sweep-confoundings``, checked in one place (``validate``) before any
    cell is trained: every number bounded, every path usable, an existing results file
    readable and of this run's settings, each dataset loadable.

    Where results go: by default the user's folder (``userdata``): ``sweep/`` holds the
    trained cells, ``confoundings.json``, ``CONFOUNDINGS.md`` and ``lessons/``. Only
    ``ship=True`` (``--ship``) writes the shipped files of the source checkout
    (``checkpoints/sweep/confoundings.json``, ``CONFOUNDINGS.md``, ``checkpoints/lessons``);
    a path given explicitly wins over either. ``doc`` / ``lessons`` "none": not written."""

    datasets: List[str]
    grid: str = "full"
    epochs: Optional[int] = None
    n_test: Optional[int] = None
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    ship: bool = False
    report_only: bool = False
    work: Optional[Path] = None
    out: Optional[Path] = None
    doc: Optional[str] = None
    lessons: Optional[str] = None

    def resolved(self) -> "SweepSettings":
        """The paths filled in (user's folder, or the checkout with ``ship``)."""
        from ..base.userdata import data_home

        if self.ship:
            if not ((SOURCE_ROOT / "CONFOUNDINGS.md").is_file() and
                    (SOURCE_ROOT / "checkpoints" / "sweep").is_dir()):
                raise ConfigError(f"--ship rewrites the shipped results of a source checkout; "
                                  f"{SOURCE_ROOT} is not one (no CONFOUNDINGS.md and "
                                  f"checkpoints/sweep/)")
            out, doc, lessons = (SOURCE_ROOT / "checkpoints" / "sweep" / "confoundings.json",
                                 SOURCE_ROOT / "CONFOUNDINGS.md",
                                 SOURCE_ROOT / "checkpoints" / "lessons")
        else:
            home = data_home() / "sweep"
            out, doc, lessons = (home / "confoundings.json", home / "CONFOUNDINGS.md",
                                 home / "lessons")
        return SweepSettings(
            datasets=list(self.datasets), grid=self.grid, epochs=self.epochs,
            n_test=self.n_test, seed=self.seed, threads=self.threads, device=self.device,
            ship=self.ship, report_only=self.report_only,
            work=Path(self.work) if self.work is not None else data_home() / "sweep",
            out=Path(self.out) if self.out is not None else out,
            doc=str(self.doc) if self.doc is not None else str(doc),
            lessons=str(self.lessons) if self.lessons is not None else str(lessons))

    def validate(self) -> "SweepSettings":
        """Every check that needs no training, in the order a user would fix them; returns
        the resolved settings. Datasets are loaded (``datasets()``) only by ``run``."""
        from ..settings.config import (MAX_SEED, check_writable_dir, check_writable_file,
                                       parse_device)

        if self.grid not in ("full", "tiny"):
            raise ConfigError(f"--grid must be full or tiny, got {self.grid!r}")
        if not self.report_only:
            if not self.datasets:
                raise ConfigError(f"--datasets names no dataset; choose from: "
                                  f"{', '.join(SWEEP_DATASETS)}")
            unknown = [d for d in self.datasets if d not in BASE]
            if unknown:
                raise ConfigError(f"no sweep settings for dataset {unknown[0]!r}; choose "
                                  f"from: {', '.join(BASE)}")
            for name, v, most in (("epochs", self.epochs, MAX_EPOCHS),
                                  ("n-test", self.n_test, 10 ** 6),
                                  ("threads", self.threads, MAX_THREADS)):
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or
                                      not 1 <= v <= most):
                    raise ConfigError(f"--{name} must be a whole number in [1, {most:,}], "
                                      f"got {v}")
            if isinstance(self.seed, bool) or not isinstance(self.seed, int) or \
                    not 0 <= self.seed <= MAX_SEED:
                raise ConfigError(f"--seed must be a whole number in [0, {MAX_SEED}], got "
                                  f"{self.seed}")
            parse_device(self.device)
        defaults = [self.out, self.doc] + ([] if self.report_only else [self.lessons])
        if (self.work is None and not self.report_only) or (
                not self.ship and None in defaults):
            from ..settings.config import check_user_folder
            from ..base.userdata import data_home

            check_user_folder(data_home() / "sweep", " or give --work, --out, --doc and "
                              "--lessons")
        r = self.resolved()
        if r.doc == "none" and r.report_only:
            raise ConfigError("--report-only with --doc none has nothing to do")
        if r.doc != "none":
            check_writable_file(r.doc, "--doc", make_parents=True)
            read_document(Path(r.doc))  # a document there must be one (not a FIFO, a device)
        if r.report_only:
            if not r.out.exists():
                raise ConfigError(f"no results file {r.out}: run the sweep first"
                                  + ("" if r.ship else " (--ship: the shipped results)"))
            report_block(load_results(r.out), f"results file {r.out}")
            return r
        check_writable_file(r.out, "--out", make_parents=True)
        if r.out.exists():
            check_merge(load_results(r.out), r.out, seed=r.seed, epochs=r.epochs,
                        n_test=r.n_test)
        check_writable_dir(r.work, "--work")
        if r.lessons != "none" and r.grid == "full":
            check_writable_dir(r.lessons, "--lessons")
        return r

    def datasets_checked(self) -> Dict[str, Any]:
        """Each dataset loaded once (a missing one is an error before any training), and
        ``n_test`` checked against each test set."""
        from ..blocks.data import load_dataset

        loaded = {d: load_dataset(d, seed=self.seed) for d in self.datasets}
        for d, data in loaded.items():
            n = self.n_test or N_TEST.get(d, 500)
            if n > len(data.x_test):
                raise ConfigError(f"--n-test {n} is larger than the {len(data.x_test)} test "
                                  f"samples of {d}")
        return loaded


def cell_key(cell: Cell, settings: Dict[str, Any], n_test: int, seed: int) -> str:
    d = dict(v=SWEEP_VERSION, id=cell.id, settings=settings, n_test=n_test, seed=seed,
             n_diag=N_DIAG)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ====================================================================== measuring
def _bn_layers(model) -> int:
    from torch.nn.modules.batchnorm import _BatchNorm

    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def _mean(values: List[float]) -> float:
    vals = [v for v in values if v is not None and v == v and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def diagnostics_of(model, x, y, *, eps: float, step_size: float, steps: int, batch: int,
                   seed: int = 0) -> Dict[str, float]:
    """The confounding diagnostics on ``x`` split into batches of ``batch`` (the BN batch
    size), averaged over the batches."""
    from ..measuring.diagnostics import (logit_error_experiment, moving_target,
                                         perturbation_experiment)

    acc: Dict[str, List[float]] = {}

    def add(k, v):
        acc.setdefault(k, []).append(float(v))

    n = len(x) - len(x) % batch
    for i in range(0, n, batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        t0 = moving_target(model, xb, yb, "1:0", eps=eps, step_size=step_size, steps=steps,
                           seed=seed)
        t3 = moving_target(model, xb, yb, "1:3", eps=eps, step_size=step_size, steps=steps,
                           seed=seed)
        clean = t0.frame[t0.frame["step"] == 0]
        add("pn_distance_mean", clean["distance_to_pn_mean"].mean())
        add("pn_distance_var", clean["distance_to_pn_var"].mean())
        add("drift_1_0", t0.summary()["step_drift_mean"])
        add("drift_1_3", t3.summary()["step_drift_mean"])
        le = logit_error_experiment(model, xb, yb, eps=step_size)
        add("logit_error_clean_bn", le.error_with_clean_bn)
        add("logit_error_own_bn", le.error_with_adv_bn)
        pe = perturbation_experiment(model, xb, yb, eps=eps, step_size=step_size, steps=steps,
                                     seed=seed)
        labels = list(pe.modes)
        for label, key in zip(labels, ("pn", "bn", "shaped")):
            add(f"l2_{key}", pe.modes[label]["mean_l2"])
            add(f"straightness_{key}", pe.modes[label]["straightness"])
    out = {k: _mean(v) for k, v in acc.items()}
    out["damping"] = out["drift_1_0"] / out["drift_1_3"] if out["drift_1_3"] > 0 else float("nan")
    out["logit_gap"] = (out["logit_error_clean_bn"] / out["logit_error_own_bn"] - 1
                        if out["logit_error_own_bn"] > 0 else float("nan"))
    out["pn_vs_bn"] = out["l2_pn"] / out["l2_bn"] - 1 if out["l2_bn"] > 0 else float("nan")
    out["shaping_vs_bn"] = (out["l2_shaped"] / out["l2_bn"] - 1 if out["l2_bn"] > 0
                            else float("nan"))
    out["n_batches"] = n // batch
    return out


def _row(rows, crafted, classified_prefix, attack="pgd"):
    for r in rows:
        if (r["attack"] == attack and r["crafted_with"] == crafted and
                str(r["classified_with"]).startswith(classified_prefix)):
            return r
    return None


def measure_cell(cell: Cell, runs: Dict[str, Path], *, n_test: int, seed: int = 0,
                 device: Optional[str] = None) -> Dict[str, Any]:
    """Every measurement of one cell (JSON-ready)."""
    import torch

    from ..training.checkpoints import load_checkpoint
    from ..blocks.data import load_dataset
    from ..measuring.evaluation import BESIDE, evaluate_checkpoint, rows_of

    settings = cell.settings()
    batch = int(settings.get("batch_size", 64))
    plain_df, meta = evaluate_checkpoint(
        runs[PLAIN], dataset_name=cell.dataset, device=device, attacks=["pgd"],
        classify=["pn", "bn", "shaped:1:9"], craft=["pn", "bn"], n_test=n_test, seed=seed,
        batch_size=batch, progress=False, cache_dir=BESIDE)
    shaped_df, _ = evaluate_checkpoint(
        runs[SHAPED], dataset_name=cell.dataset, device=device, attacks=["pgd"],
        classify=["pn", "shaped:1:9"], craft=["pn"], n_test=n_test, seed=seed,
        batch_size=batch, progress=False, cache_dir=BESIDE)
    pr, sr = rows_of(plain_df), rows_of(shaped_df)
    p_pn, p_bn, p_sh = (_row(pr, "PN", c) for c in ("PN", "BN", "shaped"))
    p_bn_pn = _row(pr, "BN", "PN")
    s_pn, s_sh = _row(sr, "PN", "PN"), _row(sr, "PN", "shaped")
    cfg = meta["config"]
    model, _ = load_checkpoint(runs[PLAIN], "cpu")
    data = load_dataset(cell.dataset, seed=seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:N_DIAG]
    diag = diagnostics_of(model, data.x_train[idx], data.y_train[idx], eps=cfg["eps"],
                          step_size=cfg["step_size"], steps=cfg["steps"], batch=batch,
                          seed=seed)
    m: Dict[str, Any] = dict(
        bn_layers=_bn_layers(model), model=cfg["model"], eps=cfg["eps"], batch=batch,
        # I
        acc_pn=p_pn["clean_acc"], acc_bn=p_bn["clean_acc"], acc_shaped=p_sh["clean_acc"],
        shaped_model_acc_pn=s_pn["clean_acc"], shaped_model_acc_shaped=s_sh["clean_acc"],
        # III (robust accuracy, PGD-20)
        rob_pn_pn=p_pn["robust_acc"], rob_bn_pn=p_bn_pn["robust_acc"],
        rob_pn_bn=p_bn["robust_acc"], shaped_model_rob_pn=s_pn["robust_acc"],
        shaped_model_rob_shaped=s_sh["robust_acc"], **diag)
    m["acc_gap_bn_pn"] = m["acc_bn"] - m["acc_pn"]
    m["acc_gap_shaped_pn"] = m["shaped_model_acc_shaped"] - m["acc_pn"]
    m["rob_gap_bn_pn_crafted"] = m["rob_bn_pn"] - m["rob_pn_pn"]
    m["rob_gap_shaped_plain"] = m["shaped_model_rob_shaped"] - m["rob_pn_pn"]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in m.items()}


# ====================================================================== the sweep
def _train_cell(dataset: str, variant: str, settings: Dict[str, Any], work: Path, seed: int,
                device: str) -> Dict[str, Path]:
    s = dict(settings)
    return train_set(dataset, work / dataset / variant, seed=s.pop("seed", seed),
                     specs=CELL_SPECS, overrides=s, device=device, progress=False,
                     log=lambda *_: None)


def run_sweep(cells: Sequence[Cell], work: Path, results_path: Path, *, seed: int = 0,
              epochs: Optional[int] = None, n_test: Optional[int] = None,
              device: str = "auto", grid: str = "full", log: Callable = print,
              datasets: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train and measure every cell not done yet, merged into the results file: its other
    cells are kept (a cell is only ever replaced by a new measurement of itself), and the
    file is rewritten (atomically) after each cell, so a killed sweep resumes where it
    stopped. A file of another seed, epochs or test size is refused (``check_merge``)."""
    from ..training.checkpoints import atomic_write_json
    from ..blocks.data import load_dataset

    old = load_results(results_path) if results_path.exists() else {}
    check_merge(old, results_path, seed=seed, epochs=epochs, n_test=n_test)
    kept: Dict[str, Any] = {c["id"]: c for c in old.get("cells", [])}
    results: Dict[str, Any] = {
        "version": SWEEP_VERSION, "seed": seed,
        "grid": "full" if grid == "full" or old.get("grid") == "full" else grid,
        "epochs_override": epochs, "n_test_override": n_test, "cells": []}
    order = _canonical_order(list(kept) + [c.id for c in cells if c.id not in kept])
    datasets = dict(datasets or {})
    for i, cell in enumerate(cells, 1):
        nt = n_test or N_TEST.get(cell.dataset, 500)
        settings = cell.settings(epochs)
        key = cell_key(cell, settings, nt, seed)
        if cell.id in kept and kept[cell.id].get("key") == key:
            log(f"[{i}/{len(cells)}] {cell.id}: done already")
            continue
        t0 = time.time()
        if cell.dataset not in datasets:
            datasets[cell.dataset] = load_dataset(cell.dataset, seed=seed)
        runs = _train_cell(cell.dataset, cell.variant, settings, work, seed, device)
        t_train = time.time() - t0
        measures = measure_cell(cell, runs, n_test=nt, seed=seed,
                                device=None if device == "auto" else device)
        entry = dict(id=cell.id, grid=grid, key=key, dataset=cell.dataset, axis=cell.axis,
                     variant=cell.variant, settings=settings, n_test=nt,
                     runs={k: v.name for k, v in runs.items()},
                     seconds_train=round(t_train, 1),
                     seconds_measure=round(time.time() - t0 - t_train, 1), measures=measures)
        kept[cell.id] = entry
        results["cells"] = [kept[c] for c in order if c in kept]
        atomic_write_json(results_path, results)
        log(f"[{i}/{len(cells)}] {cell.id}: {time.time() - t0:.1f} s "
            f"(I {_fmt(measures['acc_gap_bn_pn'])}, II {_pct(measures['logit_gap'])}, "
            f"III {_pct(measures['pn_vs_bn'])})")
    results["cells"] = [kept[c] for c in order if c in kept]
    results["missing"] = [c.id for c in cells if c.id not in kept]
    results["total_seconds"] = round(sum(c["seconds_train"] + c["seconds_measure"]
                                         for c in results["cells"]), 1)
    atomic_write_json(results_path, results)
    return results


# ====================================================================== lessons
def lesson_choices(results: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per confounding, the cell with the largest magnitude in the paper's direction (seed
    cells excluded: they repeat the base setting), and
    whether it clears the effect threshold (else: no setting here shows it)."""
    out: Dict[str, Dict[str, Any]] = {}
    for conf, (key, label) in MAGNITUDE.items():
        cands = [c for c in results.get("cells", []) if c["measures"].get(key) is not None
                 and c["axis"] != "seed"]  # another seed of the base: no cherry-picking
        if not cands:
            continue
        best = max(cands, key=lambda c: c["measures"][key])
        v = best["measures"][key]
        out[conf] = dict(cell=best["id"], value=v, label=label,
                         shows_effect=v >= EFFECT_THRESHOLD[conf],
                         paper=PAPER[conf]["value"], paper_text=PAPER[conf]["text"],
                         model=best["measures"]["model"], bn_layers=best["measures"]["bn_layers"],
                         eps=best["measures"]["eps"], batch=best["measures"]["batch"],
                         dataset=best["dataset"])
    return out


LESSON_FILES = (WEIGHTS_NAME, META_NAME, METRICS_NAME)


def ship_lessons(results: Dict[str, Any], work: Path, out: Path, *, seed: int = 0,
                 device: str = "auto", log: Callable = print) -> Dict[str, Any]:
    """Train (or reuse) the chosen cell of each lesson and copy its two checkpoints to
    ``out/lesson-<I|II|III>-<plain|shaped>/``; ``out/lessons.json`` says what was chosen
    and why."""
    from ..training.checkpoints import atomic_write_json

    choices = lesson_choices(results)
    cells = {c["id"]: c for c in results["cells"]}
    out.mkdir(parents=True, exist_ok=True)
    for conf, ch in choices.items():
        c = cells[ch["cell"]]
        runs = _train_cell(c["dataset"], c["variant"], c["settings"], work, seed, device)
        ch["checkpoints"] = {}
        for spec, tag in ((PLAIN, "plain"), (SHAPED, "shaped")):
            dst = out / f"lesson-{conf}-{tag}"
            tmp = out / f".lesson-{conf}-{tag}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for f in LESSON_FILES:
                shutil.copy2(runs[spec] / f, tmp / f)
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
            ch["checkpoints"][tag] = dst.name
        log(f"lesson {conf}: {ch['cell']} ({ch['label']} {ch['value']:+.3f})")
    atomic_write_json(out / "lessons.json", choices)
    return choices


# ====================================================================== report
def _pct(v) -> str:
    return "-" if v is None or v != v else f"{v:+.0%}"


def _pts(v) -> str:
    return "-" if v is None or v != v else f"{v:+.3f}"


def _x(v) -> str:
    return "-" if v is None or v != v else f"{v:.1f}x"


def cells_table(results: Dict[str, Any], conf: str) -> str:
    cells = results.get("cells", [])
    if conf == "I":
        head = ["Acc [PN]", "Acc [clean-batch BN]", "Acc [BN+Shaping 1:9]",
                "shaped model Acc [BN+Shaping 1:9]", "BN - PN", "PN distance to clean stats"]
        vals = [lambda m: _fmt(m["acc_pn"]), lambda m: _fmt(m["acc_bn"]),
                lambda m: _fmt(m["acc_shaped"]), lambda m: _fmt(m["shaped_model_acc_shaped"]),
                lambda m: _pts(m["acc_gap_bn_pn"]), lambda m: _fmt(m["pn_distance_mean"])]
    elif conf == "II":
        head = ["drift per step 1:0", "drift per step 1:3", "damping 1:0 / 1:3",
                "logit error [clean BN]", "logit error [own BN]", "gap (paper +63%)"]
        vals = [lambda m: f"{m['drift_1_0']:.4f}", lambda m: f"{m['drift_1_3']:.4f}",
                lambda m: _x(m["damping"]), lambda m: f"{m['logit_error_clean_bn']:.3f}",
                lambda m: f"{m['logit_error_own_bn']:.3f}", lambda m: _pct(m["logit_gap"])]
    else:
        head = ["L2 PN-crafted", "L2 BN-crafted", "PN vs BN (paper +17%)",
                "shaped vs BN (paper +41%)", "straightness PN / BN",
                "R.Acc PGD-20 (PN) [PN]", "R.Acc PGD-20 (BN) [PN]", "BN - PN crafted",
                "shaped model R.Acc PGD-20 (PN) [BN+Shaping 1:9]"]
        vals = [lambda m: f"{m['l2_pn']:.3f}", lambda m: f"{m['l2_bn']:.3f}",
                lambda m: _pct(m["pn_vs_bn"]), lambda m: _pct(m["shaping_vs_bn"]),
                lambda m: f"{m['straightness_pn']:.2f} / {m['straightness_bn']:.2f}",
                lambda m: _fmt(m["rob_pn_pn"]), lambda m: _fmt(m["rob_bn_pn"]),
                lambda m: _pts(m["rob_gap_bn_pn_crafted"]),
                lambda m: _fmt(m["shaped_model_rob_shaped"])]
    lines = ["| cell | model (BN layers) | eps | BN batch | " + " | ".join(head) + " |",
             "|" + "---|" * (4 + len(head))]
    for c in cells:
        m = c["measures"]
        cols = []
        for f in vals:
            try:
                cols.append(f(m))
            except (TypeError, KeyError):
                cols.append("-")
        lines.append(f"| {c['id']} | {m['model']} ({m['bn_layers']}) | {m['eps']:g} | "
                     f"{m['batch']} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def base_and_spread(results: Dict[str, Any], dataset: str, key: str):
    """A measure at the dataset's base setting (seed 0) and half its range over the base's
    training seeds."""
    cells = [c for c in results.get("cells", []) if c["dataset"] == dataset
             and c["axis"] in ("base", "seed") and c["measures"].get(key) is not None]
    base = next((c["measures"][key] for c in cells if c["axis"] == "base"), None)
    vals = [c["measures"][key] for c in cells]
    return base, ((max(vals) - min(vals)) / 2 if len(vals) > 1 else None)


def lessons_table(results: Dict[str, Any]) -> str:
    lines = ["| confounding | clearest cell | measure | value | same dataset's base (± seed "
             "spread) | paper | shows the effect here |", "|---|---|---|---|---|---|---|"]
    for conf, ch in lesson_choices(results).items():
        fmt = _pts if conf == "I" else _pct
        v = fmt(ch["value"])
        base, spread = base_and_spread(results, ch["dataset"], MAGNITUDE[conf][0])
        b = fmt(base) + (f" (±{fmt(spread).lstrip('+')})" if spread is not None else "")
        p = PAPER[conf]["text"]
        lines.append(f"| {conf} | {ch['cell']} | {ch['label']} | {v} | {b} | {p} | "
                     f"{'yes' if ch['shows_effect'] else 'no'} (threshold "
                     f"{EFFECT_THRESHOLD[conf]:g}) |")
    return "\n".join(lines)


def _dur(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def cost_text(results: Dict[str, Any]) -> str:
    cells = results.get("cells", [])
    total = sum(c["seconds_train"] + c["seconds_measure"] for c in cells)
    train = sum(c["seconds_train"] for c in cells)
    per = {}
    for c in cells:
        per[c["dataset"]] = per.get(c["dataset"], 0) + c["seconds_train"] + c["seconds_measure"]
    missing = results.get("missing") or []
    text = (f"{len(cells)} cells, {2 * len(cells)} trainings, {_dur(total)} in all "
            f"({_dur(train)} training, {_dur(total - train)} measuring; "
            + ", ".join(f"{d} {_dur(s)}" for d, s in per.items())
            + "), one process, `torch.set_num_threads(1)`, measured on this lab's shared "
              "2-core machine (an idle machine is faster).")
    if missing:
        text += f" Missing cells (not run yet): {', '.join(missing)}."
    return text


def generated_block(results: Dict[str, Any]) -> str:
    """The generated part of CONFOUNDINGS.md (tests compare it verbatim)."""
    return "\n\n".join([
        "<!-- generated:sweep -->",
        "### Cost", cost_text(results),
        "### The clearest setting of each confounding (the lesson checkpoints)",
        lessons_table(results),
        "### Confounding I: norm differences degrade accuracy (PGD-AT model, clean test set)",
        cells_table(results, "I"),
        "### Confounding II: the moving target (PGD-AT model, training batches)",
        cells_table(results, "II"),
        "### Confounding III: BN attacks are weaker (PGD-AT model)",
        cells_table(results, "III"),
        "<!-- end generated:sweep -->"])


def report_block(results: Dict[str, Any], where: str = "the results") -> str:
    """``generated_block``, with a results file that lacks what the tables read said in one
    ``ConfigError`` line."""
    try:
        return generated_block(results)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ConfigError(f"{where} lack what the report needs ({type(e).__name__}: "
                          f"{str(e)[:120]})") from None


def read_document(md_path: Path) -> str:
    """The document whose generated block is rewritten (``files``: a regular file of at most
    MAX_DOC_BYTES), or a new one's title when there is none."""
    from ..base.files import UnreadableFile, read_text

    try:
        return read_text(md_path, MAX_DOC_BYTES, "document")
    except UnreadableFile as e:
        if e.missing:
            return "# Confoundings\n"
        raise ConfigError(str(e)) from None


def update_document(md_path: Path, results: Dict[str, Any]) -> str:
    from ..training.checkpoints import atomic_write_bytes

    text = read_document(Path(md_path))
    block = report_block(results)
    pattern = re.compile(r"<!-- generated:sweep -->.*?<!-- end generated:sweep -->", re.S)
    text = (pattern.sub(lambda _: block, text) if pattern.search(text)
            else text.rstrip("\n") + "\n\n" + block + "\n")
    atomic_write_bytes(md_path, text.encode())
    return text
