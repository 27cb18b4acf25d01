"""Confoundings: a guided lesson for each of I, II and III, each with one live experiment."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
import torch

from normshape_app import ui
from normshape_core.diagnostics import (logit_error_experiment, moving_target,
                                        perturbation_experiment)

LESSONS = {"I": "I. Norm differences degrade accuracy",
           "II": "II. The moving target hinders robustness",
           "III": "III. Norm differences weaken BN attacks"}
SHAPED_DARK = "#a63603"  # shaped inference / shaped batches: BN's family, darker


def training_batch(meta, n: int, seed: int):
    data = ui.load_dataset(meta["config"]["dataset"])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:n]
    return data.x_train[idx], data.y_train[idx]


@st.cache_data(show_spinner="Measuring how far PN is from clean batch statistics ...",
               max_entries=32)
def pn_distance(path: str, sha: str, n: int, seed: int):
    model, meta = ui.load_model(path, sha)
    x, y = training_batch(meta, n, seed)
    tr = moving_target(model, x, y, "1:0", eps=float(meta["config"]["eps"] or 0.1), steps=1)
    f = tr.frame[tr.frame["step"] == 0]  # the clean batch, before any attack step
    return f[["layer", "distance_to_pn_mean", "distance_to_pn_var"]].reset_index(drop=True)


@st.cache_data(show_spinner="Crafting FGSM and measuring logit errors ...", max_entries=32)
def logit_errors(path: str, sha: str, n: int, seed: int):
    model, meta = ui.load_model(path, sha)
    x, y = training_batch(meta, n, seed)
    cfg = meta["config"]
    step = float(cfg.get("step_size") or (cfg.get("eps") or 0.1) / 4)
    return logit_error_experiment(model, x, y, eps=step).to_dict()


@st.cache_data(show_spinner="Running PGD with PN, with BN and through shaped batches ...",
               max_entries=32)
def perturbations(path: str, sha: str, n: int, seed: int):
    model, meta = ui.load_model(path, sha)
    x, y = training_batch(meta, n, seed)
    cfg = meta["config"]
    eps = float(cfg.get("eps") or 0.1)
    return perturbation_experiment(model, x, y, eps=eps, step_size=cfg.get("step_size"),
                                   steps=int(cfg.get("steps") or 10), seed=seed).to_dict()


def pct(v: float) -> str:
    return f"{v:+.1%}"


def lesson_i(ck, n: int, seed: int) -> None:
    ui.explain("Adversarial training updates the running statistics (PN) on the batches it "
               "trains on. In plain PGD training those batches are all adversarial, so PN "
               "describes adversarial data, and clean test inputs normalised with it may land "
               "on the wrong side of the boundary. BN of a clean-dominated batch (shaped "
               "inference) keeps the statistics of clean data. **Experiment:** clean test "
               "accuracy of this checkpoint classified with PN, with BN (each test batch of "
               "100) and with shaped inference 1:9; and how far PN is from the statistics of a "
               "clean training batch, per layer.")
    df = ui.evaluation(ck, label=f"Clean accuracy of {ck.id}",
                       **ui.clean_accuracy_settings(min(500, ui.test_set_size(ck.dataset))))
    acc = df.groupby("classified_with", sort=False)["clean_acc"].first()
    c1, c2 = st.columns(2)
    with c1:
        colors = [ui.PN_COLOR if k == "PN" else ui.BN_COLOR if k == "BN" else SHAPED_DARK
                  for k in acc.index]
        fig = go.Figure(go.Bar(x=list(acc.index), y=acc.values,
                               marker_color=colors, text=[f"{v:.3f}" for v in acc.values],
                               textposition="outside", name="clean accuracy"))
        lo = max(0.0, float(acc.min()) - 0.1)
        fig.update_layout(yaxis_title="clean test accuracy (fraction)", yaxis_range=[lo, 1.0],
                          xaxis_title="classified with")
        ui.show(fig, key="c1_acc", title=f"Clean accuracy of {ck.id}<br><sup>"
                f"{int(df['n'].iloc[0])} test samples</sup>", height=400, legend=False)
    with c2:
        dist = pn_distance(ck.path, ck.sha, n, seed)
        fig = go.Figure(go.Bar(x=dist["layer"], y=dist["distance_to_pn_mean"],
                               marker_color=ui.PN_COLOR, name="PN vs clean batch"))
        fig.update_layout(xaxis_title="BatchNorm layer (module name)",
                          yaxis_title="distance of means (std units, RMS)")
        ui.show(fig, key="c1_dist", title=f"PN against a clean training batch<br><sup>{n} "
                "samples; 0 = PN equals the clean batch's statistics</sup>", height=400,
                legend=False)
    gap = float(acc.iloc[-1] - acc["PN"])
    if gap > 0.005:
        reading = (f"Here PN loses **{gap:.3f}** of clean accuracy against shaped inference "
                   f"({acc['PN']:.3f} vs {acc.iloc[-1]:.3f}): the norm difference costs accuracy, "
                   "as Confounding I says.")
    elif gap < -0.005:
        reading = (f"Here PN is **better** than shaped inference by {-gap:.3f} "
                   f"({acc['PN']:.3f} vs {acc.iloc[-1]:.3f}): on this checkpoint the running "
                   "statistics suit clean data, and Confounding I does not show.")
    else:
        reading = (f"Here PN and shaped inference give the same clean accuracy within half a "
                   f"point ({acc['PN']:.3f} vs {acc.iloc[-1]:.3f}): no measurable cost of the "
                   "norm difference on this checkpoint.")
    st.info(reading + f" PN lies on average {dist['distance_to_pn_mean'].mean():.3f} standard "
            "deviations (RMS) from the clean batch's means.")


def lesson_ii(ck, n: int, seed: int) -> None:
    ui.explain("During the attack, an all-adversarial batch is classified with its own BN, "
               "which moves away from the clean batch's. The adversarial examples are built "
               "against one boundary and trained on under another. **Experiment** (the paper's): "
               "FGSM, one step of the size used in training, crafted through the clean batch's "
               "own BN; then the logit error between each adversarial example and its clean "
               "version, with the adversarial batch classified using the clean batch's "
               "statistics versus its own. The paper measured the first 63% larger. The "
               "**Moving target** page shows the statistics step by step.")
    r = logit_errors(ck.path, ck.sha, n, seed)
    fig = go.Figure(go.Bar(
        x=["with the clean batch's BN", "with the adversarial batch's own BN"],
        y=[r["error_with_clean_bn"], r["error_with_adv_bn"]], marker_color=[ui.CLEAN_COLOR,
                                                                            ui.BN_COLOR],
        text=[f"{r['error_with_clean_bn']:.3f}", f"{r['error_with_adv_bn']:.3f}"],
        textposition="outside"))
    fig.update_layout(yaxis_title="mean logit error ||z(x_adv) - z(x)||_2 (logit units)",
                      xaxis_title="statistics the adversarial batch is classified with")
    ui.show(fig, key="c2_bars", title=f"Logit error of FGSM examples, eps {r['eps']:g}<br><sup>"
            f"{r['n']} training samples of {ck.id}</sup>", height=420, legend=False)
    rel = r["relative_difference"]
    if rel > 0.02:
        reading = (f"Here the logit error is **{pct(rel)}** larger with the clean batch's "
                   "statistics (paper: +63%): the examples expose the clean-statistics boundary "
                   "more than the boundary of their own batch, the one training will patch.")
    elif rel < -0.02:
        reading = (f"Here the logit error is **{pct(rel)}**: smaller with the clean batch's "
                   "statistics, the opposite of the paper's +63%. On this checkpoint the "
                   "adversarial batch's own statistics do not hide the attack.")
    else:
        reading = (f"Here the two logit errors are about equal ({pct(rel)}; paper: +63%): the "
                   "statistics barely move under this attack, so no moving target shows.")
    st.info(reading)


def lesson_iii(ck, n: int, seed: int) -> None:
    ui.explain("PGD crafted with PN sees one fixed boundary and walks straight at it; crafted "
               "with BN, the boundary moves at every step, the path zig-zags and the "
               "perturbation ends smaller. A shaped batch, where clean parts hold the statistics, "
               "should straighten it again. **Experiment** (the paper's): PGD with the training "
               "settings on training samples, crafted with PN, with BN (the adversarial batch's "
               "own statistics) and through shaped 1:3 batches; the size of the perturbation and "
               "the straightness of its path |x(K) - x(0)| / path length. The paper measured "
               "PN +17% over BN and shaping +41% over plain PGD.")
    r = perturbations(ck.path, ck.sha, n, seed)
    modes = list(r["modes"])
    colors = [ui.PN_COLOR if m == "PN" else ui.BN_COLOR if m == "BN" else SHAPED_DARK
              for m in modes]
    def bars(key: str) -> go.Figure:
        vals = [r["modes"][m][key] for m in modes]
        return go.Figure(go.Bar(x=modes, y=vals, marker_color=colors,
                                text=[f"{v:.3f}" for v in vals], textposition="outside"))

    c1, c2 = st.columns(2)
    with c1:
        fig = bars("mean_l2")
        fig.update_layout(yaxis_title="mean L2 size of the perturbation (input units)",
                          xaxis_title="crafted with (the norms of every PGD step)")
        ui.show(fig, key="c3_l2", title=f"Perturbation size, PGD-{r['steps']} eps {r['eps']:g}",
                height=420, legend=False)
    with c2:
        fig = bars("straightness")
        fig.update_layout(yaxis_title="straightness |x(K)-x(0)| / path length (1 = straight)",
                          xaxis_title="crafted with (the norms of every PGD step)",
                          yaxis_range=[0, 1.1])
        ui.show(fig, key="c3_straight", title="Straightness of the PGD path", height=420,
                legend=False)
    pb, sb = r["pn_vs_bn"], r["shaping_vs_bn"]
    first = ("larger" if pb > 0.02 else "smaller" if pb < -0.02 else "about the same size")
    second = ("larger" if sb > 0.02 else "smaller" if sb < -0.02 else "about the same size")
    st.info(f"Here PGD crafted with PN builds perturbations **{pct(pb)}** ({first}) compared "
            f"with BN (paper: +17%), and through shaped 1:3 batches **{pct(sb)}** ({second}) "
            "compared with BN (paper: +41%). "
            + ("Both point the paper's way: constant statistics make the stronger attack."
               if pb > 0.02 and sb > 0.02 else
               "So on this checkpoint the paper's direction does not fully show; the effect "
               "depends on how much the batch statistics move (see the Moving target page)."))


st.title("Confoundings")
if not ui.checkpoints():
    ui.no_checkpoints_message()
    st.stop()
with ui.settings_block():
    lesson = st.segmented_control("Lesson", list(LESSONS), default="I", key="lesson",
                                  bind="query-params", help="; ".join(LESSONS.values()))
    c1, c2, c3 = st.columns([3, 1, 1])
    with c1:
        ck = ui.checkpoint_picker("Checkpoint", key="cf_ckpt", prefer=ui.prefer_2d_adversarial,
                                  help="The confoundings are about adversarial training: plain "
                                       "PGD (adv only) shows them; shaped checkpoints should not.")
    n = c2.select_slider("Training samples", [64, 128, 256, 512], value=256, key="cf_n",
                         bind="query-params")
    seed = c3.number_input("Seed", 0, 10_000, 0, key="cf_seed", bind="query-params")
lesson = lesson or "I"
st.header(LESSONS[lesson])
{"I": lesson_i, "II": lesson_ii, "III": lesson_iii}[lesson](ck, int(n), int(seed))
