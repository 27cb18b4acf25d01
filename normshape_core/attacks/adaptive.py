"""The adaptive attacks of the paper's Table III on shaped inference: the attacker with the
defender's exact references, and the attacker with its own references and EOT."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..settings.config import ConfigError
from ..inference.shaping import ShapedClassifier
from .base import LINF, Attack
from .pgd import PGDSettings, pgd_with_restarts


class AdaptiveExactReferences(Attack):
    """Adaptive attack of Table III ("adaptive attack"): the attacker knows the defender's
    exact references and crafts PGD through the defender's exact shaped batches (the next
    call's draw for a classifier with fresh references).

    Paper: the ICTAI 2022 Batch-Norm Shaping paper (``paper/``), Table III.
    Threat model: L-inf, eps-ball around x, inside [0, 1]; white box including the references.
    Settings: PGD's (``eps``, ``step_size``, ``steps``, ``restarts``, ``random_start``,
    ``seed``).  Target: a ``ShapedClassifier``.
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = AdaptiveExactReferences(eps=0.1)(shaped_classifier, x, y)``
    """

    name = "adaptive_exact"
    threat_model = LINF
    Settings = PGDSettings
    budget = {"steps": "steps"}

    def crafting_view(self, clf, x):
        if not isinstance(clf, ShapedClassifier):
            raise ConfigError(f"{self.name} attacks shaped inference; {clf.describe()} is not")
        return clf.with_exact_references(len(x))

    def craft(self, fn, x, y):
        return pgd_with_restarts(fn, x, y, self.settings)


class EOTReferenceView:
    """Crafting view of the attacker who knows the training set but not the references:
    shaped batches (the defender's ratio and group size) with the attacker's own reference
    pool, ``draws`` fresh reference draws per call. Logits returned are log E_refs[softmax],
    so cross-entropy on them is -log of the expected probability of the label (EOT)."""

    def __init__(self, model, pool, ratio, group_size, draws: int = 8, seed: int = 0):
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

    Paper: the ICTAI 2022 Batch-Norm Shaping paper (``paper/``), Table III; EOT after
    Athalye et al. 2018, "Obfuscated gradients give a false sense of security".
    Threat model: L-inf, eps-ball around x, inside [0, 1]; white box except the references.
    Settings: PGD's + ``eot_draws`` (8), ``pool_seed`` (12345).
    Target: a ``ShapedClassifier`` (its ratio and group size are public).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = AdaptiveOwnReferencesEOT(eps=0.1, reference_pool=pool)(shaped, x, y)``
    """

    name = "adaptive_eot"
    threat_model = LINF
    Settings = EOTSettings
    budget = {"steps": "steps", "eot_draws": "eot_draws"}

    def __init__(self, settings: Any = None, reference_pool: Optional[torch.Tensor] = None,
                 **overrides):
        super().__init__(settings, **overrides)
        self.reference_pool = reference_pool

    def crafting_view(self, clf, x):
        if not isinstance(clf, ShapedClassifier):
            raise ConfigError(f"{self.name} attacks shaped inference; {clf.describe()} is not")
        if self.reference_pool is None:
            raise ConfigError(f"{self.name} needs the attacker's own reference pool "
                              "(training samples)")
        s = self.settings
        return EOTReferenceView(clf.model, self.reference_pool, clf.ratio, clf.group_size,
                                s.eot_draws, s.seed * 1009 + s.pool_seed)

    def craft(self, fn, x, y):
        return pgd_with_restarts(fn, x, y, self.settings)
