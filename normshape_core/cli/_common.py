"""What every subcommand shares: the one-line parser, the "(default: ...)" help, the one-line
error and the thread setting."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..settings.config import MAX_THREADS, ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 2."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def document_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append "(default: ...)" to every optional flag's help that does not state it."""
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue
        text = action.help or ""
        if "default" not in text:
            action.help = (text + " " if text else "") + "(default: %(default)s)"
    return parser


def set_threads(threads: Optional[int]) -> None:
    import os

    import torch

    if threads is None and (os.cpu_count() or 1) <= 4:
        threads = 1
    if threads is not None:
        if not 1 <= threads <= MAX_THREADS:
            raise ConfigError(f"threads must be in [1, {MAX_THREADS}], got {threads}")
        torch.set_num_threads(threads)


def one_line(text: str, limit: int = 4000) -> str:
    """A message as one line (an error is one line on stderr, whatever it quotes)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def report_unexpected(exc: BaseException, argv) -> str:
    """The one line for an unexpected failure; the traceback goes to a log file."""
    import platform
    import traceback

    from .._version import __version__
    from ..base.userdata import write_error_log

    text = (f"normshape {__version__}, Python {platform.python_version()}\n"
            f"command: {' '.join(map(str, sys.argv[:1] + list(argv or sys.argv[1:])))}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    try:
        where = f"details in {write_error_log(text)}"
    except OSError:
        where = "no log file could be written"
    return one_line(f"error: unexpected {type(exc).__name__}: {exc}", 240) + \
        f" -- this is a bug, please report it ({where})"
