"""The app under Streamlit's AppTest, opened as a browser would: ``app.py`` with the URL's
query parameters, then (optionally) one page of it. A plain module shared by the tests that
drive pages without a browser."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_app(page: Optional[str] = None, query: Optional[Mapping[str, str]] = None,
             timeout: float = 120) -> AppTest:
    """Run ``app.py`` with ``query`` in the URL, then switch to ``page`` (e.g.
    ``"app_pages/playground.py"``) and run again."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return at
