"""Threat models: the small objects the iterative attacks share (after MadryLab/robustness'
``AttackerStep``). A threat model knows its ball and nothing about losses or models:
``random_start`` (a point inside the ball), ``step`` (the steepest-ascent step of its norm,
unprojected) and ``project`` (back into the eps-ball intersected with the valid input range
[0, 1]).

The free functions ``project_linf``, ``random_start_linf`` and ``linf_bounds`` are what the
shared PGD loop (``pgd.pgd_linf``, used by training) has always called; ``LinfBall`` wraps
them so that its projections and starts are the same numbers, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

LINF = "L-inf: ||x_adv - x||_inf <= eps and x_adv in [0, 1]"
L2 = "L2: ||x_adv - x||_2 <= eps and x_adv in [0, 1]"
L2_MINIMAL = "L2, minimal perturbation (unbounded): x_adv in [0, 1]; reports median L2"


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project into the L-inf eps-ball around x and into the valid input range [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start_linf(x: torch.Tensor, eps: float,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniform point of the L-inf eps-ball around x, clipped to [0, 1] (noise drawn on the
    CPU from ``generator``, so a seed gives the same start on every device)."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
    noise = noise.to(x.device).mul_(2 * eps).sub_(eps)
    return (x + noise).clamp_(0.0, 1.0)


def linf_bounds(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper): the eps-ball around x intersected with [0, 1], so that
    ``x_adv.clamp(lower, upper) == project_linf(x_adv, x, eps)`` in one kernel."""
    return (x - eps).clamp_(0.0, 1.0), (x + eps).clamp_(0.0, 1.0)


def _per_row(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ...] broadcastable against x."""
    return t.reshape((len(x),) + (1,) * (x.dim() - 1))


@dataclass(frozen=True)
class LinfBall:
    """||x_adv - x||_inf <= eps, x_adv in [0, 1]. Steps follow the sign of the gradient."""

    eps: float
    description = LINF

    def bounds(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return linf_bounds(x.detach(), self.eps)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return project_linf(x_adv, x, self.eps)

    def random_start(self, x: torch.Tensor, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
        return random_start_linf(x, self.eps, generator)

    def sphere_start(self, x: torch.Tensor, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
        """A random point on the ball's surface (APGD's restarts): uniform noise in [-1, 1]
        scaled so its largest coordinate is eps, then projected."""
        t = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        t = t.to(x.device).mul_(2).sub_(1)
        t = t / _per_row(t.flatten(1).abs().amax(1).clamp_min(1e-12), x)
        return self.project(x + self.eps * t, x)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, size) -> torch.Tensor:
        """x_adv + size * sign(grad), unprojected; ``size`` a number or [N, 1, ...]."""
        return x_adv + size * grad.sign()


@dataclass(frozen=True)
class L2Ball:
    """||x_adv - x||_2 <= eps, x_adv in [0, 1]. Steps follow the normalised gradient.
    ``project`` rescales the perturbation into the ball, then clips to [0, 1] (the usual
    approximation of the projection onto their intersection; the result is inside both)."""

    eps: float
    description = L2

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * _per_row((self.eps / norm).clamp(max=1.0), x)
        return (x + delta).clamp_(0.0, 1.0)

    def random_start(self, x: torch.Tensor, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
        """A uniform direction at a uniform radius in [0, eps], clipped to [0, 1]."""
        d = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        r = torch.rand(len(x), generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        d = d / _per_row(d.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        return (x + self.eps * _per_row(r, x) * d).clamp_(0.0, 1.0)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, size) -> torch.Tensor:
        g = grad / _per_row(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        return x_adv + size * g
