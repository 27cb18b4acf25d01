"""The other fixes for BatchNorm in adversarial training, as classifier views beside shaping's
(the paper's related work, section III): each method is classified, and attacked, through
its own norms.

- ``dual:clean`` / ``dual:adv`` (``DualBNClassifier``): a dual-BN model (``norms.
  DualBatchNorm``; Han et al. 2021, Sitawarin et al. 2021) with PN of its clean set or of its
  adversarial set. The two are classifiers of their own; a defender has to pick one.
- ``own`` (``OwnNormsClassifier``): a model without batch statistics (GroupNorm, LayerNorm,
  normalizer-free): its rows never interact, so PN, BN and shaped inference give it the same
  logits; ``own`` names it for what it is.
- ``tts[:n=N][:mix=W][:poison=P]`` (``TestTimeStatsClassifier``): a trained BN model whose
  BN statistics are re-estimated before classifying on N clean test-time samples (Benz et
  al. WACV 2021 use 32, the default), optionally mixed with its PN, ``W * re-estimated + (1 -
  W) * PN`` (the mixing of Schneider et al. 2020), optionally with a fraction P of those
  samples replaced by an attacker's inputs (``poison_samples``). The samples are the first N
  of the reference pool the view is given (the evaluation's: clean training samples drawn
  with its seed). The worst case through this view is the attacker who knows the
  re-estimation set: the view is deterministic and its statistics are what the attacker
  crafts through.

Every class says which other views an attacker should also try as transfer sources
(``transfer_from``: classify specs), and ``make_classifier`` / ``parse_classify`` extend
``shaping.parse_classifier`` with these specs.
"""
from __future__ import annotations

import copy
import functools
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..settings.config import ConfigError, Ratio
from ..blocks.models import NORM_LABELS, WSConv2d
from ..blocks.norms import ADV, CLEAN, NormMode, bn_modules, dual_route, has_dual_bn, norm_mode
from .shaping import Classifier, cpu_layout, parse_classifier

#: Benz et al. (WACV 2021) adapt BN statistics on 32 samples
DEFAULT_TTS_SAMPLES = 32
#: the poisoner's optimisation: signed-gradient steps of this size on inputs in [0, 1]
POISON_STEPS = 50
POISON_STEP_SIZE = 0.05


# ====================================================================== dual BN
class DualBNClassifier(Classifier):
    """A dual-BN model with PN of one of its two sets: ``branch`` "clean" or "adv"."""

    rows_independent = True

    def __init__(self, model: nn.Module, branch: str):
        if branch not in (CLEAN, ADV):
            raise ConfigError(f"a dual-BN branch is clean or adv, got {branch!r}")
        if not has_dual_bn(model):
            raise ConfigError(f"dual:{branch} needs a dual-BN model; this model has "
                              f"{'BN layers' if bn_modules(model) else 'no BN layers'}")
        self.model, self.branch = model, branch
        self.crafting_label = f"PN [{branch} norms]"
        other = ADV if branch == CLEAN else CLEAN
        self.transfer_from: Tuple[str, ...] = (f"dual:{other}",)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with dual_route(self.model, self.branch), norm_mode(self.model, NormMode.PN):
            return self.model(cpu_layout(x))

    def describe(self) -> str:
        return f"dual BN [{self.branch} norms]"


# ====================================================================== no batch statistics
def norm_kind(model: nn.Module) -> str:
    """The norm layers of a built model: bn, dual_bn, gn, ln or nf (``models.NORMS``)."""
    if has_dual_bn(model):
        return "dual_bn"
    if bn_modules(model):
        return "bn"
    if any(isinstance(m, WSConv2d) for m in model.modules()):
        return "nf"
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        return "ln"
    if any(isinstance(m, nn.GroupNorm) for m in model.modules()):
        return "gn"
    return "nf"


class OwnNormsClassifier(Classifier):
    """A model without batch statistics (GroupNorm, LayerNorm, normalizer-free), classified
    as it is: every row on its own."""

    rows_independent = True
    transfer_from: Tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        kind = norm_kind(model)
        if kind in ("bn", "dual_bn"):
            raise ConfigError("'own' is for models without batch statistics (GroupNorm, "
                              "LayerNorm, normalizer-free); a BN model is classified with pn, "
                              "bn or shaped:ADV:CLEAN (dual BN: dual:clean or dual:adv)")
        self.model, self.kind = model, kind
        self.crafting_label = NORM_LABELS[kind]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with norm_mode(self.model, NormMode.PN):  # eval(): nothing else to switch
            return self.model(cpu_layout(x))

    def describe(self) -> str:
        return f"{NORM_LABELS[self.kind]} (no batch statistics)"


# ====================================================================== test-time statistics
def _stats_bn_forward(bn: nn.Module, x: torch.Tensor, *, m: int, mix: float,
                      out: Dict[int, Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One BN layer of the re-estimation forward over ``[set rows; other rows]``: the first m
    rows (the re-estimation set) are normalised with their own batch statistics, exactly as
    PyTorch's re-estimation forward does; their mean and unbiased variance, mixed with the
    layer's PN (``mix``), are the layer's new running statistics (kept in ``out``, with
    gradient) and normalise the other rows as PN would."""
    dims = [0] + list(range(2, x.dim()))
    s = x[:m]
    mean = s.mean(dims)
    var = s.var(dims, unbiased=False)
    count = s.numel() // s.shape[1]
    new_mean = mix * mean + (1 - mix) * bn.running_mean
    new_var = mix * var * (count / max(count - 1, 1)) + (1 - mix) * bn.running_var
    out[id(bn)] = (new_mean, new_var)
    top = F.batch_norm(s, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if len(x) == m:
        return top
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(new_var + bn.eps)  # PN's arithmetic, differentiable in the statistics
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -new_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    rest = x[m:] * scale.reshape(shape) + shift.reshape(shape)
    return torch.cat([top, rest])


def reestimation_forward(model: nn.Module, samples: torch.Tensor,
                         x: Optional[torch.Tensor] = None, mix: float = 1.0
                         ) -> Tuple[Optional[torch.Tensor], Dict[str, Tuple[torch.Tensor, torch.Tensor]]]:
    """Re-estimate every BN layer's statistics on ``samples`` (one batch: each layer's input
    is computed with the statistics re-estimated before it, as a train-mode forward with
    momentum None gives), mixed with PN by ``mix``; with ``x``, also the logits of x
    classified with the new statistics, all in one differentiable forward. Returns (logits
    of x or None, {BN layer name: (running mean, running var)}); the model is unchanged."""
    bns = {id(m) for m in bn_modules(model)}
    named = [(n, m) for n, m in model.named_modules() if id(m) in bns]
    found: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    m = len(samples)
    if m < 2:
        raise ConfigError("re-estimating BN statistics needs at least 2 samples")
    inputs = samples if x is None else torch.cat([samples, x.to(samples.dtype)])
    try:
        for _, bn in named:
            bn.forward = functools.partial(_stats_bn_forward, bn, m=m, mix=float(mix), out=found)
        with norm_mode(model, NormMode.PN):
            logits = model(cpu_layout(inputs))
    finally:
        for _, bn in named:
            bn.__dict__.pop("forward", None)
    stats = {name: found[id(bn)] for name, bn in named if id(bn) in found}
    return (None if x is None else logits[m:]), stats


def poison_samples(model: nn.Module, samples: torch.Tensor, n_poison: int, *, mix: float = 1.0,
                   steps: int = POISON_STEPS, step_size: float = POISON_STEP_SIZE
                   ) -> torch.Tensor:
    """The re-estimation set with its last ``n_poison`` rows replaced by an attacker's inputs
    (anything in the valid input range [0, 1]), chosen to do the most harm: starting from the
    rows they replace, signed-gradient ascent (``steps`` steps of ``step_size``) on the
    cross-entropy of the clean rows of the set, classified with the statistics re-estimated on
    the poisoned set, against the labels the unpoisoned statistics give them (the attacker
    needs no labels). Deterministic."""
    n_poison = int(n_poison)
    if n_poison <= 0:
        return samples
    keep, z = samples[:-n_poison].detach(), samples[-n_poison:].detach().clone()
    with torch.no_grad():
        target = reestimation_forward(model, samples, keep, mix)[0].argmax(1)
    for _ in range(int(steps)):
        z.requires_grad_(True)
        logits, _ = reestimation_forward(model, torch.cat([keep, z]), keep, mix)
        grad, = torch.autograd.grad(F.cross_entropy(logits, target), z)
        with torch.no_grad():
            z = (z + step_size * grad.sign()).clamp(0.0, 1.0)
    return torch.cat([keep, z.detach()])


class TestTimeStatsClassifier(Classifier):
    """A BN model classified with PN re-estimated on ``samples`` (clean test-time samples;
    with ``poison`` > 0 the last round(poison * n) of them replaced by ``poison_samples``),
    mixed with its trained PN by ``mix``. The trained model is left as it is: the view holds
    a copy whose only difference is its running statistics (``self.model``)."""

    rows_independent = True
    #: the attacker who does not know the re-estimation set crafts through the trained PN
    transfer_from: Tuple[str, ...] = ("pn",)

    def __init__(self, model: nn.Module, samples: torch.Tensor, *, mix: float = 1.0,
                 poison: float = 0.0):
        if not bn_modules(model) or has_dual_bn(model):
            raise ConfigError("test-time statistics re-estimate a BN model's statistics; this "
                              "model has " + ("dual BN" if has_dual_bn(model) else
                                              "no batch statistics"))
        if not 0 < mix <= 1:
            raise ConfigError(f"tts mix must be in (0, 1], got {mix}")
        if not 0 <= poison < 1:
            raise ConfigError(f"tts poison must be in [0, 1), got {poison}")
        self.base = model
        self.mix, self.n = float(mix), len(samples)
        self.n_poison = int(round(poison * self.n))
        samples = samples.detach().to(next(model.parameters()).device)
        self.samples = poison_samples(model, samples, self.n_poison, mix=self.mix)
        with torch.no_grad():
            _, stats = reestimation_forward(model, self.samples, mix=self.mix)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        modules = dict(self.model.named_modules())
        for name, (mean, var) in stats.items():
            modules[name].running_mean.copy_(mean.detach())
            modules[name].running_var.copy_(var.detach())
        self.crafting_label = ("re-estimated PN (poisoned set)" if self.n_poison
                               else "re-estimated PN (known set)")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with norm_mode(self.model, NormMode.PN):
            return self.model(cpu_layout(x))

    def describe(self) -> str:
        return tts_description(self.n, self.mix, self.n_poison)


def tts_description(n: int, mix: float, n_poison: int) -> str:
    """``test-time statistics (32 samples, 4 poisoned, mixed 0.5 with PN)``."""
    how = [f"{n} samples, {n_poison} poisoned" if n_poison else f"{n} clean samples"]
    if mix != 1:
        how.append(f"mixed {mix:g} with PN")
    return f"test-time statistics ({', '.join(how)})"


# ====================================================================== specs
_TTS_KEYS = {"n": int, "mix": float, "poison": float}


def _tts_options(spec: str) -> Dict[str, Union[int, float]]:
    """``tts[:n=N][:mix=W][:poison=P]`` -> {n, mix, poison} (defaults filled), checked."""
    opts: Dict[str, Union[int, float]] = {"n": DEFAULT_TTS_SAMPLES, "mix": 1.0, "poison": 0.0}
    for part in spec.split(":")[1:]:
        m = re.fullmatch(r"(n|mix|poison)=([0-9]*\.?[0-9]+)", part)
        if not m:
            raise ConfigError(f"test-time statistics spec {spec!r}: {part!r} is not n=N, "
                              f"mix=W or poison=P (e.g. tts:n=32:mix=0.5:poison=0.125)")
        try:
            opts[m.group(1)] = _TTS_KEYS[m.group(1)](m.group(2))
        except ValueError:
            raise ConfigError(f"test-time statistics spec {spec!r}: {part!r} is not a "
                              f"number of the right kind") from None
    if not 2 <= opts["n"] <= 1_000_000:
        raise ConfigError(f"{spec!r}: n must be a whole number in [2, 1,000,000]")
    if not 0 < opts["mix"] <= 1:
        raise ConfigError(f"{spec!r}: mix must be in (0, 1]")
    if not 0 <= opts["poison"] < 1:
        raise ConfigError(f"{spec!r}: poison must be in [0, 1)")
    return opts


def check_spec(spec: str) -> str:
    """One inference-mode spec, checked, in its canonical form: ``pn``, ``bn``,
    ``shaped:A:C``, ``dual:clean``, ``dual:adv``, ``own``, ``tts[:n=N][:mix=W][:poison=P]``
    (defaults left out)."""
    s = str(spec).strip().lower()
    if s in ("pn", "bn", "own", "dual:clean", "dual:adv"):
        return s
    if s.startswith("shaped:"):
        return f"shaped:{Ratio.parse(s.split(':', 1)[1])}"
    if s == "tts" or s.startswith("tts:"):
        o = _tts_options(s)
        parts = ["tts"] + [f"{k}={o[k]:g}" for k, d in (("n", DEFAULT_TTS_SAMPLES), ("mix", 1.0),
                                                          ("poison", 0.0)) if o[k] != d]
        return ":".join(parts)
    raise ConfigError(f"unknown inference mode {spec!r}; use pn, bn, shaped:ADV:CLEAN, "
                      f"dual:clean, dual:adv, own or tts[:n=N][:mix=W][:poison=P]")


def describe_spec(spec: str, norm: str = "bn") -> str:
    """What ``make_classifier(spec, ...).describe()`` returns, without building it (the
    evaluation's rows name their classifier so); ``norm``: the model's (``own``)."""
    from .shaping import default_group_size

    s = check_spec(spec)
    if s == "pn":
        return "PN"
    if s == "bn":
        return "BN"
    if s.startswith("shaped:"):
        r = Ratio.parse(s.split(":", 1)[1])
        return f"shaped {r} (g={default_group_size(r)})"
    if s.startswith("dual:"):
        return f"dual BN [{s.split(':', 1)[1]} norms]"
    if s == "own":
        return f"{NORM_LABELS[norm]} (no batch statistics)"
    o = _tts_options(s)
    return tts_description(int(o["n"]), float(o["mix"]), int(round(o["poison"] * o["n"])))


def parse_classify(specs: Union[str, Sequence[str]]) -> List[str]:
    """``"pn,dual:adv,tts:mix=0.5"`` -> checked canonical specs, repeats dropped (the superset
    of ``evaluation.parse_classify``)."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out: List[str] = []
    for raw in items:
        if not str(raw).strip():
            continue
        s = check_spec(raw)
        if s not in out:
            out.append(s)
    if not out:
        raise ConfigError("no inference mode given (use e.g. --classify pn,bn,shaped:1:9)")
    return out


def make_classifier(spec: str, model: nn.Module, reference_pool: Optional[torch.Tensor] = None,
                    *, group_size: Optional[int] = None, seed: int = 0,
                    fresh_references: bool = False) -> Classifier:
    """Any inference-mode spec (``check_spec``) -> its classifier; ``pn``, ``bn`` and
    ``shaped:`` through ``shaping.parse_classifier``. ``tts`` takes its samples from the
    start of ``reference_pool``."""
    s = check_spec(spec)
    if s.startswith("dual:"):
        return DualBNClassifier(model, s.split(":", 1)[1])
    if s == "own":
        return OwnNormsClassifier(model)
    if s.startswith("tts"):
        o = _tts_options(s)
        if reference_pool is None:
            raise ConfigError(f"{spec!r} needs clean samples to re-estimate the statistics on")
        if o["n"] > len(reference_pool):
            raise ConfigError(f"{spec!r} needs {o['n']} samples; the pool has "
                              f"{len(reference_pool)}")
        return TestTimeStatsClassifier(model, reference_pool[:int(o["n"])], mix=float(o["mix"]),
                                       poison=float(o["poison"]))
    return parse_classifier(s, model, reference_pool, group_size=group_size, seed=seed,
                            fresh_references=fresh_references)
