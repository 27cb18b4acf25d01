"""Compare: two to four checkpoints side by side, laid out like the paper's Tables I-III."""
from __future__ import annotations

import pandas as pd
import streamlit as st
from plotly.subplots import make_subplots

from normshape_app import ui
from normshape_core import jobs
from normshape_core.evaluation import table_iii, table_like_paper

ATTACKS = ["pgd", "fgsm", "apgd", "cw", "deepfool", "shaping", "adaptive_exact", "adaptive_eot"]
ATTACK_HELP = ("pgd/fgsm/apgd: L-inf, crafted with PN (and BN when asked); cw, deepfool: minimal "
               "L2 attacks; shaping: the paper's shaping attack (BN, 1:3 batches of test samples);"
               " adaptive_exact: crafted through the defender's exact shaped batches (Table III); "
               "adaptive_eot: the attacker's own references, EOT (Table III, weaker)")
# Colours of each checkpoint's curves: none of them is PN's or BN's colour.
CKPT_COLORS = ["#6a3d9a", "#1b9e77", "#8c564b", "#e7298a"]


def norm_colour(classified_with: str) -> str:
    if classified_with.startswith("shaped"):
        return "#a63603"  # shaped inference: BN's family, darker
    return ui.norm_color(classified_with)


def short_norms(crafted_with: str) -> str:
    return (crafted_with.replace("BN (exact refs)", "exact refs")
            .replace("shaping 1:3 (BN)", "BN 1:3").replace("BN (own refs, EOT 8)", "own refs"))


KEY_COLUMNS = ["accuracy", "attack", "crafted with", "classified with"]


def measures(df: pd.DataFrame) -> pd.Series:
    """One value per named measure: every number says crafted-with and classified-with."""
    out = {}
    for clf, acc in df.groupby("classified_with", sort=False)["clean_acc"].first().items():
        out[("clean", "-", "-", clf)] = acc
    for _, r in df.iterrows():
        eps = "" if pd.isna(r["eps"]) else f" (eps {r['eps']:g})"
        out[("robust", f"{r['attack']}{eps}", r["crafted_with"], r["classified_with"])] = \
            r["robust_acc"]
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


def upload_section() -> None:
    st.markdown("**Upload a checkpoint** (`model.safetensors` + `model.json`, as written by "
                "normshape). It is validated before use: JSON metadata of a known format, "
                "weights that match their SHA-256 and rebuild the model. Pickle files are "
                "refused, never opened.")
    files = st.file_uploader("Checkpoint files", type=["safetensors", "json"],
                             accept_multiple_files=True, key="cmp_upload",
                             max_upload_size=ui.max_upload_mb())
    if not files:
        return
    weights = [f for f in files if f.name.endswith(".safetensors")]
    metas = [f for f in files if f.name.endswith(".json")]
    if len(weights) != 1 or len(metas) != 1:
        st.error("Upload exactly one .safetensors file and its .json metadata.")
        return
    try:
        up = ui.import_checkpoint(weights[0].getvalue(), metas[0].getvalue(), weights[0].name,
                                  known={c.sha: c.id for c in ui.checkpoints()})
    except ValueError as e:
        st.error(f"Not accepted: {ui.public_text(e)}")
        return
    if up.stored:
        st.success(f"Accepted and stored as `{up.name}`: it is now listed on every page.")
    else:
        st.success(f"Accepted: these weights are those of `{up.name}` (same SHA-256), already "
                   "listed on every page; nothing was stored again.")


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
    attacks = st.multiselect("Attacks", ATTACKS, default=ui.COMPARE_ATTACKS,
                             key="cmp_attacks", bind="query-params", help=ATTACK_HELP)
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

results = {}
for cid in chosen:
    ck = by_id[cid]
    n = min(n_test, ui.test_set_size(ck.dataset))
    results[cid] = ui.evaluation(ck, label=f"Evaluating {cid}",
                                 **ui.compare_settings(attacks, ratio, n, also_bn))
if len({by_id[c].dataset for c in chosen}) > 1:
    st.warning("These checkpoints come from different datasets: their numbers are not "
               "comparable.")

st.subheader("Side by side")
table = pd.DataFrame({cid: measures(results[cid]) for cid in chosen})
table.index.names = KEY_COLUMNS
table = table.reset_index()
st.dataframe(table.style.apply(highlight_best, columns=chosen, axis=1)
             .format("{:.3f}", subset=chosen, na_rep="-"),
             key="cmp_table", hide_index=True, height=36 * (len(table) + 1) + 4,
             column_config={"accuracy": st.column_config.TextColumn(width=70),
                            **{k: st.column_config.TextColumn(width=135)
                               for k in KEY_COLUMNS[1:]},
                            **{c: st.column_config.NumberColumn(by_id[c].tag(), help=c,
                                                                width=115, format="%.3f")
                               for c in chosen}})
st.caption("Columns: " + "; ".join(f"**{by_id[c].tag()}** = `{c}`" for c in chosen))
st.caption("Every robustness number names the norms its examples were **crafted with** and "
           "the norms they were **classified with**; the best value of each row is "
           "highlighted. Robust accuracy counts a sample misclassified when clean as not "
           f"robust. Shaped inference {ratio}: each test sample classified in a batch with clean "
           "training samples (seeded reference pool).")
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
            st.warning(w)

fig = make_subplots(rows=1, cols=len(chosen), shared_yaxes=True,
                    subplot_titles=[by_id[c].tag() for c in chosen], horizontal_spacing=0.03)
seen = set()
for i, cid in enumerate(chosen, start=1):
    df = results[cid]
    for clf, d in df.groupby("classified_with", sort=False):
        xs = ["clean"] + [f"{a}<br>{short_norms(c)}" for a, c in zip(d["attack"],
                                                                      d["crafted_with"])]
        ys = [d["clean_acc"].iloc[0]] + list(d["robust_acc"])
        fig.add_bar(x=xs, y=ys, name=f"classified with {clf}", legendgroup=clf,
                    showlegend=clf not in seen, marker_color=norm_colour(clf), row=1, col=i)
        seen.add(clf)
fig.update_layout(barmode="group", yaxis_title="accuracy (fraction)", yaxis_range=[0, 1],
                  legend=dict(orientation="h", y=-0.28))
fig.update_xaxes(tickfont=dict(size=10), tickangle=0, title_text="attack, crafted with")
ui.show(fig, key="cmp_bars", height=500,
        title="Clean and robust accuracy, by the norms classified with<br><sup>x axis: attack, "
              "and the norms it was crafted with</sup>")

st.subheader("Tables laid out like the paper's")
tabs = st.tabs(chosen)
for tab, cid in zip(tabs, chosen):
    with tab:
        st.markdown(f"**{by_id[cid].short()}**: Tables I-II layout (rows: attack and the norms "
                    "it was crafted with; columns: the norms classified with, clean Acc and "
                    "robust R.Acc).")
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
