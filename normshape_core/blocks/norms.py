"""Norm control: run any model with PN, with BN that updates running statistics, or with frozen BN.

Vocabulary (docs/vocabulary.md):
- PN (population norms): BatchNorm uses its running statistics (PyTorch ``eval()``).
- BN with update: BatchNorm uses batch statistics and updates running statistics
  (PyTorch ``train()``); only the training forward of a training step runs like this.
- frozen BN: batch statistics for normalisation, running statistics and
  ``num_batches_tracked`` untouched. Every attack step and every BN-mode inference.

Dual BN (``DualBatchNorm``): a norm layer that holds two BatchNorms, a clean set and an
adversarial set of statistics and affine parameters; ``dual_route`` says, for a scoped
block, which set the rows go through (all rows clean, all adversarial, or the first k rows
clean and the rest adversarial: a training step's mixed batch).

Mode changes are scoped (context managers) and always undone, also on exceptions.
"""
from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class NormMode(str, enum.Enum):
    PN = "pn"
    BN_UPDATE = "bn_update"
    FROZEN_BN = "frozen_bn"

    @classmethod
    def parse(cls, value: "NormMode | str") -> "NormMode":
        if isinstance(value, NormMode):
            return value
        try:
            return cls(str(value).lower().replace("-", "_"))
        except ValueError:
            raise ValueError(
                f"unknown norm mode {value!r}; expected one of {[m.value for m in cls]}"
            ) from None


def bn_modules(model: nn.Module) -> List[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


# ---------------------------------------------------------------------- dual BN
#: the two sets of a dual-BN layer
CLEAN, ADV = "clean", "adv"
#: a route: one set for every row, or k = the first k rows clean, the others adversarial
Route = Union[str, int]


class DualBatchNorm(nn.Module):
    """Dual BN (Han et al. 2021; Sitawarin et al. 2021; AdvProp's auxiliary BN): two
    BatchNorm layers over the same features, ``clean`` and ``adv``, each with its own
    running statistics and affine parameters. ``route`` picks the set: ``"clean"``,
    ``"adv"``, or an int k (rows [0, k) through the clean set, rows [k, n) through the
    adversarial set, each normalised with its own rows' statistics in BN mode). Its
    children are ordinary BatchNorm layers, so ``norm_mode`` (PN, BN, frozen BN) applies to
    both as to any BN layer. Set the route with ``dual_route`` (scoped); outside such a block
    the route is ``default_route``, the adversarial set (the robust one)."""

    default_route: Route = ADV

    def __init__(self, num_features: int, dims: int = 1):
        super().__init__()
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.clean = bn(num_features)
        self.adv = bn(num_features)
        self.route: Route = self.default_route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.route
        if r == CLEAN:
            return self.clean(x)
        if r == ADV:
            return self.adv(x)
        k = int(r)
        if k <= 0:
            return self.adv(x)
        if k >= len(x):
            return self.clean(x)
        return torch.cat([self.clean(x[:k]), self.adv(x[k:])])

    def extra_repr(self) -> str:
        return f"route={self.route!r}"


def dual_bn_modules(model: nn.Module) -> List[DualBatchNorm]:
    return [m for m in model.modules() if isinstance(m, DualBatchNorm)]


def has_dual_bn(model: nn.Module) -> bool:
    return any(isinstance(m, DualBatchNorm) for m in model.modules())


def check_route(route: Route) -> Route:
    if isinstance(route, bool) or not (route in (CLEAN, ADV) or isinstance(route, int)):
        raise ValueError(f"a dual-BN route is {CLEAN!r}, {ADV!r} or a row count, got {route!r}")
    return route


@contextlib.contextmanager
def dual_route(model: nn.Module, route: Route) -> Iterator[nn.Module]:
    """Inside the block every dual-BN layer of ``model`` routes its rows by ``route`` (see
    ``DualBatchNorm``); the previous routes come back afterwards, also on exceptions. A
    model without dual-BN layers is left as it is."""
    route = check_route(route)
    duals = dual_bn_modules(model)
    saved = [m.route for m in duals]
    try:
        for m in duals:
            m.route = route
        yield model
    finally:
        for m, r in zip(duals, saved):
            m.route = r


_MODULE_TRAIN = nn.Module.train


def _set_training(m: nn.Module, flag: bool) -> None:
    """``m.training = flag`` for this module only. Written straight into the instance dict
    (what ``nn.Module.__setattr__`` ends up doing for a bool, after a dozen type checks); a
    module class with its own ``train()`` gets that called instead."""
    if type(m).train is _MODULE_TRAIN:
        m.__dict__["training"] = flag
    else:
        m.train(flag)


@contextlib.contextmanager
def norm_mode(model: nn.Module, mode: "NormMode | str") -> Iterator[nn.Module]:
    """Run ``model`` with the given norms inside the block; restore every flag afterwards.

    Non-BatchNorm modules are always in eval() inside the block except for
    ``BN_UPDATE`` (a training forward), so dropout-like layers never add noise to attacks.
    One walk over the modules (entering and leaving costs ~20 us for a small CNN; it runs at
    every attack step, so ``model.eval()`` and per-flag ``__setattr__`` calls, ~10x more, are
    avoided).
    """
    mode = NormMode.parse(mode)
    mods = list(model.modules())
    saved_training = [m.training for m in mods]
    bns = [m for m in mods if isinstance(m, _BatchNorm)]
    saved_track = [m.track_running_stats for m in bns]
    try:
        if mode is NormMode.PN:
            for m in mods:
                _set_training(m, False)
        elif mode is NormMode.BN_UPDATE:
            for m in mods:
                _set_training(m, True)
        else:  # frozen BN
            for m in mods:
                _set_training(m, False)
            for m in bns:
                _set_training(m, True)
                # With training=True and track_running_stats=False, PyTorch normalises with
                # batch statistics and passes no running buffers, so nothing is updated.
                m.__dict__["track_running_stats"] = False
        yield model
    finally:
        for m, flag in zip(mods, saved_training):
            _set_training(m, flag)
        for m, flag in zip(bns, saved_track):
            m.__dict__["track_running_stats"] = flag


def attack_norm_mode(polluted: bool = False) -> NormMode:
    """The norms an attack step runs with when it crafts through batch statistics.

    ``polluted=True`` reproduces the TensorFlow code the paper built on, where every
    train-mode forward (attack steps included) updated the moving averages. Teaching only.
    """
    return NormMode.BN_UPDATE if polluted else NormMode.FROZEN_BN


def running_stats(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of every BN buffer (running mean/var, num_batches_tracked), keyed by name."""
    out = {}
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            out[name] = buf.detach().clone()
    return out


@dataclass
class BNStats:
    """Per-layer batch statistics seen by each BatchNorm layer in captured forwards."""

    names: List[str]
    means: Dict[str, List[torch.Tensor]] = field(default_factory=dict)
    variances: Dict[str, List[torch.Tensor]] = field(default_factory=dict)


@contextlib.contextmanager
def capture_bn_stats(model: nn.Module) -> Iterator[BNStats]:
    """Record the per-channel batch mean and (biased) variance of each BN layer's input.

    One entry per forward, in order. Hooks are removed when the block ends.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    stats = BNStats(names=[n for n, _ in named])
    handles = []

    def make_hook(name):
        def hook(module, inputs):
            x = inputs[0].detach()
            dims = [0] + list(range(2, x.dim()))
            stats.means.setdefault(name, []).append(x.mean(dim=dims).cpu())
            stats.variances.setdefault(name, []).append(x.var(dim=dims, unbiased=False).cpu())

        return hook

    for n, m in named:
        handles.append(m.register_forward_pre_hook(make_hook(n)))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def pn_stats(model: nn.Module) -> Dict[str, tuple]:
    """The running (population) mean and variance of each BN layer, keyed by module name."""
    return {
        n: (m.running_mean.detach().cpu().clone(), m.running_var.detach().cpu().clone())
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None
    }


def forward_with(model: nn.Module, x: torch.Tensor, mode: "NormMode | str") -> torch.Tensor:
    """One forward pass of ``x`` under the given norms."""
    with norm_mode(model, mode):
        return model(x)
