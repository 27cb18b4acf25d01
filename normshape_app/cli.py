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
  --server.address 0.0.0.0     serve a class on the local network (docs/teaching.md)
  --server.headless true       do not open a browser
Defaults: .streamlit/config.toml beside app.py; `streamlit run --help` lists every flag.
Each flag is checked before the server starts (a known flag with a value of its type, a
port in 1-65535, an upload size in 1-100,000 MB, an address that is an IP address or a
known host name): a bad one is one line and exit status 2.
"""


def build_parser():
    from normshape_core.__main__ import build_parser as core_parser

    parser = core_parser(prog="normshape")
    parser.subcommands.add_parser(
        "app", add_help=False,
        help="start the Streamlit app (Streamlit's flags pass through: normshape app --help)")
    return parser


#: bounds of Streamlit's numeric flags beyond "a whole number >= 0" (MB for the sizes)
FLAG_BOUNDS = {"server.port": (1, 65535), "browser.serverPort": (1, 65535),
               "server.maxUploadSize": (1, 100_000), "server.maxMessageSize": (1, 100_000)}
MAX_FLAG_INT = 2 ** 31 - 1
#: text flags with a fixed set of values (Streamlit would ignore a wrong one or fail late)
FLAG_CHOICES = {"logger.level": ("error", "warning", "info", "debug"),
                "server.fileWatcherType": ("auto", "watchdog", "poll", "none"),
                "client.toolbarMode": ("auto", "developer", "viewer", "minimal"),
                "client.showErrorDetails": ("full", "stacktrace", "type", "none", "true",
                                            "false")}
#: text flags that name a file this machine must have (theme.base: or light / dark / a URL)
FLAG_FILES = ("server.sslCertFile", "server.sslKeyFile", "theme.base")


class FlagError(ValueError):
    """A flag of ``normshape app`` that Streamlit would refuse late (a traceback) or take."""


def _check_address(value: str) -> None:
    import ipaddress
    import re
    import socket

    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or not re.fullmatch(
            r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
            r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", value):
        raise FlagError(f"--server.address {value!r} is not an IP address or a host name "
                        f"(e.g. localhost, 127.0.0.1, 0.0.0.0)")
    try:
        socket.getaddrinfo(value, None)
    except OSError:
        raise FlagError(f"--server.address {value!r}: no such host on this machine's network "
                        f"(e.g. localhost, 127.0.0.1, 0.0.0.0)") from None


def check_flags(flags: List[str]) -> None:
    """Streamlit's flags checked before the server starts, each problem one ``FlagError``
    line: a known option (``streamlit run --help``), given a value (``--name VALUE`` or
    ``--name=VALUE``) of its type, numbers bounded (ports 1-65535, sizes 1-100,000 MB,
    others 0 to 2**31 - 1, finite), an address that is an IP address or a known host; no
    other argument (the lab takes none)."""
    import math

    import click
    from streamlit.web import cli as streamlit_cli

    params = {o: p for p in streamlit_cli.main.commands["run"].params for o in p.opts
              if o.startswith("--")}
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--") or flag == "--":
            raise FlagError(f"unexpected argument {flag[:80]!r}: give Streamlit's flags as "
                            f"--section.name VALUE (normshape app --help)")
        name, eq, value = flag.partition("=")
        param = params.get(name)
        if param is None:
            raise FlagError(f"unknown flag {name[:80]}: `streamlit run --help` lists "
                            f"Streamlit's flags")
        if not eq:
            if i + 1 >= len(flags):
                raise FlagError(f"{name} needs a value")
            i += 1
            value = flags[i]
        try:
            converted = param.type.convert(value, param, None)
        except click.BadParameter as e:
            raise FlagError(f"{name} {value[:80]!r}: {e.message}") from None
        key = name[2:]
        if isinstance(converted, bool):
            pass
        elif isinstance(converted, int):
            lo, hi = FLAG_BOUNDS.get(key, (0, MAX_FLAG_INT))
            if not lo <= converted <= hi:
                raise FlagError(f"{name} {converted} is outside [{lo}, {hi:,}]")
        elif isinstance(converted, float) and not math.isfinite(converted):
            raise FlagError(f"{name} {value[:80]!r} is not a finite number")
        text = str(converted).strip()
        if key == "server.address" and text:
            _check_address(text)
        if key in FLAG_CHOICES and text.lower() not in FLAG_CHOICES[key]:
            raise FlagError(f"{name} {value[:80]!r} is not one of "
                            f"{', '.join(FLAG_CHOICES[key])}")
        if key in FLAG_FILES and not (key == "theme.base" and (
                text in ("light", "dark") or text.startswith(("http://", "https://")))):
            from pathlib import Path

            if not Path(text).expanduser().is_file():
                raise FlagError(f"{name} {value[:80]!r} is not an existing file"
                                + (" (nor light or dark)" if key == "theme.base" else ""))
        i += 1


def run_app(flags: List[str]) -> int:
    """``streamlit run <the app> FLAGS...`` in this process, after ``check_flags``."""
    if any(f in ("-h", "--help") for f in flags):
        print(APP_HELP, end="")
        return 0
    try:
        check_flags(flags)
    except FlagError as e:
        from normshape_core.cli import one_line

        print(one_line(f"normshape app: error: {e}"), file=sys.stderr)
        return 2
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
