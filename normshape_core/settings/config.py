"""Validated settings, one dataclass per concern, each field with its help text.

``help`` lives in each field's metadata, so the CLI (``python -m normshape_core train
--help``) and the app's forms document themselves from here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .presets import DATASET_PRESETS

METHODS = ("natural", "pgd", "trades")
SHAPING_MODES = ("none", "train", "attack+train")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "multistep")
#: bounds of the settings (checked before anything is built or loaded)
MAX_SEED = 2 ** 31 - 3  # the trainer seeds generators with seed, seed + 1 and seed + 2
MAX_THREADS = 1024  # the most CPU threads any command accepts
MAX_MODEL_WIDTH = 4096
MAX_MODEL_DEPTH = 1000
#: the largest model normshape trains and reads back, counted before it is built (the
#: paper's wide ResNet-34-10 has 46.2 M parameters); one limit for the trainer
#: (``training.check_model_size``) and the checkpoint schema (``checkpoints.validate_meta``)
MAX_PARAMETERS = 200_000_000
MAX_RATIO_PARTS = 1000
MAX_COUNT = 10 ** 9
_KIND_TEXT = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


class ConfigError(ValueError):
    """An invalid setting; the message is one line meant for the user. ``field``: the
    ``TrainConfig`` field it is about, when it is about one (``checkpoints.validate_meta``
    names it, ``config.<field>``)."""

    def __init__(self, message: str = "", *, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


def _about(field_name: str, check, *args, **kwargs):
    """``check(*args, **kwargs)``, its ``ConfigError`` said to be about ``field_name``."""
    try:
        return check(*args, **kwargs)
    except ConfigError as e:
        raise ConfigError(str(e), field=e.field or field_name) from None


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Ratio:
    """Ratio adv:clean as in the paper's Table IV: ``1:3`` = one adversarial part per three
    clean parts (the paper's n = 3); ``1:0`` = all adversarial."""

    adv: int
    clean: int

    @classmethod
    def parse(cls, text: "str | Ratio", *, allow_zero_clean: bool = True) -> "Ratio":
        if isinstance(text, Ratio):
            r = text
        else:
            m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
            if not m:
                raise ConfigError(
                    f"ratio {text!r} is not of the form ADV:CLEAN with whole numbers, e.g. 1:3")
            r = cls(int(m.group(1)), int(m.group(2)))
        if r.adv < 1:
            raise ConfigError(f"ratio {r} has no adversarial part: the first number must be >= 1")
        if not allow_zero_clean and r.clean < 1:
            raise ConfigError(f"ratio {r} has no clean part: shaping needs at least one")
        return r

    @property
    def parts(self) -> int:
        return self.adv + self.clean

    def split(self, batch_size: int) -> "tuple[int, int]":
        """(clean count, adversarial count) of a shaped batch of ``batch_size`` samples."""
        if batch_size % self.parts:
            raise ConfigError(
                f"batch size {batch_size} does not split into {self.parts} equal parts for "
                f"ratio {self}; use a multiple of {self.parts}")
        n_adv = batch_size * self.adv // self.parts
        return batch_size - n_adv, n_adv

    def __str__(self) -> str:
        return f"{self.adv}:{self.clean}"


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means: the dataset preset's value."""

    dataset: str = _f("moons", "dataset name (moons, spirals, digits, fashion_mnist, mnist, cifar10)")
    model: Optional[str] = _f(None, "model name (mlp, small_cnn, preact_resnet18, wide_resnet); "
                                    "default: the dataset preset's")
    model_width: Optional[int] = _f(None, "width multiplier of the model (hidden units, channels "
                                          "or WRN width); default: the model's own")
    model_depth: Optional[int] = _f(None, "depth of the model (MLP layers, WRN depth 6k+4); "
                                          "default: the model's own")
    norm: str = _f("bn", "norm layers of the model: bn (BatchNorm), dual_bn (a clean and an "
                         "adversarial set: clean rows train through the clean one, adversarial "
                         "rows through the other), gn (GroupNorm, CNN), ln (LayerNorm, MLP), "
                         "nf (normalizer-free CNN: scaled weight standardisation)")
    method: str = _f("pgd", "training objective: natural, pgd (Madry PGD-AT), trades")
    shaping: str = _f("none", "shaping mode: none (adv only, plain PGD), train (shaping in "
                              "training), attack+train (shaping in attack and training)")
    ratio: str = _f("1:3", "ratio adv:clean of a shaped batch, e.g. 1:3 (paper's n = 3)")
    eps: Optional[float] = _f(None, "L-inf perturbation bound in input units ([0, 1] scale)")
    step_size: Optional[float] = _f(None, "attack step size in input units; default eps/4")
    steps: Optional[int] = _f(None, "attack steps K of PGD / TRADES crafting in training")
    random_start: bool = _f(True, "start each attack from a uniform random point in the eps-ball")
    trades_beta: float = _f(6.0, "TRADES trade-off weight beta of the KL term")
    trades_kl_in_loss: bool = _f(True, "keep TRADES' KL term in the training loss; off = the "
                                       "paper's variant (KL for crafting only, CE for training)")
    polluted_running_stats: bool = _f(False, "let attack steps update running statistics, as the "
                                             "TensorFlow code the paper built on did (teaching only)")
    agc_clip: Optional[float] = _f(None, "adaptive gradient clipping (Brock et al. 2021): clip "
                                         "each unit's gradient to this fraction of its weight "
                                         "norm, final layer excepted; normalizer-free runs use "
                                         "0.01; none: no clipping")
    batch_size: Optional[int] = _f(None, "training batch size B")
    epochs: Optional[int] = _f(None, "training epochs (ignored when max_steps is set)")
    max_steps: Optional[int] = _f(None, "stop after this many training steps (paper: 80000)")
    n_train: Optional[int] = _f(None, "use only the first N training samples (seeded shuffle)")
    optimizer: Optional[str] = _f(None, "optimiser: sgd (momentum) or adam")
    lr: Optional[float] = _f(None, "learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: Optional[float] = _f(None, "weight decay")
    lr_schedule: Optional[str] = _f(None, "learning-rate schedule: constant, cosine, multistep "
                                          "(x0.1 at 50% and 75% of the steps)")
    eval_samples: int = _f(500, "test samples for the end-of-epoch clean/robust check")
    seed: int = _f(0, "seed for weights, data order, attack starts and reference pools")
    device: str = _f("auto", "device: auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps")
    data_root: Optional[str] = _f(None, "folder with dataset files (torchvision layout or the "
                                        "original idx/binary files); default: standard places")
    channels_last: bool = _f(False, "store image models channels-last (NHWC): several times "
                                    "faster on CPU; float results differ from NCHW, so a run "
                                    "reproduces only with the same setting")
    sync_bn: bool = _f(False, "under torchrun: SyncBatchNorm, BN statistics of the global batch "
                              "(all ranks; it has the exact ratio adv:clean too, since every "
                              "rank's batch has it) instead of each rank's local batch of B/W")
    dist_backend: str = _f("auto", "under torchrun: process-group backend, auto (nccl on GPUs, "
                                   "gloo on CPU), nccl or gloo")

    # ---------------------------------------------------------------- derived
    def resolved(self) -> "TrainConfig":
        """A copy with every ``None`` filled from the dataset preset, then validated."""
        self._check_types()
        preset = dataset_preset(self.dataset)
        values = dataclasses.asdict(self)
        for k, v in preset.items():
            if values.get(k) is None:
                values[k] = v
        if values["step_size"] is None and values["eps"] is not None:
            values["step_size"] = values["eps"] / 4
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every field checked: types, finite numbers, ranges, names from the registries,
        paths that exist. One ``ConfigError`` (one line) for the first problem found."""
        self._check_types()
        self._check_names()
        ratio = self._check_ratio()
        self._check_numbers()
        self._check_choices(ratio)

    def _check_names(self) -> None:
        """Dataset, model, method and shaping mode from their registries, and the norm."""
        from ..blocks.data import DATASETS
        from ..blocks.models import MODELS

        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of: "
                              f"{', '.join(DATASETS)}", field="dataset")
        if self.model is not None and self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}",
                              field="model")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}",
                              field="method")
        if self.shaping not in SHAPING_MODES:
            raise ConfigError(f"unknown shaping mode {self.shaping!r}; choose one of: "
                              f"{', '.join(SHAPING_MODES)}", field="shaping")
        if self.method == "natural" and self.shaping != "none":
            raise ConfigError("natural training has no attack to shape: use --shaping none",
                              field="shaping")
        self._check_norm()

    def _check_ratio(self) -> Ratio:
        """The ratio adv:clean, parsed and bounded."""
        ratio = _about("ratio", Ratio.parse, self.ratio, allow_zero_clean=self.shaping == "none")
        if ratio.parts > MAX_RATIO_PARTS:
            raise ConfigError(f"ratio {ratio} has {ratio.parts} parts; at most "
                              f"{MAX_RATIO_PARTS}", field="ratio")
        return ratio

    def _check_numbers(self) -> None:
        """Finite numbers in range, counts and sizes bounded, the seed in range."""
        for name in ("eps", "step_size", "lr", "weight_decay", "momentum", "trades_beta",
                     "agc_clip"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0 and finite, "
                                  f"got {v}", field=name)
        if self.eps is not None and self.eps > 1:
            raise ConfigError(f"eps {self.eps} is larger than the whole [0, 1] input range",
                              field="eps")
        if self.step_size is not None and self.step_size > 1:
            raise ConfigError(f"step-size {self.step_size} is larger than the whole [0, 1] "
                              f"input range", field="step_size")
        if self.method != "natural" and self.eps is not None and self.eps == 0:
            raise ConfigError(f"method {self.method} needs eps > 0", field="eps")
        if self.method != "natural" and self.step_size is not None and self.step_size == 0:
            raise ConfigError(f"method {self.method} needs step-size > 0", field="step_size")
        if self.lr is not None and self.lr == 0:
            raise ConfigError("lr must be > 0 (with lr 0 nothing is learnt)", field="lr")
        if self.agc_clip is not None and self.agc_clip == 0:
            raise ConfigError("agc-clip must be > 0 (leave it unset for no clipping)",
                              field="agc_clip")
        if self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}", field="momentum")
        for name in ("steps", "batch_size", "epochs", "max_steps", "n_train", "eval_samples",
                     "model_width", "model_depth"):
            v = getattr(self, name)
            least = 0 if name == "eval_samples" else 1
            if v is not None and v < least:
                raise ConfigError(f"{name.replace('_', '-')} must be >= {least}, got {v}",
                                  field=name)
        for name, most in (("model_width", MAX_MODEL_WIDTH), ("model_depth", MAX_MODEL_DEPTH),
                           ("steps", MAX_COUNT), ("batch_size", MAX_COUNT),
                           ("epochs", MAX_COUNT), ("max_steps", MAX_COUNT),
                           ("n_train", MAX_COUNT), ("eval_samples", MAX_COUNT)):
            v = getattr(self, name)
            if v is not None and v > most:
                raise ConfigError(f"{name.replace('_', '-')} {v} is too large (at most {most})",
                                  field=name)
        if self.batch_size is not None and self.batch_size < 2:
            raise ConfigError(f"batch-size must be >= 2: batch norm in training needs more "
                              f"than one sample per batch, got {self.batch_size}",
                              field="batch_size")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be a whole number in [0, {MAX_SEED}], got {self.seed}",
                              field="seed")

    def _check_choices(self, ratio: Ratio) -> None:
        """Optimizer, schedule, the batch against the ratio's parts, device and backend."""
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: "
                              f"{', '.join(OPTIMIZERS)}", field="optimizer")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}; choose one of: "
                              f"{', '.join(LR_SCHEDULES)}", field="lr_schedule")
        if self.batch_size is not None and self.shaping != "none":
            if self.batch_size < ratio.parts:
                raise ConfigError(f"batch size {self.batch_size} is smaller than the {ratio.parts} "
                                  f"parts of ratio {ratio}", field="batch_size")
            _about("ratio", ratio.split, self.batch_size)
        _about("device", parse_device, self.device)
        if self.dist_backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"unknown dist backend {self.dist_backend!r}; choose one of: "
                              f"auto, nccl, gloo", field="dist_backend")

    def _check_norm(self) -> None:
        """The norm layer: known, one the model has, and dual BN only where there are
        adversarial rows to route and no shaped batch to mix them into."""
        from ..blocks.models import MODELS, NORMS

        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}",
                              field="norm")
        if self.model is not None and self.model in MODELS and (
                self.norm not in MODELS[self.model].norms):
            raise ConfigError(f"model {self.model} has no {self.norm} variant; its norms: "
                              f"{', '.join(MODELS[self.model].norms)}", field="norm")
        if self.norm == "dual_bn":
            if self.method == "natural":
                raise ConfigError("dual BN routes adversarial rows through their own set: it "
                                  "needs an adversarial method (pgd or trades)", field="norm")
            if self.shaping != "none":
                raise ConfigError("dual BN trains clean rows through the clean set and "
                                  "adversarial rows through the adversarial set; a shaped batch "
                                  "mixes them in one set: use --shaping none", field="norm")

    def check_paths(self) -> None:
        """The paths this machine must have for a run (not part of ``validate``: a checkpoint
        trained elsewhere keeps its settings valid): ``data_root``, when given, is an
        existing folder; nothing else is tried then."""
        if self.data_root is not None and not Path(self.data_root).expanduser().is_dir():
            raise ConfigError(f"data-root {self.data_root} is not an existing folder "
                              f"(nothing else is tried when --data-root is given)")

    def _check_types(self) -> None:
        """Each field of the type it declares (the app and checkpoint metadata build this
        object from JSON, where anything can come)."""
        for f in fields(self):
            v = getattr(self, f.name)
            typ = str(f.type)
            if v is None and typ.startswith("Optional"):
                continue
            if "bool" in typ:
                ok = isinstance(v, bool)
            elif "int" in typ:
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif "float" in typ:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            else:
                ok = isinstance(v, str)
            if not ok:
                kind = typ.replace("Optional[", "").rstrip("]")
                raise ConfigError(f"{f.name.replace('_', '-')} must be "
                                  f"{_KIND_TEXT.get(kind, kind)}, got {v!r}", field=f.name)

    @property
    def ratio_obj(self) -> Ratio:
        return Ratio.parse(self.ratio)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def run_name(self) -> str:
        """A name built from the settings that matter, so runs sort and compare by themselves."""
        parts = [self.dataset, self.model or "",
                 self.norm.replace("_", "") if self.norm != "bn" else "", self.method]
        if self.method != "natural":
            parts.append("clean-adv" if self.norm == "dual_bn" else
                         "adv-only" if self.shaping == "none" else
                         "shape-" + self.shaping.replace("+", "-") + "-r" +
                         str(self.ratio).replace(":", "-"))
            if self.eps is not None:
                parts.append(f"eps{self.eps:g}")
            if self.method == "trades" and not self.trades_kl_in_loss:
                parts.append("nokl")
            if self.polluted_running_stats:
                parts.append("polluted")
        if self.agc_clip is not None:
            parts.append(f"agc{self.agc_clip:g}")
        parts.append(f"s{self.seed}")
        return sanitize_name("-".join(p for p in parts if p))

    def fingerprint(self) -> str:
        """SHA-256 of the settings that change the result (device, data root and dist
        backend excluded; sync_bn only when on, so earlier runs keep their fingerprint)."""
        d = self.to_dict()
        for k in ("device", "data_root", "dist_backend"):
            d.pop(k, None)
        for k in ("sync_bn", "channels_last"):  # off: earlier runs keep their fingerprint
            if not d.get(k):
                d.pop(k, None)
        if d.get("norm") == "bn":  # the default norm and no clipping: so do they
            d.pop("norm")
        if d.get("agc_clip") is None:
            d.pop("agc_clip", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def sanitize_name(name: str) -> str:
    """A file-system-safe name: letters, digits, '.', '_' and '-' only, no leading dot."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return out[:120] or "run"


def parse_device(spec: str = "auto") -> torch.device:
    """cuda, else mps, else cpu for ``auto``; an explicit choice is checked."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for, but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but MPS is not available; use --device cpu")
    return dev


# ------------------------------------------------------------------ paths given by the user
def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: permission bits say nothing to root, nor
    about read-only or special file systems, so an empty probe file is made and removed."""
    import os
    import tempfile

    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".normshape-probe-", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def _check_name_lengths(p: Path, flag: str) -> None:
    """Each name of the path within the file system's limit (255 bytes on most), the whole
    within PATH_MAX: a longer one fails only when the first file is written."""
    import os

    try:
        name_max = os.pathconf(_nearest_existing(p.absolute()), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(f"{flag}: the name {part[:40]}... is {len(os.fsencode(part))} "
                              f"bytes long, more than the {name_max} this file system allows")
    if len(os.fsencode(str(p.absolute()))) >= 4096:
        raise ConfigError(f"{flag}: the path is longer than the 4096 bytes a path may have")


def check_writable_dir(path, flag: str) -> Path:
    """A folder that is, or can be created as, a writable folder (checked before any work;
    nothing is created here)."""
    import os

    p = Path(str(path)).expanduser()
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give a folder")
    _check_name_lengths(p, flag)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    base = _nearest_existing(p.absolute())
    if not base.is_dir():
        raise ConfigError(f"{flag} {path}: {base} is a file, not a folder")
    if not _can_write_in(base):
        raise ConfigError(f"{flag} {path} is not writable ({base} does not allow writing)")
    return p


def check_writable_file(path, flag: str, make_parents: bool = False) -> Path:
    """A file path whose folder exists (``make_parents``: or can be created) and is
    writable, and that is not a folder nor anything else that is not a regular file (a
    FIFO, a device)."""
    import os
    import stat

    p = Path(str(path)).expanduser()
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give a file name")
    _check_name_lengths(p, flag)
    if p.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):
        raise ConfigError(f"{flag} {path} is not a regular file (a FIFO, a device?); give "
                          f"a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if make_parents:
        check_writable_dir(parent, f"{flag} {path}: its folder")
        if not parent.exists():
            return p
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {parent} does not exist")
    if not _can_write_in(parent) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{flag} {path} is not writable")
    return p


def check_user_folder(folder: Path, hint: str = "") -> Path:
    """``folder``, in the user's normshape folder (``userdata``), is or can become a writable
    folder: a ``NORMSHAPE_HOME`` that is a file or read-only is one line here rather than a
    failure after the work is done."""
    from ..base.userdata import HOME_ENV, data_home

    home = data_home()
    where = f"the user's normshape folder {home} ({HOME_ENV} or the platform's data folder)"
    base = _nearest_existing(Path(folder).absolute())
    if not base.is_dir():
        raise ConfigError(f"{where}: {base} is a file, not a folder; set {HOME_ENV} to a "
                          f"writable folder{hint}")
    if not _can_write_in(base):
        raise ConfigError(f"{where} is not writable ({base} does not allow writing); set "
                          f"{HOME_ENV} to a writable folder{hint}")
    return Path(folder)


def check_existing_dir(path, flag: str) -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{flag} {path} is not an existing folder")
    return p


def dataset_preset(name: str) -> Dict[str, Any]:
    """The per-dataset defaults (``presets.DATASET_PRESETS``) of ``name``, a copy."""
    if name not in DATASET_PRESETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_PRESETS)}")
    return dict(DATASET_PRESETS[name])


def model_kwargs(cfg: TrainConfig) -> Dict[str, Any]:
    """The keyword arguments of ``models.build_model`` that ``cfg`` asks for (width, depth,
    memory layout): the one translation from settings to a model, used by training and by
    the checkpoints' rebuild."""
    kw: Dict[str, Any] = {"channels_last": bool(cfg.channels_last)}
    if cfg.model_width is not None:
        kw["hidden" if cfg.model == "mlp" else ("channels" if cfg.model == "small_cnn"
                                                 else "width")] = cfg.model_width
    if cfg.model_depth is not None:
        if cfg.model not in ("mlp", "wide_resnet"):
            raise ConfigError(f"model {cfg.model} has a fixed depth; drop --model-depth")
        kw["depth"] = cfg.model_depth
    if cfg.norm != "bn":
        kw["norm"] = cfg.norm
    return kw
