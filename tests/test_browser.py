"""A real browser on the real server: ``streamlit run normshape_app/app.py`` on a free port,
driven by Playwright (from PyPI) with Debian's Chromium, headless. Visits every page, starts a tiny
training run on the Train page, waits for it to finish, finds its checkpoint on the Compare
page, saves a screenshot of each page and fails on any exception text shown.

Screenshots go to the test's temp folder; with ``NORMSHAPE_SCREENSHOTS=DIR`` they are also
written to DIR (``docs/screenshots`` holds the README's). Skipped when Chromium or
Playwright is missing; Playwright is never allowed to download a browser.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from _app_checkpoints import checkpoint_root

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("NORMSHAPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# (url path, screenshot name, text that must appear once the page has finished)
PAGES = [("/", "home", "Checkpoints found"),
         ("/ratios", "ratios", "Here the best cell is"),
         ("/moving-target", "moving_target", "Damping"),
         ("/decision-boundaries?db_map=PCA", "decision_boundaries", "disagree on"),
         ("/compare", "compare", "Tables laid out like the paper"),
         ("/confoundings", "confoundings", "Here PN"),
         ("/confoundings?lesson=II", "confoundings_ii", "logit error"),
         ("/confoundings?lesson=III", "confoundings_iii", "perturbations")]
ERROR_MARKERS = ("Traceback", "Error:", "Exception:")

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    port = free_port()
    env = {**os.environ, "NORMSHAPE_CHECKPOINT_DIRS": str(checkpoint_root()),
           "NORMSHAPE_RUNS_DIR": str(runs), "NORMSHAPE_JOB_THREADS": "1",
           "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "normshape_app/app.py",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "streamlit exited"
                time.sleep(0.5)
        yield base, runs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        yield pg
        browser.close()


def settle(pg, needle: str, timeout: float = 150.0) -> None:
    """Wait until the app has finished running and shows ``needle``."""
    pg.wait_for_selector("[data-testid=stAppViewContainer]", timeout=60_000)
    pg.get_by_text(needle, exact=False).first.wait_for(timeout=timeout * 1000)
    end = time.time() + timeout
    while pg.locator("[data-testid=stStatusWidget]").count() and time.time() < end:
        time.sleep(0.3)
    time.sleep(0.8)  # let plotly draw


def no_exception_shown(pg, where: str) -> None:
    assert pg.locator("[data-testid=stException]").count() == 0, where
    body = pg.locator("[data-testid=stMain]").inner_text()
    for marker in ERROR_MARKERS:
        assert marker not in body, f"{where}: {marker!r} shown"


def screenshot(pg, name: str, out: Path) -> None:
    h = pg.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    pg.set_viewport_size({"width": 1400, "height": min(int(h) + 20, 4000)})
    time.sleep(0.6)
    path = out / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    pg.set_viewport_size({"width": 1400, "height": 900})
    extra = os.environ.get("NORMSHAPE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


def test_every_page_then_a_training_run_that_reaches_compare(server, page, tmp_path):
    base, runs = server
    for url, name, needle in PAGES:
        page.goto(base + url)
        settle(page, needle)
        no_exception_shown(page, url)
        screenshot(page, name, tmp_path)

    page.goto(base + "/train?train_dataset=moons")
    settle(page, "Start training")
    epochs = page.get_by_role("spinbutton", name="Epochs")
    epochs.fill("2")
    epochs.press("Tab")
    page.get_by_role("textbox", name="Run name (optional)").fill("browser run")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started", exact=False).first.wait_for(timeout=30_000)
    # the fragment refreshes the page by itself until the run is done
    page.get_by_text("Finished in", exact=False).first.wait_for(timeout=150_000)
    settle(page, "Finished in")
    no_exception_shown(page, "/train")
    screenshot(page, "train", tmp_path)
    (run,) = [p for p in runs.iterdir() if p.name.startswith("browser_run-")]
    assert (run / "model.json").exists()

    page.goto(base + "/compare")
    settle(page, "Tables laid out like the paper")
    page.get_by_role("combobox").first.click()  # the checkpoint multiselect
    page.get_by_role("option", name=run.name).wait_for(timeout=10_000)
    page.keyboard.press("Escape")
    no_exception_shown(page, "/compare")
    for name in [p[1] for p in PAGES] + ["train"]:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
