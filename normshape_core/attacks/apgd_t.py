"""APGD-T: targeted APGD on the targeted DLR loss, one run per target class."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .apgd import apgd_run, sphere_starts
from .base import LINF, Attack, targeted_dlr_loss, top_other_classes, until_fooled


@dataclass
class APGDTSettings:
    eps: float = 8 / 255
    steps: int = 100
    """APGD steps per target class (and per restart)"""
    restarts: int = 1
    """runs per target class; further ones start at a random point of the eps-sphere"""
    n_target_classes: int = 9
    """target classes tried, the highest clean logits other than y first (capped at C - 1)"""
    rho: float = 0.75
    momentum: float = 0.75
    seed: int = 0


class TargetedLoss:
    """The targeted DLR loss towards per-row targets; ``take(sel)`` gives the loss of a
    subset of the rows (APGD drops rows it has fooled)."""

    def __init__(self, targets: torch.Tensor):
        self.targets = targets

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return targeted_dlr_loss(logits, y, self.targets)

    def take(self, sel: torch.Tensor) -> "TargetedLoss":
        return TargetedLoss(self.targets[sel])


def _targeted_loss(targets: torch.Tensor):
    def make_loss(rows):
        return TargetedLoss(targets[rows])
    return make_loss


class APGDTargeted(Attack):
    """APGD-T: for each of the top-k classes t != y by clean logits (k =
    ``n_target_classes``, at most C - 1), one APGD run (loop, checkpoint schedule and
    best-iterate rule of ``apgd``) that maximises the targeted DLR loss
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Each run attacks only the samples
    no earlier run fooled (through a coupled view, all N rows go through with the fooled ones
    held at their example). Returns per sample the first fooling example found, else the
    lowest-margin one. With C < 4 classes the normalisation is undefined and the loss falls
    back to the targeted margin z_t - z_y; with C = 2 there is a single target.

    Paper: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks" (APGD-T, targeted DLR loss).
    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``steps`` (100 per target), ``restarts`` (1 per target),
    ``n_target_classes`` (9), ``rho`` (0.75), ``momentum`` (0.75), ``seed`` (0).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = APGDTargeted(eps=0.1, n_target_classes=3)(PNClassifier(model), x, y)``
    """

    name = "apgd_t"
    threat_model = LINF
    Settings = APGDTSettings
    budget = {"steps": "apgd_steps", "n_target_classes": "n_target_classes"}

    def craft(self, fn, x, y):
        s = self.settings
        with torch.no_grad():
            clean = fn(x)
        targets = top_other_classes(clean, y, s.n_target_classes)
        k = targets.shape[1]
        runs = [(_targeted_loss(targets[:, j]),
                 sphere_starts(x, s.eps, int(s.seed) * 7919 + 1009 * j + r, r))
                for j in range(k) for r in range(s.restarts)]
        best = until_fooled(fn, x, y, runs, self.run_one, clean_logits=clean)
        return best.x_adv, {"target_classes": float(k)}

    def run_one(self, fn, x, y, loss, x_start, active):
        return apgd_run(fn, x, y, loss, self.settings, x_start, active)
