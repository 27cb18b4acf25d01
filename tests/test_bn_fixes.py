"""The BN fixes side by side (``bn_fixes``): the report is generated from a results file
(checked here on a results fixture made in the test), the committed report agrees with the
committed results, and the command trains (resumably) and evaluates every row through its
own norms."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from normshape_core.studies import bn_fixes as bf
from normshape_core.inference.alternatives import describe_spec
from normshape_core.cli import main
from normshape_core.settings.config import ConfigError
from _regenerate import assert_regenerates
from normshape_core.base.stats import HOLDS, REVERSED, interval_text, pack_mask, paired_verdict

ROOT = Path(__file__).resolve().parents[1]
NORMS = {"dual_bn/pgd": "dual_bn", "dual_bn/trades": "dual_bn", "no_batch_stats/pgd": "gn",
         "nf/pgd": "nf"}


def _bits(n, p, rng):
    return [rng.random() < p for _ in range(n)]


def _fixture(dataset="digits", n=200, masks=True, norms=NORMS, seed=1):
    """A results file as ``evaluate_alternatives`` writes it, with per-sample outcomes drawn
    so that dual BN's clean norms win on clean inputs, its adversarial norms under attack,
    and shaping loses to the adversarial norms on robustness."""
    rng = random.Random(seed)
    p = {("dual_bn/pgd", "dual:clean"): (0.98, 0.05), ("dual_bn/pgd", "dual:adv"): (0.70, 0.60),
         ("pgd/shaping-in-attack+training", "shaped:1:9"): (0.97, 0.30)}
    rows = []
    for r in bf.table_rows(norms):
        pc, pr = p.get((r.key, r.spec), (0.9, 0.4))
        clean = _bits(n, pc, rng)
        robust = [c and b for c, b in zip(clean, _bits(n, pr / pc, rng))]
        row = {"method": r.method, "key": r.key, "spec": r.spec,
               "classified_with": describe_spec(r.spec, norms.get(r.key, "bn")),
               "crafted_with": "PN", "clean_acc": sum(clean) / n, "robust_acc": sum(robust) / n,
               "n": n,
               "checkpoint": f"checkpoints/{dataset}/{dataset}-{r.key.replace('/', '-')}"}
        if masks:
            row.update(clean_mask=pack_mask(clean), robust_mask=pack_mask(robust))
        rows.append(row)
    return {"dataset": dataset, "seed": 0, "n_test": n, "ensemble": "autoattack: apgd, square",
            "settings": {}, "rows": rows}


def _masks(row, which):
    from normshape_core.base.stats import unpack_mask

    return unpack_mask(row[f"{which}_mask"], row["n"])


def test_the_report_from_a_results_file():
    digits = _fixture()
    moons = _fixture("moons", n=100, masks=False,
                     norms={"dual_bn/pgd": "dual_bn", "dual_bn/trades": "dual_bn",
                            "no_batch_stats/pgd": "ln"})
    text = bf.report_markdown([digits, moons])
    assert text.index("## moons") < text.index("## digits")  # dataset order, not file order
    for r in digits["rows"] + moons["rows"]:
        line = next(line for line in text.splitlines() if line.startswith(
            f"| {r['method']} | `{Path(r['checkpoint']).name}` | {r['classified_with']} |"))
        assert interval_text(r["clean_acc"], r["n"]) in line
        assert interval_text(r["robust_acc"], r["n"]) in line
    rows = {(r["key"], r["spec"]): r for r in digits["rows"]}
    shaped = rows[("pgd/shaping-in-attack+training", "shaped:1:9")]
    for key in (("pgd/adv-only", "pn"), ("dual_bn/pgd", "dual:adv"), ("nf/pgd", "own")):
        other = rows[key]
        for which in ("clean", "robust"):
            want = paired_verdict(_masks(shaped, which), _masks(other, which)).text()
            assert f"| {bf._row_name(shaped)} above {bf._row_name(other)} |" in text
            assert want in text
    assert "PGD + shaping 1:3 [shaped 1:9] above dual BN (PGD) [adv norms]" in text
    # the words follow the verdicts: dual BN's choice matters, and shaping loses the robust count
    clean, adv = rows[("dual_bn/pgd", "dual:clean")], rows[("dual_bn/pgd", "dual:adv")]
    assert paired_verdict(_masks(clean, "clean"), _masks(adv, "clean")).verdict == HOLDS
    assert paired_verdict(_masks(shaped, "robust"), _masks(adv, "robust")).verdict == REVERSED
    assert "Dual BN's choice matters here" in text
    assert "the paper's argument does not carry here" in text
    # without per-sample outcomes nothing is decided, and the report says so
    moons_part = text[text.index("## moons"):text.index("## digits")]
    assert "not decided: the results carry no per-sample outcomes" in moons_part
    assert "holds" not in moons_part and "reversed" not in moons_part
    related = text[text.index("## The related work"):]
    assert len([ln for ln in related.splitlines() if ln.startswith("| [")]) == len(
        bf.RELATED_CLAIMS)
    nf_line = next(ln for ln in related.splitlines() if "normalizer-free above" in ln)
    cells = [c.strip() for c in nf_line.strip().strip("|").split("|")]
    assert cells[2:] == ["not measured (no such row)",  # moons (first column) has no NF model
                         paired_verdict(_masks(rows[("nf/pgd", "own")], "robust"),
                                        _masks(rows[("pgd/adv-only", "pn")], "robust")).text()]


def test_update_report_writes_the_generated_text(tmp_path):
    for res in (_fixture(), _fixture("moons", masks=False)):
        (tmp_path / res["dataset"]).mkdir()
        bf.write_results(tmp_path / res["dataset"] / bf.RESULTS_NAME, res)
    out = tmp_path / "ALT.md"
    assert main(["alternatives-report", "--checkpoints", str(tmp_path), "--out", str(out)]) == 0
    paths = bf.results_paths(tmp_path)
    assert out.read_text() == bf.report_markdown(bf.load_results(paths))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["alternatives-report", "--checkpoints", str(empty), "--out", str(out)]) == 2
    (tmp_path / "digits" / bf.RESULTS_NAME).write_text("[1, 2]")
    assert main(["alternatives-report", "--checkpoints", str(tmp_path), "--out", str(out)]) == 2


def test_the_committed_report_agrees_with_the_results():
    """ALTERNATIVES.md is what ``alternatives-report`` makes of checkpoints/*/alternatives.json;
    neither exists before the lead's full evaluation, and then both do."""
    paths = bf.results_paths(ROOT / "checkpoints")
    report = ROOT / bf.REPORT_NAME
    if not paths:
        assert not report.exists(), (f"{bf.REPORT_NAME} exists without any checkpoints/*/"
                                     f"{bf.RESULTS_NAME}: it cannot be regenerated")
        return
    assert report.exists(), f"results files but no {bf.REPORT_NAME}: run alternatives-report"
    assert report.read_text() == bf.report_markdown(bf.load_results(paths)), (
        f"{bf.REPORT_NAME} is out of date: python -m normshape_core alternatives-report")


def test_the_command_trains_the_set_and_resumes(tmp_path, capsys):
    args = ["alternatives", "--dataset", "moons", "--epochs", "1", "--out", str(tmp_path),
            "--skip-eval"]
    assert main(args) == 0
    names = sorted(p.parent.name for p in tmp_path.glob("*/model.json"))
    assert names == ["moons-mlp-dualbn-pgd-clean-adv-eps0.12-s0",
                     "moons-mlp-dualbn-trades-clean-adv-eps0.12-nokl-s0",
                     "moons-mlp-ln-pgd-adv-only-eps0.12-s0"]
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("done already") == 3
    for bad in (["--only", "nf/pgd,bogus"], ["--ensemble", "nosuchattack"], ["--n-test", "0"]):
        assert main(args + bad) == 2


def test_the_set_fits_each_model():
    def keys(dataset):
        s = bf.AlternativesSettings(dataset=dataset, out=Path("/tmp"), repro=Path("/tmp"))
        return {a.key: bf.run_config(dataset, a).norm for a in s.alternatives()}

    assert keys("moons") == {"dual_bn/pgd": "dual_bn", "dual_bn/trades": "dual_bn",
                             "no_batch_stats/pgd": "ln"}
    assert keys("digits") == {"dual_bn/pgd": "dual_bn", "dual_bn/trades": "dual_bn",
                              "no_batch_stats/pgd": "gn", "nf/pgd": "nf"}
    cfg = bf.run_config("fashion_mnist", bf.ALTERNATIVE_SET[3])
    assert (cfg.agc_clip, cfg.model_width, cfg.n_train, cfg.epochs) == (0.01, 16, 10000, 3)
    trades = bf.run_config("digits", bf.ALTERNATIVE_SET[1])
    assert trades.trades_kl_in_loss is False  # TRADES as the reproduction trains it


def _shipped_results() -> dict:
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (ROOT / "checkpoints").rglob(bf.RESULTS_NAME)}


def test_the_command_evaluates_every_row_through_its_own_norms(tmp_path):
    shipped_before = _shipped_results()
    s = bf.AlternativesSettings(dataset="moons", out=tmp_path / "runs",
                                repro=ROOT / "checkpoints" / "moons", epochs=1, n_test=10,
                                ensemble="apgd", cache_dir=tmp_path / "cache").validate()
    runs = bf.train_alternatives(s, progress=False, log=lambda *a: None)
    runs = {**bf.shipped_runs("moons", s.repro), **runs}
    results = bf.evaluate_alternatives(s, runs, log=lambda *a: None)
    norms = {"dual_bn/pgd": "dual_bn", "dual_bn/trades": "dual_bn", "no_batch_stats/pgd": "ln"}
    assert [(r["key"], r["spec"]) for r in results["rows"]] == [
        (r.key, r.spec) for r in bf.table_rows(norms)]
    crafted = {"pn": "PN", "shaped:1:9": "BN (exact refs)", "dual:clean": "PN [clean norms]",
               "dual:adv": "PN [adv norms]", "own": "LayerNorm",
               "tts": "re-estimated PN (known set)", "tts:mix=0.5": "re-estimated PN (known set)",
               "tts:poison=0.125": "re-estimated PN (poisoned set)"}
    for r in results["rows"]:
        assert r["n"] == 10 and r["crafted_with"] == crafted[r["spec"]], r
        assert r["classified_with"] == describe_spec(r["spec"], norms.get(r["key"], "bn"))
    assert _shipped_results() == shipped_before  # nothing shipped written


# ====================================================================== the shipped runs
@pytest.mark.parametrize("dataset", ["moons", "digits", "fashion_mnist"])
def test_the_shipped_set_is_there_and_valid(dataset):
    from normshape_core.training.checkpoints import find_checkpoints

    s = bf.AlternativesSettings(dataset=dataset, out=ROOT / "checkpoints" / dataset,
                                repro=ROOT / "checkpoints" / dataset)
    found, errors = find_checkpoints(ROOT / "checkpoints" / dataset)
    assert not errors, errors
    shipped = {f.path.name: f.meta for f in found if f.meta["config"].get("norm", "bn") != "bn"}
    expected = {bf.run_config(dataset, a).run_name(): a for a in s.alternatives()}
    assert set(shipped) == set(expected)
    for name, meta in shipped.items():  # at the reproduction's settings, seed 0
        want = bf.run_config(dataset, expected[name])
        assert meta["config"] == {**want.to_dict(), "device": meta["config"]["device"]}, name


@pytest.mark.parametrize("key", ["dual_bn/pgd", "no_batch_stats/pgd"])
def test_a_shipped_run_regenerates(key):
    from normshape_core.training.checkpoints import load_checkpoint
    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import train

    alt = next(a for a in bf.ALTERNATIVE_SET if a.key == key)
    folder = ROOT / "checkpoints" / "moons" / bf.run_config("moons", alt).run_name()
    model, meta = load_checkpoint(folder)
    again = train(TrainConfig.from_dict(meta["config"]))
    print(assert_regenerates(folder, model, again, key))


def test_the_benchmarks_cross_check_attacks_each_alternative_through_its_own_view():
    """Benchmark section 6alt: every BN fix the report has on digits, and torchattacks is
    handed the defender's own view (dual BN's chosen set, GroupNorm, the re-estimated
    statistics), not the model in its default mode."""
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import worst_case as W
    from normshape_core.measuring.worst_case import defender_view

    rows = W.alternative_rows("digits")
    assert sorted(spec for _, spec in rows) == sorted(
        ["tts", "tts:mix=0.5", "tts:poison=0.125", "dual:clean", "dual:adv", "dual:clean",
         "dual:adv", "own", "own"])
    seen_differ = False
    for path, spec in rows:
        if spec not in ("dual:clean", "tts"):
            continue
        model, _, batches, clf, _ = W._setup(path, 20, spec, torch.device("cpu"))
        x = batches[0][0]
        with torch.no_grad():
            ext = W._View(defender_view(clf, len(x)), model).eval()(x)
            assert torch.equal(ext, clf(x)), (path.name, spec)
            seen_differ |= not torch.equal(ext, model.eval()(x))
    assert seen_differ  # a view that is not the model's default forward was exercised
