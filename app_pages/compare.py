"""Compare: two to four checkpoints side by side, laid out like the paper's Tables I-III."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from normshape_app import tables, ui
from normshape_core import jobs
from normshape_core.evaluation import table_iii
from normshape_core.figures import compare as F

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
ATTACK_NAMES = F.ATTACK_NAMES

st.title("Compare checkpoints")
ckpts = ui.checkpoints()
if len(ckpts) < 1:
    ui.no_checkpoints_message()
    with st.container(border=True):
        ui.upload_section()
    st.stop()

ids = [c.id for c in ckpts]
by_id = {c.id: c for c in ckpts}
with ui.settings_block():
    chosen = st.multiselect("Checkpoints (two to four)", ids, default=ui.default_comparison(ckpts),
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
table = pd.DataFrame({cid: F.measures(results[cid]) for cid in chosen})
table.index.names = [F.MEASURE, F.CLASSIFIED]
table = table.reset_index()
tables.side_by_side(table, names)
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

fig, height = F.accuracy_bars_figure({cid: results[cid] for cid in chosen}, names)
ui.show(fig, key="cmp_bars", height=height, legend=False)

st.subheader("Tables laid out like the paper's")
tabs = st.tabs([ui.md_escape(c) for c in chosen])
for tab, cid in zip(tabs, chosen):
    with tab:
        st.markdown(f"**{ui.md_escape(by_id[cid].short())}**: Tables I-II layout (rows: attack "
                    "and the norms it was crafted with; columns: the norms classified with, "
                    "clean Acc and robust R.Acc).")
        st.dataframe(tables.paper_table(results[cid]), hide_index=True, key=f"cmp_paper_{cid}")
        if results[cid]["attack"].isin(["adaptive_exact", "adaptive_eot"]).any():
            st.markdown("Table III layout (adaptive attacks on shaped inference):")
            st.dataframe(table_iii(results[cid]), key=f"cmp_t3_{cid}")

st.subheader("Training curves")
fig = F.training_curves_figure({cid: jobs.read_metrics(by_id[cid].path) for cid in chosen},
                               ui.metric_label)
ui.show(fig, key="cmp_curves", height=460)

st.subheader("Settings")
only_diff = st.toggle("Only the settings that differ", value=False, key="cmp_only_diff")
settings = pd.DataFrame({cid: {k: ("-" if v is None else v)
                               for k, v in by_id[cid].config.items()} for cid in chosen})
settings = settings.astype(str)
if only_diff:
    settings = settings[settings.nunique(axis=1) > 1]
st.dataframe(settings.style.apply(tables.highlight_differing, axis=1), key="cmp_settings",
             height=36 * (len(settings) + 1) + 4)
st.caption("Rows highlighted in yellow differ between the checkpoints.")

with st.expander("Upload a checkpoint"):
    ui.upload_section()
