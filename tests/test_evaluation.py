"""Evaluation: rows that name crafting and inference norms, paper-like tables, honest
warnings, the results cache and the CLI functions."""
from __future__ import annotations

import argparse
import copy
import json
import math

import pandas as pd
import pytest
import torch

import _trained as T
from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.training.checkpoints import save_checkpoint
from normshape_core.settings.config import ConfigError, TrainConfig
from normshape_core.cli.evaluate import add_evaluate_args, add_grid_args, cli_evaluate, cli_grid
from normshape_core.measuring.evaluation import (ROW_KEYS, cache_path_for, evaluate,
                                                 evaluate_checkpoint, sanity_warnings, table_iii,
                                                 table_iv, table_like_paper)
from normshape_core.blocks.norms import bn_modules, running_stats

EPS = T.MOONS_EPS


@pytest.fixture(scope="module")
def shaped_eval():
    """PGD + shaping (attack + train) MLP on moons, the paper's evaluation layout."""
    model = T.shaped_mlp()
    before = running_stats(model)
    df = evaluate(model, T.moons(), attacks="fgsm,pgd,shaping,adaptive",
                  classify="pn,bn,shaped:1:9", n_test=300, eps=EPS, steps=20, eot_draws=2)
    after = running_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    return df


def test_rows_name_crafting_and_inference_norms(shaped_eval):
    df = shaped_eval
    assert list(df.columns) == list(ROW_KEYS)
    # PN-crafted examples are classified with PN, BN and shaped inference (Tables I/II)
    for attack in ("fgsm", "pgd"):
        rows = df[df["attack"] == attack]
        assert set(rows["crafted_with"]) == {"PN"}
        assert list(rows["classified_with"]) == ["PN", "BN", "shaped 1:9 (g=10)"]
    assert set(df.loc[df["attack"] == "shaping", "crafted_with"]) == {"shaping 1:3 (BN)"}
    # adaptive attacks are classified only by the shaped classifier they target
    adaptive = df[df["attack"].str.startswith("adaptive")]
    assert set(adaptive["classified_with"]) == {"shaped 1:9 (g=10)"}
    assert set(adaptive["crafted_with"]) == {"BN (exact refs)", "BN (own refs, EOT 2)"}
    # clean accuracy is the classifier's own, the same on every row of that classifier
    assert df.groupby("classified_with")["clean_acc"].nunique().max() == 1
    assert (df["n"] == 300).all() and (df["eps"] == EPS).all()
    shaped = df[df["classified_with"] == "shaped 1:9 (g=10)"]
    assert (shaped["ratio"] == "1:9").all() and (shaped["group_size"] == 10).all()
    assert df.loc[df["classified_with"] == "PN", "ratio"].isna().all()
    assert (df["robust_acc"] <= df["clean_acc"] + 1e-9).all()


def test_adaptive_attack_with_exact_references_is_at_least_as_strong(shaped_eval):
    df = shaped_eval.set_index(["attack", "classified_with"])
    pn_crafted = df.loc[("pgd", "shaped 1:9 (g=10)"), "robust_acc"]
    adaptive = df.loc[("adaptive_exact", "shaped 1:9 (g=10)"), "robust_acc"]
    assert adaptive <= pn_crafted, f"adaptive (exact refs) {adaptive:.3f} > PN-crafted " \
                                   f"PGD {pn_crafted:.3f} under shaped inference 1:9"


def test_gap_warning_on_a_model_with_polluted_population_norms():
    """The paper's PN column: running statistics that are not those of clean data. Crafting
    with PN then transfers badly to shaped inference; the adaptive attack does not."""
    model = copy.deepcopy(T.shaped_mlp())
    for bn in bn_modules(model):  # what attack steps updating moving averages can do
        bn.running_mean += 3 * bn.running_var.sqrt()
        bn.running_var *= 9
    df = evaluate(model, T.moons(), attacks="pgd,adaptive_exact", classify="shaped:1:9",
                  n_test=200, eps=EPS, steps=10)
    warnings = df.attrs["warnings"]
    assert any("overstates robustness" in w for w in warnings), warnings
    assert any("zero input gradient" in w for w in warnings), warnings


def _rows(*specs):
    keys = ["attack", "crafted_with", "classified_with", "ratio", "robust_acc", "eps",
            "randomized"]
    return pd.DataFrame([dict(zip(keys, s)) for s in specs])


def test_sanity_warning_logic():
    s9 = "shaped 1:9 (g=10)"
    base = [("pgd", "PN", s9, "1:9", 0.80, 0.1, False),
            ("adaptive_exact", "BN (exact refs)", s9, "1:9", 0.50, 0.1, False)]
    warns = sanity_warnings(_rows(*base), gap_threshold=0.10)
    assert len(warns) == 1 and "gap of 0.300" in warns[0]
    assert sanity_warnings(_rows(*base), gap_threshold=0.35) == []
    close = [base[0], ("adaptive_exact", "BN (exact refs)", s9, "1:9", 0.75, 0.1, False)]
    assert sanity_warnings(_rows(*close)) == []
    randomised = sanity_warnings(_rows(("pgd", "PN", s9, "1:9", 0.8, 0.1, True)))
    assert len(randomised) == 1 and "randomised" in randomised[0]
    zero = sanity_warnings(_rows(*close), zero_gradients={"PN": 0.25, "BN": 0.0})
    assert len(zero) == 1 and "25.0%" in zero[0]
    stuck = sanity_warnings(_rows(("fgsm", "PN", "PN", None, 0.40, 0.1, False),
                                  ("pgd", "PN", "PN", None, 0.55, 0.1, False)))
    assert len(stuck) == 1 and "weaker than FGSM" in stuck[0]


def test_tables_like_the_paper(shaped_eval):
    t1 = table_like_paper(shaped_eval)
    assert list(t1.columns.get_level_values(0).unique()) == ["PN", "BN", "shaped 1:9 (g=10)"]
    assert list(t1.columns.get_level_values(1)[:2]) == ["Acc", "R.Acc"]
    assert ("pgd", "PN") in t1.index and ("shaping", "shaping 1:3 (BN)") in t1.index
    assert not any(a.startswith("adaptive") for a, _ in t1.index)
    t3 = table_iii({"PGD+Shaping": shaped_eval})
    assert t3.shape == (3, 1) and t3.notna().all().all()
    other = shaped_eval.copy()
    other["ratio"] = other["ratio"].replace({"1:9": "1:3"})
    t4 = table_iv({"1:3": shaped_eval, "1:7": other})
    assert list(t4.index) == ["1:3", "1:7"] and list(t4.columns) == ["1:3", "1:9"]
    assert t4.loc["1:3", "1:9"] == pytest.approx(
        shaped_eval.query("attack == 'pgd' and ratio == '1:9'")["robust_acc"].item())


# ---------------------------------------------------------------------- checkpoints + CLI
def _save(tmp_path, name, model, ratio="1:3", dataset="moons", shaping="attack+train"):
    cfg = TrainConfig(dataset=dataset, model="mlp", method="pgd", shaping=shaping, ratio=ratio,
                      eps=EPS, steps=5, seed=0)
    meta = {"config": cfg.to_dict(), "run_name": name, "dataset": dataset, "input_shape": [2],
            "num_classes": 2}
    save_checkpoint(tmp_path / name, model, meta)
    return tmp_path / name


def _parse(add, argv):
    return add(argparse.ArgumentParser()).parse_args(argv)


def test_results_cache_beside_the_checkpoint(tmp_path):
    ckpt = _save(tmp_path, "shaped", T.shaped_mlp())
    kw = dict(attacks=["fgsm"], classify=["pn", "shaped:1:3"], n_test=100)
    df1, meta = evaluate_checkpoint(ckpt, **kw)
    assert df1.attrs["cached"] is False and (df1["eps"] == EPS).all()  # the training eps
    cache = cache_path_for(ckpt)
    assert cache.exists() and not list(cache.parent.glob("*.tmp"))
    df2, _ = evaluate_checkpoint(ckpt, **kw)
    assert df2.attrs["cached"] is True
    pd.testing.assert_frame_equal(df1.drop(columns="seconds"), df2.drop(columns="seconds"))
    df3, _ = evaluate_checkpoint(ckpt, **{**kw, "n_test": 50})  # other settings: recomputed
    assert df3.attrs["cached"] is False and (df3["n"] == 50).all()
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 2
    assert all(e["weights_sha256"] == meta["weights_sha256"] for e in entries.values())


def test_cli_evaluate_writes_json_rows(tmp_path, capsys):
    ckpt = _save(tmp_path, "shaped", T.shaped_mlp())
    out = tmp_path / "rows.json"
    args = _parse(add_evaluate_args, [str(ckpt), "--attacks", "fgsm,adaptive_exact",
                                      "--classify", "pn,shaped:1:9", "--n-test", "60",
                                      "--json", str(out), "--steps", "5", "--no-cache"])
    assert cli_evaluate(args) == 0
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 3
    for r in rows:
        assert {"attack", "crafted_with", "classified_with", "ratio", "clean_acc", "robust_acc",
                "n"} <= set(r)
    printed = capsys.readouterr().out
    assert "R.Acc" in printed and "exact refs" in printed


@pytest.mark.parametrize("argv,needle", [
    (["--attacks", "pgd,nope"], "nope"),
    (["--classify", "pn,shaped:3:1:2"], "3:1:2"),
    (["--dataset", "digits"], "digits"),
    (["--n-test", "5000"], "5000"),
])
def test_cli_evaluate_rejects_invalid_input_in_one_line(tmp_path, argv, needle):
    ckpt = _save(tmp_path, "shaped", T.shaped_mlp())
    args = _parse(add_evaluate_args, [str(ckpt), "--attacks", "fgsm", "--no-cache"] + argv)
    with pytest.raises(ConfigError) as e:
        cli_evaluate(args)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_cli_grid_rows_per_training_ratio(tmp_path, capsys):
    a = _save(tmp_path, "r13", T.shaped_mlp(), ratio="1:3")
    b = _save(tmp_path, "adv", T.pgd_mlp(), shaping="none")
    out = tmp_path / "grid.json"
    args = _parse(add_grid_args, [str(a), str(b), "--inference-ratios", "1:0,1:3",
                                  "--n-test", "60", "--steps", "5", "--json", str(out)])
    assert cli_grid(args) == 0
    rows = json.loads(out.read_text())
    assert {r["training_ratio"] for r in rows} == {"1:3", "adv only"}
    assert {r["ratio"] for r in rows} == {"1:0", "1:3"}
    assert all(0 <= r["robust_acc"] <= 1 and not math.isnan(r["robust_acc"]) for r in rows)
    assert "inference ratio" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        cli_grid(_parse(add_grid_args, [str(a), "--inference-ratios", "1:0,3:1:2"]))
