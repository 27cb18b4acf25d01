"""Your own model through the front door: a PyTorch module built by your own code, its
weights and your data, evaluated like a shipped checkpoint (PN, BN and shaped inference, the
paper's protocol and the worst case). ``normshape evaluate --model package.module:factory``
uses this module; so can a notebook (README, "Evaluate your own model").

What a model needs (``check_own_model``, each problem one line, ``ConfigError``):
- inputs in [0, 1], as every normshape dataset gives them; normalisation, if the model wants
  one, inside the model (``nn.Sequential(Normalize(mean, std), net)``), so that eps is in
  input units;
- at least one BatchNorm layer that keeps running statistics (PN, BN and shaped inference
  differ only there);
- logits ``[N, classes]`` out.

Weights (``load_weights``): safetensors, or ``.pt`` / ``.pth`` read by
``torch.load(weights_only=True)`` (tensors and plain containers only, nothing unpickled
that could run code): a state dict, or one under ``state_dict`` / ``model``.

Data: a registered dataset (``data.load_dataset``), an ``.npz`` file (``x`` in [0, 1] and
``y``; optional ``x_train`` for the reference pool) or an image folder in torchvision's
ImageFolder layout (one sub-folder per class; with ``train/`` and ``test/`` sub-folders,
``train/`` gives the reference pool), all through ``dataset_from_arrays``. Without training
samples the reference pool is drawn from the test samples themselves, and the dataset's
description says so.

Files are read through ``files`` (regular files of bounded size). The model's code is the
caller's own: the app never imports an upload's code (its uploads stay registry-only).
"""
from __future__ import annotations

import importlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..base import files
from ..settings.config import ConfigError
from ..blocks.data import MAX_DATA_FILE_BYTES, Dataset
from ..blocks.norms import NormMode, bn_modules, norm_mode

#: ``package.module:factory`` (the factory may be an attribute path: ``module:Class.build``)
FACTORY_SPEC = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
#: the largest image file read from an image folder
MAX_IMAGE_BYTES = 64 << 20
ArrayLike = Union[np.ndarray, torch.Tensor]


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


# ====================================================================== the model
def import_factory(spec: str) -> Callable[..., Any]:
    """``"package.module:factory"`` -> the factory, imported (the working folder first on the
    import path, as ``python -m`` has it)."""
    spec = str(spec).strip()
    if not FACTORY_SPEC.fullmatch(spec):
        raise ConfigError(f"--model {spec!r} is not package.module:factory (e.g. "
                          f"torchvision.models:resnet18)")
    module_name, attr = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything on import
        raise ConfigError(f"--model {spec}: cannot import {module_name} ({_first_line(e)})"
                          ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model {spec}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model {spec}: {attr} is not callable (a function or class that "
                          f"returns the model)")
    return obj


def build_own_model(spec: str, kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The module ``factory(**kwargs)`` returns, checked to be an ``nn.Module``."""
    factory = import_factory(spec)
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - the user's factory may raise anything
        raise ConfigError(f"--model {spec}: the factory failed ({_first_line(e)})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec}: the factory returned a {type(model).__name__}, "
                          f"not a torch.nn.Module")
    return model


def parse_model_kwargs(text: Optional[str]) -> Dict[str, Any]:
    """``--model-kwargs '{"num_classes": 10}'`` -> the factory's keyword arguments."""
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"--model-kwargs is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--model-kwargs must be a JSON object of keyword arguments, e.g. "
                          f"'{{\"num_classes\": 10}}', got {type(value).__name__}")
    return value


def _state_dict_of(obj: Any, where: str) -> Dict[str, torch.Tensor]:
    def tensors_only(m: Any) -> bool:
        return isinstance(m, Mapping) and bool(m) and all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in m.items())

    if tensors_only(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if tensors_only(obj.get(key)):
                return dict(obj[key])
    raise ConfigError(f"{where} holds no state dict (names -> tensors): save one with "
                      f"torch.save(model.state_dict(), FILE) or safetensors")


def read_weights(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or ``.pt`` / ``.pth`` through
    ``torch.load(weights_only=True)``."""
    from ..training.checkpoints import MAX_WEIGHTS_BYTES, CheckpointError, _bytes_to_tensors

    path = Path(path)
    where = f"--weights {path.name}"
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(f"{where}: a weights file is .safetensors, .pt or .pth")
    try:
        data = files.read_bytes(path, MAX_WEIGHTS_BYTES, "weights file")
    except files.UnreadableFile as e:
        raise ConfigError(f"--weights: {e}") from None
    if path.suffix.lower() == ".safetensors":
        try:
            return _bytes_to_tensors(path, data)
        except CheckpointError as e:
            raise ConfigError(f"{where}: {e.problem}") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on a bad file
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = (f"it holds a {found.group(1)} object" if found else
                f"{type(e).__name__}")
        raise ConfigError(f"{where}: cannot be read with torch.load(weights_only=True) "
                          f"({what}); save the state dict alone, or use safetensors") from None
    return _state_dict_of(obj, where)


def load_weights(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a weights file into ``model``: names and shapes must fit exactly, every weight and
    running statistic floating-point and finite (``checkpoints.check_weight_values``)."""
    from ..training.checkpoints import CheckpointError, check_weight_values

    path = Path(path)
    tensors = read_weights(path)
    own = model.state_dict()
    if not any(k in own for k in tensors) and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}  # saved from DDP
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k} {list(tensors[k].shape)} in the file, {list(own[k].shape)} in the model"
              for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        parts = ([f"{len(missing)} missing ({', '.join(missing[:3])})"] if missing else []) + \
            ([f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})"]
             if unexpected else []) + ([f"wrong shape: {'; '.join(shapes[:2])}"]
                                       if shapes else [])
        raise ConfigError(f"--weights {path.name} do not fit the model: {'; '.join(parts)} "
                          f"(other factory arguments? --model-kwargs)")
    try:
        check_weight_values(path, tensors, own)
    except CheckpointError as e:
        raise ConfigError(f"--weights {path.name}: {e.problem}") from None
    model.load_state_dict(tensors, strict=True)
    return model


def load_own_model(spec: str, weights: Union[None, str, Path] = None,
                   kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """``factory(**kwargs)`` with ``weights`` loaded (None: the factory's own), in PN mode."""
    model = build_own_model(spec, kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


# ====================================================================== the data
def _as_array(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def _inputs(name: str, a: ArrayLike, where: str) -> torch.Tensor:
    x = _as_array(a)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.integer) or
                                 np.issubdtype(x.dtype, np.floating)) or x.dtype == np.bool_:
        raise ConfigError(f"{where}: {name} holds {x.dtype} values, not numbers in [0, 1]")
    if x.ndim < 2 or len(x) < 1:
        raise ConfigError(f"{where}: {name} has shape {list(x.shape)}; expected [N, ...] "
                          f"with one row per sample")
    if x.size and not np.isfinite(x).all():
        raise ConfigError(f"{where}: {name} holds NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        hint = " (scale them: x / 255)" if hi > 1 and hi <= 255 and lo >= 0 else ""
        raise ConfigError(f"{where}: {name} holds values in [{lo:g}, {hi:g}]; normshape's inputs "
                          f"are in [0, 1]{hint}, any normalisation inside the model, so that "
                          f"eps is in input units")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(name: str, a: ArrayLike, n: int, where: str) -> torch.Tensor:
    y = _as_array(a)
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"{where}: {name} has shape {list(y.shape)}; expected [{n}], one "
                          f"label per sample")
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise ConfigError(f"{where}: {name} holds {y.dtype} values, not class indices")
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where}: {name} holds a negative label ({int(y.min())})")
    return torch.from_numpy(y.astype(np.int64))


def dataset_from_arrays(x: ArrayLike, y: ArrayLike, x_train: Optional[ArrayLike] = None,
                        y_train: Optional[ArrayLike] = None, *, name: str = "data",
                        classes: Optional[Sequence[str]] = None, where: str = "data"
                        ) -> Dataset:
    """A ``Dataset`` from test samples ``x`` (in [0, 1]) and labels ``y``; ``x_train`` gives
    the reference pool of shaped inference (without it the pool is drawn from ``x``, as the
    description says). Bad values are one ``ConfigError`` line naming ``where``."""
    xt = _inputs("x", x, where)
    yt = _labels("y", y, len(xt), where)
    if x_train is None:
        xr, yr = xt, yt
        refs = f"reference pool drawn from these {len(xt)} test samples (no training samples given)"
    else:
        xr = _inputs("x_train", x_train, where)
        if xr.shape[1:] != xt.shape[1:]:
            raise ConfigError(f"{where}: x_train's samples are {list(xr.shape[1:])}, x's "
                              f"{list(xt.shape[1:])}")
        yr = (_labels("y_train", y_train, len(xr), where) if y_train is not None
              else torch.zeros(len(xr), dtype=torch.long))
        refs = f"reference pool drawn from {len(xr)} training samples"
    n_classes = max(int(yt.max()) + 1 if len(yt) else 0, len(classes or ()), 2)
    names = list(classes) if classes else [str(i) for i in range(n_classes)]
    return Dataset(name, xr, yr, xt, yt, n_classes, names,
                   f"{len(xt)} test samples of {where}; {refs}", source=where)


def load_npz(path: Union[str, Path]) -> Dataset:
    """An ``.npz`` file: ``x`` [N, ...] in [0, 1], ``y`` [N]; optional ``x_train`` (and
    ``y_train``) for the reference pool. Read without pickles (``allow_pickle=False``)."""
    path = Path(path)
    where = path.name
    try:
        data = files.read_bytes(path, MAX_DATA_FILE_BYTES, "data file")
    except files.UnreadableFile as e:
        raise ConfigError(f"--data: {e}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - numpy raises many types on a bad file
        raise ConfigError(f"--data {where}: not a readable .npz file ({_first_line(e, 120)})"
                          ) from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ConfigError(f"--data {where}: no array {' or '.join(missing)} (it holds: "
                          f"{', '.join(sorted(arrays)) or 'nothing'}); expected x in [0, 1] "
                          f"and y, optionally x_train")
    return dataset_from_arrays(arrays["x"], arrays["y"], arrays.get("x_train"),
                               arrays.get("y_train"), name=path.stem, where=where)


def _image_split(root: Path, where: str) -> Tuple[List[Path], List[int], List[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: List[Path] = []
    labels: List[int] = []
    for k, c in enumerate(classes):
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(p)
                labels.append(k)
    if not paths:
        raise ConfigError(f"--data {where}: no images in class sub-folders (torchvision's "
                          f"ImageFolder layout: {where}/<class>/<image>.png)")
    return paths, labels, classes


def _read_images(paths: Sequence[Path], where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    images, size, first = [], None, None
    grey = True
    opened = []
    for p in paths:
        try:
            img = Image.open(io.BytesIO(files.read_bytes(p, MAX_IMAGE_BYTES, "image")))
            img.load()
        except (files.UnreadableFile, UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"--data {where}: {p.name} is not a readable image "
                              f"({_first_line(e, 80)})") from None
        grey = grey and img.mode in ("L", "1")
        opened.append((p, img))
    for p, img in opened:
        img = img.convert("L" if grey else "RGB")
        if size is None:
            size, first = img.size, p.name
        elif img.size != size:
            raise ConfigError(f"--data {where}: images differ in size ({size[0]}x{size[1]} in "
                              f"{first}, {img.size[0]}x{img.size[1]} in {p.name}): give them "
                              f"one size")
        a = np.asarray(img, dtype=np.float32) / 255.0
        images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(images)


def load_image_folder(path: Union[str, Path]) -> Dataset:
    """An image folder in torchvision's ImageFolder layout (``<class>/<image>``, one size,
    8-bit grey or colour; pixels / 255); ``train/`` and ``test/`` sub-folders in that layout
    give the reference pool and the test samples."""
    root = Path(path)
    where = root.name or str(root)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    paths, labels, classes = _image_split(root / "test" if split else root, where)
    x = _read_images(paths, where)
    x_train = y_train = None
    if split:
        train_paths, train_labels, _ = _image_split(root / "train", where)
        x_train, y_train = _read_images(train_paths, where), np.array(train_labels)
        if x_train.shape[1:] != x.shape[1:]:
            raise ConfigError(f"--data {where}: train/ images are {list(x_train.shape[1:])}, "
                              f"test/ images {list(x.shape[1:])}")
    return dataset_from_arrays(x, np.array(labels), x_train, y_train, name=where,
                               classes=classes, where=where)


def load_data(path: Union[str, Path]) -> Dataset:
    """``--data``: an ``.npz`` file or an image folder."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    raise ConfigError(f"--data {path.name}: expected an .npz file (x in [0, 1], y) or an image "
                      f"folder (one sub-folder per class)" +
                      ("" if path.exists() else ": no such file or folder"))


# ====================================================================== the checks
def check_own_model(model: nn.Module, dataset: Dataset, device: Union[str, torch.device] = "cpu"
                    ) -> int:
    """The model is one normshape can evaluate on ``dataset``: BatchNorm layers with running
    statistics, the dataset's inputs accepted, logits ``[N, classes]`` out, every label a
    class. Returns the number of classes (the dataset's ``num_classes`` is set to it)."""
    bns = bn_modules(model)
    if not bns:
        raise ConfigError("the model has no BatchNorm layer: PN, BN and shaped inference differ "
                          "only through batch statistics, so normshape evaluates models with "
                          "BatchNorm (torchvision's resnet18, for example)")
    named = {m: n for n, m in model.named_modules()}
    for bn in bns:
        if bn.running_mean is None or bn.running_var is None:
            raise ConfigError(f"BatchNorm layer {named.get(bn, '?')!r} keeps no running "
                              f"statistics (track_running_stats=False): PN needs them")
    x = dataset.x_test[:2].to(device)
    model = model.to(device)
    try:
        with torch.no_grad(), norm_mode(model, NormMode.PN):
            out = model(x)
    except Exception as e:  # noqa: BLE001 - the user's forward may raise anything
        raise ConfigError(f"the model cannot classify the data's inputs "
                          f"{list(x.shape[1:])} ({_first_line(e, 160)})") from None
    if not torch.is_tensor(out):
        raise ConfigError(f"the model returns a {type(out).__name__}, not a tensor of logits "
                          f"[N, classes]")
    if out.dim() != 2 or out.shape[0] != len(x) or out.shape[1] < 2:
        raise ConfigError(f"the model's output for {len(x)} inputs is {list(out.shape)}, not "
                          f"[{len(x)}, classes] logits (two classes or more)")
    classes = int(out.shape[1])
    top = max(int(dataset.y_test.max()), 0) if len(dataset.y_test) else 0
    if top >= classes:
        raise ConfigError(f"the labels go up to {top} ({top + 1} classes), but the model has "
                          f"{classes} outputs")
    dataset.num_classes = classes
    if len(dataset.classes) != classes:
        dataset.classes = (list(dataset.classes) + [str(i) for i in range(len(dataset.classes),
                                                                           classes)])[:classes]
    return classes


__all__ = ["build_own_model", "check_own_model", "dataset_from_arrays",
           "import_factory", "load_data", "load_image_folder", "load_npz", "load_own_model",
           "load_weights", "parse_model_kwargs", "read_weights"]
