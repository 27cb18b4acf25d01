"""The small units the training loop composes (``training.Trainer``): one objective per
method and one crafting rule per shaping mode.

Objectives (``OBJECTIVES[cfg.method]``): what the attack ascends and what the model
minimises.
- ``natural``: no attack; cross-entropy on the clean batch.
- ``pgd`` (Madry PGD-AT): PGD on cross-entropy; cross-entropy on the crafted batch.
- ``trades`` (Zhang et al. 2019): PGD on KL(adv || clean prediction); CE + beta * KL.

Shaping modes (``CRAFTING_RULES[cfg.shaping]``, the paper's Tables I-II rows): which rows of the
batch are perturbed and what each attack step forwards. The trainer calls ``craft`` under the
attack's norm mode (frozen BN), with ``k`` clean rows first.
- ``none``: adv only; the whole batch is attacked through its own statistics and trained on.
- ``train``: shaping in training; the whole batch is attacked as in ``none``, the trained
  batch is the k clean rows + the adversarial version of the other rows.
- ``attack+train``: the method (Eq. 5); only the last rows are perturbed, every attack step
  forwards the whole mixed batch and takes the gradient w.r.t. the adversarial rows.

Dual BN (``cfg.norm == "dual_bn"``, ``crafting_rule``): the whole batch is attacked through
the adversarial set of every dual-BN layer; the trained batch is the clean batch followed by
its adversarial version, and the trainer routes its first ``n_clean`` rows through the clean
set (``norms.dual_route``).

Gradient clipping: ``adaptive_gradient_clip_`` (normalizer-free runs, ``cfg.agc_clip``).

The arithmetic is exactly the one the trainer always did (same forwards, same order, same
random draws): the shipped checkpoints retrain bit for bit (tests/test_reproduce.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from ..settings.config import TrainConfig
from ..blocks.norms import ADV, CLEAN, NormMode, dual_route, norm_mode

#: ``attack(fn, x, y, target_probs) -> x_adv``: the training attack with the run's settings
AttackFn = Callable[..., torch.Tensor]


@dataclass
class CraftedBatch:
    """The batch a training step trains on, and which rows of it are adversarial."""

    x: torch.Tensor
    y: torch.Tensor
    n_clean: int  # rows [0, n_clean) are clean, the rest adversarial
    clean_probs: Optional[torch.Tensor] = None  # TRADES: clean prediction of the adv rows


# ---------------------------------------------------------------------- objectives
class Natural:
    name = "natural"
    adversarial = False  # no attack: the batch is trained on as it is
    attack_loss = "ce"
    uses_target = False  # the attack ascends CE, no clean prediction needed

    def target(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, cfg: TrainConfig, batch: CraftedBatch, logits: torch.Tensor,
             x_clean: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y)


class PGDAT(Natural):
    name = "pgd"
    adversarial = True


class TRADES(Natural):
    name = "trades"
    adversarial = True
    attack_loss = "kl"
    uses_target = True

    def target(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=1)

    def loss(self, model, cfg: TrainConfig, batch: CraftedBatch, logits: torch.Tensor,
             x_clean: torch.Tensor) -> torch.Tensor:
        if not cfg.trades_kl_in_loss:
            return F.cross_entropy(logits, batch.y)
        if cfg.norm == "dual_bn":
            # Dual BN: the clean rows (clean set) and their adversarial versions (adversarial
            # set) are in the one training forward: CE on the clean rows + beta * KL(adv ||
            # clean), as TRADES with two sets of norms.
            k = batch.n_clean
            ce = F.cross_entropy(logits[:k], batch.y[:k])
            kl = F.kl_div(F.log_softmax(logits[k:], 1), F.softmax(logits[:k], 1),
                          reduction="batchmean")
            return ce + cfg.trades_beta * kl
        if cfg.shaping == "none":
            # TRADES as published: CE on the clean batch + beta * KL(adv || clean), each
            # forward in train mode with its own batch statistics.
            with norm_mode(model, NormMode.BN_UPDATE):
                clean_logits = model(x_clean)
            ce = F.cross_entropy(clean_logits, batch.y)
            kl = F.kl_div(F.log_softmax(logits, 1), F.softmax(clean_logits, 1),
                          reduction="batchmean")
            return ce + cfg.trades_beta * kl
        # Shaped TRADES: CE on the clean rows of the mixed batch; KL between the adversarial
        # rows and their clean versions (taken with the clean batch's statistics, frozen BN,
        # so the mixed batch stays the only forward that updates running statistics).
        k = batch.n_clean
        with norm_mode(model, NormMode.FROZEN_BN):
            clean_ref = model(x_clean)[k:]
        ce = F.cross_entropy(logits[:k], batch.y[:k])
        kl = F.kl_div(F.log_softmax(logits[k:], 1), F.softmax(clean_ref, 1), reduction="batchmean")
        return ce + cfg.trades_beta * kl


OBJECTIVES: Dict[str, Natural] = {o.name: o for o in (Natural(), PGDAT(), TRADES())}


# ---------------------------------------------------------------------- shaping modes
def _target(objective: Natural, logits_of: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """The attack's target (TRADES: the clean prediction), without gradient; None for CE."""
    if not objective.uses_target:
        return None
    with torch.no_grad():
        return objective.target(logits_of())


class AdvOnly:
    """``none``: the whole batch attacked and trained on."""

    name = "none"

    def attack_whole_batch(self, model, x, y, objective, attack: AttackFn):
        probs = _target(objective, lambda: model(x))
        return attack(model, x, y, probs), probs

    def craft(self, model, x, y, k: int, objective: Natural, attack: AttackFn) -> CraftedBatch:
        x_adv, probs = self.attack_whole_batch(model, x, y, objective, attack)
        return CraftedBatch(x_adv, y, 0, probs)


class ShapeInTraining(AdvOnly):
    """``train``: the whole batch attacked; k clean rows + the other rows' adversarial
    versions trained on."""

    name = "train"

    def craft(self, model, x, y, k: int, objective: Natural, attack: AttackFn) -> CraftedBatch:
        x_adv, probs = self.attack_whole_batch(model, x, y, objective, attack)
        return CraftedBatch(torch.cat([x[:k], x_adv[k:]]), y, k,
                            None if probs is None else probs[k:])


class ShapeAttackAndTraining:
    """``attack+train`` (Eq. 5): the rows after the k clean ones attacked through the whole
    mixed batch."""

    name = "attack+train"

    def craft(self, model, x, y, k: int, objective: Natural, attack: AttackFn) -> CraftedBatch:
        clean = x[:k]
        probs = _target(objective, lambda: model(x)[k:])
        x_adv = attack(lambda xa: model(torch.cat([clean, xa]))[k:], x[k:], y[k:], probs)
        return CraftedBatch(torch.cat([clean, x_adv]), y, k, probs)


CRAFTING_RULES = {s.name: s for s in (AdvOnly(), ShapeInTraining(), ShapeAttackAndTraining())}


class DualBN:
    """Dual BN: the whole batch attacked through the adversarial set (TRADES' target: the
    clean prediction through the clean set); trained on the clean batch + its adversarial
    version, the first ``len(x)`` rows clean (the trainer routes them to the clean set)."""

    name = "dual"

    def craft(self, model, x, y, k: int, objective: Natural, attack: AttackFn) -> CraftedBatch:
        with dual_route(model, CLEAN):
            probs = _target(objective, lambda: model(x))
        with dual_route(model, ADV):
            x_adv = attack(model, x, y, probs)
        return CraftedBatch(torch.cat([x, x_adv]), torch.cat([y, y]), len(x), probs)


def crafting_rule(cfg: TrainConfig):
    """The crafting rule of a run: dual BN's, or its shaping mode's."""
    return DualBN() if cfg.norm == "dual_bn" else CRAFTING_RULES[cfg.shaping]


# ---------------------------------------------------------------------- gradient clipping
def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output unit's slice (rows of a weight, broadcastable to it); the
    whole tensor's for a bias or gain vector."""
    if t.dim() <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


#: the floor of a weight norm in adaptive gradient clipping (a unit starting at zero can move)
AGC_EPS = 1e-3


def adaptive_gradient_clip_(parameters, clip: float, eps: float = AGC_EPS) -> None:
    """Adaptive gradient clipping (Brock et al. 2021), in place: a unit whose gradient norm
    exceeds ``clip`` times its weight norm (at least ``eps``) gets its gradient scaled down to
    exactly that; the others are untouched."""
    with torch.no_grad():
        for p in parameters:
            if p.grad is None:
                continue
            limit = unitwise_norm(p).clamp_min(eps) * clip
            g = unitwise_norm(p.grad)
            scale = torch.where(g > limit, limit / g.clamp_min(1e-12), torch.ones_like(g))
            p.grad.mul_(scale)
