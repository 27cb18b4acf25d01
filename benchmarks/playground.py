"""Benchmark section 8, "playground" (``python benchmarks/run.py --sections 8``).

Measured on moons with the default pair of runs (plain PGD-AT and PGD + shaping 1:3), MLP
3 x 64, batch 32, K = 5, 5 training steps per frame, the page's settings:
- per run, in a thread with one torch thread as the page's runs: the decision regions under
  PN and under shaped inference on a 100 x 100 grid, and the whole frame as the page computes
  it (80 x 80 regions + PGD-10 on the eps-box points, and every ``ACCURACY_EVERY`` frames on
  100 test points too);
- the regions image of one run drawn and PNG-encoded (what the page sends);
- the whole frame loop in the process, as the page plays: collect the frame made meanwhile,
  begin the next (both runs train and draw in their own threads), draw both images, the
  curves every ``ACCURACY_EVERY`` frames;
- training steps per second with frames drawn (that loop) against without (the runs only),
  as a ratio measured in the same run;
- in headless Chromium on ``streamlit run app.py``: seconds from pressing Play to the first
  new frame, and frames per second over 10 s (the counter the page shows).
Goals (issue 15): at least 5 boundary updates per second, first frame within 2 s of play.
"""
from __future__ import annotations

import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import RESULTS, header, say, summary
from normshape_app.serve import CHROMIUM, launch_chromium, serving


def _median_time(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _in_one_thread(fn):
    """``fn()`` in a new thread limited to one torch thread, as the Playground's runs are."""
    import torch

    box = {}

    def work():
        torch.set_num_threads(1)
        box["v"] = fn()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return box["v"]


def section_playground(args, device) -> None:
    header("8. Playground: live decision regions (Playground page)")
    from normshape_core import playground as PG
    from normshape_core import projections as P
    from normshape_core.figures.playground import (curves_figure, png_bytes, regions_image,
                                                   run_title)
    from normshape_core.shaping import PNClassifier

    import torch

    reps = 5 if args.quick else 20
    settings = PG.PlaySettings()  # moons, 400 points, MLP 3 x 64, the page's defaults
    t0 = time.perf_counter()
    pg = PG.Playground(settings)
    build_s = time.perf_counter() - t0
    try:
        pg.advance(5)
        frames = pg.frames("1:3")
        run = pg.runs[1]
        model = run.trainer.model
        pn = PNClassifier(model)
        shaped = P.BatchMemberClassifier(model, P.fixed_references(pg.pool, "1:3"))
        pts = P.grid_around(None, 100, bounds=(0.0, 1.0, 0.0, 1.0)).points  # the grid

        def regions():
            with torch.no_grad():
                pn(pts)
                shaped(pts)

        def frame(acc):
            return lambda: PG.compute_frame(run, pg.grid, pg.pool, pg.box_idx, "1:3", 0, acc)

        t_regions = _in_one_thread(lambda: _median_time(regions, reps))
        t_frame = _in_one_thread(lambda: _median_time(frame(False), reps))
        t_frame_acc = _in_one_thread(lambda: _median_time(frame(True), reps))
        x_tr, y_tr = pg.data.x_train.numpy(), pg.data.y_train.numpy()
        title = run_title("B", pg.specs[1].label())
        t_image = _median_time(lambda: png_bytes(regions_image(frames[1], x_tr, y_tr, title)),
                               reps)

        def page_frame():  # what one frame of the page does while playing, in the server
            fs = pg.play(5, "1:3")
            for i, f in enumerate(fs):
                png_bytes(regions_image(f, x_tr, y_tr, title))
                if f.has_accuracies:
                    curves_figure(pg.history[i], "curves", "1:3").to_json()

        n_frames = 4 * reps
        t = time.perf_counter()
        for _ in range(n_frames):
            page_frame()
        round_trip = (time.perf_counter() - t) / n_frames
        pg.finish()
        with_frames = 5 / round_trip
        steps = 5 * n_frames
        t = time.perf_counter()
        pg.advance(steps)
        without = steps / (time.perf_counter() - t)
    finally:
        pg.close()
    say(f"building the playground (data, two models): {build_s:.2f} s (on page load, "
        f"before Play)")
    say(f"in a run's thread (1 torch thread): regions under PN + shaped 1:3 on a 100 x 100 "
        f"grid, one run: {1000 * t_regions:.1f} ms ({1 / t_regions:.1f} per second)")
    say(f"one run's whole frame as the page computes it (80 x 80 regions + PGD-10 on "
        f"{PG.N_BOXES} eps-box points, PN and shaped): {1000 * t_frame:.1f} ms; with the "
        f"test accuracies (PGD-10 on {PG.N_EVAL} test points, every {PG.ACCURACY_EVERY} "
        f"frames): {1000 * t_frame_acc:.1f} ms")
    say(f"one run's regions image drawn + PNG-encoded: {1000 * t_image:.1f} ms")
    say(f"frame loop in the server as the page plays (both runs: 5 steps each + frames in "
        f"their threads, 2 images, curves every {PG.ACCURACY_EVERY} frames): "
        f"{1000 * round_trip:.0f} ms = {1 / round_trip:.1f} frames/s")
    say(f"training steps/s per run with frames drawn: {with_frames:.1f}; without: "
        f"{without:.1f}; ratio {with_frames / without:.2f}")
    summary("playground: frames/s in the server process (goal >= 5; shown as s/frame)",
            round_trip, 0.2, fmt="{:.3f} s")
    summary("playground: PN + shaped regions 100x100, 3x64 MLP", t_regions, None,
            fmt="{:.4f} s")
    summary("playground: training steps/s with frames / without", with_frames / without,
            None)
    RESULTS["playground"] = {"build_s": build_s, "regions_s": t_regions, "frame_s": t_frame,
                             "frame_with_accuracies_s": t_frame_acc, "image_s": t_image,
                             "round_trip_s": round_trip, "steps_per_s_with_frames": with_frames,
                             "steps_per_s_without": without}
    browser = _browser_fps(args, say)
    if browser:
        RESULTS["playground"].update(browser)
        summary("playground: first frame after Play (browser)", browser["first_frame_s"], 2.0,
                fmt="{:.2f} s")
        summary("playground: frames/s in the browser (goal >= 5; shown as s/frame)",
                1 / max(browser["browser_fps"], 1e-9), 0.2, fmt="{:.3f} s")


def _browser_fps(args, say):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        say("playwright not installed: browser frame rate not measured")
        return None
    if not Path(CHROMIUM).exists():
        say(f"no Chromium at {CHROMIUM}: browser frame rate not measured")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="normshape-bench-pg-"))
    env = dict(NORMSHAPE_HOME=str(tmp / "home"), NORMSHAPE_RUNS_DIR=str(tmp / "runs"))
    pattern = re.compile(r"frame (\d+) ·")
    try:
        with serving(env, log_path=tmp / "streamlit.log", timeout=120) as base, \
                sync_playwright() as p:
            b = launch_chromium(p)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/playground")
            page.get_by_text(pattern).first.wait_for(timeout=120_000)
            time.sleep(2.0)
            page.get_by_role("button", name="Play").click()
            t0 = time.time()
            seen, first = {}, None
            while time.time() - t0 < 10.0:
                loc = page.get_by_text(pattern)
                if loc.count():
                    m = pattern.search(loc.first.inner_text())
                    if m and int(m.group(1)) not in seen:
                        seen[int(m.group(1))] = time.time() - t0
                        if int(m.group(1)) >= 1 and first is None:
                            first = time.time() - t0
                time.sleep(0.02)
            b.close()
        new = [k for k in seen if k >= 1]
        fps = (max(new) / 10.0) if new else 0.0  # frames advanced in 10 s (the counter)
        say(f"browser (headless Chromium, streamlit run app.py): first frame {first:.2f} s after "
            f"Play; {max(new) if new else 0} frames in 10 s = {fps:.1f} frames/s "
            f"({len(new)} of them seen by the 20 ms poll)")
        return {"first_frame_s": first if first is not None else float("nan"),
                "browser_fps": fps}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
