"""Figures of the Ratios page: robust accuracy over training ratio x inference ratio, like the
paper's Table IV, and the paper's own table. Plotly only (no Streamlit, no torch)."""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import pandas as pd
import plotly.graph_objects as go

from normshape_core.base.names import INFERENCE_RATIOS
# The paper's Table IV (CIFAR-10, PGD+shaping, PGD crafted with PN, classified with BN+shaping).
PAPER_TABLE_IV = pd.DataFrame(
    [[0.477, 0.478, 0.476, 0.476, 0.477, 0.476],
     [0.385, 0.837, 0.835, 0.753, 0.668, 0.573],
     [0.281, 0.692, 0.820, 0.817, 0.813, 0.815],
     [0.039, 0.138, 0.706, 0.781, 0.776, 0.779]],
    index=["1:1", "1:2", "1:3", "1:7"], columns=list(INFERENCE_RATIOS))


def grid_heatmap(table: pd.DataFrame, title: str, n: Optional[pd.DataFrame] = None,
                 pending: Optional[Mapping[Tuple[str, str], Tuple[str, str]]] = None
                 ) -> go.Figure:
    """A table (rows: training ratios, columns: inference ratios adv:clean) of robust
    accuracies as an annotated heatmap on a 0-1 orange scale; missing cells blank. With ``n``
    (the same layout: each cell's test samples), hovering a cell shows its 95 %
    Clopper-Pearson interval and n. ``pending``: {(row, column): (short, long)} for cells
    still being computed: ``short`` written in the (blank) cell, ``long`` on hover (e.g. an
    anytime bound "<= 0.460" and "<= 0.460 after apgd; apgd_t, square to go")."""
    from normshape_core.base.stats import interval_text

    z = table.values.astype(float)
    text = [[("" if pd.isna(v) else f"{v:.3f}") for v in row] for row in z]
    counts = (n.reindex(index=table.index, columns=table.columns).values if n is not None
              else [[None] * z.shape[1]] * z.shape[0])
    hover = [[interval_text(None if pd.isna(v) else v, None if k is None or pd.isna(k)
                            else int(k)) or ("not computed yet" if pd.isna(v) else f"{v:.3f}")
              for v, k in zip(row, krow)] for row, krow in zip(z, counts)]
    for (r, c), (short, long) in (pending or {}).items():
        if r in table.index and c in table.columns:
            i, j = list(table.index).index(r), list(table.columns).index(c)
            if pd.isna(z[i][j]):
                text[i][j], hover[i][j] = short, long
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"1:{c.split(':')[1]}" for c in table.columns], y=list(table.index),
        text=text, texttemplate="%{text}", colorscale="Oranges", zmin=0, zmax=1,
        colorbar=dict(title="robust acc."), customdata=hover,
        hovertemplate="training %{y}, inference %{x}: %{customdata}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="inference ratio adv:clean (shaped inference)",
                      yaxis_title="training ratio adv:clean", yaxis_autorange="reversed",
                      xaxis_type="category", yaxis_type="category")
    return fig
