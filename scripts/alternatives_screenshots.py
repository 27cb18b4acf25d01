"""Screenshots of the BN fixes in the app, for the README:
``python scripts/alternatives_screenshots.py [OUT_DIR]`` (default ``docs/screenshots``).

- Compare on digits with PGD + shaping 1:3 beside dual BN (PGD) and GroupNorm (PGD), each
  worst case through its own norms, at 1024x768 (the first screen) and 1920x1080;
- the Playground with run A dual BN (PGD) beside run B PGD + shaping 1:3, after 25 frames.

Starts ``streamlit run app.py`` on a free port with a temporary user folder and drives
Debian's Chromium (headless) with Playwright. Compare's worst cases the shipped results do
not hold run as the app's background jobs; the script waits for them (minutes on 2 cores).
Not part of the test suite (the tests never write into the tree)."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's normshape_app, also when not installed
from normshape_app.serve import launch_chromium, serving  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from playground_screenshots import play_then_pause, shot  # noqa: E402

COMPARED = ["digits-small_cnn-pgd-shape-attack-train-r1-3-eps0.3-s0",
            "digits-small_cnn-dualbn-pgd-clean-adv-eps0.3-s0",
            "digits-small_cnn-gn-pgd-adv-only-eps0.3-s0"]
#: texts Compare shows while a worst case is still running in the background
RUNNING = ("to go", "in the background", "waiting")


def compare_done(page) -> bool:
    text = page.locator("[data-testid=stMain]").inner_text().lower()
    return "worst case (default)" in text and not any(t in text for t in RUNNING)


def take(base: str, out: Path) -> int:
    """The screenshots from the app served at ``base``, into ``out``."""
    query = urlencode([("cmp", c) for c in COMPARED], safe="")
    with sync_playwright() as p:
        b = launch_chromium(p)
        page = b.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(f"{base}/compare?{query}")
        end = time.time() + 1800
        while time.time() < end:
            time.sleep(5)
            try:
                if compare_done(page):
                    break
            except Exception:  # noqa: BLE001 - the page is being redrawn
                pass
        else:
            print("the worst cases did not finish in 30 min", file=sys.stderr)
            return 1
        page.close()
        for w, h in ((1024, 768), (1920, 1080)):
            page = b.new_page(viewport={"width": w, "height": h})
            page.goto(f"{base}/compare?{query}")
            page.get_by_text("worst case (default)").first.wait_for(timeout=120_000)
            time.sleep(6)
            page.mouse.move(5, 5)
            shot(page, out / f"compare-alternatives-{w}x{h}.png", False)
            page.close()
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        # a selectbox with a format_func is bound to the URL by its label
        play_then_pause(page, f"{base}/playground?" +
                        urlencode({"pg_a_norm": "dual BN [adv norms]"}), timeout=90)
        shot(page, out / "playground-dual-bn.png", True)
        b.close()
    return 0


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="normshape-shots-"))
    env = dict(NORMSHAPE_HOME=str(tmp / "home"), NORMSHAPE_RUNS_DIR=str(tmp / "runs"),
               NORMSHAPE_JOB_THREADS="1")
    with serving(env, log_path=tmp / "streamlit.log", timeout=120) as base:
        rc = take(base, out)
    shutil.rmtree(tmp, ignore_errors=True)
    if rc == 0:
        print(f"screenshots written to {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
