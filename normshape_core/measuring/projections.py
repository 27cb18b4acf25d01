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

import base64
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.base import LogitsFn
from ..blocks.norms import NormMode, capture_bn_stats, norm_mode



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
        from ..inference.shaping import grouped_frozen_bn_forward

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
    from ..settings.config import Ratio

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


Progress = Callable[[str, Optional[float]], None]  # (what is being done, fraction or None)


class _EpochSink:
    """A file-like sink for UMAP's tqdm bar: each ``k/n`` it writes becomes a progress call
    (the layout's epochs, the one part of UMAP that reports how far it is)."""

    _PAT = re.compile(r"(\d+)/(\d+)")

    def __init__(self, progress: Progress):
        self.progress = progress

    def write(self, text: str) -> None:
        found = self._PAT.findall(text)
        if found:
            k, n = (int(v) for v in found[-1])
            if n:
                self.progress(f"laying out the UMAP map, epoch {k} of {n}", k / n)

    def flush(self) -> None:
        pass


def embed_2d(features: np.ndarray, method: str = "umap", seed: int = 0,
             n_neighbors: int = 15, progress: Optional[Progress] = None) -> np.ndarray:
    """2-D map of feature vectors: ``umap`` (umap-learn, seeded) or ``pca``. ``progress``
    (UMAP only) hears the layout's epochs as they pass."""
    method = method.lower()
    if method == "pca":
        return pca_2d(features)[0]
    if method != "umap":
        raise ValueError(f"unknown map method {method!r}; use umap or pca")
    threads = torch.get_num_threads()
    try:
        return _umap_2d(features, seed, n_neighbors, progress)
    finally:
        # UMAP's fit sets the process's OpenMP threads to the core count, which torch's
        # intra-op pool follows: a seeded run (1 thread) would train its next model with
        # another thread count, so other floats. Put back what the caller had.
        torch.set_num_threads(threads)


def _umap_2d(features: np.ndarray, seed: int, n_neighbors: int,
             progress: Optional[Progress]) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba / sklearn deprecation chatter on import
        import umap

        tqdm_kwds = None
        if progress is not None:
            tqdm_kwds = dict(disable=False, file=_EpochSink(progress), mininterval=0.25,
                             ascii=True)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(features) - 1),
                            random_state=seed, n_jobs=1,  # seeded runs are single-threaded
                            init="spectral" if len(features) > 10 else "random",
                            tqdm_kwds=tqdm_kwds)
        return reducer.fit_transform(np.asarray(features, dtype=np.float32)).astype(np.float32)


# ====================================================================== feature maps
# The Decision boundaries page's map: FEATURE_MAP_N test samples (one seeded draw) and their
# PGD-20 examples crafted with PN, penultimate features under PN or BN, mapped to 2-D.
FEATURE_MAP_N = 300
FEATURE_MAP_STEPS = 20
MAP_NORMS = ("pn", "bn")


def feature_map_samples(model: nn.Module, data, n: int = FEATURE_MAP_N, seed: int = 0,
                        eps: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, x_adv, y): ``n`` seeded test samples and their PGD-20 examples crafted with PN."""
    from ..attacks import make_attack
    from ..inference.shaping import PNClassifier

    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(data.x_test), generator=g)[:n]
    x, y = data.x_test[idx], data.y_test[idx]
    attack = make_attack("pgd", eps=eps, steps=FEATURE_MAP_STEPS, seed=seed)
    return x, attack.run(PNClassifier(model), x, y).x_adv, y


def feature_map_features(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                         norms: str) -> np.ndarray:
    """Penultimate features of the clean samples followed by their adversarial examples,
    with PN, or (``bn``) each set with its own batch statistics."""
    mode = "pn" if norms.lower() == "pn" else "frozen_bn"
    return np.concatenate([penultimate_features(model, x, mode, chunk=len(x)),
                           penultimate_features(model, x_adv, mode, chunk=len(x))])


def feature_map(model: nn.Module, data, method: str, norms: str, n: int = FEATURE_MAP_N,
                seed: int = 0, eps: float = 0.1, classes: Optional[Sequence[str]] = None,
                progress: Optional[Progress] = None) -> Dict[str, Any]:
    """One map as the page draws it: ``{"emb": (2n, 2), "y": (n,), "n", "classes"}``."""
    x, x_adv, y = feature_map_samples(model, data, n, seed, eps)
    feats = feature_map_features(model, x, x_adv, norms)
    emb = embed_2d(feats, method, seed=seed, progress=progress)
    return map_result(emb, y.numpy(), classes)


def map_result(emb: np.ndarray, y: np.ndarray, classes: Optional[Sequence[str]]
               ) -> Dict[str, Any]:
    y = np.asarray(y, dtype=np.int64)
    names = list(classes) if classes else [str(i) for i in range(int(y.max()) + 1)]
    return {"emb": np.asarray(emb, dtype=np.float32), "y": y, "n": len(y), "classes": names}


# ---------------------------------------------------------------- stored beside a checkpoint
# ``model.projection.json`` beside ``model.json``: the page's maps for its default sample
# (every method and norms), computed ahead by ``normshape reproduce`` and ``python -m
# normshape_app.ui warm`` so that the page's first view reads them instead of running PGD and
# UMAP. Coordinates are quantised to 12 bits within each map's bounding box (at most 1/8190
# of the map's extent off: under a pixel on any screen) and base64-encoded: about 6 KB per
# checkpoint (the UMAP maps of PN and of BN features, 600 points each), labels as one digit
# per sample (at most 10 classes). PCA is not stored (milliseconds from the features).
PROJECTION_FORMAT = "normshape-projection"
PROJECTION_VERSION = 1
MAX_PROJECTION_BYTES = 1 << 20


def projection_path(checkpoint: "str | Path") -> Path:
    """``.../model.projection.json`` for a run folder or its ``model.json``."""
    from ..training.checkpoints import resolve_paths

    return resolve_paths(checkpoint)[1].with_suffix(".projection.json")


QUANT_LEVELS = 4095  # 12 bits per coordinate, two coordinates in three bytes


def _pack(emb: np.ndarray) -> Dict[str, Any]:
    """A map's coordinates, 12 bits each within its bounding box, as base64 text."""
    emb = np.asarray(emb, dtype=np.float64)
    lo, hi = emb.min(0), emb.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((emb - lo) / span * QUANT_LEVELS).astype(np.uint16).ravel()  # x0 y0 x1 y1 ...
    if q.size % 2:
        q = np.append(q, 0)
    a, b = q[0::2], q[1::2]
    packed = np.stack([a >> 4, ((a & 15) << 4) | (b >> 8), b & 255], 1).astype(np.uint8)
    return {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi],
            "q12": base64.b64encode(packed.tobytes()).decode("ascii")}


def _unpack(packed: Mapping[str, Any], n_points: int) -> np.ndarray:
    lo, hi = np.asarray(packed["lo"], dtype=np.float64), np.asarray(packed["hi"], np.float64)
    raw = np.frombuffer(base64.b64decode(packed["q12"], validate=True), dtype=np.uint8)
    if lo.shape != (2,) or hi.shape != (2,) or raw.size != 3 * n_points:
        raise ValueError("a map of the wrong size")
    t = raw.reshape(-1, 3).astype(np.uint16)
    a, b = (t[:, 0] << 4) | (t[:, 1] >> 4), ((t[:, 1] & 15) << 8) | t[:, 2]
    q = np.stack([a, b], 1).reshape(n_points, 2).astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (lo + q / QUANT_LEVELS * span).astype(np.float32)


def compute_projections(model: nn.Module, meta: Mapping[str, Any], data,
                        n: int = FEATURE_MAP_N, seed: int = 0,
                        log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The UMAP maps of the page's default sample (PN and BN features) as the stored file's
    content. PCA is not stored: it takes milliseconds once the features are there."""
    eps = float(meta["config"].get("eps") or 0.1)
    x, x_adv, y = feature_map_samples(model, data, n, seed, eps)
    maps = {}
    for norms in MAP_NORMS:
        feats = feature_map_features(model, x, x_adv, norms)
        t0 = time.perf_counter()
        maps[f"umap/{norms}"] = _pack(embed_2d(feats, "umap", seed=seed))
        if log:
            log(f"UMAP of {norms.upper()} features: {time.perf_counter() - t0:.1f} s")
    return {"format": PROJECTION_FORMAT, "version": PROJECTION_VERSION,
            "weights_sha256": meta["weights_sha256"], "dataset": meta["config"]["dataset"],
            "n": int(len(y)), "seed": int(seed), "eps": eps,
            "samples": f"{len(y)} test samples (seed {seed}) and their PGD-{FEATURE_MAP_STEPS} "
                       f"examples crafted with PN, eps {eps:g}",
            "labels": "".join(str(int(v)) for v in y), "maps": maps}


def read_projection(checkpoint: "str | Path", sha: str, method: str, norms: str,
                    n: int = FEATURE_MAP_N, seed: int = 0,
                    classes: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    """The stored map (as :func:`feature_map` returns it) if the checkpoint has a file for
    exactly these weights (``sha``) and settings; None otherwise (no file, another model, a
    file that is not a regular file, too large or malformed: the page computes the map)."""
    from ..base.files import read_json_or_none

    try:
        # a regular file of at most MAX_PROJECTION_BYTES, opened without blocking (a FIFO
        # never hangs), else None
        doc = read_json_or_none(projection_path(checkpoint), MAX_PROJECTION_BYTES)
        if (not isinstance(doc, dict) or doc.get("format") != PROJECTION_FORMAT
                or doc.get("version") != PROJECTION_VERSION
                or doc.get("weights_sha256") != sha or doc.get("n") != n
                or doc.get("seed") != seed):
            return None
        packed = doc["maps"][f"{method.lower()}/{norms.lower()}"]
        labels = doc["labels"]
        if not isinstance(labels, str) or len(labels) != n or not labels.isdigit():
            return None
        y = np.frombuffer(labels.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
        return map_result(_unpack(packed, 2 * n), y, classes)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_projections(checkpoints: Iterable["str | Path"], *, n: int = FEATURE_MAP_N,
                      seed: int = 0, log: Callable[[str], None] = print) -> List[Path]:
    """Compute and write ``model.projection.json`` beside each checkpoint whose file is
    missing or stale (other weights or settings); returns the files written. Called by
    ``reproduce`` after a dataset's evaluation and by the app's warm-up command."""
    from ..training.checkpoints import atomic_write_json, load_checkpoint
    from ..blocks.data import load_dataset

    written: List[Path] = []
    datasets: Dict[str, Any] = {}
    for ck in checkpoints:
        try:
            model, meta = load_checkpoint(ck)
            path = projection_path(ck)
            if read_projection(ck, meta["weights_sha256"], "umap", "pn", n, seed) is not None:
                continue
            name = meta["config"]["dataset"]
            if name not in datasets:
                datasets[name] = load_dataset(name, seed=0, download=False)
            t0 = time.perf_counter()
            atomic_write_json(path, compute_projections(model, meta, datasets[name], n, seed))
        except Exception as e:  # noqa: BLE001 - one checkpoint must not stop the others
            log(f"{ck}: feature maps not stored: {type(e).__name__}: {e}".splitlines()[0])
            continue
        log(f"{path}: feature maps stored ({time.perf_counter() - t0:.1f} s)")
        written.append(path)
    return written


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
