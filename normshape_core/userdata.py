"""Where a user's own data lives: evaluation caches, uploaded checkpoints and the app's runs.

One per-user folder, outside the source tree and the installed package, so that using the
lab never rewrites a shipped file (the shipped ``checkpoints/`` and their ``*.eval.json``
results are read-only inputs):

- ``NORMSHAPE_HOME=DIR``: everything goes to DIR (tests point it at a temporary folder);
- otherwise the platform's per-user data folder, as ``platformdirs.user_data_dir`` has it:
  ``$XDG_DATA_HOME/normshape`` (default ``~/.local/share/normshape``) on Linux and BSD,
  ``~/Library/Application Support/normshape`` on macOS, ``%LOCALAPPDATA%\\normshape`` on
  Windows. Written out here: three rules do not justify a dependency.

Nothing is created until something is written. No Streamlit, no torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HOME_ENV = "NORMSHAPE_HOME"
APP_NAME = "normshape"


def data_home() -> Path:
    """The user's normshape folder (``NORMSHAPE_HOME`` or the platform's data folder)."""
    override = os.environ.get(HOME_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    if sys.platform == "win32":  # pragma: no cover - not on the build machines
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_NAME
    if sys.platform == "darwin":  # pragma: no cover
        return Path.home() / "Library" / "Application Support" / APP_NAME
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    # The XDG spec: a relative XDG_DATA_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / APP_NAME


def eval_cache_dir() -> Path:
    """Evaluation results, one ``<weights SHA-256>.eval.json`` per model (the same weights
    share one file wherever they are stored)."""
    return data_home() / "evaluations"


def runs_dir() -> Path:
    """Training runs started from the app."""
    return data_home() / "runs"


def uploads_dir() -> Path:
    """Checkpoints uploaded in the app (validated, one folder per distinct weights)."""
    return data_home() / "uploads"


def logs_dir() -> Path:
    """Error reports: the traceback of an unexpected CLI failure, one file per failure."""
    return data_home() / "logs"


def write_error_log(text: str) -> Path:
    """Write ``text`` to a new file in ``logs_dir()`` (or, when that folder cannot be
    written, in the system's temporary folder); returns its path."""
    import tempfile
    import time

    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (logs_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    raise OSError("no folder to write the error log to")
