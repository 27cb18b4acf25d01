"""The app served in a child process on a free local port, and the headless Chromium that
looks at it: one way for the browser tests, the benchmark and the screenshot scripts.

    with serving({"NORMSHAPE_HOME": "/tmp/h"}, log_path="/tmp/streamlit.log") as base:
        ...  # base is "http://127.0.0.1:<port>", the app answers its health check

Chromium is Debian's (``NORMSHAPE_CHROMIUM``, default ``/usr/bin/chromium``), never one a
tool downloads.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional

from normshape_app import APP_PATH

CHROMIUM = os.environ.get("NORMSHAPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(env: Optional[Mapping[str, str]] = None, *, log_path: "str | Path | None" = None,
            timeout: float = 60.0) -> Iterator[str]:
    """``streamlit run app.py`` headless on a free port of 127.0.0.1, with ``env`` added to
    this process's environment; yields the base URL once the app answers its health check
    (an error if it exits or does not answer within ``timeout`` s); stops it afterwards."""
    port = free_port()
    full_env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", **(env or {})}
    log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=APP_PATH.parent, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with status {proc.returncode}")
                if time.monotonic() > end:
                    raise RuntimeError(f"the app did not answer at {base} within {timeout:g} s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not subprocess.DEVNULL:
            log.close()


def launch_chromium(playwright):
    """Headless Debian Chromium through Playwright's sync API."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
