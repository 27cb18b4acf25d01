"""The Playground and run ownership in a real browser (Playwright + Debian's Chromium) on the
real server (the fixtures of test_browser.py): play shows live frames, pause holds them, step
adds exactly one, reset starts again, the URL carries every setting into a fresh browser;
two sessions never see each other's playground; on the Train page session B cannot stop
session A's run (only through the separate, confirmed control)."""
from __future__ import annotations

import re
import time

import pytest

from test_browser import ARGS, CHROMIUM, no_exception_shown, settle  # noqa: F401
from test_browser import browser, server  # noqa: F401 - fixtures

FRAME = re.compile(r"frame (\d+) · epoch ([\d.]+) · step (\d+) · boundary (\w+)")


def frame_of(pg):
    """(frame number, boundary digest) of the counter shown now, or None."""
    loc = pg.get_by_text(FRAME)
    if not loc.count():
        return None
    m = FRAME.search(loc.first.inner_text())
    return (int(m.group(1)), m.group(4)) if m else None


def wait_frame(pg, pred, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        f = frame_of(pg)
        if f is not None and pred(f):
            return f
        time.sleep(0.05)
    raise AssertionError(f"frame counter stayed at {frame_of(pg)}")


def open_playground(browser, base, query=""):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.goto(base + "/playground" + query)
    settle(pg, "frame 0 ·")
    return ctx, pg


def test_play_pause_step_reset_and_the_url_opens_the_same_experiment(server, browser):  # noqa: F811
    base, _ = server
    ctx, pg = open_playground(browser, base, "?pg_data=circles&pg_infer=1:9&pg_noise=0.05")
    no_exception_shown(pg, "/playground")
    assert frame_of(pg)[0] == 0
    t0 = time.time()
    pg.get_by_role("button", name="Play").click()
    first = wait_frame(pg, lambda f: f[0] >= 1, timeout=10)
    t_first = time.time() - t0
    frames, digests = {first[0]}, {first[1]}
    end = t0 + 10.0
    while time.time() < end:
        f = frame_of(pg)
        if f:
            frames.add(f[0])
            digests.add(f[1])
        time.sleep(0.03)
    print(f"first frame {t_first:.2f} s after play; {len(frames)} frames, {len(digests)} "
          f"distinct boundaries in 10 s")
    assert len(frames) >= 5 and len(digests) >= 5, (frames, digests)
    pg.get_by_role("button", name="Pause").click()
    pg.get_by_role("button", name="Play").wait_for(timeout=10_000)
    time.sleep(1.0)
    held = frame_of(pg)
    time.sleep(2.0)
    assert frame_of(pg) == held  # paused: nothing moves
    pg.get_by_role("button", name="Step").click()
    stepped = wait_frame(pg, lambda f: f[0] != held[0])
    assert stepped[0] == held[0] + 1 and stepped[1] != held[1]
    time.sleep(1.5)
    assert frame_of(pg) == stepped  # exactly one more frame
    pg.get_by_role("button", name="Reset").click()
    wait_frame(pg, lambda f: f[0] == 0)
    seed = pg.get_by_role("spinbutton", name="Seed")
    seed.fill("7")
    seed.press("Enter")
    pg.wait_for_url(re.compile(r"pg_seed=7"), timeout=10_000)
    no_exception_shown(pg, "/playground after reset")
    url = pg.url
    ctx.close()
    assert url.startswith(base + "/playground?")
    ctx2, pg2 = open_playground(browser, base, url[len(base + "/playground"):])
    assert pg2.get_by_role("spinbutton", name="Seed").input_value() == "7"
    assert pg2.get_by_role("spinbutton", name="Noise").input_value() == "0.05"
    assert pg2.get_by_text("circles", exact=True).count() >= 1
    assert pg2.get_by_text("1:9", exact=True).count() >= 1
    assert "pg_seed=7" in pg2.url and "pg_data=circles" in pg2.url
    no_exception_shown(pg2, "/playground reopened")
    ctx2.close()


def test_two_sessions_each_run_their_own_playground(server, browser):  # noqa: F811
    base, _ = server
    ctx_a, a = open_playground(browser, base)
    ctx_b, b = open_playground(browser, base)
    b_start = frame_of(b)
    a.get_by_role("button", name="Play").click()
    wait_frame(a, lambda f: f[0] >= 4, timeout=20)
    assert frame_of(b) == b_start  # B's playground did not move
    b.get_by_role("button", name="Step").click()
    stepped = wait_frame(b, lambda f: f[0] == 1)
    a_now = frame_of(a)[0]
    assert a_now >= 4  # A counts its own frames, B its own
    a.get_by_role("button", name="Pause").click()
    a.get_by_role("button", name="Play").wait_for(timeout=10_000)
    time.sleep(1.0)
    assert frame_of(b) == stepped
    ctx_a.close()
    ctx_b.close()


def _start_run(pg, base, name):
    pg.goto(base + "/train?train_dataset=moons&train_epochs_moons=400")
    settle(pg, "Start training")
    pg.get_by_role("textbox", name="Run name (optional)").fill(name)
    pg.get_by_role("button", name="Start training").click()
    pg.get_by_text("Started", exact=False).first.wait_for(timeout=30_000)


def _run_box(pg, name):
    return pg.locator("[data-testid=stVerticalBlockBorderWrapper]").filter(
        has_text=re.compile(name + r"-\d")).last


def test_session_b_cannot_stop_the_run_of_session_a(server, browser):  # noqa: F811
    from normshape_core import jobs

    base, runs = server
    ctx_a = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 1000})
    a, b = ctx_a.new_page(), ctx_b.new_page()
    _start_run(a, base, "owned_by_a")
    _start_run(b, base, "owned_by_b")
    (run_a,) = [p for p in runs.iterdir() if p.name.startswith("owned_by_a-")]
    (run_b,) = [p for p in runs.iterdir() if p.name.startswith("owned_by_b-")]
    box_a_in_b = _run_box(b, "owned_by_a")
    box_a_in_b.get_by_text("started by another session").wait_for(timeout=30_000)
    # B sees no Stop / Pause for A's run, only the separate control
    assert box_a_in_b.get_by_role("button", name="Stop", exact=True).count() == 0
    assert box_a_in_b.get_by_role("button", name="Pause", exact=True).count() == 0
    assert box_a_in_b.get_by_role("button", name="Stop…").count() == 1
    # B stops its own run: A's goes on
    _run_box(b, "owned_by_b").get_by_role("button", name="Stop", exact=True).click()
    assert jobs.wait_for(run_b, timeout=60).state == "stopped"
    assert jobs.job_status(run_a).active
    # the separate control needs its confirmation before it does anything
    box_a_in_b = _run_box(b, "owned_by_a")
    box_a_in_b.get_by_role("button", name="Stop…").click()
    confirm = b.get_by_role("button", name="Stop another session's run")
    confirm.wait_for(timeout=10_000)
    assert confirm.is_disabled()
    time.sleep(1.0)
    assert jobs.job_status(run_a).active
    # A, the owner, has its own controls for it
    box_a = _run_box(a, "owned_by_a")
    box_a.get_by_role("button", name="Pause", exact=True).wait_for(timeout=30_000)
    box_a.get_by_role("button", name="Stop", exact=True).click()
    assert jobs.wait_for(run_a, timeout=60).state == "stopped"
    no_exception_shown(a, "/train A")
    no_exception_shown(b, "/train B")
    ctx_a.close()
    ctx_b.close()
