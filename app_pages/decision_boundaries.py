"""Decision boundaries: PN against shaped inference (2-D sets) or BN (images), and feature maps."""
from __future__ import annotations

import numpy as np
import streamlit as st

from normshape_app import experiments as X
from normshape_app import ui
from normshape_app import playground as PG
from normshape_core.figures import decision_boundaries as F

CRAFT = {"own norms": "each panel's own norms: PN on the left, BN with the exact references "
                      "on the right (the strongest attack on each)",
         "PN": "PN for both panels (transfer, as in the paper's Tables I-II)"}
RIGHT = {"BN": "BN: the statistics of the image's own test batch of 100",
         "shaped 1:9": "shaped inference 1:9 (one fixed draw of references)",
         "shaped 1:3": "shaped inference 1:3 (one fixed draw of references)"}


st.title("Decision boundaries")
if not ui.checkpoints():
    ui.no_checkpoints_message()
    st.stop()
with ui.settings_block():
    ck = ui.checkpoint_picker("Checkpoint", key="db_ckpt", prefer=ui.prefer_2d_shaped)
    cfg = ck.config
    c1, c2, c3 = st.columns(3)
    if ck.is_2d:
        ratio = c1.selectbox("Shaped inference ratio adv:clean", PG.INFER_RATIOS, index=2,
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
    res = X.regions_2d(ck.path, ck.sha, ratio, craft, int(n_boxes), int(seed))
    c1, c2 = st.columns(2)
    for col, which, title, color in ((c1, "pn", "Classified with PN", ui.PN_COLOR),
                                     (c2, "shaped", f"Shaped inference {ratio}",
                                      ui.BN_COLOR)):
        with col:
            ui.show(F.regions_figure(res, which, title, color), key=f"db_{which}", height=620,
                    columns=2)
            st.caption(F.regions_caption(res, which))
    dis = res["pn"].disagreement(res["shaped"])
    st.markdown(f"PN and shaped inference {ratio} disagree on **{dis:.1%}** of the plotted plane"
                + (" - the two boundaries are practically the same." if dis < 0.01 else "."))
else:
    ui.explain("A 2-D slice of input space around one test image: the plane through the image "
               "spanned by its PGD perturbation (crafted with PN) and a random orthogonal "
               "direction of the same size, coloured by the predicted class, under PN (left) "
               "and under BN (right). Where the two maps differ, the norms alone move the "
               "boundary.")
    sl = X.image_slice(ck.path, ck.sha, int(index), right, float(extent), int(seed))
    classes = sl["classes"] or [str(i) for i in range(10)]
    cols = st.columns([1, 1, 1, 3])
    cols[0].image(F.image_array(sl["x0"]), caption=f"test image: {classes[sl['label']]}",
                  clamp=True, width=110)
    cols[1].image(F.image_array(sl["x_adv"]),
                  caption=f"PGD (PN): {classes[sl['adv_pred']['PN']]} under PN, "
                  f"{classes[sl['adv_pred']['right']]} under {sl['right_label']}",
                  clamp=True, width=110)
    delta = np.asarray(sl["x_adv"]) - np.asarray(sl["x0"])
    cols[2].image(F.image_array(delta / (2 * sl["eps"]) + 0.5), caption="perturbation (grey = 0)",
                  clamp=True, width=110)
    c1, c2 = st.columns(2)
    with c1:
        ui.show(F.slice_figure(sl["pn"], sl["label"], classes, "Classified with PN",
                               ui.PN_COLOR), key="db_slice_pn", height=560, columns=2)
    with c2:
        ui.show(F.slice_figure(sl["right"], sl["label"], classes,
                               f"Classified with {sl['right_label']}", ui.BN_COLOR),
                key="db_slice_right", height=560, columns=2)
    fa, fb = sl["pn"].label_fraction(sl["label"]), sl["right"].label_fraction(sl["label"])
    st.markdown(f"The true class covers **{fa:.0%}** of the slice under PN and **{fb:.0%}** "
                f"under {sl['right_label']}.")

st.subheader("Penultimate features of clean and adversarial samples")


def feature_map_view(polling: bool) -> None:
    """The map: read from the checkpoint's stored maps, else computed in the background
    (progress shown, PCA standing in while UMAP runs; this part reruns each second)."""
    v = X.feature_map(ck.path, ck.sha, method, norms, 300, int(seed), ck.meta.get("classes"))
    if v.get("error"):
        st.error(f"The feature map failed: {ui.message_text(v['error'])}")
    if v["pending"]:
        st.progress(min(1.0, v["fraction"] or 0.0), text=f"The {method} map: {v['text']}")
        if v["map"] is not None:
            st.caption(f"PCA of the same features stands in until {method} is ready.")
    if v["map"] is not None:
        ui.show(F.features_figure(v["map"], v["method"], norms), key="db_features", height=560)
    if polling and not v["pending"]:
        st.rerun()  # done: the page once more, without the polling


first = X.feature_map(ck.path, ck.sha, method, norms, 300, int(seed), ck.meta.get("classes"))
st.fragment(run_every=1.0 if first["pending"] else None)(feature_map_view)(first["pending"])
