"""Figures of the confounding sweep and of the Confoundings deck (plotly only).

- ``sweep_figure``: one confounding's magnitude against the number of BN layers and against
  eps, one line per dataset, the seed-to-seed spread of each base cell as an error bar and
  the paper's value as a dashed line;
- ``lesson_i_figure``: clean accuracy of the lesson's models per inference mode;
- ``moving_target_animation``: BN statistics of an attacked batch at every PGD step, an
  all-adversarial batch against a shaped one, with a play button and a step slider;
- ``lesson_iii_figure``: PGD perturbation size per crafting norms.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from normshape_core.figures.colors import (BN_COLOR, CLEAN_COLOR, PN_COLOR,  # noqa: F401
                                           SHAPED_COLOR)

# shaped inference: BN's family, darker (colors.SHAPED_COLOR), and hatched
SHAPED_PATTERN = dict(shape="/", fgcolor="#ffffff", size=9, solidity=0.25)
# Series that are not norms never take PN's blue or BN's orange; on a projector or in
# greyscale they differ by their dash and marker, not by colour alone.
DATASET_COLORS = {"moons": "#1b9e77", "spirals": "#e7298a", "digits": "#7570b3",
                  "fashion_mnist": "#555555"}
DATASET_SYMBOLS = {"moons": "circle", "spirals": "square", "digits": "diamond",
                   "fashion_mnist": "triangle-up"}
DATASET_DASHES = {"moons": "solid", "spirals": "dash", "digits": "dot",
                  "fashion_mnist": "dashdot"}
# batches by composition (the moving target), and the claims slide's three sources: dark
# solid against light hatched, so that they differ in greyscale too
ALL_ADV_COLOR, SHAPED_BATCH_COLOR = "#3f3f3f", "#80cdc1"
PAPER_COLOR, CLEAREST_COLOR, MEDIAN_COLOR = "#3f3f3f", "#80cdc1", "#8073ac"

#: per confounding: (measure key, y-axis title, as percent?, paper value, paper label)
SWEEP_MEASURES = {
    "I": ("acc_gap_bn_pn", "clean acc.: BN minus PN", False, None, None),
    "II": ("logit_gap", "logit-error gap (%)", True, 0.63, "paper +63%"),
    "III": ("pn_vs_bn", "PN vs BN perturbation (%)", True, 0.17, "paper +17%"),
}
SWEEP_TITLES = {
    "I": "Clean accuracy with the clean batch's BN minus with PN (PGD-AT models)",
    "II": "Logit error of FGSM examples, clean batch's BN vs their own (PGD-AT models)",
    "III": "Size of PGD perturbations crafted with PN vs with BN (PGD-AT models)",
}


def _series(cells: Sequence[Mapping[str, Any]], dataset: str, axis: str, key: str):
    base = [c for c in cells if c["dataset"] == dataset and c["axis"] == "base"]
    pts = [c for c in cells if c["dataset"] == dataset and c["axis"] == axis] + base
    if axis == "depth":
        xs = [c["measures"]["bn_layers"] for c in pts]
    else:
        b_eps = base[0]["measures"]["eps"] if base else None
        xs = [c["measures"]["eps"] / b_eps if b_eps else None for c in pts]
    ys = [c["measures"].get(key) for c in pts]
    keep = sorted((x, y, c["variant"]) for x, y, c in zip(xs, ys, pts)
                  if x is not None and y is not None)
    return [k[0] for k in keep], [k[1] for k in keep], [k[2] for k in keep]


def seed_spread(cells: Sequence[Mapping[str, Any]], dataset: str, key: str) -> Optional[float]:
    """Half the range of the base cell's measure over its training seeds (None: one seed)."""
    vals = [c["measures"].get(key) for c in cells if c["dataset"] == dataset
            and c["axis"] in ("base", "seed") and c["measures"].get(key) is not None]
    return (max(vals) - min(vals)) / 2 if len(vals) > 1 else None


def sweep_figure(results: Mapping[str, Any], confounding: str) -> go.Figure:
    """The magnitude of one confounding (I, II or III) against the BN layers of the model
    (left) and against eps relative to the dataset's (right)."""
    key, ytitle, percent, paper, paper_label = SWEEP_MEASURES[confounding]
    cells = results.get("cells", [])
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    scale = 100 if percent else 1
    all_y: List[float] = [0.0]
    for ds in datasets:
        spread = seed_spread(cells, ds, key)
        for col, axis in ((1, "depth"), (2, "eps")):
            xs, ys, names = _series(cells, ds, axis, key)
            if not xs:
                continue
            ys_s = [y * scale for y in ys]
            all_y += ys_s
            err = None
            if spread is not None:
                err = dict(type="data", visible=True, thickness=1.2, width=4,
                           array=[spread * scale if n == "base" else 0 for n in names])
                all_y += [y + spread * scale for y in ys_s] + [y - spread * scale for y in ys_s]
            fig.add_trace(go.Scatter(
                x=xs, y=ys_s, mode="lines+markers", name=ds, legendgroup=ds,
                showlegend=col == 1, line=dict(color=DATASET_COLORS.get(ds), width=2.5,
                                               dash=DATASET_DASHES.get(ds, "solid")),
                marker=dict(symbol=DATASET_SYMBOLS.get(ds, "circle"), size=9),
                error_y=err, text=names,
                hovertemplate="%{text}: %{y:.3g}<extra>" + ds + "</extra>"), row=1, col=col)
    # the paper's value labels its dashed line in the right margin, never over the data
    if paper is not None:
        all_y.append(paper * scale)
        for col in (1, 2):
            fig.add_hline(y=paper * scale, line=dict(dash="dash", color="#444"), row=1, col=col)
        fig.add_annotation(text=paper_label.replace(" ", "<br>"), xref="paper", yref="y",
                           x=1.0, y=paper * scale, xanchor="left", yanchor="middle",
                           xshift=6, align="left", showarrow=False, font=dict(color="#444"))
        right = 50
    else:
        fig.add_annotation(text="paper:<br>no PN-vs-<br>BN number", xref="paper",
                           yref="y2 domain", x=1.0, y=1.0, xanchor="left", yanchor="top",
                           xshift=6, align="left", showarrow=False, font=dict(color="#444"))
        right = 85
    for col in (1, 2):
        fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=col)
    lo, hi = min(all_y), max(all_y)
    pad = 0.08 * (hi - lo or 1)
    fig.update_yaxes(range=[lo - pad, hi + pad], row=1, col=1)
    fig.update_yaxes(title_text=ytitle, row=1, col=1)
    fig.update_xaxes(title_text="BN layers in the model (depth)", row=1, col=1)
    fig.update_xaxes(title_text="eps / the dataset's eps", row=1, col=2)
    fig.update_layout(title=dict(text=SWEEP_TITLES[confounding]), margin=dict(r=right),
                      legend=dict(title=dict(text="error bar: seed spread;", side="left")))
    return fig


def lesson_i_figure(measures: Mapping[str, Any], title: str) -> go.Figure:
    """Clean test accuracy of the PGD-AT model with PN, with the clean test batch's own BN
    and with shaped inference 1:9, and of the shaped model with shaped inference."""
    labels = ["PGD-AT<br>[PN]", "PGD-AT<br>[clean-batch BN]", "PGD-AT<br>[shaped 1:9]",
              "PGD+shaping<br>[shaped 1:9]"]
    vals = [measures["acc_pn"], measures["acc_bn"], measures["acc_shaped"],
            measures["shaped_model_acc_shaped"]]
    fig = go.Figure(go.Bar(x=labels, y=vals, marker=dict(
        color=[PN_COLOR, BN_COLOR, SHAPED_COLOR, SHAPED_COLOR],
        pattern=dict(shape=["", "", "/", "/"], fgcolor="#ffffff", size=9, solidity=0.25)),
        text=[f"{v:.3f}" for v in vals], textposition="outside", cliponaxis=False,
        constraintext="none"))
    fig.update_layout(title=dict(text=title), yaxis_title="clean test accuracy (fraction)",
                      xaxis_title="model [classified with]", yaxis_range=[0, 1.08])
    return fig


def moving_target_animation(frames: Mapping[str, Any], title: str,
                            measure: str = "distance_to_clean_mean") -> go.Figure:
    """Per BN layer, the distance of the attacked batch's statistics to the clean batch's
    at each PGD step; ``frames``: ratio -> the ``moving_target`` trace frame (a DataFrame or
    its records). A play button and a slider walk the steps."""
    import pandas as pd

    data = {r: (f if isinstance(f, pd.DataFrame) else pd.DataFrame(f)) for r, f in frames.items()}
    ratios = list(data)
    first = data[ratios[0]]
    layers = list(dict.fromkeys(first["layer"]))
    names = [f"BN {i + 1}" for i in range(len(layers))]
    steps = sorted(set(first["step"]))
    # batch compositions, not norms (both are BN statistics): neither blue nor orange
    colors = [ALL_ADV_COLOR, SHAPED_BATCH_COLOR, "#8073ac"]
    patterns = ["", "/", "x"]
    label = {"1:0": "all adversarial (1:0)", "1:3": "shaped batch (1:3)"}

    def bars(t: int) -> List[go.Bar]:
        out = []
        for i, r in enumerate(ratios):
            f = data[r][data[r]["step"] == t].set_index("layer").reindex(layers)
            out.append(go.Bar(x=names, y=list(f[measure]), name=label.get(r, r), marker=dict(
                color=colors[i % 3], line=dict(color="#3f3f3f", width=1),
                pattern=dict(shape=patterns[i % 3], fgcolor="#3f3f3f", size=8,
                             solidity=0.2))))
        return out

    top = max(float(d[measure].max()) for d in data.values()) * 1.1 or 1.0
    fig = go.Figure(data=bars(steps[-1]),  # the last step first: the picture to explain
                    frames=[go.Frame(data=bars(t), name=str(t)) for t in steps])
    slider_steps = [dict(method="animate", label=str(t),
                         args=[[str(t)], dict(mode="immediate", frame=dict(duration=0,
                                                                          redraw=True),
                                              transition=dict(duration=0))]) for t in steps]
    fig.update_layout(
        title=dict(text=title), barmode="group",
        yaxis=dict(title="distance to clean means (std)", range=[0, top]),
        xaxis=dict(title="BatchNorm layer, input to output"),
        # the controls right under the axis title, in pixels below the plot (the slider's
        # pad), whatever height the chart gets
        updatemenus=[dict(type="buttons", direction="left", x=0, y=0, xanchor="left",
                          yanchor="top", pad=dict(t=62), showactive=False, buttons=[
                              dict(label="Play", method="animate",
                                   args=[None, dict(frame=dict(duration=500, redraw=True),
                                                    fromcurrent=False,
                                                    transition=dict(duration=200))]),
                              dict(label="Pause", method="animate",
                                   args=[[None], dict(mode="immediate",
                                                      frame=dict(duration=0, redraw=False))])])],
        sliders=[dict(active=len(steps) - 1, x=0.24, len=0.76, y=0, yanchor="top",
                      pad=dict(t=52), currentvalue=dict(prefix="PGD step "),
                      steps=slider_steps)])
    return fig


def lesson_iii_figure(measures: Mapping[str, Any], title: str) -> go.Figure:
    """Mean L2 size of PGD perturbations crafted with PN, with BN and through shaped 1:3
    batches, with the paper's relative sizes beside them."""
    labels = ["PN (constant)", "BN (own batch, moves)", "shaped batch 1:3"]
    vals = [measures["l2_pn"], measures["l2_bn"], measures["l2_shaped"]]
    fig = go.Figure(go.Bar(x=labels, y=vals, marker=dict(
        color=[PN_COLOR, BN_COLOR, SHAPED_COLOR],
        pattern=dict(shape=["", "", "/"], fgcolor="#ffffff", size=9, solidity=0.25)),
        text=[f"{v:.3f}" for v in vals], textposition="outside", cliponaxis=False,
        constraintext="none"))
    fig.update_layout(title=dict(text=title), yaxis_title="mean L2 of the perturbation "
                      "(input units)", xaxis_title="PGD crafted with",
                      yaxis_range=[0, max(vals) * 1.18 or 1])
    return fig


def claims_figure(results: Mapping[str, Any]) -> go.Figure:
    """The paper's numbers for Confoundings II and III beside this sweep's: the clearest
    cell (seed cells excluded) and the median over the datasets' own settings."""
    claims = [("II<br>logit error", "logit_gap", 0.63),
              ("III<br>PN vs BN", "pn_vs_bn", 0.17),
              ("III<br>shaped vs BN", "shaping_vs_bn", 0.41)]
    cells = [c for c in results.get("cells", []) if c["axis"] != "seed"]
    best, base = [], []
    for _, key, _ in claims:
        vals = [c["measures"][key] for c in cells if c["measures"].get(key) is not None]
        own = sorted(c["measures"][key] for c in cells if c["axis"] == "base"
                     and c["measures"].get(key) is not None)
        best.append(100 * max(vals) if vals else None)
        base.append(100 * own[len(own) // 2] if own else None)
    names = [c[0] for c in claims]
    # three sources, not norms: dark, light hatched and mid dotted (they differ in greyscale)
    def bar(y, name, color, pattern, text):
        return go.Bar(x=names, y=y, name=name, text=text, textposition="outside",
                      cliponaxis=False, constraintext="none", marker=dict(
                          color=color, line=dict(color="#3f3f3f", width=1),
                          pattern=dict(shape=pattern, fgcolor="#3f3f3f", size=8,
                                       solidity=0.2)))

    fig = go.Figure([
        bar([100 * c[2] for c in claims], "paper", PAPER_COLOR, "",
            [f"+{100 * c[2]:.0f}%" for c in claims]),
        bar(best, "clearest here", CLEAREST_COLOR, "/",
            [f"{v:+.0f}%" if v is not None else "" for v in best]),
        bar(base, "own settings (median)", MEDIAN_COLOR, ".",
            [f"{v:+.0f}%" if v is not None else "" for v in base])])
    top = max([100 * c[2] for c in claims] + [v for v in best + base if v is not None])
    low = min([0] + [v for v in best + base if v is not None])
    fig.update_layout(title=dict(text="The paper's numbers beside this lab's sweep"),
                      barmode="group", yaxis=dict(title="relative difference (%)",
                                                  range=[low * 1.2, top * 1.25]),
                      xaxis_title="confounding: measure")
    return fig


# ---------------------------------------------------------------- the deck's sentences
def pct(v: float) -> str:
    return f"{v:+.0%}"


def how_many(results: Mapping[str, Any], conf: str, threshold: float) -> str:
    """'k of N settings': the sweep's cells whose magnitude clears the effect threshold."""
    key = SWEEP_MEASURES[conf][0]
    vals = [c["measures"].get(key) for c in results["cells"]]
    vals = [v for v in vals if v is not None]
    k = sum(v >= threshold for v in vals)
    return f"{k} of {len(vals)} settings"


def lesson_takeaway(conf: str, m: Mapping[str, Any], shows_effect: bool, many: str) -> str:
    """The one-sentence lesson of a confounding's lesson slide (``m``: the lesson cell's
    measures, ``many``: ``how_many`` for that confounding)."""
    if conf == "I":
        gap = m["acc_gap_bn_pn"]
        if shows_effect:
            return (f"Here PN costs {gap:.3f} of clean accuracy against the clean batch's own "
                    f"statistics ({m['acc_pn']:.3f} vs {m['acc_bn']:.3f}); {many} show it.")
        return (f"No setting here shows it: even in the clearest one PN costs {gap:+.3f} "
                f"against clean-batch BN ({m['acc_pn']:.3f} vs {m['acc_bn']:.3f}).")
    if conf == "II":
        return (f"A shaped batch's statistics move {m['damping']:.1f}x less per PGD step than "
                f"an all-adversarial batch's; the logit-error gap is {pct(m['logit_gap'])} "
                f"here (paper +63%; {many} reach +10%).")
    if shows_effect:
        return (f"Crafted with constant PN, PGD perturbations are {pct(m['pn_vs_bn'])} larger "
                f"than with the batch's own moving BN here (paper +17%; {many} reach +5%).")
    return (f"No setting here shows it: at most {pct(m['pn_vs_bn'])} larger with PN than "
            "with BN (paper +17%).")


def sweep_takeaway(results: Mapping[str, Any], conf: str, threshold: float) -> str:
    """Where the sweep shows the confounding most, its range at each dataset's own setting,
    and how far seeds alone move it."""
    key = SWEEP_MEASURES[conf][0]
    cells = [c for c in results["cells"] if c["measures"].get(key) is not None]
    base = [c["measures"][key] for c in cells if c["axis"] == "base"]
    spread = max((seed_spread(cells, d, key) or 0) for d in {c["dataset"] for c in cells})
    best = max(cells, key=lambda c: c["measures"][key])
    fmt = (lambda v: f"{v:+.3f}") if conf == "I" else pct
    shows = best["measures"][key] >= threshold
    return (f"{'Clearest' if shows else 'Largest'} at {best['id']} "
            f"({fmt(best['measures'][key])}); at each dataset's own setting "
            f"{fmt(min(base))} to {fmt(max(base))}, and seeds alone move it ±"
            f"{fmt(spread).lstrip('+')}.")


def lesson_caption(choice: Mapping[str, Any], cell: Mapping[str, Any], paper_text: str) -> str:
    """Which lesson checkpoint a lesson slide shows (``choice``: its entry in lessons.json,
    ``cell``: its sweep cell) and why it was chosen."""
    m = cell["measures"]
    why = ("the largest effect of the whole sweep in the paper's direction"
           if choice["shows_effect"] else
           "the largest value of the sweep, and still below the threshold of an effect")
    return (f"Lesson checkpoint: {cell['dataset']}, {m['model']} with {m['bn_layers']} BN "
            f"layers, eps {m['eps']:g}, BN batch {m['batch']} (sweep cell {cell['id']}, "
            f"`checkpoints/lessons/{choice['checkpoints']['plain']}`), chosen as {why}. "
            f"Paper: {paper_text}.")
