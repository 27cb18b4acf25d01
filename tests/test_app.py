"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page renders on real
checkpoints without exception, widgets change what is shown, the URL carries the main
choices, a run started on the Train page ends up on every page, uploads are validated."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest

from _app_checkpoints import checkpoint_root
from _apptest import open_app

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # first views compute (evaluations, PGD traces) on two shared cores


@pytest.fixture(scope="module")
def ckpt_root():
    return checkpoint_root()


@pytest.fixture
def app(ckpt_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(ckpt_root))
    monkeypatch.setenv("NORMSHAPE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))  # caches and uploads
    monkeypatch.setenv("NORMSHAPE_JOB_THREADS", "1")
    # The app sets torch's thread count once per process; keep the test process's own.
    import torch
    monkeypatch.setenv("NORMSHAPE_APP_THREADS", str(torch.get_num_threads()))

    def make(page=None, query=None):
        at = open_app(page, query, TIMEOUT)
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


def figures(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def array(v):
    """A plotly JSON array: a list, or plotly's typed-array encoding {dtype, bdata, shape}."""
    import base64

    import numpy as np
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(n) for n in str(shape).split(",")]) if shape else a
    return np.asarray(v, dtype=float)


def plain(text: str) -> str:
    """A name as shown: the app escapes Markdown in st.table headers and cells."""
    return re.sub(r"\\(.)", r"\1", str(text))


def inventory(at):
    """Home's checkpoint tables (one per dataset tab), as one frame with plain names."""
    import pandas as pd
    frames = [t.value.rename(columns=plain) for t in at.table]
    df = pd.concat(frames, ignore_index=True)
    for col in ("checkpoint", "training", "polluted PN"):
        df[col] = df[col].map(plain)
    return df


def texts(at):
    return " ".join([m.value for m in at.markdown] + [c.value for c in at.caption] +
                    [i.value for i in at.info] + [s.value for s in at.success])


PAGES = ["app_pages/train.py", "app_pages/ratios.py", "app_pages/moving_target.py",
         "app_pages/decision_boundaries.py", "app_pages/compare.py",
         "app_pages/confoundings.py"]


def test_home_lists_the_checkpoints_with_their_norms_named(app, ckpt_root):
    at = app()
    assert at.title[0].value.startswith("normshape")
    assert [t.label for t in at.tabs] == ["digits (2)", "moons (4)"]
    df = inventory(at)
    assert set(df["checkpoint"]) == {p.name for p in ckpt_root.iterdir()}
    assert list(df.columns) == ["checkpoint", "training", "norms", "polluted PN", "eps",
                                "clean acc. (classified PN)",
                                "robust acc. PGD-10 (crafted PN, classified PN)",
                                "robust acc. worst case (crafted PN, classified PN)",
                                "robust acc. worst case (exact shaped batches, classified "
                                "shaped 1:9)"]
    row = df.set_index("checkpoint").loc["moons-pgd-shaped-1-3"]
    assert row["training"] == "PGD, shaping in attack+training 1:3"
    assert row["polluted PN"] == "no" and 0 <= row["clean acc. (classified PN)"] <= 1
    assert set(df["norms"]) == {"BN"}
    assert "Device in use" in texts(at)
    assert "I. PN and BN differences degrade accuracy" in texts(at)
    shown = texts(at) + " ".join(e.value for e in list(at.error) + list(at.warning))
    assert str(ckpt_root) not in shown and "/tmp" not in shown  # no server paths


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_and_a_plain_rerun_recomputes_nothing(app, page):
    at = app(page)
    assert not at.error, [e.value for e in at.error]
    if page != "app_pages/train.py":
        assert figures(at), "a page without a figure"
        for fig in figures(at):  # every figure has a title and labelled axes
            lay = fig["layout"]
            assert lay.get("title", {}).get("text"), page
            assert any(v.get("title", {}).get("text") for k, v in lay.items()
                       if k.startswith("xaxis")), page  # subplots: the bottom axis says it
    with counting_forwards() as forwards:
        at.run()
    assert not at.exception
    assert forwards == [], f"a plain rerun recomputed something: {sorted(set(forwards))}"


@contextlib.contextmanager
def counting_forwards():
    """Inside the block, the class name of every torch module forward anywhere in this
    process (a global forward hook): a rerun served from the caches runs none."""
    import torch

    seen: list = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(type(module).__name__))
    try:
        yield seen
    finally:
        handle.remove()


def test_the_forward_counter_sees_a_forward():
    import torch

    with counting_forwards() as seen:
        torch.nn.Sequential(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
    assert seen == ["Linear", "Sequential"]


def test_image_checkpoints_render_on_the_image_pages(app):
    q = {"db_ckpt": "digits-natural", "db_map": "PCA"}
    at = app("app_pages/decision_boundaries.py", query=q)
    titles = [f["layout"]["title"]["text"] for f in figures(at)]
    assert any(t.startswith("Classified with PN") for t in titles)
    assert any("BN of its test batch" in t for t in titles)
    assert any(t.startswith("PCA of penultimate features") for t in titles)
    at = app("app_pages/moving_target.py", query={"mt_ckpt": "digits-pgd-shaped-1-3"})
    assert len(figures(at)) == 2  # no decision boundary for images


def test_a_different_inference_ratio_changes_the_heatmap(app):
    at = app("app_pages/ratios.py")
    heat = figures(at)[0]["data"][0]
    z_before = array(heat["z"])
    assert heat["type"] == "heatmap"
    assert heat["x"] == ["1:0", "1:1", "1:3", "1:9", "1:19", "1:49"]
    assert set(heat["y"]) == {"1:1", "1:3", "adv only (1:0)"}
    at.multiselect(key="ratios_infer").set_value(["1:0", "1:9"]).run()
    assert not at.exception
    heat2 = figures(at)[0]["data"][0]
    assert heat2["x"] == ["1:0", "1:9"]
    # the kept cells are the same numbers (computed once, reused)
    z = array(heat2["z"])
    assert z.shape == (3, 2) and ((z >= 0) & (z <= 1)).all()
    assert (z[:, 1] == z_before[:, heat["x"].index("1:9")]).all()
    paper = array(figures(at)[1]["data"][0]["z"])
    assert paper[2, 2] == pytest.approx(0.820)  # the paper's own Table IV beside it


def test_the_url_carries_the_main_choices(app):
    at = app("app_pages/ratios.py", query={"ratios_infer": ["1:3", "1:49"],
                                           "ratios_paper": "false"})
    assert figures(at)[0]["data"][0]["x"] == ["1:3", "1:49"]
    assert len(figures(at)) == 1  # the paper's table hidden through the URL
    at = app("app_pages/moving_target.py", query={"mt_step": "3", "mt_comp": "1:1"})
    assert at.slider(key="mt_step").value == 3
    assert at.selectbox(key="mt_comp").value == "1:1"


def test_moving_target_step_slider_moves_the_boundary(app):
    at = app("app_pages/moving_target.py", query={"mt_ckpt": "moons-pgd-adv-only"})
    titles = [f["layout"]["title"]["text"] for f in figures(at)]
    assert any("decision boundary at PGD step 10" in t for t in titles)
    before = figures(at)
    at.slider(key="mt_step").set_value(2).run()
    after = figures(at)
    assert any("decision boundary at PGD step 2" in f["layout"]["title"]["text"] for f in after)
    assert before[2]["data"] != after[2]["data"]
    assert "times" in texts(at)  # the sentence reading the damping


def test_decision_boundaries_change_with_the_shaped_ratio(app):
    at = app("app_pages/decision_boundaries.py",
             query={"db_ckpt": "moons-pgd-shaped-1-3", "db_map": "PCA"})
    right = figures(at)[1]
    assert right["layout"]["title"]["text"] == "Shaped inference 1:9"
    at.selectbox(key="db_ratio").set_value("1:1").run()
    right2 = figures(at)[1]
    assert right2["layout"]["title"]["text"] == "Shaped inference 1:1"
    assert right["data"][0]["z"] != right2["data"][0]["z"]
    # PN's colour on the left, BN's on the right, on every page
    from normshape_app import ui
    assert figures(at)[0]["data"][1]["line"]["color"] == ui.PN_COLOR
    assert right2["data"][1]["line"]["color"] == ui.BN_COLOR


def test_compare_tables_name_both_norms_and_follow_the_selection(app):
    at = app("app_pages/compare.py")
    table = at.table[0].value.rename(columns=plain)
    keys = ["attack, crafted with", "classified with"]
    assert list(table.columns) == keys + ["moons-natural (natural)",
                                          "moons-pgd-adv-only (PGD adv only)",
                                          "moons-pgd-shaped-1-3 (PGD shaping 1:3)"]
    measure = table["attack, crafted with"].map(plain)
    assert set(measure) == {"clean (no attack)", "PGD-20, crafted PN", "FGSM, crafted PN",
                            "shaping attack (BN 1:3)", "adaptive (exact refs)"}
    assert set(table["classified with"].map(plain)) == {"PN", "BN", "shaped 1:9 (g=10)"}
    assert at.get("download_button")
    bars = figures(at)[0]
    assert {t["orientation"] for t in bars["data"]} == {"h"}  # names on the y axis
    assert [a["text"] for a in bars["layout"]["annotations"]][:1] == ["moons-natural (natural)"]
    at.multiselect(key="cmp").set_value(["moons-natural", "moons-pgd-shaped-1-1"]).run()
    assert [plain(c) for c in at.table[0].value.columns][2:] == [
        "moons-natural (natural)", "moons-pgd-shaped-1-1 (PGD shaping 1:1)"]
    settings = at.dataframe[-1].value
    assert set(settings.loc["method"]) == {"natural", "pgd"}


def test_compare_adding_an_attack_computes_only_that_attack(app, monkeypatch):
    """Results are kept per (checkpoint, attack, classifier, settings): a second attack is
    one more evaluation per checkpoint, the first attack's numbers are reused."""
    import streamlit as st

    from normshape_core import evaluation

    computed = []
    real = evaluation._evaluate

    def counting(model, dataset, settings, **kw):
        computed.append(tuple(settings.attacks))
        return real(model, dataset, settings, **kw)

    monkeypatch.setattr(evaluation, "_evaluate", counting)
    st.cache_resource.clear()  # nothing kept in memory from the other tests
    at = app("app_pages/compare.py", query={"cmp": ["moons-natural", "moons-pgd-shaped-1-3"],
                                            "cmp_attacks": ["fgsm"], "cmp_n": "100"})
    assert computed == [("fgsm",), ("fgsm",)]
    first = at.table[0].value.copy()
    computed.clear()
    at.multiselect(key="cmp_attacks").set_value(["fgsm", "pgd"]).run()
    assert not at.exception
    assert computed == [("pgd",), ("pgd",)]
    second = at.table[0].value
    fgsm = second[second.iloc[:, 0].map(plain) == "FGSM, crafted PN"]
    pd_testing = __import__("pandas").testing
    pd_testing.assert_frame_equal(fgsm.reset_index(drop=True), first[first.iloc[:, 0].map(
        plain) == "FGSM, crafted PN"].reset_index(drop=True))
    assert (second.iloc[:, 0].map(plain) == "PGD-20, crafted PN").sum() == 3
    computed.clear()
    at.multiselect(key="cmp_attacks").set_value(["pgd"]).run()  # a subset: nothing to do
    assert computed == []


def test_confoundings_deck_has_a_figure_and_a_takeaway_per_slide(app):
    """The deck reads the shipped sweep and lesson checkpoints: a title slide, then one
    figure per slide, lesson II's with a frame per PGD step; a bad slide number says so."""
    for n in range(1, 8):
        at = app("app_pages/confoundings.py", query={"slide": str(n)})
        assert not at.error
        assert f"slide {n} of 7" in texts(at)
        figs = figures(at)
        assert len(figs) == 1, n
        if n == 4:
            assert len(figs[0]["frames"]) == 11 and figs[0]["layout"]["sliders"]
    at = app("app_pages/confoundings.py", query={"slide": "x"})
    assert "There is no slide x" in texts(at) and "slide 1 of 7" in texts(at)


def test_presentation_mode_hides_settings_and_enlarges_figures(app):
    at = app("app_pages/moving_target.py")
    h = figures(at)[0]["layout"]["height"]
    assert not at.expander
    at = app("app_pages/moving_target.py", query={"present": "true"})
    assert at.expander and "presentation mode" in at.expander[0].label
    assert figures(at)[0]["layout"]["height"] > h


def test_a_run_started_on_train_finishes_and_appears_everywhere(app, tmp_path):
    at = app("app_pages/train.py")
    at.number_input(key="train_epochs_moons").set_value(1)
    at.text_input(key="train_name_moons").set_value("my run/../x")
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("my_run_.._x-")
    from normshape_core import jobs
    assert jobs.wait_for(runs[0], timeout=120).state == "finished"
    at.run()
    assert "Finished in" in texts(at)
    home = app()
    assert runs[0].name in set(inventory(home)["checkpoint"])
    cmp = app("app_pages/compare.py")
    assert runs[0].name in cmp.multiselect(key="cmp").options


def test_a_failed_run_shows_its_error_and_the_app_keeps_working(app, tmp_path):
    from normshape_core import jobs
    run = jobs.new_run_dir(tmp_path / "runs", "broken")
    (run / "job.json").write_text(json.dumps({"name": run.name, "config": {"dataset": "moons"},
                                              "created": "2099-01-01T00:00:00+00:00"}))
    (run / "status.json").write_text(json.dumps({"state": "failed",
                                                 "error": "RuntimeError: out of memory"}))
    (run / "worker.log").write_text("Traceback (most recent call last): ...\n")
    at = app("app_pages/train.py")
    assert any("out of memory" in e.value for e in at.error)
    assert not at.exception
    app()  # other pages still fine


def test_upload_is_validated_before_use(app, ckpt_root, tmp_path):
    src = ckpt_root / "moons-natural"
    weights, meta = (src / "model.safetensors").read_bytes(), (src / "model.json").read_bytes()
    uploads = tmp_path / "home" / "uploads"
    at = app("app_pages/compare.py")
    up = at.file_uploader(key="cmp_upload")
    up.set_value([("model.safetensors", weights[:-10], "application/octet-stream"),
                  ("model.json", meta, "application/json")]).run()
    errors = [e.value for e in at.error]
    assert any("Not accepted" in e for e in errors)
    assert not any(str(tmp_path) in e or "/tmp" in e or ".incoming" in e for e in errors), errors
    assert not uploads.exists() or not any(p.name.startswith("moons") for p in uploads.iterdir())
    pickle_like = b"\x80\x04\x95" + b"\x00" * 100
    at.file_uploader(key="cmp_upload").set_value(
        [("model.safetensors", pickle_like, "application/octet-stream"),
         ("model.json", meta, "application/json")]).run()
    assert any("pickle" in e.value for e in at.error)
    bad = json.loads(meta)
    bad["config"]["method"] = "**<b>x</b>**"
    at.file_uploader(key="cmp_upload").set_value(
        [("model.safetensors", weights, "application/octet-stream"),
         ("model.json", json.dumps(bad).encode(), "application/json")]).run()
    # these weights are known: recognised by their SHA-256 before the metadata matters
    assert any("moons-natural" in s.value and "nothing was stored" in s.value
               for s in at.success), [s.value for s in at.success]
    assert not uploads.exists() or not [p for p in uploads.iterdir()
                                        if not p.name.startswith(".")]


def test_an_upload_is_stored_once_in_the_user_folder(app, tmp_path):
    """A checkpoint that is not listed yet is stored under the user's uploads folder (never in
    the source tree) and listed everywhere; the same weights uploaded again are recognised."""
    import torch

    from normshape_core.checkpoints import save_checkpoint
    from normshape_core.config import TrainConfig
    from normshape_core.models import build_model

    torch.manual_seed(1)
    cfg = TrainConfig(dataset="moons", model="mlp", method="natural", epochs=1)
    src = tmp_path / "elsewhere" / "fresh"
    save_checkpoint(src, build_model("mlp", (2,), 2),
                    {"config": cfg.to_dict(), "run_name": "fresh", "dataset": "moons",
                     "input_shape": [2], "num_classes": 2})
    weights, meta = (src / "model.safetensors").read_bytes(), (src / "model.json").read_bytes()
    bad = json.loads(meta)
    bad["config"]["method"] = "**<b>x</b>**"
    at = app("app_pages/compare.py")
    at.file_uploader(key="cmp_upload").set_value(
        [("model.safetensors", weights, "application/octet-stream"),
         ("model.json", json.dumps(bad).encode(), "application/json")]).run()
    assert any("model.json: config.method" in plain(e.value) for e in at.error)
    uploads = tmp_path / "home" / "uploads"
    for _ in range(2):
        at.file_uploader(key="cmp_upload").set_value(
            [("model.safetensors", weights, "application/octet-stream"),
             ("model.json", meta, "application/json")]).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
    stored = [p for p in uploads.iterdir() if not p.name.startswith(".")]
    assert len(stored) == 1 and (stored[0] / "model.json").exists()
    assert json.loads((stored[0] / "model.json").read_text())["config"]["data_root"] is None
    assert any("nothing was stored" in s.value for s in at.success)  # the second time
    assert stored[0].name in set(inventory(app())["checkpoint"])


@pytest.mark.parametrize("page", [None] + PAGES)
def test_every_page_renders_on_the_shipped_checkpoints(app, page, monkeypatch):
    """First start as a user has it: the committed checkpoints/ only."""
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(ROOT / "checkpoints"))
    at = app(page)
    assert not at.error, [e.value for e in at.error]
    if page is None:
        df = inventory(at).set_index("checkpoint")
        names = set(df.index)
        assert any(n.startswith("fashion_mnist-") for n in names), names
        assert any(n.startswith("digits-") for n in names) and any(
            n.startswith("moons-") for n in names), names
        # the polluted run and its normal twin: told apart, whole ids
        polluted = df.loc["moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-polluted-s0"]
        normal = df.loc["moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-s0"]
        assert polluted["polluted PN"] == "yes" and normal["polluted PN"] == "no"
        assert polluted["training"] == normal["training"]


def test_checkpoint_labels_name_their_norms():
    """The BN fixes' checkpoints say their norms wherever a page names a checkpoint (Home's
    inventory, Compare's columns, the pickers' captions); dual BN's pages classify with its
    adversarial set."""
    from normshape_app import ui
    from normshape_app.inventory import Ckpt

    def ck(**cfg):
        base = dict(dataset="digits", method="pgd", shaping="none", ratio="1:3", eps=0.3)
        return Ckpt("x", "/nowhere", "0" * 64, {"config": {**base, **cfg}})

    assert ck().tag() == "PGD adv only" and ui.norm_text(ck().config) == ""
    assert ck(norm="dual_bn").tag() == "PGD clean + adv, dual BN [adv norms]"
    assert ck(norm="dual_bn").short() == "digits: PGD, clean + adv, dual BN [adv norms], eps 0.3"
    assert ck(norm="gn").tag() == "PGD adv only, GroupNorm (no batch statistics)"
    assert ck(norm="nf", method="trades").short().startswith("digits: TRADES, adv only, "
                                                            "normalizer-free")
    assert ui.metric_label("test/clean_acc_pn_clean_norms") == \
        "clean acc. (classified PN) [clean norms]"
