"""Bad input on every subcommand: each case exits 2 with exactly one line on stderr and no
traceback, or is accepted and does what it says; none leaves a partial file. Table-driven,
in-process (``main(argv)``), on a tiny moons checkpoint and its malformed copies.

Malformed checkpoint metadata only asserts "exit 2, one line, no traceback": the reader
that refuses them (``checkpoints.read_meta`` and the schema check) may word it its own way.
"""
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from normshape_core.__main__ import main

TINY = ["--dataset", "moons", "--epochs", "1", "--n-train", "128", "--eval-samples", "20",
        "--steps", "1", "--quiet"]
TRAIN = ["train", *TINY, "--out", "{out}"]
EVAL = ["evaluate", "{ck}", "--attacks", "pgd", "--classify", "pn", "--n-test", "20",
        "--steps", "2", "--no-cache"]
GRID = ["grid", "{ck}", "--inference-ratios", "1:0,1:3", "--n-test", "20", "--steps", "2",
        "--no-cache"]
DIAG = ["diagnose", "{ck}", "--n", "16", "--steps", "2", "--worst-case", "none"]
REPRO = ["reproduce", "--dataset", "moons", "--out", "{out}", "--skip-eval"]
REPORT = ["report", "--checkpoints", "{results}", "--out", "{out}/R.md"]
BIG = "1180591620717411303424"  # 2**70
MALFORMED = ["config-list", "eps-string", "header-list", "int-offsets", "sha-path",
             "not-json", "no-format", "sha-mismatch", "truncated", "shape-strings",
             "classes-string", "header-huge", "pickle"]
NOT_A_MODEL = ["zero-weights", "fifo-weights", "fifo-meta", "nan-weights", "inf-weights",
               "int-weights", "fifo-cache"]
ROOT = Path(__file__).resolve().parents[1]
#: the shipped files the sweep must never change unless asked (--ship)
SHIPPED = [ROOT / "checkpoints" / "sweep" / "confoundings.json", ROOT / "CONFOUNDINGS.md",
           *sorted((ROOT / "checkpoints" / "lessons").rglob("*.*"))]

E, OK = "error", "ok"
CASES = []


def add(expect, base, *extra, check=None):
    CASES.append((expect, [*base, *extra], check))


# ------------------------------------------------------------------ train
for flags in (["--lr", "inf"], ["--lr", "nan"], ["--lr", "-1"], ["--lr", "0"],
              ["--lr=-inf"], ["--weight-decay", "inf"], ["--weight-decay", "-1"],
              ["--weight-decay", "nan"], ["--momentum", "nan"], ["--momentum", "1.5"],
              ["--momentum", "1"], ["--momentum", "-0.1"],
              ["--method", "trades", "--trades-beta", "nan"],
              ["--method", "trades", "--trades-beta", "inf"],
              ["--method", "trades", "--trades-beta", "-1"],
              ["--eps", "inf"], ["--eps", "nan"], ["--eps", "2"], ["--eps", "-0.1"],
              ["--eps", "0"], ["--eps", "1e-400"], ["--step-size", "nan"],
              ["--step-size", "5"], ["--step-size", "0"], ["--step-size", "inf"],
              ["--steps", "0"], ["--steps", "-5"], ["--steps", "abc"], ["--steps", "1e9"],
              ["--batch-size", "1"], ["--batch-size", "0"], ["--batch-size", "-3"],
              ["--method", "natural", "--batch-size", "1"],
              ["--batch-size", "129"], ["--epochs", "0"], ["--epochs", "-1"],
              ["--epochs", "1e3"], ["--max-steps", "0"], ["--max-steps", "-1"],
              ["--n-train", "0"], ["--n-train", "1"], ["--n-train", "100000"],
              ["--eval-samples", "-1"], ["--seed", "-1"], ["--seed", BIG],
              ["--seed", "2147483647"], ["--seed", "1.5"], ["--model-width", "1000000"],
              ["--model-width", "1e6"], ["--model-width", "0"], ["--model-depth", "100000"],
              ["--model-depth", "0"], ["--model-width", "4096", "--model-depth", "1000"],
              ["--model", "small_cnn"], ["--model", "wide_resnet"],
              ["--model", "preact_resnet18"], ["--model", "nope"],
              ["--dataset", "digits", "--model", "small_cnn", "--model-depth", "5"],
              ["--dataset", "digits", "--model", "wide_resnet", "--model-depth", "11"],
              ["--dataset", "imagenet"], ["--method", "fgsm"], ["--shaping", "sideways"],
              ["--method", "natural", "--shaping", "train"],
              ["--shaping", "attack+train", "--ratio", "1:x"],
              ["--shaping", "attack+train", "--ratio", "0:3"],
              ["--shaping", "attack+train", "--ratio", "3:1:2"],
              ["--shaping", "attack+train", "--ratio", "1:0"],
              ["--shaping", "attack+train", "--ratio", "1:2000"],
              ["--shaping", "attack+train", "--batch-size", "6"],
              ["--shaping", "attack+train", "--batch-size", "2"],
              ["--optimizer", "rmsprop"], ["--lr-schedule", "nope"], ["--device", "tpu"],
              ["--device", "mps"], ["--dist-backend", "mpi"], ["--data-root", "{missing}"],
              ["--data-root", "{file}"], ["--preset", "nope"], ["--threads", "0"],
              ["--threads", "-2"], ["--name", "../escape"], ["--name", ".hidden"],
              ["--name", "a/b"], ["--unknown-flag"], ["--lr", "1e30", "--epochs", "3"]):
    add(E, TRAIN, *flags)
for out in ("{file}", "{ro}", "{file}/sub", ""):
    add(E, ["train", *TINY, "--out", out])


def _checkpoint_written(out: Path, argv):
    name = argv[argv.index("--name") + 1] if "--name" in argv else None
    found = list(out.rglob("model.safetensors"))
    assert len(found) == 1 and (found[0].parent / "model.json").exists(), found
    if name:
        assert found[0].parent.name == name


for flags in ([], ["--method", "natural"], ["--method", "trades", "--shaping", "attack+train"],
              ["--method", "natural", "--batch-size", "2"], ["--seed", "2147483645"],
              ["--data-root", "{emptydir}"], ["--name", "ok-name_1.2"],
              ["--shaping", "train", "--ratio", "1:1", "--batch-size", "64"]):
    add(OK, TRAIN, *flags, check=_checkpoint_written)

# ------------------------------------------------------------------ evaluate
for flags in (["--steps", "0"], ["--steps", "-5"], ["--steps", "10000000"], ["--restarts", "0"],
              ["--fgsm-eps", "-1"], ["--fgsm-eps", "nan"], ["--fgsm-eps", "inf"],
              ["--cw-steps", "0"], ["--eot-draws", "0"], ["--apgd-steps", "0"],
              ["--square-queries", "0"], ["--target-classes", "0"], ["--eps", "-1"],
              ["--eps", "nan"], ["--eps", "inf"], ["--eps", "0"], ["--eps", "2"],
              ["--n-test", "0"], ["--n-test", "-1"], ["--n-test", "100000"],
              ["--batch-size", "1"], ["--batch-size", "0"], ["--group-size", "0"],
              ["--reference-pool", "0"], ["--seed", "-1"], ["--seed", BIG],
              ["--attacks", "nope"], ["--attacks", ""], ["--attacks", "pgd+nope"],
              ["--classify", "nope"], ["--classify", "shaped:0:1"], ["--classify", "shaped:1:x"],
              ["--craft", "xx"], ["--device", "tpu"], ["--dataset", "imagenet"],
              ["--dataset", "digits"], ["--json", "{ro}"], ["--json", "{emptydir}"],
              ["--json", "{missing}/x.json"], ["--gap-threshold", "nan"],
              ["--gap-threshold", "-1"], ["--attacks", "adaptive_eot"]):
    add(E, EVAL, *flags)
for ck in ["{missing}", "{file}", *[f"{{bad:{m}}}" for m in MALFORMED]]:
    add(E, ["evaluate", ck, "--attacks", "pgd", "--classify", "pn", "--n-test", "20",
            "--steps", "2", "--no-cache"])


def _json_rows(out: Path, argv):
    rows = json.loads(Path(argv[argv.index("--json") + 1]).read_text())
    assert rows and all(r["n"] == 20 for r in rows)


add(OK, EVAL)
add(OK, EVAL, "--json", "{out}/rows.json", check=_json_rows)
add(OK, EVAL, "--craft", "pn,bn", "--classify", "pn,bn")

# ------------------------------------------------------------------ grid
for flags in (["--inference-ratios", ""], ["--inference-ratios", "0:1"],
              ["--inference-ratios", "1:x"], ["--attack", "nope"], ["--attack", "pgd,fgsm"],
              ["--attack", "adaptive_exact"], ["--steps", "0"], ["--eps", "nan"],
              ["--json", "{ro}"], ["--n-test", "0"], ["--batch-size", "1"], ["--device", "tpu"],
              ["--restarts", "-1"], ["--seed", BIG]):
    add(E, GRID, *flags)
for ck in ("{missing}", "{bad:config-list}", "{bad:header-list}"):
    add(E, ["grid", ck, "--n-test", "20", "--steps", "2", "--no-cache"])
add(OK, GRID)

# ------------------------------------------------------------------ diagnose
for flags in (["--eps", "-1"], ["--eps", "nan"], ["--eps", "inf"], ["--eps", "0"],
              ["--eps", "2"], ["--step-size", "nan"], ["--step-size", "-1"], ["--steps", "0"],
              ["--steps", "-3"], ["--n", "3"], ["--n", "0"], ["--n", "100000"],
              ["--seed", "-1"], ["--seed", BIG], ["--ratios", ""], ["--ratios", "1:x"],
              ["--ratios", "0:1"], ["--worst-case", "nope"], ["--json", "{ro}"],
              ["--json", "{emptydir}"], ["--device", "tpu"], ["--dataset", "imagenet"],
              ["--dataset", "digits"]):
    add(E, DIAG, *flags)
for ck in ["{missing}", *[f"{{bad:{m}}}" for m in
                          ("config-list", "eps-string", "header-list", "int-offsets")]]:
    add(E, ["diagnose", ck, "--n", "16", "--steps", "2", "--worst-case", "none"])
add(OK, DIAG, "--json", "{out}/d.json",
    check=lambda out, argv: json.loads((out / "d.json").read_text())["moving_target"])

# ------------------------------------------------------------------ reproduce, report, top
for flags in (["--dataset", "imagenet"], ["--epochs", "0"], ["--epochs", "-1"],
              ["--seed", "-1"], ["--seed", BIG], ["--n-test", "0"], ["--only", "nope"],
              ["--only", ","], ["--threads", "0"], ["--device", "tpu"],
              ["--worst-n-test", "0"], ["--worst-n-test-others", "0"],
              ["--table-iv-worst-n-test", "-1"]):
    add(E, REPRO, *flags)
for out in ("{file}", "{ro}"):
    add(E, ["reproduce", "--dataset", "moons", "--out", out])
add(E, ["reproduce"])
for flags in (["--checkpoints", "{missing}"], ["--checkpoints", "{file}"],
              ["--checkpoints", "{emptydir}"], ["--out", "{ro}"], ["--out", "{emptydir}"],
              ["--checkpoints", "{badresults:notjson}"], ["--checkpoints", "{badresults:list}"],
              ["--checkpoints", "{badresults:nodataset}"], ["--checkpoints", "{badresults:thin}"]):
    add(E, REPORT, *flags)
add(E, [])
add(E, ["nope"])
add(E, ["train", "--out"])

# ------------------------------------------------------------------ hardening, round two
# (issue 26) Every case below once ended in a traceback, a hang, a segfault, data loss or a
# silent accept. Files that are not regular files: a FIFO would hang a read, /dev/zero read
# forever; weights that cannot be a trained model; the sweep's paths and numbers, checked
# before anything trains; the user's folder unusable; Streamlit's flags of `normshape app`.
for kind in ("zero-weights", "fifo-weights", "fifo-meta", "nan-weights", "inf-weights",
             "int-weights", "fifo-cache"):
    add(E, ["evaluate", f"{{bad:{kind}}}", "--attacks", "pgd", "--classify", "pn",
            "--n-test", "20", "--steps", "2"])
for kind in ("zero-weights", "fifo-meta", "nan-weights"):
    add(E, ["diagnose", f"{{bad:{kind}}}", "--n", "16", "--steps", "2", "--worst-case", "none"])
for kind in ("fifo-weights", "inf-weights", "int-weights"):
    add(E, ["grid", f"{{bad:{kind}}}", "--n-test", "20", "--steps", "2", "--no-cache"])
add(E, ["evaluate", "/dev/zero", "--attacks", "pgd", "--no-cache"])
add(E, ["evaluate", "{fifo}", "--attacks", "pgd", "--no-cache"])
# run folders whose run.lock is a folder, a FIFO, a link to /dev/zero; an --out name longer
# than the file system allows
for kind in ("dir", "fifo", "link"):
    add(E, ["train", *TINY, "--out", "{world}/locks", "--name", kind])
add(E, ["train", *TINY, "--out", "{out}/" + "n" * 300])
add(E, EVAL, "--json", "{out}/" + "j" * 300 + ".json")
add(E, EVAL, "--json", "{fifo}")
# the user's folder a file or not writable (the cache of evaluate is written there)
for home in ("{file}", "/proc/normshape-home"):
    add(E, [f"ENV:NORMSHAPE_HOME={home}", "evaluate", "{ck}", "--attacks", "pgd",
            "--classify", "pn", "--n-test", "20", "--steps", "2"])
# report: a FIFO among the results files, a FIFO as the report
add(E, REPORT, "--checkpoints", "{badresults:fifo}")
add(E, REPORT, "--out", "{fifo}")
add(E, REPRO, "--threads", "100000")
add(E, ["reproduce", "--dataset", "moons", "--out", "{out}", "--n-test", "100000"])
# a run folder whose saved training state is a FIFO
add(E, ["train", *TINY, "--out", "{world}/locks", "--name", "state-fifo", "--resume"])

# the confounding sweep: nothing trains unless every flag, path and input is usable. The
# tiny grid on moons, so that a case wrongly accepted costs seconds, not the whole grid.
SWEEP = ["sweep-confoundings", "--grid", "tiny", "--datasets", "moons", "--epochs", "1",
         "--n-test", "50", "--work", "{out}/w", "--out", "{out}/r.json", "--doc", "{out}/C.md"]
for flags in (["--datasets", ""], ["--datasets", ","], ["--datasets", " , "],
              ["--datasets", "imagenet"], ["--threads", "100000", "--datasets", "imagenet"],
              ["--threads", "100000"], ["--threads", "0"], ["--threads", "-1"],
              ["--epochs", "0"], ["--epochs", "10000000"], ["--n-test", "0"],
              ["--n-test", "100000"], ["--seed", "-1"], ["--seed", BIG], ["--device", "tpu"],
              ["--report-only", "--out", "{sweepresults:garbage}"],
              ["--report-only", "--out", "{sweepresults:list}"],
              ["--report-only", "--out", "{sweepresults:malformed}"],
              ["--report-only", "--out", "{sweepresults:thin}"],
              ["--report-only", "--out", "{sweepresults:fifo}"],
              ["--report-only", "--out", "{missing}/r.json"],
              ["--report-only", "--out", "{sweepresults:shipped}", "--doc", "none"],
              ["--out", "{sweepresults:garbage}"], ["--out", "{sweepresults:shipped}"],
              ["--out", "{sweepresults:fifo}"],
              ["--doc", "/proc/x.md"], ["--doc", "{emptydir}"], ["--doc", "{fifo}"],
              ["--doc", "{file}/C.md"], ["--out", "{emptydir}"], ["--out", "/proc/s.json"],
              ["--out", "{out}/" + "r" * 300 + ".json"], ["--work", "{file}"],
              ["--work", "/proc/w"], ["--grid", "full", "--lessons", "{file}"],
              ["--grid", "huge"]):
    add(E, SWEEP, *flags)
SWEEP_HOME = ["sweep-confoundings", "--grid", "tiny", "--datasets", "moons", "--epochs", "1",
              "--n-test", "50"]  # every path in the user's folder
for home in ("{file}", "/proc/normshape-home"):
    add(E, [f"ENV:NORMSHAPE_HOME={home}", *SWEEP_HOME])

# `normshape app`: Streamlit's flags checked before a server starts
for flags in (["--server.maxUploadSize", "-5"], ["--server.maxUploadSize=0"],
              ["--server.port", "99999"], ["--server.port", "-1"], ["--server.port", "abc"],
              ["--server.address", "999.1.1.1"], ["--server.address", "bad host!"],
              ["--server.headless", "maybe"], ["--server.port"], ["--nope", "3"],
              ["stray"], ["--server.fileWatcherType", "bogus"], ["--theme.base", "purple"]):
    add(E, ["app", *flags])


# ------------------------------------------------------------------ fixtures
def _sha_pair(run: Path):
    import hashlib

    meta = json.loads((run / "model.json").read_text())
    data = (run / "model.safetensors").read_bytes()
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    meta["weights_bytes"] = len(data)
    (run / "model.json").write_text(json.dumps(meta))


def _bad_weights(run: Path, kind: str) -> None:
    """Weights that parse but cannot be a trained model (the metadata matches them)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "model.safetensors"))
    for name, t in tensors.items():
        if t.is_floating_point():
            if kind == "nan-weights" and name.endswith("weight"):
                tensors[name] = torch.full_like(t, float("nan"))
            elif kind == "inf-weights":
                tensors[name] = torch.full_like(t, float("inf"))
            elif kind == "int-weights":
                tensors[name] = t.round().to(torch.int64)
    save_file(tensors, str(run / "model.safetensors"))
    _sha_pair(run)


def _not_regular(run: Path, kind: str) -> None:
    """A file of the checkpoint replaced by a FIFO or a link to /dev/zero."""
    target = {"zero-weights": "model.safetensors", "fifo-weights": "model.safetensors",
              "fifo-meta": "model.json", "fifo-cache": "model.eval.json"}[kind]
    (run / target).unlink(missing_ok=True)
    if kind == "zero-weights":
        os.symlink("/dev/zero", run / target)
    else:
        os.mkfifo(run / target)


def _malformed(good: Path, root: Path, kind: str) -> Path:
    run = root / kind
    shutil.copytree(good, run)
    if kind in ("nan-weights", "inf-weights", "int-weights"):
        _bad_weights(run, kind)
        return run
    if kind in ("zero-weights", "fifo-weights", "fifo-meta", "fifo-cache"):
        _not_regular(run, kind)
        return run
    meta_path, w = run / "model.json", run / "model.safetensors"
    meta = json.loads(meta_path.read_text())
    if kind == "config-list":
        meta["config"] = [1, 2]
    elif kind == "eps-string":
        meta["config"]["eps"] = "0.1"
    elif kind == "sha-path":
        meta["weights_sha256"] = "../../../escape"
    elif kind == "no-format":
        meta.pop("format")
    elif kind == "sha-mismatch":
        meta["weights_sha256"] = "0" * 64
    elif kind == "shape-strings":
        meta["input_shape"] = ["a", "b"]
    elif kind == "classes-string":
        meta["num_classes"] = "two"
    if kind == "not-json":
        meta_path.write_text("{not json")
    else:
        meta_path.write_text(json.dumps(meta))
    if kind in ("header-list", "int-offsets", "truncated", "header-huge", "pickle"):
        data = w.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        if kind == "header-list":
            header = [header]
        elif kind == "int-offsets":
            for k, v in header.items():
                if k != "__metadata__":
                    v["data_offsets"] = 7
        if kind == "truncated":
            w.write_bytes(data[:-50])
        elif kind == "header-huge":
            w.write_bytes(struct.pack("<Q", 2 ** 60) + data[8:])
        elif kind == "pickle":
            w.write_bytes(b"\x80\x04K\x01.")
        else:
            raw = json.dumps(header).encode()
            w.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
        _sha_pair(run)  # the metadata matches the bad file: the parser itself must refuse
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    assert main(["train", *TINY, "--out", str(root / "runs"), "--name", "good"]) == 0
    good = root / "runs" / "good"
    bad = root / "bad"
    bad.mkdir()
    for kind in MALFORMED + NOT_A_MODEL:
        _malformed(good, bad, kind)
    (root / "file.bin").write_bytes(os.urandom(64))
    os.mkfifo(root / "fifo")
    results = root / "results"
    for kind, text in (("notjson", "{oops"), ("list", "[1, 2]"), ("nodataset", "{}"),
                       ("thin", json.dumps({"dataset": "moons"}))):
        (results / kind / "moons").mkdir(parents=True)
        (results / kind / "moons" / "results.json").write_text(text)
    (results / "fifo" / "moons").mkdir(parents=True)
    os.mkfifo(results / "fifo" / "moons" / "results.json")
    sweep = root / "sweepresults"
    sweep.mkdir()
    for kind, text in (("garbage", "\x00\x01 not json"), ("list", "[1, 2]"),
                       ("malformed", json.dumps({"cells": [{"id": 3}]})),
                       ("thin", json.dumps({"cells": [{"id": "moons/base"}]}))):
        (sweep / kind).write_text(text)
    # the shipped results: other settings than the tiny grid's --epochs 1
    shutil.copy(ROOT / "checkpoints" / "sweep" / "confoundings.json", sweep / "shipped")
    os.mkfifo(sweep / "fifo")
    locks = root / "locks"
    for kind in ("dir", "fifo", "link", "state-fifo"):
        (locks / kind).mkdir(parents=True)
    os.mkfifo(locks / "state-fifo" / "state.json")
    (locks / "dir" / "run.lock").mkdir()
    os.mkfifo(locks / "fifo" / "run.lock")
    os.symlink("/dev/zero", locks / "link" / "run.lock")
    return root


def _fill(argv, world: Path, out: Path):
    subs = {"{out}": str(out), "{ck}": str(world / "runs" / "good"),
            "{missing}": str(world / "no" / "such"), "{file}": str(world / "file.bin"),
            "{ro}": "/proc/normshape-not-writable", "{emptydir}": str(out / "empty"),
            "{results}": str(world / "results" / "thin"), "{fifo}": str(world / "fifo"),
            "{world}": str(world)}
    (out / "empty").mkdir(exist_ok=True)
    filled = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        if a.startswith("{bad:"):
            a = str(world / "bad" / a[5:-1])
        if a.startswith("{badresults:"):
            a = str(world / "results" / a[12:-1])
        if a.startswith("{sweepresults:"):
            a = str(world / "sweepresults" / a[14:-1])
        filled.append(a)
    return filled


def _tree(*roots: Path):
    """Every file under the roots with its size and modification time (a rewrite shows);
    folders by name only (a checked folder's probe file changes its time)."""
    import stat

    out = {}
    for r in roots:
        for p in r.rglob("*"):
            st = p.lstat()
            out[str(p)] = None if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)
    return out


def _sha256(paths):
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _run(argv):
    """``normshape ARGV`` in this process: the core's subcommands, or ``app``."""
    if argv[:1] == ["app"]:
        from normshape_app.cli import main as app_main

        return app_main(argv)
    return main(argv)


def _case_id(i, argv):
    argv = [a for a in argv if not a.startswith("ENV:")]
    base = {"train": TRAIN, "evaluate": EVAL, "grid": GRID, "diagnose": DIAG,
            "reproduce": REPRO, "report": REPORT, "sweep-confoundings": SWEEP}.get(
        argv[0] if argv else "", [])
    if argv[:len(base)] != base:
        base = []
    return f"{i:03d}-" + " ".join(argv[:1] + argv[len(base):])[:60]


@pytest.mark.parametrize("expect,argv,check", CASES,
                         ids=[_case_id(i, a) for i, (_, a, _) in enumerate(CASES)])
def test_bad_input(expect, argv, check, world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    argv = _fill(argv, world, out)
    while argv and argv[0].startswith("ENV:"):  # an environment of its own
        name, _, value = argv.pop(0)[4:].partition("=")
        monkeypatch.setenv(name, value)
    home = Path(os.environ["NORMSHAPE_HOME"])
    roots = [world, out] + ([home] if home.is_dir() else [])
    before, shipped = _tree(*roots), _sha256(SHIPPED)
    try:
        rc = _run(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    after = _tree(*roots)
    assert not [p for p in after if p.endswith(".tmp")], after  # no partial file anywhere
    assert {p: s for p, s in after.items() if p in before} == before  # nothing rewritten
    assert _sha256(SHIPPED) == shipped  # the shipped results untouched
    if expect == E:
        err = cap.err.strip()
        assert rc == 2, (rc, cap.err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "error" in err and "please report" not in err, err
        # nothing written but, for a run that started, its lock file and its metrics log
        new = [Path(p) for p in after if p not in before]
        assert all(p.is_dir() or p.name in ("run.lock", "metrics.jsonl") for p in new), new
    else:
        assert rc == 0, cap.err
        if check is not None:
            check(out, argv)


def test_at_least_150_cases_over_every_subcommand():
    per = {}
    for _, argv, _ in CASES:
        argv = [a for a in argv if not a.startswith("ENV:")]
        per[argv[0] if argv else ""] = per.get(argv[0] if argv else "", 0) + 1
    assert len(CASES) >= 150
    assert {"train", "evaluate", "grid", "diagnose", "reproduce", "report",
            "sweep-confoundings", "app"} <= set(per), per


def test_an_unexpected_error_is_one_line_with_a_log_file(monkeypatch, capsys, tmp_path):
    from normshape_core.training import trainer as training

    def broken(*a, **kw):
        raise RuntimeError("simulated internal failure")

    monkeypatch.setattr(training, "train", broken)
    rc = main(["train", *TINY, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "please report" in err, err
    log = Path(err.split("details in ", 1)[1].split(")")[0])
    text = log.read_text()
    assert log.is_file() and "Traceback" in text and "simulated internal failure" in text
    assert str(log).startswith(os.environ["NORMSHAPE_HOME"])
