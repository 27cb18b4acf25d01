"""The attack registry: names -> classes, aliases, the one function every call site uses to
make an attack (``make_attack``) and the one that reads each attack's declared budget
(``budget_settings``). A new attack is one file plus one entry in ``ATTACKS``."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F

from ..settings.config import ConfigError
from .adaptive import AdaptiveExactReferences, AdaptiveOwnReferencesEOT
from .apgd import APGD, APGDDLR
from .apgd_t import APGDTargeted
from .base import LINF, Attack
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .fab_t import FABTargeted
from .fgsm import FGSM
from .pgd import PGD
from .shaping_attack import ShapingAttack
from .square import Square
from .transfer import Transfer

ATTACKS: Dict[str, Type[Attack]] = {
    a.name: a for a in (FGSM, PGD, APGD, APGDDLR, APGDTargeted, FABTargeted, Square,
                        CarliniWagnerL2, DeepFool, ShapingAttack, AdaptiveExactReferences,
                        AdaptiveOwnReferencesEOT, Transfer)
}
ATTACK_ALIASES: Dict[str, Tuple[str, ...]] = {
    "adaptive": ("adaptive_exact", "adaptive_eot"),
    "apgd-ce": ("apgd",), "apgd_ce": ("apgd",), "apgd-dlr": ("apgd_dlr",),
    "apgd-t": ("apgd_t",), "fab-t": ("fab_t",), "square-linf": ("square",), "cw-l2": ("cw",),
    "cw_l2": ("cw",),
}
#: members of the worst-case ensembles only: they need the ensemble (transfer hands over
#: candidates for the defender to judge), so they are not offered as attacks of their own
ENSEMBLE_ONLY_ATTACKS = ("transfer",)
#: attacks that target shaped inference only (crafted per shaped classifier)
ADAPTIVE_ATTACKS = ("adaptive_exact", "adaptive_eot")
#: attacks with an eps bound (the others are minimal-perturbation attacks)
LINF_ATTACKS = tuple(n for n, a in ATTACKS.items() if a.threat_model == LINF)


def single_attacks() -> List[str]:
    """The registry's attacks a user may run on their own, in its order: every one but the
    ensemble-only members (read when called, so an attack registered later is in it)."""
    return [n for n in ATTACKS if n not in ENSEMBLE_ONLY_ATTACKS]


def parse_attack_names(names: "str | Sequence[str]") -> List[str]:
    """``"fgsm,pgd,adaptive"`` -> registry keys, aliases expanded, order kept, no repeats."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: List[str] = []
    for raw in items:
        key = str(raw).strip().lower()
        if not key:
            continue
        keys = ATTACK_ALIASES.get(key, (key,))
        for k in keys:
            if k not in ATTACKS:
                raise ConfigError(f"unknown attack {raw!r}; choose from: "
                                  f"{', '.join(list(ATTACKS) + list(ATTACK_ALIASES))}")
            if k not in out:
                out.append(k)
    if not out:
        raise ConfigError("no attack given")
    return out


def budget_settings(name: str, values: Mapping[str, Any], *, ensemble: bool = False
                    ) -> Dict[str, Any]:
    """The settings of attack ``name`` that an evaluation's budget sets: for each entry of the
    attack's ``budget`` (settings field -> ``EvalSettings`` field), and of its
    ``ensemble_budget`` when ``ensemble``, the value ``values`` holds for that EvalSettings
    field; fields absent from ``values`` or None there are left out (the attack's default, or
    the caller's common value, stays)."""
    cls = ATTACKS[name]
    declared = {**cls.budget, **(cls.ensemble_budget if ensemble else {})}
    return {field_: values[source] for field_, source in declared.items()
            if values.get(source) is not None}


def make_attack(name: str, *, eps: Optional[float] = None, reference_pool=None,
                **overrides) -> Attack:
    """An attack from the registry; ``eps`` and any override that names one of the attack's
    settings fields is applied, the rest is ignored (so one call site serves all attacks).
    Settings are checked here (``ConfigError``, one line)."""
    (key,) = parse_attack_names(name)[:1]
    cls = ATTACKS[key]
    fields_ = {f.name for f in dataclasses.fields(cls.Settings)}
    kw = {k: v for k, v in overrides.items() if k in fields_ and v is not None}
    if eps is not None and "eps" in fields_:
        kw["eps"] = float(eps)
    if cls is AdaptiveOwnReferencesEOT:
        return cls(reference_pool=reference_pool, **kw)
    return cls(**kw)


def zero_gradient_fraction(fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose cross-entropy gradient w.r.t. the input is exactly zero
    (AutoAttack's check: such samples make gradient attacks fail silently)."""
    xa = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(fn(xa), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xa)
    return float((g.flatten(1).abs().amax(1) == 0).float().mean())
