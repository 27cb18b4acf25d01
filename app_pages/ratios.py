"""Ratios: robust accuracy over training ratio x inference ratio, like the paper's Table IV."""
from __future__ import annotations

import streamlit as st

from normshape_app import tables, ui
from normshape_core.figures import ratios as F
from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

INFERENCE_RATIOS = ui.INFERENCE_RATIOS
CRAFTING = {"PN": "PN: PGD through the running statistics (the paper's Table IV)",
            "BN (exact refs)": "BN through the defender's exact shaped batches (adaptive attack)",
            "worst case": f"the worst case per sample over the attacks of {DEFAULT_ENSEMBLE}, "
                          "each cell's classifier attacked through its exact shaped batches "
                          "(the headline), shown beside the paper's PN-crafted PGD"}

st.title("Ratios: training x inference (Table IV)")
ui.explain("Each row is a model trained with PGD + shaping in attack and training at one ratio "
           "adv:clean; each column classifies the attacked test samples with shaped inference "
           "at one ratio (1:0 = no clean references: the adversarial test batch's own BN). "
           "The paper finds that the inference ratio must hold at least as many clean parts as "
           "the training ratio, and that 1:1 training gains nothing from shaping. The shipped "
           "cells are read; missing cells are computed on demand and kept.")

candidates = [c for c in ui.checkpoints() if c.config["method"] != "natural"
              and c.config.get("norm", "bn") == "bn"]  # Table IV: BN models
if not candidates:
    ui.no_checkpoints_message("adversarially trained checkpoints")
    st.stop()

with ui.settings_block():
    c1, c2, c4, c3 = st.columns([1, 1, 0.7, 1.3])
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
    worst = crafted == "worst case"
    # One eps per grid (cells at other eps are not comparable): the reproduction's first.
    eps_options = [f"{e:g}" for e in ui.table_iv_eps(candidates, dataset, method)]
    eps_text = c4.selectbox("Attack eps", eps_options, key="ratios_eps", bind="query-params",
                            disabled=len(eps_options) < 2,
                            help="The eps the models were trained and are attacked at (the "
                                 "first: the reproduction's). A grid holds the models of one "
                                 "eps: cells at other eps are not comparable.")
    rows = ui.table_iv_rows(candidates, dataset, method, float(eps_text))  # label -> checkpoint
    labels = list(rows)
    c1, c2 = st.columns(2)
    train_sel = c1.multiselect("Training ratios (one checkpoint each)", labels,
                               default=[r for r in labels if not r.startswith("adv") and
                                        "polluted" not in r and "stopped" not in r],
                               key="ratios_train", bind="query-params",
                               help="The paper's Table IV rows: PGD + shaping at each ratio. "
                                    "'adv only': plain PGD-AT; 'polluted PN': trained with "
                                    "attack steps updating the running statistics, as the "
                                    "paper's TensorFlow code did")
    inf_sel = c2.multiselect("Inference ratios adv:clean", INFERENCE_RATIOS,
                             default=INFERENCE_RATIOS, key="ratios_infer", bind="query-params")
    c1, c2, c3 = st.columns(3)
    n_choice = c1.selectbox("Test samples", [ui.SHIPPED_N, 100, 200, 500, 1000], key="ratios_n",
                            bind="query-params", help="shipped: those of the shipped grid "
                            f"(here {ui.grid_n(dataset, ui.SHIPPED_N, worst)}), read, not "
                            "computed; a number: that many (or the whole test set)")
    steps = c2.select_slider("PGD steps", [10, 20, 50], value=20, key="ratios_steps",
                             bind="query-params")
    show_paper = c3.toggle("Paper's Table IV", value=True, key="ratios_paper",
                           bind="query-params", disabled=worst)

train_sel = [t for t in labels if t in train_sel]
inf_sel = [r for r in INFERENCE_RATIOS if r in inf_sel]
if not train_sel or not inf_sel:
    st.info("Choose at least one training ratio and one inference ratio.")
    st.stop()
n_test = ui.grid_n(dataset, n_choice, worst)
view = tables.GridView({label: rows[label] for label in train_sel}, inf_sel, n_test, steps,
                       columns=2 if show_paper and not worst else 1)


eps = rows[train_sel[0]].config["eps"]
CELLS = (f"{n_test} test samples per cell (or the whole test set when smaller); hover a cell "
         "for its 95 % interval. Inference 1:0 = no clean references: the attacked test "
         "batch's own BN. Shaped batches of 100 samples as in the paper; references drawn from "
         "the training set, seed 0.")
cols = st.columns(2) if show_paper and not worst else [st.container()]
if worst:  # the headline above the paper's protocol on the same cells, each page-wide
    with cols[0]:  # a fragment: redrawn every 2 s while background jobs fill its cells
        st.fragment(run_every=2.0 if view.worst_running() else None)(view.worst_grid)(
            f"{dataset}, {method.upper()} + shaping: worst case<br><sup>{DEFAULT_ENSEMBLE}, "
            f"eps {eps:g}, crafted through each cell's exact shaped batches</sup>",
            "ratios_heatmap")
    pgd_table = view.computed_grid(st.empty(), "pgd", "PN", "The paper's protocol on the "
                                   f"same cells<br><sup>PGD-{steps}, crafted with PN, "
                                   "classified with shaped inference</sup>",
                                   "ratios_pgd_heatmap")
    table = view.grid(DEFAULT_ENSEMBLE, None)[0]
    gap = (pgd_table - table).stack().astype(float).dropna()  # cells still to come: none
    if len(gap):
        st.markdown(f"PGD-{steps} crafted with PN overstates the worst case by "
                    f"**{gap.mean():.3f}** on average over these cells (at most "
                    f"{gap.max():.3f}).")
    st.caption(CELLS)
else:
    if show_paper:
        with cols[1]:
            tables.heat(F.PAPER_TABLE_IV, None, "Paper, Table IV: robust accuracy<br><sup>"
                        "CIFAR-10, PGD crafted with PN, classified with shaped inference</sup>",
                        "ratios_paper_heatmap")
            st.caption("Zhang & Ma (ICTAI 2022), Table IV: wide ResNet, 80,000 steps. Their "
                       "PGD comes from CleverHans, crafted with PN.")
    attack = "pgd" if crafted == "PN" else "adaptive_exact"
    table = view.computed_grid(cols[0].empty(), attack, crafted, f"{dataset}, {method.upper()} + "
                          f"shaping: robust accuracy<br><sup>PGD-{steps}, eps {eps:g}, crafted "
                          f"with {crafted}, classified with shaped inference</sup>",
                          "ratios_heatmap")
    st.caption(CELLS)

best = table.stack().astype(float).dropna()  # cells still being computed are not cells
if len(best):
    (tr, inf), val = best.idxmax(), best.max()
    st.markdown(f"Here the best cell is training **{ui.md_escape(tr)}**, inference "
                f"**{ui.md_escape(inf)}** with robust "
                f"accuracy **{val:.3f}**; the spread over the grid is "
                f"{best.max() - best.min():.3f}.")
st.download_button("Download the grid (CSV)", table.to_csv().encode(), "table_iv.csv",
                   "text/csv", key="ratios_csv")
