"""Attacks: one interface, parametrized over the registry, on naturally trained models of
moons (MLP) and digits (small CNN)."""
from __future__ import annotations

import dataclasses
import functools
import inspect

import pytest
import torch

import _trained as T
from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.attacks import (ATTACKS, AdaptiveExactReferences, Attack, AttackResult,
                                    LINF, L2_MINIMAL, apgd_checkpoints, make_attack,
                                    parse_attack_names, pgd_linf)
from normshape_core.config import ConfigError
from normshape_core.norms import running_stats
from normshape_core.shaping import (BNClassifier, PNClassifier, ShapedClassifier,
                                    make_reference_pool)

# eps large enough to move most samples across the boundary of a naturally trained model
SETUP = {
    # dataset: (model, eps, n test samples)
    "moons": (T.natural_mlp, 0.15, 200),
    "digits": (T.natural_cnn, 0.2, 100),
}
STEPS = {"pgd": 20, "apgd": 50, "cw": 50, "shaping": 20, "adaptive_exact": 10,
         "adaptive_eot": 10}
SHARP_DROP = 0.4  # "lowers accuracy sharply": robust acc <= clean acc - 0.4
ORDER_TOL = 0.02  # PGD <= FGSM + tol, APGD <= PGD + tol (robust accuracy)
LINF_TOL = 1e-6


def _data(name):
    make_model, eps, n = SETUP[name]
    d = getattr(T, name)()
    return make_model(), d, d.x_test[:n], d.y_test[:n], eps


def _target_and_judge(name, model, d):
    """The classifier an attack crafts against and the one that judges its examples."""
    if name.startswith("adaptive"):
        shaped = ShapedClassifier(model, make_reference_pool(d, 500, 0), "1:3", 25)
        return shaped, shaped
    if name == "shaping":  # crafted through shaped batches of the test batch: judged with BN
        return PNClassifier(model), BNClassifier(model)
    return PNClassifier(model), PNClassifier(model)


@functools.lru_cache(maxsize=None)
def _run(name: str, dataset: str):
    model, d, x, y, eps = _data(dataset)
    before = running_stats(model)
    attack = make_attack(name, eps=eps, steps=STEPS.get(name), eot_draws=2,
                         binary_search_steps=3, reference_pool=make_reference_pool(d, 500, 99))
    target, judge = _target_and_judge(name, model, d)
    result = attack.run(target, x, y)
    after = running_stats(model)
    return attack, result, T.accuracy(judge, x, y), T.accuracy(judge, result.x_adv, y), \
        all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("dataset", list(SETUP))
@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_lowers_accuracy_sharply_within_its_threat_model(name, dataset):
    attack, res, clean, robust, stats_untouched = _run(name, dataset)
    _, _, x, y, eps = _data(dataset)
    assert isinstance(res, AttackResult) and res.attack == name
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= -LINF_TOL and res.x_adv.max() <= 1 + LINF_TOL
    if attack.threat_model == LINF:
        linf = float((res.x_adv - x).abs().max())
        assert linf <= eps + LINF_TOL, f"{name}: |delta|_inf {linf} > eps {eps}"
    else:
        assert attack.threat_model == L2_MINIMAL
        assert res.stats["median_l2"] > 0
    assert robust <= clean - SHARP_DROP, (
        f"{name} on {dataset}: accuracy {clean:.3f} -> {robust:.3f}, a drop under {SHARP_DROP}")
    assert stats_untouched, f"{name} changed running statistics"


EXPECTED_CRAFTED_WITH = {"fgsm": "PN", "pgd": "PN", "apgd": "PN", "cw": "PN", "deepfool": "PN",
                         "shaping": "shaping 1:3 (BN)", "adaptive_exact": "BN (exact refs)",
                         "adaptive_eot": "BN (own refs, EOT 2)"}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_result_records_the_norms_it_was_crafted_with(name):
    _, res, *_ = _run(name, "moons")
    assert res.crafted_with == EXPECTED_CRAFTED_WITH[name]


def test_crafting_through_bn_is_recorded_as_bn():
    model, _, x, y, eps = _data("moons")
    res = make_attack("pgd", eps=eps, steps=5).run(BNClassifier(model), x, y)
    assert res.crafted_with == "BN"


@pytest.mark.parametrize("dataset", list(SETUP))
def test_strength_order_fgsm_pgd_apgd(dataset):
    acc = {a: _run(a, dataset)[3] for a in ("fgsm", "pgd", "apgd")}
    assert acc["pgd"] <= acc["fgsm"] + ORDER_TOL, acc
    assert acc["apgd"] <= acc["pgd"] + ORDER_TOL, acc


@pytest.mark.parametrize("name", ["cw", "deepfool"])
def test_minimal_perturbation_grows_with_robustness(name):
    """Median L2 of successful perturbations: natural model < adversarially trained one."""
    d = T.moons()
    x, y = d.x_test[:200], d.y_test[:200]
    attack = make_attack(name, steps=50, binary_search_steps=3)
    weak = attack.run(PNClassifier(T.natural_mlp()), x, y).stats["median_l2"]
    strong = attack.run(PNClassifier(T.pgd_mlp()), x, y).stats["median_l2"]
    assert weak < strong, f"{name}: median L2 natural {weak:.4f} vs PGD-trained {strong:.4f}"


def test_pgd_restarts_keep_the_worst_case_per_sample():
    model, _, x, y, eps = _data("moons")
    clf = PNClassifier(model)
    one = make_attack("pgd", eps=eps, steps=10, restarts=1)(clf, x, y)
    three = make_attack("pgd", eps=eps, steps=10, restarts=3)(clf, x, y)
    with torch.no_grad():
        fooled_one = clf(one).argmax(1) != y
        fooled_three = clf(three).argmax(1) != y
    assert bool((fooled_three | ~fooled_one).all()), "a sample fooled by restart 0 was lost"
    assert fooled_three.sum() >= fooled_one.sum()


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_attack_names_parse_with_aliases_and_clear_errors():
    assert parse_attack_names("fgsm, PGD,adaptive") == ["fgsm", "pgd", "adaptive_exact",
                                                         "adaptive_eot"]
    assert parse_attack_names(["apgd-ce", "cw-l2"]) == ["apgd", "cw"]
    with pytest.raises(ConfigError) as e:
        parse_attack_names("pgd,foo")
    assert "foo" in str(e.value) and "\n" not in str(e.value)


def test_adaptive_attack_needs_a_shaped_classifier():
    model, _, x, y, eps = _data("moons")
    with pytest.raises(ConfigError):
        AdaptiveExactReferences(eps=eps).run(PNClassifier(model), x, y)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_follows_the_interface_and_docstring_template(name):
    cls = ATTACKS[name]
    assert issubclass(cls, Attack) and cls.name == name and cls.threat_model
    assert dataclasses.is_dataclass(cls.Settings)
    doc = inspect.getdoc(cls)
    for part in ("Threat model", "Settings", "Shapes"):
        assert part in doc, f"{name}'s docstring lacks {part!r}"
    assert cls().describe().startswith(name)


def test_shared_pgd_loop_keeps_its_signature():
    params = list(inspect.signature(pgd_linf).parameters)
    assert params == ["logits_fn", "x", "y", "eps", "step_size", "steps", "random_start", "loss",
                      "target_probs", "generator", "on_step"]
