"""Section 5: the app: every page's first view and a cached rerun (AppTest), cold start of
``streamlit run app.py`` to the first rendered page in headless Chromium.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from _timing import fmt_ms, interleaved, table, time_once
from _common import APP, RESULTS, ROOT, child_json, header, say, summary
from normshape_core.base.names import META_NAME


def app_pages() -> List[str]:
    """Page files of the app: the ``st.Page("...py")`` entries of app.py, else pages/*.py."""
    app = APP
    text = app.read_text() if app.exists() else ""
    found = re.findall(r"st\.Page\(\s*[\"']([^\"']+\.py)[\"']", text)
    if not found:
        for folder in ("pages", "app_pages"):
            if (APP.parent / folder).is_dir():
                found = [f"{folder}/{p.name}" for p in sorted((APP.parent / folder).glob("*.py"))
                         if not p.name.startswith("_")]
                break
    return found


def section_app(args, device) -> None:
    header("5. App responsiveness")
    if not APP.exists():
        say("app.py is absent: skipped")
        RESULTS["app"] = "skipped: no app.py"
        return
    try:
        import streamlit  # noqa: F401
    except ImportError:
        say("streamlit not installed: skipped")
        return
    tmp = Path(tempfile.mkdtemp(prefix="normshape-bench-app-"))
    try:
        ck = tmp / "checkpoints"
        if (ROOT / "checkpoints").is_dir():
            shutil.copytree(ROOT / "checkpoints", ck)  # pages may write evaluation caches
        else:
            ck.mkdir()
        n_ck = len(list(ck.rglob(META_NAME)))
        env = dict(os.environ, NORMSHAPE_CHECKPOINT_DIRS=str(ck),
                   NORMSHAPE_RUNS_DIR=str(tmp / "runs"), NORMSHAPE_HOME=str(tmp / "home"))
        pages = app_pages()
        say(f"{n_ck} shipped checkpoints (a copy in a temporary folder); pages: "
            f"{', '.join(pages) or 'home only'}")
        res = child_json(["apptest", str(ck), str(tmp / "runs")] + pages, timeout=1500, env=env)
        if res is not None:
            rows = []
            for r in res["pages"]:
                if r.get("error"):
                    rows.append([r["page"], "error", "", r["error"][:80]])
                    continue
                rows.append([r["page"], f"{r['first_s']:.2f} s", f"{r['rerun_s']:.2f} s",
                             r.get("note", "")])
                summary(f"5. first view: {r['page']}", r["first_s"], 3.0, fmt="{:.2f} s")
                summary(f"5. cached rerun: {r['page']}", r["rerun_s"], 0.5, fmt="{:.2f} s")
            say("AppTest (streamlit.testing.v1), in one fresh process; Streamlit's caches "
                "cleared before each page,\nso 'first view' is each page's cold view in a warm "
                "process (imports done); evaluation results\ncached on disk beside shipped "
                "checkpoints are used, as in the app:")
            say(table(rows, ["page", "first view", "cached rerun", "note"]))
            say(f"process start to first AppTest run done (imports, home page): "
                f"{res['boot_s']:.2f} s")
            new = res.get("db_without_stored_maps")
            if new:
                say(f"Decision boundaries on the same checkpoint without its stored maps (as a "
                    f"new checkpoint): first view {new['first_s']:.2f} s showing the "
                    f"{new['map_at_first_view']} map and \"{new['progress_at_first_view']}\"; "
                    f"the UMAP map there after {new['umap_s']:.1f} s (computed in the "
                    f"background; numba compiles on the process's first UMAP)")
                summary("5. Decision boundaries without stored maps: first view", new["first_s"],
                        3.0, fmt="{:.2f} s")
            RESULTS["app_pages"] = res
        cold_start(args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(args, env) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        say("cold start: no Chromium at /usr/bin/chromium: skipped (never downloads a browser)")
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        say("cold start: playwright not installed: skipped")
        return
    reps = 1 if args.quick else 3
    times, health = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            for _ in range(reps):
                port = free_port()
                cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
                       "--server.headless", "true", "--server.port", str(port),
                       "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
                page = browser.new_page()
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                try:
                    url = f"http://127.0.0.1:{port}/"
                    t_health = None
                    while time.perf_counter() - t0 < 120:
                        try:
                            page.goto(url, wait_until="domcontentloaded", timeout=2000)
                            t_health = time.perf_counter() - t0
                            break
                        except Exception:  # noqa: BLE001 - server not up yet
                            time.sleep(0.05)
                    if t_health is None:
                        say("cold start: the server did not answer within 120 s")
                        break
                    # the first rendered page: the home page's title (any h1 of the app)
                    page.wait_for_selector("h1", timeout=120_000)
                    page.wait_for_function(
                        "() => !document.querySelector('[data-testid=\"stStatusWidget\"] "
                        "[data-testid=\"stStatusWidgetRunningIcon\"]')", timeout=120_000)
                    times.append(time.perf_counter() - t0)
                    health.append(t_health)
                finally:
                    page.close()
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        finally:
            browser.close()
    if times:
        med = statistics.median(times)
        say(f"cold start of `streamlit run app.py` to the first rendered page "
            f"(headless Chromium): "
            f"{med:.2f} s (median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)}); "
            f"server answering HTTP after {statistics.median(health):.2f} s")
        summary("5. cold start to first rendered page", med, 5.0, fmt="{:.2f} s")
        RESULTS["cold_start"] = dict(seconds=times, server_up_s=health)


def child_apptest(ck: str, runs: str, pages: List[str]) -> Dict[str, Any]:
    t_boot = time.perf_counter()
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    app = str(APP)
    out = []
    at = AppTest.from_file(app, default_timeout=900)
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    boot = time.perf_counter() - t_boot
    t0 = time.perf_counter()
    at.run()
    rerun = time.perf_counter() - t0
    err = [str(e.value)[:200] for e in at.exception]
    out.append({"page": "Home (app.py)", "first_s": first, "rerun_s": rerun,
                "error": "; ".join(err) if err else None,
                "note": "includes the first import of the app's modules"})
    for page in pages:
        st.cache_data.clear()
        st.cache_resource.clear()
        at = AppTest.from_file(app, default_timeout=900)
        at.run()
        try:
            at.switch_page(page)
            t0 = time.perf_counter()
            at.run()
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            at.run()
            rerun = time.perf_counter() - t0
            err = [str(e.value)[:200] for e in at.exception]
            out.append({"page": page, "first_s": first, "rerun_s": rerun,
                        "error": "; ".join(err) if err else None})
        except Exception as e:  # noqa: BLE001 - report, go on with the next page
            out.append({"page": page, "error": f"{type(e).__name__}: {e}"})
    db = "app_pages/decision_boundaries.py"
    new = _without_stored_maps(app, ck, db) if db in pages else None
    return {"pages": out, "boot_s": boot, "db_without_stored_maps": new}


def _without_stored_maps(app: str, ck: str, page: str) -> Dict[str, Any]:
    """Decision boundaries on a checkpoint without its stored maps (as a new one): the first
    view (PGD and features computed, the PCA map standing in, UMAP's progress shown) and the
    time until the UMAP map is there (computed in the background; the first UMAP in a process
    compiles numba's code)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    for f in Path(ck).rglob("model.projection.json"):
        f.unlink()
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(app, default_timeout=900)
    at.run()
    at.switch_page(page)
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    shown = [json.loads(el.proto.spec)["layout"]["title"]["text"].split(" of ")[0]
             for el in at.get("plotly_chart")
             if "penultimate" in json.loads(el.proto.spec)["layout"]["title"]["text"]]
    progress = [el.proto.text for el in at.get("progress")]
    while at.get("progress") and time.perf_counter() - t0 < 600:
        time.sleep(0.5)
        at.run()
    return {"first_s": first, "map_at_first_view": shown[0] if shown else None,
            "progress_at_first_view": progress[0] if progress else None,
            "umap_s": time.perf_counter() - t0}
