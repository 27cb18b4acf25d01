"""Command line: ``python -m normshape_core train | evaluate | grid | diagnose | reproduce |
report`` (the installed ``normshape`` command has the same subcommands, plus ``normshape
app``). The parsers live in ``normshape_core/cli/``; this module is the entry point."""
from __future__ import annotations

import logging
import os
import sys

from .cli import build_parser, main  # noqa: F401 - the entry points, imported from here too


def leave_if_torchrun_worker(rc: int) -> None:
    """End a torchrun worker (``WORLD_SIZE`` > 1) now with status ``rc``, skipping the
    interpreter's teardown: with torch 2.15 and gloo, the process group's threads
    (``pt_gloo_runloop``, ``gloo_tcp_loop``) outlive ``destroy_process_group``, and destroying
    them during teardown sometimes aborted a rank after a complete run ("terminate called
    without an active exception", exit -6: 6 of 25 two-rank runs on two loaded cores). By
    then every file is written and closed (atomic writes, ``with`` blocks); only the standard
    streams and logging need flushing. Anywhere else it returns."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def exit_process(rc: int) -> None:
    """Leave with status ``rc`` (a torchrun worker without the interpreter's teardown)."""
    leave_if_torchrun_worker(rc)
    sys.exit(rc)


if __name__ == "__main__":
    exit_process(main())
