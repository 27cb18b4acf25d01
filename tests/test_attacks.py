"""Attacks: one interface, parametrized over the registry, on naturally trained models of
moons (MLP) and digits (small CNN), plus small adversarially trained ones for the strength
checks. A new attack in ``ATTACKS`` is picked up by every parametrized test here."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import pytest
import torch

import _trained as T
from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.attacks import (ATTACK_ALIASES, ATTACKS, AdaptiveExactReferences, Attack,
                                    AttackResult, L2Ball, LINF, L2_MINIMAL, LinfBall,
                                    apgd_checkpoints, dlr_loss, make_attack, margin,
                                    linf_to_hyperplane, parse_attack_names, pgd_linf, project_linf,
                                    square_fraction, targeted_dlr_loss)
from normshape_core.settings.config import ConfigError
from normshape_core.blocks.models import build_model
from normshape_core.blocks.norms import running_stats
from normshape_core.inference.shaping import (BNClassifier, PNClassifier, ShapedClassifier,
                                              make_reference_pool)

# eps large enough to move most samples across the boundary of a naturally trained model
SETUP = {
    # dataset: (model, eps, n test samples)
    "moons": (T.natural_mlp, 0.15, 200),
    "digits": (T.natural_cnn, 0.2, 100),
}
# per-attack budgets for the natural models (the defaults are for real evaluations)
BUDGET = {"pgd": dict(steps=20), "apgd": dict(steps=50), "apgd_dlr": dict(steps=50),
          "apgd_t": dict(steps=20), "fab_t": dict(steps=20), "square": dict(n_queries=300),
          "cw": dict(steps=50),
          "shaping": dict(steps=20), "adaptive_exact": dict(steps=10),
          "adaptive_eot": dict(steps=10)}
COMMON = dict(eot_draws=2, binary_search_steps=3)
# tiny budgets for the interface tests (views, seeds): they check plumbing, not strength
QUICK = dict(steps=4, n_queries=30, max_iter=5, binary_search_steps=2, eot_draws=2,
             n_target_classes=2, restarts=2)
SHARP_DROP = 0.4  # "lowers accuracy sharply": robust acc <= clean acc - 0.4
ORDER_TOL = 0.02  # PGD <= FGSM + tol, APGD <= PGD + tol (robust accuracy)
PGD20_TOL = 0.01  # the stronger attacks: robust acc <= PGD-20's + tol
LINF_TOL = 1e-6
ADAPTIVE = ("adaptive_exact", "adaptive_eot")


def _data(name):
    make_model, eps, n = SETUP[name]
    d = getattr(T, name)()
    return make_model(), d, d.x_test[:n], d.y_test[:n], eps


def _attack(name, eps, pool=None, **budget):
    return make_attack(name, eps=eps, reference_pool=pool, **{**COMMON, **budget})


def _target_and_judge(name, model, d):
    """The classifier an attack crafts against and the one that judges its examples."""
    if name in ADAPTIVE:
        shaped = ShapedClassifier(model, make_reference_pool(d, 500, 0), "1:3", 25)
        return shaped, shaped
    if name == "shaping":  # crafted through shaped batches of the test batch: judged with BN
        return PNClassifier(model), BNClassifier(model)
    return PNClassifier(model), PNClassifier(model)


@functools.lru_cache(maxsize=None)
def _run(name: str, dataset: str):
    model, d, x, y, eps = _data(dataset)
    before = running_stats(model)
    attack = _attack(name, eps, make_reference_pool(d, 500, 99), **BUDGET.get(name, {}))
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


EXPECTED_CRAFTED_WITH = {"shaping": "shaping 1:3 (BN)", "adaptive_exact": "BN (exact refs)",
                         "adaptive_eot": "BN (own refs, EOT 2)"}  # every other attack: "PN"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_result_records_the_norms_it_was_crafted_with(name):
    _, res, *_ = _run(name, "moons")
    assert res.crafted_with == EXPECTED_CRAFTED_WITH.get(name, "PN")


def test_crafting_through_bn_is_recorded_as_bn():
    model, _, x, y, eps = _data("moons")
    res = make_attack("pgd", eps=eps, steps=5).run(BNClassifier(model), x, y)
    assert res.crafted_with == "BN"


@pytest.mark.parametrize("dataset", list(SETUP))
def test_strength_order_fgsm_pgd_apgd(dataset):
    acc = {a: _run(a, dataset)[3] for a in ("fgsm", "pgd", "apgd")}
    assert acc["pgd"] <= acc["fgsm"] + ORDER_TOL, acc
    assert acc["apgd"] <= acc["pgd"] + ORDER_TOL, acc


# ---------------------------------------------------------------------- strength on trained models
@functools.lru_cache(maxsize=None)
def _pgd_cnn():
    """Digits CNN, PGD-trained at eps 0.2 (about 3 s): PGD-20 leaves 0.44 of 200 samples."""
    torch.manual_seed(0)
    m = build_model("small_cnn", (1, 8, 8), 10, channels=16, hidden=64)
    return T.tiny_train(m, T.digits(), steps=100, lr=0.005, method="pgd", eps=0.2)


def _trained_case(case):
    if case == "digits-pgd-cnn-pn":
        d = T.digits()
        m = _pgd_cnn()
        return PNClassifier(m), PNClassifier(m), d.x_test[:200], d.y_test[:200], 0.2
    d = T.moons()
    m = T.shaped_mlp()
    x, y = d.x_test[:400], d.y_test[:400]
    if case == "moons-shaped-mlp-pn":
        return PNClassifier(m), PNClassifier(m), x, y, T.MOONS_EPS
    shaped = ShapedClassifier(m, make_reference_pool(d, 500, 0), "1:3", 25)
    return shaped.with_exact_references(len(x)), shaped, x, y, T.MOONS_EPS


@pytest.mark.parametrize("case", ["digits-pgd-cnn-pn", "moons-shaped-mlp-pn",
                                  "moons-shaped-mlp-exact-shaped-1:3"])
def test_stronger_attacks_beat_or_match_pgd20_on_trained_models(case):
    """APGD-T and Square everywhere, FAB-T on PN. Measured (robust accuracy): digits PN:
    PGD-20 0.440, APGD-T 0.285, Square 0.350, FAB-T 0.330; moons PN: 0.858, 0.848, 0.840,
    0.850; moons through exact shaped batches: 0.817, 0.808, 0.805 (FAB-T 0.850: its
    near-boundary examples suffer most from the coupling of rows)."""
    view, judge, x, y, eps = _trained_case(case)
    budgets = {"pgd": dict(steps=20), "apgd_t": dict(steps=20), "square": dict(n_queries=300)}
    if case.endswith("-pn"):
        budgets["fab_t"] = dict(steps=20)
    acc = {}
    for name, budget in budgets.items():
        x_adv = make_attack(name, eps=eps, **budget).craft(view, x, y)[0]
        assert float((x_adv - x).abs().max()) <= eps + LINF_TOL
        acc[name] = T.accuracy(judge, x_adv, y)
    assert acc["pgd"] < T.accuracy(judge, x, y) - 0.05, f"PGD-20 barely moves the model: {acc}"
    for name in set(budgets) - {"pgd"}:
        assert acc[name] <= acc["pgd"] + PGD20_TOL, f"{case}: {name} weaker than PGD-20: {acc}"


# ---------------------------------------------------------------------- views, seeds, plumbing
class Spy:
    """Forwards to a classifier wrapper and records the number of rows of every call."""

    def __init__(self, inner):
        self.inner, self.rows = inner, []
        self.model = inner.model
        self.rows_independent = getattr(inner, "rows_independent", False)
        self.crafting_label = inner.crafting_label

    def __call__(self, x):
        self.rows.append(len(x))
        return self.inner(x)


@functools.lru_cache(maxsize=None)
def _moons_batch():
    d = T.moons()
    return T.natural_mlp(), d, d.x_test[:64], d.y_test[:64]


def _view(kind, model, d, n):
    shaped = ShapedClassifier(model, make_reference_pool(d, 500, 0), "1:3", 8)
    return {"pn": PNClassifier(model), "bn": BNClassifier(model), "shaped": shaped,
            "exact-shaped": shaped.with_exact_references(n)}[kind], shaped


@pytest.mark.parametrize("kind", ["pn", "bn", "shaped", "exact-shaped"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_crafts_through_pn_bn_and_shaped_views(name, kind):
    """Any view works; running statistics and the model's mode stay as they were; through a
    view whose rows are coupled (BN, shaped batches) every call carries all N rows."""
    model, d, x, y = _moons_batch()
    view, shaped = _view(kind, model, d, len(x))
    if name in ADAPTIVE:  # they attack shaped inference and build their own views from it
        if kind != "shaped":
            pytest.skip("adaptive attacks target a ShapedClassifier")
        target = shaped
    else:
        target = Spy(view)
    before, training = running_stats(model), model.training
    eps = 0.15
    res = _attack(name, eps, make_reference_pool(d, 500, 99), **QUICK).run(target, x, y)
    after = running_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before), f"{name} moved running stats"
    assert model.training == training
    assert res.x_adv.shape == x.shape and torch.isfinite(res.x_adv).all()
    assert res.x_adv.min() >= -LINF_TOL and res.x_adv.max() <= 1 + LINF_TOL
    if ATTACKS[name].threat_model == LINF:
        assert float((res.x_adv - x).abs().max()) <= eps + LINF_TOL
    assert 0 <= res.stats["success_rate"] <= 1
    if isinstance(target, Spy) and not target.rows_independent and name != "shaping":
        assert set(target.rows) == {len(x)}, f"{name} forwarded a subset of coupled rows"


def test_attacks_query_only_unfooled_rows_through_row_independent_views():
    """The fast path (PN) forwards subsets and gives the same examples as the full batch."""
    d = T.moons()
    x, y = d.x_test[:400], d.y_test[:400]
    pn = PNClassifier(T.pgd_mlp())
    for name, budget in (("square", dict(n_queries=200)), ("apgd_t", dict(steps=20)),
                         ("apgd", dict(steps=20, restarts=3)), ("fab_t", dict(steps=20))):
        attack = make_attack(name, eps=T.MOONS_EPS, **budget)
        fast, full = Spy(pn), Spy(pn)
        full.rows_independent = False
        x_fast, x_full = attack(fast, x, y), attack(full, x, y)
        assert min(fast.rows) < len(x), f"{name} never used the row-independent fast path"
        assert set(full.rows) == {len(x)}
        assert torch.equal(x_fast, x_full), f"{name}: fast path and full batch disagree"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_seed_same_examples_without_touching_the_global_rng(name):
    model, d, x, y = _moons_batch()
    target = ShapedClassifier(model, make_reference_pool(d, 500, 0), "1:3", 8) \
        if name in ADAPTIVE else PNClassifier(model)
    pool = make_reference_pool(d, 500, 99)
    rng = torch.random.get_rng_state()
    a = _attack(name, 0.15, pool, seed=3, **QUICK)(target, x, y)
    b = _attack(name, 0.15, pool, seed=3, **QUICK)(target, x, y)
    assert torch.equal(a, b), f"{name} is not reproducible with a fixed seed"
    assert torch.equal(rng, torch.random.get_rng_state()), f"{name} used the global RNG"


@pytest.mark.parametrize("name", ["pgd", "square"])
def test_the_seed_matters_for_randomised_attacks(name):
    model, _, x, y = _moons_batch()
    clf = PNClassifier(model)
    a = _attack(name, 0.15, seed=0, **QUICK)(clf, x, y)
    assert not torch.equal(a, _attack(name, 0.15, seed=1, **QUICK)(clf, x, y))


@pytest.mark.parametrize("name", ["pgd", "apgd_t", "square", "deepfool"])
def test_attacks_work_inside_a_no_grad_block(name):
    """Called inside a caller's ``torch.no_grad()``, an attack still crafts: the same
    examples as outside it (gradients switched back on where it needs them), each one moved
    and fooling some rows, not the clean inputs handed back."""
    model, _, x, y = _moons_batch()
    clf = PNClassifier(model)
    outside = _attack(name, 0.15, seed=5, **QUICK)(clf, x, y)
    with torch.no_grad():
        inside = _attack(name, 0.15, seed=5, **QUICK)(clf, x, y)
        fooled = int((clf(inside).argmax(1) != y).sum()) - int((clf(x).argmax(1) != y).sum())
    assert torch.equal(inside, outside), name
    assert (inside - x).abs().amax() > 0 and fooled > 0, (name, fooled)


# ---------------------------------------------------------------------- settings
BAD_SETTINGS = [("steps", 0), ("steps", 2.5), ("restarts", 0), ("n_queries", 0),
                ("n_target_classes", 0), ("max_iter", 0), ("binary_search_steps", 0),
                ("eot_draws", 0), ("eps", math.nan), ("eps", math.inf), ("eps", -1.0),
                ("eps", 0.0), ("eps", 1.5), ("step_size", -0.1), ("p_init", 0.0),
                ("rho", 1.5), ("lr", 0.0), ("overshoot", -1.0), ("alpha_max", 0.0),
                ("eta", 0.5), ("beta", 1.5)]
BAD_CASES = [(name, f, v) for name, cls in ATTACKS.items() for f, v in BAD_SETTINGS
             if f in {fl.name for fl in dataclasses.fields(cls.Settings)}]


@pytest.mark.parametrize("name,field,value", BAD_CASES,
                         ids=[f"{n}-{f}={v}" for n, f, v in BAD_CASES])
def test_bad_settings_raise_one_line_config_errors(name, field, value):
    with pytest.raises(ConfigError) as e:
        ATTACKS[name](**{field: value})
    msg = str(e.value)
    assert field in msg and name in msg and "\n" not in msg
    if field == "eps":  # the path every call site takes
        with pytest.raises(ConfigError):
            make_attack(name, eps=value)


def test_every_attack_has_its_settings_checked():
    assert {n for n, _, _ in BAD_CASES} == set(ATTACKS)
    assert {n for n, f, _ in BAD_CASES if f == "eps"} == {
        n for n, a in ATTACKS.items() if a.threat_model == LINF}


def test_shaping_attack_rejects_a_ratio_without_one_adversarial_part():
    with pytest.raises(ConfigError):
        make_attack("shaping", ratio="2:3")


# ---------------------------------------------------------------------- losses and bookkeeping
def test_dlr_losses_on_hand_made_logits():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, -1.0],
                      [4.0, 1.0, 3.0, 0.0, -1.0]])
    y = torch.tensor([0, 2])
    # sorted logits 4, 3, 1, 0, -1: z_pi1 - z_pi3 = 3; z_pi1 - (z_pi3 + z_pi4) / 2 = 3.5
    assert torch.allclose(margin(z, y), torch.tensor([1.0, -1.0]))
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-1 / 3, 1 / 3]))
    t = torch.tensor([1, 0])
    assert torch.allclose(targeted_dlr_loss(z, y, t), torch.tensor([-3 / 3.5, 1 / 3.5]))
    # DLR is invariant to shifting and positive rescaling of the logits
    assert torch.allclose(dlr_loss(2.5 * z - 7, y), dlr_loss(z, y))
    assert torch.allclose(targeted_dlr_loss(2.5 * z - 7, y, t), targeted_dlr_loss(z, y, t))
    # 3 classes: untargeted DLR is defined, targeted DLR falls back to z_t - z_y
    z3, y3 = torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0])
    assert torch.allclose(dlr_loss(z3, y3), torch.tensor([-2 / 3]))
    assert torch.allclose(targeted_dlr_loss(z3, y3, torch.tensor([2])), torch.tensor([-3.0]))
    # 2 classes (moons, spirals): both fall back to the un-normalised margin
    z2, y2 = torch.tensor([[2.0, -1.0], [0.5, 1.5]]), torch.tensor([0, 0])
    assert torch.allclose(dlr_loss(z2, y2), torch.tensor([-3.0, 1.0]))
    assert torch.allclose(targeted_dlr_loss(z2, y2, torch.tensor([1, 1])),
                          torch.tensor([-3.0, 1.0]))


def test_fab_projection_is_the_smallest_linf_step_onto_the_hyperplane_in_the_box():
    """Against a linear program: min r s.t. |d_i| <= r, w.(p + d) = b, 0 <= p + d <= 1; where
    the box cannot reach the plane, the step goes as far towards it as the box allows."""
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        dim = 1 + trial % 9
        p = torch.rand(1, dim, generator=g, dtype=torch.float64)
        w = torch.randn(1, dim, generator=g, dtype=torch.float64)
        w[0, 0] = 0.0 if trial % 7 == 0 else w[0, 0]
        b = (w * torch.rand(1, dim, generator=g, dtype=torch.float64)).sum(1) * (
            1.5 if trial % 5 == 0 else 1.0)
        d = linf_to_hyperplane(p, w, b)[0].numpy()
        pn, wn, bn = p[0].numpy(), w[0].numpy(), float(b[0])
        assert (pn + d >= -1e-12).all() and (pn + d <= 1 + 1e-12).all()
        eye = np.eye(dim)
        lp = optimize.linprog(np.r_[np.zeros(dim), 1.0],
                              A_ub=np.r_[np.c_[eye, -np.ones(dim)], np.c_[-eye, -np.ones(dim)]],
                              b_ub=np.zeros(2 * dim), A_eq=np.r_[wn, 0.0][None],
                              b_eq=[bn - wn @ pn],
                              bounds=[(-v, 1 - v) for v in pn] + [(0, None)])
        if lp.status == 0:
            assert abs(wn @ (pn + d) - bn) < 1e-9
            assert abs(np.abs(d).max() - lp.x[-1]) < 1e-9
        else:
            need = bn - wn @ pn
            reach = np.sum(np.where(np.sign(need) * wn > 0, 1 - pn, pn) * np.abs(wn))
            assert abs(np.sign(need) * (wn @ d) - reach) < 1e-9


class ScheduledLogits:
    """A mock crafting view whose c-th call returns a margin ``schedule[c]`` for every row
    (2 classes, label 0), plus a 1e-4 term along a fresh random direction per call so that
    gradient steps move the iterates. Records the input of every call."""

    def __init__(self, schedule):
        self.schedule, self.inputs = schedule, []
        self.dirs = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def __call__(self, x):
        c = len(self.inputs)
        self.inputs.append(x.detach().clone())
        z_y = self.schedule[min(c, len(self.schedule) - 1)] + 1e-4 * (x * self.dirs[c]).sum(1)
        return torch.stack([z_y, torch.zeros_like(z_y)], 1)


NEVER_FOOLED = [5, 4, 3, 2, 1.5, 0.5, 1, 2, 3, 0.8, 2, 3, 4, 4, 4, 4]  # lowest at call 5
FOOLED = [5, 4, 3, 2, -0.5, 1, -3, 2, -4, 3, 2, 1, 4, 4, 4, 4]  # first fooled at call 4


@pytest.mark.parametrize("schedule,expected", [(NEVER_FOOLED, 5), (FOOLED, 4)],
                         ids=["lowest-margin", "first-fooled"])
@pytest.mark.parametrize("name", ["apgd", "apgd_dlr", "apgd_t", "square"])
def test_best_iterate_is_the_first_fooling_else_the_lowest_margin_one(name, schedule, expected):
    """Call 0 is the clean forward; every later call is an iterate (APGD) or a proposal
    (Square). Later iterates are worse (or, once fooled, lower but too late) and are not
    returned. (Square stops querying a sample once it is fooled.)"""
    x = torch.full((3, 2), 0.5) + torch.tensor([[0.0], [0.05], [-0.05]])
    y = torch.zeros(3, dtype=torch.long)
    fn = ScheduledLogits(schedule)
    x_adv, _ = make_attack(name, eps=0.1, steps=10, n_queries=12).craft(fn, x, y)
    assert torch.equal(x_adv, fn.inputs[expected])
    if schedule is NEVER_FOOLED or name != "square":
        assert len(fn.inputs) >= 12
        assert not torch.equal(x_adv, fn.inputs[-1])
    else:
        assert len(fn.inputs) == expected + 1


@pytest.mark.parametrize("name", ["apgd_t", "fab_t"])
def test_targeted_attacks_try_the_top_classes_other_than_the_label(name):
    assert _run(name, "digits")[1].stats["target_classes"] == 9
    assert _run(name, "moons")[1].stats["target_classes"] == 1  # C = 2: one target
    model, _, x, y, eps = _data("digits")
    res = make_attack(name, eps=eps, steps=5, n_target_classes=20).run(
        PNClassifier(model), x, y)
    assert res.stats["target_classes"] == 9  # capped at C - 1


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_square_p_schedule_halves_at_the_official_fractions():
    p = [square_fraction(0.8, i, 1000) for i in (0, 1, 2, 5, 6, 20, 21, 999)]
    assert p == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 512]


@pytest.mark.parametrize("shape", [(6,), (2, 3), (1, 4, 4), (3, 4, 5)])
def test_square_handles_vectors_images_and_other_shapes(shape):
    """[N, D] windows of features, [N, C, H, W] squares, anything else flattened."""
    w = torch.randn(math.prod(shape), 3, generator=torch.Generator().manual_seed(0))

    class Linear:
        rows_independent = True

        def __call__(self, x):
            return x.flatten(1) @ w

    x = torch.rand((40,) + shape, generator=torch.Generator().manual_seed(1))
    y = (x.flatten(1) @ w).argmax(1)
    x_adv = make_attack("square", eps=0.4, n_queries=100)(Linear(), x, y)
    assert x_adv.shape == x.shape and float((x_adv - x).abs().max()) <= 0.4 + LINF_TOL
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    assert T.accuracy(Linear(), x_adv, y) < 1.0


def test_threat_models_stay_inside_their_balls():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    far = torch.rand(16, 1, 8, 8, generator=g) * 3 - 1
    grad = torch.randn(16, 1, 8, 8, generator=g)
    linf = LinfBall(0.1)
    assert torch.equal(linf.project(far, x), project_linf(far, x, 0.1))
    lower, upper = linf.bounds(x)
    assert torch.equal(far.clamp(lower, upper), linf.project(far, x))
    for xa in (linf.random_start(x, g), linf.sphere_start(x, g),
               linf.project(linf.step(x, grad, 0.5), x)):
        assert float((xa - x).abs().max()) <= 0.1 + 1e-6 and 0 <= xa.min() and xa.max() <= 1
    l2 = L2Ball(0.5)
    for xa in (l2.random_start(x, g), l2.project(far, x), l2.project(l2.step(x, grad, 2.0), x)):
        assert float((xa - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
        assert 0 <= xa.min() and xa.max() <= 1


# ---------------------------------------------------------------------- registry and interface
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


def test_attack_names_parse_with_aliases_and_clear_errors():
    assert parse_attack_names("fgsm, PGD,adaptive") == ["fgsm", "pgd", "adaptive_exact",
                                                         "adaptive_eot"]
    assert parse_attack_names(["apgd-ce", "cw-l2"]) == ["apgd", "cw"]
    assert parse_attack_names("APGD-DLR,apgd-t,fab-t,square") == ["apgd_dlr", "apgd_t",
                                                                   "fab_t", "square"]
    assert all(k in ATTACKS for keys in ATTACK_ALIASES.values() for k in keys)
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
    for part in ("Paper", "Threat model", "Settings", "Shapes", "Example"):
        assert part in doc, f"{name}'s docstring lacks {part!r}"
    assert cls().describe().startswith(name)


def test_shared_pgd_loop_keeps_its_signature():
    params = list(inspect.signature(pgd_linf).parameters)
    assert params == ["logits_fn", "x", "y", "eps", "step_size", "steps", "random_start", "loss",
                      "target_probs", "generator", "on_step"]
