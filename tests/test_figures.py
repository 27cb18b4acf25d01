"""The figure functions of ``normshape_core.figures``, without Streamlit: each figure has its
title and axis titles (with units), the traces the page draws (names, counts) and the app's
colours (PN blue, BN / shaped orange, classes by index, misclassified red)."""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from normshape_core.figures import colors as C
from normshape_core.figures import decision_boundaries as DB

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "normshape_core" / "figures"


def titles(fig):
    return (fig.layout.title.text, fig.layout.xaxis.title.text, fig.layout.yaxis.title.text)


def assert_titled(fig, *units):
    t, x, y = titles(fig)
    assert t and x and y, (t, x, y)
    for u in units:
        assert u in x + y, (u, x, y)


def names(fig):
    return [t.name for t in fig.data]


def test_figure_modules_import_neither_streamlit_nor_torch():
    for path in FIGURES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                assert m.split(".")[0] not in ("streamlit", "torch"), (path.name, m)


# ---------------------------------------------------------------- decision boundaries
def _regions_result(n=6, wrong=(1, 4)):
    rng = np.random.default_rng(0)
    xs, ys = np.linspace(-1, 2, 15), np.linspace(-1, 1, 11)
    pred = (np.add.outer(ys, xs) > 0.3).astype(int)
    reg = SimpleNamespace(xs=xs, ys=ys, pred=pred, probs=np.stack([1.0 - pred, pred * 1.0]))
    x = rng.normal(size=(n, 2)).astype("float32")
    y = np.arange(n) % 2
    adv_right = np.ones(n, bool)
    adv_right[list(wrong)] = False
    pts = {"x_adv": x + 0.05, "crafted_with": "PN", "clean_right": np.ones(n, bool),
           "adv_right": adv_right}
    return {"pn": reg, "shaped": reg, "pn_points": pts, "shaped_points": pts,
            "pn_test_acc": 0.9, "shaped_test_acc": 0.8, "shaped_test_acc_proper": 0.85,
            "x": x, "y": y, "eps": 0.1, "x_train": rng.normal(size=(40, 2)),
            "y_train": np.arange(40) % 2}


@pytest.mark.parametrize("which,color", [("pn", C.PN_COLOR), ("shaped", C.BN_COLOR)])
def test_regions_figure_has_regions_boundary_boxes_and_wrong_examples_in_red(which, color):
    res = _regions_result()
    fig = DB.regions_figure(res, which, "Classified with PN", color)
    assert_titled(fig, "input units")
    assert fig.layout.title.text == "Classified with PN"
    assert [t.type for t in fig.data[:2]] == ["heatmap", "contour"]
    [boundary] = [t for t in fig.data if t.name == "decision boundary"]
    assert boundary.line.color == color
    assert "eps-box (L-inf, eps 0.1)" in names(fig)
    for c in (0, 1):
        [tr] = [t for t in fig.data if t.name == f"training, class {c}"]
        assert tr.marker.color == C.CLASS_COLORS[c] and len(tr.x) == 20
    [bad] = [t for t in fig.data if t.name == "adversarial, misclassified"]
    assert bad.marker.color == C.WRONG_COLOR and len(bad.x) == 2  # the two wrong ones
    cap = DB.regions_caption(res, which)
    assert "6 samples: clean 1.00, robust 0.67" in cap
    assert ("fresh reference draw" in cap) == (which == "shaped")


def test_slice_figure_marks_the_image_its_pgd_example_and_each_predicted_class():
    alphas = betas = np.linspace(-2, 2, 9)
    pred = np.where(np.add.outer(betas, alphas) > 1, 3, 7)
    sl = SimpleNamespace(alphas=alphas, betas=betas, pred=pred)
    classes = [str(i) for i in range(10)]
    fig = DB.slice_figure(sl, 7, classes, "Classified with PN", C.PN_COLOR)
    assert_titled(fig, "PGD perturbation", "orthogonal")
    assert names(fig)[1:] == ["boundary of the true class (7)", "the test image",
                              "PGD example (crafted with PN)", "predicted: 3", "predicted: 7"]
    assert fig.data[1].line.color == C.PN_COLOR
    assert fig.data[-1].marker.color == C.CLASS_COLORS[7]


def test_features_figure_has_a_clean_and_a_pgd_trace_per_class():
    n = 12
    fm = {"emb": np.random.default_rng(0).normal(size=(2 * n, 2)), "y": np.arange(n) % 3,
          "n": n, "classes": ["a", "b", "c"]}
    fig = DB.features_figure(fm, "PCA", "PN")
    assert_titled(fig, "PCA component", "arbitrary units")
    assert "computed with PN" in fig.layout.title.text
    assert names(fig) == ["clean, a", "PGD, a", "clean, b", "PGD, b", "clean, c", "PGD, c"]
    assert [len(t.x) for t in fig.data] == [4] * 6
    assert fig.data[2].marker.color == fig.data[3].marker.color == C.CLASS_COLORS[1]


def test_image_array_puts_channels_last_and_drops_a_grey_channel():
    assert DB.image_array(np.zeros((1, 8, 8))).shape == (8, 8)
    assert DB.image_array(np.zeros((3, 8, 6))).shape == (8, 6, 3)
