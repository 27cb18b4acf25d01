"""Figures of the Compare page: clean and robust accuracy of each checkpoint as horizontal
bars, every number naming the norms it was crafted with and classified with, and the
training curves overlaid. Plotly and pandas only (no Streamlit, no torch)."""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from normshape_core.figures.colors import BN_COLOR, PN_COLOR, SHAPED_COLOR
from normshape_core.base.names import WORST

# Colours of each checkpoint's curves: none of them is PN's or BN's colour.
CKPT_COLORS = ["#6a3d9a", "#1b9e77", "#8c564b", "#e7298a"]
# How each attack is named on this page (the norms it crafts with are in the name where they
# are part of the attack).
ATTACK_NAMES = {"pgd": "PGD-20", "fgsm": "FGSM",
                "apgd": "APGD-CE", "apgd_t": "APGD-T", "square": "Square", "cw": "C&W-L2",
                "deepfool": "DeepFool", "shaping": "shaping attack (BN 1:3)",
                "adaptive_exact": "adaptive (exact refs)",
                "adaptive_eot": "adaptive (EOT, own refs)"}
CLEAN = "clean (no attack)"
MEASURE, CLASSIFIED = "attack, crafted with", "classified with"


def norm_colour(classified_with: str) -> str:
    """PN blue, shaped inference dark orange, any other batch norms orange."""
    if classified_with.startswith("shaped"):
        return SHAPED_COLOR
    return PN_COLOR if str(classified_with).strip().upper().startswith("PN") else BN_COLOR


def measure_name(attack: str, crafted_with: str, ensemble=None) -> str:
    """``PGD-20, crafted PN``; the shaping and adaptive attacks carry their norms in the name;
    the worst case is crafted through each classifier's own norms."""
    if attack == WORST:
        return f"worst case ({str(ensemble).split(':')[0]}), crafted with its own norms"
    name = ATTACK_NAMES.get(attack, attack)
    return name if attack == "shaping" or attack.startswith("adaptive") else \
        f"{name}, crafted {crafted_with}"


def classifier_rank(classified_with: str) -> tuple:
    """The one order of inference modes on every page: PN, BN, then shaped inference by its
    share of clean references (1:0, 1:1, 1:3, 1:9, ...)."""
    c = str(classified_with)
    if c.upper().startswith("PN"):
        return (0, 0.0, c)
    if c.upper().startswith("BN"):
        return (1, 0.0, c)
    m = re.match(r"shaped (\d+):(\d+)", c)
    return (2, int(m.group(2)) / max(int(m.group(1)), 1) if m else float("inf"), c)


def measures(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (measure, classified with) of an evaluation's rows, with the accuracy and
    its n: first the clean rows, then the worst case, then each attack in the order asked,
    every measure's inference modes in the one order (PN, BN, shaped). Every number says
    crafted-with and classified-with. A clean row is measured on the same samples as the
    robust rows (the page evaluates every row of a checkpoint on the same n); when a
    checkpoint's rows had several n, a clean row is the worst case's."""
    cols = [MEASURE, CLASSIFIED, "value", "n"]
    if df is None or not len(df):
        return pd.DataFrame(columns=cols)
    ens = df["ensemble"].notna() if "ensemble" in df else pd.Series(False, index=df.index)
    out = []
    for clf, part in df.groupby("classified_with", sort=False):
        worst = part[part["attack"] == WORST]
        r = (worst if len(worst) else part).iloc[0]
        out.append((CLEAN, clf, float(r["clean_acc"]), int(r["n"]), 0))
    kept = df[~ens | (df["attack"] == WORST)]  # an ensemble: its worst case
    order = {}
    for _, r in kept.iterrows():
        name = measure_name(r["attack"], r["crafted_with"], r.get("ensemble"))
        rank = order.setdefault(name, 1 if r["attack"] == WORST else 2 + len(order))
        out.append((name, r["classified_with"], float(r["robust_acc"]), int(r["n"]), rank))
    out.sort(key=lambda t: (t[4], classifier_rank(t[1])))
    return pd.DataFrame([t[:4] for t in out], columns=cols).drop_duplicates(
        subset=[MEASURE, CLASSIFIED]).reset_index(drop=True)


def wrap(text: str, width: int = 40) -> str:
    """A long run name on several lines (plotly titles do not wrap), broken after '-' or ' '."""
    lines, line = [], ""
    for piece in re.findall(r"[^- ]+[- ]?", text):
        if line and len(line) + len(piece) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    return "<br>".join(lines + [line.rstrip()])


def accuracy_bars_figure(results: Mapping[str, pd.DataFrame], names: Mapping[str, str]):
    """(figure, height in px): one panel per checkpoint (``results``: id -> its evaluation
    rows), stacked, with horizontal bars: the measure names sit on the y axis, where they
    never overlap, and each panel has the page's whole width. The colour key is in the
    subtitle (a legend would sit on the panels at small widths)."""
    from normshape_core.base.stats import Proportion

    chosen = list(results)
    rows = {cid: measures(results[cid]) for cid in chosen}
    order = list(dict.fromkeys(m for cid in chosen for m in rows[cid][MEASURE]))
    classifiers = sorted(dict.fromkeys(c for cid in chosen for c in rows[cid][CLASSIFIED]),
                         key=classifier_rank)
    titles = [wrap(names[c]) for c in chosen]
    panel = 18 * len(order) * len(classifiers) + 40  # px of bars per checkpoint
    gap = 40 + 17 * max(t.count("<br>") + 1 for t in titles)  # px for a panel's title
    height = min(2400, 110 + (panel + gap) * len(chosen))
    fig = make_subplots(rows=len(chosen), cols=1, shared_xaxes=True,
                        vertical_spacing=gap / (height - 110), subplot_titles=titles)
    for i, cid in enumerate(chosen, start=1):
        values = rows[cid]
        for clf in classifiers[::-1]:  # grouped horizontal bars stack upwards: PN on top
            d = values[values[CLASSIFIED] == clf]
            props = [Proportion.of(v, n) for v, n in zip(d["value"], d["n"])]
            fig.add_bar(y=list(d[MEASURE]), x=list(d["value"]), orientation="h",
                        name=f"classified with {clf}", legendgroup=clf, showlegend=False,
                        marker_color=norm_colour(clf),
                        error_x=dict(type="data", symmetric=False, thickness=1, width=2,
                                     color="#444444",
                                     array=[p.high - p.value for p in props],
                                     arrayminus=[p.value - p.low for p in props]),
                        customdata=[p.text() for p in props],
                        hovertemplate="%{y}: %{customdata}<extra>" + f"classified with {clf}"
                                      + "</extra>", row=i, col=1)
        fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], automargin=True,
                         row=i, col=1)
    fig.update_xaxes(range=[0, 1], dtick=0.2, showticklabels=True)
    fig.update_xaxes(title_text="accuracy (fraction)", row=len(chosen), col=1)
    fig.update_annotations(font_size=13)
    key = " ".join(f"<span style='color:{norm_colour(c)}'>■ {c}</span>" for c in classifiers)
    fig.update_layout(barmode="group", bargap=0.22,
                      title=f"Clean and robust accuracy of each checkpoint<br><sup>classified "
                            f"with {key}; whiskers: 95 % interval</sup>")
    return fig, height


def training_curves_figure(metrics: Mapping[str, Sequence[Dict[str, Any]]],
                           label: Callable[[str], str] = str) -> go.Figure:
    """Two panels: the training loss (smoothed over about 1/40 of the run) and the test
    accuracies at epoch ends, one colour per checkpoint (``metrics``: id -> its metric rows;
    ``label``: a metric key's readable name), robust accuracies dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Training loss",
                                                        "Test accuracy at epoch ends (PN)"])
    for i, (cid, rows) in enumerate(metrics.items()):
        color = CKPT_COLORS[i % len(CKPT_COLORS)]
        tr = pd.DataFrame([r for r in rows if "train/loss" in r])
        ev = pd.DataFrame([r for r in rows if any(k.startswith("test/") for k in r)])
        if not tr.empty:
            w = max(1, len(tr) // 40)
            fig.add_scatter(x=tr["step"], y=tr["train/loss"].rolling(w, min_periods=1).mean(),
                            name=cid, legendgroup=cid, line=dict(color=color), row=1, col=1)
        for col in [c for c in ev.columns if c.startswith("test/")]:
            fig.add_scatter(x=ev["step"], y=ev[col], mode="lines+markers", legendgroup=cid,
                            name=f"{cid}: {label(col)}", showlegend=True,
                            line=dict(color=color, dash="dash" if "robust" in col else "solid"),
                            row=1, col=2)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (fraction)", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="Training curves overlaid", legend=dict(orientation="h", y=-0.3))
    return fig
