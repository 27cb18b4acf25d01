"""Figures of the Train page: a run's live curves (training loss, train and test accuracy,
drift of the running statistics) from its metric rows. Plotly and pandas only."""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple

import pandas as pd
import plotly.graph_objects as go

from normshape_core.figures.colors import CLEAN_COLOR, PN_COLOR, WRONG_COLOR


def split_rows(rows: Sequence[Dict[str, Any]]) -> Tuple[pd.DataFrame, pd.DataFrame, int]:
    """(training rows, evaluation rows, smoothing window): the window is about 1/40 of the
    training rows (1: no smoothing)."""
    df = pd.DataFrame([r for r in rows if "train/loss" in r])
    ev = pd.DataFrame([r for r in rows if any(k.startswith("test/") for k in r)])
    return df, ev, max(1, len(df) // 40)


def _smooth(s: pd.Series, window: int) -> pd.Series:
    return s.rolling(window, min_periods=1).mean() if window > 1 else s


def loss_figure(df: pd.DataFrame, window: int = 1) -> go.Figure:
    fig = go.Figure(go.Scatter(x=df["step"], y=_smooth(df["train/loss"], window),
                               name="training loss", line=dict(color="#333333")))
    fig.update_layout(title="Training loss<br><sup>of the trained batch (TRADES: its "
                            "objective)</sup>",
                      xaxis_title="training step", yaxis_title="training loss")
    return fig


def accuracy_figure(df: pd.DataFrame, ev: pd.DataFrame, window: int = 1,
                    label: Callable[[str], str] = str) -> go.Figure:
    """Train accuracy of the adversarial (red) and clean (green) rows with the batch's BN, and
    the test accuracies at epoch ends with PN (blue; robust dashed)."""
    fig = go.Figure()
    if "train/adv_acc" in df:
        fig.add_scatter(x=df["step"], y=_smooth(df["train/adv_acc"], window),
                        name="adversarial rows (train)", line=dict(color=WRONG_COLOR))
    if "train/clean_acc" in df:
        fig.add_scatter(x=df["step"], y=_smooth(df["train/clean_acc"], window),
                        name="clean rows (train)", line=dict(color=CLEAN_COLOR))
    for col in [c for c in ev.columns if c.startswith("test/")]:
        robust = "robust" in col
        fig.add_scatter(x=ev["step"], y=ev[col], mode="lines+markers",
                        name=f"test {label(col)}".replace(" acc.", ""),
                        line=dict(color=PN_COLOR, dash="dash" if robust else "solid"))
    fig.update_layout(title="Accuracy<br><sup>train rows with BN of the batch; test at epoch "
                            "ends with PN</sup>",
                      xaxis_title="training step", yaxis_title="accuracy (fraction)",
                      yaxis_range=[0, 1.02], legend=dict(orientation="h", y=-0.4))
    return fig


def drift_figure(df: pd.DataFrame, window: int = 1) -> go.Figure:
    """Relative change per step of the running mean and variance (PN), log scale."""
    fig = go.Figure()
    for col, dash, name in (("bn/running_mean_drift", "solid", "running mean"),
                            ("bn/running_var_drift", "dot", "running variance")):
        if col in df:
            fig.add_scatter(x=df["step"], y=_smooth(df[col], window), name=name,
                            line=dict(color=PN_COLOR, dash=dash))
    fig.update_layout(title="Running-statistics (PN) drift<br><sup>relative change per step, "
                            "mean over BN layers</sup>",
                      xaxis_title="training step", yaxis_type="log",
                      yaxis_title="relative change per step", legend=dict(orientation="h", y=-0.4))
    return fig
