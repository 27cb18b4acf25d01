"""Ratios: robust accuracy over training ratio x inference ratio, like the paper's Table IV."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from normshape_app import ui
from normshape_core.evaluation import WORST, table_iv, training_label
from normshape_core.figures import ratios as F

INFERENCE_RATIOS = ui.INFERENCE_RATIOS
PAPER_TABLE_IV = F.PAPER_TABLE_IV
CRAFTING = {"PN": "PN: PGD through the running statistics (the paper's Table IV)",
            "BN (exact refs)": "BN through the defender's exact shaped batches (adaptive attack)",
            "worst case": "the worst case per sample over APGD-CE, APGD-T, FAB-T and Square, "
                          "each cell's classifier attacked through its exact shaped batches "
                          "(the headline), shown beside the paper's PN-crafted PGD"}


def heatmap(table: pd.DataFrame, title: str, key: str) -> None:
    ui.show(F.grid_heatmap(table, title), key=key, height=380, legend=False, columns=2)


st.title("Ratios: training x inference (Table IV)")
ui.explain("Each row is a model trained with PGD + shaping in attack and training at one ratio "
           "adv:clean; each column classifies the attacked test samples with shaped inference "
           "at one ratio (1:0 = no clean references: the adversarial test batch's own BN). "
           "The paper finds that the inference ratio must hold at least as many clean parts as "
           "the training ratio, and that 1:1 training gains nothing from shaping. Missing "
           "cells are computed on demand and kept.")

candidates = [c for c in ui.checkpoints() if c.config["method"] != "natural"
              and c.config.get("norm", "bn") == "bn"]  # Table IV: BN models
if not candidates:
    ui.no_checkpoints_message("adversarially trained checkpoints")
    st.stop()

with ui.settings_block():
    c1, c2, c3 = st.columns(3)
    # Default: the dataset with the most training ratios to compare.
    datasets = sorted({c.dataset for c in candidates},
                      key=lambda d: (-sum(c.dataset == d and c.config["shaping"] == "attack+train"
                                          for c in candidates), d))
    dataset = c1.selectbox("Dataset", datasets, key="ratios_dataset", bind="query-params")
    methods = sorted({c.config["method"] for c in candidates if c.dataset == dataset})
    method = c2.selectbox("Training method", methods, key="ratios_method", bind="query-params")
    crafted = c3.selectbox("Attack crafted with", list(CRAFTING), key="ratios_crafted",
                           bind="query-params",
                           help="; ".join(f"{k}: {v}" for k, v in CRAFTING.items()))
    rows = {}
    for c in candidates:
        if c.dataset == dataset and c.config["method"] == method and \
                c.config["shaping"] in ("attack+train", "none"):
            label = training_label(c.meta)
            if c.config.get("polluted_running_stats"):
                label += " (polluted PN)"
            rows.setdefault(label if label != "adv only" else "adv only (1:0)", c)
    labels = sorted(rows, key=lambda r: (r.startswith("adv"), int(r.split(":")[1].split()[0])
                                         if ":" in r and not r.startswith("adv") else 0,
                                         "polluted" in r))
    c1, c2 = st.columns(2)
    train_sel = c1.multiselect("Training ratios (one checkpoint each)", labels,
                               default=[r for r in labels if "polluted" not in r],
                               key="ratios_train", bind="query-params",
                               help="'polluted PN': trained with attack steps updating the "
                                    "running statistics, as the paper's TensorFlow code did")
    inf_sel = c2.multiselect("Inference ratios adv:clean", INFERENCE_RATIOS,
                             default=INFERENCE_RATIOS, key="ratios_infer", bind="query-params")
    c1, c2, c3 = st.columns(3)
    n_test = c1.select_slider("Test samples", [100, 200, 500, 1000], value=200, key="ratios_n",
                              bind="query-params")
    steps = c2.select_slider("PGD steps", [10, 20, 50], value=20, key="ratios_steps",
                             bind="query-params")
    show_paper = c3.toggle("Show the paper's Table IV", value=True, key="ratios_paper",
                           bind="query-params")

train_sel = [t for t in labels if t in train_sel]
inf_sel = [r for r in INFERENCE_RATIOS if r in inf_sel]
if not train_sel or not inf_sel:
    st.info("Choose at least one training ratio and one inference ratio.")
    st.stop()


def grid(attack: str, crafted_with: str) -> pd.DataFrame:
    dfs = ui.shaped_grid_rows(
        {label: rows[label] for label in train_sel}, inf_sel, attack,
        lambda ck: ui.grid_settings(min(n_test, ui.test_set_size(ck.dataset)), steps),
        title="Computing the missing cells", key=f"ratios_progress_{attack}")
    return table_iv(dfs, attack=WORST if attack == "autoattack" else attack,
                    crafted_with=crafted_with).reindex(index=train_sel, columns=inf_sel)


worst = crafted == "worst case"
table = grid("pgd" if crafted == "PN" else "autoattack" if worst else "adaptive_exact",
             "BN (exact refs)" if worst else crafted)
eps = rows[train_sel[0]].config["eps"]
CELLS = (f"{n_test} test samples per cell (or the whole test set when smaller). Inference 1:0 = "
         "no clean references: the attacked test batch's own BN. Shaped batches of 100 samples "
         "as in the paper; references drawn from the training set, seed 0.")
if worst:  # the headline beside the paper's protocol, on the same cells
    pgd_table = grid("pgd", "PN")
    c1, c2 = st.columns(2)
    with c1:
        heatmap(table, f"{dataset}, {method.upper()} + shaping: worst case<br><sup>autoattack, "
                f"eps {eps:g}, crafted through each cell's exact shaped batches</sup>",
                key="ratios_heatmap")
    with c2:
        heatmap(pgd_table, f"The paper's protocol on the same cells<br><sup>PGD-{steps}, "
                f"crafted with PN, classified with shaped inference</sup>",
                key="ratios_pgd_heatmap")
    gap = (pgd_table - table).stack().astype(float)
    if len(gap):
        st.markdown(f"PGD-{steps} crafted with PN overstates the worst case by "
                    f"**{gap.mean():.3f}** on average over these cells (at most "
                    f"{gap.max():.3f}).")
    st.caption(CELLS)
else:
    cols = st.columns(2) if show_paper else [st.container()]
    with cols[0]:
        heatmap(table, f"{dataset}, {method.upper()} + shaping: robust accuracy<br><sup>PGD-"
                f"{steps}, eps {eps:g}, crafted with {crafted}, classified with shaped "
                f"inference</sup>", key="ratios_heatmap")
        st.caption(CELLS)
    if show_paper:
        with cols[1]:
            heatmap(PAPER_TABLE_IV, "Paper, Table IV: robust accuracy<br><sup>CIFAR-10, PGD "
                    "crafted with PN, classified with shaped inference</sup>",
                    key="ratios_paper_heatmap")
            st.caption("Zhang & Ma (ICTAI 2022), Table IV: wide ResNet, 80,000 steps. Their "
                       "PGD comes from CleverHans, crafted with PN.")

best = table.stack().astype(float)
if len(best):
    (tr, inf), val = best.idxmax(), best.max()
    st.markdown(f"Here the best cell is training **{ui.md_escape(tr)}**, inference "
                f"**{ui.md_escape(inf)}** with robust "
                f"accuracy **{val:.3f}**; the spread over the grid is "
                f"{best.max() - best.min():.3f}.")
st.download_button("Download the grid (CSV)", table.to_csv().encode(), "table_iv.csv",
                   "text/csv", key="ratios_csv")
