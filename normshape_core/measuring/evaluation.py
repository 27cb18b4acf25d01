"""Robustness evaluation that names both sides: the norms an attack was crafted with and the
inference mode the defender classified with (docs/vocabulary.md, "The evaluation rules").

``evaluate`` crafts each attack once per crafting norms and classifies the same examples
under every inference mode where that is valid, exactly as the paper's Tables I/II: PN-crafted
examples are classified with PN, BN and shaped inference; the shaping attack's examples too;
the adaptive attacks (Table III) are crafted against one shaped classifier and classified by
it only. Robust accuracy is over all n test samples (a sample misclassified when clean counts
as not robust). Layouts: ``table_like_paper`` (Tables I/II), ``table_iii``, ``table_iv``.
``sanity_warnings`` flags what makes a number suspect (randomised classifier, PN-crafted much
weaker than adaptive, zero gradients, PGD weaker than FGSM). ``evaluate_checkpoint`` caches
results keyed by the weights' SHA-256 and the settings: read beside the checkpoint or from the
user's folder, written to the user's folder (``reproduce``: beside the checkpoint).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import torch

from ..attacks import (ADAPTIVE_ATTACKS, ATTACKS, ENSEMBLE_ONLY_ATTACKS, L2_MINIMAL, LINF, Attack,
                       budget_settings, make_attack, parse_attack_names, zero_gradient_fraction)
from ..settings.config import ConfigError, Ratio, parse_device
from ..base.names import WORST  # the ``attack`` of a worst-case row (``ensemble``: its members)
from ..inference.alternatives import make_classifier
from ..inference.shaping import (BNClassifier, Classifier, PNClassifier, ShapedClassifier,
                                 make_reference_pool)
from .eval_work import WorkStore, hex_mask, mask_of
from .worst_case import (SQUARE_QUERIES, BatchState, Cost, applicable, counting_rows,
                         crafted_label, defender_view, ensemble_members, floor_seconds,
                         make_ensemble, row_groups, row_seconds, run_member, transfer_label)

ROW_KEYS = ("attack", "crafted_with", "classified_with", "ratio", "group_size", "clean_acc",
            "robust_acc", "n", "eps", "seconds", "median_l2", "randomized", "ensemble",
            "broken", "clean_mask", "robust_mask")
#: the evaluation's version in its cache key: results of an earlier engine are recomputed
#: (2: the default ensemble with transfer, breaks never undone, per-sample masks)
ENGINE_VERSION = 2
#: warn when the worst case lies this far below the best single attack asked for
WORST_CASE_GAP = 0.03
#: warn when a black-box attack breaks more than this fraction of the samples that survived
#: the gradient attacks before it
BLACK_BOX_GAP = 0.01
DEFAULT_GAP_THRESHOLD = 0.10
CACHE_FORMAT = "normshape-evaluation-cache"
#: the largest evaluation cache file read (the shipped ones: under 1 MB)
MAX_CACHE_BYTES = 256 << 20

ProgressFn = Callable[[int, int, str], None]


@dataclass
class EvalSettings:
    """Everything that changes an evaluation's numbers (hashed for the results cache)."""

    attacks: List[str] = field(default_factory=lambda: ["pgd"])
    ensembles: List[str] = field(default_factory=list)
    """worst case per sample over each of these ensembles ("autoattack", "paper" or members
    joined by "+"), crafted through each classifier's own norms"""
    classify: List[str] = field(default_factory=lambda: ["pn", "bn", "shaped:1:9"])
    craft: List[str] = field(default_factory=lambda: ["pn"])
    """norms the standard attacks craft with: pn (the paper's Tables I/II), bn"""
    n_test: Optional[int] = None
    eps: float = 8 / 255
    step_size: Optional[float] = None
    """PGD-type step size; None: eps / 4"""
    steps: int = 20
    restarts: int = 1
    apgd_steps: int = 100
    fgsm_eps: Optional[float] = None
    """FGSM's eps; None: eps (the paper used twice the training eps)"""
    cw_steps: int = 100
    group_size: Optional[int] = None
    """test samples per shaped batch; None: batches of 100 samples as in the paper"""
    batch_size: int = 100
    reference_pool_size: int = 1000
    fresh_references: bool = False
    eot_draws: int = 8
    square_queries: int = SQUARE_QUERIES
    """Square's query budget per sample (AutoAttack's standard version: 5000)"""
    n_target_classes: int = 9
    """APGD-T's target classes (the top ones other than the label)"""
    apgd_restarts: Optional[int] = None
    """APGD-CE's runs in an ensemble; None: 5 on vector inputs (moons, spirals), else
    ``restarts``"""
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        d = {**self.to_dict(), "engine": ENGINE_VERSION}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ====================================================================== helpers
def _ratio_of(clf: Classifier) -> Optional[str]:
    return str(clf.ratio) if isinstance(clf, ShapedClassifier) else None


def _group_of(clf: Classifier) -> Optional[int]:
    return clf.group_size if isinstance(clf, ShapedClassifier) else None


def parse_classify(specs: Union[str, Sequence[str]]) -> List[str]:
    """``"pn,bn,shaped:1:9,dual:adv,own,tts"`` -> validated specs (ratios checked, repeats
    dropped): every inference mode ``alternatives.check_spec`` knows."""
    from ..inference.alternatives import parse_classify as parse_all

    return parse_all(specs)


def split_attacks(names: Union[str, Sequence[str]]) -> Tuple[List[str], List[str]]:
    """``"pgd,autoattack"`` -> (single attacks, ensembles): ensemble names (``autoattack``,
    ``paper``) and ``A+B+...`` member lists go to the second list, validated."""
    from .worst_case import ENSEMBLES, ensemble_members

    items = names.split(",") if isinstance(names, str) else list(names)
    singles: List[str] = []
    ensembles: List[str] = []
    for raw in items:
        key = str(raw).strip().lower()
        if not key:
            continue
        if key in ENSEMBLES or "+" in key:
            spec = key if key in ENSEMBLES else "+".join(ensemble_members(key))
            if spec not in ensembles:
                ensembles.append(spec)
        else:
            for a in parse_attack_names(key):
                if a in ENSEMBLE_ONLY_ATTACKS:
                    raise ConfigError(f"{a!r} is a member of the worst-case ensembles, not an "
                                      f"attack of its own: use --attacks default (or "
                                      f"apgd+{a}+square)")
                if a not in singles:
                    singles.append(a)
    if not singles and not ensembles:
        raise ConfigError("no attack given (e.g. --attacks autoattack or --attacks pgd,apgd)")
    return singles, ensembles


def ensemble_spec(name: Union[str, Sequence[str]]) -> str:
    """An ensemble given as such: its name, or its members (a list, or joined by "+";
    one attack alone is an ensemble of one) -> the spec kept in the settings."""
    from .worst_case import ENSEMBLES, ensemble_members

    if isinstance(name, str) and name.strip().lower() in ENSEMBLES:
        return name.strip().lower()
    return "+".join(ensemble_members(name if isinstance(name, str) else list(name)))


def ensemble_label(spec: str) -> str:
    """``"autoattack"`` -> ``"autoattack: apgd, apgd_t, square"``."""
    from .worst_case import ENSEMBLES, ensemble_members

    members = ensemble_members(spec)
    return (f"{spec}: " if spec in ENSEMBLES else "") + ", ".join(members)


def _make_progress(progress, total: int):
    """(update(desc), close()) for a callback, tqdm (progress=True) or nothing."""
    if progress is None or progress is False:
        return (lambda desc: None), (lambda: None)
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="step", desc="evaluate", dynamic_ncols=True, leave=False)

        def update(desc):
            bar.set_description_str(desc[:40])
            bar.update(1)

        return update, bar.close
    done = [0]

    def update(desc):
        done[0] += 1
        progress(done[0], total, desc)

    return update, (lambda: None)


def _ensemble_jobs(s: EvalSettings, classifiers, dataset, device, vector_input: bool = False):
    """(spec, classifier index, member attacks) for every ensemble x classifier."""
    out = []
    needs_pool = any("adaptive_eot" in ensemble_members(e) for e in s.ensembles)
    pool = (make_reference_pool(dataset, s.reference_pool_size, s.seed + 1_000_003).to(device)
            if needs_pool else None)
    for spec in s.ensembles:
        names = ensemble_members(spec)
        members = make_ensemble(names, eps=s.eps, seed=s.seed, steps=s.apgd_steps,
                                restarts=s.restarts, n_queries=s.square_queries,
                                n_target_classes=s.n_target_classes, pgd_steps=s.steps,
                                cw_steps=s.cw_steps, reference_pool=pool,
                                eot_draws=s.eot_draws, apgd_restarts=s.apgd_restarts,
                                vector_input=vector_input)
        for i in range(len(classifiers)):
            out.append((spec, i, members))
    return out


def _label_of_view(view) -> str:
    return getattr(view, "crafting_label", type(view).__name__)


def _randomness_check(classifiers, x) -> Dict[str, float]:
    """AutoAttack's check: classify the same inputs twice; {classifier: max logit change}
    for the classifiers whose two answers differ."""
    out = {}
    with torch.inference_mode():
        for clf in classifiers:
            a, b = clf(x), clf(x)
            diff = float((a - b).abs().max())
            if diff > 1e-5:
                out[clf.describe()] = diff
    return out


@dataclass
class _Job:
    attack: Attack
    target: Classifier
    valid: List[int]  # indices of the classifiers that classify this job's examples


# ====================================================================== evaluate
def evaluate(model: torch.nn.Module, dataset, attacks: Union[str, Sequence[str]] = ("pgd",),
             classify: Union[str, Sequence[str]] = ("pn", "bn", "shaped:1:9"), *,
             n_test: Optional[int] = None, eps: float = 8 / 255,
             step_size: Optional[float] = None, steps: int = 20, restarts: int = 1,
             apgd_steps: int = 100, fgsm_eps: Optional[float] = None, cw_steps: int = 100,
             craft: Union[str, Sequence[str]] = ("pn",), group_size: Optional[int] = None,
             batch_size: int = 100, reference_pool_size: int = 1000,
             fresh_references: bool = False, eot_draws: int = 8, seed: int = 0,
             ensembles: Sequence[str] = (), square_queries: int = SQUARE_QUERIES,
             n_target_classes: int = 9, apgd_restarts: Optional[int] = None,
             device: Optional[Union[str, torch.device]] = None,
             progress: Union[None, bool, ProgressFn] = None,
             gap_threshold: float = DEFAULT_GAP_THRESHOLD,
             work_dir: Union[None, str, Path] = None,
             on_bound: Optional[Callable[["BoundUpdate"], None]] = None) -> pd.DataFrame:
    """One row per (attack, crafted_with, classified_with, ratio, group_size) with clean_acc
    (that classifier on the clean subset), robust_acc, n, eps, seconds, median_l2 (C&W,
    DeepFool) and randomized. ``df.attrs["warnings"]``: sanity warnings (list of str);
    ``df.attrs["settings"]``: the settings used.

    The test subset: the first ``n_test`` of a seeded permutation of the test set, processed
    in batches of ``batch_size`` (BN inference and the shaping attack use the batch, as the
    paper's batches of 100). Reference pool: ``reference_pool_size`` clean training samples
    drawn with ``seed``; the EOT attacker draws its own pool with another seed.

    ``attacks`` may name ensembles (``autoattack``, ``paper``, ``apgd+square``), as may
    ``ensembles``: each gives, per classifier, one row per member (``robust_acc``: robust
    after that member and the ones before it; ``broken``: samples it broke) and a
    ``worst_case`` row, the defender's verdict on the final examples (``worst_case.py``).
    Every row carries the per-sample outcomes behind its accuracies (``clean_mask``,
    ``robust_mask``: hex, ``stats.unpack_mask``), for intervals and paired tests.

    Ensembles run member by member over all batches; ``on_bound`` receives a
    ``BoundUpdate`` (the upper bound on robust accuracy so far, "<= 0.460 after apgd;
    square to go") after every member on every batch, and the progress callback's text says
    the same. ``work_dir``: the evaluation keeps its finished units there and a rerun with
    the same folder and settings resumes from them, ending with the same numbers; the folder
    is removed when the evaluation completes.
    """
    singles, found = split_attacks(attacks) if attacks else ([], [])
    for e in ensembles:
        spec = ensemble_spec(e)
        if spec not in found:
            found.append(spec)
    settings = EvalSettings(
        attacks=singles, ensembles=found, classify=parse_classify(classify),
        craft=_parse_craft(craft), n_test=n_test, eps=float(eps), step_size=step_size,
        steps=int(steps), restarts=int(restarts), apgd_steps=int(apgd_steps),
        fgsm_eps=fgsm_eps, cw_steps=int(cw_steps), group_size=group_size,
        batch_size=int(batch_size), reference_pool_size=int(reference_pool_size),
        fresh_references=bool(fresh_references), eot_draws=int(eot_draws),
        square_queries=int(square_queries), n_target_classes=int(n_target_classes),
        apgd_restarts=apgd_restarts, seed=int(seed))
    return _evaluate(model, dataset, settings, device=device, progress=progress,
                     gap_threshold=gap_threshold, work_dir=work_dir, on_bound=on_bound)


def _parse_craft(craft) -> List[str]:
    items = craft.split(",") if isinstance(craft, str) else list(craft)
    out = []
    for c in items:
        c = c.strip().lower()
        if c not in ("pn", "bn"):
            raise ConfigError(f"unknown crafting norms {c!r}; use pn or bn")
        if c not in out:
            out.append(c)
    return out or ["pn"]


#: the largest count an evaluation setting takes (steps, queries, samples, pool size)
MAX_EVAL_COUNT = 1_000_000


def _check_settings(s: EvalSettings, *, eps_given: bool = True) -> None:
    """The one check of an evaluation's settings, before any model or dataset is loaded:
    whole-number counts in [1, MAX_EVAL_COUNT], finite sizes in (0, 1], known names; one
    line per problem (ConfigError). ``eps_given=False``: eps is still to come from the
    checkpoint (the CLI's check before reading it)."""
    for name in ("steps", "restarts", "apgd_steps", "cw_steps", "eot_draws", "square_queries",
                 "n_target_classes", "batch_size", "reference_pool_size", "n_test",
                 "group_size", "apgd_restarts"):
        v = getattr(s, name)
        if v is None and name in ("n_test", "group_size", "apgd_restarts"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_EVAL_COUNT:
            raise ConfigError(f"{name.replace('_', '-')} must be a whole number in [1, "
                              f"{MAX_EVAL_COUNT:,}], got {v!r}")
    if s.batch_size < 2:
        raise ConfigError(f"batch-size must be >= 2 (BN needs a batch), got {s.batch_size}")
    if not isinstance(s.fresh_references, bool):
        raise ConfigError(f"fresh-references must be true or false, got {s.fresh_references!r}")
    for name in ("eps", "step_size", "fgsm_eps"):
        v = getattr(s, name)
        if v is None and (name != "eps" or not eps_given):
            continue
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 1:
            raise ConfigError(f"{name.replace('_', '-')} must be a finite number in (0, 1], "
                              f"got {v!r}")
    if not s.attacks and not s.ensembles:
        raise ConfigError("no attack given (e.g. --attacks autoattack or --attacks pgd,apgd)")
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed < 2 ** 31:
        raise ConfigError(f"seed must be a whole number in [0, 2**31), got {s.seed!r}")
    for name in ("attacks", "ensembles", "classify", "craft"):
        v = getattr(s, name)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{name} must be a list of names, got {v!r}")


def _validate(settings: EvalSettings, dataset) -> None:
    _check_settings(settings)
    n_all = len(dataset.x_test)
    if settings.n_test is not None:
        if settings.n_test < 1:
            raise ConfigError(f"n-test must be >= 1, got {settings.n_test}")
        if settings.n_test > n_all:
            raise ConfigError(f"n-test {settings.n_test} is larger than the {n_all} test samples "
                              f"of {dataset.name}")
    if not (0 < settings.eps <= 1):
        raise ConfigError(f"eps must be in (0, 1], got {settings.eps}")
    if settings.batch_size < 2:
        raise ConfigError(f"batch size must be >= 2 (BN needs a batch), got {settings.batch_size}")
    if settings.group_size is not None and settings.group_size < 1:
        raise ConfigError(f"group size must be >= 1, got {settings.group_size}")
    if any(a in ADAPTIVE_ATTACKS for a in settings.attacks) and not any(
            c.startswith("shaped") for c in settings.classify):
        raise ConfigError("the adaptive attacks target shaped inference: add a shaped:ADV:CLEAN "
                          "inference mode to --classify")


def _evaluate(model, dataset, settings: EvalSettings, *, device=None, progress=None,
              gap_threshold: float = DEFAULT_GAP_THRESHOLD,
              work_dir: Union[None, str, Path] = None,
              on_bound: Optional[Callable[["BoundUpdate"], None]] = None,
              key: Optional[str] = None, keep_work: bool = False) -> pd.DataFrame:
    """Plan the units, run those not done yet (``work_dir``: kept there, resumed from there),
    make the rows from the records; the work folder is removed at the end unless
    ``keep_work`` (the caller removes it once the results are stored)."""
    _validate(settings, dataset)
    plan = _plan(model, dataset, settings, device)
    store = WorkStore(work_dir, key or settings.fingerprint())
    unit_costs = [_row_seconds(plan)] if plan.ens else []  # the floor prices worst cases
    total = plan.n_batches * (1 + len(plan.jobs)) + sum(
        plan.n_batches * (len(e.members) + 1) for e in plan.ens) + (1 if plan.ens else 0)
    update, close = _make_progress(progress, total)
    try:
        for b in range(plan.n_batches):
            _run_unit(store, f"clean/{b}", lambda: _unit_clean(plan, b), update, "clean", plan)
            for j, job in enumerate(plan.jobs):
                _run_unit(store, f"single/{j}/{b}", lambda: _unit_single(plan, j, b), update,
                          job.attack.name, plan)
        if plan.ens:
            _run_unit(store, "random", lambda: _unit_random(plan), update, "randomness check",
                      plan)
        for k in range(len(plan.ens)):
            _run_ensemble(plan, store, k, update, on_bound)
    finally:
        close()
        store.close()
    df = _rows(plan, store)
    df.attrs["warnings"] = _warnings(plan, store, df, gap_threshold)
    df.attrs["settings"] = settings.to_dict()
    df.attrs["zero_gradients"] = _zero_gradients(plan, store)
    df.attrs["resumed_units"] = store.resumed
    df.attrs["cost"], df.attrs["wall_s"] = _cost_and_wall(store)
    df.attrs["row_seconds"] = df.attrs["floor_s"] = None
    if unit_costs:
        unit_costs.append(_row_seconds(plan))
        df.attrs["row_seconds"] = {k: (unit_costs[0][k] + unit_costs[1][k]) / 2
                                   for k in unit_costs[0]}
        df.attrs["floor_s"] = round(floor_seconds(df.attrs["cost"], df.attrs["row_seconds"]),
                                    3)
    if not keep_work:
        store.finish()
    return df


def _run_unit(store: "WorkStore", unit: str, compute, update, desc: str,
              plan: Optional["_Plan"] = None) -> Dict[str, Any]:
    """Run one unit unless its record exists; every record carries its wall time and the
    rows the model forwarded (``worst_case.Cost``), for the benchmark's floor."""
    rec = store.get(unit)
    if rec is None:
        counter = (counting_rows(plan.model) if plan is not None
                   else contextlib.nullcontext(Cost()))
        t0 = time.perf_counter()
        with counter as cost:
            rec = compute()
        rec["wall"] = time.perf_counter() - t0
        rec["cost"] = cost.as_dict()
        store.add(unit, rec)
    update(desc)
    return rec


def _row_seconds(plan: "_Plan") -> Dict[str, float]:
    """The unit costs of a row (``worst_case.row_seconds``) on a batch of the evaluation's
    batch size (training rows: the test subset may be smaller), measured at the evaluation's
    start and end so that the floor is priced under the same load."""
    return row_seconds(plan.model, plan.probe)


def _cost_and_wall(store: "WorkStore") -> Tuple[Dict[str, int], float]:
    """Rows forwarded by kind and wall seconds over every unit (resumed ones included)."""
    cost, wall = Cost(), 0.0
    for rec in store.records.values():
        c = rec.get("cost") or {}
        cost.add(Cost(**{k: int(c.get(k, 0)) for k in Cost().as_dict()}))
        wall += float(rec.get("wall", 0.0))
    return cost.as_dict(), round(wall, 3)


@dataclass
class _EnsJob:
    spec: str
    i: int  # the classifier
    members: List[Attack]  # those that apply to the classifier, in order
    skipped: List[str]


@dataclass
class _Plan:
    s: EvalSettings
    model: torch.nn.Module
    device: Any
    x_all: torch.Tensor
    y_all: torch.Tensor
    n: int
    n_batches: int
    classifiers: List[Classifier]
    jobs: List[_Job]
    ens: List[_EnsJob]
    probe: torch.Tensor  # a batch of training rows of the batch size: prices the floor


def _plan(model, dataset, s: EvalSettings, device) -> _Plan:
    """The classifiers, the single attacks (each with the classifiers that judge it) and the
    ensembles x classifiers of an evaluation."""
    device = parse_device(str(device)) if device is not None else next(
        model.parameters()).device
    model = model.to(device)
    data = dataset.subset(n_test=s.n_test, seed=s.seed) if s.n_test is not None else dataset
    pool = make_reference_pool(dataset, s.reference_pool_size, s.seed).to(device)
    classifiers: List[Classifier] = [
        make_classifier(spec, model, pool, group_size=s.group_size, seed=s.seed,
                        fresh_references=s.fresh_references) for spec in s.classify]
    shaped_idx = [i for i, c in enumerate(classifiers) if isinstance(c, ShapedClassifier)]
    all_idx = list(range(len(classifiers)))
    common = dict(eps=s.eps, step_size=s.step_size, steps=s.steps, restarts=s.restarts,
                  seed=s.seed, eot_draws=s.eot_draws)
    jobs: List[_Job] = []
    for name in s.attacks:
        if name in ADAPTIVE_ATTACKS:
            attacker_pool = (make_reference_pool(dataset, s.reference_pool_size,
                                                 s.seed + 1_000_003).to(device)
                             if name == "adaptive_eot" else None)
            for i in shaped_idx:
                jobs.append(_Job(make_attack(name, reference_pool=attacker_pool, **common),
                                 classifiers[i], [i]))
            continue
        attack = make_attack(name, **_single_settings(s, name, common))
        if name == "shaping":  # crafts through its own 1:3 batches: once
            jobs.append(_Job(attack, PNClassifier(model), all_idx))
            continue
        for c in s.craft:
            target = PNClassifier(model) if c == "pn" else BNClassifier(model)
            jobs.append(_Job(attack, target, all_idx))
    vector = data.x_test.dim() == 2
    ens = []
    for spec, i, members in _ensemble_jobs(s, classifiers, dataset, device, vector):
        clf = classifiers[i]
        ens.append(_EnsJob(spec, i, [a for a in members if applicable(a.name, clf)],
                           [a.name for a in members if not applicable(a.name, clf)]))
    n = len(data.x_test)
    return _Plan(s, model, device, data.x_test, data.y_test, n, math.ceil(n / s.batch_size),
                 classifiers, jobs, ens, dataset.x_train[:s.batch_size].to(device))


def _single_settings(s: EvalSettings, name: str, common: Dict[str, Any]) -> Dict[str, Any]:
    """A single attack's settings from the evaluation's: the common ones, then the budget the
    attack declares (``Attack.budget``: its settings field -> the EvalSettings field)."""
    return {**common, **budget_settings(name, s.to_dict())}


def _batch(plan: _Plan, b: int):
    """(x, y, counted) of test batch b on the device; the shaped classifiers' reference
    draw moved to batch b. A last batch of one sample has no BN statistics: it is batched
    with its predecessor and counted once."""
    s = plan.s
    xb = plan.x_all[b * s.batch_size:(b + 1) * s.batch_size].to(plan.device)
    yb = plan.y_all[b * s.batch_size:(b + 1) * s.batch_size].to(plan.device)
    counted = torch.ones(len(xb), dtype=torch.bool, device=plan.device)
    if len(xb) < 2 and b > 0:
        xb, yb = plan.x_all[-2:].to(plan.device), plan.y_all[-2:].to(plan.device)
        counted = torch.tensor([False, True], device=plan.device)
    for clf in plan.classifiers:
        if isinstance(clf, ShapedClassifier):
            clf.reference_offset = b
    return xb, yb, counted


def _unit_clean(plan: _Plan, b: int) -> Dict[str, Any]:
    xb, yb, _ = _batch(plan, b)
    with torch.inference_mode():
        return {"right": [hex_mask(clf(xb).argmax(1) == yb) for clf in plan.classifiers]}


def _unit_single(plan: _Plan, j: int, b: int) -> Dict[str, Any]:
    """One single attack on batch b, its examples classified by every valid classifier."""
    job = plan.jobs[j]
    xb, yb, counted = _batch(plan, b)
    rec: Dict[str, Any] = {}
    if b == 0:
        view = job.attack.crafting_view(job.target, xb)
        rec["zero_grad"] = {job.attack.crafted_with(view): zero_gradient_fraction(view, xb, yb)}
    res = job.attack.run(job.target, xb, yb)
    rec["crafted_with"] = res.crafted_with
    if job.attack.threat_model == LINF:
        rec["linf_over"] = float((res.x_adv - xb).abs().max()) - job.attack.settings.eps
    if res.success is not None:
        rec["l2"] = [float(v) for v in res.l2(xb)[res.success & counted].cpu()]
    rec["right"], rec["seconds"] = {}, {}
    for i in job.valid:
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred = plan.classifiers[i](res.x_adv).argmax(1)
        rec["right"][str(i)] = hex_mask(pred == yb)
        rec["seconds"][str(i)] = res.seconds + time.perf_counter() - t0
    return rec


def _unit_random(plan: _Plan) -> Dict[str, Any]:
    xb, _, _ = _batch(plan, 0)
    return {"randomness": _randomness_check(plan.classifiers, xb)}


def _clean_right(plan: _Plan, store: "WorkStore", i: int, b: int, rows: int) -> torch.Tensor:
    return mask_of(store.get(f"clean/{b}")["right"][i], rows, plan.device)


def _ens_state(plan: _Plan, store: "WorkStore", k: int, b: int, states: Dict) -> BatchState:
    """Ensemble k's state on batch b: in memory, else rebuilt from the records (resume)."""
    if (k, b) in states:
        return states[(k, b)]
    e = plan.ens[k]
    xb, yb, _ = _batch(plan, b)
    clean = _clean_right(plan, store, e.i, b, len(xb))
    st = BatchState(xb, yb, xb.clone(), clean.clone(), clean)
    for m in reversed(range(len(e.members))):
        rec = store.get(f"ens/{k}/{m}/{b}")
        if rec is not None:
            st.x_adv = store.load_state(k, b, m).to(plan.device, xb.dtype)
            st.right = mask_of(rec["right"], len(xb), plan.device)
            break
    states[(k, b)] = st
    return st


def _run_ensemble(plan: _Plan, store: "WorkStore", k: int, update, on_bound) -> None:
    """Ensemble job k member by member, each over every batch (so its upper bound after a
    member covers all samples), then the defender's re-check of each batch."""
    e = plan.ens[k]
    clf = plan.classifiers[e.i]
    states: Dict = {}
    names = [a.name for a in e.members]
    independent = bool(getattr(clf, "rows_independent", False))
    for m, attack in enumerate(e.members):
        if independent and not store.done(f"ens/{k}/{m}/0"):
            _member_all_rows(plan, store, k, m, attack, states)
        for b in range(plan.n_batches):
            unit = f"ens/{k}/{m}/{b}"
            if not store.done(unit):
                t0 = time.perf_counter()
                with counting_rows(plan.model) as cost:
                    st = _ens_state(plan, store, k, b, states)
                    _batch(plan, b)  # the reference draw of batch b
                    view = defender_view(clf, len(st.x))
                    rec = run_member(clf, view, row_groups(view, len(st.x)).to(plan.device),
                                     attack, st, eps=plan.s.eps)
                store.save_state(k, b, m, st.x_adv)
                store.add(unit, {"attack": attack.name, "attempted": rec.attempted,
                                 "broken": hex_mask(rec.broken_mask),
                                 "right": hex_mask(st.right), "seconds": rec.seconds,
                                 "wall": time.perf_counter() - t0, "cost": cost.as_dict()})
                store.prune_states(k, b, m)
            bound = _bound(plan, store, k, m, b + 1, names)
            update(f"{e.spec} [{clf.describe()}]: {bound.text()}")
            if on_bound is not None:
                on_bound(bound)
    for b in range(plan.n_batches):
        unit = f"final/{k}/{b}"
        if not store.done(unit):
            t0 = time.perf_counter()
            with counting_rows(plan.model) as cost:
                st = _ens_state(plan, store, k, b, states)
                _batch(plan, b)
                with torch.no_grad():
                    robust = defender_view(clf, len(st.x))(st.x_adv).argmax(1) == st.y
            wall = time.perf_counter() - t0
            store.add(unit, {"robust": hex_mask(robust), "bookkept": hex_mask(st.right),
                             "seconds": wall, "wall": wall, "cost": cost.as_dict()})
        update(f"{e.spec} [{clf.describe()}]: re-check")
        states.pop((k, b), None)
    if on_bound is not None:
        on_bound(_bound(plan, store, k, len(e.members), plan.n_batches, names, final=True))


def _member_all_rows(plan: _Plan, store: "WorkStore", k: int, m: int, attack,
                     states: Dict) -> None:
    """Member m of ensemble k through a row-independent view (PN) on every batch at once:
    rows do not interact, and one call on all of them keeps the batches large (and the
    per-call overhead small) while fooled rows drop out. Written back as per-batch records
    (the time and rows forwarded on the first)."""
    clf = plan.classifiers[plan.ens[k].i]
    t0 = time.perf_counter()
    with counting_rows(plan.model) as cost:
        parts = [_ens_state(plan, store, k, b, states) for b in range(plan.n_batches)]
        sizes = [len(p.x) for p in parts]
        st = BatchState(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("x", "y", "x_adv", "right", "clean_right")))
        view = defender_view(clf, len(st.x))
        rec = run_member(clf, view, row_groups(view, len(st.x)).to(plan.device), attack, st,
                         eps=plan.s.eps)
    wall = time.perf_counter() - t0
    start, records = 0, []
    for b, (p, size) in enumerate(zip(parts, sizes)):
        sl = slice(start, start + size)
        start += size
        p.x_adv, p.right = st.x_adv[sl].clone(), st.right[sl].clone()
        store.save_state(k, b, m, p.x_adv)
        first = b == 0
        records.append((f"ens/{k}/{m}/{b}", {
            "attack": attack.name, "attempted": int(rec.broken_mask[sl].sum() + p.right.sum()),
            "broken": hex_mask(rec.broken_mask[sl]), "right": hex_mask(p.right),
            "seconds": rec.seconds if first else 0.0, "wall": wall if first else 0.0,
            "cost": cost.as_dict() if first else Cost().as_dict()}))
    store.add_many(records)  # one write: every batch's record of this member, or none
    for b in range(len(parts)):
        store.prune_states(k, b, m)


def _counted(plan: _Plan, b: int) -> Tuple[int, torch.Tensor]:
    """(rows of batch b, its counted mask) without moving data."""
    s = plan.s
    rows = len(plan.y_all[b * s.batch_size:(b + 1) * s.batch_size])
    if rows < 2 and b > 0:
        return 2, torch.tensor([False, True])
    return rows, torch.ones(rows, dtype=torch.bool)


def _right_after(plan: _Plan, store: "WorkStore", k: int, m: int, b: int) -> torch.Tensor:
    """Counted rows of batch b right under ensemble k after its member m (-1: clean)."""
    rows, counted = _counted(plan, b)
    e = plan.ens[k]
    for mm in range(m, -1, -1):
        rec = store.get(f"ens/{k}/{mm}/{b}")
        if rec is not None:
            return mask_of(rec["right"], rows)[counted]
    return mask_of(store.get(f"clean/{b}")["right"][e.i], rows)[counted]


@dataclass
class BoundUpdate:
    """An ensemble's upper bound on robust accuracy while it runs (anytime): the samples
    it has not broken yet, after the members done (and the current one on the batches it
    has finished). ``final``: the defender's re-check is done and ``robust`` is the result."""

    classified_with: str
    ensemble: str
    done: List[str]
    current: Optional[str]
    batches_done: int
    batches: int
    to_go: List[str]
    robust: int
    n: int
    final: bool = False

    @property
    def value(self) -> float:
        return self.robust / self.n

    def text(self) -> str:
        if self.final:
            return f"{self.value:.3f} (worst case, n={self.n})"
        after = ", ".join(self.done) or "no attack yet"
        now = (f", {self.current} on {self.batches_done}/{self.batches} batches"
               if self.current else "")
        rest = f"; {', '.join(self.to_go)} to go" if self.to_go else ""
        return f"<= {self.value:.3f} after {after}{now}{rest}"


def _bound(plan: _Plan, store: "WorkStore", k: int, m: int, batches_done: int,
           names: List[str], final: bool = False) -> BoundUpdate:
    e = plan.ens[k]
    if final:
        robust = sum(int(mask_of(store.get(f"final/{k}/{b}")["robust"], _counted(plan, b)[0])
                         [_counted(plan, b)[1]].sum()) for b in range(plan.n_batches))
        return BoundUpdate(plan.classifiers[e.i].describe(), e.spec, names, None,
                           plan.n_batches, plan.n_batches, [], robust, plan.n, True)
    complete = batches_done == plan.n_batches
    robust = sum(int(_right_after(plan, store, k, m if b < batches_done else m - 1, b).sum())
                 for b in range(plan.n_batches))
    done = names[:m + 1] if complete else names[:m]
    current = None if complete else names[m]
    return BoundUpdate(plan.classifiers[e.i].describe(), e.spec, done, current, batches_done,
                       plan.n_batches, names[m + 1:], robust, plan.n)


def _gather(plan: _Plan, masks_by_batch) -> torch.Tensor:
    """[n] per-sample mask from per-batch hex masks (``masks_by_batch(b)``), counted rows."""
    parts = []
    for b in range(plan.n_batches):
        rows, counted = _counted(plan, b)
        parts.append(mask_of(masks_by_batch(b), rows)[counted])
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def _rows(plan: _Plan, store: "WorkStore") -> pd.DataFrame:
    """The evaluation's rows, from the records alone."""
    s, n = plan.s, plan.n
    clean = [_gather(plan, lambda b, i=i: store.get(f"clean/{b}")["right"][i])
             for i in range(len(plan.classifiers))]
    rows = []

    def base(i: int) -> Dict[str, Any]:
        clf = plan.classifiers[i]
        return {"classified_with": clf.describe(), "ratio": _ratio_of(clf),
                "group_size": _group_of(clf), "clean_acc": float(clean[i].sum()) / n, "n": n,
                "randomized": bool(clf.randomized), "clean_mask": hex_mask(clean[i])}

    for j, job in enumerate(plan.jobs):
        recs = [store.get(f"single/{j}/{b}") for b in range(plan.n_batches)]
        minimal = job.attack.threat_model == L2_MINIMAL
        l2 = [v for r in recs for v in r.get("l2", [])]
        med = float(torch.tensor(l2).median()) if (minimal and l2) else float("nan")
        for i in job.valid:
            robust = _gather(plan, lambda b, i=i: recs[b]["right"][str(i)])
            rows.append({**base(i), "attack": job.attack.name,
                         "crafted_with": recs[0]["crafted_with"],
                         "robust_acc": float(robust.sum()) / n,
                         "eps": float("nan") if minimal else float(job.attack.settings.eps),
                         "seconds": round(sum(r["seconds"][str(i)] for r in recs), 3),
                         "median_l2": med, "robust_mask": hex_mask(robust)})
    for k, e in enumerate(plan.ens):
        clf = plan.classifiers[e.i]
        view = defender_view(clf, min(n, s.batch_size))
        names = [a.name for a in e.members]
        common = {**base(e.i), "eps": float(s.eps), "median_l2": float("nan"),
                  "ensemble": ensemble_label(e.spec),
                  "crafted_with": crafted_label(clf, view, names)}
        total = 0.0
        for m, name in enumerate(names):
            recs = [store.get(f"ens/{k}/{m}/{b}") for b in range(plan.n_batches)]
            right = _gather(plan, lambda b: recs[b]["right"])
            broken = _gather(plan, lambda b: recs[b]["broken"])
            secs = sum(r["seconds"] for r in recs)
            total += secs
            rows.append({**common, "attack": name, "robust_acc": float(right.sum()) / n,
                         "seconds": round(secs, 3), "broken": int(broken.sum()),
                         "robust_mask": hex_mask(right),
                         "crafted_with": _member_label(clf, view, name)})
        fin = [store.get(f"final/{k}/{b}") for b in range(plan.n_batches)]
        robust = _gather(plan, lambda b: fin[b]["robust"])
        total += sum(r["seconds"] for r in fin)
        rows.append({**common, "attack": WORST, "robust_acc": float(robust.sum()) / n,
                     "seconds": round(total, 3), "broken": None,
                     "robust_mask": hex_mask(robust)})
    return _typed(pd.DataFrame(rows, columns=list(ROW_KEYS)))


def _member_label(clf, view, name: str) -> str:
    return transfer_label(clf) if name == "transfer" else _label_of_view(view)


def _zero_gradients(plan: _Plan, store: "WorkStore") -> Dict[str, float]:
    out: Dict[str, float] = {}
    for j in range(len(plan.jobs)):
        for label, frac in (store.get(f"single/{j}/0") or {}).get("zero_grad", {}).items():
            out.setdefault(label, frac)
    return out


def _warnings(plan: _Plan, store: "WorkStore", df: pd.DataFrame,
              gap_threshold: float) -> List[str]:
    warnings = sanity_warnings(df, gap_threshold=gap_threshold,
                               zero_gradients=_zero_gradients(plan, store))
    rnd = (store.get("random") or {}).get("randomness", {})
    for name, diff in rnd.items():
        warnings.append(f"{name}: two calls on the same inputs gave logits {diff:.2e} apart: "
                        f"the classifier is randomised, so any single number is one draw; "
                        f"evaluate with fixed references or with EOT attacks (adaptive_eot)")
    for k, e in enumerate(plan.ens):
        fin = [store.get(f"final/{k}/{b}") for b in range(plan.n_batches)]
        robust = _gather(plan, lambda b: fin[b]["robust"])
        kept = _gather(plan, lambda b: fin[b]["bookkept"])
        bad = int((robust != kept).sum())
        if bad:
            warnings.append(f"worst case {e.spec}: the ensemble's bookkeeping and the "
                            f"defender's re-check disagree on {bad} samples (the re-check is "
                            f"reported; please report this)")
    over: Dict[str, float] = {}
    for j, job in enumerate(plan.jobs):
        for b in range(plan.n_batches):
            v = store.get(f"single/{j}/{b}").get("linf_over")
            if v is not None and v > 1e-6:
                over[job.attack.name] = max(v, over.get(job.attack.name, 0.0))
    for name, v in over.items():
        warnings.append(f"{name}: perturbations exceed eps by {v:.2e} (a bug: report it)")
    return warnings


# ====================================================================== sanity warnings
def sanity_warnings(df: pd.DataFrame, *, gap_threshold: float = DEFAULT_GAP_THRESHOLD,
                    zero_gradients: Optional[Mapping[str, float]] = None,
                    fgsm_tolerance: float = 0.02) -> List[str]:
    """AutoAttack-style checks on an evaluation's rows; each warning is one line.

    - a randomised classifier (fresh references per call): numbers vary between runs, and
      only EOT attacks fit it;
    - PN-crafted attacks much weaker than the adaptive attack on the same shaped classifier
      (gap > ``gap_threshold``): the PN-crafted number overstates robustness;
    - zero input gradients for some samples under some crafting norms;
    - PGD weaker than FGSM at the same crafting / inference (more restarts or steps needed).
    """
    out: List[str] = []
    if len(df) == 0:
        return out
    if "randomized" in df:
        for name in df.loc[df["randomized"].astype(bool), "classified_with"].unique():
            out.append(f"{name} draws fresh references per call: the classifier is randomised, "
                       f"its numbers vary between runs; trust EOT attacks (adaptive_eot) on it")
    adaptive = df[df["attack"].isin(ADAPTIVE_ATTACKS)]
    linf_pn = df[(df["crafted_with"] == "PN") & df["attack"].isin(("fgsm", "pgd", "apgd"))]
    for clf_name in adaptive["classified_with"].unique():
        pn_rows = linf_pn[linf_pn["classified_with"] == clf_name]
        ad_rows = adaptive[adaptive["classified_with"] == clf_name]
        if pn_rows.empty:
            continue
        pn_best = pn_rows.loc[pn_rows["robust_acc"].idxmin()]
        ad_best = ad_rows.loc[ad_rows["robust_acc"].idxmin()]
        gap = float(pn_best["robust_acc"] - ad_best["robust_acc"])
        if gap > gap_threshold:
            out.append(
                f"under {clf_name}, PN-crafted {pn_best['attack']} leaves robust acc "
                f"{pn_best['robust_acc']:.3f} but the adaptive attack ({ad_best['crafted_with']}) "
                f"leaves {ad_best['robust_acc']:.3f}: a gap of {gap:.3f} > {gap_threshold:.2f}. "
                f"The PN-crafted number overstates robustness (gradient masking / transfer gap); "
                f"report the adaptive one")
    for label, frac in (zero_gradients or {}).items():
        if frac > 0:
            out.append(f"crafting with {label}: {frac:.1%} of samples have an exactly zero input "
                       f"gradient, so gradient attacks cannot move them (saturated or masked "
                       f"loss); their robust accuracy is not evidence of robustness")
    out += _worst_case_warnings(df)
    if "ensemble" in df:
        df = df[df["ensemble"].isna()]  # the checks below compare single attacks
    keys = ["crafted_with", "classified_with"]
    fg = df[df["attack"] == "fgsm"].set_index(keys)["robust_acc"]
    pg = df[df["attack"] == "pgd"].set_index(keys)["robust_acc"]
    for key in fg.index.intersection(pg.index):
        if float(pg[key]) > float(fg[key]) + fgsm_tolerance and _same_eps(df, key):
            out.append(f"PGD (robust acc {float(pg[key]):.3f}) is weaker than FGSM "
                       f"({float(fg[key]):.3f}) crafted with {key[0]}, classified with {key[1]}: "
                       f"the iterative attack is stuck; use more restarts or steps")
    return out


BLACK_BOX_ATTACKS = ("square",)


def _worst_case_warnings(df: pd.DataFrame) -> List[str]:
    """Warnings on the worst-case rows: a black-box attack beating the white-box ones before
    it (gradient masking), and a worst case far below the best single attack asked for (the
    single attack would have overstated robustness)."""
    out: List[str] = []
    if "ensemble" not in df or not df["ensemble"].notna().any():
        return out
    ens = df[df["ensemble"].notna()]
    singles = df[df["ensemble"].isna() & ~df["attack"].isin(("cw", "deepfool"))]
    for (label, clf_name), part in ens.groupby(["ensemble", "classified_with"], sort=False):
        worst = part[part["attack"] == WORST]
        if worst.empty:
            continue
        w = float(worst["robust_acc"].iloc[0])
        n = int(worst["n"].iloc[0])
        members = part[part["attack"] != WORST]
        for _, r in members[members["attack"].isin(BLACK_BOX_ATTACKS)].iterrows():
            before = members.index[members.index < r.name]
            if len(before) == 0 or not bool((members.loc[before, "attack"] != r["attack"]).any()):
                continue
            broken = int(r["broken"]) if r["broken"] == r["broken"] else 0
            if broken > max(1, BLACK_BOX_GAP * n):
                out.append(f"under {clf_name}, the black-box {r['attack']} broke {broken} of "
                           f"{n} samples that every gradient attack before it ({label}) left "
                           f"robust: a sign of gradient masking, the gradients mislead the "
                           f"white-box attacks. Trust the worst case, not any gradient attack "
                           f"alone; try more restarts (--restarts) and more queries "
                           f"(--square-queries)")
        same = singles[singles["classified_with"] == clf_name]
        if same.empty:
            continue
        best = same.loc[same["robust_acc"].idxmin()]
        gap = float(best["robust_acc"]) - w
        if gap > WORST_CASE_GAP:
            out.append(f"under {clf_name}, the worst case ({label}, crafted with "
                       f"{worst['crafted_with'].iloc[0]}) leaves robust acc {w:.3f}, "
                       f"{gap * 100:.1f} points below the strongest single attack asked for "
                       f"({best['attack']} crafted with {best['crafted_with']}: "
                       f"{float(best['robust_acc']):.3f}): that attack alone overstates "
                       f"robustness; report the worst case")
    return out


def _same_eps(df, key) -> bool:
    rows = df[(df["crafted_with"] == key[0]) & (df["classified_with"] == key[1]) &
              df["attack"].isin(("fgsm", "pgd"))]
    return rows["eps"].nunique() <= 1


# ====================================================================== layouts
def _ordered(values) -> List[Any]:
    seen: List[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def table_like_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Tables I/II: rows (attack, crafted with), columns (inference mode, Acc | R.Acc).
    Adaptive attacks are left to ``table_iii``, ensembles to ``table_worst_case``."""
    d = df[~df["attack"].isin(ADAPTIVE_ATTACKS)]
    if "ensemble" in d:
        d = d[d["ensemble"].isna()]
    if d.empty:
        return pd.DataFrame()
    modes = _ordered(d["classified_with"])
    index = _ordered(zip(d["attack"], d["crafted_with"]))
    long = d.rename(columns={"clean_acc": "Acc", "robust_acc": "R.Acc"}).melt(
        id_vars=["attack", "crafted_with", "classified_with"], value_vars=["Acc", "R.Acc"],
        var_name="metric")
    out = long.pivot_table(index=["attack", "crafted_with"],
                           columns=["classified_with", "metric"], values="value",
                           aggfunc="first")
    out = out.reindex(index=pd.MultiIndex.from_tuples(index),
                      columns=pd.MultiIndex.from_product([modes, ["Acc", "R.Acc"]]))
    out.index.names = ["attack", "crafted with"]
    out.columns.names = ["classified with", ""]
    return out


def table_iii(dfs: Union[pd.DataFrame, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """Table III: robust accuracy under the adaptive attacks (rows: the attacker's knowledge)
    next to PN-crafted PGD, per shaped classifier; a mapping {model name: df} gives one column
    group per model, like the paper's PGD+Shaping / TRADES+Shaping columns."""
    if isinstance(dfs, pd.DataFrame):
        dfs = {"": dfs}
    parts = []
    for model_name, df in dfs.items():
        shaped = df[df["ratio"].notna()]
        if "ensemble" in shaped:
            shaped = shaped[shaped["ensemble"].isna()]
        d = shaped[shaped["attack"].isin(ADAPTIVE_ATTACKS) |
                   ((shaped["attack"] == "pgd") & (shaped["crafted_with"] == "PN"))].copy()
        d["model"] = model_name
        parts.append(d)
    d = pd.concat(parts) if parts else pd.DataFrame(columns=list(ROW_KEYS) + ["model"])
    label = {"pgd": "PGD (transfer)", "adaptive_eot": "slightly weaker attack",
             "adaptive_exact": "adaptive attack"}
    d["row"] = [f"{label.get(a, a)} [crafted with {c}]"
                for a, c in zip(d["attack"], d["crafted_with"])]
    columns = ["classified_with"] if len(dfs) == 1 else ["model", "classified_with"]
    out = d.pivot_table(index="row", columns=columns, values="robust_acc", aggfunc="first",
                        sort=False)
    return out


def table_worst_case(df: pd.DataFrame) -> pd.DataFrame:
    """The headline next to the paper's protocol, one row per (classifier, ensemble): clean
    accuracy, PGD-20 crafted with PN (the paper's protocol) where it was run, the worst case
    through the classifier's own norms, and the gap between the two."""
    if "ensemble" not in df or not df["ensemble"].notna().any():
        return pd.DataFrame()
    worst = df[df["attack"] == WORST]
    out = []
    for _, w in worst.iterrows():
        pgd = df[(df["attack"] == "pgd") & (df["crafted_with"] == "PN") &
                 df["ensemble"].isna() & (df["classified_with"] == w["classified_with"])]
        p = float(pgd["robust_acc"].iloc[0]) if len(pgd) else float("nan")
        out.append({"classified with": w["classified_with"], "clean acc": w["clean_acc"],
                    "PGD-20 crafted with PN (paper)": p,
                    f"worst case, crafted with own norms": w["robust_acc"],
                    "crafted with": w["crafted_with"], "ensemble": w["ensemble"],
                    "overstated by": p - w["robust_acc"] if p == p else float("nan")})
    return pd.DataFrame(out).set_index("classified with")


def describe_worst_row(row: Mapping[str, Any]) -> str:
    """A worst-case row in words: "worst of 3 attacks (autoattack: apgd, apgd_t, square),
    crafted through the defender's exact shaped batches, classified with shaped 1:9 (g=10)"."""
    crafted = row.get("crafted_with") or ""
    how = {"PN": "crafted with PN", "BN": "crafted through the test batch's own BN"}.get(
        crafted, "crafted through the defender's exact shaped batches"
        if "exact" in crafted else f"crafted with {crafted}")
    label = str(row.get("ensemble") or "")
    k = len(label.split(":", 1)[-1].split(",")) if label else 0
    return f"worst of {k} attacks ({label}), {how}, classified with {row.get('classified_with')}"


def _ratio_key(r: str) -> Tuple[float, int]:
    p = Ratio.parse(r)
    return (p.clean / p.adv, p.adv)


def table_iv(dfs_by_training_ratio: Mapping[str, pd.DataFrame], attack: str = "pgd",
             crafted_with: str = "PN") -> pd.DataFrame:
    """Table IV: rows training ratio, columns inference ratio adv:clean, values robust accuracy
    under ``attack`` crafted with ``crafted_with`` and classified with shaped inference."""
    rows = {}
    for training, df in dfs_by_training_ratio.items():
        d = df[(df["attack"] == attack) & df["ratio"].notna()]
        if attack != WORST:  # a worst case is crafted through each classifier's own norms
            d = d[d["crafted_with"] == crafted_with]
        rows[training] = {r: a for r, a in zip(d["ratio"], d["robust_acc"])}
    out = pd.DataFrame.from_dict(rows, orient="index")
    if len(out.columns):
        out = out[sorted(out.columns, key=_ratio_key)]
    out.index.name = "training ratio"
    out.columns.name = "inference ratio adv:clean"
    return out


def format_table(df: pd.DataFrame, digits: int = 3, n: Optional[int] = None) -> str:
    """The table as text; with ``n``, every accuracy cell (all numeric cells except
    differences, "overstated by") carries its 95 % Clopper-Pearson interval at that n."""
    if n is not None:
        df = df.copy()
        for col in df.columns:
            if "overstated" in str(col) or not pd.api.types.is_numeric_dtype(df[col]):
                continue
            df[col] = [_with_interval(v, n, digits) for v in df[col]]
    with pd.option_context("display.max_columns", None, "display.width", 250):
        return df.round(digits).to_string()


def _with_interval(v, n: int, digits: int = 3) -> str:
    from ..base.stats import Proportion

    if v is None or v != v:
        return ""
    lo, hi = Proportion.of(float(v), n).interval
    return f"{float(v):.{digits}f} [{lo:.{digits - 1}f}, {hi:.{digits - 1}f}]"


# ====================================================================== checkpoints + cache
#: ``cache_dir=BESIDE``: the cache file beside the checkpoint (the shipped results).
BESIDE = "beside"


def cache_path_for(checkpoint: Union[str, Path], cache_dir: Union[None, str, Path] = None,
                   weights_sha256: Optional[str] = None) -> Path:
    """Where a checkpoint's evaluation cache is written. ``cache_dir=BESIDE``: beside the
    checkpoint, ``<weights stem>.eval.json`` (the shipped results; ``reproduce``); otherwise
    ``<cache_dir>/<weights SHA-256>.eval.json``, ``cache_dir`` defaulting to the user's folder
    (``userdata.eval_cache_dir()``), so shipped checkpoints stay read-only."""
    from ..training.checkpoints import read_meta, resolve_paths

    if cache_dir == BESIDE:
        weights, _ = resolve_paths(checkpoint)
        return weights.with_name(weights.stem + ".eval.json")
    if cache_dir is None:
        from ..base.userdata import eval_cache_dir

        cache_dir = eval_cache_dir()
    sha = weights_sha256 or read_meta(checkpoint)["weights_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"checkpoint {checkpoint}: weights_sha256 in its metadata is not a "
                          f"SHA-256 (64 hex digits)")
    return Path(cache_dir) / f"{sha}.eval.json"


def _cache_key(weights_sha256: str, settings: EvalSettings) -> str:
    return hashlib.sha256(f"{weights_sha256}:{settings.fingerprint()}".encode()).hexdigest()[:24]


def _read_cache(path: Path, *more: Path) -> Dict[str, Any]:
    """The cache file at ``path``; with ``more``, their entries merged in (``path``'s win)."""
    from ..base.files import read_json_or_none

    obj = read_json_or_none(path, MAX_CACHE_BYTES)  # a FIFO, device or huge file: no cache
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        obj = {"format": CACHE_FORMAT, "entries": {}}
    if not isinstance(obj.get("entries"), dict):
        obj["entries"] = {}
    for other in more:
        for k, v in _read_cache(other)["entries"].items():
            obj["entries"].setdefault(k, v)
    return obj


def update_cache(path: Path, key: str, entry: Dict[str, Any]) -> None:
    """Add one entry to the cache file at ``path``, safe against concurrent writers: under an
    exclusive lock on the cache's folder (``fcntl.flock``, released when the process ends in
    any way; no lock file is left behind), the file is read again, the entry merged in and
    the whole replaced atomically, so entries written meanwhile by others are kept."""
    import fcntl
    import os

    from ..training.checkpoints import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cache = _read_cache(path)
        cache["entries"][key] = entry
        atomic_write_json(path, cache)
    finally:
        os.close(fd)  # releases the lock


def prune_cache(path: Path) -> int:
    """Drop the entries of the cache file at ``path`` that no current evaluation can ask
    for (their key is not the key of their own settings any more: an earlier engine's
    results); returns how many went. Under the same lock as ``update_cache``."""
    import fcntl
    import os

    from ..training.checkpoints import atomic_write_json

    path = Path(path)
    if not path.is_file():
        return 0
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cache = _read_cache(path)
        keep = {}
        fields = set(EvalSettings().to_dict())
        for key, entry in cache["entries"].items():
            try:
                settings = {k: v for k, v in entry["settings"].items() if k in fields}
                if set(entry["settings"]) - fields:
                    continue
                if _cache_key(entry["weights_sha256"], EvalSettings(**settings)) == key:
                    keep[key] = entry
            except (KeyError, TypeError, AttributeError):
                continue
        gone = len(cache["entries"]) - len(keep)
        if gone:
            cache["entries"] = keep
            atomic_write_json(path, cache)
        return gone
    finally:
        os.close(fd)


def _json_safe(v):
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _json_safe(v.item())
    return v


def rows_of(df: pd.DataFrame) -> List[Dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN -> null), each accuracy with its 95 % Clopper-Pearson
    interval (``clean_ci``, ``robust_ci``: [low, high] at the row's n)."""
    from ..base.stats import INTERVAL_NAME, Proportion

    out = []
    for r in df.to_dict(orient="records"):
        row = {k: _json_safe(v) for k, v in r.items()}
        n = row.get("n")
        for acc, ci in (("clean_acc", "clean_ci"), ("robust_acc", "robust_ci")):
            v = row.get(acc)
            row[ci] = (list(Proportion.of(v, n).interval) if v is not None and n else None)
        row["interval"] = INTERVAL_NAME
        out.append(row)
    return out


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for k in ("clean_acc", "robust_acc", "eps", "seconds", "median_l2"):
        df[k] = df[k].astype(float)
    df["group_size"] = df["group_size"].astype("Int64")
    df["n"] = df["n"].astype(int)
    df["randomized"] = df["randomized"].astype(bool)
    df["ratio"] = df["ratio"].astype(object).where(df["ratio"].notna(), None)
    df["ensemble"] = df["ensemble"].astype(object).where(df["ensemble"].notna(), None)
    df["broken"] = pd.to_numeric(df["broken"]).astype("Int64")
    for k in ("clean_mask", "robust_mask"):
        df[k] = df[k].astype(object).where(df[k].notna(), None)
    return df


def _df_from_rows(rows: List[Dict[str, Any]]) -> pd.DataFrame:
    return _typed(pd.DataFrame(rows, columns=list(ROW_KEYS)))


def _meta_config(meta: Dict[str, Any], checkpoint) -> Dict[str, Any]:
    """The metadata's training config, which must be a JSON object (one line if not)."""
    cfg = meta.get("config", {})
    if not isinstance(cfg, dict):
        raise ConfigError(f"checkpoint {checkpoint}: \"config\" in its metadata is a "
                          f"{type(cfg).__name__}, not an object")
    return cfg


def _trained_dataset(meta: Dict[str, Any], checkpoint, dataset_name: Optional[str]) -> str:
    """The dataset a checkpoint was trained on; a different ``dataset_name`` is a ConfigError."""
    trained_on = _meta_config(meta, checkpoint).get("dataset") or meta.get("dataset")
    if not isinstance(trained_on, str):
        raise ConfigError(f"checkpoint {checkpoint}: its metadata names no dataset")
    if dataset_name is not None and dataset_name != trained_on:
        raise ConfigError(f"checkpoint {checkpoint} was trained on {trained_on!r}, not "
                          f"{dataset_name!r}")
    return trained_on


def load_for_evaluation(checkpoint: Union[str, Path], dataset_name: Optional[str] = None,
                        device: Optional[str] = None):
    """(model, meta, dataset) for a checkpoint; the dataset is the one it was trained on,
    loaded as the trainer loads it. A different ``dataset_name`` is a ConfigError."""
    from ..training.checkpoints import CheckpointError, load_checkpoint
    from ..blocks.data import load_dataset

    try:
        model, meta = load_checkpoint(checkpoint, device=parse_device(device or "auto"))
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    cfg = _meta_config(meta, checkpoint)
    trained_on = _trained_dataset(meta, checkpoint, dataset_name)
    dataset = load_dataset(trained_on, root=cfg.get("data_root"), seed=cfg.get("seed", 0))
    return model, meta, dataset


def _checkpoint_settings(cfg: Dict[str, Any], settings: Dict[str, Any]) -> EvalSettings:
    """The checked ``EvalSettings`` of ``evaluate_checkpoint``'s keyword settings: ``eps``
    defaults to the training eps (``cfg``), ``None`` means the default; the single attacks
    and the ensembles named in ``attacks`` and ``ensembles`` are separated, each ensemble
    once; an unknown setting is a ``TypeError``."""
    if settings.get("eps") is None:
        settings["eps"] = cfg.get("eps") or 8 / 255
    values = EvalSettings().to_dict()
    unknown = set(settings) - set(values)
    if unknown:
        raise TypeError(f"unknown evaluation settings: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in settings.items() if v is not None})
    s = EvalSettings(**values)
    singles, found = split_attacks(s.attacks) if s.attacks else ([], [])
    for e in s.ensembles:
        spec = ensemble_spec(e)
        if spec not in found:
            found.append(spec)
    s.attacks, s.ensembles = singles, found
    s.classify = parse_classify(s.classify)
    s.craft = _parse_craft(s.craft)
    _check_settings(s)
    return s


def _cached_result(checkpoint: Union[str, Path], path: Path, key: str,
                   meta: Dict[str, Any]) -> Optional[pd.DataFrame]:
    """The cached table of ``key`` (beside the checkpoint, else in the cache file ``path``),
    or None when there is none or the weights on disk are not the ones ``meta`` describes."""
    from ..training.checkpoints import resolve_paths, sha256_file

    entry = _read_cache(cache_path_for(checkpoint, BESIDE), path)["entries"].get(key)
    weights = resolve_paths(checkpoint)[0]
    if entry is None or not weights.exists() or sha256_file(weights) != meta["weights_sha256"]:
        return None
    df = _df_from_rows(entry["rows"])
    df.attrs.update(warnings=list(entry.get("warnings", [])), settings=entry["settings"],
                    cached=True, cost=entry.get("cost"), wall_s=entry.get("wall_s"),
                    row_seconds=entry.get("row_seconds"), floor_s=entry.get("floor_s"))
    return df


def _default_work_dir(checkpoint: Union[str, Path], cache_dir, key: str) -> Path:
    """Where an evaluation keeps its finished units by default: beside the cache file it
    will fill, so the shipped results never touch the user's folder and the user's never
    touch a checkpoint folder."""
    if cache_dir == BESIDE:
        return cache_path_for(checkpoint, BESIDE).parent / "model.eval.work" / key
    from ..base.userdata import eval_cache_dir

    return eval_cache_dir() / "work" / key


def _remove_work(work_dir: Union[str, Path], default_work: bool) -> None:
    """Remove a finished evaluation's work folder, and the default folders above it if
    nothing else is in them."""
    WorkStore.remove(work_dir)
    for parent in ((Path(work_dir).parent, Path(work_dir).parent.parent)
                   if default_work else ()):
        try:
            parent.rmdir()
        except OSError:
            break


def evaluate_checkpoint(checkpoint: Union[str, Path], *, dataset_name: Optional[str] = None,
                        device: Optional[str] = None, use_cache: bool = True,
                        cache_dir: Union[None, str, Path] = None,
                        progress: Union[None, bool, ProgressFn] = None,
                        gap_threshold: float = DEFAULT_GAP_THRESHOLD,
                        work_dir: Union[None, bool, str, Path] = None,
                        on_bound: Optional[Callable[["BoundUpdate"], None]] = None,
                        **settings) -> Tuple[pd.DataFrame, Dict[str, Any]]:
    """``evaluate`` on a checkpoint's model and dataset; ``eps`` defaults to the training eps.
    Results are cached, keyed by the weights' SHA-256 and the settings' hash, and reused when
    both match: read from ``<weights stem>.eval.json`` beside the checkpoint (the shipped
    results) or from the cache file of ``cache_path_for(checkpoint, cache_dir)``, written to
    the latter (default: the user's folder; ``cache_dir=BESIDE``: beside the checkpoint).
    Returns (df, meta); ``df.attrs["cached"]`` says whether the numbers came from the cache.

    The evaluation keeps its finished units in ``work_dir`` (default: the user's folder,
    ``evaluations/work/<cache key>``, or ``model.eval.work/<cache key>`` in the checkpoint's
    folder with ``cache_dir=BESIDE``; ``False``: in memory only), so that a killed
    evaluation run again with the same settings resumes where it stopped and ends with the
    same numbers; the folder goes once the results are cached. ``on_bound``: see
    ``evaluate``."""
    from ..training.checkpoints import CheckpointError, read_meta

    # A cache hit needs neither the model nor the dataset: read the metadata only, check the
    # weights on disk are the ones the metadata (and so the cache key) describes.
    try:
        meta = read_meta(checkpoint)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    cfg = _meta_config(meta, checkpoint)
    _trained_dataset(meta, checkpoint, dataset_name)  # a wrong --dataset is an error
    s = _checkpoint_settings(cfg, settings)
    path = cache_path_for(checkpoint, cache_dir, meta["weights_sha256"])
    key = _cache_key(meta["weights_sha256"], s)
    if use_cache:
        df = _cached_result(checkpoint, path, key, meta)
        if df is not None:
            return df, meta
    model, meta, dataset = load_for_evaluation(checkpoint, dataset_name, device)
    _validate(s, dataset)
    default_work = work_dir is None
    if default_work:
        work_dir = _default_work_dir(checkpoint, cache_dir, key)
    df = _evaluate(model, dataset, s, device=device, progress=progress,
                   gap_threshold=gap_threshold, work_dir=work_dir or None, on_bound=on_bound,
                   key=key, keep_work=True)
    df.attrs["cached"] = False
    if use_cache:
        update_cache(path, key, {"weights_sha256": meta["weights_sha256"],
                                 "settings": s.to_dict(), "rows": rows_of(df),
                                 "warnings": df.attrs["warnings"],
                                 "cost": df.attrs["cost"], "wall_s": df.attrs["wall_s"],
                                 "row_seconds": df.attrs["row_seconds"],
                                 "floor_s": df.attrs["floor_s"],
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if work_dir:
        _remove_work(work_dir, default_work)
    return df, meta


def training_label(meta: Dict[str, Any]) -> str:
    """Table IV's row label: the training ratio adv:clean (or the training mode)."""
    c = meta.get("config", {})
    if c.get("method") == "natural":
        return "natural"
    if c.get("shaping") in (None, "none"):
        return "adv only"
    return str(c.get("ratio")) + ("" if c.get("shaping") == "attack+train" else
                                  f" ({c.get('shaping')})")


def ensemble_log(df: pd.DataFrame) -> str:
    """Which attack of each ensemble broke how many samples (AutoAttack's log)."""
    lines = []
    ens = df[df["ensemble"].notna()] if "ensemble" in df else df.iloc[:0]
    for (label, clf_name), part in ens.groupby(["ensemble", "classified_with"], sort=False):
        n = int(part["n"].iloc[0])
        steps = [f"{r['attack']} broke {int(r['broken'])} -> {r['robust_acc']:.3f}"
                 for _, r in part.iterrows() if r["attack"] != WORST]
        w = part[part["attack"] == WORST].iloc[0]
        lines.append(f"  {describe_worst_row(w)}: clean {w['clean_acc']:.3f}; "
                     + "; ".join(steps) + f"; re-checked by the defender: "
                     f"{w['robust_acc']:.3f} (n={n}, {w['seconds']:.0f} s)")
    return "\n".join(lines)


def eps_sweep(model, dataset, attack: str, classify: Sequence[str], *, eps: float,
              factors: Sequence[float] = (0.5, 1.0, 2.0, 4.0), n: int = 100,
              tolerance: float = 0.01, **settings) -> Tuple[pd.DataFrame, List[str]]:
    """Robust accuracy of one attack or ensemble at ``eps * factor`` (capped at 1) on the
    first ``n`` test samples, per classifier. Warns where robust accuracy does not fall as
    eps grows (beyond ``tolerance``), or stays above chance at the largest eps of at least
    0.5: signs that the attack, not the model, is what holds the number up."""
    singles, ens = split_attacks([attack])
    rows = []
    for f in factors:
        e = min(1.0, eps * f)
        df = evaluate(model, dataset, singles, classify, ensembles=ens, eps=e,
                      n_test=min(n, len(dataset.x_test)), craft="pn", **settings)
        pick = df[df["attack"] == WORST] if ens else df
        for _, r in pick.iterrows():
            rows.append({"eps": e, "classified with": r["classified_with"],
                         "crafted with": r["crafted_with"], "robust acc": r["robust_acc"]})
    table = pd.DataFrame(rows)
    warnings = []
    chance = 1.0 / max(2, int(dataset.num_classes))
    for (clf_name, crafted), part in table.groupby(["classified with", "crafted with"],
                                                   sort=False):
        accs = list(part.sort_values("eps")["robust acc"])
        epss = list(part.sort_values("eps")["eps"])
        for a, b, ea, eb in zip(accs, accs[1:], epss, epss[1:]):
            if b > a + tolerance:
                warnings.append(f"under {clf_name} (crafted with {crafted}) robust accuracy "
                                f"rises from {a:.3f} at eps {ea:g} to {b:.3f} at eps {eb:g}: a "
                                f"stronger attacker does worse, so the attack is failing "
                                f"(masked gradients, too few steps); do not trust its numbers")
                break
        if epss[-1] >= 0.5 and accs[-1] > chance + tolerance:
            warnings.append(f"under {clf_name} (crafted with {crafted}) robust accuracy is "
                            f"still {accs[-1]:.3f} at eps {epss[-1]:g}, above chance "
                            f"({chance:.2f}): an attack this large should break nearly "
                            f"everything; the attack is failing")
    return table.set_index(["classified with", "crafted with", "eps"]), warnings


def eps_sweep_checkpoint(checkpoint, *, attack: str, classify: Sequence[str], device=None,
                         eps: Optional[float] = None, **settings):
    model, meta, dataset = load_for_evaluation(checkpoint, None, device)
    if eps is None:
        eps = meta.get("config", {}).get("eps") or 8 / 255
    return eps_sweep(model, dataset, attack, classify, eps=eps, **settings)


def parse_ratio_list(text: str) -> List[str]:
    out = []
    for part in str(text).split(","):
        if part.strip():
            out.append(str(Ratio.parse(part.strip())))
    if not out:
        raise ConfigError("no inference ratio given (e.g. --inference-ratios 1:0,1:3,1:9)")
    return out
