"""PGD and the shared L-inf PGD loop ``pgd_linf`` that training, diagnostics and the PGD-based
attacks (FGSM, PGD, the shaping attack, the adaptive attacks) all run.

``pgd_linf`` must stay bit-identical: shipped checkpoints were trained with it and must
retrain bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .base import LINF, Attack, LogitsFn, per_sample_ce
from .threat import linf_bounds, random_start_linf


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


def pgd_with_restarts(fn, x, y, s: PGDSettings) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``pgd_linf`` from ``s.restarts`` seeded random starts, keeping per sample the first
    restart that fools it, else the one with the highest cross-entropy."""
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
            loss = per_sample_ce(logits, y)
            wrong = logits.argmax(1) != y
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best[better] = xa[better]
        best_loss = torch.where(better, loss, best_loss)
        best_wrong |= wrong
    return best, {}


class PGD(Attack):
    """PGD: L-inf projected signed-gradient ascent on cross-entropy from a random start,
    restarts keeping the worst case per sample. Runs the shared ``pgd_linf`` loop (the one
    training uses) on all N rows, so it crafts through any view (PN, BN, shaped batches).

    Paper: Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks".
    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``step_size`` (None: eps/4), ``steps`` (20), ``restarts`` (1),
    ``random_start`` (True), ``seed`` (0).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = PGD(eps=0.1, steps=20)(PNClassifier(model), x, y)``
    """

    name = "pgd"
    threat_model = LINF
    Settings = PGDSettings
    budget = {"steps": "steps"}

    def craft(self, fn, x, y):
        return pgd_with_restarts(fn, x, y, self.settings)
