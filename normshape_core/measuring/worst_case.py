"""Worst case per sample over an ensemble of attacks (AutoAttack's protocol), crafted through
the defender's own norms, plus transfer from other norms.

A sample counts as robust only if it survives every member of the ensemble. Members run in
sequence and each attacks only the samples that are still robust, so the ensemble costs
little more than its first member once most samples are broken.

Whose norms. The defender's own: PN for a PN classifier, the test batch's own statistics
(frozen BN) for BN, and the defender's **exact shaped batches** (its own reference draw) for
shaped inference. The ``transfer`` member adds examples crafted through *other* norms (the
defender's ``transfer_from``: PN for BN; PN and BN for shaped inference), judged under the
defender's own.

Rows that share BN statistics. Under PN every row is on its own. Under BN the whole test
batch is one batch, and under shaped inference the g test rows of a group share one shaped
batch with their references: changing one row changes the statistics its group-mates are
normalised with. The rule used here, for every classifier alike:

- a *group* is a set of rows that share statistics (PN: one row; BN: the batch; shaped: the
  g rows of one shaped batch, ``FixedReferenceView.row_groups``); groups never interact;
- a member runs on the groups that still hold a robust row, on those robust rows only; the
  group's other rows stay at their current examples and go through every attack step with
  them (``PinnedRowsView``), so the attacker crafts through the very batches the defender
  will classify;
- **a break is never undone** (``accept``): a group takes the member's whole proposal only
  if no row the defender classified wrong becomes right and at least one right row becomes
  wrong. Otherwise the proposal's candidates are tried one row at a time (each group's k-th
  candidate in round k, all groups in one forward), and each one that fools its row without
  making any wrong row right is kept. So the rows classified wrong only grow, and the
  per-member counts of rows broken add up exactly to clean-right minus robust;
- the number reported is the defender's own verdict on the returned examples, recomputed on
  the full batch at the end (``WorstCaseResult.robust``), not the attacker's bookkeeping (the
  tests check that the two agree).

Attacks with an unbounded threat model (C&W-L2, DeepFool) take part with their examples
projected into the eps-ball: any point of the ball is a legitimate L-inf candidate.

The ensembles (``ENSEMBLES``) and why: ``default`` is APGD-CE (5 restarts on vector inputs,
where the 2-D sets showed restarts break more; 1 on images), transfer, APGD-DLR, APGD-T and
Square with 5,000 queries (the gradient-free check). ``full`` is the default followed by
FAB-T, so that its last member's count is exactly what FAB-T adds to the default; the member
table of BENCHMARKS.md (section 6) shows what each member broke on the shipped checkpoints
and why FAB-T is not in the default. ``autoattack`` is AutoAttack's standard set.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..attacks import ADAPTIVE_ATTACKS, ATTACKS, Attack, budget_settings, make_attack
from ..attacks.transfer import Transfer
from ..settings.config import ConfigError

#: ensembles by name; members that do not exist in the registry are left out
ENSEMBLES: Dict[str, tuple] = {
    "default": ("apgd", "transfer", "apgd_dlr", "apgd_t", "square"),
    "full": ("apgd", "transfer", "apgd_dlr", "apgd_t", "square", "fab_t"),
    "autoattack": ("apgd", "apgd_t", "fab_t", "square"),
    "paper": ("pgd", "cw", "fgsm", "deepfool", "shaping"),
}
#: the ensemble of every headline worst-case number (reproduce, the app, the benchmark)
DEFAULT_ENSEMBLE = "default"
#: attacks that build their own crafting view from the target (not the defender's norms)
OWN_VIEW_ATTACKS = ("shaping", "adaptive_eot")
#: APGD-CE's runs on vector inputs (moons, spirals), where a second start often finds what
#: the first missed; images get one (``make_ensemble``'s ``apgd_restarts=None``)
APGD_RESTARTS_VECTORS = 5
#: Square's queries in the default and full ensembles (AutoAttack's standard version)
SQUARE_QUERIES = 5000


def ensemble_members(name_or_list: Union[str, Sequence[str]]) -> List[str]:
    """``"default"`` -> its registered members; a spec ``"apgd+square"`` or a list ->
    the members checked against the registry."""
    from ..attacks import parse_attack_names

    if isinstance(name_or_list, str):
        key = name_or_list.strip().lower()
        if key in ENSEMBLES:
            return [a for a in ENSEMBLES[key] if a in ATTACKS]
        name_or_list = key.split("+")
    members = parse_attack_names(name_or_list)
    if not members:
        raise ConfigError("an ensemble needs at least one attack")
    return members


# ====================================================================== views and groups
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


def defender_view(defender, n: int):
    """The defender's own, deterministic norms for a call on n rows: PN, BN, or its exact
    shaped batches (the reference draw of its next call)."""
    if hasattr(defender, "with_exact_references"):
        return defender.with_exact_references(n)
    return defender


def transfer_sources(defender) -> Tuple[str, ...]:
    """The classifier specs whose examples the ``transfer`` member re-checks under this
    defender (its ``transfer_from``; none for a PN classifier)."""
    return tuple(getattr(defender, "transfer_from", ()) or ())


def applicable(name: str, defender) -> bool:
    """Adaptive attacks target shaped inference only; transfer needs a source other than the
    defender's own norms."""
    from ..inference.shaping import ShapedClassifier

    if name in ADAPTIVE_ATTACKS:
        return isinstance(defender, ShapedClassifier)
    if name == "transfer":
        return bool(transfer_sources(defender))
    return True


def source_label(spec: str) -> str:
    """A transfer source in words: "PN", "BN", "dual BN [clean norms]"."""
    from ..inference.alternatives import describe_spec

    return {"pn": "PN", "bn": "BN"}.get(spec) or describe_spec(spec)


def transfer_label(defender) -> str:
    """"transfer from PN, BN": the norms the ``transfer`` member crafts through."""
    return "transfer from " + ", ".join(source_label(s) for s in transfer_sources(defender))


def crafted_label(defender, view, members: Sequence[str] = ()) -> str:
    """What a worst-case row was crafted with: "BN (exact refs) + transfer from PN, BN"."""
    own = getattr(view, "crafting_label", type(view).__name__)
    if "transfer" not in members or not transfer_sources(defender):
        return own
    return f"{own} + {transfer_label(defender)}"


# ====================================================================== cost
@dataclass
class Cost:
    """Rows forwarded by the model (shaped references included), by kind: with a backward
    (``fb``) or forward only (``f``), with batch statistics (``bn``: BN, shaped batches) or
    PN statistics (``pn``). The benchmark turns them into the evaluation's floor."""

    fb_pn: int = 0
    fb_bn: int = 0
    f_pn: int = 0
    f_bn: int = 0

    def add(self, other: "Cost") -> None:
        self.fb_pn += other.fb_pn
        self.fb_bn += other.fb_bn
        self.f_pn += other.f_pn
        self.f_bn += other.f_bn

    def as_dict(self) -> Dict[str, int]:
        return {"fb_pn": self.fb_pn, "fb_bn": self.fb_bn, "f_pn": self.f_pn, "f_bn": self.f_bn}


@contextlib.contextmanager
def counting_rows(model: torch.nn.Module) -> Iterator[Cost]:
    """Inside the block, every forward of ``model`` adds its rows to the yielded ``Cost``."""
    from ..blocks.norms import bn_modules

    cost = Cost()
    bns = bn_modules(model)

    def hook(module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return
        rows = int(x.shape[0])
        grad = torch.is_grad_enabled() and x.requires_grad
        batch_stats = bool(bns) and bns[0].training
        if grad:
            if batch_stats:
                cost.fb_bn += rows
            else:
                cost.fb_pn += rows
        elif batch_stats:
            cost.f_bn += rows
        else:
            cost.f_pn += rows

    handle = model.register_forward_pre_hook(hook)
    try:
        yield cost
    finally:
        handle.remove()


def row_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> Dict[str, float]:
    """Seconds per row of one forward (``f``) and one forward + backward to the input
    (``fb``), with PN and with batch statistics (frozen BN), on the batch ``x`` (the
    evaluation's batch size): the unit costs of ``Cost``, measured beside the work they
    price (the median of ``repeats`` calls after one warm-up)."""
    from ..inference.shaping import BNClassifier, PNClassifier

    out: Dict[str, float] = {}
    rows = len(x)
    for kind, clf in (("pn", PNClassifier(model)), ("bn", BNClassifier(model))):
        for mode in ("f", "fb"):
            times = []
            for i in range(repeats + 1):
                xx = x.detach().clone().requires_grad_(mode == "fb")
                t0 = time.perf_counter()
                if mode == "f":
                    with torch.no_grad():
                        clf(xx)
                else:
                    torch.autograd.grad(clf(xx).sum(), xx)
                if i:
                    times.append(time.perf_counter() - t0)
            out[f"{mode}_{kind}"] = sorted(times)[len(times) // 2] / rows
    return out


def floor_seconds(cost: Dict[str, int], per_row: Dict[str, float]) -> float:
    """The least time the rows of ``cost`` can take at ``per_row`` seconds each."""
    return sum(float(cost.get(k, 0)) * float(per_row.get(k, 0.0)) for k in Cost().as_dict())


# ====================================================================== records
@dataclass
class StageRecord:
    """One member of the ensemble: how many samples it broke that had survived so far."""

    attack: str
    attempted: int
    broken: int
    robust_after: int
    seconds: float
    right_after: Optional[torch.Tensor] = None
    """[n] bool: rows still classified right after this attack (bookkeeping)"""
    broken_mask: Optional[torch.Tensor] = None
    """[n] bool: rows this attack broke"""
    cost: Cost = field(default_factory=Cost)


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


@dataclass
class BatchState:
    """The ensemble's state on one test batch: each row's current example and whether the
    defender classifies it right there (wrong rows only ever grow)."""

    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    right: torch.Tensor
    clean_right: torch.Tensor

    @classmethod
    def start(cls, view, x: torch.Tensor, y: torch.Tensor) -> "BatchState":
        x, y = x.detach(), y.detach()
        with torch.no_grad():
            right = view(x).argmax(1) == y
        return cls(x, y, x.clone(), right, right.clone())


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


# ====================================================================== acceptance
def _cut(view, groups: torch.Tensor, sel_groups: torch.Tensor, n: int, dev):
    """(rows of ``sel_groups`` in order, the defender's view on exactly those rows); for a
    view that cannot be cut, every one of the ``n`` rows and the whole view."""
    rows = torch.isin(groups, sel_groups).nonzero().squeeze(1)
    try:
        return rows, _restricted(view, sel_groups.cpu())
    except ValueError:  # a view that cannot be cut: every row goes through
        return torch.arange(n, device=dev), view


def _breaks_and_undoes_none(was: torch.Tensor, now: torch.Tensor, where: torch.Tensor,
                            n_groups: int, dev) -> torch.Tensor:
    """[n_groups] bool: the groups (``where``: each row's group) where going from ``was`` to
    ``now`` (right per row) makes some row wrong and no row right."""
    def per_group(mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, device=dev).index_add_(0, where, mask.float()) > 0

    return per_group(was & ~now) & ~per_group(~was & now)


def _accept_independent(view, st: BatchState, free: torch.Tensor, cand: torch.Tensor) -> None:
    """``accept`` through a row-independent view: each candidate that fools is taken."""
    with torch.no_grad():
        fooled = view(cand).argmax(1) != st.y[free]
    take = free[fooled]
    st.x_adv[take] = cand[fooled]
    st.right[take] = False


def accept(view, groups: torch.Tensor, st: BatchState, free: torch.Tensor,
           cand: torch.Tensor) -> None:
    """Fold the candidates ``cand`` for rows ``free`` (rows the defender classifies right)
    into ``st`` so that no wrong row becomes right (see the module's docstring): per group,
    the whole proposal if it breaks a row and undoes none; otherwise each candidate alone, in
    turn (round k tries every such group's k-th candidate in one forward), where it does the
    same."""
    if len(free) == 0:
        return
    y = st.y
    if getattr(view, "rows_independent", False):
        _accept_independent(view, st, free, cand)
        return
    dev = y.device
    all_groups = torch.unique(groups)
    active = torch.unique(groups[free])
    rows, sub = _cut(view, groups, active, len(y), dev)
    if len(rows) == len(y):
        active = all_groups
    local = torch.searchsorted(active, groups[rows])  # group of each row: 0..len(active)-1
    pos = torch.full((len(y),), -1, dtype=torch.long, device=dev)
    pos[rows] = torch.arange(len(rows), device=dev)
    free_local = pos[free]
    template = st.x_adv[rows].clone()
    right = st.right[rows].clone()
    proposal = template.clone()
    proposal[free_local] = cand
    with torch.no_grad():
        new_right = sub(proposal).argmax(1) == y[rows]
    ok = _breaks_and_undoes_none(right, new_right, local, len(active), dev)
    take = ok[local]
    template[take] = proposal[take]
    right[take] = new_right[take]
    # one candidate at a time in the groups whose whole proposal was not taken
    rest = ~ok[local[free_local]]
    todo_rows, todo_cand = free_local[rest], cand[rest]
    changed = (todo_cand != template[todo_rows]).flatten(1).any(1)
    todo_rows, todo_cand = todo_rows[changed], todo_cand[changed]
    if len(todo_rows):
        _accept_singly(view, groups, y, active, rows, sub, local, pos, template, right,
                       todo_rows, todo_cand)
    st.x_adv[rows] = template
    st.right[rows] = right


def _accept_singly(view, groups: torch.Tensor, y: torch.Tensor, active: torch.Tensor,
                   rows: torch.Tensor, sub, local: torch.Tensor, pos: torch.Tensor,
                   template: torch.Tensor, right: torch.Tensor, todo_rows: torch.Tensor,
                   todo_cand: torch.Tensor) -> None:
    """``accept``'s second step: the candidates ``todo_cand`` (at the positions ``todo_rows``
    of ``rows``) one at a time per group. Round k tries every group's k-th candidate in one
    forward, through the view cut to the groups tried (or ``sub``, the view on ``rows``,
    where that cut falls back to the whole batch), and keeps it in the groups where it
    breaks a row and undoes none. Updates ``template`` and ``right`` (per position of
    ``rows``) in place."""
    dev = y.device
    g_of = local[todo_rows]
    order = torch.argsort(g_of, stable=True)
    todo_rows, todo_cand, g_of = todo_rows[order], todo_cand[order], g_of[order]
    rank = torch.arange(len(g_of), device=dev) - torch.searchsorted(g_of, g_of)
    for k in range(int(rank.max()) + 1):
        pick = rank == k
        t_rows, t_cand, t_g = todo_rows[pick], todo_cand[pick], g_of[pick]
        r_rows, r_sub = _cut(view, groups, active[t_g], len(y), dev)  # the groups tried
        if bool((pos[r_rows] < 0).any()):  # that cut fell back to the whole batch
            r_rows, r_sub = rows, sub
        r_pos = pos[r_rows]
        trial = template[r_pos].clone()
        back = torch.full((len(rows),), -1, dtype=torch.long, device=dev)
        back[r_pos] = torch.arange(len(r_pos), device=dev)
        trial[back[t_rows]] = t_cand
        with torch.no_grad():
            t_right = r_sub(trial).argmax(1) == y[rows][r_pos]
        r_local = local[r_pos]
        good = _breaks_and_undoes_none(right[r_pos], t_right, r_local, len(active), dev)
        keep = good[r_local]
        template[r_pos[keep]] = trial[keep]
        right[r_pos[keep]] = t_right[keep]


# ====================================================================== one member
def _source_view(defender, spec: str, st: BatchState, free: torch.Tensor):
    """The view a transfer source crafts the free rows through: PN directly; BN (or any
    coupled view) over the whole test batch with the other rows pinned at their examples."""
    from ..inference.alternatives import make_classifier

    base = make_classifier(spec, defender.model, getattr(defender, "pool", None))
    view = defender_view(base, len(st.x))
    if getattr(view, "rows_independent", False):
        return view
    return PinnedRowsView(view, st.x_adv, free)


def run_member(defender, view, groups: torch.Tensor, attack: Attack, st: BatchState, *,
               eps: float) -> StageRecord:
    """One member of the ensemble on one test batch: attack the rows still right (in the
    groups holding one, the others pinned), fold the candidates in with ``accept``."""
    t0 = time.perf_counter()
    n_before = int(st.right.sum())
    before = st.right.clone()
    model = getattr(defender, "model", None)
    counter = counting_rows(model) if model is not None else contextlib.nullcontext(Cost())
    with counter as cost:
        if n_before:
            free = st.right.nonzero().squeeze(1)
            if isinstance(attack, Transfer):
                for spec in transfer_sources(defender):
                    free = st.right.nonzero().squeeze(1)
                    if not len(free):
                        break
                    src = _source_view(defender, spec, st, free)
                    for cand in attack.candidates(src, st.x[free], st.y[free]):
                        still = st.right[free]  # rows an earlier candidate broke are done
                        accept(view, groups, st, free[still],
                               _project(cand[still], st.x[free][still], eps))
                        if not bool(st.right[free].any()):
                            break
            else:
                if getattr(view, "rows_independent", False):
                    craft_view = view
                else:
                    active = torch.unique(groups[free])
                    rows = torch.isin(groups, active).nonzero().squeeze(1)
                    try:
                        sub = _restricted(view, active.cpu())
                    except ValueError:
                        rows, sub = torch.arange(len(st.x), device=st.x.device), view
                    pos = torch.full((len(st.x),), -1, dtype=torch.long, device=st.x.device)
                    pos[rows] = torch.arange(len(rows), device=st.x.device)
                    craft_view = PinnedRowsView(sub, st.x_adv[rows], pos[free])
                if attack.name in OWN_VIEW_ATTACKS:
                    craft_view = attack.crafting_view(defender, st.x[free])
                with torch.enable_grad():
                    cand = attack.craft(craft_view, st.x[free], st.y[free])[0].detach()
                accept(view, groups, st, free, _project(cand, st.x[free], eps))
    broken = before & ~st.right
    return StageRecord(attack.name, n_before, int(broken.sum()), int(st.right.sum()),
                       time.perf_counter() - t0, st.right.clone(), broken, cost)


def worst_case(defender, attacks: Sequence[Attack], x: torch.Tensor, y: torch.Tensor, *,
               eps: float, on_member: Optional[Callable[[StageRecord], None]] = None
               ) -> WorstCaseResult:
    """Per-sample worst case of ``attacks`` (run in order) against ``defender`` on one test
    batch, crafted through the defender's own norms (``defender_view``) and, for the
    ``transfer`` member, through the norms of ``defender.transfer_from``."""
    n = len(x)
    view = defender_view(defender, n)
    groups = row_groups(view, n).to(x.device)
    st = BatchState.start(view, x, y)
    stages, skipped = [], []
    for attack in attacks:
        if not applicable(attack.name, defender):
            skipped.append(attack.name)
            continue
        rec = run_member(defender, view, groups, attack, st, eps=eps)
        stages.append(rec)
        if on_member is not None:
            on_member(rec)
    with torch.no_grad():
        robust = view(st.x_adv).argmax(1) == st.y
    return WorstCaseResult(st.x_adv, robust, st.clean_right, st.right.clone(), stages, skipped)


# ====================================================================== the ensemble
def make_ensemble(members: Sequence[str], *, eps: float, seed: int = 0, steps: int = 100,
                  restarts: int = 1, n_queries: Optional[int] = None,
                  n_target_classes: Optional[int] = None, pgd_steps: int = 20,
                  cw_steps: int = 100, reference_pool=None, eot_draws: int = 8,
                  apgd_restarts: Optional[int] = None, vector_input: bool = False
                  ) -> List[Attack]:
    """The ensemble's attacks with their settings, each from the budget it declares
    (``Attack.budget`` and ``ensemble_budget``, read by ``attacks.budget_settings``): here
    ``steps`` is EvalSettings' ``apgd_steps`` (APGD-type attacks, FAB-T, transfer),
    ``pgd_steps`` its ``steps`` (PGD-type attacks, and any other steps field), ``n_queries``
    its ``square_queries``. APGD-CE runs ``apgd_restarts`` times (None:
    ``APGD_RESTARTS_VECTORS`` on vector inputs, else ``restarts``)."""
    given = {"apgd_steps": steps, "steps": pgd_steps, "cw_steps": cw_steps,
             "square_queries": n_queries, "n_target_classes": n_target_classes,
             "eot_draws": eot_draws,
             "apgd_restarts": (apgd_restarts if apgd_restarts is not None else
                               max(restarts, APGD_RESTARTS_VECTORS) if vector_input
                               else restarts)}
    out = []
    for name in members:
        kw = dict(eps=eps, seed=seed, restarts=restarts, eot_draws=eot_draws, steps=pgd_steps)
        kw.update(budget_settings(name, given, ensemble=True))
        out.append(make_attack(name, reference_pool=reference_pool, **kw))
    return out
