"""``python -m normshape_core reproduce --dataset D``: train and evaluate the paper's set.

The set (fixed seeds): ``natural``; ``pgd`` and ``trades`` in the three training modes
(adv only, shaping in training, shaping in attack + training; ratio 1:3); ``pgd`` with
shaping in attack + training at 1:1, 1:2 and 1:7 (Table IV); and one ``pgd`` attack+train
run with polluted running statistics (attack steps update PN, as the TensorFlow code the
paper built on did) to show why our PN columns differ from the paper's.
Every run lives in ``OUT/<run name>/``; finished runs are skipped and interrupted ones
resume, so the command can be re-run after a kill. Results go to ``OUT/results.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..base.names import INFERENCE_RATIOS, META_NAME
from ..settings.config import MAX_SEED, MAX_THREADS, ConfigError, Ratio, TrainConfig

# Per-dataset reproduction settings (overrides of the dataset presets), chosen so that the
# accuracy-robustness trade-off is visible: PGD-AT must lose clean accuracy against natural
# training by several points, otherwise the paper's headline claim cannot be tested.
REPRO_SETTINGS: Dict[str, Dict[str, Any]] = {
    "moons": dict(eps=0.12, epochs=30),
    "spirals": dict(eps=0.04, epochs=40),
    "digits": dict(eps=0.3, epochs=30),
    "fashion_mnist": dict(eps=0.1, epochs=3, n_train=10000, model_width=16),
}
# Evaluation sizes: every test sample for the small sets, a fixed subset for images.
REPRO_N_TEST = {"moons": 1000, "spirals": 1000, "digits": 397, "fashion_mnist": 1000}
# The worst case's budgets: every evaluated sample unless said here. Through shaped batches
# a test row costs (clean + adv) / adv forward rows (10 at 1:9, 50 at 1:49), so on
# Fashion-MNIST the headline models (``HEADLINE``) get all 1,000 samples, the others the first
# 200 of the same seeded subset (``others_n_test``), and Table IV's worst case 200 per cell.
# The first n samples of a seeded subset are the same samples whatever its size (below the
# whole test set), so numbers at different n pair up on their common first samples.
REPRO_WORST: Dict[str, Dict[str, int]] = {
    "fashion_mnist": dict(n_test=1000, others_n_test=200, table_iv_n_test=200),
}
#: the ensemble of every worst-case number in the report
from ..measuring.worst_case import DEFAULT_ENSEMBLE as WORST_ENSEMBLE  # noqa: E402


def is_headline(config: Dict[str, Any]) -> bool:
    """The models every claim is about: natural training, PGD-AT and TRADES (adv only), and
    both with shaping in attack + training at 1:3 (not polluted)."""
    method = config.get("method")
    if method == "natural":
        return True
    if method not in ("pgd", "trades") or config.get("polluted_running_stats"):
        return False
    shaping = config.get("shaping") or "none"
    return shaping == "none" or (shaping == "attack+train" and str(config.get("ratio")) == "1:3")


def worst_n(dataset: str, config: Optional[Dict[str, Any]] = None,
            table_iv: bool = False, budget: Optional[Dict[str, int]] = None) -> int:
    """Test samples of the shipped worst case for a model of the reproduction (``config``:
    its training config; None: a headline model). ``budget`` overrides ``REPRO_WORST``'s
    entries (``n_test``, ``others_n_test``, ``table_iv_n_test``)."""
    budget = {**REPRO_WORST.get(dataset, {}), **(budget or {})}
    n = REPRO_N_TEST.get(dataset, 1000)
    if table_iv:  # 0: Table IV's worst case skipped
        v = budget.get("table_iv_n_test")
        return 0 if v == 0 else min(n, v or n)
    if config is not None and not is_headline(config):
        return min(n, budget.get("others_n_test") or budget.get("n_test") or n)
    return min(n, budget.get("n_test") or n)


def worst_case_settings(dataset: str, n_test: Optional[int] = None,
                        config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The evaluation settings of the reproduction's worst case on ``dataset`` (ensemble,
    test samples, seed) for a model with training ``config`` (None: a headline model): the
    app asks for the same, so it reads the shipped results instead of recomputing them.
    The shipped evaluation classifies with ``TABLE_CLASSIFY`` (BN, PN, shaped 1:9) in one
    call; Table IV's worst case: ``table_iv_worst_settings``."""
    n = worst_n(dataset, config)
    return dict(ensemble=WORST_ENSEMBLE, n_test=min(n, n_test or n), seed=0)


def table_iv_worst_settings(dataset: str) -> Dict[str, Any]:
    """The settings of the shipped Table IV worst case: one evaluation per training ratio,
    the default ensemble, classified with shaped inference at every ratio of
    ``TABLE_IV_INFERENCE`` (in that order), on ``worst_n(dataset, table_iv=True)`` samples."""
    return dict(attacks=[], ensembles=[WORST_ENSEMBLE],
                classify=[f"shaped:{r}" for r in TABLE_IV_INFERENCE],
                n_test=worst_n(dataset, table_iv=True), seed=0)


@dataclass(frozen=True)
class RunSpec:
    key: str  # short name used in tables
    method: str
    shaping: str = "none"
    ratio: str = "1:3"
    polluted: bool = False


PAPER_SET: List[RunSpec] = [
    RunSpec("natural", "natural"),
    RunSpec("pgd/adv-only", "pgd", "none"),
    RunSpec("pgd/shaping-in-training", "pgd", "train"),
    RunSpec("pgd/shaping-in-attack+training", "pgd", "attack+train"),
    RunSpec("trades/adv-only", "trades", "none"),
    RunSpec("trades/shaping-in-training", "trades", "train"),
    RunSpec("trades/shaping-in-attack+training", "trades", "attack+train"),
    RunSpec("pgd/shaping-in-attack+training@1:1", "pgd", "attack+train", "1:1"),
    RunSpec("pgd/shaping-in-attack+training@1:2", "pgd", "attack+train", "1:2"),
    RunSpec("pgd/shaping-in-attack+training@1:7", "pgd", "attack+train", "1:7"),
    RunSpec("pgd/shaping-in-attack+training/polluted", "pgd", "attack+train", "1:3", True),
]


def run_config(dataset: str, spec: RunSpec, seed: int = 0, **overrides) -> TrainConfig:
    settings = {**REPRO_SETTINGS.get(dataset, {}), **overrides}
    batch = settings.get("batch_size", 64)
    if spec.shaping != "none":  # a shaped batch splits into equal parts: 1:2 trains with 63
        batch -= batch % Ratio.parse(spec.ratio).parts
    settings["batch_size"] = batch
    return TrainConfig(dataset=dataset, method=spec.method, shaping=spec.shaping,
                       ratio=spec.ratio, polluted_running_stats=spec.polluted, seed=seed,
                       trades_kl_in_loss=False if spec.method == "trades" else True,
                       **settings).resolved()


def train_set(dataset: str, out: Path, *, seed: int = 0, specs: Optional[List[RunSpec]] = None,
              overrides: Optional[Dict[str, Any]] = None, device: str = "auto",
              progress: bool = True, log=print) -> Dict[str, Path]:
    """Train every run of the set that is not finished yet; return key -> run folder."""
    from ..training.checkpoints import read_meta
    from ..blocks.data import load_dataset
    from ..training.trainer import train

    specs = specs or PAPER_SET
    data = load_dataset(dataset, seed=seed)
    runs: Dict[str, Path] = {}
    for i, spec in enumerate(specs, 1):
        cfg = run_config(dataset, spec, seed, device=device, **(overrides or {}))
        run_dir = out / cfg.run_name()
        runs[spec.key] = run_dir
        if (run_dir / META_NAME).exists():
            meta = read_meta(run_dir)
            if TrainConfig.from_dict(meta["config"]).fingerprint() == cfg.fingerprint():
                log(f"[{i}/{len(specs)}] {spec.key}: done already ({run_dir})")
                continue
            raise ConfigError(f"{run_dir} holds a run with other settings; use another --out")
        log(f"[{i}/{len(specs)}] {spec.key}: training -> {run_dir}")
        t0 = time.time()
        train(cfg, run_dir, dataset=data, resume=True, progress=progress)
        log(f"[{i}/{len(specs)}] {spec.key}: {time.time() - t0:.1f} s")
    return runs


# ====================================================================== evaluation
MAIN_KEYS = ["natural", "pgd/adv-only", "pgd/shaping-in-training",
             "pgd/shaping-in-attack+training", "trades/adv-only", "trades/shaping-in-training",
             "trades/shaping-in-attack+training"]
TABLE_ATTACKS = ["pgd", "cw", "fgsm", "deepfool", "shaping"]
TABLE_CLASSIFY = ["bn", "pn", "shaped:1:9"]
ATTACK_LABELS = {"pgd": "PGD-20", "cw": "C&W-L2", "fgsm": "FGSM", "deepfool": "DeepFool",
                 "shaping": "Shaping attack"}
TABLE_IV_TRAINING = {"1:1": "pgd/shaping-in-attack+training@1:1",
                     "1:2": "pgd/shaping-in-attack+training@1:2",
                     "1:3": "pgd/shaping-in-attack+training",
                     "1:7": "pgd/shaping-in-attack+training@1:7"}
#: Table IV's columns: the paper's inference ratios adv:clean
TABLE_IV_INFERENCE = INFERENCE_RATIOS
SHAPED_KEYS = {"PGD+Shaping": "pgd/shaping-in-attack+training",
               "TRADES+Shaping": "trades/shaping-in-attack+training"}
POLLUTED_KEY = "pgd/shaping-in-attack+training/polluted"


def evaluation_plan(runs: Dict[str, Path], dataset: str, *, n_test: int,
                    table_attacks: Optional[List[str]] = None, worst_case: bool = True,
                    worst: Optional[Dict[str, int]] = None
                    ) -> List[Tuple[str, List[str], List[str], int]]:
    """(run key, attacks, classify, n) of every evaluation of the report, in order: the
    paper's protocol on all ``n_test`` samples, then the worst case of each model through
    its own norms (``worst_n``), then Table IV's worst case (``table_iv_worst_settings``)."""
    from ..training.checkpoints import read_meta

    iv_classify = [f"shaped:{r}" for r in TABLE_IV_INFERENCE]
    plan = ([(k, table_attacks or TABLE_ATTACKS, TABLE_CLASSIFY, n_test) for k in MAIN_KEYS]
            + [(k, ["adaptive"], ["shaped:1:9"], n_test) for k in SHAPED_KEYS.values()]
            + [(k, ["pgd"], iv_classify, n_test) for k in TABLE_IV_TRAINING.values()]
            + [(POLLUTED_KEY, ["pgd"], ["pn", "shaped:1:9"], n_test)])
    if worst_case:
        for k in MAIN_KEYS + [POLLUTED_KEY]:
            if k not in runs:
                continue
            cfg = read_meta(runs[k])["config"]
            classify = TABLE_CLASSIFY if k != POLLUTED_KEY else ["pn", "shaped:1:9"]
            plan.append((k, [WORST_ENSEMBLE], classify,
                         min(n_test, worst_n(dataset, cfg, budget=worst))))
        n_iv = min(n_test, worst_n(dataset, table_iv=True, budget=worst))
        if not n_iv:
            return [p for p in plan if p[0] in runs]
        plan += [(k, [WORST_ENSEMBLE], iv_classify, n_iv) for k in TABLE_IV_TRAINING.values()]
    return [p for p in plan if p[0] in runs]


def evaluate_set(runs: Dict[str, Path], dataset: str, *, seed: int = 0,
                 n_test: Optional[int] = None, device: Optional[str] = None,
                 table_attacks: Optional[List[str]] = None, diagnostics: bool = True,
                 worst_case: bool = True, worst: Optional[Dict[str, int]] = None,
                 log=print, save=None,
                 worst_budget: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """Evaluate the trained set; every robust number names crafted-with / classified-with
    and keeps its per-sample outcomes (for intervals and paired verdicts). Each evaluation
    is cached beside its checkpoint and resumes inside itself after a kill (its work folder
    in the user's folder), so the whole command can be run again in pieces. ``save``:
    called with the results after every evaluation (``complete`` False until the last), so
    a long run's finished evaluations are on disk as it goes. ``worst_budget``: the
    ensemble's budgets other than the defaults (``apgd_steps``, ``square_queries``,
    ``n_target_classes``; the tests' small runs), recorded in ``worst_settings``."""
    from ..measuring.evaluation import BESIDE, EvalSettings, evaluate_checkpoint, rows_of

    n_test = n_test or REPRO_N_TEST.get(dataset, 1000)
    d = EvalSettings()
    results: Dict[str, Any] = {
        "dataset": dataset, "seed": seed, "n_test": n_test, "runs": {},
        "n_test_worst": min(n_test, worst_n(dataset, budget=worst)),
        "n_test_worst_others": min(n_test, worst_n(dataset, {"method": "pgd",
                                                             "shaping": "train"}, budget=worst)),
        "n_test_table_iv_worst": min(n_test, worst_n(dataset, table_iv=True, budget=worst)),
        "worst_ensemble": WORST_ENSEMBLE,
        "worst_settings": {"apgd_steps": d.apgd_steps, "square_queries": d.square_queries,
                           "n_target_classes": d.n_target_classes, **(worst_budget or {})},
        "evaluations": []}
    plan = evaluation_plan(runs, dataset, n_test=n_test, table_attacks=table_attacks,
                           worst_case=worst_case, worst=worst)
    results["planned_evaluations"] = len(plan)
    from ..measuring.evaluation import cache_path_for, prune_cache

    for key in {p[0] for p in plan}:  # results of an earlier engine go from the shipped files
        gone = prune_cache(cache_path_for(runs[key], BESIDE))
        if gone:
            log(f"  {key}: {gone} cached evaluations of an earlier engine removed")
    for i, (key, attacks, classify, n_eval) in enumerate(plan, 1):
        t0 = time.time()
        # beside the checkpoints: the shipped results that the app reads
        budget = (worst_budget or {}) if attacks == [WORST_ENSEMBLE] else {}
        df, meta = evaluate_checkpoint(runs[key], dataset_name=dataset, device=device,
                                       attacks=attacks, classify=classify, n_test=n_eval,
                                       seed=seed, progress=False, cache_dir=BESIDE, **budget,
                                       on_bound=lambda u, key=key: log(
                                           f"    {key} [{u.classified_with}]: {u.text()}")
                                       if u.current is None else None)
        entry = results["runs"].setdefault(key, {"checkpoint": str(runs[key]),
                                                 "weights_sha256": meta["weights_sha256"],
                                                 "config": meta["config"], "rows": []})
        entry["rows"].extend(rows_of(df))
        entry.setdefault("warnings", []).extend(df.attrs.get("warnings", []))
        results["evaluations"].append({"run": key, "attacks": attacks, "classify": classify,
                                       "n": n_eval, "wall_s": df.attrs.get("wall_s"),
                                       "floor_s": df.attrs.get("floor_s"),
                                       "cost": df.attrs.get("cost"),
                                       "row_seconds": df.attrs.get("row_seconds")})
        log(f"[eval {i}/{len(plan)}] {key}: {', '.join(attacks)} x {', '.join(classify)}, "
            f"n={n_eval} ({'cached' if df.attrs.get('cached') else f'{time.time() - t0:.1f} s'})")
        if save is not None:
            save({**results, "complete": False})
    if diagnostics:
        results["diagnostics"] = diagnose_set(runs, dataset, seed=seed, device=device)
        log("[diagnostics] done")
    from ..measuring.projections import store_projections; store_projections(runs.values(), log=log)  # noqa: E702,E501
    results["complete"] = True
    return results


def diagnose_set(runs: Dict[str, Path], dataset: str, *, seed: int = 0, n: int = 256,
                 device: Optional[str] = None) -> Dict[str, Any]:
    """The paper's confounding measurements on its own choice of model: an adversarially
    trained (adv only) model, FGSM / PGD on training inputs."""
    import torch

    from ..training.checkpoints import load_checkpoint
    from ..blocks.data import load_dataset
    from ..measuring.diagnostics import diagnose

    out: Dict[str, Any] = {}
    data = load_dataset(dataset, seed=seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:n]
    x, y = data.x_train[idx], data.y_train[idx]
    for key in ("pgd/adv-only", "pgd/shaping-in-attack+training"):
        if key not in runs:
            continue
        model, meta = load_checkpoint(runs[key], device or "cpu")
        cfg = meta["config"]
        d = diagnose(model, x.to(next(model.parameters()).device),
                     y.to(next(model.parameters()).device), eps=cfg["eps"],
                     step_size=cfg["step_size"], steps=cfg["steps"], seed=seed)
        for r in d.get("moving_target", {}).values():
            r.pop("points", None)  # per-step points and frames are for the app, not the report
            r.pop("frame", None)
        out[key] = d
    return out


# ====================================================================== results
def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


#: the largest results file read (the shipped ones: a few MB with per-sample outcomes)
MAX_RESULTS_BYTES = 64 << 20


def load_results(path: Path) -> Dict[str, Any]:
    """A reproduce results file (a regular file of bounded size, ``files``)."""
    from ..base.files import read_json

    return read_json(path, MAX_RESULTS_BYTES, "results file")


def check_study_numbers(s: Any) -> None:
    """The checks a study's settings share (``reproduce``, ``alternatives``): a known dataset,
    seed, test samples, epochs and threads in range; one ConfigError naming the flag."""
    from ..blocks.data import DATASETS

    if s.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {s.dataset!r}; choose one of: "
                          f"{', '.join(DATASETS)}")
    if not 0 <= s.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be a whole number in [0, {MAX_SEED}], got {s.seed}")
    for name, v in (("n-test", s.n_test), ("epochs", s.epochs)):
        if v is not None and not 1 <= v <= 10 ** 9:
            raise ConfigError(f"--{name} must be a whole number >= 1, got {v}")
    if not 1 <= s.threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be in [1, {MAX_THREADS}], got {s.threads}")


@dataclass
class ReproduceSettings:
    """The settings of ``reproduce``, checked in one place (``validate``) before any run is
    trained: every run's TrainConfig is built and validated first."""

    dataset: str
    out: Path
    seed: int = 0
    n_test: Optional[int] = None
    epochs: Optional[int] = None
    only: Optional[List[str]] = None
    threads: int = 1
    device: str = "auto"
    worst: Dict[str, int] = field(default_factory=dict)

    def specs(self) -> List[RunSpec]:
        return [s for s in PAPER_SET if self.only is None or s.key in self.only]

    def overrides(self) -> Dict[str, Any]:
        return {"epochs": self.epochs} if self.epochs is not None else {}

    def validate(self) -> "ReproduceSettings":
        from ..settings.config import check_writable_dir, parse_device

        check_study_numbers(self)
        if self.only is not None:
            if not self.only:
                raise ConfigError("--only names no run key")
            unknown = [k for k in self.only if k not in {s.key for s in PAPER_SET}]
            if unknown:
                raise ConfigError(f"unknown run key(s) {', '.join(unknown)}; choose from: "
                                  f"{', '.join(s.key for s in PAPER_SET)}")
        flags = {"n_test": "--worst-n-test", "others_n_test": "--worst-n-test-others",
                 "table_iv_n_test": "--table-iv-worst-n-test"}
        for k, v in self.worst.items():
            least = 0 if k == "table_iv_n_test" else 1
            if not least <= v <= 10 ** 9:
                raise ConfigError(f"{flags.get(k, k)} must be >= {least}, got {v}")
        parse_device(self.device)
        check_writable_dir(self.out, "--out")
        for spec in self.specs():  # every run's settings valid before the first is trained
            run_config(self.dataset, spec, self.seed, device=self.device, **self.overrides())
        return self
