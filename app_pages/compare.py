"""Compare: two to four checkpoints side by side, laid out like the paper's Tables I-III."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from normshape_app import tables, ui
from normshape_app import jobs
from normshape_core.figures import compare as F
from normshape_core.attacks import single_attacks
from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

ATTACK_HELP = ("Beside the worst case (always there), single attacks: pgd/fgsm/apgd/apgd_dlr/"
               "apgd_t/fab_t/square: L-inf, crafted with PN (and BN when asked); cw, deepfool: "
               "minimal L2 attacks; shaping: the paper's shaping attack (BN, 1:3 batches of test "
               "samples); adaptive_exact: crafted through the defender's exact shaped batches "
               "(Table III); adaptive_eot: the attacker's own references, EOT (Table III, weaker)")
N_CHOICES = [ui.SHIPPED_N, 100, 200, 500, 1000]

st.title("Compare checkpoints")
ckpts = ui.checkpoints()
if len(ckpts) < 1:
    ui.no_checkpoints_message()
    with st.container(border=True):
        ui.upload_section()
    st.stop()

by_id = {c.id: c for c in ckpts}
with ui.settings_block():
    chosen = st.multiselect(
        "Checkpoints (two to four)", list(by_id), max_selections=4, key="cmp",
        bind="query-params", default=ui.default_comparison(ckpts, ui.shipped_worst_n))
    attacks = st.multiselect("Attacks beside the worst case", single_attacks(), key="cmp_attacks",
                             bind="query-params", default=ui.COMPARE_ATTACKS, help=ATTACK_HELP)
    c2, c3, c4 = st.columns(3)
    ratio = c2.selectbox("Shaped inference ratio adv:clean", ["1:3", "1:9", "1:19"], index=1,
                         key="cmp_ratio", bind="query-params",
                         help="The paper's Tables I-II use 1:9 (nine clean samples per test "
                              "sample)")
    n_choice = c3.selectbox("Test samples (the same for every row)", N_CHOICES, key="cmp_n",
                            bind="query-params", help="shipped: those of each checkpoint's "
                            "shipped worst case (its results are read, not computed); a "
                            "number: that many, or the whole test set when smaller")
    also_bn = c4.toggle("Also craft with BN", value=False, key="cmp_bn", bind="query-params",
                        help="Besides the paper's PN-crafted attacks, craft pgd/fgsm/apgd "
                             "through each test batch's own BN")

chosen = [c for c in chosen if c in by_id]
if len(chosen) < 2:
    st.info("Choose at least two checkpoints to compare.")
if not chosen:
    st.stop()

cks = [by_id[c] for c in chosen]
names = {ck.id: ck.column_name() for ck in cks}
n_of = {ck.id: ui.compare_n(ck, n_choice) for ck in cks}
groups = ui.comparable_groups(cks)
st.subheader("Side by side")
if len(groups) > 1:
    st.markdown("**Numbers at different eps (or on different datasets) are not comparable**: "
                "the columns are grouped by dataset and eps, and each row's best value is "
                "highlighted only within its group.")


def settings_of(ck, attack):
    return ui.compare_settings([attack], ratio, n_of[ck.id], also_bn)


def side_by_side() -> None:
    """The tables (one per dataset and eps): what is stored now, the worst cases still
    running as background jobs with their anytime bounds; refreshed every 2 s while one
    runs, and the whole page once they are done."""
    worst, pending, running = ui.compare_worst(cks, ratio, n_of)
    others = ui.evaluations_by_attack(cks, attacks, settings_of, "", "", compute=False)
    for (dataset, eps), members in groups.items():
        if len(groups) > 1:
            st.markdown(f"**{ui.md_escape(dataset)}, eps {eps:g}**")
        tables.side_by_side({ck.id: F.measures(ui.joined(worst[ck.id], others[ck.id]))
                             for ck in members}, names,
                            {ck.id: pending.get(ck.id, {}) for ck in members})
    if running:
        st.caption("The worst case of " + ", ".join(ui.md_escape(j.label.split(":")[0])
                                                     for j in running)
                   + " runs in the background (it goes on if you leave this page, and any "
                   "session asking for it shares it); until it ends, its cells show the bound "
                   "so far: robust accuracy is at most that.")
    elif st.session_state.pop("cmp_waiting", False):
        st.rerun(scope="app")  # the worst cases ended: the whole page with their numbers
    st.session_state.cmp_waiting = bool(running)


st.fragment(run_every=2.0 if ui.compare_worst(cks, ratio, n_of)[2] else None)(side_by_side)()
# One evaluation per (checkpoint, attack): adding an attack computes only that attack.
known = ui.evaluations_by_attack(cks, attacks, settings_of, "", "", compute=False)
results = ui.evaluations_by_attack(
    cks, attacks, settings_of, title="Evaluating", key="cmp_progress",
    label_of=lambda ck, attack: f"{ck.id}: {F.ATTACK_NAMES.get(attack, attack)}")
if any(known[i] is None or len(known[i]) != len(results[i]) for i in results if results[i]
       is not None):
    st.rerun()  # the table above with the attacks just computed
worst = {ck.id: ui.worst_case_rows(ck, ratio, n_of[ck.id]) for ck in cks}
rows = {ck.id: ui.joined(worst[ck.id], results[ck.id]) for ck in cks}
st.caption(
    "Every robustness number names the norms its examples were **crafted with** and the norms "
    "they were **classified with**; under each accuracy, its 95 % Clopper-Pearson interval and "
    "n, the test samples it was measured on (every row of a checkpoint, clean ones included, on "
    "the same samples: " + ", ".join(f"{ui.md_escape(i)}: {n}" for i, n in n_of.items())
    + "). The best value of each row is highlighted among the columns at one eps. Robust "
    "accuracy counts a sample misclassified when clean as not robust. Shaped inference "
    f"{ratio}: each test sample classified in a batch with clean training samples (seeded "
    "reference pool). L-inf attacks at each checkpoint's training eps. The **worst case** is "
    f"the headline: a sample counts as robust only if it survives every attack of the ensemble "
    f"({DEFAULT_ENSEMBLE}), each classifier attacked through its own norms.")
long = pd.concat([r.assign(checkpoint=cid) for cid, r in rows.items()], ignore_index=True)
st.download_button("Download all rows (CSV)", long.to_csv(index=False).encode(),
                   "compare_rows.csv", "text/csv", key="cmp_csv_rows")
warnings = [f"{cid}: {w}" for cid in chosen for w in rows[cid].attrs.get("warnings", [])]
if warnings:
    with st.expander(f"Sanity warnings of the evaluation ({len(warnings)})"):
        for w in warnings:
            st.warning(ui.message_text(w))

fig, height = F.accuracy_bars_figure({cid: rows[cid] for cid in chosen}, names)
ui.show(fig, key="cmp_bars", height=height, legend=False)

st.subheader("Tables laid out like the paper's")
tabs = st.tabs([ui.md_escape(c) for c in chosen])
for tab, cid in zip(tabs, chosen):
    with tab:
        st.markdown(f"**{ui.md_escape(by_id[cid].short())}**: Tables I-II layout (rows: attack "
                    "and the norms it was crafted with; columns: the norms classified with, "
                    f"clean Acc and robust R.Acc, each with its 95 % interval; n={n_of[cid]}).")
        st.dataframe(tables.paper_table(rows[cid]), hide_index=True, key=f"cmp_paper_{cid}")
        if rows[cid]["attack"].isin(["adaptive_exact", "adaptive_eot"]).any():
            st.markdown("Table III layout (adaptive attacks on shaped inference):")
            st.dataframe(tables.paper_table_iii(rows[cid]), key=f"cmp_t3_{cid}")

st.subheader("Training curves")
fig = F.training_curves_figure({cid: jobs.read_metrics(by_id[cid].path) for cid in chosen},
                               ui.metric_label)
ui.show(fig, key="cmp_curves", height=460)

st.subheader("Settings")
only_diff = st.toggle("Only the settings that differ", value=False, key="cmp_only_diff")
tables.settings_table({cid: by_id[cid].config for cid in chosen}, only_diff)
st.caption("Rows highlighted in yellow differ between the checkpoints.")

with st.expander("Upload a checkpoint"):
    ui.upload_section()
