"""Figures of the Decision boundaries page: the decision regions of a 2-D set with eps-boxes
and adversarial examples (the paper's Fig. 1), a 2-D slice of input space around a test image,
and a 2-D map of penultimate features. Plotly only (no Streamlit, no torch)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from normshape_core.figures.colors import CLASS_COLORS, REGION_COLORS, WRONG_COLOR, class_color


def image_array(a) -> np.ndarray:
    """(C, H, W) in [0, 1] -> an image to show: H x W (grey) or H x W x C."""
    a = np.asarray(a)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def regions_figure(res: Mapping[str, Any], which: str, title: str, color: str) -> go.Figure:
    """The plane of a 2-D set coloured by the predicted class under one classifier
    (``which``: ``"pn"`` or ``"shaped"`` in ``res``, the result of the regions computation),
    its decision boundary in ``color``, the training set faint, the chosen samples with
    their L-inf eps-boxes and their PGD examples; red: misclassified."""
    reg, pts = res[which], res[which + "_points"]
    fig = go.Figure()
    fig.add_heatmap(x=reg.xs, y=reg.ys, z=reg.pred, zmin=0, zmax=1, showscale=False,
                    colorscale=[[0, REGION_COLORS[0]], [1, REGION_COLORS[1]]],
                    hoverinfo="skip")
    fig.add_contour(x=reg.xs, y=reg.ys, z=reg.probs[1], showscale=False, hoverinfo="skip",
                    contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color=color, width=3), name="decision boundary", showlegend=True)
    xt, yt = res["x_train"], res["y_train"]
    for c in (0, 1):
        m = yt == c
        fig.add_scatter(x=xt[m, 0], y=xt[m, 1], mode="markers", name=f"training, class {c}",
                        marker=dict(size=3, color=CLASS_COLORS[c], opacity=0.25))
    x, y, eps = res["x"], res["y"], res["eps"]
    bx, by = [], []
    for p in x:
        bx += [p[0] - eps, p[0] + eps, p[0] + eps, p[0] - eps, p[0] - eps, None]
        by += [p[1] - eps, p[1] - eps, p[1] + eps, p[1] + eps, p[1] - eps, None]
    fig.add_scatter(x=bx, y=by, mode="lines", line=dict(color="#555555", width=1),
                    name=f"eps-box (L-inf, eps {eps:g})")
    ax, ay = [], []
    for p, q in zip(x, pts["x_adv"]):
        ax += [p[0], q[0], None]
        ay += [p[1], q[1], None]
    fig.add_scatter(x=ax, y=ay, mode="lines", line=dict(color="#777777", width=1, dash="dot"),
                    name="perturbation", showlegend=False)
    right_c, right_a = pts["clean_right"], pts["adv_right"]
    for c in (0, 1):
        m = (y == c) & right_c
        fig.add_scatter(x=x[m, 0], y=x[m, 1], mode="markers", name=f"sample, class {c}",
                        marker=dict(size=8, color=CLASS_COLORS[c], line=dict(width=1,
                                                                              color="white")))
        m = (y == c) & right_a
        fig.add_scatter(x=pts["x_adv"][m, 0], y=pts["x_adv"][m, 1], mode="markers",
                        name=f"adversarial, class {c}, right",
                        marker=dict(symbol="x", size=8, color=CLASS_COLORS[c]))
    fig.add_scatter(x=x[~right_c, 0], y=x[~right_c, 1], mode="markers",
                    name="sample, misclassified", marker=dict(size=9, color=WRONG_COLOR))
    fig.add_scatter(x=pts["x_adv"][~right_a, 0], y=pts["x_adv"][~right_a, 1], mode="markers",
                    name="adversarial, misclassified",
                    marker=dict(symbol="x", size=9, color=WRONG_COLOR))
    fig.update_layout(title=title, xaxis_title="x1 (input units)",
                      yaxis_title="x2 (input units)", yaxis_scaleanchor="x",
                      legend=dict(orientation="h", y=-0.15))
    return fig


def regions_caption(res: Mapping[str, Any], which: str) -> str:
    """What the regions figure's samples show, in numbers."""
    pts, y = res[which + "_points"], res["y"]
    extra = ""
    if which == "shaped":
        extra = (f" (with a fresh reference draw per sample, as shaped inference does it: "
                 f"{res['shaped_test_acc_proper']:.3f}). The plane is classified with one "
                 f"fixed draw of clean training samples as references, so it shows one function")
    return (f"Adversarial examples: PGD-20 crafted with {pts['crafted_with']}. On these "
            f"{len(y)} samples: clean {pts['clean_right'].mean():.2f}, robust "
            f"{pts['adv_right'].mean():.2f}. Clean accuracy on the whole test set: "
            f"{res[which + '_test_acc']:.3f}{extra}.")


def slice_figure(sl, label: int, classes: Sequence[str], title: str, color: str) -> go.Figure:
    """A 2-D slice of input space (``sl``: an input slice from the projections module)
    coloured by the predicted class, the true class's boundary in ``color``, the test image
    at (0, 0) and its PGD example at (1, 0)."""
    n_cls = len(classes)
    scale = [[i / max(n_cls - 1, 1), class_color(i)] for i in range(n_cls)]
    fig = go.Figure(go.Heatmap(
        x=sl.alphas, y=sl.betas, z=sl.pred, zmin=0, zmax=n_cls - 1, colorscale=scale,
        showscale=False, customdata=np.vectorize(lambda k: classes[k])(sl.pred),
        hovertemplate="a=%{x:.2f}, b=%{y:.2f}: %{customdata}<extra></extra>"))
    fig.add_contour(x=sl.alphas, y=sl.betas, z=(sl.pred == label).astype(float),
                    contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color=color, width=3), showscale=False, hoverinfo="skip",
                    name=f"boundary of the true class ({classes[label]})", showlegend=True)
    fig.add_scatter(x=[0], y=[0], mode="markers", name="the test image",
                    marker=dict(size=12, color="white", line=dict(width=2, color="black")))
    fig.add_scatter(x=[1], y=[0], mode="markers", name="PGD example (crafted with PN)",
                    marker=dict(size=12, symbol="x", color="black"))
    for k in sorted(set(np.unique(sl.pred).tolist())):
        fig.add_scatter(x=[None], y=[None], mode="markers", name=f"predicted: {classes[k]}",
                        marker=dict(size=10, symbol="square", color=class_color(k)))
    fig.update_layout(title=title,
                      xaxis_title="a: along the PGD perturbation (1 = the PGD example)",
                      yaxis_title="b: random orthogonal direction (same L2 size)",
                      yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.2))
    return fig


def features_figure(fm: Mapping[str, Any], method: str, norms: str) -> go.Figure:
    """A 2-D map (``method``: PCA or UMAP) of penultimate features of ``fm['n']`` clean test
    samples (dots) followed by their PGD examples (crosses), coloured by true class."""
    fig = go.Figure()
    emb, y, n = fm["emb"], fm["y"], fm["n"]
    for k in sorted(set(y.tolist())):
        m = y == k
        color = class_color(k)
        fig.add_scatter(x=emb[:n][m, 0], y=emb[:n][m, 1], mode="markers", legendgroup=str(k),
                        name=f"clean, {fm['classes'][k]}", marker=dict(size=6, color=color))
        fig.add_scatter(x=emb[n:][m, 0], y=emb[n:][m, 1], mode="markers", legendgroup=str(k),
                        name=f"PGD, {fm['classes'][k]}",
                        marker=dict(size=7, symbol="x", color=color, opacity=0.7))
    unit = "PCA component" if method == "PCA" else "UMAP axis"
    fig.update_layout(
        title=f"{method} of penultimate features, computed with {norms}<br><sup>{n} test "
              f"samples (dots) and their PGD-20 examples crafted with PN (crosses), by true "
              f"class</sup>",
        xaxis_title=f"{unit} 1 (arbitrary units)", yaxis_title=f"{unit} 2 (arbitrary units)")
    return fig
