"""Square attack, L-inf: score-based random search, no gradients (the check against
gradient masking)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

from .base import LINF, Attack, margin, per_row, rows_independent

#: the official p schedule: p halves each time the iteration passes one of these marks,
#: counted per 10,000 queries (so the schedule stretches over any ``n_queries``)
P_HALVING_MARKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass
class SquareSettings:
    eps: float = 8 / 255
    n_queries: int = 1000
    """queries per sample, the initial one included (the official default is 5000)"""
    p_init: float = 0.8
    """fraction of the input a square covers at first (halved along the schedule)"""
    seed: int = 0


def square_fraction(p_init: float, i: int, n_queries: int) -> float:
    """p at iteration ``i`` (0-based) of ``n_queries``: ``p_init`` halved once per passed
    mark of ``P_HALVING_MARKS`` (per 10,000)."""
    it = int(i / n_queries * 10000)
    return p_init / 2 ** sum(it > m for m in P_HALVING_MARKS)


def _signs(shape, gen, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(like.device, like.dtype)


def _window(starts: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """[N, length] bool: positions starts .. starts + size - 1."""
    pos = torch.arange(length, device=starts.device)
    return (pos >= starts[:, None]) & (pos < starts[:, None] + size)


def _proposal(xv: torch.Tensor, p: float, gen) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mask, sign) of one random update per row, both broadcastable against ``xv``.
    Images [N, C, H, W]: an s x s square (s^2 ~ p * H * W, at most min(H, W) - 1 as in the
    original code) at a random position, one sign per channel. Vectors [N, D]: a window of
    s ~ p * D consecutive features at a random position, one sign per feature."""
    n = len(xv)
    if xv.dim() == 4:
        c, h, w = xv.shape[1:]
        s = max(1, min(int(round(math.sqrt(p * h * w))), max(1, min(h, w) - 1)))
        top = torch.randint(0, h - s + 1, (n,), generator=gen).to(xv.device)
        left = torch.randint(0, w - s + 1, (n,), generator=gen).to(xv.device)
        mask = _window(top, s, h)[:, None, :, None] & _window(left, s, w)[:, None, None, :]
        return mask, _signs((n, c, 1, 1), gen, xv)
    d = xv.shape[1]
    s = max(1, min(int(round(p * d)), d))
    start = torch.randint(0, d - s + 1, (n,), generator=gen).to(xv.device)
    return _window(start, s, d), _signs((n, d), gen, xv)


class Square(Attack):
    """Square attack, L-inf: random search on the margin z_y - max_{i!=y} z_i. Starts from
    vertical stripes (each column of each channel at +-eps; for vectors each feature), then
    proposes per sample a random square of +-2*eps (one sign per channel; projected back)
    covering a fraction p of the input, p = ``p_init`` halved at the official fractions of
    ``n_queries``; an update is kept only when it lowers that sample's margin. A proposal
    that would change nothing is flipped (the original code resamples it). Vectors [N, D]
    (moons) use a window of consecutive features instead of a square. Samples misclassified
    when clean are returned unchanged; fooled samples stop. Through a row-independent view
    (PN) each query forwards only the samples not fooled yet; through a coupled view (BN,
    shaped batches) every query forwards all N rows, margins measured in that batch.

    Paper: Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient
    black-box adversarial attack via random search".
    Threat model: L-inf, eps-ball around x, inside [0, 1]; score-based (logits only).
    Settings: ``eps`` (8/255), ``n_queries`` (1000), ``p_init`` (0.8), ``seed`` (0).
    Shapes: x [N, C, H, W] or [N, D] in [0, 1] (other shapes: flattened), y [N] ->
    x_adv of x's shape.
    Example: ``x_adv = Square(eps=0.1, n_queries=1000)(PNClassifier(model), x, y)``
    """

    name = "square"
    threat_model = LINF
    Settings = SquareSettings
    budget = {"n_queries": "square_queries"}

    def craft(self, fn, x, y):
        s = self.settings
        shape = x.shape
        xv = x if x.dim() in (2, 4) else x.flatten(1)
        view = fn if xv is x else (lambda t: fn(t.reshape((len(t),) + shape[1:])))
        lower, upper = self.ball.bounds(xv)
        gen = torch.Generator().manual_seed(int(s.seed) * 7919)
        independent = rows_independent(fn)
        with torch.no_grad():
            clean = view(xv)
            fooled = clean.argmax(1) != y
            stripes = (xv.shape[0], xv.shape[1], 1, xv.shape[3]) if xv.dim() == 4 else xv.shape
            x_best = torch.clamp(xv + s.eps * _signs(stripes, gen, xv), lower, upper)
            x_best = torch.where(per_row(fooled, xv), xv, x_best)
            logits = view(x_best)
            m_best = torch.where(fooled, margin(clean, y), margin(logits, y))
            fooled |= logits.argmax(1) != y
            queries = torch.ones(len(xv), device=xv.device)
            for i in range(s.n_queries - 1):
                mask, sign = _proposal(xv, square_fraction(s.p_init, i, s.n_queries), gen)
                todo = ~fooled
                if not bool(todo.any()):
                    break
                delta = mask * (2 * s.eps) * sign
                x_new = torch.clamp(x_best + delta, lower, upper)
                same = (x_new == x_best).flatten(1).all(1)
                if bool(same.any()):
                    x_new = torch.where(per_row(same, xv),
                                        torch.clamp(x_best - delta, lower, upper), x_new)
                if independent:
                    idx = todo.nonzero().squeeze(1)
                    logits = view(x_new[idx])
                    m, wrong = margin(logits, y[idx]), logits.argmax(1) != y[idx]
                    keep = m < m_best[idx]
                    sel = idx[keep]
                    x_best[sel], m_best[sel], fooled[sel] = x_new[sel], m[keep], wrong[keep]
                else:
                    logits = view(torch.where(per_row(todo, xv), x_new, x_best))
                    m, wrong = margin(logits, y), logits.argmax(1) != y
                    keep = todo & (m < m_best)
                    x_best = torch.where(per_row(keep, xv), x_new, x_best)
                    m_best = torch.where(keep, m, m_best)
                    fooled |= keep & wrong
                queries += todo
        return x_best.reshape(shape), {"mean_queries": float(queries.mean())}
