"""Intervals and paired verdicts (normshape_core.base.stats)."""
import random

import pytest

from normshape_core.base import stats


@pytest.mark.parametrize("p,n", [(0.05, 30), (0.5, 100), (0.46, 100), (0.9, 200), (0.99, 397)])
def test_the_interval_covers_the_true_accuracy_at_least_94_percent_of_the_time(p, n):
    rng = random.Random(1234)
    trials = 2000
    covered = 0
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        lo, hi = stats.clopper_pearson(k, n)
        covered += lo <= p <= hi
    assert covered / trials >= 0.94


def test_interval_edges_and_known_values():
    assert stats.clopper_pearson(0, 10)[0] == 0.0
    assert stats.clopper_pearson(10, 10)[1] == 1.0
    # 0 of 10: the upper end solves (1 - p)^10 = 0.025
    assert stats.clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** 0.1, abs=1e-9)
    lo, hi = stats.clopper_pearson(46, 100)
    assert 0.35 < lo < 0.37 and 0.56 < hi < 0.57
    # wider at n=100 than at n=1000 for the same accuracy
    assert (stats.clopper_pearson(460, 1000)[1] - stats.clopper_pearson(460, 1000)[0]
            < stats.clopper_pearson(46, 100)[1] - stats.clopper_pearson(46, 100)[0])
    with pytest.raises(ValueError):
        stats.clopper_pearson(11, 10)
    with pytest.raises(ValueError):
        stats.clopper_pearson(0, 0)


def test_proportion_text_names_n_and_the_interval():
    p = stats.Proportion.of(0.46, 100)
    assert p.k == 46
    assert p.text() == "0.460 [0.360, 0.563], n=100"
    assert "n=100" in p.short()
    assert stats.interval_text(None, 100) == ""


def test_mcnemar_exact_gives_the_known_p_value():
    # b=10, c=2: 2 * P[Binomial(12, 1/2) <= 2] = 2 * (1 + 12 + 66) / 4096
    assert stats.mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096, rel=1e-12)
    assert stats.mcnemar_exact(2, 10) == stats.mcnemar_exact(10, 2)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0


def test_paired_verdict_on_a_constructed_pair():
    # 100 samples: 80 right under both, 10 right under A only, 2 under B only, 8 under none
    a = [True] * 80 + [True] * 10 + [False] * 2 + [False] * 8
    b = [True] * 80 + [False] * 10 + [True] * 2 + [False] * 8
    v = stats.paired_verdict(a, b)
    assert (v.a_only, v.b_only, v.n) == (10, 2, 100)
    assert v.verdict == stats.HOLDS and v.p_value == pytest.approx(158 / 4096)
    assert v.diff == pytest.approx(0.08)
    assert stats.paired_verdict(b, a).verdict == stats.REVERSED
    # 3 against 1 discordant: p = 0.625, no verdict either way
    c = [True] * 3 + [False] + [True] * 6
    d = [False] * 3 + [True] + [True] * 6
    assert stats.paired_verdict(c, d).verdict == stats.INCONCLUSIVE
    assert "McNemar" in v.text() and "p = 0.039" in v.text()
    # a small p keeps one relation: "p < 0.001", never "p = < 0.001"
    e = [True] * 20 + [True] * 30
    f = [True] * 20 + [False] * 30
    small = stats.paired_verdict(e, f).text()
    assert "p < 0.001" in small and "= <" not in small, small
    with pytest.raises(ValueError):
        stats.paired_verdict([True], [True, False])


@pytest.mark.parametrize("n", [1, 3, 4, 5, 100, 397])
def test_masks_round_trip(n):
    rng = random.Random(n)
    bits = [rng.random() < 0.5 for _ in range(n)]
    text = stats.pack_mask(bits)
    assert len(text) == (n + 3) // 4
    assert stats.unpack_mask(text, n) == bits
    with pytest.raises(ValueError):
        stats.unpack_mask(text + "0", n)
