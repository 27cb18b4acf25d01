"""Reproduction: a small case end to end, determinism, the committed checkpoints, and
REPRODUCTION.md against the committed results files."""
from pathlib import Path

import pytest
import torch

from normshape_core.checkpoints import find_checkpoints, load_checkpoint
from normshape_core.config import TrainConfig
from normshape_core.reproduce import (PAPER_SET, dataset_section, evaluate_set, load_results,
                                      train_set, verdicts)
from normshape_core.training import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = [s for s in PAPER_SET if s.key in ("natural", "pgd/adv-only",
                                           "pgd/shaping-in-attack+training")]


def _small_repro(out: Path):
    runs = train_set("moons", out, specs=SMALL, overrides={"epochs": 10}, progress=False,
                     log=lambda *_: None)
    return evaluate_set(runs, "moons", n_test=400, table_attacks=["pgd"], diagnostics=False,
                        worst=dict(n_test=100, table_iv_n_test=50), log=lambda *_: None)


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
    claims = {c: v for c, v, _ in verdicts(small)}
    key = next(c for c in claims if c.startswith("clean accuracy: PGD-AT"))
    assert claims[key] == "reproduced"


def test_small_reproduction_has_the_worst_case_beside_the_paper_protocol(small):
    """Every robust number of Tables I-III also as the worst case through the classifier's
    own norms, on the same samples as a PGD-20 row, never above it; Table IV's worst case
    on its own sample count; the verdicts are re-derived on the worst case."""
    assert small["n_test_worst"] == 100 and small["n_test_table_iv_worst"] == 50
    for key in ("natural", "pgd/adv-only", "pgd/shaping-in-attack+training"):
        rows = small["runs"][key]["rows"]
        worst = [r for r in rows if r["attack"] == "worst_case" and r["n"] == 100]
        assert {w["classified_with"] for w in worst} >= {"PN", "BN", "shaped 1:9 (g=10)"}
        for w in worst:
            pgd = next(r for r in rows if r["attack"] == "pgd" and r["n"] == 100 and
                       r["crafted_with"] == "PN" and r["classified_with"] == w["classified_with"])
            assert w["robust_acc"] <= pgd["robust_acc"] + 1e-9, (key, w, pgd)
            assert w["crafted_with"] == {"PN": "PN", "BN": "BN"}.get(w["classified_with"],
                                                                    "BN (exact refs)")
    iv = [r for r in small["runs"]["pgd/shaping-in-attack+training"]["rows"]
          if r["attack"] == "worst_case" and r["n"] == 50]
    assert {r["ratio"] for r in iv} == {"1:0", "1:1", "1:3", "1:9", "1:19", "1:49"}
    claims = [c for c, _, _ in verdicts(small)]
    assert any(c.startswith("robustness, worst case per sample") for c in claims)
    assert any(c.startswith("no gradient masking") for c in claims)
    assert any(c.startswith("Table IV (worst case") for c in claims)
    text = dataset_section(small)
    assert "worst case per sample beside the paper's protocol" in text


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
    """A shipped checkpoint's metadata is enough to train it again, bit for bit."""
    meta_path = next((ROOT / "checkpoints" / dataset).glob("*natural*/model.json"))
    model, meta = load_checkpoint(meta_path.parent)
    again = train(TrainConfig.from_dict(meta["config"]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


# One shipped adversarial run per shaping mode, both adversarial objectives: the crafting
# and loss units of objectives.py keep the arithmetic of the trainer, bit for bit (moons:
# about 3 s each).
@pytest.mark.parametrize("run", ["moons-mlp-pgd-adv-only-eps0.12-s0",
                                 "moons-mlp-trades-shape-train-r1-3-eps0.12-nokl-s0",
                                 "moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-s0"])
def test_committed_adversarial_metadata_regenerates_its_checkpoint(run):
    model, meta = load_checkpoint(ROOT / "checkpoints" / "moons" / run)
    again = train(TrainConfig.from_dict(meta["config"]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), (run, k)


def test_reproduction_md_tables_match_the_results_files():
    text = (ROOT / "REPRODUCTION.md").read_text()
    assert COMMITTED
    for path in COMMITTED:
        section = dataset_section(load_results(path))
        assert section in text, (f"REPRODUCTION.md is out of date for {path.parent.name}: "
                                 f"regenerate with python -m normshape_core report")
