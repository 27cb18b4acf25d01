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

from .faults import fault_point

FORMAT = "normshape-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
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

    from . import __version__

    return {"normshape": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def read_jsonl(path: str | Path, max_step: Optional[int] = None) -> List[Dict[str, Any]]:
    """Rows of a JSONL log, skipping a line cut by a kill; with ``max_step``, only the rows
    of steps <= max_step (after a resume, the steps that will be redone are dropped)."""
    rows: List[Dict[str, Any]] = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or row.get("step", 0) <= max_step:
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
        head = p.read_bytes()[:2]
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
    """The checkpoint's metadata, validated (no weights read)."""
    _, meta_path = resolve_paths(path)
    if not meta_path.exists():
        raise CheckpointError(meta_path, "metadata file not found (every checkpoint is a "
                                         ".safetensors file with a .json beside it)")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(meta_path, f"metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(meta_path, "not a normshape checkpoint (no \"format\": "
                                         f"\"{FORMAT}\" in its metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(meta_path, f"format version {meta.get('format_version')} is not "
                                         f"supported (this normshape reads {FORMAT_VERSION})")
    for key in ("config", "input_shape", "num_classes", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(meta_path, f"metadata lacks the key {key!r}")
    return meta


def build_from_meta(meta: Dict[str, Any]) -> nn.Module:
    from .config import TrainConfig
    from .models import build_model
    from .training import model_kwargs

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
    if not weights_path.exists():
        raise CheckpointError(weights_path, "weights file not found")
    data = weights_path.read_bytes()
    expected = meta.get("weights_bytes")
    if expected is not None and expected != len(data):
        raise CheckpointError(weights_path, f"file is {len(data)} bytes but its metadata says "
                                            f"{expected}: truncated or replaced")
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
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return model, meta


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
    atomic_write_json(run_dir / "state.json", {
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
        current = json.loads((run_dir / "state.json").read_text()).get("state_file")
    except (OSError, ValueError, AttributeError):
        current = None
    for old in state_files(run_dir):
        if old.name != current:
            old.unlink(missing_ok=True)


def saved_state_summary(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    """state.json of an interrupted run (None when there is none or it is unreadable)."""
    try:
        meta = json.loads((Path(run_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return None
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
    meta_path = run_dir / "state.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(meta_path, f"cannot read the saved training state ({e})") from None
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
        data = (run_dir / name).read_bytes()
    except OSError as e:
        raise CheckpointError(run_dir / name, f"cannot read the saved training state ({e})") from None
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
