"""One owner per run folder: an exclusive ``fcntl.flock`` on ``run.lock`` inside it.

The lock is held by the open file, so the operating system releases it when the process
ends in any way (SIGKILL included): a killed run never leaves a folder locked. The file
keeps the holder's process id, host, start time and command, for the refusal message.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ..settings.config import ConfigError

LOCK_NAME = "run.lock"


class RunFolderBusy(ConfigError):
    """Another process holds the run folder."""


def _holder_text(raw: str) -> str:
    try:
        info = json.loads(raw)
        return (f"process {int(info['pid'])} on {info.get('host', '?')}, started "
                f"{info.get('started', '?')}")
    except (ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """``with RunLock(run_dir): ...``; raises ``RunFolderBusy`` (one line) if held."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self, announce: bool = True) -> "RunLock":
        """Take the lock. ``announce``: also write this process as the holder at once;
        otherwise the holder text stays as it was until :meth:`announce` (a run refused
        after taking the lock, e.g. on a finished run folder, leaves it unchanged)."""
        import fcntl
        import stat

        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:  # never through a symlink, never blocking on a FIFO
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
                         getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            what = ("a folder" if os.path.isdir(self.path) and not os.path.islink(self.path)
                    else "a symbolic link" if os.path.islink(self.path)
                    else f"not usable ({e.strerror or type(e).__name__})")
            raise ConfigError(f"run folder {self.run_dir}: its {LOCK_NAME} is {what}, not the "
                              f"run's lock file; remove it or choose another --name or --out"
                              ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"run folder {self.run_dir}: its {LOCK_NAME} is not a regular "
                              f"file; remove it or choose another --name or --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            finally:
                os.close(fd)
            raise RunFolderBusy(f"run folder {self.run_dir} is in use by {_holder_text(raw)}; "
                                f"wait for that run to end or choose another --name or --out"
                                ) from None
        self._fd = fd
        if announce:
            self.announce()
        return self

    def announce(self) -> None:
        """Write this process (id, host, start time, command) as the lock's holder."""
        if self._fd is None:
            raise RuntimeError("announce() needs the lock held")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)[:500]}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
