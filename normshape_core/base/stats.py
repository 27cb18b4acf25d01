"""Uncertainty of accuracies and paired verdicts: every accuracy the lab shows carries its n
and a 95 % interval, and a claim comparing two models on the same samples is decided by a
paired exact test.

- **Interval: Clopper-Pearson** ("exact"): the central interval from the beta quantiles of k
  successes in n trials. Its coverage is at least the nominal level for every true accuracy
  (it is conservative, never too narrow), which is what a robustness claim needs; at n = 100
  and an accuracy near 0.5 it is about +-10 points, at n = 1000 about +-3.
- **Paired verdict: exact McNemar test.** Two classifiers judged on the same samples differ
  only on the discordant samples: b right under A only, c right under B only. Under "no
  difference" b ~ Binomial(b + c, 1/2); the two-sided exact p-value is
  ``min(1, 2 * P[X <= min(b, c)])``. A claim "A above B" *holds* when A wins the discordant
  samples and p < 0.05, is *reversed* when B wins them and p < 0.05, and is *inconclusive at
  95 %* otherwise.
- **Per-sample outcomes** travel as compact hex strings (``pack_mask`` / ``unpack_mask``): a
  results row keeps which of its n samples were right, so a paired test can be computed from
  shipped results.

Pure Python + scipy; no torch, no pandas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

LEVEL = 0.95
#: how the intervals are computed, for captions and reports
INTERVAL_NAME = "95 % Clopper-Pearson interval"
ALPHA = 1.0 - LEVEL

HOLDS, REVERSED, INCONCLUSIVE = "holds", "reversed", "inconclusive at 95 %"


# ====================================================================== intervals
def clopper_pearson(k: int, n: int, level: float = LEVEL) -> Tuple[float, float]:
    """(low, high): the central Clopper-Pearson interval of k successes out of n trials."""
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n <= 0:
        raise ValueError(f"an interval needs n >= 1 trials, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"successes k={k} must lie in [0, n={n}]")
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def count_of(acc: float, n: int) -> int:
    """The number of successes behind an accuracy computed as k / n (rounded back)."""
    if n <= 0 or acc is None or not math.isfinite(float(acc)):
        raise ValueError(f"no count behind accuracy {acc!r} at n={n}")
    return int(round(float(acc) * int(n)))


@dataclass(frozen=True)
class Proportion:
    """k successes of n, with its 95 % Clopper-Pearson interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n

    @property
    def interval(self) -> Tuple[float, float]:
        return clopper_pearson(self.k, self.n)

    @property
    def low(self) -> float:
        return self.interval[0]

    @property
    def high(self) -> float:
        return self.interval[1]

    @classmethod
    def of(cls, acc: float, n: int) -> "Proportion":
        return cls(count_of(acc, n), int(n))

    def text(self, digits: int = 3) -> str:
        """``0.460 [0.360, 0.563], n=100``"""
        lo, hi = self.interval
        return f"{self.value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}], n={self.n}"

    def short(self, digits: int = 3) -> str:
        """``0.460 +-0.10 (n=100)``: the half-width of the interval, rounded up."""
        lo, hi = self.interval
        half = max(hi - self.value, self.value - lo)
        return f"{self.value:.{digits}f} \u00b1{math.ceil(half * 100) / 100:.2f} (n={self.n})"


def interval_text(acc: Optional[float], n: Optional[int], digits: int = 3) -> str:
    """An accuracy with its interval and n, or "" when either is missing."""
    try:
        return Proportion.of(acc, n).text(digits)
    except (TypeError, ValueError):
        return ""


# ====================================================================== paired tests
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant samples."""
    from scipy.stats import binom

    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    m = b + c
    if m == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), m, 0.5)))


@dataclass(frozen=True)
class PairedVerdict:
    """A claim "A above B" on the same samples, decided by the exact McNemar test."""

    verdict: str
    """``holds``, ``reversed`` or ``inconclusive at 95 %``"""
    p_value: float
    a_only: int
    """samples right under A and wrong under B"""
    b_only: int
    n: int
    diff: float
    """accuracy of A minus accuracy of B (same samples)"""

    def text(self) -> str:
        return (f"{self.verdict}, {self.diff * 100:+.1f} points (McNemar exact p "
                f"{p_text(self.p_value)}; {self.a_only} vs {self.b_only} discordant of "
                f"n={self.n})")


def p_text(p: float) -> str:
    """A p-value with its relation, as the reports print it: "= 0.031" or "< 0.001"."""
    return f"= {p:.2g}" if p >= 0.001 else "< 0.001"


def paired_verdict(a_right: Sequence[bool], b_right: Sequence[bool],
                   alpha: float = ALPHA) -> PairedVerdict:
    """The claim "A is above B" on the same samples (per-sample right/wrong of each)."""
    a, b = list(map(bool, a_right)), list(map(bool, b_right))
    if len(a) != len(b):
        raise ValueError(f"a paired test needs the same samples: {len(a)} against {len(b)}")
    if not a:
        raise ValueError("a paired test needs at least one sample")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    p = mcnemar_exact(a_only, b_only)
    if p < alpha and a_only > b_only:
        v = HOLDS
    elif p < alpha and b_only > a_only:
        v = REVERSED
    else:
        v = INCONCLUSIVE
    return PairedVerdict(v, p, a_only, b_only, len(a), (a_only - b_only) / len(a))


# ====================================================================== per-sample masks
def pack_mask(bits: Iterable[bool]) -> str:
    """[True, False, True, ...] -> hex string, 4 samples per digit, first sample in the
    high bit of the first digit (``unpack_mask`` needs n)."""
    bits = [bool(b) for b in bits]
    out = []
    for i in range(0, len(bits), 4):
        chunk = bits[i:i + 4] + [False] * (4 - len(bits[i:i + 4]))
        out.append("%x" % (chunk[0] << 3 | chunk[1] << 2 | chunk[2] << 1 | chunk[3]))
    return "".join(out)


def unpack_mask(text: str, n: int) -> list:
    """The inverse of ``pack_mask`` for n samples."""
    n = int(n)
    if not isinstance(text, str) or len(text) != (n + 3) // 4:
        raise ValueError(f"a mask of {n} samples has {(n + 3) // 4} hex digits")
    out = []
    for ch in text:
        v = int(ch, 16)
        out += [bool(v & 8), bool(v & 4), bool(v & 2), bool(v & 1)]
    if any(out[n:]):
        raise ValueError("mask has bits set past its n samples")
    return out[:n]
