"""Reproduction: a small case end to end, determinism, the committed checkpoints, and
REPRODUCTION.md against the committed results files."""
from pathlib import Path

import pytest

from normshape_core.training.checkpoints import find_checkpoints, load_checkpoint
from normshape_core.settings.config import TrainConfig
from normshape_core.studies.report import dataset_section, summary_markdown, verdicts
from normshape_core.studies.reproduce import PAPER_SET, evaluate_set, load_results, train_set
from normshape_core.training.trainer import train

from _regenerate import assert_regenerates

ROOT = Path(__file__).resolve().parents[1]
SMALL = [s for s in PAPER_SET if s.key in ("natural", "pgd/adv-only",
                                           "pgd/shaping-in-attack+training")]


def _small_repro(out: Path):
    runs = train_set("moons", out, specs=SMALL, overrides={"epochs": 10}, progress=False,
                     log=lambda *_: None)
    return evaluate_set(runs, "moons", n_test=400, table_attacks=["pgd"], diagnostics=False,
                        worst=dict(n_test=100, table_iv_n_test=50), log=lambda *_: None,
                        worst_budget=dict(apgd_steps=20, square_queries=200))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _small_repro(tmp_path_factory.mktemp("repro") / "a")


def _pgd(results, key, classified):
    rows = results["runs"][key]["rows"]
    return next(r for r in rows if r["attack"] == "pgd" and r["classified_with"] == classified
                and r["crafted_with"] == "PN")


def test_small_reproduction_shows_the_moons_effects(small):
    """The directions REPRODUCTION.md reports for moons: adversarial training buys
    robustness over natural training and costs clean accuracy; shaping (attack+training,
    classified with shaped inference) wins the clean accuracy back."""
    nat = _pgd(small, "natural", "PN")
    pgd = _pgd(small, "pgd/adv-only", "PN")
    shaped_rows = small["runs"]["pgd/shaping-in-attack+training"]["rows"]
    label = next(r["classified_with"] for r in shaped_rows if r.get("ratio") == "1:9")
    shaped = _pgd(small, "pgd/shaping-in-attack+training", label)
    figures = {k: (round(v["clean_acc"], 3), round(v["robust_acc"], 3))
               for k, v in {"natural [PN]": nat, "pgd [PN]": pgd, f"shaped [{label}]": shaped}.items()}
    msg = f"(clean acc, PGD-20 robust acc crafted with PN): {figures}"
    assert pgd["robust_acc"] >= nat["robust_acc"] + 0.2, msg
    assert nat["clean_acc"] >= pgd["clean_acc"] + 0.03, msg
    assert shaped["clean_acc"] >= pgd["clean_acc"] + 0.03, msg
    claims = {v.claim: v for v in verdicts(small)}
    key = next(c for c in claims if c.startswith("clean accuracy: PGD-AT"))
    assert claims[key].verdict == "reproduced", claims[key].numbers
    assert "McNemar exact p" in claims[key].numbers and "n=400" in claims[key].numbers


def test_small_reproduction_has_the_worst_case_beside_the_paper_protocol(small):
    """Every robust number of Tables I-III also as the worst case through the classifier's
    own norms plus transfer, never above PGD-20 on the same samples (the first n of the same
    seeded subset); Table IV's worst case on its own sample count; the verdicts are paired
    tests, and every accuracy of the report carries its interval."""
    from normshape_core.base.stats import unpack_mask

    assert small["n_test_worst"] == 100 and small["n_test_table_iv_worst"] == 50
    for key in ("natural", "pgd/adv-only", "pgd/shaping-in-attack+training"):
        rows = small["runs"][key]["rows"]
        worst = [r for r in rows if r["attack"] == "worst_case" and r["n"] == 100]
        assert {w["classified_with"] for w in worst} >= {"PN", "BN", "shaped 1:9 (g=10)"}
        for w in worst:
            pgd = next(r for r in rows if r["attack"] == "pgd" and r["n"] == 400 and
                       r["crafted_with"] == "PN" and r["classified_with"] == w["classified_with"])
            pgd_first = unpack_mask(pgd["robust_mask"], 400)[:100]
            robust = unpack_mask(w["robust_mask"], 100)
            assert sum(robust) <= sum(pgd_first), (key, w["classified_with"])
            assert w["crafted_with"] == {
                "PN": "PN", "BN": "BN + transfer from PN"}.get(
                w["classified_with"], "BN (exact refs) + transfer from PN, BN")
            assert w["robust_ci"][0] <= w["robust_acc"] <= w["robust_ci"][1]
    iv = [r for r in small["runs"]["pgd/shaping-in-attack+training"]["rows"]
          if r["attack"] == "worst_case" and r["n"] == 50]
    assert {r["ratio"] for r in iv} == {"1:0", "1:1", "1:3", "1:9", "1:19", "1:49"}
    claims = [v.claim for v in verdicts(small)]
    assert any("worst case through the own norms" in c for c in claims)
    assert any(c.startswith("no gradient masking") for c in claims)
    # one training ratio only here (1:3): Table IV's claims compare training ratios, so none
    assert not any(c.startswith("Table IV") for c in claims)
    for v in verdicts(small):
        assert v.verdict in ("reproduced", "reversed", "inconclusive at 95 %", "holds",
                             "does not hold", "not reproduced", "not reproduced (reversed)")
    text = dataset_section(small)
    assert "worst case per sample beside the paper's protocol" in text
    # every accuracy cell of the report's tables carries its interval
    import re
    for section in text.split("### ")[1:]:
        title = section.splitlines()[0]
        if "confounding" in title or "verdicts" in title or "settings" in title:
            continue
        for line in section.splitlines():
            if line.startswith("| ") and "---" not in line:
                for value in re.findall(r"(?<!p < )(?<!p = )\b[01]\.\d{3}\b(?! \[)", line):
                    assert False, f"an accuracy without its interval: {value} in {line}"
    # the summary: a column for the dataset, a row per claim, each cell that claim's verdict
    from normshape_core.studies.report import SUMMARY_CLAIMS

    rows = [ln for ln in summary_markdown([small]).splitlines() if ln.startswith("| ")]
    assert rows[0] == f"| claim (paper's figures) | {small['dataset']} |"
    assert len(rows) == 1 + len(SUMMARY_CLAIMS)
    shown = 0
    for (prefix, label), row in zip(SUMMARY_CLAIMS, rows[1:]):
        v = next((v for v in verdicts(small) if v.claim.startswith(prefix)), None)
        assert row == f"| {label} | {v.short if v else '-'} |", row
        shown += v is not None
    assert shown >= 3  # the claims this small set can decide are decided in the summary


def test_reproduce_again_gives_the_same_numbers(small, tmp_path):
    again = _small_repro(tmp_path / "b")
    for key, entry in small["runs"].items():
        a = [(r["attack"], r["classified_with"], r["clean_acc"], r["robust_acc"]) for r in entry["rows"]]
        b = [(r["attack"], r["classified_with"], r["clean_acc"], r["robust_acc"])
             for r in again["runs"][key]["rows"]]
        assert a == b, key
        assert entry["weights_sha256"] == again["runs"][key]["weights_sha256"], key


COMMITTED = sorted((ROOT / "checkpoints").glob("*/results.json"))


def test_checkpoints_folder_holds_the_full_sets():
    datasets = {p.parent.name for p in COMMITTED}
    assert {"moons", "digits", "fashion_mnist"} <= datasets, datasets
    found, errors = find_checkpoints(ROOT / "checkpoints")
    assert not errors, errors
    for ds in ("moons", "digits", "fashion_mnist"):
        n = sum(1 for f in found if f.meta["dataset"] == ds  # lessons/ holds others; the BN
                and f.path.parent == ROOT / "checkpoints" / ds  # fixes beside the paper's set
                and f.meta["config"].get("norm", "bn") == "bn")  # (test_bn_fixes.py)
        assert n == len(PAPER_SET), f"{ds}: {n} checkpoints, expected {len(PAPER_SET)}"
    size = sum(p.stat().st_size for p in (ROOT / "checkpoints").rglob("*") if p.is_file())
    assert size < 30e6, f"checkpoints/ is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("path", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_checkpoints_load_and_match_their_results(path):
    results = load_results(path)
    for key, entry in results["runs"].items():
        model, meta = load_checkpoint(ROOT / entry["checkpoint"])
        assert meta["weights_sha256"] == entry["weights_sha256"], key
        assert TrainConfig.from_dict(meta["config"]).resolved().run_name()


@pytest.mark.parametrize("dataset", ["moons", "digits"])
def test_committed_metadata_regenerates_its_checkpoint(dataset):
    """A shipped checkpoint's metadata is enough to train it again (``assert_regenerates``)."""
    meta_path = next((ROOT / "checkpoints" / dataset).glob("*natural*/model.json"))
    model, meta = load_checkpoint(meta_path.parent)
    again = train(TrainConfig.from_dict(meta["config"]))
    print(assert_regenerates(meta_path.parent, model, again, dataset))


# One shipped adversarial run per shaping mode, both adversarial objectives: the crafting
# and loss units of objectives.py keep the arithmetic of the trainer, bit for bit on the
# processor that trained them (``assert_regenerates``; moons: about 3 s each).
@pytest.mark.parametrize("run", ["moons-mlp-pgd-adv-only-eps0.12-s0",
                                 "moons-mlp-trades-shape-train-r1-3-eps0.12-nokl-s0",
                                 "moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-s0"])
def test_committed_adversarial_metadata_regenerates_its_checkpoint(run):
    folder = ROOT / "checkpoints" / "moons" / run
    model, meta = load_checkpoint(folder)
    again = train(TrainConfig.from_dict(meta["config"]))
    print(assert_regenerates(folder, model, again, run))


def test_reproduction_md_tables_match_the_results_files():
    text = (ROOT / "REPRODUCTION.md").read_text()
    assert COMMITTED
    for path in COMMITTED:
        section = dataset_section(load_results(path))
        assert section in text, (f"REPRODUCTION.md is out of date for {path.parent.name}: "
                                 f"regenerate with python -m normshape_core report")
    summary = summary_markdown([load_results(p) for p in COMMITTED])
    assert summary in text, "REPRODUCTION.md's summary is out of date: run report"


def test_table_iv_worst_case_budget_zero_skips_it_and_none_takes_every_sample():
    """``--table-iv-worst-n-test 0`` skips Table IV's worst case (it once meant 'every
    sample': 0 read as unset); unset: the dataset's default."""
    from normshape_core.studies.reproduce import REPRO_N_TEST, REPRO_WORST, worst_n

    assert worst_n("digits", table_iv=True, budget={"table_iv_n_test": 0}) == 0
    assert worst_n("digits", table_iv=True, budget={"table_iv_n_test": 50}) == 50
    default = REPRO_WORST.get("digits", {}).get("table_iv_n_test")
    assert worst_n("digits", table_iv=True) == min(REPRO_N_TEST["digits"],
                                                   default or REPRO_N_TEST["digits"])
