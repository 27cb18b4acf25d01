"""Tables the pages show (Compare): the side-by-side table with each row's best value
highlighted, the paper's Tables I-II layout, differing settings in yellow. Names are shown as
text (escaped), never as Markdown."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from normshape_app.style import md_escape
from normshape_core.figures.compare import CLASSIFIED, MEASURE


def highlight_best(row: pd.Series, columns):
    """Each row's best value among ``columns`` (when they differ) highlighted."""
    vals = pd.to_numeric(row[columns], errors="coerce")
    best = vals.max() if vals.notna().sum() >= 2 and vals.max() != vals.min() else None
    return ["background-color: #fde0c5; font-weight: bold"
            if best is not None and k in columns and row[k] == best else "" for k in row.index]


def highlight_differing(row: pd.Series):
    """A row whose values differ between the columns, in yellow."""
    differ = row.astype(str).nunique() > 1
    return ["background-color: #fff3b0" if differ else ""] * len(row)


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """An evaluation's rows in the layout of the paper's Tables I-II, flat columns."""
    from normshape_core.evaluation import table_like_paper

    t = table_like_paper(df)
    if t.empty:
        return t
    t.columns = [f"{clf} | {m}" for clf, m in t.columns]
    t = t.reset_index()
    t.columns = ["attack", "crafted with"] + list(t.columns[2:])
    return t


def side_by_side(table: pd.DataFrame, names) -> None:
    """The table as an HTML table (``st.table``): headers and cells wrap, so at any width every
    header is whole and every accuracy column on screen. Names are shown as text, never as
    Markdown."""
    shown = table.rename(columns={c: md_escape(names[c]) for c in names})
    cols = [md_escape(names[c]) for c in names]
    st.table(shown.style.hide(axis="index")
             .apply(highlight_best, columns=cols, axis=1)
             .format("{:.3f}", subset=cols, na_rep="–")
             .format(md_escape, subset=[MEASURE, CLASSIFIED]))
