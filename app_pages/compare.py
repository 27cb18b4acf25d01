"""Compare: two to four checkpoints side by side, laid out like the paper's Tables I-III."""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st
from plotly.subplots import make_subplots

from normshape_app import ui
from normshape_core import jobs
from normshape_core.evaluation import WORST, table_iii, table_like_paper

ATTACKS = ["autoattack", "pgd", "fgsm", "apgd", "apgd_t", "square", "cw", "deepfool", "shaping",
           "adaptive_exact", "adaptive_eot"]
ATTACK_HELP = ("autoattack: the headline, the worst case per sample over APGD-CE, APGD-T, "
               "FAB-T and Square, each classifier attacked through its own norms (PN; the test "
               "batch's BN; the exact shaped batches), on the reproduction's test samples; "
               "pgd/fgsm/apgd/apgd_t/square: L-inf, crafted with PN (and BN when asked); cw, "
               "deepfool: minimal L2 attacks; shaping: the paper's shaping attack (BN, 1:3 "
               "batches of test samples); adaptive_exact: crafted through the defender's exact "
               "shaped batches (Table III); adaptive_eot: the attacker's own references, EOT "
               "(Table III, weaker)")
# Colours of each checkpoint's curves: none of them is PN's or BN's colour.
CKPT_COLORS = ["#6a3d9a", "#1b9e77", "#8c564b", "#e7298a"]


# How each attack is named on this page (the norms it crafts with are in the name where they
# are part of the attack).
ATTACK_NAMES = {"autoattack": "worst case (autoattack)", "pgd": "PGD-20", "fgsm": "FGSM",
                "apgd": "APGD-CE", "apgd_t": "APGD-T", "square": "Square", "cw": "C&W-L2",
                "deepfool": "DeepFool", "shaping": "shaping attack (BN 1:3)",
                "adaptive_exact": "adaptive (exact refs)",
                "adaptive_eot": "adaptive (EOT, own refs)"}
CLEAN = "clean (no attack)"
MEASURE, CLASSIFIED = "attack, crafted with", "classified with"


def norm_colour(classified_with: str) -> str:
    if classified_with.startswith("shaped"):
        return "#a63603"  # shaped inference: BN's family, darker
    return ui.norm_color(classified_with)


def measure_name(attack: str, crafted_with: str, ensemble=None) -> str:
    """``PGD-20, crafted PN``; the shaping and adaptive attacks carry their norms in the name;
    the worst case is crafted through each classifier's own norms."""
    if attack == WORST:
        return f"worst case ({str(ensemble).split(':')[0]}), crafted with its own norms"
    name = ATTACK_NAMES.get(attack, attack)
    return name if attack == "shaping" or attack.startswith("adaptive") else \
        f"{name}, crafted {crafted_with}"


def measures(df: pd.DataFrame) -> pd.Series:
    """One value per (measure, classified with): every number says crafted-with and
    classified-with."""
    out = {}
    for clf, acc in df.groupby("classified_with", sort=False)["clean_acc"].first().items():
        out[(CLEAN, clf)] = acc
    ens = df["ensemble"].notna() if "ensemble" in df else pd.Series(False, index=df.index)
    for _, r in df[~ens | (df["attack"] == WORST)].iterrows():  # an ensemble: its worst case
        out[(measure_name(r["attack"], r["crafted_with"], r.get("ensemble")),
             r["classified_with"])] = r["robust_acc"]
    return pd.Series(out)


def highlight_best(row: pd.Series, columns):
    vals = pd.to_numeric(row[columns], errors="coerce")
    best = vals.max() if vals.notna().sum() >= 2 and vals.max() != vals.min() else None
    return ["background-color: #fde0c5; font-weight: bold"
            if best is not None and k in columns and row[k] == best else "" for k in row.index]


def highlight_differing(row: pd.Series):
    differ = row.astype(str).nunique() > 1
    return ["background-color: #fff3b0" if differ else ""] * len(row)


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
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
    shown = table.rename(columns={c: ui.md_escape(names[c]) for c in names})
    cols = [ui.md_escape(names[c]) for c in names]
    st.table(shown.style.hide(axis="index")
             .apply(highlight_best, columns=cols, axis=1)
             .format("{:.3f}", subset=cols, na_rep="–")
             .format(ui.md_escape, subset=[MEASURE, CLASSIFIED]))


def bar_chart(results, names) -> None:
    """One panel per checkpoint, stacked, with horizontal bars: the measure names sit on the
    y axis, where they never overlap, and each panel has the page's whole width. The colour
    key is in the subtitle (a legend would sit on the panels at small widths)."""
    chosen = list(results)
    rows = {cid: measures(results[cid]) for cid in chosen}
    order = list(dict.fromkeys(m for cid in chosen for m, _ in rows[cid].index))
    classifiers = list(dict.fromkeys(c for cid in chosen for _, c in rows[cid].index))
    titles = [wrap(names[c]) for c in chosen]
    panel = 18 * len(order) * len(classifiers) + 40  # px of bars per checkpoint
    gap = 40 + 17 * max(t.count("<br>") + 1 for t in titles)  # px for a panel's title
    height = min(2400, 110 + (panel + gap) * len(chosen))
    fig = make_subplots(rows=len(chosen), cols=1, shared_xaxes=True,
                        vertical_spacing=gap / (height - 110), subplot_titles=titles)
    for i, cid in enumerate(chosen, start=1):
        values = rows[cid]
        for clf in classifiers[::-1]:  # grouped horizontal bars stack upwards: PN on top
            d = values[[k for k in values.index if k[1] == clf]]
            fig.add_bar(y=[m for m, _ in d.index], x=list(d.values), orientation="h",
                        name=f"classified with {clf}", legendgroup=clf, showlegend=False,
                        marker_color=norm_colour(clf),
                        hovertemplate="%{y}: %{x:.3f}<extra>" + f"classified with {clf}"
                                      + "</extra>", row=i, col=1)
        fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], automargin=True,
                         row=i, col=1)
    fig.update_xaxes(range=[0, 1], dtick=0.2, showticklabels=True)
    fig.update_xaxes(title_text="accuracy (fraction)", row=len(chosen), col=1)
    fig.update_annotations(font_size=13)
    fig.update_layout(barmode="group", bargap=0.22)
    key = " ".join(f"<span style='color:{norm_colour(c)}'>■ {c}</span>" for c in classifiers)
    ui.show(fig, key="cmp_bars", height=height, legend=False,
            title=f"Clean and robust accuracy of each checkpoint<br><sup>classified with "
                  f"{key}</sup>")


def wrap(text: str, width: int = 40) -> str:
    """A long run name on several lines (plotly titles do not wrap), broken after '-' or ' '."""
    lines, line = [], ""
    for piece in re.findall(r"[^- ]+[- ]?", text):
        if line and len(line) + len(piece) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    return "<br>".join(lines + [line.rstrip()])


def upload_section() -> None:
    limit = ui.max_upload_mb()  # the server's limit (.streamlit/config.toml), said once here
    st.markdown("**Upload a checkpoint** (`model.safetensors` + `model.json`, as written by "
                f"normshape; up to {limit} MB per file). It is checked before use: metadata "
                "that passes the checkpoint schema (known dataset, model and settings, a "
                "bounded model size, a dataset present on this server), weights that match "
                "their SHA-256 and fit the model. Pickle files are refused, never opened.")
    files = st.file_uploader("Checkpoint files", type=["safetensors", "json"],
                             accept_multiple_files=True, key="cmp_upload",
                             max_upload_size=limit,
                             help=f"At most {limit} MB per file: larger files are refused by "
                                  "the upload box itself.")
    if not files:
        return
    weights = [f for f in files if f.name.endswith(".safetensors")]
    metas = [f for f in files if f.name.endswith(".json")]
    if len(weights) != 1 or len(metas) != 1:
        st.error("Upload exactly one .safetensors file and its .json metadata.")
        return
    try:
        up = ui.import_checkpoint(weights[0].getvalue(), metas[0].getvalue(), weights[0].name,
                                  known={c.sha: c.id for c in ui.checkpoints()},
                                  meta_filename=metas[0].name)
    except (ValueError, OSError) as e:  # OSError: the uploads folder cannot be written
        st.error(f"Not accepted: {ui.message_text(e)}")
        return
    if up.stored:
        st.success(f"Accepted and stored as {ui.md_code(up.name)}: it is now listed on every "
                   "page.")
    else:
        st.success(f"Accepted: these weights are those of {ui.md_code(up.name)} (same SHA-256), "
                   "already listed on every page; nothing was stored again.")


st.title("Compare checkpoints")
ckpts = ui.checkpoints()
if len(ckpts) < 1:
    ui.no_checkpoints_message()
    with st.container(border=True):
        upload_section()
    st.stop()

ids = [c.id for c in ckpts]
by_id = {c.id: c for c in ckpts}


def default_selection():
    """natural, PGD adv only and PGD + shaping 1:3 of the dataset with the most runs."""
    ds = max(sorted({c.dataset for c in ckpts}),  # most runs; 2-D sets first on a tie
             key=lambda d: (sum(c.dataset == d for c in ckpts),
                            any(c.is_2d for c in ckpts if c.dataset == d)))
    pick = []
    for want in (("natural", None, None), ("pgd", "none", None), ("pgd", "attack+train", "1:3")):
        for c in ckpts:
            cfg = c.config
            if c.dataset == ds and cfg["method"] == want[0] and \
                    not cfg.get("polluted_running_stats") and \
                    (want[1] is None or cfg["shaping"] == want[1]) and \
                    (want[2] is None or cfg["ratio"] == want[2]) and c.id not in pick:
                pick.append(c.id)
                break
    return pick if len(pick) >= 2 else ids[:2]


with ui.settings_block():
    chosen = st.multiselect("Checkpoints (two to four)", ids, default=default_selection(),
                            max_selections=4, key="cmp", bind="query-params")
    attacks = st.multiselect("Attacks", ATTACKS, key="cmp_attacks", bind="query-params",
                             default=ui.compare_default_attacks(
                                 [by_id[c] for c in chosen if c in by_id]), help=ATTACK_HELP)
    c2, c3, c4 = st.columns(3)
    ratio = c2.selectbox("Shaped inference ratio adv:clean", ["1:3", "1:9", "1:19"], index=1,
                         key="cmp_ratio", bind="query-params",
                         help="The paper's Tables I-II use 1:9 (nine clean samples per test "
                              "sample)")
    n_test = c3.select_slider("Test samples", [100, 200, 500, 1000], value=200, key="cmp_n",
                              bind="query-params")
    also_bn = c4.toggle("Also craft with BN", value=False, key="cmp_bn", bind="query-params",
                        help="Besides the paper's PN-crafted attacks, craft pgd/fgsm/apgd "
                             "through each test batch's own BN")

chosen = [c for c in chosen if c in by_id]
if len(chosen) < 2:
    st.info("Choose at least two checkpoints to compare.")
if not chosen or not attacks:
    st.stop()

cks = [by_id[c] for c in chosen]
names = {ck.id: ck.column_name() for ck in cks}
if "autoattack" not in attacks:
    st.info("The headline robust accuracy is the **worst case** per sample over APGD-CE, "
            "APGD-T, FAB-T and Square, each classifier attacked through its own norms: add "
            "**autoattack** to the attacks to see it beside the paper's PGD-20 (computed once "
            "per checkpoint, minutes on CPU; the shipped checkpoints have it already).")
# One evaluation per (checkpoint, attack): adding an attack computes only that attack.
results = ui.evaluations_by_attack(
    cks, attacks, lambda ck, attack: ui.worst_case_settings(ck.dataset, ratio)
    if attack == "autoattack" else ui.compare_settings(
        [attack], ratio, min(n_test, ui.test_set_size(ck.dataset)), also_bn),
    title="Evaluating", key="cmp_progress",
    label_of=lambda ck, attack: f"{ck.id}: {ATTACK_NAMES.get(attack, attack)}")
if len({ck.dataset for ck in cks}) > 1:
    st.warning("These checkpoints come from different datasets: their numbers are not "
               "comparable.")

st.subheader("Side by side")
table = pd.DataFrame({cid: measures(results[cid]) for cid in chosen})
table.index.names = [MEASURE, CLASSIFIED]
table = table.reset_index()
side_by_side(table, names)
eps = sorted({f"{ck.id}: {ui.eps_text(ck.config)}" for ck in cks}) if len(
    {ck.config["eps"] for ck in cks}) > 1 else [ui.eps_text(cks[0].config)]
st.caption("Every robustness number names the norms its examples were **crafted with** and "
           "the norms they were **classified with**; the best value of each row is "
           "highlighted. Robust accuracy counts a sample misclassified when clean as not "
           f"robust. Shaped inference {ratio}: each test sample classified in a batch with clean "
           "training samples (seeded reference pool). L-inf attacks at each checkpoint's "
           f"training eps ({', '.join(eps)}). The **worst case** is the headline: a sample "
           "counts as robust only if it survives every attack of the ensemble, each classifier "
           "attacked through its own norms; it runs on "
           + ", ".join(sorted({f"{ui.worst_case_settings(ck.dataset, ratio)['n_test']} test "
                               f"samples ({ck.dataset})" for ck in cks}))
           + " (the reproduction's), the paper's PGD-20 beside it on the slider's.")
long = pd.concat([results[cid].assign(checkpoint=cid) for cid in chosen], ignore_index=True)
c1, c2 = st.columns(2)
c1.download_button("Download this table (CSV)", table.to_csv(index=False).encode(),
                   "compare.csv", "text/csv", key="cmp_csv")
c2.download_button("Download all rows (CSV)", long.to_csv(index=False).encode(),
                   "compare_rows.csv", "text/csv", key="cmp_csv_rows")
warnings = [f"{cid}: {w}" for cid in chosen for w in results[cid].attrs.get("warnings", [])]
if warnings:
    with st.expander(f"Sanity warnings of the evaluation ({len(warnings)})"):
        for w in warnings:
            st.warning(ui.message_text(w))

bar_chart(results, names)

st.subheader("Tables laid out like the paper's")
tabs = st.tabs([ui.md_escape(c) for c in chosen])
for tab, cid in zip(tabs, chosen):
    with tab:
        st.markdown(f"**{ui.md_escape(by_id[cid].short())}**: Tables I-II layout (rows: attack "
                    "and the norms it was crafted with; columns: the norms classified with, "
                    "clean Acc and robust R.Acc).")
        st.dataframe(paper_table(results[cid]), hide_index=True, key=f"cmp_paper_{cid}")
        if results[cid]["attack"].isin(["adaptive_exact", "adaptive_eot"]).any():
            st.markdown("Table III layout (adaptive attacks on shaped inference):")
            st.dataframe(table_iii(results[cid]), key=f"cmp_t3_{cid}")

st.subheader("Training curves")
fig = make_subplots(rows=1, cols=2, subplot_titles=["Training loss",
                                                    "Test accuracy at epoch ends (PN)"])
for i, cid in enumerate(chosen):
    rows = jobs.read_metrics(by_id[cid].path)
    color = CKPT_COLORS[i % len(CKPT_COLORS)]
    tr = pd.DataFrame([r for r in rows if "train/loss" in r])
    ev = pd.DataFrame([r for r in rows if any(k.startswith("test/") for k in r)])
    if not tr.empty:
        w = max(1, len(tr) // 40)
        fig.add_scatter(x=tr["step"], y=tr["train/loss"].rolling(w, min_periods=1).mean(),
                        name=cid, legendgroup=cid, line=dict(color=color), row=1, col=1)
    for col in [c for c in ev.columns if c.startswith("test/")]:
        fig.add_scatter(x=ev["step"], y=ev[col], mode="lines+markers", legendgroup=cid,
                        name=f"{cid}: {ui.metric_label(col)}", showlegend=True,
                        line=dict(color=color, dash="dash" if "robust" in col else "solid"),
                        row=1, col=2)
fig.update_xaxes(title_text="training step")
fig.update_yaxes(title_text="loss", row=1, col=1)
fig.update_yaxes(title_text="accuracy (fraction)", range=[0, 1.02], row=1, col=2)
fig.update_layout(legend=dict(orientation="h", y=-0.3))
ui.show(fig, key="cmp_curves", title="Training curves overlaid", height=460)

st.subheader("Settings")
only_diff = st.toggle("Only the settings that differ", value=False, key="cmp_only_diff")
settings = pd.DataFrame({cid: {k: ("-" if v is None else v)
                               for k, v in by_id[cid].config.items()} for cid in chosen})
settings = settings.astype(str)
if only_diff:
    settings = settings[settings.nunique(axis=1) > 1]
st.dataframe(settings.style.apply(highlight_differing, axis=1), key="cmp_settings",
             height=36 * (len(settings) + 1) + 4)
st.caption("Rows highlighted in yellow differ between the checkpoints.")

with st.expander("Upload a checkpoint"):
    upload_section()
