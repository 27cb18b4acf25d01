"""Inference modes: PN, BN and shaped inference (Eq. 6), exact and vectorised."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import _trained as T
from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.settings.config import ConfigError
from normshape_core.blocks.norms import NormMode, forward_with, running_stats
from normshape_core.inference.shaping import (BNClassifier, PNClassifier, ReferenceDraw,
                                              ShapedClassifier, default_group_size,
                                              make_reference_pool, parse_classifier)

EXACT = 1e-5  # float32 agreement of two computations of the same batch statistics


@pytest.fixture(scope="module")
def cnn():
    return T.natural_cnn()


@pytest.fixture(scope="module")
def pool():
    return make_reference_pool(T.digits(), 1000, seed=0)


def _x(n=120):
    d = T.digits()
    return d.x_test[:n], d.y_test[:n]


@pytest.mark.parametrize("ratio,g,n", [("1:9", 1, 37), ("1:9", 10, 203), ("1:3", 7, 50),
                                       ("1:0", 100, 203), ("2:3", 4, 30)])
def test_shaped_inference_returns_exactly_the_test_samples_logits(cnn, pool, ratio, g, n):
    x = T.digits().x_test[:n]
    out = ShapedClassifier(cnn, pool, ratio, g)(x)
    assert out.shape == (n, 10)
    assert torch.isfinite(out).all()


def test_ratio_1_0_with_one_group_is_a_plain_frozen_bn_forward(cnn, pool):
    x, _ = _x(100)
    shaped = ShapedClassifier(cnn, pool, "1:0", group_size=100)(x)
    plain = forward_with(cnn, x, NormMode.FROZEN_BN)
    assert torch.allclose(shaped, plain, atol=EXACT, rtol=0)
    assert torch.allclose(BNClassifier(cnn)(x), plain, atol=0, rtol=0)


@pytest.mark.parametrize("g", [1, 4])
def test_vectorised_groups_equal_a_per_group_loop(cnn, pool, g):
    """The vmapped forward normalises each group exactly as if it were forwarded alone."""
    x, _ = _x(22)  # 22 = 5 groups of 4 + a tail of 2 for g=4
    clf = ShapedClassifier(cnn, pool, "1:9", g, seed=3)
    draw = clf.draw_references(len(x))
    fast = clf.logits_with(x, draw)
    slow = []
    for i, idx in enumerate(draw.full):
        batch = torch.cat([pool[idx], x[i * g:(i + 1) * g]])
        slow.append(forward_with(cnn, batch, NormMode.FROZEN_BN)[-g:])
    if draw.tail is not None:
        tail = x[len(draw.full) * g:]
        slow.append(forward_with(cnn, torch.cat([pool[draw.tail], tail]),
                                 NormMode.FROZEN_BN)[-len(tail):])
    assert torch.allclose(fast, torch.cat(slow), atol=EXACT, rtol=0)


def test_per_sample_and_grouped_modes_agree(cnn):
    """g = 1 (the literal Eq. 6: 1 test sample + 9 references, BN statistics of 10 samples)
    against g = 100 (100 + 900, statistics of 1000). The per-sample batch's statistics are
    noisy, so agreement is close, not exact: measured on digits 0.95 prediction agreement at
    1:9 (0.99 at 1:49); g = 10 (the paper's batches of 100) agrees with g = 100 fully."""
    d = T.digits()
    x, y = d.x_test[:200], d.y_test[:200]
    pool = make_reference_pool(d, 1000, seed=0)
    pred = {g: ShapedClassifier(cnn, pool, "1:9", g)(x).argmax(1) for g in (1, 10, 100)}
    acc = {g: float((p == y).float().mean()) for g, p in pred.items()}
    agree_1 = float((pred[1] == pred[100]).float().mean())
    agree_10 = float((pred[10] == pred[100]).float().mean())
    assert agree_1 >= 0.90 and abs(acc[1] - acc[100]) <= 0.07, (agree_1, acc)
    assert agree_10 >= 0.98, (agree_10, acc)
    wide = {g: ShapedClassifier(cnn, pool, "1:49", g)(x).argmax(1) for g in (1, 20)}
    agree_wide = float((wide[1] == wide[20]).float().mean())
    assert agree_wide >= 0.98, agree_wide


def test_order_of_references_does_not_matter(cnn, pool):
    x, _ = _x(40)
    clf = ShapedClassifier(cnn, pool, "1:9", 4, seed=1)
    draw = clf.draw_references(len(x))
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([row[torch.randperm(len(row), generator=g)] for row in draw.full])
    shuffled = ReferenceDraw(perm, draw.tail, draw.n)
    assert not torch.equal(perm, draw.full)
    assert torch.allclose(clf.logits_with(x, draw), clf.logits_with(x, shuffled), atol=EXACT,
                          rtol=0)


def test_running_statistics_stay_bit_identical(cnn, pool):
    x, y = _x(50)
    before = running_stats(cnn)
    flags = {m: m.training for m in cnn.modules()}
    for clf in (PNClassifier(cnn), BNClassifier(cnn), ShapedClassifier(cnn, pool, "1:9", 1),
                ShapedClassifier(cnn, pool, "1:0", 25, fresh_references=True)):
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(clf(xa), y).backward()  # attacks differentiate through them too
        assert xa.grad is not None and xa.grad.abs().sum() > 0
    after = running_stats(cnn)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {m: m.training for m in cnn.modules()}
    cnn.zero_grad(set_to_none=True)


def test_fixed_references_are_deterministic_and_fresh_ones_are_not(cnn, pool):
    x, _ = _x(30)
    fixed = ShapedClassifier(cnn, pool, "1:9", 1, seed=5)
    assert not fixed.randomized
    first = fixed(x)
    assert torch.equal(fixed(x), first)
    fixed.reference_offset = 1  # the evaluation's next test batch: another fixed draw
    assert not torch.equal(fixed(x), first)
    fresh = ShapedClassifier(cnn, pool, "1:9", 1, seed=5, fresh_references=True)
    assert fresh.randomized
    exact = fresh.with_exact_references(len(x))  # what the next call will use
    a = exact(x)
    assert torch.allclose(fresh(x), a, atol=EXACT, rtol=0)
    assert not torch.allclose(fresh(x), a, atol=EXACT, rtol=0)


def test_descriptions_and_defaults(cnn, pool):
    assert PNClassifier(cnn).describe() == "PN"
    assert BNClassifier(cnn).describe() == "BN"
    assert ShapedClassifier(cnn, pool, "1:9", 1).describe() == "shaped 1:9 (g=1)"
    assert default_group_size("1:9") == 10 and default_group_size("1:0") == 100
    assert default_group_size("1:49") == 2
    assert ShapedClassifier(cnn, pool, "1:9", None).group_size == 10
    assert parse_classifier("shaped:1:3", cnn, pool, group_size=5).describe() == \
        "shaped 1:3 (g=5)"


@pytest.mark.parametrize("spec", ["shaped:3:1:2", "shaped:0:3", "foo"])
def test_invalid_inference_modes_raise_config_errors(cnn, pool, spec):
    with pytest.raises(ConfigError) as e:
        parse_classifier(spec, cnn, pool)
    assert "\n" not in str(e.value)


def test_invalid_shaped_settings_raise_config_errors(cnn, pool):
    with pytest.raises(ConfigError):
        ShapedClassifier(cnn, pool, "1:0", 1)  # a batch of one sample has no statistics
    with pytest.raises(ConfigError):
        ShapedClassifier(cnn, pool[:5], "1:9", 1)  # pool smaller than the references
    with pytest.raises(ConfigError):
        ShapedClassifier(cnn, pool, "2:3", 3)  # 3 * 3 / 2 references is not whole


def test_reference_pool_is_seeded_training_data():
    d = T.moons()
    a, b = make_reference_pool(d, 100, seed=1), make_reference_pool(d, 100, seed=1)
    c = make_reference_pool(d, 100, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    train = {tuple(r.tolist()) for r in d.x_train}
    assert all(tuple(r.tolist()) in train for r in a)
