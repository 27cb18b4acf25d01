"""The ``normshape`` command: the subcommands of ``python -m normshape_core`` (train, evaluate,
grid, diagnose, reproduce, report), plus ``normshape app``, which starts the Streamlit app
with Streamlit's own flags passed through (``normshape app --server.port 8502``).

The app's defaults (localhost only, no usage statistics, the upload limit) live in
``.streamlit/config.toml`` beside ``app.py``, which Streamlit reads as the main script's own
configuration whatever the working folder; flags given here override them.
"""
from __future__ import annotations

import sys
from typing import List, Optional

APP_HELP = """usage: normshape app [STREAMLIT FLAGS ...]

Start the normshape lab in Streamlit (by default at http://localhost:8501, reachable from
this machine only). Every flag is passed to `streamlit run`, for example:
  --server.port 8502           another port
  --server.address 0.0.0.0     serve a class on the local network (see the README)
  --server.headless true       do not open a browser
Defaults: .streamlit/config.toml beside app.py; `streamlit run --help` lists every flag.
"""


def build_parser():
    from normshape_core.__main__ import build_parser as core_parser

    parser = core_parser(prog="normshape")
    parser.subcommands.add_parser(
        "app", add_help=False,
        help="start the Streamlit app (Streamlit's flags pass through: normshape app --help)")
    return parser


def run_app(flags: List[str]) -> int:
    """``streamlit run <the app> FLAGS...`` in this process."""
    if any(f in ("-h", "--help") for f in flags):
        print(APP_HELP, end="")
        return 0
    from streamlit.web import cli as streamlit_cli

    from normshape_app import APP_PATH

    try:
        streamlit_cli.main(args=["run", str(APP_PATH), *flags], prog_name="normshape app")
    except SystemExit as e:  # click ends with SystemExit, also on success
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:
        return run_app(argv[1:])
    from normshape_core.__main__ import leave_if_torchrun_worker
    from normshape_core.__main__ import main as core_main

    rc = core_main(argv, parser=build_parser())
    leave_if_torchrun_worker(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
