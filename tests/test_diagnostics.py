"""Diagnostics of the BN confoundings: moving target, logit error, perturbation size."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

import _trained as T
from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.training.checkpoints import save_checkpoint
from normshape_core.settings.config import ConfigError, TrainConfig
from normshape_core.cli.diagnose import add_diagnose_args, cli_diagnose
from normshape_core.measuring.diagnostics import (_batch_stats, logit_error_experiment,
                                                  moving_target, perturbation_experiment,
                                                  population_stats_from)
from normshape_core.blocks.norms import NormMode, forward_with, running_stats

CASES = {  # name: (model, dataset, eps)
    "moons-shaped-mlp": (T.shaped_mlp, T.moons, T.MOONS_EPS),
    "digits-cnn": (T.natural_cnn, T.digits, T.DIGITS_EPS),
}


def _batch(dataset, n=128):
    d = dataset()
    return d.x_train[:n], d.y_train[:n]


@pytest.mark.parametrize("case", list(CASES))
def test_shaped_batch_damps_the_moving_target(case):
    make_model, dataset, eps = CASES[case]
    model = make_model()
    x, y = _batch(dataset)
    before = running_stats(model)
    plain = moving_target(model, x, y, "1:0", eps=eps, steps=8)
    shaped = moving_target(model, x, y, "1:3", eps=eps, steps=8)
    after = running_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    a, b = plain.summary(), shaped.summary()
    assert b["step_drift_mean"] < a["step_drift_mean"], (
        f"{case}: BN mean moves {b['step_drift_mean']:.4f} per step in a 1:3 batch vs "
        f"{a['step_drift_mean']:.4f} in a 1:0 batch")
    assert b["final_distance_to_clean_mean"] < a["final_distance_to_clean_mean"], (
        f"{case}: after 8 steps the 1:3 batch's BN mean is {b['final_distance_to_clean_mean']:.4f}"
        f" from the clean batch's, the 1:0 batch's {a['final_distance_to_clean_mean']:.4f}")


def test_moving_target_trace_layout():
    model, x, y = T.shaped_mlp(), *_batch(T.moons, 64)
    tr = moving_target(model, x, y, "1:3", eps=T.MOONS_EPS, steps=5)
    assert tr.n_adv == 16 and tr.n_clean == 48
    assert set(tr.frame["step"]) == set(range(6))
    assert tr.frame["layer"].nunique() == 3  # the MLP's three BN layers
    for col in ("distance_to_clean_mean", "distance_to_clean_var", "distance_to_pn_mean",
                "distance_to_pn_var", "step_change_mean", "step_change_var"):
        assert col in tr.frame
    assert (tr.frame.loc[tr.frame["step"] == 0, "distance_to_clean_mean"] == 0).all()
    assert tr.points.shape == (6, 16, 2)  # per-step adversarial points for 2-D path plots
    assert (tr.points - x[48:]).abs().max() <= T.MOONS_EPS + 1e-6
    d = json.loads(json.dumps(tr.to_dict()))
    assert len(d["points"]) == 6 and d["summary"]["step_drift_mean"] > 0


def test_population_stats_from_reproduces_a_frozen_bn_forward():
    """Classifying a batch with given statistics is exact: its own ones = frozen BN."""
    model = T.natural_cnn()
    x, _ = _batch(T.digits, 64)
    before = running_stats(model)
    with torch.no_grad(), population_stats_from(model, _batch_stats(model, x)):
        out = model(x)
    assert torch.allclose(out, forward_with(model, x, NormMode.FROZEN_BN), atol=1e-4, rtol=0)
    after = running_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_logit_error_experiment():
    """Confounding II on the natural MLP: FGSM examples look further from their clean
    versions under the clean batch's BN than under their own (paper: +63%)."""
    model, x, y = T.natural_mlp(), *_batch(T.moons)
    r = logit_error_experiment(model, x, y, eps=T.MOONS_EPS / 4)
    assert r.n == 128 and r.error_with_clean_bn > 0 and r.error_with_adv_bn > 0
    assert r.relative_difference == pytest.approx(r.error_with_clean_bn / r.error_with_adv_bn - 1)
    assert r.relative_difference > 0, r.to_dict()
    json.dumps(r.to_dict())


def test_perturbation_experiment():
    """Confounding III: PGD with constant PN follows a straighter path than PGD through the
    adversarial batch's own, moving, statistics (natural MLP on moons)."""
    model, x, y = T.natural_mlp(), *_batch(T.moons)
    r = perturbation_experiment(model, x, y, eps=T.MOONS_EPS, steps=10)
    assert set(r.modes) == {"PN", "BN", "shaping 1:3 (BN)"}
    for name, m in r.modes.items():
        assert m["mean_linf"] <= T.MOONS_EPS + 1e-6
        assert 0 < m["straightness"] <= 1 + 1e-6, name
    assert r.pn_vs_bn == pytest.approx(r.modes["PN"]["mean_l2"] / r.modes["BN"]["mean_l2"] - 1)
    assert r.modes["PN"]["straightness"] > r.modes["BN"]["straightness"], r.to_dict()
    json.dumps(r.to_dict())


def _save(tmp_path):
    cfg = TrainConfig(dataset="moons", model="mlp", method="pgd", shaping="attack+train",
                      ratio="1:3", eps=T.MOONS_EPS, step_size=T.MOONS_EPS / 4, steps=5, seed=0)
    meta = {"config": cfg.to_dict(), "run_name": "shaped", "dataset": "moons",
            "input_shape": [2], "num_classes": 2}
    save_checkpoint(tmp_path / "shaped", T.shaped_mlp(), meta)
    return tmp_path / "shaped"


def test_cli_diagnose_writes_json(tmp_path, capsys):
    ckpt = _save(tmp_path)
    out = tmp_path / "diag.json"
    args = add_diagnose_args(argparse.ArgumentParser()).parse_args(
        [str(ckpt), "--json", str(out), "--n", "64"])
    assert cli_diagnose(args) == 0
    d = json.loads(out.read_text())
    assert set(d["moving_target"]) == {"1:0", "1:3"}
    assert {"confounding_ii", "confounding_iii"} <= set(d)
    assert "moving target 1:3" in capsys.readouterr().out
    bad = add_diagnose_args(argparse.ArgumentParser()).parse_args(
        [str(ckpt), "--ratios", "1:0,3:1:2"])
    with pytest.raises(ConfigError):
        cli_diagnose(bad)


def test_cli_diagnose_prints_n_a_for_an_undefined_ratio_never_nan(tmp_path, capsys,
                                                                   monkeypatch):
    """A relative difference whose base is zero (no logit error with the batch's own BN, a
    PGD that never moved) is undefined: printed as n/a, never "+nan%"."""
    from normshape_core.cli import diagnose as D

    real = D.diagnose_checkpoint

    def undefined(*a, **kw):
        out, ds = real(*a, **kw)
        out["confounding_ii"].update(error_with_adv_bn=0.0, relative_difference=float("nan"))
        out["confounding_iii"].update(pn_vs_bn=float("nan"), shaping_vs_bn=float("inf"))
        for mode in out["confounding_iii"]["modes"].values():
            mode["mean_l2"] = float("nan")
        return out, ds

    monkeypatch.setattr(D, "diagnose_checkpoint", undefined)
    args = add_diagnose_args(argparse.ArgumentParser()).parse_args(
        [str(_save(tmp_path)), "--n", "16", "--steps", "2", "--worst-case", "none"])
    assert cli_diagnose(args) == 0
    text = capsys.readouterr().out
    assert "nan" not in text.lower() and "inf%" not in text, text
    assert text.count("n/a (undefined") == 3 and "confounding II" in text
