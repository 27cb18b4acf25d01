"""FGSM: one signed-gradient step (the shared PGD loop with one step, no random start)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import LINF, Attack
from .pgd import pgd_linf


@dataclass
class FGSMSettings:
    eps: float = 8 / 255
    """L-inf bound (the paper evaluates FGSM at twice the training eps: 16/255)."""


class FGSM(Attack):
    """FGSM: one signed-gradient step of size eps on cross-entropy, from x itself.

    Paper: Goodfellow et al. 2015, "Explaining and harnessing adversarial examples".
    Threat model: L-inf, x_adv in the eps-ball around x and in [0, 1].
    Settings: ``eps`` (8/255).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = FGSM(eps=16 / 255)(PNClassifier(model), x, y)``
    """

    name = "fgsm"
    threat_model = LINF
    Settings = FGSMSettings
    budget = {"eps": "fgsm_eps"}  # None: the evaluation's eps

    def craft(self, fn, x, y):
        s = self.settings
        return pgd_linf(fn, x, y, eps=s.eps, step_size=s.eps, steps=1, random_start=False), {}
