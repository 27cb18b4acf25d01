"""Decision boundaries: PN against shaped inference (2-D sets) or BN (images), and feature maps."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from normshape_app import ui
from normshape_core import projections as P
from normshape_core.attacks import make_attack
from normshape_core.shaping import PNClassifier, ShapedClassifier, make_reference_pool

SHAPED_RATIOS = ["1:1", "1:3", "1:9", "1:19"]
CRAFT = {"own norms": "each panel's own norms: PN on the left, BN with the exact references "
                      "on the right (the strongest attack on each)",
         "PN": "PN for both panels (transfer, as in the paper's Tables I-II)"}
RIGHT = {"BN": "BN: the statistics of the image's own test batch of 100",
         "shaped 1:9": "shaped inference 1:9 (one fixed draw of references)",
         "shaped 1:3": "shaped inference 1:3 (one fixed draw of references)"}


def _setup(path: str, sha: str):
    model, meta = ui.load_model(path, sha)
    data = ui.load_dataset(meta["config"]["dataset"])
    eps = float(meta["config"].get("eps") or 0.1)
    return model, meta, data, eps


@st.cache_data(show_spinner="Classifying the plane under PN and under shaped inference ...",
               max_entries=32)
def regions_2d(path: str, sha: str, ratio: str, craft: str, n_boxes: int, seed: int):
    model, meta, data, eps = _setup(path, sha)
    pool = make_reference_pool(data, 1000, seed=0)
    pn = PNClassifier(model)
    shaped = P.BatchMemberClassifier(model, P.fixed_references(pool, ratio, seed=0),
                                     crafting_label="BN (exact refs)")
    grid = P.grid_around(data.x_train, resolution=140, margin=0.05)
    out = {"pn": P.decision_regions(pn, grid), "shaped": P.decision_regions(shaped, grid)}
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:n_boxes]
    x, y = data.x_train[idx], data.y_train[idx]
    pgd = make_attack("pgd", eps=eps, steps=20, seed=seed)
    adv_pn = pgd.run(pn, x, y)
    if craft == "own norms":
        adv_sh = pgd.run(shaped, x, y)  # through the exact shaped batches: adaptive
    else:
        adv_sh = adv_pn
    with torch.no_grad():
        for name, clf, res in (("pn", pn, adv_pn), ("shaped", shaped, adv_sh)):
            out[name + "_points"] = {
                "x_adv": res.x_adv.numpy(), "crafted_with": res.crafted_with,
                "clean_right": (clf(x).argmax(1) == y).numpy(),
                "adv_right": (clf(res.x_adv).argmax(1) == y).numpy()}
            xt, yt = data.x_test, data.y_test
            out[name + "_test_acc"] = float((clf(xt).argmax(1) == yt).float().mean())
        # The same measured with shaped inference proper (per-sample fresh references).
        proper = ShapedClassifier(model, pool, ratio, group_size=1, seed=0)
        out["shaped_test_acc_proper"] = float((proper(xt).argmax(1) == yt).float().mean())
    out.update(x=x.numpy(), y=y.numpy(), eps=eps, x_train=data.x_train.numpy(),
               y_train=data.y_train.numpy())
    return out


def region_figure(res, which: str, title: str, color: str, key: str) -> None:
    reg, pts = res[which], res[which + "_points"]
    fig = go.Figure()
    fig.add_heatmap(x=reg.xs, y=reg.ys, z=reg.pred, zmin=0, zmax=1, showscale=False,
                    colorscale=[[0, ui.REGION_COLORS[0]], [1, ui.REGION_COLORS[1]]],
                    hoverinfo="skip")
    fig.add_contour(x=reg.xs, y=reg.ys, z=reg.probs[1], showscale=False, hoverinfo="skip",
                    contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color=color, width=3), name="decision boundary", showlegend=True)
    xt, yt = res["x_train"], res["y_train"]
    for c in (0, 1):
        m = yt == c
        fig.add_scatter(x=xt[m, 0], y=xt[m, 1], mode="markers", name=f"training, class {c}",
                        marker=dict(size=3, color=ui.CLASS_COLORS[c], opacity=0.25))
    x, y, eps = res["x"], res["y"], res["eps"]
    bx, by = [], []
    for p in x:
        bx += [p[0] - eps, p[0] + eps, p[0] + eps, p[0] - eps, p[0] - eps, None]
        by += [p[1] - eps, p[1] - eps, p[1] + eps, p[1] + eps, p[1] - eps, None]
    fig.add_scatter(x=bx, y=by, mode="lines", line=dict(color="#555555", width=1),
                    name=f"eps-box (L-inf, eps {eps:g})")
    ax, ay = [], []
    for p, q in zip(x, pts["x_adv"]):
        ax += [p[0], q[0], None]
        ay += [p[1], q[1], None]
    fig.add_scatter(x=ax, y=ay, mode="lines", line=dict(color="#777777", width=1, dash="dot"),
                    name="perturbation", showlegend=False)
    right_c, right_a = pts["clean_right"], pts["adv_right"]
    for c in (0, 1):
        m = (y == c) & right_c
        fig.add_scatter(x=x[m, 0], y=x[m, 1], mode="markers", name=f"sample, class {c}",
                        marker=dict(size=8, color=ui.CLASS_COLORS[c], line=dict(width=1,
                                                                                 color="white")))
        m = (y == c) & right_a
        fig.add_scatter(x=pts["x_adv"][m, 0], y=pts["x_adv"][m, 1], mode="markers",
                        name=f"adversarial, class {c}, right",
                        marker=dict(symbol="x", size=8, color=ui.CLASS_COLORS[c]))
    fig.add_scatter(x=x[~right_c, 0], y=x[~right_c, 1], mode="markers",
                    name="sample, misclassified", marker=dict(size=9, color=ui.WRONG_COLOR))
    fig.add_scatter(x=pts["x_adv"][~right_a, 0], y=pts["x_adv"][~right_a, 1], mode="markers",
                    name="adversarial, misclassified",
                    marker=dict(symbol="x", size=9, color=ui.WRONG_COLOR))
    fig.update_layout(xaxis_title="x1 (input units)", yaxis_title="x2 (input units)",
                      yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.15))
    ui.show(fig, key=key, title=title, height=620, columns=2)
    extra = ""
    if which == "shaped":
        extra = (f" (with a fresh reference draw per sample, as shaped inference does it: "
                 f"{res['shaped_test_acc_proper']:.3f}). The plane is classified with one "
                 f"fixed draw of clean training samples as references, so it shows one function")
    st.caption(f"Adversarial examples: PGD-20 crafted with {pts['crafted_with']}. On these "
               f"{len(y)} samples: clean {right_c.mean():.2f}, robust {right_a.mean():.2f}. "
               f"Clean accuracy on the whole test set: {res[which + '_test_acc']:.3f}{extra}.")


@st.cache_data(show_spinner="Classifying the slice of input space ...", max_entries=32)
def image_slice(path: str, sha: str, index: int, mode: str, extent: float, seed: int):
    model, meta, data, eps = _setup(path, sha)
    x0, label = data.x_test[index], int(data.y_test[index])
    pn = PNClassifier(model)
    res = make_attack("pgd", eps=eps, steps=20, seed=seed).run(pn, x0[None], data.y_test[[index]])
    d1 = (res.x_adv[0] - x0)
    if float(d1.abs().max()) == 0:  # no gradient to follow: fall back to a random sign step
        g = torch.Generator().manual_seed(seed)
        d1 = eps * torch.sign(torch.randn(x0.shape, generator=g))
    d2 = P.orthogonal_direction(d1, seed)
    if mode == "BN":
        start = (index // 100) * 100  # the test batch of 100 that holds the image
        batch = data.x_test[start:start + 100]
        right = P.BatchStatsClassifier(model, batch)
        right_label = f"BN of its test batch ({len(batch)} images)"
    else:
        ratio = mode.split()[-1]
        pool = make_reference_pool(data, 1000, seed=0)
        right = P.BatchMemberClassifier(model, P.fixed_references(pool, ratio, seed=0))
        right_label = f"shaped inference {ratio}"
    with torch.no_grad():
        adv_pred = {"PN": int(pn(res.x_adv).argmax(1)), "right": int(right(res.x_adv).argmax(1))}
    return {"pn": P.input_slice(pn, x0, label, d1, d2, extent, 41),
            "right": P.input_slice(right, x0, label, d1, d2, extent, 41),
            "right_label": right_label, "x0": x0.numpy(), "x_adv": res.x_adv[0].numpy(),
            "label": label, "classes": meta.get("classes"), "eps": eps, "adv_pred": adv_pred}


def _img(a) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what st.image shows: H x W (grey) or H x W x C."""
    a = np.asarray(a)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def slice_figure(sl, label: int, classes, title: str, color: str, key: str) -> None:
    n_cls = len(classes)
    scale = [[i / max(n_cls - 1, 1), ui.CLASS_COLORS[i % len(ui.CLASS_COLORS)]]
             for i in range(n_cls)]
    fig = go.Figure(go.Heatmap(
        x=sl.alphas, y=sl.betas, z=sl.pred, zmin=0, zmax=n_cls - 1, colorscale=scale,
        showscale=False, customdata=np.vectorize(lambda k: classes[k])(sl.pred),
        hovertemplate="a=%{x:.2f}, b=%{y:.2f}: %{customdata}<extra></extra>"))
    fig.add_contour(x=sl.alphas, y=sl.betas, z=(sl.pred == label).astype(float),
                    contours=dict(start=0.5, end=0.5, coloring="none"),
                    line=dict(color=color, width=3), showscale=False, hoverinfo="skip",
                    name=f"boundary of the true class ({classes[label]})", showlegend=True)
    fig.add_scatter(x=[0], y=[0], mode="markers", name="the test image",
                    marker=dict(size=12, color="white", line=dict(width=2, color="black")))
    fig.add_scatter(x=[1], y=[0], mode="markers", name="PGD example (crafted with PN)",
                    marker=dict(size=12, symbol="x", color="black"))
    for k in sorted(set(np.unique(sl.pred).tolist())):
        fig.add_scatter(x=[None], y=[None], mode="markers", name=f"predicted: {classes[k]}",
                        marker=dict(size=10, symbol="square",
                                    color=ui.CLASS_COLORS[k % len(ui.CLASS_COLORS)]))
    fig.update_layout(xaxis_title="a: along the PGD perturbation (1 = the PGD example)",
                      yaxis_title="b: random orthogonal direction (same L2 size)",
                      yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.2))
    ui.show(fig, key=key, title=title, height=560, columns=2)


@st.cache_data(show_spinner="Computing the feature map (UMAP compiles its code on first use in "
                            "a process: about 15-20 s on two cores) ...", max_entries=32)
def feature_map(path: str, sha: str, method: str, norms: str, n: int, seed: int):
    model, meta, data, eps = _setup(path, sha)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_test), generator=g)[:n]
    x, y = data.x_test[idx], data.y_test[idx]
    x_adv = make_attack("pgd", eps=eps, steps=20, seed=seed).run(PNClassifier(model), x, y).x_adv
    mode = "pn" if norms == "pn" else "frozen_bn"  # BN: each set with its own batch statistics
    f = np.concatenate([P.penultimate_features(model, x, mode, chunk=len(x)),
                        P.penultimate_features(model, x_adv, mode, chunk=len(x))])
    return {"emb": P.embed_2d(f, method, seed=seed), "y": y.numpy(), "n": len(x),
            "classes": meta.get("classes") or [str(i) for i in range(int(y.max()) + 1)]}


st.title("Decision boundaries")
if not ui.checkpoints():
    ui.no_checkpoints_message()
    st.stop()
with ui.settings_block():
    ck = ui.checkpoint_picker("Checkpoint", key="db_ckpt", prefer=ui.prefer_2d_shaped)
    cfg = ck.config
    c1, c2, c3 = st.columns(3)
    if ck.is_2d:
        ratio = c1.selectbox("Shaped inference ratio adv:clean", SHAPED_RATIOS, index=2,
                             key="db_ratio", bind="query-params")
        craft = c2.selectbox("Adversarial examples crafted with", list(CRAFT), key="db_craft",
                             bind="query-params", help="; ".join(f"{k}: {v}"
                                                                 for k, v in CRAFT.items()))
        n_boxes = c3.slider("Samples with eps-boxes", 5, 60, 20, key="db_boxes",
                            bind="query-params")
    else:
        n_test = len(ui.load_dataset(ck.dataset).x_test)
        index = c1.number_input("Test image (index)", 0, n_test - 1, 0, key="db_image",
                                bind="query-params")
        right = c2.selectbox("Right panel classified with", list(RIGHT), key="db_right",
                             bind="query-params",
                             help="; ".join(f"{k}: {v}" for k, v in RIGHT.items()))
        extent = c3.slider("Extent of the slice (x the PGD perturbation)", 1.0, 5.0, 2.0, 0.5,
                           key="db_extent", bind="query-params")
    c1, c2, c3 = st.columns(3)
    method = c1.radio("Feature map", ["UMAP", "PCA"], horizontal=True, key="db_map",
                      bind="query-params")
    norms = c2.radio("Features computed with", ["PN", "BN"], horizontal=True, key="db_norms",
                     bind="query-params", help="BN: the clean samples with their batch's "
                     "statistics, the adversarial ones with theirs")
    seed = c3.number_input("Seed", 0, 10_000, 0, key="db_seed", bind="query-params")

if ck.is_2d:
    ui.explain("The paper's Fig. 1, from a real model: the regions where the model predicts each "
               "class, classified with PN (left) and with shaped inference (right), with "
               "training samples, their eps-boxes and adversarial examples on top. Red marks a "
               "misclassified sample; ideally each whole box lies inside its class's region.")
    res = regions_2d(ck.path, ck.sha, ratio, craft, int(n_boxes), int(seed))
    c1, c2 = st.columns(2)
    with c1:
        region_figure(res, "pn", "Classified with PN", ui.PN_COLOR, key="db_pn")
    with c2:
        region_figure(res, "shaped", f"Classified with shaped inference {ratio}", ui.BN_COLOR,
                      key="db_shaped")
    dis = res["pn"].disagreement(res["shaped"])
    st.markdown(f"PN and shaped inference {ratio} disagree on **{dis:.1%}** of the plotted plane"
                + (" - the two boundaries are practically the same." if dis < 0.01 else "."))
else:
    ui.explain("A 2-D slice of input space around one test image: the plane through the image "
               "spanned by its PGD perturbation (crafted with PN) and a random orthogonal "
               "direction of the same size, coloured by the predicted class, under PN (left) "
               "and under BN (right). Where the two maps differ, the norms alone move the "
               "boundary.")
    sl = image_slice(ck.path, ck.sha, int(index), right, float(extent), int(seed))
    classes = sl["classes"] or [str(i) for i in range(10)]
    cols = st.columns([1, 1, 1, 3])
    cols[0].image(_img(sl["x0"]), caption=f"test image: {classes[sl['label']]}", clamp=True,
                  width=110)
    cols[1].image(_img(sl["x_adv"]), caption=f"PGD (PN): {classes[sl['adv_pred']['PN']]} under "
                  f"PN, {classes[sl['adv_pred']['right']]} under {sl['right_label']}",
                  clamp=True, width=110)
    delta = np.asarray(sl["x_adv"]) - np.asarray(sl["x0"])
    cols[2].image(_img(delta / (2 * sl["eps"]) + 0.5), caption="perturbation (grey = 0)",
                  clamp=True, width=110)
    c1, c2 = st.columns(2)
    with c1:
        slice_figure(sl["pn"], sl["label"], classes, "Classified with PN", ui.PN_COLOR,
                     "db_slice_pn")
    with c2:
        slice_figure(sl["right"], sl["label"], classes, f"Classified with {sl['right_label']}",
                     ui.BN_COLOR, "db_slice_right")
    fa, fb = sl["pn"].label_fraction(sl["label"]), sl["right"].label_fraction(sl["label"])
    st.markdown(f"The true class covers **{fa:.0%}** of the slice under PN and **{fb:.0%}** "
                f"under {sl['right_label']}.")

st.subheader("Penultimate features of clean and adversarial samples")
fm = feature_map(ck.path, ck.sha, method.lower(), norms.lower(), 300, int(seed))
fig = go.Figure()
emb, y, n = fm["emb"], fm["y"], fm["n"]
for k in sorted(set(y.tolist())):
    m = y == k
    color = ui.CLASS_COLORS[k % len(ui.CLASS_COLORS)]
    fig.add_scatter(x=emb[:n][m, 0], y=emb[:n][m, 1], mode="markers", legendgroup=str(k),
                    name=f"clean, {fm['classes'][k]}", marker=dict(size=6, color=color))
    fig.add_scatter(x=emb[n:][m, 0], y=emb[n:][m, 1], mode="markers", legendgroup=str(k),
                    name=f"PGD, {fm['classes'][k]}",
                    marker=dict(size=7, symbol="x", color=color, opacity=0.7))
unit = "PCA component" if method == "PCA" else "UMAP axis"
fig.update_layout(xaxis_title=f"{unit} 1 (arbitrary units)",
                  yaxis_title=f"{unit} 2 (arbitrary units)")
ui.show(fig, key="db_features", height=560,
        title=f"{method} of penultimate features, computed with {norms}<br><sup>{n} test "
              f"samples (dots) and their PGD-20 examples crafted with PN (crosses), by true "
              f"class</sup>")
