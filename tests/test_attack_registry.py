"""Adding an attack is one file plus one registry entry: each attack declares the budget an
evaluation sets (``Attack.budget``), and the CLI, the ensembles and the evaluation read the
registry. A toy attack, written to a temporary module and registered for one test only,
appears in ``--attacks`` (help and parse), joins an ensemble spec (``apgd+toy``) and gets its
budget setting from the evaluation's flags."""
from __future__ import annotations

import dataclasses
import importlib
import textwrap
from pathlib import Path

import pytest

from normshape_core.attacks import ATTACKS, budget_settings, make_attack
from normshape_core.attacks import registry
from normshape_core.measuring.evaluation import EvalSettings, _single_settings, split_attacks
from normshape_core.measuring.worst_case import make_ensemble

ROOT = Path(__file__).resolve().parents[1]
MOONS = ROOT / "checkpoints" / "moons" / "moons-mlp-pgd-shape-attack-train-r1-3-eps0.12-s0"
EVAL_FIELDS = {f.name for f in dataclasses.fields(EvalSettings)}

TOY = '''
"""A toy attack for the registry test: returns the clean inputs, records its budget."""
from dataclasses import dataclass

from normshape_core.attacks.base import Attack
from normshape_core.attacks.threat import LINF

SEEN = []


@dataclass
class ToySettings:
    eps: float = 8 / 255
    iterations: int = 1
    seed: int = 0


class Toy(Attack):
    name = "toy"
    threat_model = LINF
    Settings = ToySettings
    budget = {"iterations": "apgd_steps"}

    def craft(self, fn, x, y):
        SEEN.append(self.settings.iterations)
        return x.clone(), {}
'''


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_declared_budget_names_a_settings_field_and_an_evaluation_setting(name):
    cls = ATTACKS[name]
    fields = {f.name for f in dataclasses.fields(cls.Settings)}
    for field, source in {**cls.budget, **cls.ensemble_budget}.items():
        assert field in fields, f"{name}: budget names {field!r}, not a settings field"
        assert source in EVAL_FIELDS, f"{name}: {source!r} is not an EvalSettings field"


def test_the_budget_is_read_from_the_registry():
    s = EvalSettings(apgd_steps=7, square_queries=11, cw_steps=5, n_target_classes=3,
                     fgsm_eps=0.2, apgd_restarts=4)
    assert budget_settings("square", s.to_dict()) == {"n_queries": 11}
    assert budget_settings("apgd_t", s.to_dict()) == {"steps": 7, "n_target_classes": 3}
    assert budget_settings("fgsm", s.to_dict()) == {"eps": 0.2}
    assert budget_settings("fgsm", EvalSettings().to_dict()) == {}  # None: the common eps
    # APGD-CE's restarts come from apgd_restarts in an ensemble only; APGD-DLR's never
    assert budget_settings("apgd", s.to_dict()) == {"steps": 7}
    assert budget_settings("apgd", s.to_dict(), ensemble=True) == {"steps": 7, "restarts": 4}
    assert budget_settings("apgd_dlr", s.to_dict(), ensemble=True) == {"steps": 7}
    ens = {a.name: a.settings for a in make_ensemble(
        ["apgd", "apgd_dlr", "square", "cw", "pgd"], eps=0.1, steps=7, pgd_steps=3,
        cw_steps=5, n_queries=11, restarts=1, vector_input=True)}
    assert (ens["apgd"].steps, ens["apgd"].restarts) == (7, 5)  # 5 runs on vector inputs
    assert (ens["apgd_dlr"].steps, ens["apgd_dlr"].restarts) == (7, 1)
    assert ens["square"].n_queries == 11 and ens["cw"].steps == 5 and ens["pgd"].steps == 3


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy attack's module, written to a temporary folder and registered for this test
    only (monkeypatch removes the entry and the import path afterwards)."""
    (tmp_path / "normshape_toy_attack.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("normshape_toy_attack")
    monkeypatch.setitem(registry.ATTACKS, "toy", module.Toy)
    yield module
    monkeypatch.delitem(registry.ATTACKS, "toy")
    import sys

    sys.modules.pop("normshape_toy_attack", None)


def test_a_toy_attack_joins_the_cli_the_ensembles_and_the_budget(toy, capsys):
    from normshape_core.cli import build_parser, main

    # the CLI's --attacks: help and parse
    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    help_text = next(a.help for a in evaluate._actions if "--attacks" in a.option_strings)
    assert "toy" in help_text
    assert split_attacks("pgd,toy,apgd+toy") == (["pgd", "toy"], ["apgd+toy"])
    # its budget, in a single run and in an ensemble
    s = EvalSettings(apgd_steps=3)
    assert make_attack("toy", **_single_settings(s, "toy", {"eps": 0.1})).settings.iterations == 3
    members = make_ensemble(["apgd", "toy"], eps=0.1, steps=4)
    assert [m.name for m in members] == ["apgd", "toy"] and members[1].settings.iterations == 4
    # through the front door: the command runs it alone and in an ensemble, with its budget
    rc = main(["evaluate", str(MOONS), "--attacks", "toy,apgd+toy", "--classify", "pn",
               "--n-test", "20", "--apgd-steps", "2", "--no-cache", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert toy.SEEN and set(toy.SEEN) == {2}, toy.SEEN  # every toy run had --apgd-steps
    assert "\ntoy    PN" in out.out, out.out  # the single attack's row
    assert "worst of 2 attacks (apgd, toy)" in out.out and "toy broke" in out.out, out.out


def test_the_toy_is_gone_after_its_test():
    assert "toy" not in ATTACKS
