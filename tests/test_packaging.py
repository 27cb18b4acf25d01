"""Packaging as a user meets it: a wheel built from the files git would ship, installed into
a fresh virtualenv (which reuses this environment's dependencies instead of downloading
them), the ``normshape`` command run from another folder; the editable install; the
dependencies of pyproject.toml against the tested pins of requirements.txt; the app's
Streamlit defaults.

The builds run on a copy of the tree (``pip wheel`` and ``pip install`` leave ``build/`` and
``*.egg-info`` beside the sources) with ``--no-build-isolation`` (no download: setuptools
comes from this environment).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dst: Path) -> Path:
    """The files of the working tree that git tracks or would track (nothing ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True).stdout
        files = [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not any(
            part.startswith(".") and part != ".streamlit" or part in ("__pycache__", "runs")
            for part in p.relative_to(ROOT).parts)]
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    return dst


def _fresh_venv(path: Path) -> Path:
    """A new virtualenv whose only extra is a .pth line to this environment's packages."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(path)
    py = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True,
                          text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "normshape-test-deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return py


def _pip(py: Path, *args: str, cwd: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "-q",
                        "--disable-pip-version-check", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def _run(cmd, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _script(py: Path, name: str) -> Path:
    return py.parent / (name + (".exe" if os.name == "nt" else ""))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
              ".", "-w", out], cwd=src)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("normshape-*.whl")
    return whl


def test_the_wheel_holds_the_core_the_app_and_the_shipped_checkpoints(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of both packages, each layer's subpackage included (pyproject's list)
    sources = {p.relative_to(ROOT).as_posix() for pkg in ("normshape_core", "normshape_app")
               for p in (ROOT / pkg).rglob("*.py")}
    missing = sorted(sources - names)
    assert not missing, f"modules the wheel leaves out (pyproject.toml's packages): {missing}"
    assert {"normshape_core/__main__.py", "normshape_core/base/userdata.py",
            "normshape_core/attacks/apgd_t.py", "normshape_app/ui.py", "normshape_app/cli.py",
            "normshape_app/inventory.py",
            "normshape_app/results.py", "normshape_app/style.py", "normshape_app/bundle/app.py",
            "normshape_app/bundle/app_pages/compare.py",
            "normshape_app/bundle/.streamlit/config.toml"} <= names
    shipped = {p.relative_to(ROOT / "checkpoints").as_posix()
               for p in (ROOT / "checkpoints").rglob("*") if p.is_file()}
    assert shipped and {"normshape_app/checkpoints/" + p for p in shipped} <= names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "normshape = normshape_app.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_installs_and_the_command_runs_from_another_folder(wheel, tmp_path):
    py = _fresh_venv(tmp_path / "venv")
    _pip(py, "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    normshape = _script(py, "normshape")

    r = _run([normshape, "--help"], cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "usage: normshape" in r.stdout
    for command in ("train", "evaluate", "grid", "diagnose", "reproduce", "report", "app"):
        assert command in r.stdout
    r = _run([normshape, "app", "--help"], cwd=elsewhere)
    assert r.returncode == 0 and "--server.address 0.0.0.0" in r.stdout

    r = _run([normshape, "train", "--dataset", "moons", "--epochs", "1", "--quiet"],
             cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    (meta,) = (elsewhere / "runs").glob("*/model.json")
    assert json.loads(meta.read_text())["config"]["epochs"] == 1
    assert "checkpoint:" in r.stdout

    # the installed app: Home renders on the checkpoints shipped inside the package
    probe = (
        "import json, normshape_core, normshape_app\n"
        "from streamlit.testing.v1 import AppTest\n"
        "at = AppTest.from_file(str(normshape_app.APP_PATH), default_timeout=120)\n"
        "at.run()\n"
        "from normshape_app import ui\n"
        "print(json.dumps({'core': normshape_core.__file__, 'app': str(normshape_app.APP_PATH),"
        " 'shipped': str(ui.shipped_checkpoints_dir()),"
        " 'errors': [str(e.value) for e in at.exception] + [e.value for e in at.error],"
        " 'rows': sum(len(t.value) for t in list(at.table) + list(at.dataframe))}))\n")
    r = _run([py, "-c", probe], cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    inside = str(tmp_path / "venv")
    assert info["core"].startswith(inside) and info["app"].startswith(inside)
    assert info["shipped"].startswith(inside) and not info["errors"], info
    assert info["rows"] == len(list((ROOT / "checkpoints").rglob("model.json")))


def _outward_address():
    """This machine's address on its network (no packet is sent), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_normshape_app_serves_the_installed_app_on_localhost_only(wheel, tmp_path):
    """``normshape app`` from another folder: Streamlit reads the packaged config.toml, so the
    server answers on the loopback address and not on the machine's network address."""
    import socket
    import time
    import urllib.request

    py = _fresh_venv(tmp_path / "venv")
    _pip(py, "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([str(_script(py, "normshape")), "app", "--server.port", str(port),
                             "--server.headless", "true", "--server.fileWatcherType", "none"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("normshape app did not answer on 127.0.0.1")
        outward = _outward_address()
        if outward:
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{outward}:{port}/_stcore/health", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_editable_install_runs_the_sources(tmp_path):
    src = _source_copy(tmp_path / "src")
    py = _fresh_venv(tmp_path / "venv")
    _pip(py, "install", "--no-deps", "--no-build-isolation", "-e", str(src), cwd=tmp_path)
    r = _run([_script(py, "normshape"), "--help"], cwd=tmp_path)
    assert r.returncode == 0 and "usage: normshape" in r.stdout, r.stderr
    r = _run([py, "-c", "import normshape_core, normshape_app.ui as ui; "
                        "print(normshape_core.__file__); print(ui.shipped_checkpoints_dir())"],
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    core, shipped = r.stdout.strip().splitlines()[-2:]
    assert Path(core).resolve() == (src / "normshape_core" / "__init__.py").resolve()
    assert Path(shipped).resolve() == (src / "checkpoints").resolve()


def _requirement(line: str):
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", line)
    return m.group(1).lower().replace("_", "-"), m.group(2).strip()


def test_pyproject_dependencies_match_the_tested_pins():
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "normshape" and project["requires-python"] == ">=3.11"
    assert project["scripts"]["normshape"] == "normshape_app.cli:main"
    pins = dict(_requirement(line) for line in (ROOT / "requirements.txt").read_text()
                .splitlines() if line.strip() and not line.lstrip().startswith("#"))
    declared = dict(_requirement(d) for d in project["dependencies"])
    extras = project["optional-dependencies"]
    for extra in ("test", "bench"):
        for d in extras[extra]:
            name, spec = _requirement(d)
            declared.setdefault(name, spec)
    assert set(declared) == set(pins), "pyproject.toml and requirements.txt name other packages"
    for name, pin in pins.items():
        version = pin.removeprefix("==")
        assert pin.startswith("==") and version in SpecifierSet(declared[name]), (name, pin)
    runtime = {_requirement(d)[0] for d in project["dependencies"]}
    assert not runtime & {"pytest", "playwright"}, "test tools are not runtime dependencies"


def test_streamlit_defaults_are_safe_and_the_upload_limits_agree():
    """localhost only, no usage statistics, and the upload limit of the widget (which reads
    Streamlit's option: the browser test sees "256MB" on the served page)."""
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] in ("localhost", "127.0.0.1")
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["maxUploadSize"] == 256
