"""Norm control: run any model with PN, with BN that updates running statistics, or with frozen BN.

Vocabulary (see DESIGN.md):
- PN (population norms): BatchNorm uses its running statistics (PyTorch ``eval()``).
- BN with update: BatchNorm uses batch statistics and updates running statistics
  (PyTorch ``train()``); only the training forward of a training step runs like this.
- frozen BN: batch statistics for normalisation, running statistics and
  ``num_batches_tracked`` untouched. Every attack step and every BN-mode inference.

Mode changes are scoped (context managers) and always undone, also on exceptions.
"""
from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import Dict, Iterator, List

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
