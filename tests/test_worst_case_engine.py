"""The worst-case engine's rules: a break is never undone, per-member counts add up, transfer
candidates are judged under the defender's own norms, PN-crafted APGD stops on fooled rows
without changing any result, and a killed evaluation resumes to the same numbers."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.attacks.base import LINF, Attack
from normshape_core.training.checkpoints import load_checkpoint
from normshape_core.blocks.data import load_dataset
from normshape_core.measuring.evaluation import WORST, evaluate
from normshape_core.base.stats import unpack_mask
from normshape_core.measuring.worst_case import (DEFAULT_ENSEMBLE, BatchState, accept,
                                                 ensemble_members, worst_case)

ROOT = Path(__file__).resolve().parents[1]
MOONS_SHAPED = ROOT / "checkpoints/moons/moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-s0"
DIGITS_PGD = ROOT / "checkpoints/digits/digits-small_cnn-pgd-adv-only-eps0.3-s0"


class MeanCoupled:
    """A defender whose rows share statistics, like BN: row i's logits are
    [0, x_i - mean of its group] (first feature), so class 1 wins exactly when a row lies
    above its group's mean. ``groups``: rows per group (consecutive)."""

    rows_independent = False
    crafting_label = "toy BN"
    transfer_from = ()
    randomized = False
    model = None

    def __init__(self, n: int, per_group: int):
        self.n, self.g = n, per_group

    def row_groups(self):
        return torch.arange(self.n) // self.g

    def restricted(self, groups):
        keep = torch.as_tensor(groups).sort().values
        sub = MeanCoupled(len(keep) * self.g, self.g)
        return sub

    def __call__(self, x):
        v = x[:, 0].reshape(-1, self.g)
        s = (v - v.mean(1, keepdim=True)).reshape(-1)
        return torch.stack([torch.zeros_like(s), s], 1)

    def describe(self):
        return "toy"


@dataclass
class _Set:
    eps: float = 0.5


def scripted(name: str, moves):
    """An attack that moves the rows it is given to fixed values (``moves``: a function of
    the rows' clean inputs)."""

    class Scripted(Attack):
        threat_model = LINF
        Settings = _Set

        def craft(self, fn, x, y):
            return moves(x), {}

    Scripted.name = name
    return Scripted()


def test_a_break_is_never_undone_and_member_counts_add_up():
    x = torch.full((3, 2), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    defender = MeanCoupled(3, 3)
    # member 1 breaks row 0 (0.8 lies above the group's mean 0.6)
    first = scripted("first", lambda xs: torch.where(
        torch.arange(len(xs))[:, None] == 0, torch.full_like(xs, 0.8), xs))
    # member 2 is given rows 1 and 2 (still right) and moves both to 0.9: that fools both
    # but puts row 0 below the new mean (0.867), un-fooling it. The whole proposal lowers
    # the group's count of right rows (2 -> 1), so a rule that only counts would take it.
    second = scripted("second", lambda xs: torch.full_like(xs, 0.9))
    with torch.no_grad():
        joint = defender(torch.tensor([[0.8, 0.5], [0.9, 0.5], [0.9, 0.5]])).argmax(1) == y
    assert joint.tolist() == [True, False, False]  # the undo the rule must refuse
    res = worst_case(defender, [first, second], x, y, eps=0.5)
    final_right = defender(res.x_adv).argmax(1) == y
    assert not bool(final_right[0]), "row 0 was broken by member 1 and must stay broken"
    assert torch.equal(final_right, res.robust) and torch.equal(res.robust, res.bookkept)
    broke = [st.broken for st in res.stages]
    assert broke == [1, 1]  # member 2's candidate for row 1 alone is kept, row 2's is not
    assert sum(broke) == int(res.clean_right.sum()) - int(res.robust.sum())
    for st in res.stages:  # wrong rows only ever grow
        assert int(st.broken_mask.sum()) == st.broken


def test_groups_are_decided_alone_and_the_joint_proposal_is_taken_when_it_undoes_nothing():
    n = 6
    defender = MeanCoupled(n, 3)
    x = torch.full((n, 2), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    st = BatchState.start(defender, x, y)
    assert bool(st.right.all())
    free = torch.arange(n)
    cand = x.clone()
    cand[0, 0] = 0.9  # group 0: breaks row 0, undoes nothing: taken whole
    cand[4, 0] = 0.9  # group 1: breaks row 4 ...
    accept(defender, defender.row_groups(), st, free, cand)
    assert st.right.tolist() == [False, True, True, True, False, True]
    assert float(st.x_adv[0, 0]) == pytest.approx(0.9) and float(st.x_adv[4, 0]) == pytest.approx(0.9)
    # a second proposal whose group-1 part would un-fool row 4: group 0's part still counts
    free = st.right.nonzero().squeeze(1)  # rows 1, 2, 3, 5
    cand = st.x_adv[free].clone()
    cand[free.tolist().index(1), 0] = 0.95  # group 0: row 1 above the new mean -> broken
    cand[free.tolist().index(3), 0] = 1.0   # group 1: rows 3 and 5 up, row 4 under the mean
    cand[free.tolist().index(5), 0] = 1.0
    accept(defender, defender.row_groups(), st, free, cand)
    right = defender(st.x_adv).argmax(1) == y
    assert torch.equal(right, st.right)
    assert not bool(right[0]) and not bool(right[4]), "broken rows stay broken"
    assert not bool(right[1]) and not bool(right[3]) and bool(right[5])


@pytest.fixture(scope="module")
def digits_pgd():
    model, meta = load_checkpoint(DIGITS_PGD, "cpu")
    return model, load_dataset("digits", seed=0), float(meta["config"]["eps"])


def test_default_ensemble_counts_add_up_and_transfer_is_judged_by_the_defender(digits_pgd):
    model, data, eps = digits_pgd
    assert "transfer" in ensemble_members(DEFAULT_ENSEMBLE)
    df = evaluate(model, data, [], ["pn", "bn", "shaped:1:9"], ensembles=["apgd+transfer"],
                  n_test=40, eps=eps, apgd_steps=20, n_target_classes=2)
    for clf, part in df.groupby("classified_with", sort=False):
        members = part[part["attack"] != WORST]
        worst = part[part["attack"] == WORST].iloc[0]
        n = int(worst["n"])
        clean_right = round(float(worst["clean_acc"]) * n)
        robust = round(float(worst["robust_acc"]) * n)
        assert int(members["broken"].sum()) == clean_right - robust, clf
        # the masks are the numbers: robust samples are a subset of the clean-right ones
        r = unpack_mask(worst["robust_mask"], n)
        c = unpack_mask(worst["clean_mask"], n)
        assert sum(r) == robust and sum(c) == clean_right
        assert all(ci or not ri for ri, ci in zip(r, c))
        if clf == "PN":  # no other norms to transfer from
            assert "transfer" not in set(members["attack"])
        else:
            t = members[members["attack"] == "transfer"].iloc[0]
            assert t["crafted_with"].startswith("transfer from PN")
            assert "transfer from PN" in worst["crafted_with"]
    assert not any("disagree" in w for w in df.attrs["warnings"])


def test_pn_crafted_apgd_stops_on_fooled_rows_without_changing_any_result(digits_pgd):
    from normshape_core.attacks import make_attack
    from normshape_core.attacks.apgd import apgd_run
    from normshape_core.attacks.apgd_t import TargetedLoss
    from normshape_core.attacks.base import per_sample_ce, top_other_classes
    from normshape_core.inference.shaping import PNClassifier

    model, data, eps = digits_pgd
    x, y = data.x_test[:60], data.y_test[:60]
    pn = PNClassifier(model)
    calls = []

    def plain(z):  # the same logits through a view that does not declare independent rows
        calls.append(len(z))
        return pn(z)

    s = make_attack("apgd", eps=eps, steps=30).settings
    fast = apgd_run(pn, x, y, per_sample_ce, s, x)
    full = apgd_run(plain, x, y, per_sample_ce, s, x)
    assert torch.equal(fast.fooled, full.fooled)
    assert torch.allclose(fast.x_adv, full.x_adv, atol=1e-6)
    assert set(calls) == {60}
    targets = top_other_classes(pn(x).detach(), y, 1)[:, 0]
    fast = apgd_run(pn, x, y, TargetedLoss(targets), s, x)
    full = apgd_run(plain, x, y, TargetedLoss(targets), s, x)
    assert torch.equal(fast.fooled, full.fooled)


def _evaluate_moons(work_dir=None):
    model, meta = load_checkpoint(MOONS_SHAPED, "cpu")
    data = load_dataset("moons", seed=0)
    return evaluate(model, data, ["pgd"], ["pn", "bn", "shaped:1:3"],
                    ensembles=["apgd+transfer+square"], n_test=150, batch_size=50,
                    eps=float(meta["config"]["eps"]), apgd_steps=15, square_queries=40,
                    n_target_classes=1, work_dir=work_dir)


RESUME_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_worst_case_engine import _evaluate_moons
_evaluate_moons({work!r})
"""


def test_a_killed_evaluation_resumes_and_ends_with_the_same_numbers(tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "NORMSHAPE_FAULT": "eval.unit:14", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    script = RESUME_SCRIPT.format(tests=str(ROOT / "tests"), work=str(work))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed at the 14th write
    lines = (work / "units.jsonl").read_text().splitlines()
    assert len(lines) >= 14
    assert list(work.glob("ens*_b*_m*.safetensors")), "the ensemble's examples were kept"
    resumed = _evaluate_moons(work)
    assert resumed.attrs["resumed_units"] == len(lines)
    assert not work.exists(), "the work folder goes once the evaluation completes"
    straight = _evaluate_moons()
    keys = ["attack", "classified_with", "clean_acc", "robust_acc", "n", "broken",
            "clean_mask", "robust_mask", "crafted_with"]
    a = resumed[keys].astype(str).reset_index(drop=True)
    b = straight[keys].astype(str).reset_index(drop=True)
    assert a.equals(b)


def test_ensemble_bounds_only_fall_and_end_at_the_worst_case(digits_pgd):
    model, data, eps = digits_pgd
    seen = []
    df = evaluate(model, data, [], ["bn"], ensembles=["apgd+transfer+square"], n_test=60,
                  batch_size=30, eps=eps, apgd_steps=10, square_queries=20,
                  n_target_classes=1, on_bound=seen.append)
    values = [u.value for u in seen]
    assert values == sorted(values, reverse=True)
    assert seen[-1].final and seen[-1].robust == round(
        float(df[df["attack"] == WORST]["robust_acc"].iloc[0]) * 60)
    mid = [u for u in seen if not u.final]
    assert mid[0].text().startswith("<= ") and "to go" in mid[0].text()
    assert "apgd on 1/2 batches" in mid[0].text()
    assert mid[-1].to_go == [] and mid[-1].done == ["apgd", "transfer", "square"]


def test_stale_cache_entries_of_an_earlier_engine_are_pruned(tmp_path):
    from normshape_core.measuring.evaluation import (EvalSettings, _cache_key, prune_cache,
                                                     update_cache)

    sha = "a" * 64
    s = EvalSettings(attacks=["pgd"], n_test=10)
    path = tmp_path / "model.eval.json"
    update_cache(path, _cache_key(sha, s), {"weights_sha256": sha, "settings": s.to_dict(),
                                            "rows": []})
    old = {k: v for k, v in s.to_dict().items() if k != "apgd_restarts"}
    update_cache(path, "0123456789abcdef01234567", {"weights_sha256": sha, "settings": old,
                                                    "rows": []})
    update_cache(path, "feedfacefeedfacefeedface", {"weights_sha256": sha,
                                                    "settings": {**old, "bogus": 1},
                                                    "rows": []})
    assert prune_cache(path) == 2
    import json
    assert list(json.loads(path.read_text())["entries"]) == [_cache_key(sha, s)]
    assert prune_cache(path) == 0


def test_the_shipped_worst_case_budgets_by_model():
    from normshape_core.studies.reproduce import (is_headline, table_iv_worst_settings,
                                                  worst_case_settings)

    head = dict(method="pgd", shaping="attack+train", ratio="1:3")
    other = dict(method="pgd", shaping="train", ratio="1:3")
    assert is_headline(head) and is_headline({"method": "natural"})
    assert not is_headline(other) and not is_headline({**head, "ratio": "1:7"})
    assert not is_headline({**head, "polluted_running_stats": True})
    assert worst_case_settings("fashion_mnist", config=head)["n_test"] == 1000
    assert worst_case_settings("fashion_mnist", config=other)["n_test"] == 200
    assert worst_case_settings("digits", config=other)["n_test"] == 397
    iv = table_iv_worst_settings("fashion_mnist")
    assert iv["n_test"] == 200 and iv["classify"][0] == "shaped:1:0"
    assert worst_case_settings("moons")["ensemble"] == DEFAULT_ENSEMBLE
