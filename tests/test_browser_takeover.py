"""No session takes over another's run (Playwright + Debian's Chromium on the real server,
the fixtures of test_browser.py): session B stops session A's run through the confirmed
"Stop…", then Resume on A's run asks for the same confirmation and leaves the run A's:
A keeps Pause and Stop (and they work), B has only "Stop…"."""
from __future__ import annotations

import json
import re
import time

from test_browser import no_exception_shown, screenshot, settle  # noqa: F401
from test_browser import browser, server  # noqa: F401 - fixtures


def _buttons(pg, name):
    return pg.locator("[data-testid=stMain]").get_by_role("button", name=name, exact=True)


def _count_becomes(pg, name, n, timeout=30.0):
    end = time.time() + timeout
    while _buttons(pg, name).count() != n and time.time() < end:
        time.sleep(0.1)
    return _buttons(pg, name).count()


def _confirm(pg, opener, checkbox, button, run, still, shots):
    """Open the popover ``opener``, check that its button does nothing before the checkbox
    (the run still in state ``still``), then confirm."""
    from normshape_app import jobs

    _buttons(pg, opener).click()
    confirm = pg.get_by_role("button", name=button, exact=True)
    confirm.wait_for(timeout=10_000)
    assert confirm.is_disabled()
    screenshot(pg, f"takeover-{opener.rstrip('…').lower()}-confirm", shots, whole=False)
    time.sleep(1.0)
    assert jobs.job_status(run).state in still
    pg.get_by_text(checkbox).click()
    pg.get_by_role("button", name=button, exact=True).click()


def test_resuming_another_sessions_run_needs_confirmation_and_leaves_it_the_owners(
        server, browser, tmp_path):  # noqa: F811
    from normshape_app import jobs

    base, runs = server
    ctx_a = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 1000})
    a, b = ctx_a.new_page(), ctx_b.new_page()
    a.goto(base + "/train?train_dataset=moons&train_epochs_moons=400")
    settle(a, "Start training")
    a.get_by_role("textbox", name="Run name (optional)").fill("taken_from_a")
    a.get_by_role("button", name="Start training").click()
    a.get_by_text(re.compile(r"Started \S+ in its own process")).first.wait_for(timeout=30_000)
    (run,) = [p for p in runs.iterdir() if p.name.startswith("taken_from_a-")]
    owner = json.loads((run / "job.json").read_text())["owner"]
    try:
        b.goto(base + "/train")
        settle(b, "Runs")
        b.get_by_text(re.compile(r"taken_from_a-\S+: .*started by another session")).first \
            .wait_for(timeout=30_000)
        assert _count_becomes(a, "Pause", 1) == 1 and _count_becomes(a, "Stop", 1) == 1
        assert _count_becomes(b, "Stop…", 1) == 1 and _count_becomes(b, "Pause", 0) == 0
        # B stops A's run, through the confirmed control (as designed)
        _confirm(b, "Stop…", "Yes, stop another session's run",
                 "Stop another session's run", run, jobs.ACTIVE_STATES, tmp_path)
        assert jobs.wait_for(run, timeout=90).state == "stopped"
        # B: no plain Resume on A's run, only the separate control
        assert _count_becomes(b, "Resume…", 1) == 1 and _count_becomes(b, "Resume", 0) == 0
        # A, the owner: its own Resume, no confirmation needed
        assert _count_becomes(a, "Resume", 1) == 1 and _count_becomes(a, "Resume…", 0) == 0
        # B's Resume… does nothing before its confirmation, then resumes A's run
        _confirm(b, "Resume…", "Yes, resume another session's run",
                 "Resume another session's run", run, ("stopped",), tmp_path)
        end = time.time() + 60
        while not jobs.job_status(run).active and time.time() < end:
            time.sleep(0.2)
        status = jobs.job_status(run)
        assert status.active and status.owner == owner, status  # still A's run
        # A keeps Pause and Stop (its page shows the resumed run by itself); B has "Stop…"
        assert _count_becomes(a, "Pause", 1) == 1 and _count_becomes(a, "Stop", 1) == 1
        assert _count_becomes(b, "Stop…", 1) == 1
        assert _count_becomes(b, "Pause", 0) == 0 and _count_becomes(b, "Stop", 0) == 0
        screenshot(a, "takeover-owner-keeps-controls", tmp_path, whole=False)
        screenshot(b, "takeover-other-session", tmp_path, whole=False)
        # and A's controls work on it
        _buttons(a, "Pause").click()
        end = time.time() + 90
        while jobs.job_status(run).state != "paused" and time.time() < end:
            time.sleep(0.2)
        assert jobs.job_status(run).state == "paused"
        _buttons(a, "Stop").click()
        assert jobs.wait_for(run, timeout=90).state == "stopped"
        no_exception_shown(a, "/train A")
        no_exception_shown(b, "/train B")
    finally:
        if jobs.job_status(run).active:
            jobs.stop_job(run, force=True)
        ctx_a.close()
        ctx_b.close()
