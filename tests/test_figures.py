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


# ---------------------------------------------------------------- moving target
def _frame(scale):
    import pandas as pd

    rows = [{"step": s, "layer": f"bn{k}", "distance_to_clean_mean": scale * s * (k + 1),
             "distance_to_clean_var": scale * s} for s in range(4) for k in range(3)]
    return pd.DataFrame(rows)


def test_moving_target_steps_and_layers_figures_have_one_trace_per_batch():
    from normshape_core.figures import moving_target as MT

    frames = {"1:0": _frame(1.0), "1:3": _frame(0.25)}
    fig = MT.steps_figure(frames, "distance_to_clean", "mean", 2)
    assert_titled(fig, "std units")
    assert fig.layout.title.text.startswith("Batch mean: distance to the clean batch's")
    assert names(fig) == ["batch 1:0", "batch 1:3"]
    assert [t.line.color for t in fig.data] == [C.BN_COLOR, "#7f2704"]
    assert list(fig.data[0].y) == [0.0, 2.0, 4.0, 6.0]  # mean over the three layers
    assert fig.layout.shapes[0].x0 == 2  # the chosen step
    bars = MT.layers_figure(frames, "distance_to_clean", "var", 3)
    assert_titled(bars, "RMS")
    assert bars.layout.title.text.startswith("Per layer at PGD step 3")
    assert [t.type for t in bars.data] == ["bar", "bar"] and list(bars.data[1].y) == [0.75] * 3


def test_moving_target_boundary_figure_draws_both_boundaries_and_the_paths():
    from normshape_core.figures import moving_target as MT

    xs, ys = np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)
    pred = (np.add.outer(ys, xs) > 0).astype(int)
    steps, n_adv = 3, 4
    res = {"regions": [(xs, ys, pred * 1.0, pred)] * (steps + 1),
           "x": np.zeros((6, 2)), "y": np.array([0, 1, 0, 1, 0, 1]), "n_clean": 2,
           "points": np.random.default_rng(0).normal(size=(steps + 1, n_adv, 2)),
           "adv_pred": np.array([[0, 1, 0, 1]] * steps + [[1, 1, 0, 0]])}
    fig = MT.boundary_figure(res, steps, "1:3")
    assert_titled(fig, "input units")
    assert fig.layout.title.text == "Batch 1:3: decision boundary at PGD step 3"
    [now] = [t for t in fig.data if t.name == "boundary at step 3 (BN of this batch)"]
    assert now.line.color == C.BN_COLOR
    [wrong] = [t for t in fig.data if t.name == "adversarial, misclassified"]
    assert wrong.marker.color == C.WRONG_COLOR and len(wrong.x) == 2
    [paths] = [t for t in fig.data if t.name == "PGD paths, step 0 to t"]
    assert len(paths.x) == n_adv * (steps + 2)


def test_damping_says_how_many_times_less_the_shaped_batch_moves():
    from normshape_core.figures import moving_target as MT

    s = [{"step_drift_mean": 0.4, "adv_acc": 0.1}, {"step_drift_mean": 0.1, "adv_acc": 0.5}]
    factor, word, text = MT.damping_text(s, ["1:0", "1:3"])
    assert (round(factor, 6), word) == (4.0, "less")
    assert "**4.0 times less**" in text and "0.10 (1:0) and 0.50 (1:3)" in text
    assert MT.damping_text([s[0], {"step_drift_mean": 0.0, "adv_acc": 0}], ["a", "b"]) is None


# ---------------------------------------------------------------- confoundings deck sentences
def _sweep():
    cells = []
    for i, (axis, v) in enumerate([("base", 0.30), ("seed", 0.20), ("depth", 0.05),
                                   ("eps", 0.50)]):
        cells.append({"id": f"moons-{axis}", "dataset": "moons", "axis": axis, "variant": i,
                      "measures": {"logit_gap": v, "bn_layers": 2 + i, "eps": 0.1 * (i + 1)}})
    return {"cells": cells}


def test_confoundings_sentences_count_settings_and_name_the_clearest_cell():
    from normshape_core.figures import confoundings as CF

    res = _sweep()
    assert CF.how_many(res, "II", 0.10) == "3 of 4 settings"
    text = CF.sweep_takeaway(res, "II", 0.10)
    assert text.startswith("Clearest at moons-eps (+50%)")
    assert "+30% to +30%" in text and "±5%" in text  # seeds: (0.30 - 0.20) / 2
    assert CF.sweep_takeaway(res, "II", 0.9).startswith("Largest at moons-eps")
    m = {"damping": 3.2, "logit_gap": 0.4}
    assert CF.lesson_takeaway("II", m, True, "3 of 4 settings") == (
        "A shaped batch's statistics move 3.2x less per PGD step than an all-adversarial "
        "batch's; the logit-error gap is +40% here (paper +63%; 3 of 4 settings reach +10%).")
    m1 = {"acc_gap_bn_pn": 0.05, "acc_pn": 0.8, "acc_bn": 0.85}
    assert "PN costs 0.050" in CF.lesson_takeaway("I", m1, True, "k")
    assert CF.lesson_takeaway("I", m1, False, "k").startswith("No setting here shows it")
    cap = CF.lesson_caption({"shows_effect": False, "checkpoints": {"plain": "x-pgd"}},
                            {"dataset": "moons", "id": "moons-base", "measures": {
                                "model": "mlp", "bn_layers": 2, "eps": 0.1, "batch": 64}},
                            "+63% (Fig. 2)")
    assert "`checkpoints/lessons/x-pgd`" in cap and "below the threshold" in cap
    assert cap.endswith("Paper: +63% (Fig. 2).")


# ---------------------------------------------------------------- ratios
def test_ratios_heatmap_writes_each_cell_and_leaves_missing_ones_blank():
    from normshape_core.figures import ratios as R

    table = R.PAPER_TABLE_IV.copy()
    table.iloc[0, 0] = float("nan")
    fig = R.grid_heatmap(table, "Paper, Table IV")
    assert_titled(fig, "adv:clean")
    [hm] = fig.data
    assert hm.type == "heatmap" and (hm.zmin, hm.zmax) == (0, 1)
    assert list(hm.x) == ["1:0", "1:1", "1:3", "1:9", "1:19", "1:49"]
    assert list(hm.y) == ["1:1", "1:2", "1:3", "1:7"]
    assert hm.text[0][0] == "" and hm.text[1][1] == "0.837"
    assert fig.layout.yaxis.autorange == "reversed"  # training 1:1 on top, as in the paper
    n = table.copy()
    n.loc[:, :] = 1000
    [hm] = R.grid_heatmap(table, "with n", n).data
    from normshape_core.base.stats import interval_text
    assert hm.customdata[1][1] == interval_text(0.837, 1000) and "n=1000" in hm.customdata[1][1]
    assert hm.customdata[0][0] == "not computed yet"


def test_playground_run_title_puts_the_parenthesis_in_a_subtitle():
    from normshape_core.figures.playground import run_title

    assert run_title("A", "PGD + shaping 1:3 (attack + train)") == \
        "A: PGD + shaping 1:3<br><sup>(attack + train)</sup>"
    assert run_title("B", "natural") == "B: natural"


# ---------------------------------------------------------------- compare
def _evaluation(acc):
    import pandas as pd

    rows = []
    for clf, shift in (("shaped 1:9 (g=10)", 0.1), ("PN", 0.0)):  # PN last: reordered
        rows.append({"attack": "pgd", "crafted_with": "PN", "classified_with": clf,
                     "clean_acc": acc, "robust_acc": acc / 2 + shift, "n": 100,
                     "ensemble": None})
    rows.append({"attack": "worst_case", "crafted_with": "PN", "classified_with": "PN",
                 "clean_acc": acc, "robust_acc": acc / 4, "n": 100,
                 "ensemble": "autoattack: apgd, square"})
    return pd.DataFrame(rows)


def test_compare_bars_name_crafted_and_classified_norms_in_their_colours():
    from normshape_core.figures import compare as CP

    results = {"a": _evaluation(0.9), "b": _evaluation(0.8)}
    m = CP.measures(results["a"])
    worst = "worst case (autoattack), crafted with its own norms"
    # clean rows first, then the worst case, then the attacks; PN before shaped in each
    assert list(zip(m[CP.MEASURE], m[CP.CLASSIFIED])) == [
        ("clean (no attack)", "PN"), ("clean (no attack)", "shaped 1:9 (g=10)"),
        (worst, "PN"), ("PGD-20, crafted PN", "PN"),
        ("PGD-20, crafted PN", "shaped 1:9 (g=10)")]
    v = m.set_index([CP.MEASURE, CP.CLASSIFIED])
    assert v.loc[("clean (no attack)", "PN"), "value"] == 0.9
    assert v.loc[("PGD-20, crafted PN", "shaped 1:9 (g=10)"), "value"] == pytest.approx(0.55)
    assert set(m["n"]) == {100}
    fig, height = CP.accuracy_bars_figure(results, {"a": "run a", "b": "run b"})
    assert fig.layout.title.text.startswith("Clean and robust accuracy of each checkpoint")
    assert fig.layout.xaxis2.title.text == "accuracy (fraction)"  # under the last panel
    assert [a.text for a in fig.layout.annotations] == ["run a", "run b"]
    assert len(fig.data) == 4 and 300 < height <= 2400  # 2 checkpoints x 2 classifiers
    colours = {t.name: t.marker.color for t in fig.data}
    assert colours == {"classified with PN": C.PN_COLOR,
                       "classified with shaped 1:9 (g=10)": CP.SHAPED_COLOR}
    pn = next(t for t in fig.data if t.name == "classified with PN")
    assert list(pn.customdata)[0].startswith("0.900 [") and "n=100" in pn.customdata[0]
    assert all(lo >= 0 and hi >= 0 for lo, hi in zip(pn.error_x.arrayminus, pn.error_x.array))
    assert CP.norm_colour("BN") == C.BN_COLOR
    assert CP.wrap("a-very-long-run-name-" * 3, 20).count("<br>") >= 2


def test_compare_training_curves_one_colour_per_checkpoint_robust_dashed():
    from normshape_core.figures import compare as CP

    rows = [{"step": s, "train/loss": 1.0 / (s + 1)} for s in range(10)] + \
        [{"step": 9, "test/clean_acc_pn": 0.8, "test/robust_acc_pgd10_pn_pn": 0.4}]
    fig = CP.training_curves_figure({"a": rows, "b": rows}, label=lambda k: k.upper())
    assert fig.layout.title.text == "Training curves overlaid"
    assert fig.layout.xaxis.title.text == "training step"
    assert (fig.layout.yaxis.title.text, fig.layout.yaxis2.title.text) == (
        "loss", "accuracy (fraction)")
    assert names(fig) == ["a", "a: TEST/CLEAN_ACC_PN", "a: TEST/ROBUST_ACC_PGD10_PN_PN",
                          "b", "b: TEST/CLEAN_ACC_PN", "b: TEST/ROBUST_ACC_PGD10_PN_PN"]
    assert [t.line.color for t in fig.data[:3]] == [CP.CKPT_COLORS[0]] * 3
    assert fig.data[3].line.color == CP.CKPT_COLORS[1]
    assert [t.line.dash for t in fig.data[1:3]] == ["solid", "dash"]


# ---------------------------------------------------------------- train
def test_train_curves_loss_accuracy_and_drift():
    from normshape_core.figures import train as T

    rows = [{"step": s, "train/loss": 2.0 - 0.01 * s, "train/adv_acc": 0.3, "train/clean_acc": 0.7,
             "bn/running_mean_drift": 1e-3, "bn/running_var_drift": 1e-4} for s in range(80)]
    rows.append({"step": 79, "test/clean_acc_pn": 0.8, "test/robust_acc_pgd10_pn_pn": 0.4})
    df, ev, window = T.split_rows(rows)
    assert (len(df), len(ev), window) == (80, 1, 2)
    loss = T.loss_figure(df, window)
    assert_titled(loss)
    assert loss.layout.title.text.startswith("Training loss") and len(loss.data) == 1
    acc = T.accuracy_figure(df, ev, window, label=lambda k: k.split("/")[1])
    assert_titled(acc, "fraction")
    assert names(acc) == ["adversarial rows (train)", "clean rows (train)",
                          "test clean_acc_pn", "test robust_acc_pgd10_pn_pn"]
    assert [t.line.color for t in acc.data] == [C.WRONG_COLOR, C.CLEAN_COLOR, C.PN_COLOR,
                                                C.PN_COLOR]
    assert acc.data[3].line.dash == "dash"
    drift = T.drift_figure(df, window)
    assert_titled(drift, "per step")
    assert names(drift) == ["running mean", "running variance"]
    assert drift.layout.yaxis.type == "log"


# ---------------------------------------------------------------- pages stay tables of contents
@pytest.mark.parametrize("page", sorted((ROOT / "app_pages").glob("*.py")), ids=lambda p: p.name)
def test_a_page_is_at_most_150_lines_and_imports_no_torch(page):
    text = page.read_text()
    assert len(text.splitlines()) <= 150, page.name
    for node in ast.walk(ast.parse(text)):
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(m.split(".")[0] == "torch" for m in mods), page.name
