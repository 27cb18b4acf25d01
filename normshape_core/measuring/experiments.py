"""The results the app's pages draw, computed from a model and its dataset (no Streamlit, no
caching): the decision regions of a 2-D model under PN and under shaped inference with
eps-boxes and PGD examples, and the moving-target trace of one attacked batch. The app caches
them per checkpoint (``normshape_app/experiments.py``); a notebook calls them directly and
hands the result to the figure functions of ``normshape_core.figures``."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from . import projections as P
from ..attacks import make_attack
from .diagnostics import moving_target
from ..inference.shaping import PNClassifier, ShapedClassifier, make_reference_pool


def decision_regions_2d(model, data, ratio: str = "1:3", craft: str = "own norms",
                        n_boxes: int = 20, seed: int = 0, eps: float = 0.1) -> Dict[str, Any]:
    """The plane of a 2-D set classified with PN and with shaped inference ``ratio`` (one
    fixed draw of references), ``n_boxes`` training samples and their PGD-20 examples
    (``craft``: "own norms" = each panel attacked through its own norms, else PN's examples
    for both), and the test accuracies. The input of
    ``figures.decision_boundaries.regions_figure``."""
    pool = make_reference_pool(data, 1000, seed=0)
    pn = PNClassifier(model)
    shaped = P.BatchMemberClassifier(model, P.fixed_references(pool, ratio, seed=0),
                                     crafting_label="BN (exact refs)")
    grid = P.grid_around(data.x_train, resolution=140, margin=0.05)
    out = {"pn": P.decision_regions(pn, grid), "shaped": P.decision_regions(shaped, grid)}
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:n_boxes]
    x, y = data.x_train[idx], data.y_train[idx]
    pgd = make_attack("pgd", eps=eps, steps=20, seed=seed)
    adv_pn = pgd.run(pn, x, y)
    if craft == "own norms":
        adv_sh = pgd.run(shaped, x, y)  # through the exact shaped batches: adaptive
    else:
        adv_sh = adv_pn
    with torch.no_grad():
        for name, clf, res in (("pn", pn, adv_pn), ("shaped", shaped, adv_sh)):
            out[name + "_points"] = {
                "x_adv": res.x_adv.numpy(), "crafted_with": res.crafted_with,
                "clean_right": (clf(x).argmax(1) == y).numpy(),
                "adv_right": (clf(res.x_adv).argmax(1) == y).numpy()}
            xt, yt = data.x_test, data.y_test
            out[name + "_test_acc"] = float((clf(xt).argmax(1) == yt).float().mean())
        # The same measured with shaped inference proper (per-sample fresh references).
        proper = ShapedClassifier(model, pool, ratio, group_size=1, seed=0)
        out["shaped_test_acc_proper"] = float((proper(xt).argmax(1) == yt).float().mean())
    out.update(x=x.numpy(), y=y.numpy(), eps=eps, x_train=data.x_train.numpy(),
               y_train=data.y_train.numpy())
    return out


def moving_target_trace(model, data, ratio: str = "1:0", batch: int = 64, seed: int = 0,
                        eps: float = 0.1, step_size: Optional[float] = None,
                        steps: int = 10) -> Dict[str, Any]:
    """PGD on a batch of ``batch`` training samples (composition ``ratio`` adv:clean), all
    steps with the batch's own statistics: the BN statistics per step and layer, the points'
    paths, and for a 2-D model the decision boundary of every step's batch. The input
    of ``figures.moving_target`` (``steps_figure`` takes ``{ratio: trace["frame"]}``)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:batch]
    x, y = data.x_train[idx], data.y_train[idx]
    step_size = eps / 4 if step_size is None else step_size
    tr = moving_target(model, x, y, ratio, eps=eps, step_size=step_size, steps=steps, seed=seed)
    out = {"frame": tr.frame, "summary": tr.summary(), "points": tr.points.numpy(),
           "x": x.numpy(), "y": y.numpy(), "n_clean": tr.n_clean}
    if data.is_2d:  # the decision boundary at every step
        grid = P.grid_around(data.x_train, resolution=110, margin=0.05)
        clean = x[:tr.n_clean]
        batches = [torch.cat([clean, tr.points[t]]) for t in range(steps + 1)]
        regions = P.regions_per_batch(model, batches, grid)
        out["regions"] = [(r.xs, r.ys, r.probs[1], r.pred) for r in regions]
        with torch.no_grad():
            out["adv_pred"] = np.stack([
                P.BatchStatsClassifier(model, b)(tr.points[t]).argmax(1).numpy()
                for t, b in enumerate(batches)])
        out["straightness"] = P.path_straightness(tr.points)
    return out
