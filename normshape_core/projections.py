"""Pictures of a classifier, as arrays: decision regions on a 2-D grid, 2-D slices of input
space around an image, and 2-D maps (UMAP or PCA) of penultimate features.

Every function takes a *classifier*: any callable ``clf(x) -> logits`` of exactly x's rows,
such as ``shaping.PNClassifier`` (PN), ``shaping.ShapedClassifier`` (shaped inference),
:class:`BatchStatsClassifier` (BN statistics of one given batch) or
:class:`BatchMemberClassifier` (each input classified as a member of a given batch). The norms
are the classifier's business, so the same code draws the picture under PN, BN or shaped
inference. Pure compute: tensors in, numpy arrays out; no plotting, no Streamlit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attacks.base import LogitsFn
from .norms import NormMode, capture_bn_stats, norm_mode



# ====================================================================== classifiers
class BatchStatsClassifier:
    """Classify with the BN statistics of one fixed batch (``batch``), as the model sees the
    world while that batch is being processed: each layer normalises with the mean and
    (biased) variance the batch produced at that layer in a frozen-BN forward.

    Used for the moving target: the decision boundary under the statistics of the batch at
    PGD step t. The classified points do not change the statistics (an infinitesimal member).
    """

    crafting_label = "BN (pinned batch)"
    randomized = False

    def __init__(self, model: nn.Module, batch: torch.Tensor):
        self.model = model
        with torch.no_grad(), norm_mode(model, NormMode.FROZEN_BN), \
                capture_bn_stats(model) as st:
            model(batch)
        self.stats = {n: (st.means[n][-1], st.variances[n][-1]) for n in st.names}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .diagnostics import population_stats_from

        with population_stats_from(self.model, self.stats):
            return self.model(x)

    def describe(self) -> str:
        return "BN of a pinned batch"


class BatchMemberClassifier:
    """Classify each input as a member of a batch with fixed ``companions``: input i is
    forwarded in the batch ``companions + [x_i]`` with frozen BN, so its own value enters the
    statistics exactly as in BN inference of a test batch. Vectorised over inputs (vmap)."""

    randomized = False

    def __init__(self, model: nn.Module, companions: torch.Tensor, crafting_label: str = "BN"):
        if len(companions) < 1:
            raise ValueError("BN needs at least one companion sample in the batch")
        self.model = model
        self.companions = companions.detach()
        self.crafting_label = crafting_label

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .shaping import grouped_frozen_bn_forward

        comp = self.companions.to(x.device, x.dtype)
        batches = torch.cat([comp.unsqueeze(0).expand(len(x), *comp.shape), x.unsqueeze(1)], 1)
        return grouped_frozen_bn_forward(self.model, batches)[:, -1]

    def describe(self) -> str:
        return f"BN (batch of {len(self.companions) + 1})"


def fixed_references(pool: torch.Tensor, ratio: "str", seed: int = 0) -> torch.Tensor:
    """One seeded draw of the clean references a single sample is shaped with at ``ratio``
    adv:clean (1:9 -> 9 references): with :class:`BatchMemberClassifier` this is shaped
    inference (g = 1) with the same references for every input, so a picture of it shows one
    function instead of a different reference draw per pixel."""
    from .config import Ratio

    r = Ratio.parse(ratio)
    n = max(1, r.clean // r.adv)
    g = torch.Generator().manual_seed(int(seed))
    return pool[torch.randperm(len(pool), generator=g)[:n]]


@torch.no_grad()
def _logits_in_chunks(clf: LogitsFn, x: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([clf(x[i:i + chunk]) for i in range(0, len(x), chunk)])


# ====================================================================== 2-D decision regions
@dataclass
class Grid2D:
    """A regular grid over a rectangle of the 2-D input space (input units)."""

    xs: np.ndarray  # (nx,)
    ys: np.ndarray  # (ny,)

    @property
    def points(self) -> torch.Tensor:
        xx, yy = np.meshgrid(self.xs, self.ys)
        return torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)


def grid_around(points: "torch.Tensor | np.ndarray", resolution: int = 120,
                margin: float = 0.08, bounds: Optional[Tuple[float, float, float, float]] = None
                ) -> Grid2D:
    """A ``resolution`` x ``resolution`` grid over the points' bounding box plus ``margin``
    (or over ``bounds`` = (x0, x1, y0, y1))."""
    if bounds is None:
        p = np.asarray(points, dtype=np.float64)
        lo, hi = p.min(0) - margin, p.max(0) + margin
        bounds = (lo[0], hi[0], lo[1], hi[1])
    x0, x1, y0, y1 = bounds
    return Grid2D(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))


@dataclass
class Regions:
    """A classifier's decisions on a grid: ``probs[c, iy, ix]``, ``pred[iy, ix]``."""

    xs: np.ndarray
    ys: np.ndarray
    probs: np.ndarray  # (C, ny, nx) softmax probabilities
    pred: np.ndarray   # (ny, nx) predicted class

    def disagreement(self, other: "Regions") -> float:
        """Fraction of grid cells where two region maps predict different classes."""
        return float((self.pred != other.pred).mean())


def decision_regions(clf: LogitsFn, grid: Grid2D, chunk: int = 4096) -> Regions:
    """Evaluate ``clf`` on every grid point (chunks of ``chunk`` points)."""
    pts = grid.points
    logits = _logits_in_chunks(clf, pts, chunk)
    probs = F.softmax(logits.float(), 1).cpu().numpy()
    ny, nx = len(grid.ys), len(grid.xs)
    return Regions(grid.xs, grid.ys, probs.T.reshape(-1, ny, nx), probs.argmax(1).reshape(ny, nx))


def regions_per_batch(model: nn.Module, batches: Sequence[torch.Tensor], grid: Grid2D
                      ) -> List[Regions]:
    """Decision regions under the BN statistics of each batch in turn (e.g. the batch at each
    PGD step): the moving target, made visible."""
    return [decision_regions(BatchStatsClassifier(model, b), grid) for b in batches]


# ====================================================================== image slices
def orthogonal_direction(d: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random direction orthogonal to ``d`` (Gram-Schmidt), with the same L2 norm."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(d.shape, generator=g, dtype=torch.float32).to(d.device, d.dtype)
    dn = d / d.norm().clamp_min(1e-12)
    r = r - (r * dn).sum() * dn
    return r / r.norm().clamp_min(1e-12) * d.norm()


@dataclass
class Slice2D:
    """Decisions on the plane x0 + a * d1 + b * d2 (points clipped to [0, 1])."""

    alphas: np.ndarray  # (n,) coefficients of d1
    betas: np.ndarray   # (n,) coefficients of d2
    pred: np.ndarray    # (n, n) predicted class, [ib, ia]
    prob_label: np.ndarray  # (n, n) probability of the true label

    def label_fraction(self, label: int) -> float:
        return float((self.pred == label).mean())


def slice_points(x0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, extent: float = 2.0,
                 resolution: int = 31) -> Tuple[np.ndarray, torch.Tensor]:
    coef = np.linspace(-extent, extent, resolution)
    aa, bb = np.meshgrid(coef, coef)  # [ib, ia]
    a = torch.tensor(aa.ravel(), dtype=x0.dtype).view(-1, *[1] * x0.dim())
    b = torch.tensor(bb.ravel(), dtype=x0.dtype).view(-1, *[1] * x0.dim())
    pts = (x0.unsqueeze(0) + a * d1.unsqueeze(0) + b * d2.unsqueeze(0)).clamp(0.0, 1.0)
    return coef, pts


def input_slice(clf: LogitsFn, x0: torch.Tensor, label: int, d1: torch.Tensor,
                d2: torch.Tensor, extent: float = 2.0, resolution: int = 31,
                chunk: int = 512) -> Slice2D:
    """Classify the plane around image ``x0`` spanned by ``d1`` (e.g. the adversarial
    perturbation, so a = 1 is the adversarial example) and ``d2`` (e.g. a random orthogonal
    direction of the same size), over [-extent, extent]^2 in units of the directions."""
    coef, pts = slice_points(x0, d1, d2, extent, resolution)
    logits = _logits_in_chunks(clf, pts, chunk)
    probs = F.softmax(logits.float(), 1).cpu().numpy()
    n = len(coef)
    return Slice2D(coef, coef, probs.argmax(1).reshape(n, n), probs[:, label].reshape(n, n))


# ====================================================================== feature maps
@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, mode: "NormMode | str" = NormMode.PN,
                         chunk: int = 1024) -> np.ndarray:
    """``model.forward_features`` (the input of the last linear layer) under PN or frozen BN
    (the statistics of each chunk: pass one chunk to use the whole set's)."""
    with norm_mode(model, mode):
        feats = [model.forward_features(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return torch.cat(feats).flatten(1).float().cpu().numpy()


def pca_2d(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project onto the top two principal components; also returns their explained-variance
    ratios."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(f, full_matrices=False)
    var = s ** 2
    ratio = var[:2] / max(var.sum(), 1e-12)
    emb = f @ vt[:2].T
    if emb.shape[1] < 2:  # a 1-D feature space
        emb = np.concatenate([emb, np.zeros((len(emb), 2 - emb.shape[1]))], 1)
        ratio = np.concatenate([ratio, np.zeros(2 - len(ratio))])
    return emb.astype(np.float32), ratio


def embed_2d(features: np.ndarray, method: str = "umap", seed: int = 0,
             n_neighbors: int = 15) -> np.ndarray:
    """2-D map of feature vectors: ``umap`` (umap-learn, seeded) or ``pca``."""
    method = method.lower()
    if method == "pca":
        return pca_2d(features)[0]
    if method != "umap":
        raise ValueError(f"unknown map method {method!r}; use umap or pca")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba / sklearn deprecation chatter on import
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(features) - 1),
                            random_state=seed, n_jobs=1,  # seeded runs are single-threaded
                            init="spectral" if len(features) > 10 else "random")
        return reducer.fit_transform(np.asarray(features, dtype=np.float32)).astype(np.float32)


# ====================================================================== attack paths
def path_straightness(points: "torch.Tensor | np.ndarray") -> np.ndarray:
    """Per point of a path ``points[step, i, ...]``: |x(K) - x(0)| / sum of step lengths
    (1 = a straight line; smaller = zig-zag, the paper's Fig. 3). NaN for points that never
    moved."""
    p = torch.as_tensor(np.asarray(points), dtype=torch.float64).flatten(2)
    steps = (p[1:] - p[:-1]).norm(dim=2).sum(0)
    chord = (p[-1] - p[0]).norm(dim=1)
    nan = torch.full_like(chord, float("nan"))
    out = torch.where(steps > 0, chord / steps.clamp_min(1e-12), nan)
    return out.numpy()
