"""A real browser on the real server: ``streamlit run app.py`` on a free port,
driven by Playwright (from PyPI) with Debian's Chromium, headless. Visits every page, starts a tiny
training run on the Train page, waits for it to finish, finds its checkpoint on the Compare
page, saves a screenshot of each page and fails on any exception text shown.

Screenshots go to the test's temp folder; with ``NORMSHAPE_SCREENSHOTS=DIR`` they are also
written to DIR (``docs/screenshots`` holds the README's). Skipped when Chromium or
Playwright is missing; Playwright is never allowed to download a browser.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from _app_checkpoints import checkpoint_root

ROOT = Path(__file__).resolve().parents[1]
from normshape_app.serve import CHROMIUM, CHROMIUM_ARGS as ARGS, launch_chromium, serving  # noqa: E402,F401
# (url path, screenshot name, text that must appear once the page has finished)
PAGES = [("/", "home", "Checkpoints found"),
         ("/ratios", "ratios", "Here the best cell is"),
         ("/moving-target", "moving_target", "Damping"),
         ("/decision-boundaries?db_map=PCA", "decision_boundaries", "disagree on"),
         ("/compare", "compare", "Tables laid out like the paper"),
         ("/confoundings", "confoundings", "slide 1 of 7"),
         ("/confoundings?slide=4", "confoundings_ii", "slide 4 of 7"),
         ("/confoundings?slide=6", "confoundings_iii", "slide 6 of 7")]
ERROR_MARKERS = ("Traceback", "Error:", "Exception:")

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    env = {"NORMSHAPE_CHECKPOINT_DIRS": str(checkpoint_root()), "NORMSHAPE_RUNS_DIR": str(runs),
           "NORMSHAPE_JOB_THREADS": "1"}
    with serving(env, log_path=tmp_path_factory.mktemp("log") / "streamlit.log",
                 timeout=120) as base:
        yield base, runs


@pytest.fixture(scope="module")
def browser(server):
    with playwright.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    yield pg
    pg.close()


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


def screenshot(pg, name: str, out: Path, whole: bool = True) -> None:
    """The whole page at the page's width (``whole``), else the window as it is."""
    size = pg.viewport_size
    if whole:
        h = pg.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
        pg.set_viewport_size({"width": size["width"], "height": min(int(h) + 20, 4000)})
        time.sleep(0.6)
    path = out / f"{name}.png"
    pg.screenshot(path=str(path), full_page=whole)
    pg.set_viewport_size(size)
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


# Every st.table on the page that is shown (not in a hidden tab): its headers, where they are,
# and whether any header or the table itself overflows (a cut or scrolled-away header).
LAYOUT = """() => {
  const tables = [];
  for (const t of document.querySelectorAll('[data-testid=stTable] table')) {
    const r = t.getBoundingClientRect();
    if (r.width === 0) continue;
    const wrap = t.closest('[data-testid=stTable]');
    const headers = [...t.querySelectorAll('thead th')].map(th => {
      const b = th.getBoundingClientRect();
      return {text: th.innerText.trim(), left: b.left, right: b.right,
              cut: th.scrollWidth > th.clientWidth + 1 || th.scrollHeight > th.clientHeight + 1};
    });
    tables.push({left: r.left, right: r.right, headers: headers,
                 scrolls: wrap.scrollWidth > wrap.clientWidth + 1});
  }
  return {width: window.innerWidth, tables: tables};
}"""

# The tick labels of each axis of a plotly chart, as boxes.
TICKS = """(chart) => {
  const out = {};
  for (const layer of chart.querySelectorAll('g.xaxislayer-above, g.yaxislayer-above')) {
    const key = layer.className.baseVal + Object.keys(out).length;
    out[key] = [...layer.querySelectorAll('text')].map(t => {
      const b = t.getBoundingClientRect();
      return {text: t.textContent, left: b.left, right: b.right, top: b.top,
              bottom: b.bottom};
    }).filter(b => b.right > b.left);
  }
  return out;
}"""


def whole_and_on_screen(layout, where: str) -> list:
    assert layout["tables"], f"{where}: no table shown"
    headers = []
    for t in layout["tables"]:
        assert not t["scrolls"], f"{where}: a table scrolls sideways"
        assert 0 <= t["left"] and t["right"] <= layout["width"], (where, t)
        for h in t["headers"]:
            assert not h["cut"], f"{where}: header {h['text']!r} is cut"
            assert 0 <= h["left"] and h["right"] <= layout["width"], (where, h)
            headers.append(h["text"].replace("\n", " "))
    return headers


def overlapping(boxes) -> list:
    return [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a["left"] < b["right"] - 1 and b["left"] < a["right"] - 1
            and a["top"] < b["bottom"] - 1 and b["top"] < a["bottom"] - 1]


def test_home_and_compare_fit_a_1024_by_768_screen(server, browser, tmp_path):
    """At 1024x768 with the sidebar open: no header of Home's inventory or of Compare's table
    is cut, the accuracy columns are on screen, and the bar chart's labels do not overlap."""
    base, _ = server
    pg = browser.new_page(viewport={"width": 1024, "height": 768})
    try:
        pg.goto(base + "/")
        settle(pg, "Checkpoints found")
        no_exception_shown(pg, "/ at 1024")
        headers = whole_and_on_screen(pg.evaluate(LAYOUT), "Home")
        assert any(h.startswith("clean acc.") for h in headers), headers
        assert any(h.startswith("robust acc.") for h in headers), headers
        assert "polluted PN" in headers
        screenshot(pg, "home-1024", tmp_path, whole=False)

        pg.goto(base + "/compare?cmp=moons-natural&cmp=moons-pgd-adv-only"
                       "&cmp=moons-pgd-shaped-1-1&cmp=moons-pgd-shaped-1-3")
        settle(pg, "Tables laid out like the paper")
        no_exception_shown(pg, "/compare at 1024")
        headers = whole_and_on_screen(pg.evaluate(LAYOUT), "Compare")
        for name in ("moons-natural (natural)", "moons-pgd-adv-only (PGD adv only)",
                     "moons-pgd-shaped-1-1 (PGD shaping 1:1)",
                     "moons-pgd-shaped-1-3 (PGD shaping 1:3)"):
            assert name in headers, headers
        chart = pg.locator("[data-testid=stPlotlyChart]",
                           has_text="Clean and robust accuracy of each checkpoint")
        chart.scroll_into_view_if_needed(timeout=60_000)
        chart.locator("g.yaxislayer-above").nth(3).wait_for(timeout=60_000)
        time.sleep(1.0)  # plotly draws, then redraws for the labels' margins
        ticks = chart.evaluate(TICKS)
        assert len(ticks) >= 8, ticks.keys()  # four panels, an x and a y axis each
        labels = [b["text"] for boxes in ticks.values() for b in boxes]
        assert labels.count("clean (no attack)") == 4 and "PGD-20, crafted PN" in labels
        for axis, boxes in ticks.items():
            assert boxes and not overlapping(boxes), (axis, overlapping(boxes))
            assert all(b["left"] >= 0 and b["right"] <= 1024 for b in boxes), axis
        pg.locator("[data-testid=stExpander] summary", has_text="Upload a checkpoint").click()
        pg.get_by_text("256MB", exact=False).first.wait_for(timeout=10_000)  # = the server's
        screenshot(pg, "compare-1024", tmp_path, whole=False)
    finally:
        pg.close()


def test_a_long_computation_says_k_of_n_and_time_left_and_can_be_cancelled(server, browser):
    base, _ = server
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        pg.goto(base + "/compare?cmp=digits-natural&cmp=digits-pgd-shaped-1-3&cmp_attacks=cw"
                       "&cmp_attacks=deepfool&cmp_attacks=apgd&cmp_n=500")
        pg.get_by_text(re.compile(r"Evaluating: \d of 6, digits-")).first.wait_for(
            timeout=60_000)
        bar = pg.get_by_text(re.compile(r"about .* left"))
        bar.first.wait_for(timeout=120_000)
        text = bar.first.inner_text()
        assert re.search(r"Evaluating: \d of 6, digits-\S+: (C&W-L2|DeepFool|APGD-CE)", text)
        pg.get_by_role("button", name="Cancel").click()
        stopped = pg.get_by_text(re.compile(r"stopped\. \d of 6 parts are computed and kept"))
        stopped.first.wait_for(timeout=60_000)
        no_exception_shown(pg, "/compare after Cancel")
        pg.get_by_role("button", name="Continue").click()
        pg.get_by_text(re.compile(r"Evaluating: 1 of [1-6], digits-")).first.wait_for(
            timeout=60_000)
        no_exception_shown(pg, "/compare after Continue")
    finally:
        pg.close()
