"""Inference modes as classifier wrappers: PN, BN and shaped inference (the paper's Eq. 6;
the words: docs/vocabulary.md).

Every wrapper is an ordinary callable ``clf(x) -> logits`` that returns the logits of x's
rows only, runs BN as frozen BN (batch statistics, running statistics untouched) and restores
every mode flag afterwards. ``clf.describe()`` names the inference mode for tables
("PN", "BN", "shaped 1:9 (g=10)"), ``clf.crafting_label`` names the norms an attack that
crafts *through* this wrapper used ("PN", "BN", "BN (exact refs)"), and ``clf.randomized`` is
True when two calls on the same x can differ (fresh reference draws).

Shaped inference, exactly and vectorised. Test rows are split into groups of g consecutive
rows; each group shares one batch with ``g * clean / adv`` references drawn from the seeded
reference pool. g = 1 is the literal per-sample definition (one test sample + n references).
All groups of a call are stacked into one tensor ``[G, g + r, ...]`` and evaluated as one
batch of G * (g + r) rows in which every BatchNorm layer normalises each block of g + r rows
with that block's own statistics (``per_group_batch_norm``), so each group is normalised
exactly as if it had been forwarded alone (checked against a per-group loop to ~1e-6 in the
tests), with one forward instead of G Python-level ones. Gradients flow through it, so attacks
craft through shaped batches. (An earlier version used ``torch.func.vmap``; its batching rules
copy every activation between layouts and cost 2-2.5x the plain forward of the same rows on
CPU; here each group is normalised by BatchNorm's own kernel on its rows, or, for many
small groups, by one vectorised mean / variance computation.)
On CPU the groups go through in chunks of a few hundred rows (``CPU_VALUES_PER_CALL``): past
that the activations fall out of cache and a row costs up to 2.7x more.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..settings.config import ConfigError, Ratio
from ..blocks.norms import NormMode, bn_modules, norm_mode

# The paper evaluates with batches of 100 samples (section VI), e.g. 10 test samples + 90
# references at 1:9. ``default_group_size`` keeps that batch size for any ratio.
PAPER_INFERENCE_BATCH = 100


def default_group_size(ratio: "Ratio | str", batch: int = PAPER_INFERENCE_BATCH) -> int:
    """Test samples per shaped batch so that a batch holds ``batch`` samples (paper: 100)."""
    r = Ratio.parse(ratio)
    return max(r.adv, batch * r.adv // r.parts)


#: on CPU, grouped shaped inference forwards whole groups (at least one) in chunks of at most
#: this many input values (rows x values per row) and 128 rows of images: past a few hundred
#: rows the activations fall out of cache and a row costs 1.5-3x more (digits, 512 rows: 1.4x
#: the per-row cost of 100-row batches; Fashion-MNIST, 400 rows: 1.9x), and where the cliff
#: sits moves with what else runs on the machine (digits at 256 rows: 0.85x of the floor on a
#: quiet machine, 1.5x beside two other training jobs; at 128 rows 0.9x in both). Vectors (2-D
#: points) have tiny activations and per-call overhead dominates: up to 4096 rows (moons 1:9:
#: 0.35 of (n+1) PN forwards against 0.73 in chunks of 256).
CPU_VALUES_PER_CALL = 160_000
CPU_MAX_ROWS_PER_CALL = 128
CPU_MAX_ROWS_PER_CALL_VECTORS = 4096


def _cpu_rows_per_call(batches: torch.Tensor) -> int:
    per_row = max(1, math.prod(batches.shape[2:]))
    cap = CPU_MAX_ROWS_PER_CALL_VECTORS if batches.dim() <= 3 else CPU_MAX_ROWS_PER_CALL
    return max(16, min(cap, CPU_VALUES_PER_CALL // per_row))


#: up to this many groups per forward, each group is normalised by PyTorch's own BatchNorm
#: kernel on its slice of rows; more groups (per-sample shaped inference: groups of 2-10 rows)
#: go through one vectorised computation for all of them
NATIVE_BN_MAX_GROUPS = 8


def _per_group_bn_forward(bn: nn.Module, x: torch.Tensor, *, groups: int) -> torch.Tensor:
    """Frozen BN of ``x`` [G*m, C, ...] with the statistics of each block of m rows (BatchNorm's
    biased variance). Few groups: BatchNorm's own kernel on each block, written into one
    output of x's memory layout (channels-last stays channels-last). Many groups: a
    vectorised two-pass mean / variance per (block, channel), channels last, so that each
    reduction runs over contiguous rows of C values (``torch.var_mean`` over the strided
    dimensions costs 10x more)."""
    m = x.shape[0] // groups
    if groups <= NATIVE_BN_MAX_GROUPS:
        out = torch.empty_like(x)  # preserves the memory format
        w, b = bn.weight, bn.bias
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or (w is not None and w.requires_grad)
            or (b is not None and b.requires_grad))
        if not needs_grad:  # write each block's normalised rows in place, no copies
            c = x.shape[1]
            save_mean = x.new_empty(c)
            save_invstd = x.new_empty(c)
            for i in range(groups):
                torch.ops.aten.native_batch_norm.out(
                    x[i * m:(i + 1) * m], w, b, None, None, True, 0.0, bn.eps,
                    out=out[i * m:(i + 1) * m], save_mean=save_mean, save_invstd=save_invstd)
            return out
        for i in range(groups):  # differentiable: copies into slices (autograd's CopySlices)
            out[i * m:(i + 1) * m] = F.batch_norm(x[i * m:(i + 1) * m], None, None, w, b,
                                                  True, 0.0, bn.eps)
        return out
    c = x.shape[1]
    xc = x.movedim(1, -1)
    xv = xc.reshape(groups, -1, c)  # [G, rows of the block, C]
    inv_rows = 1.0 / xv.shape[1]
    mean = xv.sum(1, keepdim=True).mul_(inv_rows)
    d = xv - mean
    var = (d.square_() if not torch.is_grad_enabled() else d * d).sum(1, keepdim=True) * inv_rows
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return torch.addcmul(shift, xv, scale).reshape(xc.shape).movedim(-1, 1)


@contextlib.contextmanager
def per_group_batch_norm(model: nn.Module, groups: int) -> Iterator[nn.Module]:
    """Inside the block, every BatchNorm layer of ``model`` normalises its input, a batch of
    ``groups`` equal blocks of consecutive rows, with each block's own batch statistics
    (frozen BN: running statistics neither used nor updated). The layers' own ``forward``
    is restored afterwards, also on exceptions."""
    bns = bn_modules(model)
    try:
        for bn in bns:
            bn.forward = functools.partial(_per_group_bn_forward, bn, groups=int(groups))
        yield model
    finally:
        for bn in bns:
            bn.__dict__.pop("forward", None)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` copied into the canonical channels-last layout (also for C = 1,
    where ``contiguous(memory_format=...)`` keeps NCHW strides): convolutions then return NHWC
    activations and every later layer runs on them. On CPU PyTorch's NCHW pooling kernels are
    10-15x slower than its NHWC ones on these shapes; a PN forward of a dataset tensor often
    gets NHWC for free (digits' strides are already channels-last), a shaped batch built with
    ``torch.cat`` does not."""
    if x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def cpu_layout(x: torch.Tensor) -> torch.Tensor:
    """What the wrappers feed the model: on CPU, images channels-last (``_nhwc``; 1.2-1.8x
    faster PGD through a PN classifier on digits / Fashion-MNIST, logits within 1e-6 of the
    NCHW computation); anything else unchanged. Inference only: training keeps the layout its
    ``channels_last`` setting records."""
    if x.dim() == 4 and x.device.type == "cpu":
        return _nhwc(x)
    return x


def grouped_frozen_bn_forward(model: nn.Module, batches: torch.Tensor,
                              rows_per_call: Optional[int] = None) -> torch.Tensor:
    """Logits ``[G, m, C]`` of G independent batches ``[G, m, ...]``, each with its own
    batch statistics (frozen BN): exact per-group normalisation, the groups stacked into one
    forward (on CPU, chunks of whole groups of about ``rows_per_call`` rows, by default
    ``CPU_VALUES_PER_CALL`` input values, images laid out channels-last; on a GPU all at
    once)."""
    n_groups, m = batches.shape[:2]
    if rows_per_call is None:
        rows_per_call = _cpu_rows_per_call(batches) if batches.device.type == "cpu" else 1 << 30
    per_call = max(1, int(rows_per_call) // max(1, m))
    outs = []
    with norm_mode(model, NormMode.FROZEN_BN):
        for start in range(0, n_groups, per_call):
            chunk = batches[start:start + per_call]
            g = chunk.shape[0]
            flat = chunk.reshape(g * m, *batches.shape[2:])
            flat = cpu_layout(flat)
            if g == 1:
                out = model(flat)
            else:
                with per_group_batch_norm(model, g):
                    out = model(flat)
            outs.append(out.reshape(g, m, *out.shape[1:]))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class Classifier:
    """Base of the inference-mode wrappers. Subclasses implement ``__call__``."""

    model: nn.Module
    randomized: bool = False
    crafting_label: str = "?"
    rows_independent: bool = False
    """True when a row's logits do not depend on the other rows (PN): attacks may then
    forward any subset of rows"""
    transfer_from: Tuple[str, ...] = ()
    """classify specs of the other views an attacker should also craft through and transfer
    from (the worst case re-checks their examples under this view's own norms)"""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class PNClassifier(Classifier):
    """PN: BatchNorm with running (population) statistics; PyTorch's eval() behaviour."""

    crafting_label = "PN"
    rows_independent = True  # a row's logits do not depend on the other rows of the batch

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with norm_mode(self.model, NormMode.PN):
            return self.model(cpu_layout(x))

    def describe(self) -> str:
        return "PN"


class BNClassifier(Classifier):
    """BN: the batch being classified supplies its own statistics (frozen BN)."""

    crafting_label = "BN"
    transfer_from = ("pn",)

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < 2:
            raise ConfigError("BN inference needs a batch of at least 2 samples")
        with norm_mode(self.model, NormMode.FROZEN_BN):
            return self.model(cpu_layout(x))

    def describe(self) -> str:
        return "BN"


def make_reference_pool(dataset, size: int = 1000, seed: int = 0) -> torch.Tensor:
    """``size`` clean training samples drawn without replacement with ``seed`` (the reference
    pool of shaped inference). The whole training set when it is smaller."""
    x = dataset.x_train
    if size < 1:
        raise ConfigError(f"reference pool size must be >= 1, got {size}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(x), generator=g)[:size]
    return x[idx].clone()


@dataclass
class ReferenceDraw:
    """Indices into the reference pool for one call on n test rows.

    ``full``: ``[G, r]`` for the G full groups of g rows; ``tail``: ``[r_tail]`` for the last,
    smaller group (``None`` when g divides n)."""

    full: torch.Tensor
    tail: Optional[torch.Tensor]
    n: int
    _gathered: Dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    """the reference rows of ``full`` per (device, dtype), gathered once per draw"""


class ShapedClassifier(Classifier):
    """Shaped inference (Eq. 6): classify x with the BN statistics of a batch that mixes x
    with clean references at ``ratio`` adv:clean; only x's logits are returned.

    ``group_size`` g test samples share one batch with ``g * clean / adv`` references
    (g = 1: the literal per-sample definition). ``ratio`` 1:0 means no references: each
    group is classified with its own frozen-BN statistics. References are drawn from
    ``reference_pool`` with ``seed``: with ``fresh_references=False`` every call on n rows
    uses the same draw (a deterministic classifier that an adaptive attacker can know; an
    evaluation sets ``reference_offset`` to the test batch's index so that batches get
    different draws); with ``fresh_references=True`` each call draws anew (draw k uses
    seed + k), which makes the classifier randomised (``randomized`` is True; attack it with
    EOT).
    """

    DRAW_CACHE_SIZE = 8
    transfer_from = ("pn", "bn")

    def __init__(self, model: nn.Module, reference_pool: torch.Tensor,
                 ratio: "Ratio | str" = "1:9", group_size: Optional[int] = 1, seed: int = 0,
                 fresh_references: bool = False):
        self.model = model
        self.ratio = Ratio.parse(ratio)
        self.group_size = int(group_size) if group_size is not None else default_group_size(
            self.ratio)
        if self.group_size < 1:
            raise ConfigError(f"group size must be >= 1, got {self.group_size}")
        if (self.group_size * self.ratio.clean) % self.ratio.adv:
            raise ConfigError(f"group size {self.group_size} does not give a whole number of "
                              f"references at ratio {self.ratio}; use a multiple of {self.ratio.adv}")
        if self.ratio.clean == 0 and self.group_size == 1:
            raise ConfigError("ratio 1:0 with group size 1 is a batch of one sample, whose BN "
                              "statistics are undefined; use a larger group size")
        self.refs_per_group = self.group_size * self.ratio.clean // self.ratio.adv
        self.pool = reference_pool.detach()
        if self.refs_per_group > len(self.pool):
            raise ConfigError(f"the reference pool has {len(self.pool)} samples but a group needs "
                              f"{self.refs_per_group} references (ratio {self.ratio}, "
                              f"g={self.group_size})")
        self.seed = int(seed)
        self.fresh_references = bool(fresh_references)
        self.randomized = self.fresh_references
        self.crafting_label = "BN (fresh refs)" if self.fresh_references else "BN (exact refs)"
        self.draws = 0  # calls made so far; draw k of a fresh classifier uses seed + k
        # Which test batch is being classified (set by the evaluation loop), so that fixed
        # references differ from batch to batch while staying a function of (seed, batch).
        self.reference_offset = 0
        self._pool_on = {}
        self._draw_cache: Dict[tuple, ReferenceDraw] = {}

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        return f"shaped {self.ratio} (g={self.group_size})"

    # ------------------------------------------------------------------ references
    def _tail_refs(self, tail: int) -> int:
        return math.ceil(tail * self.ratio.clean / self.ratio.adv)

    def draw_references(self, n: int, draw: Optional[int] = None) -> ReferenceDraw:
        """The reference indices a call on n rows uses (``draw``: which fresh draw; default the
        next call's). Deterministic in (seed, draw, n)."""
        if draw is None:
            draw = self.draws if self.fresh_references else 0
        key = (self.seed, int(draw), int(self.reference_offset), int(n))
        cached = self._draw_cache.get(key)
        if cached is not None:
            return cached
        with torch.inference_mode(False):  # cached: normal tensors even in inference mode
            g = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + int(draw)) * 7919 + int(self.reference_offset))
            n_full, tail = divmod(n, self.group_size)
            weights = torch.ones(max(n_full, 1), len(self.pool))
            r = self.refs_per_group
            full = (torch.multinomial(weights, r, replacement=False, generator=g)[:n_full]
                    if r > 0 and n_full > 0 else torch.empty(n_full, 0, dtype=torch.long))
            tail_idx = None
            if tail:
                rt = self._tail_refs(tail)
                tail_idx = (torch.multinomial(weights[0], rt, replacement=False, generator=g)
                            if rt > 0 else torch.empty(0, dtype=torch.long))
        out = ReferenceDraw(full, tail_idx, n)
        if len(self._draw_cache) >= self.DRAW_CACHE_SIZE:  # a few recent draws: the same batch
            self._draw_cache.pop(next(iter(self._draw_cache)))  # is classified many times
        self._draw_cache[key] = out
        return out

    def _pool(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._pool_on:
            with torch.inference_mode(False):  # a normal tensor even if first made in inference
                self._pool_on[key] = self.pool.to(device)
        return self._pool_on[key]

    # ------------------------------------------------------------------ inference
    def logits_with(self, x: torch.Tensor, refs: ReferenceDraw) -> torch.Tensor:
        """Logits of x's rows classified in the shaped batches given by ``refs``."""
        if refs.n != len(x):
            raise ValueError(f"reference draw is for {refs.n} rows, x has {len(x)}")
        pool = self._pool(x.device)
        g = self.group_size
        n_full = refs.full.shape[0]
        outs = []
        tail_x = x[n_full * g:]
        tail_refs = refs.tail
        if n_full:
            head_x = x[:n_full * g].reshape(n_full, g, *x.shape[1:])
            if tail_refs is not None and len(tail_x) == 1 and len(tail_refs) == 0:
                # 1:0 with a single leftover row: give it to the last group's batch, since a
                # batch of one sample has no BN statistics.
                n_full -= 1
                tail_x = x[n_full * g:]
                head_x = head_x[:n_full]
            if n_full:
                gkey = (str(x.device), x.dtype, n_full)
                ref_x = refs._gathered.get(gkey)
                if ref_x is None:
                    with torch.inference_mode(False):
                        ref_x = pool[refs.full[:n_full].to(pool.device)].to(x.dtype)
                    refs._gathered[gkey] = ref_x
                batches = torch.cat([ref_x, head_x], dim=1)
                logits = grouped_frozen_bn_forward(self.model, batches)[:, -g:]
                outs.append(logits.reshape(n_full * g, -1))
        if len(tail_x):
            t_refs = pool[tail_refs.to(pool.device)] if tail_refs is not None else pool[:0]
            if len(t_refs) + len(tail_x) < 2:
                raise ConfigError("a shaped batch of a single sample has no BN statistics; "
                                  "classify at least 2 samples at ratio 1:0")
            batch = torch.cat([t_refs.to(x.dtype), tail_x], dim=0).unsqueeze(0)
            outs.append(grouped_frozen_bn_forward(self.model, batch)[0, -len(tail_x):])
        return torch.cat(outs, dim=0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        refs = self.draw_references(len(x))
        if self.fresh_references:
            self.draws += 1
        return self.logits_with(x, refs)

    def with_exact_references(self, n: int) -> "FixedReferenceView":
        """The defender's exact shaped batches for the next call on n rows, as a deterministic
        callable: what the adaptive attacker with exact references crafts through."""
        return FixedReferenceView(self, self.draw_references(n))


class FixedReferenceView(Classifier):
    """A ShapedClassifier with one reference draw pinned (the adaptive attacker's view)."""

    crafting_label = "BN (exact refs)"

    def __init__(self, shaped: ShapedClassifier, refs: ReferenceDraw):
        self.shaped, self.refs, self.model = shaped, refs, shaped.model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.shaped.logits_with(x, self.refs)

    def describe(self) -> str:
        return self.shaped.describe() + " (pinned refs)"

    def row_groups(self) -> torch.Tensor:
        """[n] the shaped batch (group index) each of the n rows is classified in: rows of
        one group share BN statistics, rows of different groups never interact."""
        n, g = self.refs.n, self.shaped.group_size
        ids = torch.arange(n) // g
        n_full = self.refs.full.shape[0]
        if (self.refs.tail is not None and n - n_full * g == 1 and len(self.refs.tail) == 0
                and n_full):
            ids[-1] = n_full - 1  # 1:0: a lone last row is classified with the last group
        return ids

    def restricted(self, groups: torch.Tensor) -> "FixedReferenceView":
        """The same exact shaped batches for a subset of the groups (sorted group indices of
        ``row_groups``), on the rows of those groups in their order: each selected group keeps
        its references, so its rows get exactly the logits they get in the full call."""
        groups = torch.as_tensor(groups, dtype=torch.long).sort().values
        n_full, g = self.refs.full.shape[0], self.shaped.group_size
        ids = self.row_groups()
        if ids[-1] == n_full - 1 and self.refs.n > n_full * g:  # merged lone row: no subsetting
            if len(groups) != int(ids.max()) + 1:
                raise ValueError("a 1:0 view with a merged last row cannot be restricted")
            return self
        full_sel = groups[groups < n_full]
        tail_sel = bool((groups == n_full).any()) and self.refs.tail is not None
        n_rows = len(full_sel) * g + (self.refs.n - n_full * g if tail_sel else 0)
        sub = ReferenceDraw(self.refs.full[full_sel], self.refs.tail if tail_sel else None,
                            n_rows)
        return FixedReferenceView(self.shaped, sub)


def parse_classifier(spec: str, model: nn.Module, reference_pool: Optional[torch.Tensor] = None,
                     *, group_size: Optional[int] = None, seed: int = 0,
                     fresh_references: bool = False) -> Classifier:
    """``pn`` | ``bn`` | ``shaped:ADV:CLEAN`` (e.g. ``shaped:1:9``) -> a classifier wrapper."""
    s = spec.strip().lower()
    if s == "pn":
        return PNClassifier(model)
    if s == "bn":
        return BNClassifier(model)
    if s.startswith("shaped:") or s.startswith("shaped"):
        ratio_text = s.split(":", 1)[1] if ":" in s else "1:9"
        ratio = Ratio.parse(ratio_text)
        if reference_pool is None:
            raise ConfigError(f"{spec!r} needs a reference pool")
        return ShapedClassifier(model, reference_pool, ratio, group_size, seed, fresh_references)
    raise ConfigError(f"unknown inference mode {spec!r}; use pn, bn or shaped:ADV:CLEAN "
                      f"(e.g. shaped:1:9)")
