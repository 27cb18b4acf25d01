"""The confounding sweep: a tiny grid end to end through the CLI (resumed from its cache),
the shipped results against CONFOUNDINGS.md and the lesson checkpoints, and the figures."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from normshape_core.__main__ import main
from normshape_core.studies.sweep import (MAGNITUDE, build_grid, generated_block, lesson_choices)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "checkpoints" / "sweep" / "confoundings.json"
LESSONS = ROOT / "checkpoints" / "lessons"


def _tiny(tmp: Path, capsys, *extra):
    rc = main(["sweep-confoundings", "--grid", "tiny", "--datasets", "moons", "--epochs", "2",
               "--n-test", "100", "--work", str(tmp / "work"), "--out",
               str(tmp / "results.json"), "--doc", str(tmp / "C.md"), *extra])
    assert rc == 0
    return capsys.readouterr().out


def test_tiny_sweep_end_to_end_then_resumed_from_its_cache(tmp_path, capsys):
    _tiny(tmp_path, capsys)
    results = json.loads((tmp_path / "results.json").read_text())
    cells = results["cells"]
    assert [c["id"] for c in cells] == ["moons/base", "moons/mlp10"]
    assert results["missing"] == []
    base, deep = (c["measures"] for c in cells)
    assert (base["bn_layers"], deep["bn_layers"]) == (3, 10)
    for m in (base, deep):
        for k in ("acc_pn", "acc_bn", "acc_shaped", "drift_1_0", "drift_1_3", "logit_gap",
                  "pn_vs_bn", "shaping_vs_bn", "rob_pn_pn", "rob_bn_pn", "pn_distance_mean"):
            assert m[k] is not None and math.isfinite(m[k]), k
        assert 0 <= m["acc_pn"] <= 1 and m["drift_1_0"] > 0
        assert m["acc_gap_bn_pn"] == pytest.approx(m["acc_bn"] - m["acc_pn"])
    # both trainings of each cell exist, and the document was written from the results
    for c in cells:
        folder = tmp_path / "work" / "moons" / c["variant"]
        assert {p.name for p in folder.iterdir()} == set(c["runs"].values())
    doc = (tmp_path / "C.md").read_text()
    assert generated_block(results) in doc
    # a second run trains and measures nothing: every cell comes from the cache
    out = _tiny(tmp_path, capsys)
    assert out.count("done already") == 2
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == cells


def test_report_only_rewrites_only_the_generated_block(tmp_path, capsys):
    _tiny(tmp_path, capsys, "--doc", "none")
    doc = tmp_path / "D.md"
    doc.write_text("# Mine\n\nprose kept\n\n<!-- generated:sweep -->\nOLD-BLOCK\n"
                   "<!-- end generated:sweep -->\n\nmore prose\n")
    assert main(["sweep-confoundings", "--report-only", "--out", str(tmp_path / "results.json"),
                 "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Mine\n\nprose kept") and text.endswith("more prose\n")
    assert "OLD-BLOCK" not in text and "| moons/mlp10 |" in text


@pytest.mark.parametrize("argv, needle", [
    (["--datasets", "cifar100"], "no sweep settings for dataset 'cifar100'"),
    (["--epochs", "0"], "--epochs must be a whole number in [1, 100,000], got 0"),
    (["--datasets", ""], "--datasets names no dataset"),
    (["--threads", "100000"], "--threads must be a whole number in [1, 1,024]"),
    (["--report-only", "--out", "/nonexistent/r.json"], "no results file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    rc = main(["sweep-confoundings", "--work", str(tmp_path), "--out",
               str(tmp_path / "r.json"), *argv])  # a later --out wins
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err


def _sha256_of_shipped():
    import hashlib

    files = [RESULTS, ROOT / "CONFOUNDINGS.md", *sorted(LESSONS.rglob("*.*"))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_the_readme_smoke_command_from_a_checkout_leaves_the_shipped_results_alone(
        tmp_path, capsys, monkeypatch):
    """The smoke command of docs/reproduction.md, run from the checkout's root, writes to the user's
    folder: the shipped results, CONFOUNDINGS.md and the lessons keep their SHA-256. Run
    again into the same results file, it merges: its cells come from the cache, and a cell
    of another run already in the file is kept."""
    readme = (ROOT / "docs" / "reproduction.md").read_text()
    (cmd,) = re.findall(r"^normshape (sweep-confoundings --grid tiny[^#\n]*?)\s*#", readme,
                        re.M)
    argv = cmd.split()
    assert argv == ["sweep-confoundings", "--grid", "tiny", "--datasets", "moons", "--epochs",
                    "2"]
    home = tmp_path / "home"
    monkeypatch.setenv("NORMSHAPE_HOME", str(home))
    monkeypatch.chdir(ROOT)
    before = _sha256_of_shipped()
    assert main(argv) == 0
    assert _sha256_of_shipped() == before
    mine = home / "sweep" / "confoundings.json"
    results = json.loads(mine.read_text())
    assert [c["id"] for c in results["cells"]] == ["moons/base", "moons/mlp10"]
    assert generated_block(results) in (home / "sweep" / "CONFOUNDINGS.md").read_text()
    # another run's cell in the same file (same seed, epochs and test size): never dropped
    other = dict(json.loads(RESULTS.read_text())["cells"][-1], id="spirals/base",
                 dataset="spirals")
    results["cells"].append(other)
    mine.write_text(json.dumps(results))
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done already") == 2
    merged = json.loads(mine.read_text())
    assert [c["id"] for c in merged["cells"]] == ["moons/base", "moons/mlp10", "spirals/base"]
    assert merged["cells"][:2] == results["cells"][:2] and merged["cells"][2] == other
    assert "| spirals/base |" in (home / "sweep" / "CONFOUNDINGS.md").read_text()
    assert _sha256_of_shipped() == before


def test_a_sweep_into_results_of_other_settings_is_refused_and_keeps_them(tmp_path, capsys):
    import shutil

    target = tmp_path / "r.json"
    shutil.copy(RESULTS, target)  # the shipped settings: no epochs override
    before = target.read_bytes()
    rc = main(["sweep-confoundings", "--grid", "tiny", "--datasets", "moons", "--epochs", "2",
               "--work", str(tmp_path / "w"), "--out", str(target), "--doc", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--epochs (file None, now 2)" in err, err
    assert target.read_bytes() == before and not (tmp_path / "w").exists()


def test_ship_names_the_checkouts_files():
    from normshape_core.studies.sweep import SweepSettings

    s = SweepSettings(datasets=["moons"], ship=True).resolved()
    assert s.out == RESULTS and Path(s.doc) == ROOT / "CONFOUNDINGS.md"
    assert Path(s.lessons) == LESSONS
    mine = SweepSettings(datasets=["moons"]).resolved()
    assert ROOT not in mine.out.parents and ROOT not in Path(mine.doc).parents


def test_the_full_grid_varies_one_axis_at_a_time():
    cells = build_grid()
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    for ds in ("moons", "spirals", "digits", "fashion_mnist"):
        axes = {c.axis for c in cells if c.dataset == ds}
        assert axes == {"base", "depth", "eps", "batch", "seed"}
        for c in cells:
            if c.dataset == ds and c.axis != "base":
                assert len(c.overrides) >= 1


def test_confoundings_md_tables_equal_the_generated_ones():
    results = json.loads(RESULTS.read_text())
    doc = (ROOT / "CONFOUNDINGS.md").read_text()
    block = re.search(r"<!-- generated:sweep -->.*?<!-- end generated:sweep -->", doc, re.S)
    assert block, "CONFOUNDINGS.md has no generated block"
    assert block.group(0) == generated_block(results)


def test_shipped_lessons_are_the_sweeps_choices_and_load():
    from normshape_core.training.checkpoints import load_checkpoint

    results = json.loads(RESULTS.read_text())
    shipped = json.loads((LESSONS / "lessons.json").read_text())
    choices = lesson_choices(results)
    assert set(shipped) == set(MAGNITUDE)
    cells = {c["id"]: c for c in results["cells"]}
    for conf, ch in shipped.items():
        assert ch["cell"] == choices[conf]["cell"]
        assert ch["value"] == pytest.approx(choices[conf]["value"])
        cell = cells[ch["cell"]]
        for tag, folder in ch["checkpoints"].items():
            model, meta = load_checkpoint(LESSONS / folder, "cpu")
            cfg = meta["config"]
            assert cfg["dataset"] == cell["dataset"]
            assert cfg["shaping"] == ("none" if tag == "plain" else "attack+train")
            for k, v in cell["settings"].items():
                assert cfg[k] == v, (conf, k)
    total = sum(p.stat().st_size for p in (ROOT / "checkpoints").rglob("*") if p.is_file())
    assert total < 30e6, f"checkpoints/ holds {total / 1e6:.1f} MB"


def test_sweep_figures_have_titles_axes_and_the_paper_mark():
    from normshape_core.figures.confoundings import sweep_figure

    results = json.loads(RESULTS.read_text())
    for conf in ("I", "II", "III"):
        fig = sweep_figure(results, conf)
        lay = fig.layout
        assert lay.title.text and lay.xaxis.title.text and lay.yaxis.title.text
        assert lay.xaxis2.title.text
        datasets = {t.name for t in fig.data}
        assert datasets == {c["dataset"] for c in results["cells"]}
        lo, hi = lay.yaxis.range
        assert lo <= 0 <= hi  # zero on the axis: no exaggerated gaps
        assert any("paper" in (a.text or "") for a in lay.annotations)
