"""What every attack shares: the ``Attack`` base class and its settings check, the result
record ``AttackResult``, the per-sample losses (cross-entropy, margin, DLR, targeted DLR) and
``BestIterate``, the per-sample bookkeeping of the best example an attack has visited.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from ..settings.config import ConfigError
from .threat import L2_MINIMAL, LINF, LinfBall

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


# ====================================================================== results
@dataclass
class AttackResult:
    """What an attack returns: the examples and how they were made.

    ``crafted_with``: the norms every attack step used ("PN", "BN", "BN (exact refs)",
    "BN (own refs, EOT 8)", "shaping 1:3 (BN)"). ``stats``: per-attack figures, e.g.
    ``success_rate`` and, for minimal-perturbation attacks, ``median_l2`` of successful
    perturbations.
    """

    attack: str
    crafted_with: str
    x_adv: torch.Tensor
    stats: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    success: Optional[torch.Tensor] = None
    """[N] bool: classified right when clean and fooled after, both by the crafting view"""

    def l2(self, x: torch.Tensor) -> torch.Tensor:
        """[N] L2 norm of each perturbation."""
        return _flat_norm(self.x_adv - x)


def _label_of(fn) -> str:
    return getattr(fn, "crafting_label", type(fn).__name__)


def _flat_norm(t: torch.Tensor, p: float = 2) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1)


def _median_l2(x_adv, x, success) -> float:
    if not bool(success.any()):
        return float("nan")
    return float(_flat_norm((x_adv - x)[success]).median())


def rows_independent(fn) -> bool:
    """True when ``fn`` declares that a row's logits do not depend on the other rows (PN):
    an attack may then forward any subset of rows. Otherwise (BN, shaped batches, any plain
    callable) every call must carry all N rows."""
    return bool(getattr(fn, "rows_independent", False))


def per_row(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ...], broadcastable against ``like``."""
    return t.reshape((len(like),) + (1,) * (like.dim() - 1))


# ====================================================================== losses (per sample)
def per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N] z_y - max_{i != y} z_i: negative exactly when another class wins."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return z_y - others.amax(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N] DLR loss (Croce & Hein 2020), to be maximised:
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), pi the classes by decreasing logit.
    The normalisation makes it invariant to shifting and rescaling the logits. It needs a
    third class; with C = 2 it falls back to the un-normalised margin max_{i != y} z_i - z_y."""
    m = margin(logits, y)
    if logits.shape[1] < 3:
        return -m
    top = logits.topk(3, dim=1).values
    return -m / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor
                      ) -> torch.Tensor:
    """[N] targeted DLR loss, to be maximised:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). It needs four classes; with
    C < 4 it falls back to the un-normalised targeted margin z_t - z_y."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    if logits.shape[1] < 4:
        return z_t - z_y
    top = logits.topk(4, dim=1).values
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


# ====================================================================== best iterate
class BestIterate:
    """Per sample, the best example seen so far: the first misclassified one found, otherwise
    the one with the lowest margin z_y - max_{i != y} z_i (never simply the last iterate).
    ``fooled`` [N] bool, ``margin`` [N] (+inf before any update), ``x_adv`` [N, ...].

    ``last=True``: a misclassified iterate replaces an earlier misclassified one (the last
    misclassified iterate is kept, as AutoAttack's ``x_best_adv``): the deeper example, which
    transfers better to other norms than the first one across the boundary."""

    def __init__(self, x: torch.Tensor, last: bool = False):
        self.x_adv = x.detach().clone()
        self.fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.margin = torch.full((len(x),), math.inf, device=x.device)
        self.last = bool(last)

    @torch.no_grad()
    def update(self, x_adv: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
               rows: Optional[torch.Tensor] = None) -> None:
        """Fold in one iterate; ``rows`` [N] bool restricts the update to those rows."""
        wrong = logits.argmax(1) != y
        m = margin(logits.detach(), y).to(self.margin.dtype)
        if self.last:
            take = wrong | (~self.fooled & (m < self.margin))
        else:
            take = ~self.fooled & (wrong | (m < self.margin))
        if rows is not None:
            take &= rows
        self._take(take, x_adv.detach(), m, wrong)

    @torch.no_grad()
    def update_rows(self, idx: torch.Tensor, x_adv: torch.Tensor, logits: torch.Tensor,
                    y: torch.Tensor) -> None:
        """Fold in one iterate of the rows ``idx`` only (``x_adv``, ``logits``, ``y`` given
        for those rows): the same rule as ``update``."""
        wrong = logits.argmax(1) != y
        m = margin(logits.detach(), y).to(self.margin.dtype)
        fooled, best_m = self.fooled[idx], self.margin[idx]
        if self.last:
            take = wrong | (~fooled & (m < best_m))
        else:
            take = ~fooled & (wrong | (m < best_m))
        sel = idx[take]
        self.x_adv[sel] = x_adv.detach()[take]
        self.margin[sel] = m[take]
        self.fooled[sel] = fooled[take] | wrong[take]

    @torch.no_grad()
    def merge(self, other: "BestIterate", idx: Optional[torch.Tensor] = None) -> None:
        """Fold in another run's per-sample result, computed on rows ``idx`` (all if None)."""
        if idx is None:
            take = ~self.fooled & (other.fooled | (other.margin < self.margin))
            self._take(take, other.x_adv, other.margin, other.fooled)
            return
        take = ~self.fooled[idx] & (other.fooled | (other.margin < self.margin[idx]))
        sel = idx[take]
        self.x_adv[sel] = other.x_adv[take]
        self.margin[sel] = other.margin[take]
        self.fooled[sel] = other.fooled[take]

    def _take(self, take, x_adv, m, wrong) -> None:
        self.x_adv = torch.where(per_row(take, x_adv), x_adv, self.x_adv)
        self.margin = torch.where(take, m, self.margin)
        self.fooled = self.fooled | (take & wrong)


def top_other_classes(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """[N, min(k, C - 1)] the classes other than y by decreasing logit (targeted attacks'
    targets, from the clean logits)."""
    k = min(int(k), logits.shape[1] - 1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return others.argsort(dim=1, descending=True, stable=True)[:, :k]


RunOne = Callable[..., "BestIterate"]
"""``run_one(fn, x, y, arg, x_start, active) -> BestIterate``: one run of an attack on the
rows given (``active`` [N] bool or None: the rows that may move; the others stay at
``x_start``)"""


def until_fooled(fn, x: torch.Tensor, y: torch.Tensor, runs, run_one: RunOne,
                 clean_logits: Optional[torch.Tensor] = None) -> "BestIterate":
    """Runs in sequence (restarts, target classes), each on the samples that neither x itself
    nor an earlier run fooled, as AutoAttack does; the per-sample best over all of them.

    ``runs``: ``(make_arg, start)`` pairs: ``make_arg(rows)`` gives the run's per-row argument
    (a loss, target classes) for ``rows`` (an index tensor, or ``slice(None)`` for all),
    ``start`` is None (start at x) or a function returning a start for all N rows (drawn for
    all rows, so a sample's start never depends on which others are still attacked).
    Through a row-independent view (PN) a run forwards only the rows still to attack; through
    a coupled view (BN, shaped batches) it forwards all N rows with the fooled ones held at
    their adversarial example, so each row is crafted in the batch that will be returned."""
    best = BestIterate(x)
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = fn(x)
    best.update(x, clean_logits, y)
    independent = rows_independent(fn)
    for make_arg, start_fn in runs:
        todo = ~best.fooled
        if not bool(todo.any()):
            break
        start = x if start_fn is None else start_fn()
        if independent:
            idx = todo.nonzero().squeeze(1)
            best.merge(run_one(fn, x[idx], y[idx], make_arg(idx), start[idx], None), idx)
        else:
            start = torch.where(per_row(todo, x), start, best.x_adv)
            best.merge(run_one(fn, x, y, make_arg(slice(None)), start, todo))
    return best


# ====================================================================== settings check
def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


#: field name -> (accepts the value, what it must be); every attack's settings go through it
SETTING_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    **{k: (lambda v: _whole(v) and v >= 1, "a whole number >= 1")
       for k in ("steps", "restarts", "n_queries", "max_iter", "binary_search_steps",
                 "eot_draws", "n_target_classes")},
    **{k: (_whole, "a whole number") for k in ("seed", "pool_seed")},
    "eps": (lambda v: _real(v) and 0 < v <= 1, "a finite number in (0, 1]"),
    "step_size": (lambda v: v is None or (_real(v) and v > 0),
                  "a finite number > 0 (or None: the attack's default)"),
    **{k: (lambda v: _real(v) and v > 0, "a finite number > 0") for k in ("lr", "initial_const")},
    **{k: (lambda v: _real(v) and v >= 0, "a finite number >= 0")
       for k in ("confidence", "overshoot")},
    **{k: (lambda v: _real(v) and 0 < v <= 1, "a number in (0, 1]")
       for k in ("rho", "momentum", "p_init", "alpha_max", "beta")},
    "eta": (lambda v: _real(v) and v >= 1, "a finite number >= 1"),
    **{k: (lambda v: isinstance(v, bool), "True or False")
       for k in ("random_start", "abort_early")},
}


def check_settings(name: str, settings: Any) -> None:
    """Raise ``ConfigError`` (one sentence) for the first setting that breaks its rule."""
    for f in dataclasses.fields(settings):
        rule = SETTING_RULES.get(f.name)
        if rule is None:
            continue
        ok, what = rule
        value = getattr(settings, f.name)
        if not ok(value):
            raise ConfigError(f"{name}: {f.name} must be {what}, got {value!r}")


# ====================================================================== the interface
class Attack:
    """Base class: ``attack(clf, x, y) -> x_adv``; ``attack.run(clf, x, y) -> AttackResult``
    (the same examples, with success statistics: two more forwards).

    Subclasses set ``name``, ``threat_model``, ``Settings`` (a dataclass with defaults), the
    ``budget`` the evaluation sets (below), and implement ``craft(fn, x, y) -> (x_adv, stats)`` where ``fn(x_adv) -> logits`` is the view
    the attack crafts through (``crafting_view`` builds it from the target classifier).
    ``fn`` may couple rows (BN, shaped batches): ``craft`` calls it on all N rows unless
    ``rows_independent(fn)``. Attacks never update running statistics: every view runs PN or
    frozen BN. Settings are checked when the attack is made (``ConfigError``).
    """

    name: ClassVar[str] = ""
    threat_model: ClassVar[str] = ""
    Settings: ClassVar[type] = object
    budget: ClassVar[Mapping[str, str]] = {}
    """The settings an evaluation sets: this attack's settings field -> the field of
    ``evaluation.EvalSettings`` (and the CLI flag) that sets it, e.g. Square's
    ``{"n_queries": "square_queries"}``; read by ``registry.budget_settings``. An ensemble
    (``worst_case.make_ensemble``) applies the entries whose EvalSettings field it is given.
    Settings fields named ``eps``, ``seed``, ``restarts``, ``steps``, ``step_size`` or
    ``eot_draws`` that are not listed take the evaluation's common values."""
    ensemble_budget: ClassVar[Mapping[str, str]] = {}
    """Like ``budget``, applied only when the attack is a member of an ensemble (APGD-CE's
    ``restarts`` from ``apgd_restarts``)."""

    def __init__(self, settings: Any = None, **overrides):
        base = settings if settings is not None else self.Settings()
        self.settings = dataclasses.replace(base, **overrides) if overrides else base
        check_settings(self.name, self.settings)
        self.check()

    def check(self) -> None:
        """Checks of this attack's own settings beyond ``SETTING_RULES`` (ConfigError)."""

    @property
    def ball(self) -> LinfBall:
        return LinfBall(float(self.settings.eps))

    # views ---------------------------------------------------------------
    def crafting_view(self, clf, x: torch.Tensor):
        """The callable the attack steps go through; by default the target classifier."""
        return clf

    def crafted_with(self, view) -> str:
        return _label_of(view)

    # crafting ------------------------------------------------------------
    def craft(self, fn, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def run(self, clf, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        t0 = time.perf_counter()
        x, y = x.detach(), y.detach()
        view = self.crafting_view(clf, x)
        with torch.enable_grad():  # gradient attacks work inside a caller's no_grad block too
            x_adv, stats = self.craft(view, x, y)
        x_adv = x_adv.detach()
        with torch.no_grad():
            clean_right = view(x).argmax(1) == y
            fooled = view(x_adv).argmax(1) != y
        success = clean_right & fooled
        stats = {"success_rate": float(fooled.float().mean()), **stats}
        if self.threat_model == L2_MINIMAL:
            stats["median_l2"] = _median_l2(x_adv, x, success)
        return AttackResult(self.name, self.crafted_with(view), x_adv, stats,
                            time.perf_counter() - t0, success)

    def __call__(self, clf, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial examples only (the same as ``run(...).x_adv``), without the two
        extra forwards ``run`` spends on its statistics."""
        x, y = x.detach(), y.detach()
        with torch.enable_grad():
            return self.craft(self.crafting_view(clf, x), x, y)[0].detach()

    def describe(self) -> str:
        s = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in dataclasses.asdict(self.settings).items())
        return f"{self.name} ({s})"

    def settings_dict(self) -> Dict[str, Any]:
        return {"attack": self.name, **dataclasses.asdict(self.settings)}


__all__ = ["AttackResult", "Attack", "BestIterate", "LogitsFn", "LINF", "L2_MINIMAL",
           "check_settings", "dlr_loss", "margin", "per_sample_ce", "rows_independent",
           "targeted_dlr_loss", "top_other_classes", "until_fooled"]
