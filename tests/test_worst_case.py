"""Worst case per sample (AutoAttack's protocol) through the defender's own norms: the
number equals the defender's re-check of the returned examples, is never above its members,
and the warnings that guard it can fire."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.attacks import make_attack
from normshape_core.training.checkpoints import load_checkpoint
from normshape_core.blocks.data import load_dataset
from normshape_core.measuring.evaluation import (WORST, evaluate, sanity_warnings, split_attacks,
                                                 table_worst_case)
from normshape_core.settings.config import ConfigError
from normshape_core.inference.shaping import (BNClassifier, PNClassifier, ShapedClassifier,
                                              make_reference_pool)
from normshape_core.measuring.worst_case import (ENSEMBLES, PinnedRowsView, ensemble_members,
                                                 worst_case)

ROOT = Path(__file__).resolve().parents[1]
DIGITS_SHAPED = ROOT / "checkpoints/digits/digits-small_cnn-pgd-shape-attack-train-r1-3-eps0.3-s0"
MOONS_SHAPED = ROOT / "checkpoints/moons/moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-s0"


@pytest.fixture(scope="module")
def digits_shaped():
    model, meta = load_checkpoint(DIGITS_SHAPED, "cpu")
    data = load_dataset("digits", seed=meta["config"]["seed"])
    return model, data, float(meta["config"]["eps"])


def _shaped(model, data, **kw):
    return ShapedClassifier(model, make_reference_pool(data, 1000, 0), "1:9", None, **kw)


def test_shipped_digits_shaped_worst_case_is_below_adaptive_pgd_and_is_the_defenders_verdict(
        digits_shaped):
    model, data, eps = digits_shaped
    x, y = data.x_test[:60], data.y_test[:60]
    defender = _shaped(model, data)
    adaptive = make_attack("adaptive_exact", eps=eps, steps=20)
    adv_pgd = adaptive(defender, x, y)
    with torch.no_grad():
        pgd_robust = float((defender(adv_pgd).argmax(1) == y).float().mean())
    members = [make_attack(a, eps=eps, steps=30, n_queries=100, n_target_classes=3)
               for a in ensemble_members("autoattack")]
    res = worst_case(defender, members, x, y, eps=eps)
    worst = float(res.robust.float().mean())
    assert worst <= pgd_robust
    # the reported verdict is the bookkeeping, and a fresh defender (same pool, same seed)
    # classifying the returned examples as one call agrees row for row
    assert torch.equal(res.robust, res.bookkept)
    fresh = _shaped(model, data)
    with torch.no_grad():
        again = fresh(res.x_adv).argmax(1) == y
    assert torch.equal(again, res.robust)
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-6
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    # every stage only attacked samples that were still robust
    right = int(res.clean_right.sum())
    for st in res.stages:
        assert st.attempted <= right
        right = st.robust_after


@pytest.mark.parametrize("kind", ["pn", "bn", "shaped"])
def test_worst_case_never_above_its_first_attack_and_leaves_running_stats(digits_shaped, kind):
    model, data, eps = digits_shaped
    x, y = data.x_test[:40], data.y_test[:40]
    defender = {"pn": PNClassifier(model), "bn": BNClassifier(model),
                "shaped": _shaped(model, data)}[kind]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd = make_attack("pgd", eps=eps / 2, steps=10)
    from normshape_core.measuring.worst_case import defender_view

    view = defender_view(defender, len(x))
    x_pgd = pgd.craft(view, x, y)[0]
    with torch.no_grad():
        alone = float((view(x_pgd).argmax(1) == y).float().mean())
    res = worst_case(defender, [make_attack("pgd", eps=eps / 2, steps=10),
                                make_attack("fgsm", eps=eps / 2)], x, y, eps=eps / 2)
    assert float(res.robust.float().mean()) <= alone + 1e-9
    assert torch.equal(res.robust, res.bookkept)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pinned_rows_view_gives_the_full_batch_logits_and_gradients_to_free_rows_only(
        digits_shaped):
    model, data, _ = digits_shaped
    x = data.x_test[:20]
    view = _shaped(model, data).with_exact_references(20)
    free = torch.tensor([1, 4, 7])
    pinned = PinnedRowsView(view, x, free)
    z = x[free].clone().requires_grad_(True)
    out = pinned(z)
    with torch.no_grad():
        full = view(x)[free]
    assert torch.allclose(out, full, atol=1e-5)
    out.sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_restricted_shaped_view_keeps_each_groups_logits(digits_shaped):
    model, data, _ = digits_shaped
    x = data.x_test[:47]  # 4 full groups of 10 and a tail of 7
    view = _shaped(model, data).with_exact_references(47)
    groups = view.row_groups()
    assert groups.tolist() == [i // 10 for i in range(47)]
    keep = torch.tensor([1, 4])
    sub = view.restricted(keep)
    rows = torch.isin(groups, keep).nonzero().squeeze(1)
    with torch.no_grad():
        assert torch.allclose(sub(x[rows]), view(x)[rows], atol=1e-5)


def test_ensembles_by_name_and_bad_names():
    assert ensemble_members("autoattack")[0] == "apgd"
    assert set(ensemble_members("autoattack")) <= set(ENSEMBLES["autoattack"])
    assert ensemble_members("paper") == ["pgd", "cw", "fgsm", "deepfool", "shaping"]
    singles, ens = split_attacks("pgd,autoattack,apgd+fgsm")
    assert singles == ["pgd"] and ens == ["autoattack", "apgd+fgsm"]
    for bad in ("autoatack", "pgd+nonsense", ""):
        with pytest.raises(ConfigError):
            split_attacks(bad)


def test_evaluate_rows_name_their_norms_and_the_paper_ensemble_is_projected(moons):
    from _trained import natural_mlp

    model = natural_mlp()
    df = evaluate(model, moons, ["pgd"], ["pn", "shaped:1:9"], ensembles=["paper"], eps=0.1,
                  n_test=100, steps=10, cw_steps=20, square_queries=50)
    worst = df[df["attack"] == WORST]
    assert set(worst["classified_with"]) == {"PN", "shaped 1:9 (g=10)"}
    assert set(worst["crafted_with"]) == {"PN", "BN (exact refs)"}
    assert worst["ensemble"].str.startswith("paper").all()
    members = df[df["ensemble"].notna() & (df["attack"] != WORST)]
    assert set(members["attack"]) == {"pgd", "cw", "fgsm", "deepfool", "shaping"}
    # the unbounded C&W and DeepFool take part projected into the eps-ball: the worst case
    # stays an eps-bounded number (a natural moons MLP at eps 0.1 is not broken everywhere)
    for _, w in worst.iterrows():
        mem = members[members["classified_with"] == w["classified_with"]]
        assert w["robust_acc"] <= float(mem["robust_acc"].min()) + 1e-9
        assert w["robust_acc"] > 0.05
    table = table_worst_case(df)
    assert "PGD-20 crafted with PN (paper)" in table.columns


def _df(rows):
    from normshape_core.measuring.evaluation import _df_from_rows

    base = dict(ratio=None, group_size=None, clean_acc=1.0, n=100, eps=0.1, seconds=0.0,
                median_l2=float("nan"), randomized=False)
    return _df_from_rows([{**base, **r} for r in rows])


def test_warnings_fire_black_box_beats_white_box_and_worst_far_below_single():
    ens = "autoattack: apgd, apgd_t, square"
    df = _df([
        dict(attack="pgd", crafted_with="PN", classified_with="PN", robust_acc=0.60,
             ensemble=None, broken=None),
        dict(attack="apgd", crafted_with="PN", classified_with="PN", robust_acc=0.50,
             ensemble=ens, broken=50),
        dict(attack="apgd_t", crafted_with="PN", classified_with="PN", robust_acc=0.45,
             ensemble=ens, broken=5),
        dict(attack="square", crafted_with="PN", classified_with="PN", robust_acc=0.30,
             ensemble=ens, broken=15),
        dict(attack=WORST, crafted_with="PN", classified_with="PN", robust_acc=0.30,
             ensemble=ens, broken=None)])
    w = sanity_warnings(df)
    assert any("black-box square broke 15" in x and "gradient masking" in x for x in w)
    assert any("30.0 points below the strongest single attack" in x for x in w)
    # and stay quiet when nothing is wrong
    quiet = df.copy()
    quiet.loc[quiet["attack"] == "square", "broken"] = 0
    quiet.loc[quiet["attack"] == "pgd", "robust_acc"] = 0.31
    assert not [x for x in sanity_warnings(quiet) if "black-box" in x or "points below" in x]


def test_randomness_between_calls_is_detected(moons):
    from _trained import natural_mlp

    df = evaluate(natural_mlp(), moons, [], ["shaped:1:9"], ensembles=["apgd"], eps=0.1,
                  n_test=50, apgd_steps=5, fresh_references=True)
    assert any("two calls on the same inputs" in w for w in df.attrs["warnings"])
    df = evaluate(natural_mlp(), moons, [], ["shaped:1:9"], ensembles=["apgd"], eps=0.1,
                  n_test=50, apgd_steps=5)
    assert not any("two calls on the same inputs" in w for w in df.attrs["warnings"])


def test_eps_sweep_warns_when_robustness_does_not_fall(moons, monkeypatch):
    from _trained import natural_mlp
    from normshape_core.measuring import evaluation as ev

    table, warnings = ev.eps_sweep(natural_mlp(), moons, "apgd", ["pn"], eps=0.05, n=50,
                                   apgd_steps=5)
    accs = list(table["robust acc"])
    assert accs == sorted(accs, reverse=True) and not warnings
    # an attack that gets weaker with eps (a broken attack) is caught
    real = ev.evaluate

    def broken(model, data, singles, classify, *, eps, **kw):
        df = real(model, data, singles, classify, eps=eps, **kw)
        df["robust_acc"] = eps  # grows with eps
        return df

    monkeypatch.setattr(ev, "evaluate", broken)
    _, warnings = ev.eps_sweep(natural_mlp(), moons, "apgd", ["pn"], eps=0.05, n=50,
                               apgd_steps=5, factors=(1, 2, 20))
    assert any("rises from" in w for w in warnings)
    assert any("above chance" in w for w in warnings)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "normshape_core", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def test_cli_evaluate_default_ensemble_json_rows_carry_intervals(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(MOONS_SHAPED, ckpt)
    out = tmp_path / "out.json"
    r = _cli("evaluate", ckpt, "--attacks", "default", "--classify", "pn,shaped:1:9",
             "--json", out, "--n-test", "100", "--apgd-steps", "10", "--square-queries", "30",
             "--apgd-restarts", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    worst = [x for x in rows if x["attack"] == WORST]
    assert {w["classified_with"] for w in worst} == {"PN", "shaped 1:9 (g=10)"}
    shaped = [x for x in rows if x["attack"] != WORST and x["classified_with"] != "PN"]
    assert [m["attack"] for m in shaped] == ensemble_members("default")
    pn = [x for x in rows if x["attack"] != WORST and x["classified_with"] == "PN"]
    assert "transfer" not in {m["attack"] for m in pn}  # no other norms to transfer from
    assert all(x["crafted_with"] and x["classified_with"] for x in rows)
    for x in rows:  # every accuracy with its interval, its n, and the outcomes behind it
        lo, hi = x["robust_ci"]
        assert lo <= x["robust_acc"] <= hi and x["n"] == 100
        assert x["interval"].startswith("95 % Clopper-Pearson")
        assert len(x["robust_mask"]) == 25
    assert "worst case per sample" in r.stdout and "re-checked by the defender" in r.stdout
    assert "Clopper-Pearson" in r.stdout
    assert "<= " in r.stderr and "to go" not in r.stderr.splitlines()[-1]  # bound lines


@pytest.mark.parametrize("args", [
    ["--attacks", "autoatack"], ["--attacks", "pgd+nothing"], ["--attacks", ","],
    ["--steps", "0"], ["--steps", "-3"], ["--restarts", "0"], ["--square-queries", "0"],
    ["--apgd-steps", "0"], ["--target-classes", "0"], ["--eps", "nan"], ["--eps", "inf"],
    ["--eps", "-1"], ["--eps", "1e400"], ["--eot-draws", "0"], ["--seed", "-1"],
    ["--json", "/nonexistent-folder/x.json"]])
def test_cli_evaluate_bad_input_exits_2_with_one_line(args):
    r = _cli("evaluate", MOONS_SHAPED, "--no-cache", "--n-test", "10", *args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["--attack", "autoatack"], ["--attack", "pgd,apgd"],
                                  ["--attack", "adaptive"], ["--steps", "0"],
                                  ["--square-queries", "0"], ["--eps", "nan"]])
def test_cli_grid_bad_input_exits_2_with_one_line(args):
    r = _cli("grid", MOONS_SHAPED, "--no-cache", "--n-test", "10", *args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["--worst-case", "nonsense"], ["--steps", "0"],
                                  ["--eps", "inf"], ["--n", "0"]])
def test_cli_diagnose_bad_input_exits_2_with_one_line(args):
    r = _cli("diagnose", MOONS_SHAPED, *args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
