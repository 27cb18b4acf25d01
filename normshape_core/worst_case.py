"""Worst case per sample over an ensemble of attacks (AutoAttack's protocol), crafted through
the defender's own norms.

A sample counts as robust only if it survives every attack of the ensemble. The attacks run
in sequence and each one attacks only the samples that are still robust, so the ensemble
costs little more than its first attack once most samples are broken.

Whose norms. The defender's own: PN for a PN classifier, the test batch's own statistics
(frozen BN) for BN, and the defender's **exact shaped batches** (its own reference draw) for
shaped inference.

Rows that share BN statistics. Under PN every row is on its own. Under BN the whole test
batch is one batch, and under shaped inference the g test rows of a group share one shaped
batch with their references: changing one row changes the statistics its group-mates are
normalised with. The rule used here, for every classifier alike:

- a *group* is a set of rows that share statistics (PN: one row; BN: the batch; shaped: the
  g rows of one shaped batch, ``FixedReferenceView.row_groups``);
- an attack runs on the groups that still hold a robust row, on those robust rows only; the
  group's other rows stay at their current adversarial examples and go through every attack
  step with them (``PinnedRowsView``), so the attacker crafts through the very batches the
  defender will classify;
- the attack's result for a group is accepted only if the defender then classifies fewer of
  that group's rows right than before (groups never interact, so each is decided alone);
- the number reported is the defender's own verdict on the returned examples, recomputed on
  the full batch at the end (``WorstCaseResult.robust``), not the attacker's bookkeeping (the
  tests check that the two agree).

Attacks with an unbounded threat model (C&W-L2, DeepFool) take part with their examples
projected into the eps-ball: any point of the ball is a legitimate L-inf candidate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch

from .attacks import ADAPTIVE_ATTACKS, ATTACKS, Attack, make_attack
from .config import ConfigError

#: ensembles by name; members that do not exist in the registry are left out (FAB-T)
ENSEMBLES: Dict[str, tuple] = {
    "autoattack": ("apgd", "apgd_t", "fab_t", "square"),
    "paper": ("pgd", "cw", "fgsm", "deepfool", "shaping"),
}
#: the ensemble of every headline worst-case number (reproduce, the app, the benchmark)
DEFAULT_ENSEMBLE = "autoattack"
#: attacks that build their own crafting view from the target (not the defender's norms)
OWN_VIEW_ATTACKS = ("shaping", "adaptive_eot")


def ensemble_members(name_or_list: Union[str, Sequence[str]]) -> List[str]:
    """``"autoattack"`` -> its registered members; a spec ``"apgd+square"`` or a list ->
    the members checked against the registry."""
    from .attacks import parse_attack_names

    if isinstance(name_or_list, str):
        key = name_or_list.strip().lower()
        if key in ENSEMBLES:
            return [a for a in ENSEMBLES[key] if a in ATTACKS]
        name_or_list = key.split("+")
    members = parse_attack_names(name_or_list)
    if not members:
        raise ConfigError("an ensemble needs at least one attack")
    return members


def row_groups(view, n: int) -> torch.Tensor:
    """[n] group index per row: rows with the same index share BN statistics."""
    if getattr(view, "rows_independent", False):
        return torch.arange(n)
    if hasattr(view, "row_groups"):
        return view.row_groups()
    return torch.zeros(n, dtype=torch.long)  # BN: the batch is one group


def _restricted(view, groups: torch.Tensor):
    """The defender's view on the rows of ``groups`` only (exact for every group kept)."""
    if getattr(view, "rows_independent", False):
        return view
    if hasattr(view, "restricted"):
        return view.restricted(groups)
    return view


class PinnedRowsView:
    """Crafting view over the free rows of a batch whose other rows are pinned to fixed
    inputs: ``view(z)`` puts z into the free rows of ``template``, classifies the whole batch
    with ``base`` and returns the free rows' logits. Gradients reach z only."""

    rows_independent = False

    def __init__(self, base, template: torch.Tensor, free: torch.Tensor):
        self.base, self.template, self.free = base, template.detach(), free
        self.model = getattr(base, "model", None)
        self.crafting_label = getattr(base, "crafting_label", "?")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        full = self.template.index_put((self.free,), z.to(self.template.dtype))
        return self.base(full)[self.free]


@dataclass
class StageRecord:
    """One attack of the ensemble: how many samples it broke that had survived so far."""

    attack: str
    attempted: int
    broken: int
    robust_after: int
    seconds: float
    right_after: Optional[torch.Tensor] = None
    """[n] bool: rows still classified right after this attack (bookkeeping)"""
    broken_mask: Optional[torch.Tensor] = None
    """[n] bool: rows this attack broke"""


@dataclass
class WorstCaseResult:
    x_adv: torch.Tensor
    robust: torch.Tensor
    """[n] bool: the defender's verdict on ``x_adv`` (full-batch re-check)"""
    clean_right: torch.Tensor
    bookkept: torch.Tensor
    """[n] bool: robust according to the ensemble's own bookkeeping (equals ``robust``)"""
    stages: List[StageRecord] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _craft(attack: Attack, defender, view, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if attack.name in OWN_VIEW_ATTACKS:
        fn = attack.crafting_view(defender, x)
    else:
        fn = view
    return attack.craft(fn, x, y)[0].detach()


def applicable(name: str, defender) -> bool:
    """Adaptive attacks target shaped inference only."""
    from .shaping import ShapedClassifier

    return name not in ADAPTIVE_ATTACKS or isinstance(defender, ShapedClassifier)


def defender_view(defender, n: int):
    """The defender's own, deterministic norms for a call on n rows: PN, BN, or its exact
    shaped batches (the reference draw of its next call)."""
    from .shaping import ShapedClassifier

    if isinstance(defender, ShapedClassifier):
        return defender.with_exact_references(n)
    return defender


def worst_case(defender, attacks: Sequence[Attack], x: torch.Tensor, y: torch.Tensor, *,
               eps: float) -> WorstCaseResult:
    """Per-sample worst case of ``attacks`` (run in order) against ``defender`` on one test
    batch, crafted through the defender's own norms (``defender_view``)."""
    x, y = x.detach(), y.detach()
    n = len(x)
    view = defender_view(defender, n)
    groups = row_groups(view, n).to(x.device)
    with torch.no_grad():
        right = view(x).argmax(1) == y
    clean_right = right.clone()
    x_adv = x.clone()
    stages, skipped = [], []
    for attack in attacks:
        if not applicable(attack.name, defender):
            skipped.append(attack.name)
            continue
        if not bool(right.any()):
            stages.append(StageRecord(attack.name, 0, 0, 0, 0.0, right.clone(),
                                      torch.zeros_like(right)))
            continue
        t0 = time.perf_counter()
        independent = bool(getattr(view, "rows_independent", False))
        if independent:
            rows = right.nonzero().squeeze(1)
            sub_view = view
        else:
            active_groups = torch.unique(groups[right])
            rows = torch.isin(groups, active_groups).nonzero().squeeze(1)
            try:
                sub_view = _restricted(view, active_groups.cpu())
            except ValueError:  # a view that cannot be cut: every row goes through
                rows, sub_view = torch.arange(n, device=x.device), view
        free_local = right[rows].nonzero().squeeze(1)
        free = rows[free_local]
        template = x_adv[rows]
        craft_view = sub_view if independent else PinnedRowsView(sub_view, template, free_local)
        cand = _project(_craft(attack, defender, craft_view, x[free], y[free]), x[free], eps)
        with torch.no_grad():
            proposal = template.clone()
            proposal[free_local] = cand
            new_right = sub_view(proposal).argmax(1) == y[rows]
            if independent:
                accept_rows = ~new_right
            else:  # a group's result is taken only if fewer of its rows are then right
                g_rows = groups[rows]
                before = torch.zeros(int(groups.max()) + 1, device=x.device).index_add_(
                    0, g_rows, right[rows].float())
                after = torch.zeros_like(before).index_add_(0, g_rows, new_right.float())
                accept_rows = (after < before)[g_rows]
            n_before = int(right.sum())
            before_mask = right.clone()
            take = rows[accept_rows]
            x_adv[take] = proposal[accept_rows]
            right[take] = new_right[accept_rows]
        stages.append(StageRecord(attack.name, len(free), n_before - int(right.sum()),
                                  int(right.sum()), time.perf_counter() - t0, right.clone(),
                                  before_mask & ~right))
    with torch.no_grad():
        robust = view(x_adv).argmax(1) == y
    return WorstCaseResult(x_adv, robust, clean_right, right.clone(), stages, skipped)


def make_ensemble(members: Sequence[str], *, eps: float, seed: int = 0, steps: int = 100,
                  restarts: int = 1, n_queries: Optional[int] = None,
                  n_target_classes: Optional[int] = None, pgd_steps: int = 20,
                  cw_steps: int = 100, reference_pool=None, eot_draws: int = 8
                  ) -> List[Attack]:
    """The ensemble's attacks with their settings: APGD-type attacks ``steps`` iterations,
    PGD-type ones ``pgd_steps``, Square ``n_queries``."""
    out = []
    for name in members:
        kw = dict(eps=eps, seed=seed, restarts=restarts, eot_draws=eot_draws)
        if name.startswith("apgd") or name == "fab_t":
            kw["steps"] = steps
        elif name == "cw":
            kw["steps"] = cw_steps
        else:
            kw["steps"] = pgd_steps
        if n_queries is not None:
            kw["n_queries"] = n_queries
        if n_target_classes is not None:
            kw["n_target_classes"] = n_target_classes
        out.append(make_attack(name, reference_pool=reference_pool, **kw))
    return out
