"""Figures of the Playground: decision regions under PN and under shaped inference with the
training points and eps-boxes, and the small live curves. Plotly only (no Streamlit)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import plotly.graph_objects as go

from normshape_core.figures.colors import BN_COLOR as SHAPED_COLOR  # noqa: F401
from normshape_core.figures.colors import CLASS_COLORS, PN_COLOR, REGION_COLORS  # noqa: F401

N_EVAL_TEXT = "100 test points, PGD-10"
REGIONS_KEY = ("Left panel of each run: PN, blue boundary; right panel: shaped inference, "
               "orange boundary (every point classified with the same clean references). "
               "Filled: the class regions. Big dots: training points with their eps-box "
               "(dotted); o: the PGD example found in the box against that panel's norms, "
               "x when it fools the model.")


def boundary_points(xs: np.ndarray, ys: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The decision boundary as points: the midpoints between grid neighbours (right or
    above) whose predicted classes differ. A few hundred points, cheap to send and to draw
    several times a second (a contour trace is recomputed by the browser at every frame)."""
    pred = np.asarray(pred)
    pts = []
    h = pred[:, 1:] != pred[:, :-1]
    iy, ix = np.nonzero(h)
    pts.append(np.stack([(xs[ix] + xs[ix + 1]) / 2, ys[iy]], 1))
    v = pred[1:, :] != pred[:-1, :]
    iy, ix = np.nonzero(v)
    pts.append(np.stack([xs[ix], (ys[iy] + ys[iy + 1]) / 2], 1))
    return np.concatenate(pts).astype(np.float32)


def regions_figure(frame, x_train: np.ndarray, y_train: np.ndarray, title: str,
                   height: int = 330) -> go.Figure:
    """Two panels: the decision regions under PN (left, blue boundary) and under shaped
    inference with one fixed draw of references (right, orange boundary); the training points;
    eps-boxes around a few of them with their current PGD example, crafted against each
    panel's own norms (x: the example fools the model, o: it does not); no legend (the page
    says this once for all panels, see ``REGIONS_KEY``). Shaped inference
    here classifies every point with the same draw of clean references (one function to
    draw, not a new draw per pixel).

    Built as one dict and validated once (a frame is drawn several times a second)."""
    ratio = frame.infer_ratio
    eps = frame.eps
    panels = ((frame.prob_pn, PN_COLOR, frame.adv_pn, frame.adv_pn_right, "PN"),
              (frame.prob_shaped, SHAPED_COLOR, frame.adv_shaped, frame.adv_shaped_right,
               f"shaped {ratio}"))
    x_train = np.round(np.asarray(x_train, dtype=np.float32), 4)
    data = []
    gap = 0.06
    domains = ([0.0, 0.5 - gap / 2], [0.5 + gap / 2, 1.0])
    layout = dict(title=dict(text=title), height=height, template="plotly_white",
                  margin=dict(l=55, r=10, t=75, b=50), uirevision="regions",
                  showlegend=False, annotations=[])
    for i, (prob, color, adv, right, name) in enumerate(panels):
        xa, ya = ("x", "y") if i == 0 else ("x2", "y2")
        common = dict(xaxis=xa, yaxis=ya)
        data.append(dict(type="heatmap", x=frame.grid_x, y=frame.grid_y,
                         z=(prob > 0.5).astype(np.uint8), zmin=0, zmax=1, showscale=False,
                         hoverinfo="skip", colorscale=[[0, REGION_COLORS[0]],
                                                       [1, REGION_COLORS[1]]], **common))
        edge = boundary_points(frame.grid_x, frame.grid_y, prob > 0.5)
        data.append(dict(type="scatter", x=edge[:, 0], y=edge[:, 1], mode="markers",
                         marker=dict(size=3, color=color, symbol="square"), hoverinfo="skip",
                         name=f"decision boundary, {name}", showlegend=True, **common))
        for c in (0, 1):
            m = y_train == c
            data.append(dict(type="scatter", x=x_train[m, 0], y=x_train[m, 1], mode="markers",
                             name=f"training points, class {c}", legendgroup=f"class{c}",
                             showlegend=i == 0, hoverinfo="skip",
                             marker=dict(size=3, color=CLASS_COLORS[c], opacity=0.35),
                             **common))
        fooled = ~np.asarray(right, dtype=bool)
        bx, by = frame.box_x, frame.box_y
        data.append(dict(type="scatter", x=bx[:, 0], y=bx[:, 1], mode="markers",
                         showlegend=i == 0, name="clean point with its eps-box",
                         legendgroup="box",
                         marker=dict(size=8, color=[CLASS_COLORS[int(c)] for c in by],
                                     line=dict(color="black", width=1)), **common))
        data.append(dict(type="scatter", x=adv[:, 0], y=adv[:, 1], mode="markers",
                         legendgroup="adv", name="its PGD example (x: fools the model)",
                         showlegend=i == 0,
                         marker=dict(size=10, color=color,
                                     symbol=["x" if f else "circle-open" for f in fooled],
                                     line=dict(width=2, color=color)), **common))
        # the eps-boxes as one trace of closed outlines (one SVG path, not one per box)
        ox, oy = [], []
        for p in bx:
            x0, x1, y0, y1 = p[0] - eps, p[0] + eps, p[1] - eps, p[1] + eps
            ox += [x0, x1, x1, x0, x0, None]
            oy += [y0, y0, y1, y1, y0, None]
        data.append(dict(type="scatter", x=ox, y=oy, mode="lines", hoverinfo="skip",
                         name=f"eps-box (eps {eps:g})", legendgroup="epsbox",
                         showlegend=i == 0, line=dict(color="black", width=1, dash="dot"),
                         **common))
        suffix = "" if i == 0 else "2"
        layout["xaxis" + suffix] = dict(domain=domains[i], range=[0, 1], constrain="domain",
                                        title=dict(text="x1 (input units)"), anchor=ya)
        layout["yaxis" + suffix] = dict(range=[0, 1], anchor=xa, scaleanchor=xa,
                                        constrain="domain",
                                        title=dict(text="x2 (input units)" if i == 0 else ""))
        layout["annotations"].append(dict(
            text=("PN" if i == 0 else f"shaped {ratio}"),
            x=sum(domains[i]) / 2, y=1.0, xref="paper", yref="paper", xanchor="center",
            yanchor="bottom", showarrow=False, font=dict(size=14)))
    return go.Figure(data=data, layout=layout)


def curves_figure(history: Sequence[Dict[str, float]], title: str, infer_ratio: str,
                  height: int = 560) -> go.Figure:
    """Loss, accuracies (clean and robust, each under PN and under shaped inference) and the
    running-statistics drift, against epochs, one point per frame: three rows sharing the
    epoch axis (readable in a narrow column). Built as one dict."""
    x = [h["epoch"] for h in history]

    def col(key):
        return [h.get(key) for h in history]

    data = [dict(type="scatter", x=x, y=col("loss"), name="training loss",
                 line=dict(color="#333333"), xaxis="x", yaxis="y")]
    for key, name, color, dash in (
            ("clean_pn", "clean, PN", PN_COLOR, "solid"),
            ("robust_pn", "robust, PGD with PN, PN", PN_COLOR, "dash"),
            ("clean_shaped", f"clean, shaped {infer_ratio}", SHAPED_COLOR, "solid"),
            ("robust_shaped", f"robust, PGD with shaped, shaped {infer_ratio}", SHAPED_COLOR,
             "dash")):
        data.append(dict(type="scatter", x=x, y=col(key), name=name,
                         line=dict(color=color, dash=dash), xaxis="x", yaxis="y2"))
    data.append(dict(type="scatter", x=x, y=col("drift"), name="running-mean drift (PN)",
                     line=dict(color=PN_COLOR, dash="dot"), xaxis="x", yaxis="y3"))
    layout = dict(title=dict(text=title), height=height, template="plotly_white",
                  margin=dict(l=60, r=10, t=60, b=50), uirevision="curves",
                  legend=dict(orientation="h", y=-0.12, font=dict(size=11)),
                  xaxis=dict(title=dict(text="epoch"), anchor="y"), annotations=[])
    rows = (("training loss", "loss", [0.70, 1.0]),
            (f"test accuracy ({N_EVAL_TEXT})", "accuracy (fraction)", [0.36, 0.64]),
            ("running-mean drift (PN)", "change per step", [0.0, 0.28]))
    for i, (text, ytitle, domain) in enumerate(rows):
        sfx = "" if i == 0 else str(i + 1)
        layout["yaxis" + sfx] = dict(title=dict(text=ytitle, font=dict(size=11)),
                                     domain=domain, anchor="x")
        layout["annotations"].append(dict(text=text, x=0.5, y=domain[1], xref="paper",
                                          yref="paper", xanchor="center", yanchor="bottom",
                                          showarrow=False, font=dict(size=12)))
    layout["yaxis2"]["range"] = [0, 1.02]
    layout["yaxis3"]["type"] = "log"
    layout["xaxis"]["anchor"] = "y3"
    return go.Figure(data=data, layout=layout)


def run_title(side: str, label: str) -> str:
    """A run's panel title: ``A: PGD + shaping 1:3`` with the label's parenthesis (if any)
    as a subtitle."""
    main, _, detail = label.partition(" (")
    return f"{side}: {main}" + (f"<br><sup>({detail}</sup>" if detail else "")
