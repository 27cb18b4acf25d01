"""Diagnostics of the three BN confoundings, repeatable on any model or checkpoint.

- ``moving_target``: PGD on the adversarial part of a batch (ratio adv:clean, e.g. 1:0 or
  1:3) through the whole batch with frozen BN; at every step, the per-layer BN batch
  statistics and their distance to the clean batch's statistics and to PN (Confounding II,
  the moving target; a shaped batch damps it).
- ``logit_error_experiment``: Confounding II's measurement: the logit error between FGSM
  examples and their clean versions, classified with the clean batch's statistics versus the
  adversarial batch's own (paper: 63% larger with the clean batch's).
- ``perturbation_experiment``: Confounding III's measurement: the size of the perturbation PGD
  builds when crafting with PN, with BN (the adversarial batch's own statistics) and through a
  shaped batch 1:3, and the straightness of its path |x(K) - x(0)| / sum of step lengths
  (paper: PN 17% larger than BN; shaping 41% larger than plain PGD in training).

Distances between statistics are scale-free: per channel, the mean difference in units of the
reference standard deviation and the relative variance difference, then the root mean square
over channels.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import pandas as pd
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..attacks import ShapingBatchView, pgd_linf
from ..settings.config import ConfigError, Ratio
from ..blocks.norms import NormMode, capture_bn_stats, norm_mode, pn_stats
from ..inference.shaping import BNClassifier, PNClassifier

_EPS = 1e-5


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def _mean_distance(mu, ref_mu, ref_var) -> float:
    return _rms((mu - ref_mu) / (ref_var + _EPS).sqrt())


def _var_distance(var, ref_var) -> float:
    return _rms((var - ref_var) / (ref_var + _EPS))


def _batch_stats(model: nn.Module, x: torch.Tensor) -> Dict[str, tuple]:
    """Per-layer (mean, biased var) of the batch x under frozen BN."""
    with torch.no_grad(), norm_mode(model, NormMode.FROZEN_BN), capture_bn_stats(model) as st:
        model(x)
    return {n: (st.means[n][-1], st.variances[n][-1]) for n in st.names}


@contextlib.contextmanager
def population_stats_from(model: nn.Module, stats: Mapping[str, tuple]) -> Iterator[nn.Module]:
    """Inside the block, PN uses the given per-layer (mean, var) instead of the running
    statistics: how one classifies a batch with *another* batch's statistics. The running
    buffers themselves are never written (the original tensors are put back)."""
    named = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    saved = {n: (m.running_mean, m.running_var) for n, m in named.items()}
    try:
        for n, (mu, var) in stats.items():
            m = named[n]
            m.running_mean = mu.to(m.running_mean.device, m.running_mean.dtype)
            m.running_var = var.to(m.running_var.device, m.running_var.dtype)
        with norm_mode(model, NormMode.PN):
            yield model
    finally:
        for n, (mu, var) in saved.items():
            named[n].running_mean = mu
            named[n].running_var = var


# ====================================================================== (a) moving target
@dataclass
class MovingTargetTrace:
    """Per-step, per-layer BN statistics of an attacked batch.

    ``frame``: one row per (step, layer): distance_to_clean_mean / _var (to the clean batch's
    statistics), distance_to_pn_mean / _var (to the running statistics) and step_change_mean /
    _var (to the previous step's statistics: the moving target). Step 0 is the clean batch.
    ``points``: [steps + 1, n_adv, ...] the adversarial part at every step (for path plots).
    """

    ratio: str
    eps: float
    steps: int
    n_adv: int
    n_clean: int
    frame: pd.DataFrame
    points: torch.Tensor
    adv_acc: float
    """accuracy of the adversarial part at the last step, through the same batch"""

    def summary(self) -> Dict[str, float]:
        moved = self.frame[self.frame["step"] > 0]
        last = self.frame[self.frame["step"] == self.steps]
        return {
            "step_drift_mean": float(moved["step_change_mean"].mean()),
            "step_drift_var": float(moved["step_change_var"].mean()),
            "final_distance_to_clean_mean": float(last["distance_to_clean_mean"].mean()),
            "final_distance_to_clean_var": float(last["distance_to_clean_var"].mean()),
            "final_distance_to_pn_mean": float(last["distance_to_pn_mean"].mean()),
            "adv_acc": self.adv_acc,
        }

    def to_dict(self, with_points: Optional[bool] = None) -> Dict[str, Any]:
        """JSON-ready; adversarial points included for 2-D inputs (or when asked)."""
        if with_points is None:
            with_points = self.points[0, 0].numel() <= 2 if self.points.numel() else False
        d = {"ratio": self.ratio, "eps": self.eps, "steps": self.steps, "n_adv": self.n_adv,
             "n_clean": self.n_clean, "summary": self.summary(),
             "frame": self.frame.to_dict(orient="records")}
        if with_points:
            d["points"] = self.points.tolist()
        return d


def moving_target(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: "Ratio | str" = "1:0",
                  *, eps: float, step_size: Optional[float] = None, steps: int = 10,
                  random_start: bool = False, seed: int = 0) -> MovingTargetTrace:
    """Run PGD on the adversarial part of the batch x (the last ``adv/parts`` of it) through
    the whole batch with frozen BN, recording BN statistics at every step."""
    r = Ratio.parse(ratio)
    n = len(x)
    n_clean = n * r.clean // r.parts
    if n - n_clean < 1 or (r.clean and n_clean < 1):
        raise ConfigError(f"a batch of {n} samples is too small for ratio {r}")
    x, y = x.detach(), y.detach()
    clean_part = x[:n_clean]
    step_size = eps / 4 if step_size is None else step_size
    pn = {k: (m.to(x.device), v.to(x.device)) for k, (m, v) in pn_stats(model).items()}
    history: List[Dict[str, tuple]] = [_batch_stats(model, x)]
    points: List[torch.Tensor] = [x[n_clean:].detach().cpu().clone()]

    def on_step(i, x_adv):
        history.append(_batch_stats(model, torch.cat([clean_part, x_adv])))
        points.append(x_adv.detach().cpu().clone())

    def logits(xa):
        return model(torch.cat([clean_part, xa]))[n_clean:]

    g = torch.Generator().manual_seed(seed)
    with norm_mode(model, NormMode.FROZEN_BN):
        x_adv = pgd_linf(logits, x[n_clean:], y[n_clean:], eps=eps, step_size=step_size,
                         steps=steps, random_start=random_start, generator=g, on_step=on_step)
        with torch.no_grad():
            adv_acc = float((logits(x_adv).argmax(1) == y[n_clean:]).float().mean())

    clean = history[0]
    rows = []
    for t, st in enumerate(history):
        for layer, (mu, var) in st.items():
            c_mu, c_var = clean[layer]
            p_mu, p_var = pn[layer] if layer in pn else (c_mu, c_var)
            prev_mu, prev_var = history[max(t - 1, 0)][layer]
            rows.append({
                "step": t, "layer": layer,
                "distance_to_clean_mean": _mean_distance(mu, c_mu, c_var),
                "distance_to_clean_var": _var_distance(var, c_var),
                "distance_to_pn_mean": _mean_distance(mu, p_mu, p_var),
                "distance_to_pn_var": _var_distance(var, p_var),
                "step_change_mean": _mean_distance(mu, prev_mu, c_var),
                "step_change_var": _var_distance(var, prev_var),
            })
    return MovingTargetTrace(str(r), float(eps), int(steps), n - n_clean, n_clean,
                             pd.DataFrame(rows), torch.stack(points), adv_acc)


# ====================================================================== (b) Confounding II
@dataclass
class LogitErrorResult:
    """Logit error ||logits(x_adv) - logits(x)||_2 of FGSM examples against their clean
    versions (clean logits: the clean batch's statistics), with x_adv classified using the
    clean batch's statistics versus the adversarial batch's own."""

    eps: float
    n: int
    error_with_clean_bn: float
    error_with_adv_bn: float
    relative_difference: float
    """error_with_clean_bn / error_with_adv_bn - 1 (paper: 0.63)"""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def logit_error_experiment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           eps: float) -> LogitErrorResult:
    """FGSM crafted as the first PGD step of training (through the clean batch's own BN),
    then the two logit errors (Confounding II)."""
    x, y = x.detach(), y.detach()
    bn = BNClassifier(model)
    x_adv = pgd_linf(bn, x, y, eps=eps, step_size=eps, steps=1, random_start=False)
    clean_stats = _batch_stats(model, x)
    with torch.no_grad():
        ref = bn(x)
        with population_stats_from(model, clean_stats):
            with_clean = model(x_adv)
        with_adv = bn(x_adv)
    e_clean = float((with_clean - ref).norm(dim=1).mean())
    e_adv = float((with_adv - ref).norm(dim=1).mean())
    return LogitErrorResult(float(eps), len(x), e_clean, e_adv,
                            e_clean / e_adv - 1 if e_adv > 0 else float("nan"))


# ====================================================================== (c) Confounding III
@dataclass
class PerturbationResult:
    """Size and straightness of PGD perturbations per crafting norms."""

    eps: float
    steps: int
    n: int
    modes: Dict[str, Dict[str, float]] = field(default_factory=dict)
    """crafting label -> mean_linf, mean_l2, mean_abs (mean |delta| per input), straightness,
    robust_acc_same_norms (accuracy under the crafting norms)"""
    pn_vs_bn: float = float("nan")
    """mean_l2 with PN / with BN - 1 (paper: 0.17)"""
    shaping_vs_bn: float = float("nan")
    """mean_l2 through a shaped batch / with BN - 1 (paper: 0.41)"""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _path_figures(fn, x, y, *, eps, step_size, steps, random_start, seed) -> Dict[str, float]:
    path: List[torch.Tensor] = []
    g = torch.Generator().manual_seed(seed)
    x_adv = pgd_linf(fn, x, y, eps=eps, step_size=step_size, steps=steps,
                     random_start=random_start, generator=g,
                     on_step=lambda i, xa: path.append(xa.detach().clone()))
    start = x if not random_start else None
    lengths = torch.zeros(len(x), device=x.device)
    prev = start if start is not None else path[0]
    for p in (path if start is not None else path[1:]):
        lengths += (p - prev).flatten(1).norm(dim=1)
        prev = p
    origin = start if start is not None else path[0]
    chord = (x_adv - origin).flatten(1).norm(dim=1)
    moved = lengths > 0
    delta = (x_adv - x).flatten(1)
    with torch.no_grad():
        acc = float((fn(x_adv).argmax(1) == y).float().mean())
    return {
        "mean_linf": float(delta.abs().amax(1).mean()),
        "mean_l2": float(delta.norm(dim=1).mean()),
        "mean_abs": float(delta.abs().mean()),
        "straightness": float((chord[moved] / lengths[moved]).mean()) if moved.any() else 1.0,
        "robust_acc_same_norms": acc,
    }


def perturbation_experiment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                            eps: float, step_size: Optional[float] = None, steps: int = 10,
                            ratio: "Ratio | str" = "1:3", random_start: bool = False,
                            seed: int = 0) -> PerturbationResult:
    """PGD on the batch x crafted with PN, with BN (the adversarial batch's own statistics,
    Eq. 4) and through shaped batches (each quarter of x attacked while the other three
    quarters stay clean, as in training with shaping, Eq. 5)."""
    x, y = x.detach(), y.detach()
    step_size = eps / 4 if step_size is None else step_size
    kw = dict(eps=eps, step_size=step_size, steps=steps, random_start=random_start, seed=seed)
    shaped = ShapingBatchView(model, x, ratio)
    modes = {"PN": _path_figures(PNClassifier(model), x, y, **kw),
             "BN": _path_figures(BNClassifier(model), x, y, **kw),
             shaped.crafting_label: _path_figures(shaped, x, y, **kw)}
    bn_l2 = modes["BN"]["mean_l2"]
    return PerturbationResult(
        float(eps), int(steps), len(x), modes,
        modes["PN"]["mean_l2"] / bn_l2 - 1 if bn_l2 > 0 else float("nan"),
        modes[shaped.crafting_label]["mean_l2"] / bn_l2 - 1 if bn_l2 > 0 else float("nan"))


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             step_size: Optional[float] = None, steps: int = 10,
             ratios: Sequence[str] = ("1:0", "1:3"), seed: int = 0,
             progress: bool = False) -> Dict[str, Any]:
    """All three diagnostics on one batch; a JSON-ready dict."""
    step_size = eps / 4 if step_size is None else step_size
    tasks = [f"moving target {r}" for r in ratios] + ["confounding II", "confounding III"]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks), desc="diagnose", leave=False)

    def done():
        if bar is not None:
            bar.update(1)

    out: Dict[str, Any] = {"moving_target": {}}
    try:
        for r in ratios:
            out["moving_target"][r] = moving_target(model, x, y, r, eps=eps, step_size=step_size,
                                                    steps=steps, seed=seed).to_dict()
            done()
        # the paper's FGSM is one training attack step: eps = the attack step size
        out["confounding_ii"] = logit_error_experiment(model, x, y, eps=step_size).to_dict()
        done()
        out["confounding_iii"] = perturbation_experiment(model, x, y, eps=eps,
                                                         step_size=step_size, steps=steps,
                                                         seed=seed).to_dict()
        done()
    finally:
        if bar is not None:
            bar.close()
    return out


@dataclass
class DiagnoseSettings:
    """The settings of ``diagnose``, checked in one place (``validate``) before any
    checkpoint is read; ``None`` means: the checkpoint's training value."""

    ratios: List[str]
    n: int = 256
    eps: Optional[float] = None
    step_size: Optional[float] = None
    steps: Optional[int] = None
    seed: int = 0
    worst_case: Optional[str] = "default"  # an ensemble spec, or None to skip

    MAX_N = 100_000
    MAX_STEPS = 100_000

    def validate(self) -> "DiagnoseSettings":
        if not self.ratios:
            raise ConfigError("no ratio given (e.g. --ratios 1:0,1:3)")
        if not 4 <= self.n <= self.MAX_N:
            raise ConfigError(f"--n must be a whole number in [4, {self.MAX_N:,}], got {self.n}")
        if self.steps is not None and not 1 <= self.steps <= self.MAX_STEPS:
            raise ConfigError(f"--steps must be a whole number in [1, {self.MAX_STEPS:,}], got "
                              f"{self.steps}")
        for name in ("eps", "step_size"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or not 0 < v <= 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number in "
                                  f"(0, 1], got {v}")
        if not 0 <= self.seed < 2 ** 31:
            raise ConfigError(f"--seed must be a whole number in [0, 2**31), got {self.seed}")
        return self

    def with_checkpoint(self, cfg: Dict[str, Any]) -> "DiagnoseSettings":
        """The settings left unset, taken from the checkpoint's training config (checked:
        the metadata may come from anywhere)."""
        eps = self.eps if self.eps is not None else cfg.get("eps")
        if not eps:
            raise ConfigError("this checkpoint has no training eps; give --eps")
        out = DiagnoseSettings(
            ratios=self.ratios, n=self.n, eps=eps,
            step_size=self.step_size if self.step_size is not None else cfg.get("step_size"),
            steps=self.steps if self.steps is not None else (cfg.get("steps") or 10),
            seed=self.seed, worst_case=self.worst_case)
        for name in ("eps", "step_size"):
            v = getattr(out, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"the checkpoint's {name} is not a number: {v!r}")
        if isinstance(out.steps, bool) or not isinstance(out.steps, int):
            raise ConfigError(f"the checkpoint's steps is not a whole number: {out.steps!r}")
        return out.validate()


def batch_worst_case(model, x, y, spec: str, *, eps: float, seed: int = 0
                     ) -> List[Dict[str, Any]]:
    """Worst case per sample of an ensemble on one batch, through PN and through the
    batch's own BN (frozen BN): the robustness figure beside the diagnostics."""
    from .evaluation import ensemble_label
    from ..inference.shaping import BNClassifier, PNClassifier
    from .worst_case import (SQUARE_QUERIES, crafted_label, ensemble_members, make_ensemble,
                             worst_case)

    names = ensemble_members(spec)
    out = []
    for clf in (PNClassifier(model), BNClassifier(model)):
        members = make_ensemble(names, eps=eps, seed=seed, n_queries=SQUARE_QUERIES,
                                vector_input=x.dim() == 2)
        res = worst_case(clf, members, x, y, eps=eps)
        out.append({"ensemble": ensemble_label(spec),
                    "crafted_with": crafted_label(clf, clf, [st.attack for st in res.stages]),
                    "classified_with": clf.describe(), "n": len(x),
                    "clean_acc": float(res.clean_right.float().mean()),
                    "robust_acc": float(res.robust.float().mean())})
    return out


def _finite(obj):
    """NaN / inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def diagnose_checkpoint(checkpoint, settings: DiagnoseSettings, *, dataset_name=None,
                        device="auto", progress: bool = False):
    """``diagnose`` on ``settings.n`` seeded training samples of a checkpoint's dataset (the
    paper measured on training inputs), plus the worst case per sample of
    ``settings.worst_case`` on the same batch. Returns ``(results, settings)``: the
    JSON-ready dict and the settings completed from the checkpoint's training config."""
    from .evaluation import _meta_config, load_for_evaluation

    model, meta, dataset = load_for_evaluation(checkpoint, dataset_name, device)
    ds = settings.with_checkpoint(_meta_config(meta, checkpoint))
    if ds.n > len(dataset.x_train):
        raise ConfigError(f"--n must be between 4 and the {len(dataset.x_train)} training samples")
    g = torch.Generator().manual_seed(ds.seed)
    idx = torch.randperm(len(dataset.x_train), generator=g)[:ds.n]
    dev = next(model.parameters()).device
    x, y = dataset.x_train[idx].to(dev), dataset.y_train[idx].to(dev)
    out = diagnose(model, x, y, eps=ds.eps, step_size=ds.step_size, steps=ds.steps,
                   ratios=ds.ratios, seed=ds.seed, progress=progress)
    out["checkpoint"] = str(checkpoint)
    out["run_name"] = meta.get("run_name")
    if ds.worst_case is not None:
        out["worst_case"] = batch_worst_case(model, x, y, ds.worst_case, eps=ds.eps,
                                             seed=ds.seed)
    return out, ds
