"""Tables the pages show (Compare): the side-by-side table with each row's best value
highlighted among comparable columns, every accuracy with its 95 % interval and n, the
paper's Tables I-II layout, differing settings in yellow. Names are shown as text (escaped),
never as Markdown."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import pandas as pd
import streamlit as st

from normshape_app.style import md_escape
from normshape_core.figures.compare import CLASSIFIED, CLEAN, MEASURE, classifier_rank

BEST_CSS = "background-color: #fde0c5; font-weight: bold"


def accuracy_cell(value: float, n: int) -> str:
    """An accuracy as a table cell: the value, and under it, small and grey, its 95 %
    Clopper-Pearson interval and n (Markdown of st.table)."""
    from normshape_core.base.stats import Proportion

    p = Proportion.of(value, n)
    return f"{p.value:.3f}  \n:small[:gray[[{p.low:.3f}, {p.high:.3f}], n={p.n}]]"


def interval_cell(value: float, n: int) -> str:
    """An accuracy on one line with its interval: ``0.415 [0.366, 0.466]`` (n said once)."""
    from normshape_core.base.stats import Proportion

    p = Proportion.of(value, n)
    return f"{p.value:.3f} [{p.low:.3f}, {p.high:.3f}]"


def side_by_side_frames(measures: Mapping[str, pd.DataFrame],
                        pending: Optional[Mapping[str, Dict[tuple, str]]] = None):
    """(values, shown): the rows (measure, classified with) of every checkpoint's
    ``figures.compare.measures`` in one order, as numbers (NaN where missing) and as the
    cells shown (accuracy, interval and n; a pending cell's text, e.g. the anytime bound of
    a worst case still running). ``pending``: id -> {(measure, classified with): text}."""
    pending = pending or {}
    keys = []
    for cid, m in measures.items():
        keys += list(zip(m[MEASURE], m[CLASSIFIED]))
    for cid, p in pending.items():
        keys += list(p)
    seen = list(dict.fromkeys(keys))
    first = {}
    for i, (meas, _) in enumerate(seen):
        first.setdefault(meas, i)
    def group(meas: str) -> int:  # clean first, the worst case next, then the attacks
        return 0 if meas == CLEAN else 1 if meas.startswith("worst case") else 2

    rows = sorted(seen, key=lambda k: (group(k[0]), first[k[0]], classifier_rank(k[1])))
    values = pd.DataFrame(index=pd.MultiIndex.from_tuples(rows, names=[MEASURE, CLASSIFIED]),
                          columns=list(measures), dtype=float)
    shown = pd.DataFrame("–", index=values.index, columns=list(measures), dtype=object)
    for cid, m in measures.items():
        for meas, clf, v, n in m[[MEASURE, CLASSIFIED, "value", "n"]].itertuples(index=False):
            values.loc[(meas, clf), cid] = v
            shown.loc[(meas, clf), cid] = accuracy_cell(v, n)
    for cid, p in pending.items():
        for key, text in p.items():
            if pd.isna(values.loc[key, cid]):
                shown.loc[key, cid] = md_escape(text)
    return values, shown


def best_mask(values: pd.DataFrame) -> pd.DataFrame:
    """Each row's best value (when at least two columns have one and they differ): the
    columns given must be comparable (one dataset, one eps)."""
    mask = pd.DataFrame(False, index=values.index, columns=values.columns)
    for key, row in values.iterrows():
        vals = row.dropna()
        if len(vals) >= 2 and vals.max() != vals.min():
            mask.loc[key, vals.index[vals == vals.max()]] = True
    return mask


def side_by_side(measures: Mapping[str, pd.DataFrame], names: Mapping[str, str],
                 pending: Optional[Mapping[str, Dict[tuple, str]]] = None) -> pd.DataFrame:
    """The table as an HTML table (``st.table``): headers and cells wrap, so at any width every
    header is whole and every accuracy column on screen; each accuracy with its interval and
    n on a second line; the best value of each row highlighted. The columns must be
    comparable (one dataset, one eps): the page draws one table per group. Names are shown
    as text, never as Markdown. Returns the numbers (for the CSV download)."""
    values, shown = side_by_side_frames(measures, pending)
    mask = best_mask(values)
    cols = [md_escape(names[c]) for c in values.columns]
    table = shown.reset_index()
    table[MEASURE] = table[MEASURE].map(md_escape)
    table[CLASSIFIED] = table[CLASSIFIED].map(md_escape)
    table.columns = [MEASURE, CLASSIFIED] + cols
    css = pd.DataFrame("", index=table.index, columns=table.columns)
    for j, cid in enumerate(values.columns):
        css[cols[j]] = [BEST_CSS if b else "" for b in mask[cid]]
    st.table(table.style.hide(axis="index").apply(lambda _: css, axis=None))
    return values.reset_index().rename(columns=dict(names))


def highlight_differing(row: pd.Series):
    """A row whose values differ between the columns, in yellow."""
    differ = row.astype(str).nunique() > 1
    return ["background-color: #fff3b0" if differ else ""] * len(row)


def ordered_rows(df: pd.DataFrame) -> pd.DataFrame:
    """An evaluation's rows with the inference modes in the one order (PN, BN, shaped)."""
    if not len(df):
        return df
    keys = [classifier_rank(c) for c in df["classified_with"]]
    return df.iloc[sorted(range(len(df)), key=lambda i: keys[i])]


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """An evaluation's rows in the layout of the paper's Tables I-II, flat columns; each
    accuracy with its 95 % interval (the samples' n is the same for the whole table)."""
    from normshape_core.measuring.evaluation import table_like_paper

    d = ordered_rows(df)
    t = table_like_paper(d)
    if t.empty:
        return t
    n = int(d["n"].iloc[0])
    t = t.apply(lambda col: col.map(lambda v: "–" if pd.isna(v) else interval_cell(v, n)))
    t.columns = [f"{clf} | {m}" for clf, m in t.columns]
    t = t.reset_index()
    t.columns = ["attack", "crafted with"] + list(t.columns[2:])
    return t


def paper_table_iii(df: pd.DataFrame) -> pd.DataFrame:
    """Table III's layout (adaptive attacks on shaped inference), each robust accuracy with its
    95 % interval."""
    from normshape_core.measuring.evaluation import table_iii

    t = table_iii(df)
    n = int(df["n"].iloc[0]) if len(df) else 0
    return t.apply(lambda col: col.map(lambda v: "–" if pd.isna(v) else interval_cell(v, n)))


def settings_table(configs: Mapping[str, Dict], only_diff: bool) -> None:
    """The training settings of each checkpoint (rows) side by side, those that differ in
    yellow; the setting's whole name is in its own first column."""
    settings = pd.DataFrame({cid: {k: ("-" if v is None else v) for k, v in cfg.items()}
                             for cid, cfg in configs.items()}).astype(str)
    if only_diff:
        settings = settings[settings.nunique(axis=1) > 1]
    settings.index.name = "setting"
    settings = settings.reset_index()
    width = max([len("setting")] + [len(k) for k in settings["setting"]]) * 8 + 24
    st.dataframe(settings.style.apply(lambda row: [""] + highlight_differing(row[1:]), axis=1),
                 key="cmp_settings", hide_index=True, height=36 * (len(settings) + 1) + 4,
                 column_config={"setting": st.column_config.TextColumn("setting",
                                                                        width=width)})


# ---------------------------------------------------------------- Table IV (the Ratios page)
def heat(acc: pd.DataFrame, n, title: str, key: str, pending=None, columns: int = 2) -> None:
    """A Table IV heatmap (``figures.ratios.grid_heatmap``), ``columns`` to a row."""
    from normshape_app.style import show
    from normshape_core.figures.ratios import grid_heatmap

    show(grid_heatmap(acc, title, n, pending), key=key, height=380 if columns > 1 else 340,
         legend=False, columns=columns)


class GridView:
    """The Ratios page's grids over its chosen checkpoints ({training label: checkpoint}),
    inference ratios and samples: each cell read where stored; a worst-case grid's missing
    cells as background jobs (their anytime bounds in the cells), the others computed here."""

    def __init__(self, chosen, ratios, n_test: int, steps: int, columns: int = 2):
        self.chosen, self.ratios, self.n_test, self.steps = chosen, list(ratios), n_test, steps
        self.columns = columns  # heatmaps to a row

    def _worst(self, attack: str) -> bool:
        from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

        return attack == DEFAULT_ENSEMBLE

    def settings_of(self, attack: str):
        from normshape_app import results as R

        if self._worst(attack):
            return lambda ck: R.grid_worst_settings(ck.dataset, self.n_test)
        return lambda ck: R.grid_settings(self.n_test, self.steps)

    def grid(self, attack: str, crafted_with, compute: bool = False):
        """(accuracy, n) of the grid, the missing cells NaN (``compute``: computed here)."""
        from normshape_app import results as R
        from normshape_core.measuring.evaluation import WORST

        dfs = R.shaped_grid_rows(self.chosen, self.ratios, attack, self.settings_of(attack),
                                 compute=compute, title="Computing the missing cells",
                                 key=f"ratios_{attack}")
        return R.grid_table(dfs, list(self.chosen), self.ratios,
                            WORST if self._worst(attack) else attack, crafted_with)

    def computed_grid(self, slot, attack: str, crafted_with, title: str, key: str):
        """Drawn at once from the stored cells into ``slot`` (replacing the last view's),
        then the missing cells computed here (progress, Cancel) and the grid redrawn."""
        acc, n = self.grid(attack, crafted_with)
        if acc.isna().any().any():
            with slot.container():
                heat(acc, n, title, f"{key}_stored", columns=self.columns)
            acc, n = self.grid(attack, crafted_with, compute=True)
        with slot.container():
            heat(acc, n, title, key, columns=self.columns)
        return acc

    def jobs(self):
        from normshape_app import results as R
        from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

        return R.grid_jobs(self.chosen, self.ratios, DEFAULT_ENSEMBLE,
                           self.settings_of(DEFAULT_ENSEMBLE))

    def worst_running(self) -> bool:
        return bool(self.jobs()[1])

    def worst_grid(self, title: str, key: str) -> None:
        """The worst-case grid: the stored cells; the missing ones run as background jobs
        (one per checkpoint) and show their bound so far. Meant as a fragment redrawn every
        2 s while a job runs; once they end, the whole page is run again."""
        from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

        acc, n = self.grid(DEFAULT_ENSEMBLE, None)
        pending, running = self.jobs()
        heat(acc, n, title, key, pending, columns=self.columns)
        if running:
            st.caption(f"{len(pending)} cells run in the background (they go on if you leave "
                       "this page); each shows its bound so far: robust accuracy is at most "
                       "that.")
        elif st.session_state.pop("ratios_waiting", False):
            st.rerun(scope="app")
        st.session_state.ratios_waiting = bool(running)
