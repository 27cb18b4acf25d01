"""Transfer: examples crafted through *other* norms than the defender's, re-checked under the
defender's own. A member of the worst-case ensembles (``worst_case.py``), not an attack to
run alone: it attacks the source view with APGD-CE, APGD-DLR and APGD-T and hands every run's
examples over as candidates, each of which the ensemble then tries under the defender's
norms (a break is never undone there).

Why: through BN or shaped batches the gradient of the defender's own view moves with the
batch (the moving target of confounding II); a view with constant statistics (PN) often
finds examples that fool the BN or shaped defender better than its own gradient does
(confounding III). An external APGD-T crafted with PN broke 3.5 points more of the digits
PGD-AT model under BN than the BN-crafted ensemble alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .apgd import apgd_run
from .base import LINF, Attack, dlr_loss, per_sample_ce, targeted_dlr_loss, top_other_classes
from .threat import LinfBall


@dataclass
class TransferSettings:
    eps: float = 8 / 255
    steps: int = 100
    """APGD steps of each run through the source view"""
    n_target_classes: int = 9
    """APGD-T's target classes through the source view (at most C - 1)"""
    rho: float = 0.75
    momentum: float = 0.75
    seed: int = 0


class Transfer(Attack):
    """Transfer from other norms: APGD-CE, APGD-DLR and APGD-T (one run per target class)
    through a *source* view (PN; the test batch's own BN), each run keeping per sample its
    last misclassified iterate (deeper across the boundary than the first, so it transfers
    better) or its lowest-margin one. The ensemble takes each run's examples as a candidate
    and keeps a sample's candidate only where the defender, classifying with its own norms,
    is then fooled (``worst_case.py``). Which sources: the defender's ``transfer_from``
    (BN: PN; shaped inference: PN and BN).

    Alone (``craft``), it returns the examples of its first run (APGD-CE through ``fn``).

    Paper: Croce & Hein 2020 (APGD, the DLR losses); transfer of examples crafted on one
    model or view to another: Papernot et al. 2016, "Transferability in machine learning".
    Threat model: L-inf, eps-ball around x, inside [0, 1].
    Settings: ``eps`` (8/255), ``steps`` (100 per run), ``n_target_classes`` (9), ``rho``,
    ``momentum``, ``seed`` (0).
    Shapes: x [N, ...] in [0, 1], y [N] -> candidates [N, ...] each.
    Example: ``for cand in Transfer(eps=0.1).candidates(PNClassifier(model), x, y): ...``
    """

    name = "transfer"
    threat_model = LINF
    Settings = TransferSettings
    budget = {"steps": "apgd_steps", "n_target_classes": "n_target_classes"}

    def runs(self, fn, x: torch.Tensor, y: torch.Tensor):
        """(label, loss function) of every run through ``fn``, targets from its clean logits."""
        s = self.settings
        out = [("apgd", per_sample_ce), ("apgd_dlr", dlr_loss)]
        with torch.no_grad():
            clean = fn(x)
        targets = top_other_classes(clean, y, s.n_target_classes)
        for j in range(targets.shape[1]):
            t = targets[:, j]
            out.append((f"apgd_t{j + 1}", lambda logits, yy, t=t: targeted_dlr_loss(logits, yy, t)))
        return out

    def candidates(self, fn, x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each run's examples in turn (a generator: the ensemble checks one candidate set
        before the next run is crafted)."""
        s = self.settings
        ball = LinfBall(float(s.eps))
        for label, loss in self.runs(fn, x, y):
            with torch.enable_grad():
                best = apgd_run(fn, x, y, loss, s, x, keep_last=True)
            yield ball.project(best.x_adv.detach(), x)

    def craft(self, fn, x, y):
        return next(iter(self.candidates(fn, x, y))), {}
