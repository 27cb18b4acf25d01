"""Figures of the Moving target page (Confounding II): how far the BN statistics of an
attacked batch move, step by step and per layer, and the decision boundary of a 2-D model
moving with them. Plotly only (no Streamlit, no torch)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from normshape_core.figures.colors import BN_COLOR, CLASS_COLORS, REGION_COLORS, WRONG_COLOR

MEASURES = {"to clean batch": ("distance_to_clean", "distance to the clean batch's statistics"),
            "to PN": ("distance_to_pn", "distance to PN (running statistics)"),
            "step change": ("step_change", "change since the previous PGD step")}
YLABEL = {"mean": "distance of means (std units, RMS)",
          "var": "relative variance difference (RMS)"}
STAT_NAME = {"mean": "mean", "var": "variance"}
# All-adversarial batch in BN's colour, the shaped batch in a darker shade of it.
COMP_COLORS = [BN_COLOR, "#7f2704"]
COMP_DASH = ["solid", "dash"]


def layer_mean(frame, measure: str, stat: str):
    """The measure averaged over BatchNorm layers, per PGD step (a pandas Series)."""
    return frame.groupby("step")[f"{measure}_{stat}"].mean()


def steps_figure(frames: Mapping[str, Any], measure: str, stat: str, t: int) -> go.Figure:
    """One line per batch composition (``frames``: composition -> the trace's frame): the
    measure (``measure``: a key of the frame, ``stat``: "mean" or "var") over PGD steps,
    mean over BatchNorm layers, with the chosen step ``t`` marked."""
    fig = go.Figure()
    for i, (c, frame) in enumerate(frames.items()):
        s = layer_mean(frame, measure, stat)
        fig.add_scatter(x=s.index, y=s.values, mode="lines+markers", name=f"batch {c}",
                        line=dict(color=COMP_COLORS[i], dash=COMP_DASH[i]))
    fig.add_vline(x=t, line=dict(color="#888888", dash="dot"))
    text = dict(MEASURES.values())[measure]
    fig.update_layout(title=f"Batch {STAT_NAME[stat]}: {text}<br><sup>mean over BatchNorm "
                            "layers</sup>",
                      xaxis_title="PGD step", yaxis_title=YLABEL[stat],
                      legend=dict(orientation="h", y=-0.25))
    return fig


def layers_figure(frames: Mapping[str, Any], measure: str, stat: str, t: int) -> go.Figure:
    """Grouped bars: the measure per BatchNorm layer at PGD step ``t``, one colour per batch."""
    fig = go.Figure()
    for i, (c, f) in enumerate(frames.items()):
        f = f[f["step"] == t]
        fig.add_bar(x=f["layer"], y=f[f"{measure}_{stat}"], name=f"batch {c}",
                    marker=dict(color=COMP_COLORS[i]))
    text = dict(MEASURES.values())[measure]
    fig.update_layout(title=f"Per layer at PGD step {t}<br><sup>{text}</sup>", barmode="group",
                      xaxis_title="BatchNorm layer (module name)", yaxis_title=YLABEL[stat],
                      legend=dict(orientation="h", y=-0.3))
    return fig


def boundary_figure(res: Mapping[str, Any], t: int, comp: str) -> go.Figure:
    """A 2-D model's plane classified with the BN statistics of the batch at PGD step ``t``
    (``res``: the trace with ``regions``, ``points``, ``adv_pred``), the boundary at step 0
    dotted, the clean part, each attacked point's path and where it is at step ``t``."""
    xs, ys, p1, pred = res["regions"][t]
    _, _, p1_0, _ = res["regions"][0]
    fig = go.Figure()
    fig.add_heatmap(x=xs, y=ys, z=pred, colorscale=[[0, REGION_COLORS[0]],
                                                     [1, REGION_COLORS[1]]],
                    showscale=False, hoverinfo="skip", zmin=0, zmax=1)
    fig.add_contour(x=xs, y=ys, z=p1_0, contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color="#999999", dash="dot", width=2), showscale=False,
                    name="boundary at step 0", showlegend=True, hoverinfo="skip")
    fig.add_contour(x=xs, y=ys, z=p1, contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color=BN_COLOR, width=3), showscale=False,
                    name=f"boundary at step {t} (BN of this batch)", showlegend=True,
                    hoverinfo="skip")
    x, y, n_clean = res["x"], res["y"], res["n_clean"]
    for c in (0, 1):
        m = y[:n_clean] == c
        fig.add_scatter(x=x[:n_clean][m, 0], y=x[:n_clean][m, 1], mode="markers",
                        marker=dict(color=CLASS_COLORS[c], size=6, opacity=0.5),
                        name=f"clean part, class {c}")
    pts = res["points"]  # [steps+1, n_adv, 2]
    ya = y[n_clean:]
    xs_path, ys_path = [], []
    for i in range(pts.shape[1]):
        xs_path += list(pts[:t + 1, i, 0]) + [None]
        ys_path += list(pts[:t + 1, i, 1]) + [None]
    fig.add_scatter(x=xs_path, y=ys_path, mode="lines", line=dict(color="#444444", width=1),
                    name="PGD paths, step 0 to t")
    wrong = res["adv_pred"][t] != ya
    for c in (0, 1):
        m = (ya == c) & ~wrong
        fig.add_scatter(x=pts[t, m, 0], y=pts[t, m, 1], mode="markers",
                        marker=dict(symbol="x", size=8, color=CLASS_COLORS[c]),
                        name=f"adversarial, class {c}, still right")
    fig.add_scatter(x=pts[t, wrong, 0], y=pts[t, wrong, 1], mode="markers",
                    marker=dict(symbol="x", size=9, color=WRONG_COLOR),
                    name="adversarial, misclassified")
    fig.update_layout(title=f"Batch {comp}: decision boundary at PGD step {t}",
                      xaxis_title="x1 (input units)", yaxis_title="x2 (input units)",
                      yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.18))
    return fig


def damping_text(summaries: Sequence[Mapping[str, float]], comps: Sequence[str]):
    """(factor, word, sentence) comparing how much two batches' statistics move per step,
    or None when a drift is zero."""
    da, db = (s["step_drift_mean"] for s in summaries)
    if not (db > 0 and da > 0):
        return None
    word = "less" if db < da else "more"
    factor = da / db if db < da else db / da
    text = (f"Reading the numbers: the statistics of batch **{comps[1]}** move "
            f"**{factor:.1f} times {word}** per PGD step than those of batch **{comps[0]}**"
            + (" - the clean parts hold the target still." if db < da else
               " - here shaping does not damp the movement.")
            + f" Attacked through its own batch, the adversarial part ends with "
              f"accuracy {summaries[0]['adv_acc']:.2f} ({comps[0]}) and "
              f"{summaries[1]['adv_acc']:.2f} ({comps[1]}).")
    return factor, word, text
