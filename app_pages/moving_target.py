"""Moving target: BN statistics of an attacked batch, step by step (Confounding II)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from normshape_app import experiments as X
from normshape_app import ui
from normshape_core.figures import moving_target as F

COMPOSITIONS = ["1:0", "1:1", "1:3", "1:7", "1:15"]
MEASURES = F.MEASURES


st.title("Moving target")
ui.explain("**Confounding II.** While PGD perturbs the adversarial part of a batch, every "
           "attack step runs with the batch's own statistics (frozen BN), so the statistics, "
           "and with them the decision boundary the attack aims at, move from step to step. "
           "Compare an all-adversarial batch (1:0, plain PGD training) with a shaped batch "
           "whose clean parts stay put. Distances are scale-free: per channel, the mean "
           "difference in units of the reference standard deviation (or the relative variance "
           "difference), root-mean-square over channels.")

if not ui.checkpoints():
    ui.no_checkpoints_message()
    st.stop()
with ui.settings_block():
    c1, c2, c3 = st.columns([3, 1, 1])
    with c1:
        ck = ui.checkpoint_picker("Checkpoint", key="mt_ckpt", prefer=ui.prefer_2d_adversarial)
    comp_a = c2.selectbox("Batch composition adv:clean", COMPOSITIONS, index=0, key="mt_comp",
                          bind="query-params", help="1:0 = all-adversarial (plain PGD)")
    comp_b = c3.selectbox("Shaped batch to compare", COMPOSITIONS, index=2, key="mt_shaped",
                          bind="query-params")
    cfg = ck.config
    c1, c2, c3, c4 = st.columns(4)
    batch = c1.select_slider("Batch size (training samples)", [32, 64, 128, 256],
                             value=64, key="mt_batch", bind="query-params")
    seed = c2.number_input("Batch seed", 0, 10_000, 0, key="mt_seed", bind="query-params")
    measure_name = c3.selectbox("Measure", list(MEASURES), key="mt_measure",
                                bind="query-params", help="; ".join(
                                    f"{k}: {v[1]}" for k, v in MEASURES.items()))
    stat_name = c4.radio("Statistic", ["mean", "variance"], horizontal=True, key="mt_stat",
                         bind="query-params")
measure = MEASURES[measure_name][0]
stat = "mean" if stat_name == "mean" else "var"

eps = float(cfg.get("eps") or 0.1)
steps = int(cfg.get("steps") or 10)
step_size = float(cfg.get("step_size") or eps / 4)
comps = [comp_a] if comp_a == comp_b else [comp_a, comp_b]
res = {c: X.moving_target_trace(ck.path, ck.sha, c, batch, int(seed), eps, step_size, steps)
       for c in comps}
t = st.slider("PGD step t", 0, steps, steps, key="mt_step", bind="query-params")
st.caption(f"PGD: eps {eps:g}, step size {step_size:g}, {steps} steps, from the clean point "
           f"(no random start), all steps with frozen BN of the whole batch; batch of {batch} "
           f"training samples drawn with seed {seed}.")

frames = {c: res[c]["frame"] for c in comps}
c1, c2 = st.columns(2)
with c1:
    ui.show(F.steps_figure(frames, measure, stat, t), key="mt_steps", height=420, columns=2)
with c2:
    ui.show(F.layers_figure(frames, measure, stat, t), key="mt_layers", height=420, columns=2)

cols = st.columns(len(comps) + 1)
for i, c in enumerate(comps):
    s = res[c]["summary"]
    cols[i].metric(f"Batch {c}: mean change per step", f"{s['step_drift_mean']:.4f}",
                   help="mean over steps and layers of the change of the batch mean since the "
                        "previous step, in units of the clean batch's standard deviation")
if len(comps) == 2:
    damped = F.damping_text([res[c]["summary"] for c in comps], comps)
    if damped:
        factor, word, text = damped
        cols[-1].metric("Damping", f"{factor:.1f}x {word}",
                        help=f"how much less (or more) the statistics of batch {comps[1]} move "
                             f"per step than those of batch {comps[0]}")
        st.markdown(text)

if ck.is_2d:
    st.subheader("The decision boundary moving under the attack")
    ui.explain("Each panel classifies the plane with the BN statistics of the batch at step t: "
               "the boundary the attack is aiming at. The dotted line is the boundary at step "
               "0. Lines trace each attacked point's path; a path that turns is the zig-zag of "
               "the paper's Fig. 3.")
    cols = st.columns(len(comps))
    for i, c in enumerate(comps):
        with cols[i]:
            ui.show(F.boundary_figure(res[c], t, c), key=f"mt_boundary_{i}", height=560,
                    columns=2)
            s = res[c]["straightness"]
            st.caption(f"Straightness |x(K)-x(0)| / path length, mean over attacked points: "
                       f"**{np.nanmean(s):.3f}** (1 = straight).")
