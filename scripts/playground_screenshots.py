"""Screenshots of the Playground (1400 px wide, the whole page; 1024x768, the first screen
without scrolling) and of the Train page with a paused run, for the README:
``python scripts/playground_screenshots.py [OUT_DIR]``
(default ``docs/screenshots``). Starts ``streamlit run app.py`` on a free port with a
temporary user folder and drives Debian's Chromium (headless) with Playwright. Not part of
the test suite (the tests never write into the tree)."""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's normshape_app, also when not installed
from normshape_app.serve import launch_chromium, serving  # noqa: E402

FRAME = re.compile(r"Frame (\d+) ·")


def frame_no(page) -> int:
    loc = page.get_by_text(FRAME)
    m = FRAME.search(loc.first.inner_text()) if loc.count() else None
    return int(m.group(1)) if m else -1


def play_then_pause(page, url: str, frames: int = 25, timeout: float = 60.0) -> None:
    """Open the Playground at ``url``, play until ``frames`` frames (or ``timeout`` s), pause,
    and move the mouse off the charts (no toolbar, no tooltip)."""
    page.goto(url)
    page.get_by_text(FRAME).first.wait_for(timeout=120_000)
    page.get_by_role("button", name="Play", exact=True).click()
    end = time.time() + timeout
    while frame_no(page) < frames and time.time() < end:
        time.sleep(0.2)
    page.get_by_role("button", name="Pause", exact=True).click()
    page.get_by_role("button", name="Play", exact=True).wait_for(timeout=10_000)
    time.sleep(2.5)
    page.mouse.move(5, 5)
    time.sleep(0.5)


def shot(page, path: Path, whole: bool) -> None:
    """The whole page (the viewport stretched to the app's height, as tests/test_browser.py
    does: Streamlit scrolls inside its own container), else the window as it is."""
    size = page.viewport_size
    if whole:
        h = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
        page.set_viewport_size({"width": size["width"], "height": min(int(h) + 20, 4000)})
        time.sleep(1.5)
    page.screenshot(path=str(path), full_page=whole)
    page.set_viewport_size(size)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="normshape-shots-"))
    env = dict(NORMSHAPE_HOME=str(tmp / "home"), NORMSHAPE_RUNS_DIR=str(tmp / "runs"),
               NORMSHAPE_JOB_THREADS="1")
    with serving(env, log_path=tmp / "streamlit.log", timeout=120) as base:
        with sync_playwright() as p:
            b = launch_chromium(p)
            for name, size, whole in (("playground", (1400, 1000), True),
                                      ("playground-1024", (1024, 768), False)):
                page = b.new_page(viewport={"width": size[0], "height": size[1]})
                play_then_pause(page, base + "/playground")
                # at 1024x768 the first screen as it is: the controls and all four panels
                shot(page, out / f"{name}.png", whole)
                page.close()
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/train?train_dataset=moons&train_epochs_moons=200")
            page.get_by_role("button", name="Start training").wait_for(timeout=60_000)
            page.get_by_role("button", name="Start training").click()
            main_ = page.locator("[data-testid=stMain]")
            main_.get_by_role("button", name="Pause", exact=True).wait_for(timeout=60_000)
            main_.get_by_text(re.compile(r": running: step \d+")).first.wait_for(timeout=60_000)
            time.sleep(4.0)
            main_.get_by_role("button", name="Pause", exact=True).click()
            main_.get_by_text(re.compile(r"paused at step")).first.wait_for(timeout=60_000)
            time.sleep(2.0)
            shot(page, out / "train_paused.png", True)
            main_.get_by_role("button", name="Stop", exact=True).click()
            main_.get_by_role("button", name="Resume", exact=True).wait_for(timeout=60_000)
            time.sleep(2.0)
            shot(page, out / "train_stopped.png", True)
            b.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"screenshots written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
