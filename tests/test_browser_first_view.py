"""A researcher's first view, in a real browser on the shipped checkpoints (Playwright with
Debian's Chromium, headless, against ``streamlit run app.py``): Compare opened fresh and three
digits checkpoints chosen through the widget show a worst-case row for each within 5 s, every
column at one eps; a mixed-eps selection shows the sentence and one table per eps; Ratios'
worst-case mode at its defaults shows the whole grid within 5 s; Home's first screen at
1024x768 says where to start. Screenshots of Home, Compare and Ratios at 1024x768 and
1920x1080 go to the test's temp folder and, with ``NORMSHAPE_UPDATE_SCREENSHOTS=1``, to
``docs/screenshots/`` (the README's).

The 5 s are counted once the server has imported torch (a first visit to Home), from the
last click (or the page's address) to the numbers on screen; the numbers are read, never
computed (the suite starts no evaluation worker: NORMSHAPE_MAX_EVAL_JOBS=0)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from normshape_app.serve import CHROMIUM, launch_chromium, serving  # noqa: E402
from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE  # noqa: E402

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM}")
VIEWPORTS = [(1024, 768), (1920, 1080)]
WORST = f"worst case ({DEFAULT_ENSEMBLE}), crafted with its own norms"
FIRST_SCREEN = 5.0  # seconds from the click to the numbers
BEST_BG = "rgb(253, 224, 197)"  # tables.BEST_CSS

# Every table of the page: its header texts, and per body row its cells' text and whether
# the cell is highlighted as the row's best.
TABLES = """() => [...document.querySelectorAll('[data-testid=stTable] table')].map(t => ({
  headers: [...t.querySelectorAll('thead th')].map(th => th.innerText.trim()),
  rows: [...t.querySelectorAll('tbody tr')].map(tr => [...tr.querySelectorAll('th, td')].map(
    td => ({text: td.innerText.trim(), best: getComputedStyle(td).backgroundColor}))),
}))"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"NORMSHAPE_CHECKPOINT_DIRS": str(ROOT / "checkpoints"),
           "NORMSHAPE_RUNS_DIR": str(tmp_path_factory.mktemp("runs")),
           "NORMSHAPE_MAX_EVAL_JOBS": "0", "NORMSHAPE_WARM_UMAP": "0"}
    with serving(env, log_path=tmp_path_factory.mktemp("log") / "streamlit.log",
                 timeout=120) as base:
        yield base


@pytest.fixture(scope="module")
def browser(server):
    with playwright.sync_playwright() as p:
        b = launch_chromium(p)
        pg = b.new_page()
        pg.goto(server + "/")  # the server imports torch and scans the checkpoints once
        pg.get_by_text("Checkpoints found").first.wait_for(timeout=120_000)
        pg.close()
        yield b
        b.close()


def shipped_results_are_the_engines(dataset: str = "digits") -> None:
    """The first view reads the shipped worst case only when it is the current engine's:
    until the shipped results are regenerated, these tests fail here, saying so."""
    import json

    results = json.loads((ROOT / "checkpoints" / dataset / "results.json").read_text())
    assert results.get("worst_ensemble") == DEFAULT_ENSEMBLE, (
        f"the shipped {dataset} worst case is of the ensemble "
        f"{results.get('worst_ensemble')!r}, the engine's is {DEFAULT_ENSEMBLE!r}: the "
        "shipped results need regenerating (normshape reproduce)")


def shipped_table_iv_cells(dataset: str) -> int:
    """How many cells of Table IV's worst case the shipped results hold."""
    import json

    from normshape_core.studies.report import table_iv_values

    results = json.loads((ROOT / "checkpoints" / dataset / "results.json").read_text())
    return sum(v is not None for row in table_iv_values(results, worst=True).values()
               for v in row.values())


def idle(pg, timeout: float = 120.0) -> None:
    """Until the app has finished running (no 'Running...' status)."""
    end = time.time() + timeout
    time.sleep(0.5)
    while pg.locator("[data-testid=stStatusWidget]").count() and time.time() < end:
        time.sleep(0.2)
    time.sleep(0.5)


def no_exception(pg, where: str) -> None:
    assert pg.locator("[data-testid=stException]").count() == 0, where
    body = pg.locator("[data-testid=stMain]").inner_text()
    for marker in ("Traceback", "Error:", "Exception:"):
        assert marker not in body, f"{where}: {marker!r} shown"


def worst_rows(tables) -> list:
    """The worst-case rows of every table: (headers, [cells of the row])."""
    out = []
    for t in tables:
        for row in t["rows"]:
            if row and row[0]["text"].startswith("worst case"):
                out.append((t["headers"], row))
    return out


def numbers_in(cells) -> bool:
    return all(re.match(r"\d\.\d{3}\s*\n?\s*\[\d\.\d{3}, \d\.\d{3}\], n=\d+", c["text"])
               for c in cells)


def save(pg, name: str, out: Path, readme: bool = True) -> Path:
    """A screenshot in ``out``; with ``NORMSHAPE_UPDATE_SCREENSHOTS=1`` the README's
    (``readme``) also in ``docs/screenshots/``."""
    path = out / f"{name}.png"
    pg.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if readme and os.environ.get("NORMSHAPE_UPDATE_SCREENSHOTS") == "1":
        dest = ROOT / "docs" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)
    return path


def choose(pg, label: str, options) -> None:
    """Empty the multiselect ``label`` and choose ``options`` in it, one by one, as a user
    does: type, Enter."""
    box = pg.locator("[data-testid=stMultiSelect]", has_text=label)
    end = time.time() + 60
    while box.locator("button[aria-label^='Remove ']").count() and time.time() < end:
        pg.keyboard.press("Escape")
        box.locator("button[aria-label^='Remove ']").first.click()
        idle(pg)
    assert box.locator("button[aria-label^='Remove ']").count() == 0
    for opt in options:
        pick(pg, box, opt)
        idle(pg)


def pick(pg, box, option: str) -> None:
    """Type ``option`` into the multiselect ``box`` and click it in the list."""
    field = box.locator("input[role=combobox]")
    field.click()
    field.fill(option)
    pg.locator("[role=option]", has_text=option).first.click()
    pg.keyboard.press("Escape")


def test_compare_fresh_then_three_digits_checkpoints_through_the_widget(server, browser,
                                                                        tmp_path):
    shipped_results_are_the_engines("digits")
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        pg.goto(server + "/compare")
        pg.get_by_text("Tables laid out like the paper").first.wait_for(timeout=60_000)
        idle(pg)
        no_exception(pg, "/compare fresh")
        first = pg.evaluate(TABLES)
        assert len(first) == 1 and len(first[0]["headers"]) == 5, first  # one eps: one table
        assert pg.get_by_text("not comparable").count() == 0
        picks = ["digits-small_cnn-natural-s0", "digits-small_cnn-trades-adv-only-eps0.3-nokl-s0",
                 "digits-small_cnn-pgd-shape-train-r1-3-eps0.3-s0"]
        choose(pg, "Checkpoints", picks[:2])  # the third one timed from its click
        box = pg.locator("[data-testid=stMultiSelect]", has_text="Checkpoints")
        t0 = time.monotonic()
        pick(pg, box, picks[2])
        end, rows = t0 + 60, []
        while time.monotonic() < end:
            rows = worst_rows(pg.evaluate(TABLES))
            if len(rows) == 3 and all(len(r) == 5 and numbers_in(r[2:]) for _, r in rows) \
                    and all(any(p in h for h in heads) for p in picks for heads, _ in rows):
                break
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert len(rows) == 3, rows
        assert took <= FIRST_SCREEN, f"the worst-case rows took {took:.1f} s"
        idle(pg)
        no_exception(pg, "/compare, three digits checkpoints")
        tables = pg.evaluate(TABLES)
        assert len(tables) == 1 and pg.get_by_text("not comparable").count() == 0
        assert "eps 0.3" in pg.locator("[data-testid=stMain]").inner_text() or all(
            "eps0.3" in h or "natural" in h for h in tables[0]["headers"][2:])
        save(pg, "compare-three-digits", tmp_path, readme=False)

        # a mixed-eps selection: the sentence, one table per eps, best only within one
        choose(pg, "Checkpoints", picks[:2] + ["moons-mlp-natural-s0"])
        idle(pg)
        no_exception(pg, "/compare, mixed eps")
        assert pg.get_by_text("not comparable").count() == 1
        tables = pg.evaluate(TABLES)
        assert len(tables) == 2, [t["headers"] for t in tables]
        assert [len(t["headers"]) - 2 for t in tables] == [2, 1]
        assert all("digits" in h for h in tables[0]["headers"][2:])
        assert "moons" in tables[1]["headers"][2]
        for t in tables:
            best = [c for row in t["rows"] for c in row[2:] if c["best"] == BEST_BG]
            if len(t["headers"]) == 3:  # one column: nothing to be best against
                assert best == [], t["headers"]
        assert any(c["best"] == BEST_BG for row in tables[0]["rows"] for c in row[2:])
        main = pg.locator("[data-testid=stMain]").inner_text()
        assert "digits, eps 0.3" in main and "moons, eps 0.12" in main
        save(pg, "compare-mixed-eps", tmp_path)
    finally:
        pg.close()


def test_ratios_worst_case_mode_at_its_defaults_shows_the_whole_grid(server, browser,
                                                                     tmp_path):
    """Ratios opened fresh (the paper's PGD), then its worst-case mode chosen: the whole grid
    (4 training ratios x 6 inference ratios) within 5 s of the click, in place of the PGD
    heatmap. Until the shipped results hold Table IV's worst case for every cell of the page's
    default grid (the reproduction's ``n_test_table_iv_worst``): the shipped cells shown, an
    expected failure naming how many are missing."""
    shipped_results_are_the_engines("digits")
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        pg.goto(server + "/ratios")
        pg.get_by_text("Here the best cell is").first.wait_for(timeout=120_000)
        idle(pg)
        pg.locator("[data-testid=stSelectbox]", has_text="Attack crafted with").click()
        t0 = time.monotonic()
        pg.locator("[role=option]", has_text="worst case").first.click()
        chart = pg.locator("[data-testid=stPlotlyChart]", has_text="worst case").first
        end, cells = t0 + 60, []
        while time.monotonic() < end:
            if chart.count():
                cells = [t for t in chart.locator("text").all_text_contents()
                         if re.fullmatch(r"\d\.\d{3}", (t or "").strip())]
                if len(cells) >= 24:
                    break
            time.sleep(0.05)
        took = time.monotonic() - t0
        shipped = shipped_table_iv_cells("digits")
        if shipped < 24:  # being regenerated: the shipped cells shown, the others waiting
            assert len(cells) == shipped, f"{len(cells)} cells shown, {shipped} shipped"
            no_exception(pg, "/ratios worst case, cells waiting")
            pytest.xfail(f"Table IV's worst case for digits is not all shipped yet ("
                         f"{shipped} of 24 cells; the regeneration computes it last)")
        assert len(cells) == 24, f"{len(cells)} of the 4 x 6 cells shown"
        assert took <= FIRST_SCREEN, f"the worst-case grid took {took:.1f} s"
        idle(pg)
        no_exception(pg, "/ratios worst case")
        assert "ratios_crafted=worst+case" in pg.url or "worst%20case" in pg.url
    finally:
        pg.close()


@pytest.mark.parametrize("w, h", VIEWPORTS)
def test_first_screens_of_home_compare_and_ratios(server, browser, tmp_path, w, h):
    """Home's first screen says where to start (teach, play, measure) without scrolling;
    Compare's and Ratios' first screens; the screenshots the README shows."""
    pg = browser.new_page(viewport={"width": w, "height": h})
    try:
        pg.goto(server + "/")
        pg.get_by_text("Checkpoints found").first.wait_for(timeout=60_000)
        idle(pg)
        for label in ("Teach: Confoundings", "Play: Playground", "Measure: Compare"):
            link = pg.locator("[data-testid=stPageLink]", has_text=label).first
            box = link.bounding_box()
            assert box and box["y"] + box["height"] <= h, f"{label} below the first screen"
        save(pg, f"home-{w}x{h}", tmp_path)
        pg.goto(server + "/compare")
        pg.get_by_text("Tables laid out like the paper").first.wait_for(timeout=60_000)
        idle(pg)
        pg.get_by_text("Side by side").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        time.sleep(0.5)
        save(pg, f"compare-{w}x{h}", tmp_path)
        pg.goto(server + "/ratios?ratios_crafted=worst+case")
        pg.get_by_text("overstates the worst case").first.wait_for(timeout=120_000)
        idle(pg)
        if w < 1400:  # the settings above, the worst-case grid on the first screen
            pg.locator("[data-testid=stPlotlyChart]").first.evaluate(
                "e => e.scrollIntoView({block: 'end'})")
        time.sleep(1.0)
        save(pg, f"ratios-{w}x{h}", tmp_path)
        no_exception(pg, f"/ratios at {w}x{h}")
    finally:
        pg.close()
