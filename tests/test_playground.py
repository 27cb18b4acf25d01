"""The Playground's core: runs stepped a few steps at a time by the trainer's own loop (same
weights as ``fit``), frames under PN and shaped inference, isolation, settings, figures."""
from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch

from normshape_app import playground as PG
from normshape_core.settings.config import ConfigError
from normshape_core.blocks.data import load_dataset
from normshape_core.figures.playground import curves_figure
from normshape_core.training.trainer import Trainer

SMALL = PG.PlaySettings(n_samples=200, width=16, depth=2, batch_size=32, attack_steps=3)
SHAPED = PG.RunSpec("pgd", "attack+train", "1:3")


def test_stepping_a_live_run_gives_the_weights_of_the_trainers_own_fit():
    data = PG.make_data(SMALL)
    cfg = PG.make_config(SMALL, SHAPED)
    run = PG.LiveRun(cfg, data)
    try:
        for n in (4, 1, 9, 16):  # 30 steps in uneven chunks, across epoch ends (6 per epoch)
            run.advance(n)
        assert run.step == 30 and run.epoch == 5.0
        assert len(run.epoch_checks) == 4  # fit's own end-of-epoch checks ran
        ref = Trainer(dataclasses.replace(cfg, max_steps=30), data)
        ref.fit(None)
        a, b = run.trainer.model.state_dict(), ref.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert run.last_step["train/loss"] == ref.history[-2]["train/loss"]  # last step row
    finally:
        run.close()
    assert run._thread is not None and not run._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        run.grant(1)


def test_an_idle_run_ends_its_thread_by_itself():
    run = PG.LiveRun(PG.make_config(SMALL, SHAPED), PG.make_data(SMALL), idle_timeout=0.3)
    run.advance(2)
    run._thread.join(timeout=20)
    assert not run._thread.is_alive() and run.step == 2
    with pytest.raises(RuntimeError):
        run.grant(1)


def test_a_frame_begun_is_made_in_the_runs_threads_and_closing_meanwhile_never_hangs():
    pg = PG.Playground(SMALL)
    try:
        pg.begin(3, "1:3")  # returns at once; the runs train and draw in their threads
        assert pg.pending and pg.frame == 0
        a, b = pg.frames("1:3", accuracies=False)  # collects the frame begun (frame 1)
        assert not pg.pending and pg.frame == 1 and a.step == b.step == 3
        assert a is pg.frames("1:3", accuracies=False)[0]  # cached: made in the run's thread
        gate = threading.Event()
        pg.runs[0].grant(1, lambda: gate.wait(10) and "made")  # a job still running
        with pytest.raises(RuntimeError, match="still being made"):
            pg.runs[0].grant(1)
        gate.set()
        assert pg.runs[0].wait() == "made" and pg.runs[0].step == 4
    finally:
        pg.close()
    p2 = PG.Playground(SMALL)
    p2.begin(50, "1:3")  # Reset while a frame is being made
    p2.close()
    assert all(not r._thread.is_alive() for r in p2.runs)


def test_frames_show_pn_and_shaped_regions_eps_boxes_and_named_metrics():
    pg = PG.Playground(SMALL)
    try:
        (a0, b0) = pg.frames("1:3")
        assert a0.step == 0 and pg.frame == 0
        pg.advance(12)
        a, b = pg.frames("1:3")
        assert pg.frame == 1 and a.step == b.step == 12 and a.epoch == 2.0
        for f in (a, b):
            assert f.prob_pn.shape == f.prob_shaped.shape == (PG.GRID, PG.GRID)
            assert 0 <= f.prob_pn.min() and f.prob_pn.max() <= 1
            assert f.box_x.shape == f.adv_pn.shape == f.adv_shaped.shape == (PG.N_BOXES, 2)
            for adv in (f.adv_pn, f.adv_shaped):  # inside the eps-box and the input range
                assert np.abs(adv - f.box_x).max() <= f.eps + 1e-6
                assert adv.min() >= 0 and adv.max() <= 1
            assert set(f.metrics) == set(PG.METRIC_LABELS)
            for k in ("clean_pn", "clean_shaped", "robust_pn", "robust_shaped"):
                assert 0 <= f.metrics[k] <= 1
            assert f.metrics["robust_pn"] <= f.metrics["clean_pn"] + 0.05
            assert np.isfinite(f.metrics["loss"]) and f.metrics["drift"] > 0
        assert a.digest() != a0.digest()  # training moved the boundary
        assert not np.array_equal(a.prob_pn, a.prob_shaped)  # PN and shaped differ
        # the inference ratio applies at once, without training: PN unchanged, shaped redrawn
        a9, _ = pg.frames("1:9")
        assert a9.step == 12 and pg.frame == 1
        assert np.array_equal(a9.prob_pn, a.prob_pn)
        assert not np.array_equal(a9.prob_shaped, a.prob_shaped)
        assert len(pg.history[0]) == 2  # one curve point per step, redone for the new ratio
        assert pg.history[0][-1]["clean_shaped"] == a9.metrics["clean_shaped"]
        assert pg.frames("1:9")[0] is a9  # cached
        with pytest.raises(ConfigError):
            pg.frames("1:x")
    finally:
        pg.close()


def test_same_settings_same_frames_and_two_playgrounds_never_touch_each_other():
    p1, p2 = PG.Playground(SMALL), PG.Playground(SMALL)
    p3 = PG.Playground(dataclasses.replace(SMALL, seed=1))
    try:
        # two sessions at once, from two threads
        ts = [threading.Thread(target=p.advance, args=(8,)) for p in (p1, p2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        p3.advance(8)
        f1, f2, f3 = p1.frames("1:3"), p2.frames("1:3"), p3.frames("1:3")
        assert [f.digest() for f in f1] == [f.digest() for f in f2]
        assert [f.digest() for f in f1] != [f.digest() for f in f3]
        for x, y in zip(f1, f2):
            assert np.array_equal(x.prob_shaped, y.prob_shaped) and x.metrics == y.metrics
        p1.advance(4)
        assert [r.step for r in p1.runs] == [12, 12] and [r.step for r in p2.runs] == [8, 8]
        assert p1.runs[0].trainer.model is not p2.runs[0].trainer.model
        # the default pair: plain PGD-AT and PGD + shaping 1:3 on the same data and seed
        assert p1.specs == PG.DEFAULT_SPECS
        assert [r.cfg.shaping for r in p1.runs] == ["none", "attack+train"]
        assert p1.runs[0].trainer.data is p1.runs[1].trainer.data
    finally:
        for p in (p1, p2, p3):
            p.close()


@pytest.mark.parametrize("settings, spec, message", [
    (dataclasses.replace(SMALL, dataset="digits"), SHAPED, "unknown 2-D set"),
    (dataclasses.replace(SMALL, batch_size=500), SHAPED, "larger than the 200"),
    (SMALL, PG.RunSpec("pgd", "attack+train", "1:9"), "does not split"),
    (dataclasses.replace(SMALL, noise=2.0), SHAPED, "noise"),
    (dataclasses.replace(SMALL, eps=0.0), SHAPED, "eps > 0"),
    (SMALL, PG.RunSpec("sgd", "none", "1:3"), "unknown method"),
])
def test_settings_that_cannot_train_are_refused_in_one_line(settings, spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        PG.Playground(settings, [spec, spec])
    assert "\n" not in str(e.value)


def test_natural_training_and_every_2d_set():
    for name in ("moons", "spirals", "circles", "xor", "blobs"):
        s = dataclasses.replace(SMALL, dataset=name)
        d = PG.make_data(s)
        assert d.name == name and d.x_train.shape == (200, 2) and len(d.x_test) >= PG.N_EVAL
    pg = PG.Playground(dataclasses.replace(SMALL, dataset="xor"),
                       [PG.RunSpec("natural", "attack+train"), SHAPED])
    try:
        assert pg.runs[0].cfg.shaping == "none"  # natural has nothing to shape
        pg.advance(3)
        assert all(np.isfinite(f.metrics["loss"]) for f in pg.frames("1:1"))
    finally:
        pg.close()


def test_noise_and_sample_count_change_the_new_sets():
    for name in ("circles", "xor", "blobs"):
        a = load_dataset(name, n_train=150, n_test=50, noise=0.05, seed=0)
        b = load_dataset(name, n_train=150, n_test=50, noise=0.3, seed=0)
        assert a.x_train.shape == (150, 2) and not torch.equal(a.x_train, b.x_train)
        assert set(a.y_train.tolist()) == {0, 1}


def test_the_curves_name_their_norms_and_bridge_frames_without_accuracies():
    pg = PG.Playground(SMALL)
    try:
        for _ in range(PG.ACCURACY_EVERY):  # played: the test accuracies every 4th frame
            pg.begin(2, "1:3")
            pg.finish()
        h = pg.history[1]
        assert [("robust_pn" in r) for r in h] == [False] * (PG.ACCURACY_EVERY - 1) + [True]
        assert all(np.isfinite(r["loss"]) for r in h)
        cf = curves_figure(h, "curves", "1:3")
        names = {t.name for t in cf.data}
        assert {"clean, PN", "robust, PGD with PN, PN", "clean, shaped 1:3",
                "robust, PGD with shaped, shaped 1:3"} <= names
        acc = [t for t in cf.data if t.yaxis == "y2"]
        assert acc and all(t.connectgaps for t in acc)  # a line across frames without them
        assert cf.layout.yaxis2.title.text == "accuracy (fraction)"
        assert cf.layout.yaxis3.type == "log" and cf.layout.yaxis3.dtick == 1
        # paused, a frame asked for is complete: its accuracies are measured then
        pg.begin(2, "1:3")
        (a, b) = pg.frames("1:3")
        assert a.has_accuracies and set(b.metrics) == set(PG.METRIC_LABELS)
        assert set(pg.history[1][-1]) >= set(PG.METRIC_LABELS)
    finally:
        pg.close()


def test_the_core_modules_never_import_streamlit():
    import subprocess
    import sys
    code = ("import sys, normshape_app.playground, normshape_core.figures.playground; "
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.stdout.strip() == "False", out.stderr


def _close_playgrounds():
    """AppTest sessions never end: close their playgrounds (threads, server slots)."""
    import gc
    for obj in gc.get_objects():
        if isinstance(obj, PG.Playground):
            obj.close()


def test_the_page_steps_redraws_on_a_new_ratio_and_refuses_bad_settings_in_one_message(
        tmp_path, monkeypatch):
    from _apptest import open_app

    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("NORMSHAPE_WARM_UMAP", "0")
    at = open_app("app_pages/playground.py", {"pg_n": "200", "pg_width": "16", "pg_depth": "2"})

    def counter():
        (c,) = [c.value for c in at.caption if c.value.startswith("Frame ")]
        return c

    def images():  # the regions' PNGs by their content hash: equal pictures, equal names
        return [i.url for el in at.get("image") for i in el.proto.imgs]

    def sentence():
        (m,) = [m.value for m in at.markdown if "of the plane differently" in m.value]
        return m

    try:
        assert not at.exception
        assert counter().startswith("Frame 0 · each run has trained 0 steps (0.00 epochs")
        assert "digest" not in counter() and "boundary" not in counter()
        assert len(at.get("plotly_chart")) == 1 and len(images()) == 2  # curves, regions
        assert "in run A" in sentence() and "in run B" in sentence()
        at.button(key="pg_step").click().run()
        assert counter().startswith("Frame 1 · each run has trained 5 steps (0.83 epochs")
        at.selectbox(key="pg_unit").set_value("one epoch").run()
        at.button(key="pg_step").click().run()
        assert counter().startswith("Frame 2 · each run has trained 11 steps (1.83 epochs")
        before, before_images, before_text = counter(), images(), sentence()
        at.selectbox(key="pg_infer").set_value("1:9").run()  # redrawn, not trained
        assert counter().split(" · paused")[0] == before.split(" · paused")[0]
        assert images() != before_images  # the shaped panels redrawn for 1:9
        assert "shaped inference 1:9" in sentence() and sentence() != before_text
        spec = json.dumps(json.loads(at.get("plotly_chart")[0].proto.spec))
        assert "shaped 1:9" in spec and "Run A" in spec and "Run B" in spec  # one figure
        at.selectbox(key="pg_b_ratio").set_value("1:9").run()  # batch 32 does not split in 10
        assert [e.value for e in at.error] == [
            "These settings cannot train: batch size 32 does not split into 10 equal parts "
            "for ratio 1:9; use a multiple of 10"]
        assert not at.exception
        at.selectbox(key="pg_b_ratio").set_value("1:3").run()  # a valid change starts again
        assert not at.error and counter().startswith("Frame 0 · each run has trained 0 steps")
    finally:
        _close_playgrounds()


def test_reset_keeps_playing_and_a_settings_change_pauses(tmp_path, monkeypatch):
    """The page's decision (docs/app.md, Playground): Reset starts both runs again and goes on
    playing if it was playing; a change of data or model builds new runs and pauses."""
    from _apptest import open_app

    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_WARM_UMAP", "0")
    at = open_app("app_pages/playground.py", {"pg_n": "200", "pg_width": "16", "pg_depth": "2"})
    try:
        at.button(key="pg_play").click().run()
        assert at.session_state["pg_playing"] and at.button(key="pg_play").label == "Pause"
        at.button(key="pg_reset_btn").click().run()
        assert at.session_state["pg_playing"] and at.button(key="pg_play").label == "Pause"
        assert any(c.value.startswith("Frame 0 ·") or c.value.startswith("Frame 1 ·")
                   for c in at.caption)  # from the initial weights again
        at.number_input(key="pg_seed").set_value(3).run()
        assert not at.session_state["pg_playing"] and at.button(key="pg_play").label == "Play"
    finally:
        _close_playgrounds()


def test_the_disagreement_says_where_by_how_much_and_which_class_shaped_inference_favours():
    from normshape_core.figures.playground import disagreement_sentence

    xs = np.linspace(0, 1, 10)
    pn = np.zeros((10, 10))
    pn[:, 5:] = 1  # PN: class 1 on the right half
    sh = pn.copy()
    sh[7:, 0:3] = 1  # shaped: class 1 also on 9 cells of the upper left
    f = PG.Frame(0, 0.0, "1:3", 0.1, xs, xs, pn, sh, *(np.zeros((0, 2)),) * 2,
                 np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    d = f.disagreement()
    assert d.share == pytest.approx(0.09) and d.to_class1 == pytest.approx(0.09)
    assert d.to_class0 == 0 and d.centre[0] < 1 / 3 and d.centre[1] > 2 / 3
    same = PG.Frame(0, 0.0, "1:3", 0.1, xs, xs, pn, pn, *(np.zeros((0, 2)),) * 2,
                    np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    text = disagreement_sentence([d, same.disagreement()], "AB",
                                 [PG.DEFAULT_SPECS[0].training_batches(),
                                  PG.DEFAULT_SPECS[1].training_batches()], "1:3")
    assert text.startswith("PN and shaped inference 1:3 classify 9.0% of the plane "
                           "differently in run A, mostly in the upper left, where shaped "
                           "inference says class 1 (green) and PN class 0 (9.0% of the "
                           "plane; 0.0% the other way), and 0.0% in run B (practically none)")
    assert "all adversarial" in text and "1 adversarial : 3 clean" in text


def test_the_server_caps_live_playgrounds_and_a_closed_one_frees_its_slot():
    slots = PG.Slots(1)
    a = PG.Playground(SMALL, slots=slots)
    b = PG.Playground(SMALL, slots=slots)
    try:
        assert slots.in_use == 0  # showing a first frame takes no slot (no threads yet)
        a.frames("1:3")
        a.advance(2)  # trains: the runs' threads start, the slot is taken
        assert slots.in_use == 1 and a.holds_slot and a.threads_alive == 2
        with pytest.raises(PG.Full, match="at most 1 playgrounds at once"):
            b.advance(2)
        assert b.threads_alive == 0 and b.frame == 0  # refused before anything ran
        a.close(wait=False)  # as a session's end does it: at once, without waiting
        assert slots.in_use == 0
        deadline = __import__("time").time() + 30
        while a.threads_alive and __import__("time").time() < deadline:
            __import__("time").sleep(0.05)
        assert a.threads_alive == 0  # the threads ended by themselves
        b.advance(2)
        assert b.holds_slot and b.frame == 1
    finally:
        a.close()
        b.close()
    assert slots.in_use == 0


def test_a_frame_begun_after_close_never_takes_the_slot_back():
    """A session that ends while its page is making a frame: the page's thread may call
    play() after the playground was closed; the server's slot stays free."""
    slots = PG.Slots(1)
    pg = PG.Playground(SMALL, slots=slots)
    pg.advance(1)
    assert slots.in_use == 1
    pg.close(wait=False)
    with pytest.raises(RuntimeError, match="closed"):
        pg.play(1, "1:3")
    assert slots.in_use == 0 and pg.closed


def test_play_with_a_least_interval_shows_the_same_frame_until_it_has_passed():
    pg = PG.Playground(SMALL)
    try:
        first = pg.play(1, "1:3")
        again = pg.play(1, "1:3", min_interval=60.0)  # too soon: the same frame
        assert again is first and pg.frame == 1
        nxt = pg.play(1, "1:3", min_interval=0.0)
        assert nxt is not first and pg.frame == 2
        assert pg.playing
    finally:
        pg.close()


def test_dual_bn_and_layernorm_runs_beside_shaping():
    """The run choices of the BN fixes: dual BN (its regions drawn with its adversarial set)
    and LayerNorm (no batch statistics: PN and shaped inference draw the same regions)."""
    dual, ln = PG.RunSpec("pgd", "attack+train", "1:3", "dual_bn"), PG.RunSpec("pgd", norm="ln")
    assert dual.label() == "PGD-AT, clean + adv, dual BN [adv norms]"
    pg = PG.Playground(SMALL, [dual, ln])
    try:
        assert pg.runs[0].cfg.norm == "dual_bn" and pg.runs[0].cfg.shaping == "none"
        assert pg.runs[1].cfg.norm == "ln"
        pg.advance(3)
        frames = pg.frames("1:9")
        assert all(np.isfinite(f.metrics["loss"]) for f in frames)
        assert np.allclose(frames[1].prob_pn, frames[1].prob_shaped, atol=1e-5)
    finally:
        pg.close()
    with pytest.raises(ConfigError, match="dual BN"):
        PG.Playground(SMALL, [PG.RunSpec("natural", norm="dual_bn"), SHAPED])
