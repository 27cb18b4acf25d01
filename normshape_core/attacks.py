"""Attacks. One shared L-inf PGD loop (``pgd_linf``) serves training and evaluation.

The attack classes below (registry ``ATTACKS``) share one interface, ``Attack``:
``attack(clf, x, y) -> x_adv`` and ``attack.run(clf, x, y) -> AttackResult`` that records the
norms the examples were crafted with. FGSM, PGD, APGD-CE, C&W-L2, DeepFool, the paper's
shaping attack and the two adaptive attacks of its Table III.

``logits_fn(x_adv)`` returns the logits of exactly the rows of ``x_adv``; whatever norms it
runs with (PN, frozen BN of the adversarial batch, a shaped batch) is the caller's choice,
made explicit by the caller's ``norm_mode`` block.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F

from .config import ConfigError, Ratio

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project into the L-inf eps-ball around x and into the valid input range [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start_linf(x: torch.Tensor, eps: float,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
    noise = noise.to(x.device).mul_(2 * eps).sub_(eps)
    return (x + noise).clamp_(0.0, 1.0)


def linf_bounds(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper): the eps-ball around x intersected with [0, 1], so that
    ``x_adv.clamp(lower, upper) == project_linf(x_adv, x, eps)`` in one kernel."""
    return (x - eps).clamp_(0.0, 1.0), (x + eps).clamp_(0.0, 1.0)


def pgd_linf(logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             step_size: float, steps: int, random_start: bool = True, loss: str = "ce",
             target_probs: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None,
             on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """L-inf PGD (Madry et al. 2018): ascend the loss with signed gradient steps.

    loss: ``"ce"`` (cross-entropy with labels ``y``) or ``"kl"`` (TRADES: KL between
    ``target_probs``, the clean prediction, and the prediction at ``x_adv``).
    Only ``x_adv`` receives gradients; model parameters accumulate nothing.
    ``on_step(i, x_adv)`` is called after each step (diagnostics).
    Per step: one forward, one backward to the input, and three element-wise kernels (sign,
    step, projection onto the precomputed bounds of ``linf_bounds``).
    """
    if loss not in ("ce", "kl"):
        raise ValueError(f"unknown PGD loss {loss!r}")
    if loss == "kl" and target_probs is None:
        raise ValueError("loss='kl' needs target_probs (the clean prediction)")
    x = x.detach()
    lower, upper = linf_bounds(x, eps)
    x_adv = random_start_linf(x, eps, generator) if random_start else x.clone()
    for i in range(steps):
        x_adv.requires_grad_(True)
        logits = logits_fn(x_adv)
        if loss == "ce":
            objective = F.cross_entropy(logits, y, reduction="sum")
        else:
            objective = F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction="sum")
        (grad,) = torch.autograd.grad(objective, x_adv)
        with torch.no_grad():
            x_adv = torch.add(x_adv.detach(), grad.sign(), alpha=step_size)
            x_adv = torch.clamp(x_adv, lower, upper)
        if on_step is not None:
            on_step(i, x_adv)
    return x_adv.detach()


# ====================================================================== attack interface
# Every attack below crafts *through a classifier wrapper* (``shaping.PNClassifier``,
# ``BNClassifier``, ``ShapedClassifier`` views ...). The wrapper decides the norms of every
# attack step, so the norms an example was crafted with are recorded from it
# (``AttackResult.crafted_with``), never assumed.
LINF = "L-inf: ||x_adv - x||_inf <= eps and x_adv in [0, 1]"
L2_MINIMAL = "L2, minimal perturbation (unbounded): x_adv in [0, 1]; reports median L2"


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


def _per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _flat_norm(t: torch.Tensor, p: float = 2) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1)


class Attack:
    """Base class: ``attack(clf, x, y) -> x_adv``; ``attack.run(clf, x, y) -> AttackResult``
    (the same examples, with success statistics: two more forwards).

    Subclasses set ``name``, ``threat_model``, ``Settings`` (a dataclass with defaults) and
    implement ``craft(fn, x, y) -> (x_adv, stats)`` where ``fn(x_adv) -> logits`` is the view
    the attack crafts through (``crafting_view`` builds it from the target classifier).
    Attacks never update running statistics: every view runs PN or frozen BN.
    """

    name: ClassVar[str] = ""
    threat_model: ClassVar[str] = ""
    Settings: ClassVar[type] = object

    def __init__(self, settings: Any = None, **overrides):
        base = settings if settings is not None else self.Settings()
        self.settings = dataclasses.replace(base, **overrides) if overrides else base

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
        return self.craft(self.crafting_view(clf, x), x, y)[0].detach()

    def describe(self) -> str:
        s = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in dataclasses.asdict(self.settings).items())
        return f"{self.name} ({s})"

    def settings_dict(self) -> Dict[str, Any]:
        return {"attack": self.name, **dataclasses.asdict(self.settings)}


# ---------------------------------------------------------------------- FGSM
@dataclass
class FGSMSettings:
    eps: float = 8 / 255
    """L-inf bound (the paper evaluates FGSM at twice the training eps: 16/255)."""


class FGSM(Attack):
    """FGSM (Goodfellow et al. 2015), one signed-gradient step of size eps.

    Threat model: L-inf, x_adv in the eps-ball around x and in [0, 1].
    Settings: ``eps`` (8/255).  Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    """

    name = "fgsm"
    threat_model = LINF
    Settings = FGSMSettings

    def craft(self, fn, x, y):
        s = self.settings
        return pgd_linf(fn, x, y, eps=s.eps, step_size=s.eps, steps=1, random_start=False), {}


# ---------------------------------------------------------------------- PGD
@dataclass
class PGDSettings:
    eps: float = 8 / 255
    step_size: Optional[float] = None
    """step size; None: eps / 4"""
    steps: int = 20
    restarts: int = 1
    """random restarts; the worst case per sample is kept (misclassified, else highest loss)"""
    random_start: bool = True
    seed: int = 0


def _pgd_with_restarts(fn, x, y, s: PGDSettings) -> Tuple[torch.Tensor, Dict[str, float]]:
    step = s.step_size if s.step_size is not None else s.eps / 4
    if max(1, s.restarts) == 1:  # nothing to choose from: no extra forward
        g = torch.Generator().manual_seed(int(s.seed) * 7919)
        return pgd_linf(fn, x, y, eps=s.eps, step_size=step, steps=s.steps,
                        random_start=s.random_start, generator=g), {}
    best = x.clone()
    best_loss = torch.full((len(x),), -math.inf, device=x.device)
    best_wrong = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for r in range(max(1, s.restarts)):
        g = torch.Generator().manual_seed(int(s.seed) * 7919 + r)
        xa = pgd_linf(fn, x, y, eps=s.eps, step_size=step, steps=s.steps,
                      random_start=s.random_start, generator=g)
        with torch.no_grad():
            logits = fn(xa)
            loss = _per_sample_ce(logits, y)
            wrong = logits.argmax(1) != y
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best[better] = xa[better]
        best_loss = torch.where(better, loss, best_loss)
        best_wrong |= wrong
    return best, {}


class PGD(Attack):
    """PGD (Madry et al. 2018): L-inf projected signed-gradient ascent on cross-entropy,
    random start, restarts keeping the worst case per sample. Uses the shared ``pgd_linf``
    loop (the one training uses).

    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``step_size`` (eps/4), ``steps`` (20), ``restarts`` (1),
    ``random_start`` (True), ``seed`` (0).  Shapes: x [N, ...], y [N] -> x_adv [N, ...].
    """

    name = "pgd"
    threat_model = LINF
    Settings = PGDSettings

    def craft(self, fn, x, y):
        return _pgd_with_restarts(fn, x, y, self.settings)


# ---------------------------------------------------------------------- APGD-CE
@dataclass
class APGDSettings:
    eps: float = 8 / 255
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    """checkpoint condition 1: fewer than rho * (steps since last checkpoint) increases"""
    momentum: float = 0.75
    seed: int = 0


def apgd_checkpoints(n_iter: int) -> List[int]:
    """Iterations where APGD checks its step size: p0 = 0, p1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j * n_iter)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(q * n_iter, 6)) for q in p[1:]}
    return sorted(w for w in marks if 1 <= w <= n_iter)


class APGD(Attack):
    """APGD-CE (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", Alg. 1): step-size-free L-inf PGD with
    momentum 0.75, step size 2*eps halved at checkpoints when the loss stalled (condition 1:
    increased in fewer than rho of the steps since the last checkpoint; condition 2: step size
    and best loss unchanged since the last checkpoint), restarting from the best point.
    Returns, per sample, the first misclassified iterate found, else the highest-loss one.
    Starting points: Alg. 1 takes x(0) as an input; the first run starts at x itself (its
    first iterate is then the FGSM point at 2*eps projected, so APGD is never weaker than
    FGSM), each further restart at a random point on the eps-sphere (the official code).

    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``steps`` (100), ``restarts`` (1), ``rho`` (0.75),
    ``momentum`` (0.75), ``seed`` (0).  Shapes: x [N, ...], y [N] -> x_adv [N, ...].
    """

    name = "apgd"
    threat_model = LINF
    Settings = APGDSettings

    def _loss_grad(self, fn, xa, y):
        xa = xa.detach().requires_grad_(True)
        logits = fn(xa)
        loss = _per_sample_ce(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        return loss.detach(), grad.detach(), logits.detach()

    def _one_run(self, fn, x, y, gen, random_start: bool):
        s = self.settings
        n, eps = len(x), s.eps
        view = (n,) + (1,) * (x.dim() - 1)
        checkpoints = set(apgd_checkpoints(s.steps))
        if random_start:  # the official code: a random point on the eps-sphere
            t = torch.rand(x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
            t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(view)
            x_adv = project_linf(x + eps * t, x, eps)
        else:
            x_adv = x.clone()
        step = torch.full(view, 2 * eps, device=x.device, dtype=x.dtype)
        loss, grad, logits = self._loss_grad(fn, x_adv, y)
        fooled = logits.argmax(1) != y
        x_best_adv = torch.where(fooled.reshape(view), x_adv, x)
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        loss_prev = loss.clone()
        increases = torch.zeros(n, device=x.device)
        last_w = 0
        loss_best_at_last = loss_best.clone()
        reduced_at_last = torch.ones(n, dtype=torch.bool, device=x.device)  # no cond. 2 at w_1
        x_prev = x_adv.clone()
        for i in range(s.steps):
            with torch.no_grad():
                a = s.momentum if i > 0 else 1.0
                z = project_linf(x_adv + step * grad.sign(), x, eps)
                x_new = project_linf(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x, eps)
                x_prev, x_adv = x_adv, x_new
            loss, grad, logits = self._loss_grad(fn, x_adv, y)
            with torch.no_grad():
                wrong = logits.argmax(1) != y
                x_best_adv[wrong] = x_adv[wrong]
                fooled |= wrong
                increases += (loss > loss_prev).float()
                loss_prev = loss
                better = loss > loss_best
                x_best[better], grad_best[better] = x_adv[better], grad[better]
                loss_best = torch.where(better, loss, loss_best)
                w = i + 1
                if w in checkpoints:
                    span = w - last_w
                    cond1 = increases <= s.rho * span
                    cond2 = ~reduced_at_last & (loss_best <= loss_best_at_last)
                    reduce = cond1 | cond2
                    step[reduce] /= 2.0
                    x_adv[reduce] = x_best[reduce]
                    grad[reduce] = grad_best[reduce]
                    reduced_at_last = reduce
                    loss_best_at_last = loss_best.clone()
                    increases.zero_()
                    last_w = w
        out = torch.where(fooled.reshape(view), x_best_adv, x_best)
        return out, fooled, loss_best

    def craft(self, fn, x, y):
        s = self.settings
        best, best_fooled, best_loss = None, None, None
        for r in range(max(1, s.restarts)):
            gen = torch.Generator().manual_seed(int(s.seed) * 7919 + r)
            xa, fooled, loss = self._one_run(fn, x, y, gen, random_start=r > 0)
            if best is None:
                best, best_fooled, best_loss = xa, fooled, loss
                continue
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best[better] = xa[better]
            best_fooled |= fooled
            best_loss = torch.where(better, loss, best_loss)
        return best, {}


# ---------------------------------------------------------------------- C&W L2
@dataclass
class CWSettings:
    confidence: float = 0.0
    """kappa: required logit margin of the wrong class"""
    initial_const: float = 0.1
    binary_search_steps: int = 5
    steps: int = 100
    """Adam steps per binary-search step (Cleverhans: 1000 at lr 5e-3; 100 at 5e-2 is close
    and ten times faster)"""
    lr: float = 0.05
    abort_early: bool = True


def _median_l2(x_adv, x, success) -> float:
    if not bool(success.any()):
        return float("nan")
    return float(_flat_norm((x_adv - x)[success]).median())


class CarliniWagnerL2(Attack):
    """C&W L2 (Carlini & Wagner 2017), batched: minimise ||x' - x||_2^2 + c * f(x') with
    x' = (tanh(w) + 1) / 2 (so x' stays in [0, 1]) by Adam, f = max(Z_y - max_{i!=y} Z_i,
    -kappa); per-sample binary search on c. Samples never fooled are returned unchanged.

    Threat model: L2, minimal perturbation (unbounded); stats report ``median_l2`` of the
    successful perturbations (samples the crafting view classified right when clean).
    Settings: ``confidence`` (0), ``initial_const`` (0.1), ``binary_search_steps`` (5),
    ``steps`` (100), ``lr`` (0.05), ``abort_early`` (True).
    Shapes: x [N, ...], y [N] -> x_adv [N, ...].
    """

    name = "cw"
    threat_model = L2_MINIMAL
    Settings = CWSettings

    def craft(self, fn, x, y):
        s = self.settings
        n = len(x)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), 1e10, device=x.device)
        const = torch.full((n,), float(s.initial_const), device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best_adv = x.clone()
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        label_mask = None  # [N, C] True at the label, made once at the first forward
        for _ in range(s.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=s.lr)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev = math.inf
            for it in range(s.steps):
                xa = (torch.tanh(w) + 1) / 2
                logits = fn(xa)
                l2sq = ((xa - x) ** 2).flatten(1).sum(1)
                real = logits.gather(1, y[:, None]).squeeze(1)
                if label_mask is None:
                    label_mask = F.one_hot(y, logits.shape[1]).bool()
                other = logits.masked_fill(label_mask, -math.inf).amax(1)
                f_term = (real - other + s.confidence).clamp_min(0)
                loss = (l2sq + const * f_term).sum()
                (gw,) = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    success = (other - real) >= s.confidence
                    success &= logits.argmax(1) != y
                    l2 = l2sq.sqrt()
                    improve = success & (l2 < best_l2)
                    best_l2 = torch.where(improve, l2, best_l2)
                    best_adv[improve] = xa.detach()[improve]
                    found |= success
                opt.zero_grad(set_to_none=True)
                w.grad = gw
                opt.step()
                if s.abort_early and it % max(1, s.steps // 10) == 0:
                    if float(loss.detach()) > prev * 0.9999:
                        break
                    prev = float(loss.detach())
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        return best_adv.clamp(0.0, 1.0), {}


# ---------------------------------------------------------------------- DeepFool
@dataclass
class DeepFoolSettings:
    overshoot: float = 0.02
    max_iter: int = 50


class DeepFool(Attack):
    """DeepFool L2 (Moosavi-Dezfooli et al. 2016), batched over the whole batch: at each
    iteration linearise every class logit, step to the nearest linearised boundary, stop per
    sample once it is misclassified; the total step is scaled by (1 + overshoot) and x_adv
    clipped to [0, 1]. Per-class gradients are gradients of the batch-summed logit, exact
    under PN; under BN they include the (small) cross-sample terms of batch statistics.
    Through a classifier whose rows are independent (``rows_independent``: PN), each
    iteration forwards only the samples still classified right, as a per-sample loop would.

    Threat model: L2, minimal perturbation (unbounded); stats report ``median_l2``.
    Settings: ``overshoot`` (0.02), ``max_iter`` (50).
    Shapes: x [N, ...], y [N] -> x_adv [N, ...].
    """

    name = "deepfool"
    threat_model = L2_MINIMAL
    Settings = DeepFoolSettings

    def craft(self, fn, x, y):
        s = self.settings
        n = len(x)
        view = (n,) + (1,) * (x.dim() - 1)
        # Rows of a PN classifier are independent: each iteration forwards only the samples
        # still correctly classified. Under BN every row goes through (batch statistics).
        independent = bool(getattr(fn, "rows_independent", False))
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(s.max_iter):
            idx = active.nonzero().squeeze(1) if independent else None
            if idx is not None and len(idx) == 0:
                break
            xa = (x_adv[idx] if independent else x_adv).clone().requires_grad_(True)
            ya = y[idx] if independent else y
            logits = fn(xa)
            right = logits.argmax(1) == ya  # the first iteration: clean_right
            if independent:
                active[idx] = right
                if not bool(right.any()):
                    break
                mask = right
            else:
                active &= right
                if not bool(active.any()):
                    break
                mask = active
            ar = torch.arange(len(xa), device=x.device)
            grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), xa, retain_graph=True)[0]
                                 for k in range(logits.shape[1])], dim=1)
            with torch.no_grad():
                w = grads - grads[ar, ya].unsqueeze(1)
                f = logits - logits[ar, ya].unsqueeze(1)
                w_norm = w.flatten(2).norm(dim=2) + 1e-8
                pert = f.abs() / w_norm
                pert[ar, ya] = math.inf
                lab = pert.argmin(1)
                r_i = ((pert[ar, lab] + 1e-4) / w_norm[ar, lab]).reshape(
                    (len(xa),) + view[1:]) * w[ar, lab]
                r_i = r_i * mask.reshape((len(xa),) + view[1:])
                if independent:
                    r_tot[idx] += r_i
                else:
                    r_tot += r_i
                x_adv = (x + (1 + s.overshoot) * r_tot).clamp(0.0, 1.0)
        return x_adv.detach(), {}


# ---------------------------------------------------------------------- norm-aware attacks
class ShapingBatchView:
    """Crafting view of the paper's shaping attack: each attacked sample goes through a batch
    in which, per adversarial part, ``ratio.clean`` parts are unchanged samples of the same
    test batch (BN frozen). The test batch is cut into ``parts`` chunks; chunk k is attacked
    in batch k (chunk k adversarial, the rest clean), all batches in one vmapped forward."""

    def __init__(self, model, x_clean: torch.Tensor, ratio: "Ratio | str" = "1:3"):
        from .shaping import grouped_frozen_bn_forward

        self.model, self.x_clean, self.ratio = model, x_clean.detach(), Ratio.parse(ratio)
        self._forward = grouped_frozen_bn_forward
        n = len(x_clean)
        n_groups = min(self.ratio.parts, n) if self.ratio.clean else 1
        chunk = torch.arange(n, device=x_clean.device).tensor_split(n_groups)
        self.group_of = torch.empty(n, dtype=torch.long, device=x_clean.device)
        for k, idx in enumerate(chunk):
            self.group_of[idx] = k
        self.n_groups = n_groups
        self.crafting_label = f"shaping {self.ratio} (BN)"

    def __call__(self, x_adv: torch.Tensor) -> torch.Tensor:
        n = len(x_adv)
        groups = torch.arange(self.n_groups, device=x_adv.device)
        mask = (self.group_of.unsqueeze(0) == groups.unsqueeze(1))  # [G, N]
        mask = mask.reshape(mask.shape + (1,) * (x_adv.dim() - 1))
        batches = torch.where(mask, x_adv.unsqueeze(0), self.x_clean.unsqueeze(0))
        out = self._forward(self.model, batches)  # [G, N, C]
        return out[self.group_of, torch.arange(n, device=x_adv.device)]


@dataclass
class ShapingAttackSettings(PGDSettings):
    ratio: str = "1:3"
    """adv:clean of the crafting batch (paper: 3 unchanged test samples per attacked one)"""


class ShapingAttack(Attack):
    """The paper's norm shaping attack (section VI): PGD crafted through shaped batches of the
    test batch itself, ``ratio`` 1:3 = three unchanged test samples per attacked sample,
    BN frozen. The target classifier only supplies the model.

    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: PGD's (``eps``, ``step_size``, ``steps``, ``restarts``, ``random_start``,
    ``seed``) + ``ratio`` ("1:3").  Shapes: x [N, ...], y [N] -> x_adv [N, ...].
    """

    name = "shaping"
    threat_model = LINF
    Settings = ShapingAttackSettings

    def crafting_view(self, clf, x):
        if Ratio.parse(self.settings.ratio).adv != 1:
            raise ConfigError(f"the shaping attack needs a ratio 1:n, got {self.settings.ratio}")
        return ShapingBatchView(clf.model, x, self.settings.ratio)

    def craft(self, fn, x, y):
        return _pgd_with_restarts(fn, x, y, self.settings)


class AdaptiveExactReferences(Attack):
    """Adaptive attack of Table III ("adaptive attack"): the attacker knows the defender's
    exact references and crafts PGD through the defender's exact shaped batches (the next
    call's draw for a classifier with fresh references).

    Threat model: L-inf, eps-ball around x, inside [0, 1]; white box including the references.
    Settings: PGD's.  Target: a ``ShapedClassifier``.  Shapes: x [N, ...] -> x_adv [N, ...].
    """

    name = "adaptive_exact"
    threat_model = LINF
    Settings = PGDSettings

    def crafting_view(self, clf, x):
        from .shaping import ShapedClassifier

        if not isinstance(clf, ShapedClassifier):
            raise ConfigError(f"{self.name} attacks shaped inference; {clf.describe()} is not")
        return clf.with_exact_references(len(x))

    def craft(self, fn, x, y):
        return _pgd_with_restarts(fn, x, y, self.settings)


class EOTReferenceView:
    """Crafting view of the attacker who knows the training set but not the references:
    shaped batches (the defender's ratio and group size) with the attacker's own reference
    pool, ``draws`` fresh reference draws per call. Logits returned are log E_refs[softmax],
    so cross-entropy on them is -log of the expected probability of the label (EOT)."""

    def __init__(self, model, pool, ratio, group_size, draws: int = 8, seed: int = 0):
        from .shaping import ShapedClassifier

        self.model = model
        self.shaped = ShapedClassifier(model, pool, ratio, group_size, seed=seed,
                                       fresh_references=True)
        self.draws = int(draws)
        self.crafting_label = f"BN (own refs, EOT {self.draws})"

    def __call__(self, x):
        probs = torch.stack([F.softmax(self.shaped(x), dim=1) for _ in range(self.draws)])
        return probs.mean(0).clamp_min(1e-12).log()


@dataclass
class EOTSettings(PGDSettings):
    eot_draws: int = 8
    """reference draws averaged per attack step"""
    pool_seed: int = 12345
    """seed of the attacker's own reference pool drawn from the training set"""


class AdaptiveOwnReferencesEOT(Attack):
    """Adaptive attack of Table III ("slightly weaker attack"): the attacker knows the
    training set but not the references; PGD crafted through shaped batches made of the
    attacker's own seeded references from the training set (``reference_pool``), with EOT
    over ``eot_draws`` reference draws per step.

    Threat model: L-inf, eps-ball around x, inside [0, 1]; white box except the references.
    Settings: PGD's + ``eot_draws`` (8), ``pool_seed`` (12345).
    Target: a ``ShapedClassifier`` (its ratio and group size are public).
    Shapes: x [N, ...] -> x_adv [N, ...].
    """

    name = "adaptive_eot"
    threat_model = LINF
    Settings = EOTSettings

    def __init__(self, settings: Any = None, reference_pool: Optional[torch.Tensor] = None,
                 **overrides):
        super().__init__(settings, **overrides)
        self.reference_pool = reference_pool

    def crafting_view(self, clf, x):
        from .shaping import ShapedClassifier

        if not isinstance(clf, ShapedClassifier):
            raise ConfigError(f"{self.name} attacks shaped inference; {clf.describe()} is not")
        if self.reference_pool is None:
            raise ConfigError(f"{self.name} needs the attacker's own reference pool "
                              "(training samples)")
        s = self.settings
        return EOTReferenceView(clf.model, self.reference_pool, clf.ratio, clf.group_size,
                                s.eot_draws, s.seed * 1009 + s.pool_seed)

    def craft(self, fn, x, y):
        return _pgd_with_restarts(fn, x, y, self.settings)


# ---------------------------------------------------------------------- registry
ATTACKS: Dict[str, Type[Attack]] = {
    a.name: a for a in (FGSM, PGD, APGD, CarliniWagnerL2, DeepFool, ShapingAttack,
                        AdaptiveExactReferences, AdaptiveOwnReferencesEOT)
}
ATTACK_ALIASES: Dict[str, Tuple[str, ...]] = {
    "adaptive": ("adaptive_exact", "adaptive_eot"),
    "apgd-ce": ("apgd",), "apgd_ce": ("apgd",), "cw-l2": ("cw",), "cw_l2": ("cw",),
}
#: attacks that target shaped inference only (crafted per shaped classifier)
ADAPTIVE_ATTACKS = ("adaptive_exact", "adaptive_eot")
#: attacks with an eps bound (the others are minimal-perturbation attacks)
LINF_ATTACKS = tuple(n for n, a in ATTACKS.items() if a.threat_model == LINF)


def parse_attack_names(names: "str | Sequence[str]") -> List[str]:
    """``"fgsm,pgd,adaptive"`` -> registry keys, aliases expanded, order kept, no repeats."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: List[str] = []
    for raw in items:
        key = str(raw).strip().lower()
        if not key:
            continue
        keys = ATTACK_ALIASES.get(key, (key,))
        for k in keys:
            if k not in ATTACKS:
                raise ConfigError(f"unknown attack {raw!r}; choose from: "
                                  f"{', '.join(list(ATTACKS) + list(ATTACK_ALIASES))}")
            if k not in out:
                out.append(k)
    if not out:
        raise ConfigError("no attack given")
    return out


def make_attack(name: str, *, eps: Optional[float] = None, reference_pool=None,
                **overrides) -> Attack:
    """An attack from the registry; ``eps`` and any override that names one of the attack's
    settings fields is applied, the rest is ignored (so one call site serves all attacks)."""
    (key,) = parse_attack_names(name)[:1]
    cls = ATTACKS[key]
    fields_ = {f.name for f in dataclasses.fields(cls.Settings)}
    kw = {k: v for k, v in overrides.items() if k in fields_ and v is not None}
    if eps is not None and "eps" in fields_:
        kw["eps"] = float(eps)
    if cls is AdaptiveOwnReferencesEOT:
        return cls(reference_pool=reference_pool, **kw)
    return cls(**kw)


def zero_gradient_fraction(fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose cross-entropy gradient w.r.t. the input is exactly zero
    (AutoAttack's check: such samples make gradient attacks fail silently)."""
    xa = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(fn(xa), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xa)
    return float((g.flatten(1).abs().amax(1) == 0).float().mean())
