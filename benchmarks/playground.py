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
- in headless Chromium on ``streamlit run app.py`` (1400 x 1000), per data set (moons,
  spirals, circles, default settings): seconds from pressing Play to the first new frame,
  frames per second over 10 s (the counter the page shows), on the machine as it is (its
  load average printed) and again with one CPU-bound process (a busy loop) beside it.
Goals (issues 15 and 23): at least 5 frames per second on a quiet machine and 3 with one
CPU-bound process beside it, on each data set; first frame within 2 s of play.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

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
    from normshape_app import playground as PG
    from normshape_core.measuring import projections as P
    from normshape_core.figures.playground import (curves_pair_figure, disagreement_sentence,
                                                   png_bytes, regions_image, run_title)
    from normshape_core.inference.shaping import PNClassifier

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
            for f in fs:
                png_bytes(regions_image(f, x_tr, y_tr, title))
            disagreement_sentence([f.disagreement() for f in fs], "AB",
                                  [s.training_batches() for s in pg.specs], "1:3")
            if fs[0].has_accuracies:
                curves_pair_figure(pg.history, ["A", "B"], "1:3").to_json()

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
        RESULTS["playground"]["browser"] = browser
        for ds, r in browser.items():
            summary(f"playground {ds}: first frame after Play (browser)", r["first_frame_s"],
                    2.0, fmt="{:.2f} s")
            summary(f"playground {ds}: frames/s in the browser (goal >= 5; shown as s/frame)",
                    1 / max(r["fps"], 1e-9), 0.2, fmt="{:.3f} s")
            summary(f"playground {ds}: frames/s with a CPU-bound process beside it (goal >= 3; "
                    f"shown as s/frame)", 1 / max(r["fps_busy"], 1e-9), 1 / 3, fmt="{:.3f} s")


PLAYGROUND_DATASETS = ("moons", "spirals", "circles")
BUSY = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


# the counter's text now (no waiting: the page redraws it several times a second)
COUNTER_JS = """() => [...document.querySelectorAll('[data-testid=stCaptionContainer]')]
  .map(e => e.innerText).find(t => t.startsWith('Frame ')) || ''"""


def _load() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _play(page, base: str, dataset: str, seconds: float) -> Tuple[Optional[float], float]:
    """Open the Playground on ``dataset`` with the default settings, press Play and count the
    frames the page's counter advances in ``seconds``: (first frame s, frames per second)."""
    pattern = re.compile(r"Frame (\d+) ·")
    page.goto(f"{base}/playground?pg_data={dataset}")
    page.get_by_text(pattern).first.wait_for(timeout=120_000)
    time.sleep(2.0)
    page.get_by_role("button", name="Play", exact=True).click()
    t0 = time.time()
    last, first = 0, None
    while time.time() - t0 < seconds:
        m = pattern.search(page.evaluate(COUNTER_JS) or "")
        if m and int(m.group(1)) > last:
            last = int(m.group(1))
            if first is None:
                first = time.time() - t0
        time.sleep(0.02)
    page.get_by_role("button", name="Pause", exact=True).click()
    page.get_by_role("button", name="Play", exact=True).wait_for(timeout=30_000)
    return first, last / seconds


def _browser_fps(args, say):
    """Frames per second in headless Chromium on ``streamlit run app.py``, per data set: on
    the machine as it is, then with one CPU-bound process (a busy loop) beside it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        say("playwright not installed: browser frame rate not measured")
        return None
    if not Path(CHROMIUM).exists():
        say(f"no Chromium at {CHROMIUM}: browser frame rate not measured")
        return None
    seconds = 6.0 if args.quick else 10.0
    tmp = Path(tempfile.mkdtemp(prefix="normshape-bench-pg-"))
    env = dict(NORMSHAPE_HOME=str(tmp / "home"), NORMSHAPE_RUNS_DIR=str(tmp / "runs"))
    out: Dict[str, Dict[str, float]] = {}
    try:
        with serving(env, log_path=tmp / "streamlit.log", timeout=120) as base, \
                sync_playwright() as p:
            b = launch_chromium(p)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            for ds in PLAYGROUND_DATASETS:
                load = _load()
                first, fps = _play(page, base, ds, seconds)
                busy = subprocess.Popen([sys.executable, "-c", BUSY])
                try:
                    time.sleep(1.0)
                    load_busy = _load()
                    first_b, fps_busy = _play(page, base, ds, seconds)
                finally:
                    busy.kill()
                    busy.wait()
                out[ds] = {"first_frame_s": first if first is not None else float("nan"),
                           "fps": fps, "fps_busy": fps_busy, "load": load,
                           "load_busy": load_busy}
                say(f"browser, {ds}: first frame {out[ds]['first_frame_s']:.2f} s after Play, "
                    f"{fps:.1f} frames/s over {seconds:g} s (load average {load}); with a "
                    f"CPU-bound process beside it: {fps_busy:.1f} frames/s (load {load_busy})")
            b.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
