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


# ------------------------------------------------------------------ fixtures
def _sha_pair(run: Path):
    import hashlib

    meta = json.loads((run / "model.json").read_text())
    data = (run / "model.safetensors").read_bytes()
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    meta["weights_bytes"] = len(data)
    (run / "model.json").write_text(json.dumps(meta))


def _malformed(good: Path, root: Path, kind: str) -> Path:
    run = root / kind
    shutil.copytree(good, run)
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
    for kind in MALFORMED:
        _malformed(good, bad, kind)
    (root / "file.bin").write_bytes(os.urandom(64))
    results = root / "results"
    for kind, text in (("notjson", "{oops"), ("list", "[1, 2]"), ("nodataset", "{}"),
                       ("thin", json.dumps({"dataset": "moons"}))):
        (results / kind / "moons").mkdir(parents=True)
        (results / kind / "moons" / "results.json").write_text(text)
    return root


def _fill(argv, world: Path, out: Path):
    subs = {"{out}": str(out), "{ck}": str(world / "runs" / "good"),
            "{missing}": str(world / "no" / "such"), "{file}": str(world / "file.bin"),
            "{ro}": "/proc/normshape-not-writable", "{emptydir}": str(out / "empty"),
            "{results}": str(world / "results" / "thin")}
    (out / "empty").mkdir(exist_ok=True)
    filled = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        if a.startswith("{bad:"):
            a = str(world / "bad" / a[5:-1])
        if a.startswith("{badresults:"):
            a = str(world / "results" / a[12:-1])
        filled.append(a)
    return filled


def _tree(*roots: Path):
    return {str(p): p.stat().st_size for r in roots for p in r.rglob("*")}


@pytest.mark.parametrize("expect,argv,check", CASES,
                         ids=[f"{i:03d}-" + " ".join(a[:1] + a[len(
                             {"train": TRAIN, "evaluate": EVAL, "grid": GRID,
                              "diagnose": DIAG, "reproduce": REPRO, "report": REPORT}.get(
                                 a[0] if a else "", [])):])[:60] for i, (_, a, _) in
                             enumerate(CASES)])
def test_bad_input(expect, argv, check, world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    argv = _fill(argv, world, out)
    before = _tree(world, out)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    after = _tree(world, out)
    assert not [p for p in after if p.endswith(".tmp")], after  # no partial file anywhere
    assert {p: s for p, s in after.items() if p in before} == before  # nothing rewritten
    if expect == E:
        err = cap.err.strip()
        assert rc == 2, (rc, cap.err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "error" in err, err
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
        per[argv[0] if argv else ""] = per.get(argv[0] if argv else "", 0) + 1
    assert len(CASES) >= 150
    assert {"train", "evaluate", "grid", "diagnose", "reproduce", "report"} <= set(per), per


def test_an_unexpected_error_is_one_line_with_a_log_file(monkeypatch, capsys, tmp_path):
    from normshape_core import training

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
