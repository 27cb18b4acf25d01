"""APGD (Croce & Hein 2020): the step-size-free PGD of AutoAttack, with the loss as a
parameter. ``apgd_run`` is one run of Alg. 1; ``base.until_fooled`` chains runs (restarts,
target classes) so that each later run attacks only the samples not fooled yet. The registry
entries ``apgd`` (cross-entropy) and ``apgd_dlr`` (DLR loss) live here, ``apgd_t`` in
``apgd_t.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from .base import (LINF, Attack, BestIterate, dlr_loss, per_row, per_sample_ce, rows_independent,
                   until_fooled)
from .threat import LinfBall

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits [N, C], y [N]) -> per-sample loss [N], to be maximised"""


@dataclass
class APGDSettings:
    eps: float = 8 / 255
    steps: int = 100
    restarts: int = 1
    """runs per sample; each further run starts at a random point of the eps-sphere and
    attacks only the samples not fooled yet"""
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


def _loss_grad(fn, x_adv, y, loss_fn: LossFn, active: Optional[torch.Tensor]):
    xa = x_adv.detach().requires_grad_(True)
    logits = fn(xa)
    loss = loss_fn(logits, y)
    objective = loss.sum() if active is None else loss[active].sum()
    (grad,) = torch.autograd.grad(objective, xa)
    return loss.detach(), grad.detach(), logits.detach()


def _momentum_step(ball: LinfBall, x_adv, x_prev, grad, step, xs, a: float, keep):
    """Alg. 1's update: the signed-gradient step of size ``step`` projected onto the ball
    around ``xs``, then momentum ``a`` (1 at the first step) towards it from ``x_prev``; rows
    outside ``keep`` (bool, broadcastable; None: all rows move) stay at ``x_adv``."""
    z = ball.project(ball.step(x_adv, grad, step), xs)
    x_new = ball.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), xs)
    if keep is not None:
        x_new = torch.where(keep, x_new, x_adv)
    return x_new


def _halve_stalled(min_increases: float, step, x_adv, grad, x_max, grad_max, increases,
                   loss_max, loss_max_at_mark, halved_at_mark):
    """At a checkpoint: the samples whose loss stalled (condition 1: at most
    ``min_increases`` increases since the last checkpoint; condition 2: not halved at the last
    checkpoint and best loss unchanged since) get half the step and restart from their
    highest-loss point. Changes ``step``, ``x_adv``, ``grad`` in place and zeroes
    ``increases``; returns (the rows halved, the best loss at this checkpoint)."""
    cond1 = increases <= min_increases
    cond2 = ~halved_at_mark & (loss_max <= loss_max_at_mark)
    halve = cond1 | cond2
    step[halve] /= 2.0
    x_adv[halve] = x_max[halve]
    grad[halve] = grad_max[halve]
    increases.zero_()
    return halve, loss_max.clone()


def apgd_run(fn, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, s: APGDSettings,
             x_start: torch.Tensor, active: Optional[torch.Tensor] = None, *,
             keep_last: bool = False) -> BestIterate:
    """One APGD run (Alg. 1) from ``x_start``: step 2*eps, momentum ``s.momentum``, at each
    checkpoint the step of a sample is halved and the sample restarted from its highest-loss
    point when its loss stalled (condition 1: increased in fewer than ``rho`` of the steps
    since the last checkpoint; condition 2: step and best loss unchanged since then).
    ``active`` [N] bool: only these rows move (the others stay at ``x_start``, for views
    whose rows are coupled); every call to ``fn`` carries all rows given. Returns the
    per-sample best iterate (first misclassified, else lowest margin; ``keep_last``: the last
    misclassified, the example to transfer to other norms).

    Through a row-independent view (PN) a sample stops iterating once it is misclassified:
    its best iterate is then fixed (the first misclassified one), so the rest of its run
    could not change the result; the run forwards only the samples still to fool. Exact per
    sample, since no row's trajectory depends on another's. A loss with per-row arguments
    (APGD-T's targets) must then offer ``take(sel)``: the loss of the rows ``sel``."""
    ball = LinfBall(float(s.eps))
    n = len(x)
    marks = set(apgd_checkpoints(s.steps))
    shrink = active is None and not keep_last and rows_independent(fn)
    keep = None if active is None else per_row(active, x)
    best = BestIterate(x_start, last=keep_last)
    # rows still iterating (all of them unless ``shrink``); per-row state below is for these
    idx = torch.arange(n, device=x.device)
    xs, ys = x, y
    step = torch.full((n,) + (1,) * (x.dim() - 1), 2 * ball.eps, device=x.device, dtype=x.dtype)
    x_adv = x_start.detach().clone()
    loss, grad, logits = _loss_grad(fn, x_adv, y, loss_fn, active)
    best.update(x_adv, logits, y, active)
    # x_max: the highest-loss point, where a stalled sample restarts (not what is returned)
    x_max, loss_max, grad_max = x_adv.clone(), loss.clone(), grad.clone()
    loss_prev = loss.clone()
    increases = torch.zeros(n, device=x.device)
    last_mark = 0
    loss_max_at_mark = loss_max.clone()
    halved_at_mark = torch.ones(n, dtype=torch.bool, device=x.device)  # no condition 2 at w_1
    x_prev = x_adv.clone()
    for i in range(s.steps):
        if shrink:
            alive = ~best.fooled[idx]
            if not bool(alive.all()):
                if not bool(alive.any()):
                    break
                sel = alive.nonzero().squeeze(1)
                idx, xs, ys = idx[sel], xs[sel], ys[sel]
                if hasattr(loss_fn, "take"):  # a loss with per-row arguments (targets)
                    loss_fn = loss_fn.take(sel)
                (step, x_adv, x_prev, grad, loss_prev, x_max, loss_max, grad_max, increases,
                 loss_max_at_mark, halved_at_mark) = (
                    t[sel] for t in (step, x_adv, x_prev, grad, loss_prev, x_max, loss_max,
                                     grad_max, increases, loss_max_at_mark, halved_at_mark))
        with torch.no_grad():
            a = s.momentum if i > 0 else 1.0
            x_prev, x_adv = x_adv, _momentum_step(ball, x_adv, x_prev, grad, step, xs, a, keep)
        loss, grad, logits = _loss_grad(fn, x_adv, ys, loss_fn, active)
        with torch.no_grad():
            if shrink:
                best.update_rows(idx, x_adv, logits, ys)
            else:
                best.update(x_adv, logits, ys, active)
            increases += (loss > loss_prev).float()
            loss_prev = loss
            higher = loss > loss_max
            if active is not None:
                higher &= active
            x_max[higher], grad_max[higher] = x_adv[higher], grad[higher]
            loss_max = torch.where(higher, loss, loss_max)
            w = i + 1
            if w in marks:
                halved_at_mark, loss_max_at_mark = _halve_stalled(
                    s.rho * (w - last_mark), step, x_adv, grad, x_max, grad_max, increases,
                    loss_max, loss_max_at_mark, halved_at_mark)
                last_mark = w
    return best


def sphere_starts(x: torch.Tensor, eps: float, seed: int, restart: int):
    """The start of run ``restart``: None (x itself) for the first, else a function drawing a
    random point of the eps-sphere for every row (the official restarts)."""
    if restart == 0:
        return None
    return lambda: LinfBall(float(eps)).sphere_start(x, torch.Generator().manual_seed(seed))


class APGD(Attack):
    """APGD-CE: step-size-free L-inf PGD on cross-entropy, momentum 0.75, step 2*eps halved
    at the official checkpoints (22%, 41%, 57%, ... of the steps) when the loss stalled,
    restarting from the highest-loss point. Returns per sample the first misclassified
    iterate found, else the lowest-margin one (never simply the last). The first run starts
    at x itself (its first step is then the FGSM step at 2*eps projected, so APGD is never
    weaker than FGSM), each further restart at a random point of the eps-sphere and only on
    the samples not fooled yet.

    Paper: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks" (Alg. 1).
    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``steps`` (100), ``restarts`` (1), ``rho`` (0.75),
    ``momentum`` (0.75), ``seed`` (0).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = APGD(eps=0.1, steps=100)(PNClassifier(model), x, y)``
    """

    name = "apgd"
    threat_model = LINF
    Settings = APGDSettings
    budget = {"steps": "apgd_steps"}
    ensemble_budget = {"restarts": "apgd_restarts"}  # APGD-CE only, not APGD-DLR
    loss: LossFn = staticmethod(per_sample_ce)

    def craft(self, fn, x, y):
        s = self.settings
        runs = [(lambda rows: self.loss, sphere_starts(x, s.eps, int(s.seed) * 7919 + r, r))
                for r in range(s.restarts)]
        return until_fooled(fn, x, y, runs, self.run_one).x_adv, {}

    def run_one(self, fn, x, y, loss, x_start, active):
        return apgd_run(fn, x, y, loss, self.settings, x_start, active)


class APGDDLR(APGD):
    """APGD-DLR: APGD (same loop, schedule and best-iterate rule as ``apgd``) on the
    Difference of Logits Ratio loss -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12), which
    no rescaling of the logits can flatten (cross-entropy saturates; the DLR ratio does not).
    With 2 classes (moons, spirals) z_pi3 does not exist: the loss falls back to the
    un-normalised margin max_{i!=y} z_i - z_y.

    Paper: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks" (Alg. 1, Eq. 6).
    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``steps`` (100), ``restarts`` (1), ``rho`` (0.75),
    ``momentum`` (0.75), ``seed`` (0).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = APGDDLR(eps=0.1)(shaped.with_exact_references(len(x)), x, y)``
    """

    name = "apgd_dlr"
    ensemble_budget = {}
    loss: LossFn = staticmethod(dlr_loss)
