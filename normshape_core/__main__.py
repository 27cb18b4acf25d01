"""Command line: ``python -m normshape_core train | evaluate | grid | diagnose | reproduce |
report`` (the installed ``normshape`` command has the same subcommands, plus ``normshape
app``). The parsers live in ``normshape_core/cli/``; this module is the entry point."""
from __future__ import annotations

import sys

from .cli import build_parser, main  # noqa: F401 - the entry points, imported from here too

if __name__ == "__main__":
    sys.exit(main())
