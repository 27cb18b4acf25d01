"""Timing on a shared, noisy machine: interleave, repeat, take medians of paired ratios.

``interleaved({"a": fa, "b": fb}, reps)`` calls every function once per repetition, in a
rotating order, so that a burst of load from another job hits all of them alike. A ratio is
the median over repetitions of the per-repetition ratio (paired), which cancels slow drifts
in machine load. Each call is timed twice: wall clock (what a user waits; on a GPU after a
``cuda.synchronize``) and this process's CPU time (all threads; on CPU with one torch thread,
the work itself, without the time the scheduler gave to other jobs).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


def sync(device: Optional[torch.device] = None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timings:
    wall: Dict[str, List[float]] = field(default_factory=dict)
    cpu: Dict[str, List[float]] = field(default_factory=dict)

    def median(self, name: str, kind: str = "wall") -> float:
        return statistics.median(getattr(self, kind)[name])

    def ratio(self, num: str, den: str, kind: str = "wall", scale: float = 1.0) -> float:
        """Median over repetitions of time(num) / (scale * time(den)), paired."""
        a, b = getattr(self, kind)[num], getattr(self, kind)[den]
        return statistics.median(x / (scale * y) for x, y in zip(a, b) if y > 0)

    def spread(self, num: str, den: str, kind: str = "wall", scale: float = 1.0) -> str:
        """Inter-quartile range of the paired ratio, as text."""
        a, b = getattr(self, kind)[num], getattr(self, kind)[den]
        r = sorted(x / (scale * y) for x, y in zip(a, b) if y > 0)
        if len(r) < 4:
            return f"{r[0]:.2f}-{r[-1]:.2f}"
        q = statistics.quantiles(r, n=4)
        return f"{q[0]:.2f}-{q[2]:.2f}"


def time_once(fn: Callable[[], object], device: Optional[torch.device] = None):
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def interleaved(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 2,
                device: Optional[torch.device] = None) -> Timings:
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    t = Timings({n: [] for n in names}, {n: [] for n in names})
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            w, c = time_once(fns[name], device)
            t.wall[name].append(w)
            t.cpu[name].append(c)
    return t


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 1000:
        return f"{seconds:.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def table(rows: List[List[str]], header: List[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])
