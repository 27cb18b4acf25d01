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
    """Error reports: the traceback of an unexpected CLI failure, one file per failure, the
    newest ``MAX_ERROR_LOGS`` kept."""
    return data_home() / "logs"


#: error logs kept in the logs folder (older ones are removed when a new one is written)
MAX_ERROR_LOGS = 50
ERROR_LOG_PREFIX = "error-"
#: the prefix in the system's temporary folder (shared: only normshape's own are rotated)
TMP_ERROR_LOG_PREFIX = "normshape-error-"


def rotate_error_logs(folder: Path, prefix: str = ERROR_LOG_PREFIX,
                      keep: int = MAX_ERROR_LOGS) -> None:
    """Remove all but the newest ``keep`` ``<prefix>*.log`` files of ``folder``."""
    try:
        logs = [p for p in folder.glob(f"{prefix}*.log") if p.is_file() and not p.is_symlink()]
        logs.sort(key=lambda p: (p.stat().st_mtime, p.name))
    except OSError:
        return
    for old in logs[:max(0, len(logs) - keep)]:
        try:
            old.unlink()
        except OSError:
            pass


def write_error_log(text: str) -> Path:
    """Write ``text`` to a new file in ``logs_dir()`` (or, when that folder cannot be
    written, in the system's temporary folder, as ``normshape-error-...``); the newest
    ``MAX_ERROR_LOGS`` of either folder are kept. Returns its path."""
    import tempfile
    import time

    now = time.time()
    stamp = (f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}."
             f"{int(now * 1e6) % 1000000:06d}-{os.getpid()}")
    for folder, prefix in ((logs_dir(), ERROR_LOG_PREFIX),
                           (Path(tempfile.gettempdir()), TMP_ERROR_LOG_PREFIX)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        for n in range(100):  # a second failure in the same second gets its own file
            path = folder / f"{prefix}{stamp}{f'-{n}' if n else ''}.log"
            try:
                with open(path, "x") as f:  # never through a file or link already there
                    f.write(text)
            except FileExistsError:
                continue
            except OSError:
                break
            rotate_error_logs(folder, prefix)
            return path
    raise OSError("no folder to write the error log to")
