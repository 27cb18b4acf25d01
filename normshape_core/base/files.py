"""Reading a file safely: every file normshape reads goes through here.

A path given on the command line, found in a run folder or a checkpoint folder may be
anything: a folder, a FIFO (opening it for reading would wait for a writer forever), a
character device (``/dev/zero`` reads forever), a socket, or a regular file far larger than
what it claims to be. Each function here opens the path without blocking
(``O_NONBLOCK``), checks on the open file that it is a regular file and that its size is
within the bound the caller gives, and only then reads it; a file that grows past the
bound while being read is refused too. Any problem raises ``UnreadableFile`` (a
``ValueError``), whose one-line message names the file and the problem; callers turn it
into their own error type (``CheckpointError``, ``ConfigError``, ``DatasetUnavailable``) or
treat the file as absent.

No torch, no Streamlit; nothing of the package is imported (layer 0).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

MB = 1 << 20
#: the largest log read whole (a run's metrics.jsonl: tens of MB for 80,000 steps)
MAX_LOG_BYTES = 1 << 30
#: the largest JSON metadata read: a checkpoint's model.json, a resume state's state.json
MAX_META_BYTES = 16 << 20
_CHUNK = 1 << 20


class UnreadableFile(ValueError):
    """A file that is not read: missing, not a regular file, too large, unreadable or (for
    ``read_text`` / ``read_json``) not text / JSON. ``missing`` is True when it does not
    exist."""

    def __init__(self, path, problem: str, missing: bool = False):
        self.path, self.problem, self.missing = str(path), problem, missing
        super().__init__(f"{path}: {problem}")


def _size_text(n: int) -> str:
    return f"{n / MB:.0f} MB" if n >= MB else f"{n:,} bytes"


def _kind(mode: int) -> str:
    """What a non-regular file is, for a message."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device (like /dev/zero)"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _open(path: Path, max_bytes: int, what: str) -> "tuple[int, int]":
    """An open descriptor on ``path`` (a regular file of at most ``max_bytes``) and its size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) |
                     getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnreadableFile(path, f"{what} not found", missing=True) from None
    except IsADirectoryError:
        raise UnreadableFile(path, f"{what} is a folder, not a file") from None
    except OSError as e:
        raise UnreadableFile(path, f"{what} cannot be opened "
                                   f"({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            raise UnreadableFile(path, f"{what} is {kind}" +
                                 (", not a file" if kind == "a folder" else
                                  ("" if kind == "not a regular file"
                                   else ", not a regular file")))
        if st.st_size > max_bytes:
            raise UnreadableFile(path, f"{what} is {_size_text(st.st_size)}, more than the "
                                       f"{_size_text(max_bytes)} it may have")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def check_file(path: str | Path, max_bytes: int, what: str = "file") -> int:
    """Check, without reading it, that ``path`` is a regular file of at most ``max_bytes``;
    returns its size (``UnreadableFile`` otherwise)."""
    fd, size = _open(Path(path), max_bytes, what)
    os.close(fd)
    return size


def read_bytes(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` (checked before reading,
    and again while reading: a file growing past the bound is refused)."""
    path = Path(path)
    fd, size = _open(path, max_bytes, what)
    parts = []
    got = 0
    try:
        while True:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            if got > max_bytes:
                raise UnreadableFile(path, f"{what} grew past the {_size_text(max_bytes)} it "
                                           f"may have while being read")
    except OSError as e:
        raise UnreadableFile(path, f"{what} cannot be read "
                                   f"({e.strerror or type(e).__name__})") from None
    finally:
        os.close(fd)
    return b"".join(parts)


def read_head(path: str | Path, n: int, what: str = "file") -> bytes:
    """The first ``n`` bytes of a regular file (of any size)."""
    fd, _ = _open(Path(path), 1 << 62, what)
    try:
        return os.read(fd, n)
    except OSError as e:
        raise UnreadableFile(path, f"{what} cannot be read "
                                   f"({e.strerror or type(e).__name__})") from None
    finally:
        os.close(fd)


def read_tail(path: str | Path, n: int, what: str = "file") -> bytes:
    """The last ``n`` bytes (at most) of a regular file of any size."""
    fd, size = _open(Path(path), 1 << 62, what)
    try:
        os.lseek(fd, max(0, size - n), os.SEEK_SET)
        parts, got = [], 0
        while got < n:
            chunk = os.read(fd, min(_CHUNK, n - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    except OSError as e:
        raise UnreadableFile(path, f"{what} cannot be read "
                                   f"({e.strerror or type(e).__name__})") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, max_bytes: int, what: str = "file",
              errors: str = "strict") -> str:
    """``read_bytes`` decoded as UTF-8 (a decoding error is ``UnreadableFile``)."""
    data = read_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise UnreadableFile(path, f"{what} is not UTF-8 text (byte {e.start})") from None


def read_json(path: str | Path, max_bytes: int, what: str = "file") -> Any:
    """The JSON value in ``path`` (``UnreadableFile`` for anything that is not one)."""
    text = read_text(path, max_bytes, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UnreadableFile(path, f"{what} is not valid JSON "
                                   f"({str(e).splitlines()[0][:120] if str(e) else 'too deep'})"
                             ) from None


def read_json_or_none(path: str | Path, max_bytes: int) -> Optional[Any]:
    """``read_json``, or None for a file that is missing or cannot be used (for files a
    process writes for itself, where a bad one means: nothing there)."""
    try:
        return read_json(path, max_bytes)
    except UnreadableFile:
        return None


__all__ = ["MAX_LOG_BYTES", "MB", "UnreadableFile", "check_file", "read_bytes", "read_head",
           "read_json", "read_json_or_none", "read_tail", "read_text"]
