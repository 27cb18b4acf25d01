"""Inference modes as classifier wrappers: PN, BN and shaped inference (the paper's Eq. 6).

Every wrapper is an ordinary callable ``clf(x) -> logits`` that returns the logits of x's
rows only, runs BN as frozen BN (batch statistics, running statistics untouched) and restores
every mode flag afterwards. ``clf.describe()`` names the inference mode for tables
("PN", "BN", "shaped 1:9 (g=10)"), ``clf.crafting_label`` names the norms an attack that
crafts *through* this wrapper used ("PN", "BN", "BN (exact refs)"), and ``clf.randomized`` is
True when two calls on the same x can differ (fresh reference draws).

Shaped inference, exactly and vectorised. Test rows are split into groups of g consecutive
rows; each group shares one batch with ``g * clean / adv`` references drawn from the seeded
reference pool. g = 1 is the literal per-sample definition (one test sample + n references).
All groups of a call are stacked into one tensor ``[G, g + r, ...]`` and evaluated with
``torch.func.vmap`` over the group dimension: under vmap every BatchNorm layer computes its
statistics per group, so each group is normalised exactly as if it had been forwarded alone
(checked against a per-group loop to ~1e-6 in the tests), with one batched forward instead of
G Python-level ones. Gradients flow through vmap, so attacks craft through shaped batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from .config import ConfigError, Ratio
from .norms import NormMode, norm_mode

# The paper evaluates with batches of 100 samples (section VI), e.g. 10 test samples + 90
# references at 1:9. ``default_group_size`` keeps that batch size for any ratio.
PAPER_INFERENCE_BATCH = 100


def default_group_size(ratio: "Ratio | str", batch: int = PAPER_INFERENCE_BATCH) -> int:
    """Test samples per shaped batch so that a batch holds ``batch`` samples (paper: 100)."""
    r = Ratio.parse(ratio)
    return max(r.adv, batch * r.adv // r.parts)


def grouped_frozen_bn_forward(model: nn.Module, batches: torch.Tensor) -> torch.Tensor:
    """Logits ``[G, m, C]`` of G independent batches ``[G, m, ...]``, each with its own
    batch statistics (frozen BN). One vmapped forward; exact per-group normalisation."""
    with norm_mode(model, NormMode.FROZEN_BN):
        if batches.shape[0] == 1:
            return model(batches[0]).unsqueeze(0)
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        return vmap(lambda b: functional_call(model, state, (b,)))(batches)


class Classifier:
    """Base of the inference-mode wrappers. Subclasses implement ``__call__``."""

    model: nn.Module
    randomized: bool = False
    crafting_label: str = "?"

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

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with norm_mode(self.model, NormMode.PN):
            return self.model(x)

    def describe(self) -> str:
        return "PN"


class BNClassifier(Classifier):
    """BN: the batch being classified supplies its own statistics (frozen BN)."""

    crafting_label = "BN"

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) < 2:
            raise ConfigError("BN inference needs a batch of at least 2 samples")
        with norm_mode(self.model, NormMode.FROZEN_BN):
            return self.model(x)

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
        return ReferenceDraw(full, tail_idx, n)

    def _pool(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._pool_on:
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
                ref_x = pool[refs.full[:n_full].to(pool.device)]
                batches = torch.cat([ref_x.to(x.dtype), head_x], dim=1)
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
