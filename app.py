"""normshape: an interactive lab for Batch-Norm Shaping in adversarial training.

``streamlit run app.py``. This file is the router (``st.navigation``) and the Home page; the
other pages live in ``app_pages/``. Pages are thin: widgets and plots over ``normshape_core``.

Why not ``pages/``: Streamlit treats a ``pages/`` folder next to the main script as a v1
multipage app until some session has run ``st.navigation``; on a freshly started server, a
shared deep link such as ``/compare`` would then run the page file alone, without this router
(no sidebar toggle, wrong navigation). Any other folder name avoids that.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from normshape_app import ui
from normshape_core.base.stats import interval_text

st.set_page_config(page_title="normshape: Batch-Norm Shaping lab", page_icon=":material/tune:",
                   layout="wide")
ui.sanitize_query_params()  # before any widget reads the URL: drop or clamp what does not fit


#: Home's first screen: where to start, by what you came to do
START = [("app_pages/confoundings.py", "Teach", "Confoundings",
          "a slide deck for a class: the three claims, each from a lesson checkpoint, and "
          "where each appears across depth, eps and datasets"),
         ("app_pages/playground.py", "Play", "Playground",
          "two small models train side by side on 2-D data, live: PN against shaped "
          "inference, their boundaries and eps-boxes"),
         ("app_pages/compare.py", "Measure", "Compare",
          "checkpoints side by side at one eps, the worst case first, every accuracy with "
          "its 95 % interval and n")]


def where_to_start() -> None:
    cols = st.columns(3)
    for col, (path, verb, title, what) in zip(cols, START):
        with col, st.container(border=True):
            st.page_link(path, label=f"**{verb}: {title}**")
            st.caption(what)


def home() -> None:
    st.title("normshape: a lab for Batch-Norm Shaping")
    where_to_start()
    ui.explain(
        "Adversarial training with BatchNorm mixes two sets of statistics: **BN**, the "
        "statistics of the batch being processed, and **PN**, the running (population) "
        "statistics used at test time. Zhang & Ma (ICTAI 2022) argue that the difference "
        "between the two confounds adversarial training in three ways, and propose **norm "
        "shaping**: every batch, in attack, training and inference, is a *shaped batch* in "
        "which clean samples dominate (ratio adv:clean such as 1:3), and inference classifies "
        "each sample with the BN of a batch that mixes it with clean reference samples "
        "(*shaped inference*). This lab lets you train small models, look at the statistics "
        "and decision boundaries, and measure each claim yourself, with every robustness "
        "number naming the norms it was crafted with and classified with.")

    st.subheader("The three confoundings")
    c1, c2, c3 = st.columns(3)
    with c1, st.container(border=True):
        st.markdown("**I. PN and BN differences degrade accuracy.** Adversarial training "
                    "computes its running statistics on adversarial batches, so at test time "
                    "clean inputs are normalised with statistics of another distribution. "
                    "Batches in which clean samples dominate keep the statistics those of "
                    "clean data, and so keep clean accuracy.")
    with c2, st.container(border=True):
        st.markdown("**II. The moving target hinders robustness.** While an all-adversarial "
                    "batch is perturbed, its own statistics move at every PGD step, so the "
                    "decision boundary the attack aims at moves too, and training patches a "
                    "boundary that was not the one attacked. In a shaped batch the unchanged "
                    "clean parts hold the statistics, and the target still.")
    with c3, st.container(border=True):
        st.markdown("**III. Norm differences weaken BN attacks.** Crafted through moving batch "
                    "statistics, PGD zig-zags and builds a smaller perturbation than when "
                    "crafted with the constant PN, so training sees weaker attacks than "
                    "evaluation uses. Shaped batches straighten the path.")

    st.subheader("Checkpoints found")
    ckpts = ui.checkpoints()
    if not ckpts:
        ui.no_checkpoints_message()
    else:
        inventory(ckpts)
    errors = ui.checkpoint_errors()
    if errors:  # one line each, naming the folder, the checkpoint and the field; as text
        st.warning(f"Skipped {len(errors)} checkpoint{'s' if len(errors) > 1 else ''} that "
                   "failed the checkpoint schema (not listed on any page):")
        st.code("\n".join(errors), language=None, wrap_lines=True)
    folders = [ui.folder_label(d) for d in ui.checkpoint_dirs()]
    st.caption(f"Device in use: {ui.device_text()}. Checkpoints are read from "
               + (", ".join(folders[:-1]) + " and " if len(folders) > 1 else "")
               + folders[-1] + ".")

    st.subheader("More pages")
    nxt = [("app_pages/train.py", "Train", "train a run in the background, watch its curves"),
           ("app_pages/ratios.py", "Ratios", "training x inference ratios (Table IV), the "
                                              "worst case beside the paper's PGD"),
           ("app_pages/moving_target.py", "Moving target", "BN statistics step by step in PGD"),
           ("app_pages/decision_boundaries.py", "Decision boundaries",
            "PN against shaped inference, in input space")]
    cols = st.columns(len(nxt))
    for col, (path, title, what) in zip(cols, nxt):
        with col:
            st.page_link(path, label=f"**{title}**")
            st.caption(what)


TRAINING = {"none": "adv only", "train": "shaping in training",
            "attack+train": "shaping in attack+training"}
#: pandas' tooltip box: drawn just above the hovered cell, wrapped to a readable width.
TOOLTIP_CSS = ("visibility: hidden; position: absolute; z-index: 10; width: 26rem; "
               "transform: translate(0, calc(-100% - 0.4rem)); background-color: #31333f; "
               "color: #ffffff; padding: 0.3rem 0.6rem; border-radius: 0.3rem; "
               "font-size: 0.8rem; line-height: 1.3; white-space: normal;")


WORST_PN = "robust acc. worst case (crafted PN, classified PN)"
WORST_SHAPED = "robust acc. worst case (exact shaped batches, classified shaped 1:9)"


def trainer_check_n(ck):
    """The test samples of the trainer's end-of-training check (``eval_samples``, at most the
    test set), or None when the dataset is not on this server."""
    try:
        return min(int(ck.config.get("eval_samples") or 500), ui.test_set_size(ck.dataset))
    except ui.USER_ERRORS:
        return None


def inventory_rows(ckpts):
    """(table, n): one row per checkpoint: its full id, how it was trained (polluted running
    statistics said in a column of their own; a stopped run's epoch), the trainer's
    end-of-training accuracies and the shipped worst case; ``n``: (id, column) -> the test
    samples of a worst-case number."""
    rows, ns = [], {}
    for c in ckpts:
        cfg, fm = c.config, c.meta.get("final_metrics", {})
        natural = cfg["method"] == "natural"
        training = "natural" if natural else f"{cfg['method'].upper()}, {TRAINING[cfg['shaping']]}"
        if not natural and cfg["shaping"] != "none":
            training += f" {cfg['ratio']}"
        if cfg.get("norm") == "dual_bn":
            training = f"{cfg['method'].upper()}, clean + adv"
        if c.stopped_text():  # a run stopped early: its checkpoint is of an earlier epoch
            training += f", {c.stopped_text()}"
        row = {"checkpoint": c.id, "dataset": cfg["dataset"], "training": training,
               "norms": ui.norm_text(cfg) or "BN",
               "polluted PN": "yes" if cfg.get("polluted_running_stats") else "no",
               "eps": ui.eps_text(cfg)}
        n_check = trainer_check_n(c)
        for k, v in fm.items():
            if k.startswith("test/"):
                row[ui.metric_label(k)] = v
                ns[(c.id, ui.metric_label(k))] = n_check
        worst = ui.shipped_worst_cases().get(c.sha, {})
        for col, clf in ((WORST_PN, "PN"), (WORST_SHAPED, "shaped 1:9")):
            row[col], ns[(c.id, col)] = worst.get(clf, (None, None))
        rows.append(row)
    return pd.DataFrame(rows), ns


def inventory(ckpts) -> None:
    """The checkpoints as HTML tables (``st.table``), one tab per dataset: cells and headers
    wrap, so at 1024 px every id is whole and the accuracy columns are on screen; hovering
    an id shows it with its settings. Every name is shown as text, never as Markdown."""
    df, ns = inventory_rows(ckpts)
    datasets = list(dict.fromkeys(df["dataset"]))
    tabs = st.tabs([f"{ui.md_escape(d)} ({(df['dataset'] == d).sum()})" for d in datasets])
    acc = [k for k in df.columns if k.startswith(("clean acc", "robust acc"))]
    by_id = {c.id: c for c in ckpts}
    for tab, d in zip(tabs, datasets):
        part = df[df["dataset"] == d].drop(columns="dataset").reset_index(drop=True)
        tips = pd.DataFrame("", index=part.index, columns=part.columns)
        tips["checkpoint"] = [ui.css_text(
            f"{cid}: {by_id[cid].short()}, model {by_id[cid].config['model']}, created "
            f"{str(by_id[cid].meta.get('created', '?'))[:16].replace('T', ' ')}")
            for cid in part["checkpoint"]]
        for col in acc:  # hovering an accuracy: its 95 % interval and n
            tips[col] = [interval_text(v, ns.get((cid, col)))
                         for cid, v in zip(part["checkpoint"], part[col])]
        text = [k for k in part.columns if k not in acc]
        with tab:
            st.table(part.rename(columns=ui.md_escape).style.hide(axis="index")
                     .format("{:.3f}", subset=[ui.md_escape(k) for k in acc], na_rep="–")
                     .format(ui.md_escape, subset=[ui.md_escape(k) for k in text])
                     .set_tooltips(tips.rename(columns=ui.md_escape), props=TOOLTIP_CSS))
    from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

    st.caption("Clean accuracy and PGD-10 robust accuracy are the trainer's end-of-training "
               "check on up to 500 test samples, examples crafted with PN and classified with "
               "PN. The **worst case** is the headline: per sample, the worst of the attacks "
               f"of the ensemble ({ui.md_escape(DEFAULT_ENSEMBLE)}), each classifier attacked "
               "through its own norms (PN; the defender's exact shaped batches for shaped "
               "inference), from the reproduction's results (REPRODUCTION.md); hover it for its "
               "95 % interval and n; '–' where not computed: the Compare page computes it for "
               "any checkpoint. *Polluted PN*: trained "
               "with attack steps updating the running statistics, as the paper's TensorFlow "
               "code did. Hover a checkpoint for its settings, model and date; the Compare page "
               "evaluates each checkpoint under every pairing of norms.")


PAGES = [
    st.Page(home, title="Home", icon=":material/home:", url_path="home", default=True),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:",
            url_path="train"),
    st.Page("app_pages/playground.py", title="Playground", icon=":material/play_circle:",
            url_path="playground"),
    st.Page("app_pages/ratios.py", title="Ratios", icon=":material/grid_on:", url_path="ratios"),
    st.Page("app_pages/moving_target.py", title="Moving target", icon=":material/moving:",
            url_path="moving-target"),
    st.Page("app_pages/decision_boundaries.py", title="Decision boundaries",
            icon=":material/scatter_plot:", url_path="decision-boundaries"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:",
            url_path="compare"),
    st.Page("app_pages/confoundings.py", title="Confoundings", icon=":material/school:",
            url_path="confoundings"),
]

page = st.navigation(PAGES)
with st.sidebar:
    st.toggle("Presentation mode", key="present", bind="query-params",
              help="Hide the settings and enlarge the figures (the choice is in the URL, so a "
                   "shared link opens the same view).")
    st.caption("PN = population norms (running statistics); BN = batch norms. Colours on "
               "every page: "
               f"<span style='color:{ui.PN_COLOR}'>■ PN</span> "
               f"<span style='color:{ui.BN_COLOR}'>■ BN / shaped inference</span>",
               unsafe_allow_html=True)
ui.presentation_setup()  # presenting: sidebar collapsed, larger text
try:
    page.run()
except ui.USER_ERRORS as e:  # a checkpoint or dataset that cannot be used: say so, go on
    st.error(f"This cannot be shown: {ui.message_text(e)}")
    st.caption("Choose another checkpoint or setting; the rest of the app keeps working.")
