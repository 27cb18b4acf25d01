"""Moving target: BN statistics of an attacked batch, step by step (Confounding II)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from normshape_app import ui
from normshape_core import projections as P
from normshape_core.diagnostics import moving_target

COMPOSITIONS = ["1:0", "1:1", "1:3", "1:7", "1:15"]
MEASURES = {"to clean batch": ("distance_to_clean", "distance to the clean batch's statistics"),
            "to PN": ("distance_to_pn", "distance to PN (running statistics)"),
            "step change": ("step_change", "change since the previous PGD step")}
YLABEL = {"mean": "distance of means (std units, RMS)",
          "var": "relative variance difference (RMS)"}
# All-adversarial batch in BN's colour, the shaped batch in a darker shade of it.
COMP_COLORS = [ui.BN_COLOR, "#7f2704"]
COMP_DASH = ["solid", "dash"]


@st.cache_data(show_spinner="Running PGD on the batch and recording BN statistics ...",
               max_entries=64)
def trace(path: str, sha: str, ratio: str, batch: int, seed: int, eps: float, step_size: float,
          steps: int):
    model, meta = ui.load_model(path, sha)
    data = ui.load_dataset(meta["config"]["dataset"])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:batch]
    x, y = data.x_train[idx], data.y_train[idx]
    tr = moving_target(model, x, y, ratio, eps=eps, step_size=step_size, steps=steps, seed=seed)
    out = {"frame": tr.frame, "summary": tr.summary(), "points": tr.points.numpy(),
           "x": x.numpy(), "y": y.numpy(), "n_clean": tr.n_clean}
    if list(meta["input_shape"]) == [2]:  # the decision boundary at every step
        grid = P.grid_around(data.x_train, resolution=110, margin=0.05)
        clean = x[:tr.n_clean]
        batches = [torch.cat([clean, tr.points[t]]) for t in range(steps + 1)]
        regions = P.regions_per_batch(model, batches, grid)
        out["regions"] = [(r.xs, r.ys, r.probs[1], r.pred) for r in regions]
        with torch.no_grad():
            out["adv_pred"] = np.stack([
                P.BatchStatsClassifier(model, b)(tr.points[t]).argmax(1).numpy()
                for t, b in enumerate(batches)])
        out["straightness"] = P.path_straightness(tr.points)
    return out


def layer_mean(frame, measure: str, stat: str):
    col = f"{measure}_{stat}"
    return frame.groupby("step")[col].mean()


def boundary_figure(res, t: int, comp: str, key: str) -> None:
    xs, ys, p1, pred = res["regions"][t]
    _, _, p1_0, _ = res["regions"][0]
    fig = go.Figure()
    fig.add_heatmap(x=xs, y=ys, z=pred, colorscale=[[0, ui.REGION_COLORS[0]],
                                                     [1, ui.REGION_COLORS[1]]],
                    showscale=False, hoverinfo="skip", zmin=0, zmax=1)
    fig.add_contour(x=xs, y=ys, z=p1_0, contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color="#999999", dash="dot", width=2), showscale=False,
                    name="boundary at step 0", showlegend=True, hoverinfo="skip")
    fig.add_contour(x=xs, y=ys, z=p1, contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color=ui.BN_COLOR, width=3), showscale=False,
                    name=f"boundary at step {t} (BN of this batch)", showlegend=True,
                    hoverinfo="skip")
    x, y, n_clean = res["x"], res["y"], res["n_clean"]
    for c in (0, 1):
        m = y[:n_clean] == c
        fig.add_scatter(x=x[:n_clean][m, 0], y=x[:n_clean][m, 1], mode="markers",
                        marker=dict(color=ui.CLASS_COLORS[c], size=6, opacity=0.5),
                        name=f"clean part, class {c}")
    pts = res["points"]  # [steps+1, n_adv, 2]
    ya = y[n_clean:]
    xs_path, ys_path = [], []
    for i in range(pts.shape[1]):
        xs_path += list(pts[:t + 1, i, 0]) + [None]
        ys_path += list(pts[:t + 1, i, 1]) + [None]
    fig.add_scatter(x=xs_path, y=ys_path, mode="lines", line=dict(color="#444444", width=1),
                    name="PGD paths, step 0 to t")
    wrong = res["adv_pred"][t] != ya
    for c in (0, 1):
        m = (ya == c) & ~wrong
        fig.add_scatter(x=pts[t, m, 0], y=pts[t, m, 1], mode="markers",
                        marker=dict(symbol="x", size=8, color=ui.CLASS_COLORS[c]),
                        name=f"adversarial, class {c}, still right")
    fig.add_scatter(x=pts[t, wrong, 0], y=pts[t, wrong, 1], mode="markers",
                    marker=dict(symbol="x", size=9, color=ui.WRONG_COLOR),
                    name="adversarial, misclassified")
    fig.update_layout(xaxis_title="x1 (input units)", yaxis_title="x2 (input units)",
                      yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.18))
    ui.show(fig, key=key, title=f"Batch {comp}: decision boundary at PGD step {t}", height=560,
            columns=2)


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
measure, measure_text = MEASURES[measure_name]
stat = "mean" if stat_name == "mean" else "var"

eps = float(cfg.get("eps") or 0.1)
steps = int(cfg.get("steps") or 10)
step_size = float(cfg.get("step_size") or eps / 4)
comps = [comp_a] if comp_a == comp_b else [comp_a, comp_b]
res = {c: trace(ck.path, ck.sha, c, batch, int(seed), eps, step_size, steps) for c in comps}
t = st.slider("PGD step t", 0, steps, steps, key="mt_step", bind="query-params")
st.caption(f"PGD: eps {eps:g}, step size {step_size:g}, {steps} steps, from the clean point "
           f"(no random start), all steps with frozen BN of the whole batch; batch of {batch} "
           f"training samples drawn with seed {seed}.")

c1, c2 = st.columns(2)
with c1:
    fig = go.Figure()
    for i, c in enumerate(comps):
        s = layer_mean(res[c]["frame"], measure, stat)
        fig.add_scatter(x=s.index, y=s.values, mode="lines+markers", name=f"batch {c}",
                        line=dict(color=COMP_COLORS[i], dash=COMP_DASH[i]))
    fig.add_vline(x=t, line=dict(color="#888888", dash="dot"))
    fig.update_layout(xaxis_title="PGD step", yaxis_title=YLABEL[stat],
                      legend=dict(orientation="h", y=-0.25))
    ui.show(fig, key="mt_steps", title=f"Batch {stat_name}: {measure_text}<br><sup>mean over "
            "BatchNorm layers</sup>", height=420, columns=2)
with c2:
    fig = go.Figure()
    for i, c in enumerate(comps):
        f = res[c]["frame"]
        f = f[f["step"] == t]
        fig.add_bar(x=f["layer"], y=f[f"{measure}_{stat}"], name=f"batch {c}",
                    marker=dict(color=COMP_COLORS[i]))
    fig.update_layout(barmode="group", xaxis_title="BatchNorm layer (module name)",
                      yaxis_title=YLABEL[stat], legend=dict(orientation="h", y=-0.3))
    ui.show(fig, key="mt_layers", title=f"Per layer at PGD step {t}<br><sup>{measure_text}"
            "</sup>", height=420, columns=2)

a = res[comps[0]]["summary"]
cols = st.columns(len(comps) + 1)
for i, c in enumerate(comps):
    s = res[c]["summary"]
    cols[i].metric(f"Batch {c}: mean change per step", f"{s['step_drift_mean']:.4f}",
                   help="mean over steps and layers of the change of the batch mean since the "
                        "previous step, in units of the clean batch's standard deviation")
if len(comps) == 2:
    da, db = (res[c]["summary"]["step_drift_mean"] for c in comps)
    if db > 0 and da > 0:
        word = "less" if db < da else "more"
        factor = da / db if db < da else db / da
        cols[-1].metric("Damping", f"{factor:.1f}x {word}",
                        help=f"how much less (or more) the statistics of batch {comps[1]} move "
                             f"per step than those of batch {comps[0]}")
        st.markdown(f"Reading the numbers: the statistics of batch **{comps[1]}** move "
                    f"**{factor:.1f} times {word}** per PGD step than those of batch "
                    f"**{comps[0]}**"
                    + (" - the clean parts hold the target still." if db < da else
                       " - here shaping does not damp the movement.")
                    + f" Attacked through its own batch, the adversarial part ends with "
                      f"accuracy {res[comps[0]]['summary']['adv_acc']:.2f} ({comps[0]}) and "
                      f"{res[comps[1]]['summary']['adv_acc']:.2f} ({comps[1]}).")

if ck.is_2d:
    st.subheader("The decision boundary moving under the attack")
    ui.explain("Each panel classifies the plane with the BN statistics of the batch at step t: "
               "the boundary the attack is aiming at. The dotted line is the boundary at step "
               "0. Lines trace each attacked point's path; a path that turns is the zig-zag of "
               "the paper's Fig. 3.")
    cols = st.columns(len(comps))
    for i, c in enumerate(comps):
        with cols[i]:
            boundary_figure(res[c], t, c, key=f"mt_boundary_{i}")
            s = res[c]["straightness"]
            st.caption(f"Straightness |x(K)-x(0)| / path length, mean over attacked points: "
                       f"**{np.nanmean(s):.3f}** (1 = straight).")
