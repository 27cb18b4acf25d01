"""The paper's shaping attack: PGD crafted through shaped batches of the test batch itself."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings.config import ConfigError, Ratio
from ..inference.shaping import grouped_frozen_bn_forward
from .base import LINF, Attack
from .pgd import PGDSettings, pgd_with_restarts


class ShapingBatchView:
    """Crafting view of the paper's shaping attack: each attacked sample goes through a batch
    in which, per adversarial part, ``ratio.clean`` parts are unchanged samples of the same
    test batch (BN frozen). The test batch is cut into ``parts`` chunks; chunk k is attacked
    in batch k (chunk k adversarial, the rest clean), all batches in one grouped
    forward (``grouped_frozen_bn_forward``)."""

    def __init__(self, model, x_clean: torch.Tensor, ratio: "Ratio | str" = "1:3"):
        self.model, self.x_clean, self.ratio = model, x_clean.detach(), Ratio.parse(ratio)
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
        out = grouped_frozen_bn_forward(self.model, batches)  # [G, N, C]
        return out[self.group_of, torch.arange(n, device=x_adv.device)]


@dataclass
class ShapingAttackSettings(PGDSettings):
    ratio: str = "1:3"
    """adv:clean of the crafting batch (paper: 3 unchanged test samples per attacked one)"""


class ShapingAttack(Attack):
    """The paper's norm shaping attack (section VI): PGD crafted through shaped batches of the
    test batch itself, ``ratio`` 1:3 = three unchanged test samples per attacked sample,
    BN frozen. The target classifier only supplies the model.

    Paper: the ICTAI 2022 Batch-Norm Shaping paper (``paper/``), section VI.
    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: PGD's (``eps``, ``step_size``, ``steps``, ``restarts``, ``random_start``,
    ``seed``) + ``ratio`` ("1:3").
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = ShapingAttack(eps=0.1, ratio="1:3")(PNClassifier(model), x, y)``
    """

    name = "shaping"
    threat_model = LINF
    Settings = ShapingAttackSettings
    budget = {"steps": "steps"}

    def check(self):
        if Ratio.parse(self.settings.ratio).adv != 1:
            raise ConfigError(f"the shaping attack needs a ratio 1:n, got {self.settings.ratio}")

    def crafting_view(self, clf, x):
        return ShapingBatchView(clf.model, x, self.settings.ratio)

    def craft(self, fn, x, y):
        return pgd_with_restarts(fn, x, y, self.settings)
