"""Checkpoints: weights in safetensors, metadata in JSON, written atomically, never unpickled.

A run folder holds ``model.safetensors`` + ``model.json`` (the checkpoint), ``metrics.jsonl``
and, while training, ``state.safetensors`` + ``state.json`` (optimizer, RNG, step: resume).
The JSON carries the whole training config, so any checkpoint can be rebuilt and regenerated.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..base import files
from ..settings.config import MAX_PARAMETERS
from ..base.faults import fault_point
from ..base.files import MAX_META_BYTES
from ..base.names import META_NAME, METRICS_NAME, STATE_NAME, WEIGHTS_NAME

FORMAT = "normshape-checkpoint"
FORMAT_VERSION = 1
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"checkpoint {path}: {problem}")


# ------------------------------------------------------------------ atomic files
def atomic_write_bytes(path: str | Path, data: bytes,
                       fault: Optional[Tuple[str, int]] = None) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a killed process leaves either the old file or the new one, never half a file (and at
    most a ``.<name>.*.tmp`` file, which ``remove_stale_files`` removes on the next start).
    ``fault=(point, n)`` names the write point for fault injection (``faults.py``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            fault_point(f"{fault[0]}.tmp", fault[1])
        os.replace(tmp, path)
        if fault:
            fault_point(f"{fault[0]}.renamed", fault[1])
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | Path, obj: Any,
                      fault: Optional[Tuple[str, int]] = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(),
                       fault=fault)


def remove_stale_files(folder: str | Path) -> List[Path]:
    """Remove the ``.<name>.*.tmp`` files that killed atomic writes left in ``folder``
    (call it only while holding the folder, e.g. under its run lock). Returns them."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, max_bytes: Optional[int] = None) -> str:
    """SHA-256 of a regular file of at most ``max_bytes`` (default: the largest weights file
    a checkpoint may have), checked before reading; ``CheckpointError`` otherwise."""
    limit = MAX_WEIGHTS_BYTES if max_bytes is None else max_bytes
    try:
        files.check_file(path, limit, "file")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                limit -= len(chunk)
                if limit < 0:
                    raise files.UnreadableFile(path, "file grew while being read")
    except files.UnreadableFile as e:
        raise CheckpointError(path, e.problem) from None
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or type(e).__name__})") from None
    return h.hexdigest()


# ------------------------------------------------------------------ tensors <-> bytes
def _tensors_to_bytes(tensors: Dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _bytes_to_tensors(path: Path, data: bytes) -> Dict[str, torch.Tensor]:
    """Parse safetensors bytes, with a clear error for anything that is not one."""
    from safetensors.torch import load

    if len(data) < 8:
        raise CheckpointError(path, f"file is {len(data)} bytes: empty or truncated")
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(path, "this is a pickle / torch.save file; normshape never "
                                    "unpickles files (they can run code). Save weights with "
                                    "safetensors.")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise CheckpointError(path, f"not a valid safetensors file (header says {n} bytes, file "
                                    f"has {len(data)}): truncated or another format")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(path, "not a valid safetensors file (unreadable header)") from None
    end = _check_header(path, header)
    if 8 + n + end > len(data):
        raise CheckpointError(path, f"truncated: tensors need {8 + n + end} bytes, file has "
                                    f"{len(data)}")
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(path, f"not a valid safetensors file ({e})") from None


def _check_header(path: Path, header: Any) -> int:
    """Every field of a safetensors header of the expected type; returns the data length."""
    if not isinstance(header, dict):
        raise CheckpointError(path, f"not a valid safetensors file (its header is a JSON "
                                    f"{type(header).__name__}, not an object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not (isinstance(entry, dict) and
                                          all(isinstance(v, str) for v in entry.values())):
                raise CheckpointError(path, "not a valid safetensors file (__metadata__ is not "
                                            "an object of strings)")
            continue
        if not isinstance(entry, dict):
            raise CheckpointError(path, f"not a valid safetensors file (tensor {name[:60]!r} "
                                        f"is described by a {type(entry).__name__})")
        offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise CheckpointError(path, f"not a valid safetensors file (tensor {name[:60]!r}: "
                                        f"data_offsets must be two whole numbers [begin, end], "
                                        f"got {str(offsets)[:60]})")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                and d >= 0 for d in shape)):
            raise CheckpointError(path, f"not a valid safetensors file (tensor {name[:60]!r}: "
                                        f"shape must be a list of whole numbers)")
        if not isinstance(dtype, str):
            raise CheckpointError(path, f"not a valid safetensors file (tensor {name[:60]!r}: "
                                        f"dtype must be text)")
        end = max(end, offsets[1])
    return end


def package_versions() -> Dict[str, str]:
    import numpy
    import safetensors

    from .._version import __version__

    return {"normshape": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def read_jsonl(path: str | Path, max_step: Optional[int] = None) -> List[Dict[str, Any]]:
    """Rows of a JSONL log, skipping a line cut by a kill; with ``max_step``, only the rows
    of steps <= max_step (after a resume, the steps that will be redone are dropped)."""
    rows: List[Dict[str, Any]] = []
    path = Path(path)
    if not path.exists():
        return rows
    try:
        text = files.read_text(path, MAX_METRICS_BYTES, "metrics log", errors="replace")
    except files.UnreadableFile as e:
        raise CheckpointError(path, e.problem) from None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        step = row.get("step", 0)
        if max_step is None or (isinstance(step, (int, float)) and step <= max_step):
            rows.append(row)
    return rows


# ------------------------------------------------------------------ save / load
def resolve_paths(path: str | Path) -> Tuple[Path, Path]:
    """(weights, metadata) for a run folder, a .safetensors file or a .json file."""
    p = Path(path)
    if p.is_dir():
        return p / WEIGHTS_NAME, p / META_NAME
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.exists():
        try:
            head = files.read_head(p, 2)
        except files.UnreadableFile as e:
            raise CheckpointError(p, e.problem) from None
        if head == b"PK" or head[:1] == b"\x80":
            raise CheckpointError(p, "this is a pickle / torch.save file; normshape never unpickles "
                                     "files (they can run code). Checkpoints are .safetensors + .json.")
    raise CheckpointError(p, "expected a run folder, a .safetensors file or its .json metadata")


def save_checkpoint(run_dir: str | Path, model: nn.Module, meta: Dict[str, Any],
                    name: str = "model") -> Path:
    """Write ``name.safetensors`` then ``name.json`` (with the weights' SHA-256), atomically."""
    run_dir = Path(run_dir)
    data = _tensors_to_bytes(model.state_dict())
    weights = run_dir / f"{name}.safetensors"
    atomic_write_bytes(weights, data, fault=("final.weights", 1))
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
            "weights_file": weights.name, "weights_sha256": sha256_bytes(data),
            "weights_bytes": len(data),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions()}
    atomic_write_json(run_dir / f"{name}.json", full, fault=("final.json", 1))
    return weights


def read_meta(path: str | Path) -> Dict[str, Any]:
    """The checkpoint's metadata, validated against the schema (``validate_meta``); no
    weights read, no model built."""
    _, meta_path = resolve_paths(path)
    try:
        meta = files.read_json(meta_path, MAX_META_BYTES, "metadata")
    except files.UnreadableFile as e:
        if e.missing:
            raise CheckpointError(meta_path, "metadata file not found (every checkpoint is a "
                                             ".safetensors file with a .json beside it)") from None
        raise CheckpointError(meta_path, e.problem) from None
    return validate_meta(meta, meta_path)


# ------------------------------------------------------------------ the checkpoint schema
#: What a checkpoint of each registered dataset must say: its input shape and class count.
DATASET_SHAPES: Dict[str, Tuple[Tuple[int, ...], int]] = {
    "moons": ((2,), 2), "spirals": ((2,), 2), "circles": ((2,), 2), "xor": ((2,), 2),
    "blobs": ((2,), 2), "digits": ((1, 8, 8), 10),
    "fashion_mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10)}
#: Bounds checked before any model is built are the trainer's own (``config``, through
#: ``TrainConfig.validate``): depth and width first (``MAX_MODEL_DEPTH``,
#: ``MAX_MODEL_WIDTH``), so that counting stays cheap, then the parameter count
#: (``MAX_PARAMETERS``); ``MAX_META_BYTES`` is ``files``'.
#: The largest files read from a run folder, checked before reading (``files``): weights of
#: MAX_PARAMETERS parameters in float64 with as many buffers, plus the header; the resume
#: state adds the optimizer's moments; the metrics log of a long run is tens of MB.
MAX_WEIGHTS_BYTES = 16 * MAX_PARAMETERS + MAX_HEADER
MAX_STATE_BYTES = 4 * MAX_WEIGHTS_BYTES
MAX_METRICS_BYTES = files.MAX_LOG_BYTES  # the metrics log: METRICS_NAME
#: Settings every checkpoint's config names (the pages read them); the others may be absent
#: (checkpoints written before they existed) and then have TrainConfig's defaults.
REQUIRED_CONFIG = ("dataset", "model", "method", "shaping", "ratio", "eps")
_SHA256 = r"[0-9a-f]{64}"
_CLASS_NAME = r"[A-Za-z0-9 .,'()/+-]{1,40}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parameter_count(model: str, input_shape: Tuple[int, ...], num_classes: int,
                    width: Optional[int] = None, depth: Optional[int] = None,
                    norm: str = "bn") -> int:
    """The number of parameters of a registered model, computed from its settings without
    building it (``tests/test_uploads.py`` checks it against built models). ``width`` and
    ``depth``: the config's model_width / model_depth (None: the model's own). ``norm``: a
    norm layer has 2 parameters per channel (GroupNorm, LayerNorm and BN's weight and bias;
    normalizer-free: the layer's bias and gain), dual BN 4 (two sets)."""
    import math

    c = num_classes
    per_channel = 4 if norm == "dual_bn" else 2
    if model == "mlp":
        d, h, n = math.prod(input_shape), width or 64, 3 if depth is None else depth
        total = 0
        for _ in range(n):
            total += d * h + per_channel * h  # Linear without bias, the norm's parameters
            d = h
        return total + d * c + c
    if model == "small_cnn":
        ch, hidden = width or 32, 128
        return (input_shape[0] * ch * 9 + per_channel * ch + ch * 2 * ch * 9
                + per_channel * 2 * ch + 2 * ch * 16 * hidden + per_channel * hidden
                + hidden * c + c)

    def block(i: int, p: int, stride: int) -> int:
        sc = i * p if stride != 1 or i != p else 0
        return 2 * i + i * p * 9 + 2 * p + p * p * 9 + sc

    if model == "preact_resnet18":
        w = width or 64
        total, i = input_shape[0] * w * 9, w
        for k, stride in enumerate([1, 2, 2, 2]):
            p = w * 2 ** k
            total += block(i, p, stride) + block(p, p, 1)
            i = p
        return total + 2 * i + i * c + c
    if model == "wide_resnet":
        w, n = width or 10, ((34 if depth is None else depth) - 4) // 6
        widths = [16, 16 * w, 32 * w, 64 * w]
        total, i = input_shape[0] * 16 * 9, 16
        for k, stride in enumerate([1, 2, 2]):
            for j in range(n):
                total += block(i, widths[k + 1], stride if j == 0 else 1)
                i = widths[k + 1]
        return total + 2 * i + i * c + c
    raise ValueError(f"unknown model {model!r}")


def validate_meta(meta: Any, path: str | Path = META_NAME) -> Dict[str, Any]:
    """Check a checkpoint's metadata against the schema and return it; the first problem
    raises ``CheckpointError(path, "<field>: <problem>")``. Checked, in this order: the
    envelope (format and version; the keys the pages read, with their types; the optional
    ``stopped`` record of a run stopped early); the training settings, by
    ``TrainConfig.validate`` itself (types, known dataset, model, method, shaping and norm,
    a parseable ratio, finite numbers in range, bounded depth and width; the message names
    the field, ``config.<field>``), after the rules of a recorded run (every setting a
    checkpoint records, no unknown one); then the model against the data: the dataset's
    input shape and class count, and the parameter count, computed before any model is
    built. Nothing is built, loaded or downloaded."""
    def bad(field: str, problem: str):
        raise CheckpointError(path, f"{field}: {problem}")

    if not isinstance(meta, dict):
        bad("metadata", f"a JSON {type(meta).__name__}, not an object: not a normshape checkpoint")
    _check_envelope(meta, bad)
    cfg = meta["config"]
    _check_recorded_settings(cfg, bad)
    _check_settings(cfg, bad)
    _check_model_fits(meta, cfg, bad)
    return meta


def _check_envelope(meta: Dict[str, Any], bad) -> None:
    """The format, the keys the pages read and their types, the ``stopped`` record."""
    import re

    if meta.get("format") != FORMAT:
        bad("format", f"not \"{FORMAT}\": not a normshape checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        bad("format_version", f"{_short(meta.get('format_version'))} is not supported (this "
                              f"normshape reads {FORMAT_VERSION})")
    for key in ("config", "input_shape", "num_classes", "weights_sha256"):
        if key not in meta:
            bad(key, "missing")
    sha = meta["weights_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(_SHA256, sha):
        bad("weights_sha256", "not a SHA-256 (64 lowercase hex digits)")
    for key in ("weights_bytes",):
        if key in meta and not (_is_int(meta[key]) and meta[key] >= 0):
            bad(key, f"{_short(meta[key])} is not a whole number >= 0")
    for key in ("run_name", "created", "weights_file", "dataset"):
        if meta.get(key) is not None and not (isinstance(meta[key], str) and
                                              len(meta[key]) <= 1000):
            bad(key, f"{_short(meta[key])} is not a text of at most 1000 characters")
    if meta.get("classes") is not None:  # shown on the pages: plain names, no markup
        names = meta["classes"]
        if not (isinstance(names, list) and _is_int(meta["num_classes"]) and
                len(names) == meta["num_classes"] and
                all(isinstance(c, str) and re.fullmatch(_CLASS_NAME, c) for c in names)):
            bad("classes", f"not a list of {_short(meta['num_classes'])} class names of at "
                           "most 40 letters, digits, spaces and - / . , ' ( ) +")
    fm = meta.get("final_metrics", {})
    if not isinstance(fm, dict) or not all(isinstance(k, str) and (v is None or _is_number(v))
                                           for k, v in fm.items()):
        bad("final_metrics", "not an object of names to finite numbers")
    if "stopped" in meta:
        s = meta["stopped"]
        if not (isinstance(s, dict) and set(s) == {"epoch", "epochs"} and _is_int(s["epoch"])
                and _is_int(s["epochs"]) and 0 <= s["epoch"] <= s["epochs"]
                and s["epochs"] >= 1):
            bad("stopped", "not {\"epoch\": k, \"epochs\": n} with whole numbers 0 <= k <= n, "
                           "n >= 1")


def _check_recorded_settings(cfg: Any, bad) -> None:
    """What a recorded run has beyond a valid ``TrainConfig``: an object of known settings,
    every one of ``REQUIRED_CONFIG`` present and set (eps: after the settings' own checks,
    null for natural training only), texts of at most 1000 characters (the pages show
    them)."""
    from dataclasses import fields

    from ..settings.config import TrainConfig

    if not isinstance(cfg, dict):
        bad("config", f"a JSON {type(cfg).__name__}, not an object of training settings")
    known = {f.name for f in fields(TrainConfig)}
    for key in cfg:
        if key not in known:
            bad(f"config.{json.dumps(str(key))[1:-1][:60]}", "unknown training setting")
    for key in REQUIRED_CONFIG:
        if key not in cfg:
            bad(f"config.{key}", "missing")
    for key in REQUIRED_CONFIG:
        if cfg[key] is None and key != "eps":  # eps: checked with the settings
            bad(f"config.{key}", "null, but a checkpoint records the value it trained with")
    for key, value in cfg.items():
        if isinstance(value, str) and len(value) > 1000:
            bad(f"config.{key}", f"{_short(value)} is not a text of at most 1000 characters")


def _check_settings(cfg: Dict[str, Any], bad) -> None:
    """Every rule of a training run (types, names, ranges, batch size and ratio, ...), by
    ``TrainConfig.validate``, whose message names the field; then eps, which a checkpoint
    records (a run takes it from the dataset's preset)."""
    from ..settings.config import ConfigError, TrainConfig

    try:
        TrainConfig.from_dict({**cfg, "device": "auto"}).validate()
    except ConfigError as e:
        bad(f"config.{e.field}" if e.field else "config", str(e))
    if cfg["eps"] is None and cfg["method"] != "natural":  # a run's eps comes from its preset
        bad("config.eps", f"null, but method {cfg['method']} needs eps")


def _check_model_fits(meta: Dict[str, Any], cfg: Dict[str, Any], bad) -> None:
    """The model's depth rules, the dataset's input shape and class count, and the parameter
    count (before any model is built)."""
    from ..blocks.models import MODELS

    model, depth, width = cfg["model"], cfg.get("model_depth"), cfg.get("model_width")
    if depth is not None and model not in ("mlp", "wide_resnet"):
        bad("config.model_depth", f"model {model} has a fixed depth")
    if model == "wide_resnet" and depth is not None and (depth - 4) % 6:
        bad("config.model_depth", f"{depth}: a wide ResNet's depth is 6k+4 (16, 28, 34, ...)")
    shape, classes = DATASET_SHAPES[cfg["dataset"]]
    if meta.get("dataset") is not None and meta["dataset"] != cfg["dataset"]:
        bad("dataset", f"{_short(meta['dataset'])} differs from config.dataset "
                       f"{cfg['dataset']!r}")
    got = meta["input_shape"]
    if not (isinstance(got, list) and all(_is_int(n) for n in got)) or tuple(got) != shape:
        bad("input_shape", f"{_short(got)} is not the shape of {cfg['dataset']} inputs, "
                           f"{list(shape)}")
    if not _is_int(meta["num_classes"]) or meta["num_classes"] != classes:
        bad("num_classes", f"{_short(meta['num_classes'])} is not the {classes} classes of "
                           f"{cfg['dataset']}")
    if MODELS[model].input_kind == "images" and len(shape) != 3:
        bad("config.model", f"{model} needs images; {cfg['dataset']} has 2-D points (use mlp)")
    n = parameter_count(model, shape, classes, width, depth, cfg.get("norm", "bn"))
    if n > MAX_PARAMETERS:
        bad("config", f"model {model} with these settings has {n:,} parameters, more than "
                      f"the {MAX_PARAMETERS:,} a checkpoint may have")


def _short(value: Any, n: int = 60) -> str:
    """A value for a one-line message: its JSON text, cut to ``n`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."


def build_from_meta(meta: Dict[str, Any], path: str | Path = META_NAME) -> nn.Module:
    """The model a checkpoint's metadata describes (weights not loaded), after
    ``validate_meta``: a model too large or unfit for its dataset is never built."""
    from ..settings.config import TrainConfig

    validate_meta(meta, path)
    from ..settings.config import model_kwargs
    from ..blocks.models import build_model

    cfg = TrainConfig.from_dict(meta["config"])
    return build_model(cfg.model, tuple(meta["input_shape"]), meta["num_classes"],
                       **model_kwargs(cfg))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model from its metadata and load its weights (safetensors only).

    Returns ``(model, meta)``; the model is in eval() (PN) mode. Any problem raises
    ``CheckpointError`` naming the file and the problem.
    """
    weights_path, meta_path = resolve_paths(path)
    meta = read_meta(meta_path)
    expected = meta.get("weights_bytes")
    try:  # a regular file of the size the metadata says, checked before a byte is read
        size = files.check_file(weights_path, MAX_WEIGHTS_BYTES, "weights file")
        if expected is not None and expected != size:
            raise CheckpointError(weights_path, f"file is {size} bytes but its metadata says "
                                                f"{expected}: truncated or replaced")
        data = files.read_bytes(weights_path, size if expected is not None
                                else MAX_WEIGHTS_BYTES, "weights file")
    except files.UnreadableFile as e:
        raise CheckpointError(weights_path, e.problem) from None
    if sha256_bytes(data) != meta["weights_sha256"]:
        raise CheckpointError(weights_path, "SHA-256 of the weights does not match the metadata: "
                                            "the file is corrupt or belongs to another checkpoint")
    tensors = _bytes_to_tensors(weights_path, data)
    try:
        model = build_from_meta(meta)
    except Exception as e:
        raise CheckpointError(meta_path, f"cannot rebuild the model from its metadata ({e})") from None
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    bad_shape = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or bad_shape:
        raise CheckpointError(weights_path, "weights do not fit the model in the metadata "
                                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, "
                                            f"wrong shape {bad_shape[:3]}): a foreign checkpoint?")
    check_weight_values(weights_path, tensors, own)
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return model, meta


def check_weight_values(path: str | Path, tensors: Dict[str, torch.Tensor],
                        own: Dict[str, torch.Tensor]) -> None:
    """Every weight and running statistic of a floating type and finite (a NaN, inf or
    integer-typed weight would be evaluated silently as a constant classifier); the model's
    integer buffers (BN's ``num_batches_tracked``) integer. ``CheckpointError`` names the
    first tensor that is not."""
    for name, want in own.items():
        t = tensors[name]
        if want.is_floating_point():
            if not t.is_floating_point():
                raise CheckpointError(path, f"tensor {name[:60]!r} is {str(t.dtype)[6:]}, not a "
                                            f"floating-point type: not trained weights")
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CheckpointError(path, f"tensor {name[:60]!r} holds {bad} of {t.numel()} "
                                            f"values that are NaN or infinite: a diverged or "
                                            f"corrupt run")
        elif t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise CheckpointError(path, f"tensor {name[:60]!r} is {str(t.dtype)[6:]}, not the "
                                        f"whole-number type of {str(want.dtype)[6:]}")


# ------------------------------------------------------------------ resumable state
def save_training_state(run_dir: str | Path, trainer) -> None:
    """Everything needed to continue exactly: weights, optimizer, RNGs, counters."""
    run_dir = Path(run_dir)
    tensors: Dict[str, torch.Tensor] = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    opt_state = trainer.opt.state_dict()
    scalars: Dict[str, Any] = {}
    for pid, st in opt_state["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val
            else:
                scalars[f"{pid}.{name}"] = val
    tensors["rng.data"] = trainer.g_data.get_state()
    tensors["rng.attack"] = trainer.g_attack.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    data = _tensors_to_bytes(tensors)
    # One commit point: the tensors go to a file named by their hash, then state.json, which
    # names that file, replaces the old one in one rename; older tensor files go after. A kill
    # at any instant leaves the old JSON with its own (still present) file, or the new pair.
    digest = sha256_bytes(data)
    name = f"state-{digest[:16]}.safetensors"
    n = trainer.epoch  # the fault-injection ordinal of this write (faults.py)
    atomic_write_bytes(run_dir / name, data, fault=("state.tensors", n))
    atomic_write_json(run_dir / STATE_NAME, {
        "format": FORMAT + "-state", "config_fingerprint": trainer.cfg.fingerprint(),
        "config": trainer.cfg.to_dict(),
        "step": trainer.step, "epoch": trainer.epoch, "param_groups": opt_state["param_groups"],
        "opt_scalars": scalars, "state_sha256": digest, "state_file": name},
        fault=("state.json", n))
    remove_orphan_states(run_dir)
    fault_point("state.cleanup", n)


def remove_orphan_states(run_dir: str | Path) -> None:
    """Remove the tensor files that state.json does not name (an older state, or one whose
    state.json a kill never committed). Only while holding the run folder."""
    run_dir = Path(run_dir)
    try:
        current = files.read_json(run_dir / STATE_NAME, MAX_META_BYTES).get("state_file")
    except (files.UnreadableFile, AttributeError):
        current = None
    for old in state_files(run_dir):
        if old.name != current:
            old.unlink(missing_ok=True)


def saved_state_summary(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    """state.json of an interrupted run (None when there is none or it is unreadable)."""
    meta = files.read_json_or_none(Path(run_dir) / STATE_NAME, MAX_META_BYTES)
    return meta if isinstance(meta, dict) else None


def settings_differences(saved: Dict[str, Any], cfg) -> List[str]:
    """The settings that change the result and differ between a saved run's config and
    ``cfg``, as ``name (saved X, now Y)``."""
    now = cfg.to_dict()
    out = []
    for k in sorted(set(saved) | set(now)):
        if k in ("device", "data_root", "dist_backend"):
            continue
        if saved.get(k) != now.get(k):
            out.append(f"{k.replace('_', '-')} (saved {saved.get(k)!r}, now {now.get(k)!r})")
    return out


def state_files(run_dir: str | Path) -> List[Path]:
    """The resume state's tensor files in a run folder (``state-<hash>.safetensors``, and the
    single ``state.safetensors`` of earlier versions)."""
    run_dir = Path(run_dir)
    return sorted(run_dir.glob("state-*.safetensors")) + [
        p for p in (run_dir / "state.safetensors",) if p.exists()]


def load_training_state(run_dir: str | Path, trainer) -> None:
    run_dir = Path(run_dir)
    meta_path = run_dir / STATE_NAME
    try:
        meta = files.read_json(meta_path, MAX_META_BYTES, "saved training state")
    except files.UnreadableFile as e:
        raise CheckpointError(meta_path, e.problem) from None
    if not isinstance(meta, dict):
        raise CheckpointError(meta_path, "the saved training state is not a JSON object")
    if meta.get("config_fingerprint") != trainer.cfg.fingerprint():
        diff = (settings_differences(meta["config"], trainer.cfg)
                if isinstance(meta.get("config"), dict) else [])
        raise CheckpointError(meta_path, "the saved run used other settings"
                              + (f": {'; '.join(diff)}" if diff else "")
                              + "; resume with the saved settings, or start a new run with "
                                "another --name or --out")
    name = str(meta.get("state_file", "state.safetensors"))
    if Path(name).name != name:
        raise CheckpointError(meta_path, "the saved training state names a file outside its folder")
    try:
        data = files.read_bytes(run_dir / name, MAX_STATE_BYTES, "saved training state")
    except files.UnreadableFile as e:
        raise CheckpointError(run_dir / name, e.problem) from None
    if sha256_bytes(data) != meta.get("state_sha256"):
        raise CheckpointError(run_dir / name, "state file does not match its JSON "
                                              "(corrupt or half-written)")
    t = _bytes_to_tensors(run_dir / name, data)
    try:
        _restore_state(trainer, meta, t)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise CheckpointError(meta_path, f"the saved training state does not fit this run "
                                         f"({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                              ) from None


def _restore_state(trainer, meta: Dict[str, Any], t: Dict[str, torch.Tensor]) -> None:
    trainer.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta["opt_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    trainer.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    trainer.g_data.set_state(t["rng.data"])
    trainer.g_attack.set_state(t["rng.attack"])
    torch.set_rng_state(t["rng.torch"])
    trainer.step, trainer.epoch = meta["step"], meta["epoch"]
    trainer._prev_running = None


# ------------------------------------------------------------------ registry
@dataclass
class CheckpointInfo:
    path: Path  # the run folder
    meta: Dict[str, Any]

    @property
    def name(self) -> str:
        return self.meta.get("run_name") or self.path.name

    def summary(self) -> Dict[str, Any]:
        c = self.meta["config"]
        return {"name": self.name, "dataset": c.get("dataset"), "model": c.get("model"),
                "method": c.get("method"),
                "shaping": c.get("shaping") if c.get("method") != "natural" else "-",
                "ratio": c.get("ratio") if c.get("shaping") not in (None, "none") else "-",
                "eps": c.get("eps"), "created": self.meta.get("created"),
                **{k: v for k, v in self.meta.get("final_metrics", {}).items()
                   if k.startswith("test/")}, "path": str(self.path)}


def find_checkpoints(*roots: str | Path) -> Tuple[List[CheckpointInfo], List[CheckpointError]]:
    """Every valid checkpoint under the folders, and the errors of invalid ones (not raised)."""
    found: List[CheckpointInfo] = []
    errors: List[CheckpointError] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for meta_path in sorted(root.rglob(META_NAME)):
            try:
                found.append(CheckpointInfo(meta_path.parent, read_meta(meta_path)))
            except CheckpointError as e:
                errors.append(e)
    return found, errors
