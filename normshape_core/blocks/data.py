"""Dataset registry. Every dataset returns inputs in [0, 1] (float32) and integer labels.

Normalisation lives inside the models, so an attack's eps is in input units.
Add a dataset: write ``load_x(spec_args) -> Dataset`` and register a ``DatasetSpec``.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..base import files as _files


class DatasetUnavailable(RuntimeError):
    """The dataset's files are not here and cannot be downloaded; the message says what to do."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    classes: List[str]
    description: str = ""
    source: str = ""

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_2d(self) -> bool:
        return self.input_shape == (2,)

    def subset(self, n_train: Optional[int] = None, n_test: Optional[int] = None,
               seed: int = 0) -> "Dataset":
        """The first n of a seeded permutation of each split (keeps class balance roughly)."""
        g = torch.Generator().manual_seed(seed)
        xt, yt, xs, ys = self.x_train, self.y_train, self.x_test, self.y_test
        if n_train is not None and n_train < len(xt):
            idx = torch.randperm(len(xt), generator=g)[:n_train]
            xt, yt = xt[idx], yt[idx]
        if n_test is not None and n_test < len(xs):
            idx = torch.randperm(len(xs), generator=g)[:n_test]
            xs, ys = xs[idx], ys[idx]
        return Dataset(self.name, xt, yt, xs, ys, self.num_classes, self.classes,
                       self.description, self.source)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: Callable[..., Dataset]
    description: str
    offline: bool  # ships with the packages: always available, used by tests


# ------------------------------------------------------------------ 2-D synthetic sets
# Fixed affine maps put the points in [0, 1] whatever the sample, so train and test agree.
def _to_unit(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip((points - lo) / (hi - lo), 0.0, 1.0)


def load_moons(n_train: int = 1000, n_test: int = 1000, noise: float = 0.1, seed: int = 0,
               **_) -> Dataset:
    """scikit-learn's two moons, scaled into [0, 1]^2 (gap between the moons ~0.1 there)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_train + n_test, noise=noise, random_state=seed)
    x = _to_unit(x, np.array([-1.5, -1.0]), np.array([2.5, 1.5]))
    return _split_2d("moons", x, y, n_train, ["upper moon", "lower moon"],
                     f"two moons, noise {noise}, seed {seed}")


def load_spirals(n_train: int = 1000, n_test: int = 1000, noise: float = 0.2, turns: float = 1.5,
                 seed: int = 0, **_) -> Dataset:
    """Two interleaved spirals in [0, 1]^2."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, 2, size=n)
    t = np.sqrt(rng.uniform(0, 1, size=n)) * turns * 2 * math.pi
    r = t / (turns * 2 * math.pi)
    angle = t + math.pi * y
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    x += rng.normal(scale=noise * 0.1, size=x.shape)
    x = _to_unit(x, np.array([-1.2, -1.2]), np.array([1.2, 1.2]))
    return _split_2d("spirals", x, y, n_train, ["spiral A", "spiral B"],
                     f"two spirals, {turns} turns, noise {noise}, seed {seed}")


def load_circles(n_train: int = 1000, n_test: int = 1000, noise: float = 0.1, seed: int = 0,
                 factor: float = 0.5, **_) -> Dataset:
    """scikit-learn's two concentric circles (inner radius ``factor``), scaled into [0, 1]^2."""
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=n_train + n_test, noise=noise, factor=factor,
                        random_state=seed)
    x = _to_unit(x, np.array([-1.5, -1.5]), np.array([1.5, 1.5]))
    return _split_2d("circles", x, y, n_train, ["outer circle", "inner circle"],
                     f"two circles, noise {noise}, seed {seed}")


def load_xor(n_train: int = 1000, n_test: int = 1000, noise: float = 0.1, seed: int = 0,
             **_) -> Dataset:
    """XOR: uniform points in [-1, 1]^2, class = sign(x1) != sign(x2) (TensorFlow Playground's
    exclusive or), kept 0.05 away from the axes, then Gaussian noise of std ``noise`` / 2;
    scaled into [0, 1]^2."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = rng.uniform(-1, 1, size=(n, 2))
    x += np.sign(x) * 0.05
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).astype(np.int64)
    x += rng.normal(scale=noise * 0.5, size=x.shape)
    x = _to_unit(x, np.array([-1.5, -1.5]), np.array([1.5, 1.5]))
    return _split_2d("xor", x, y, n_train, ["same signs", "opposite signs"],
                     f"xor, noise {noise}, seed {seed}")


def load_blobs(n_train: int = 1000, n_test: int = 1000, noise: float = 0.1, seed: int = 0,
               **_) -> Dataset:
    """Two Gaussian blobs centred at (-1, -1) and (1, 1), standard deviation 0.3 + 2 *
    ``noise`` (noise 0.1: 0.5, well separated; 0.5: 1.3, overlapping); scaled into [0, 1]^2."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, 2, size=n)
    centres = np.array([[-1.0, -1.0], [1.0, 1.0]])
    x = centres[y] + rng.normal(scale=0.3 + 2 * noise, size=(n, 2))
    x = _to_unit(x, np.array([-3.0, -3.0]), np.array([3.0, 3.0]))
    return _split_2d("blobs", x, y, n_train, ["blob A", "blob B"],
                     f"two Gaussian blobs, noise {noise}, seed {seed}")


def _split_2d(name, x, y, n_train, classes, description) -> Dataset:
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2, classes,
                   description, source="generated")


# ------------------------------------------------------------------ digits (offline images)
def load_digits(seed: int = 0, n_test: int = 397, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): fixed seeded stratified split,
    1,400 train / 397 test; pixels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=n_test, random_state=0,
                                          stratify=d.target)
    return Dataset("digits", torch.from_numpy(xtr), torch.from_numpy(ytr).long(),
                   torch.from_numpy(xte), torch.from_numpy(yte).long(), 10,
                   [str(i) for i in range(10)], "scikit-learn digits, 8x8 grey, 1,400/397",
                   source="scikit-learn (bundled)")


# ------------------------------------------------------------------ file-based image sets
# Fashion-MNIST, MNIST and CIFAR-10 are read from their ORIGINAL files, with our own readers
# (no torchvision needed to load them): the idx files of (Fashion-)MNIST, gzipped or not, and
# the python-version batches of CIFAR-10. The files are looked for, in order, in ``root`` (and
# its usual sub-folders), then -- unless ``search_system=False``, which the tests use -- in the
# default folders: Debian's ``dataset-fashion-mnist`` package folder and torchvision's ``./data``.
# Only when nothing is found and ``download=True`` is torchvision asked to download them.

DEFAULT_DOWNLOAD_ROOT = "data"  # torchvision's usual ``./data``; relative to the working folder

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_META = "batches.meta"
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck")


@dataclass(frozen=True)
class _FileSource:
    """Where one file-based dataset is looked for and how it is fetched."""
    title: str
    kind: str                      # "idx" or "cifar"
    subdirs: Tuple[str, ...]       # tried under ``root`` after root itself
    system_dirs: Tuple[str, ...]   # default folders (searched unless search_system=False)
    classes: Tuple[str, ...]
    torchvision_name: str
    apt_package: Optional[str] = None


_FILE_SOURCES: Dict[str, _FileSource] = {
    "fashion_mnist": _FileSource(
        "Fashion-MNIST", "idx", ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
        ("/usr/share/datasets/fashion-mnist", f"{DEFAULT_DOWNLOAD_ROOT}/FashionMNIST/raw"),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"),
        "FashionMNIST", apt_package="dataset-fashion-mnist"),
    "mnist": _FileSource(
        "MNIST", "idx", ("MNIST/raw", "mnist"),
        (f"{DEFAULT_DOWNLOAD_ROOT}/MNIST/raw",),
        tuple(str(i) for i in range(10)), "MNIST"),
    "cifar10": _FileSource(
        "CIFAR-10", "cifar", (_CIFAR_FOLDER, _CIFAR_ARCHIVE),
        (f"{DEFAULT_DOWNLOAD_ROOT}/{_CIFAR_FOLDER}", f"{DEFAULT_DOWNLOAD_ROOT}/{_CIFAR_ARCHIVE}"),
        _CIFAR_CLASSES, "CIFAR10"),
}


def _file_source(name: str) -> _FileSource:
    if name not in _FILE_SOURCES:
        raise ValueError(f"{name!r} is not a file-based dataset; those are: "
                         f"{', '.join(_FILE_SOURCES)}")
    return _FILE_SOURCES[name]


def candidate_locations(name: str, root: Optional[str] = None, *,
                        search_system: bool = True) -> List[Path]:
    """The folders (for CIFAR-10 also archives) searched for ``name``'s files, in order."""
    src = _file_source(name)
    out: List[Path] = []
    if root is not None:
        r = Path(root).expanduser()
        out += [r] + [r / sub for sub in src.subdirs]
    if search_system:
        out += [Path(d) for d in src.system_dirs]
    seen, unique = set(), []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _probe(src: _FileSource, loc: Path) -> Tuple[Optional[Dict[str, Path]], str]:
    """(files, "") when ``loc`` holds the whole dataset, else (None, why not)."""
    if src.kind == "cifar" and loc.name.endswith(".tar.gz"):
        return ({"archive": loc}, "") if loc.is_file() else (None, "no such file")
    if not loc.is_dir():
        return None, "no such folder"
    if src.kind == "idx":
        found, missing = {}, []
        for base in _IDX_FILES:  # prefer the uncompressed file when both are there
            hit = next((loc / n for n in (base, base + ".gz") if (loc / n).is_file()), None)
            if hit is None:
                missing.append(base)
            else:
                found[base] = hit
    else:
        found = {n: loc / n for n in _CIFAR_FILES if (loc / n).is_file()}
        missing = [n for n in _CIFAR_FILES if n not in found]
        if (loc / _CIFAR_META).is_file():
            found[_CIFAR_META] = loc / _CIFAR_META
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, ""


def locate_files(name: str, root: Optional[str] = None, *, search_system: bool = True
                 ) -> Tuple[Optional[Path], Optional[Dict[str, Path]], List[Tuple[Path, str]]]:
    """Find ``name``'s files without reading them.

    Returns (location, files, searched): the first folder/archive that holds the whole dataset
    (or None) with its files, and every location tried before it with the reason it failed.
    """
    src = _file_source(name)
    searched: List[Tuple[Path, str]] = []
    for loc in candidate_locations(name, root, search_system=search_system):
        files, why = _probe(src, loc)
        if files is not None:
            return loc, files, searched
        searched.append((loc, why))
    return None, None, searched


def _expected_files_text(src: _FileSource) -> str:
    if src.kind == "idx":
        return ("It needs the four original idx files (each may be gzipped, ending in .gz):\n"
                + "".join(f"  {n}\n" for n in _IDX_FILES))
    return (f"It needs the python-version batches, as in the folder {_CIFAR_FOLDER}/:\n"
            f"  {', '.join(_CIFAR_FILES)} (and {_CIFAR_META} for the class names)\n"
            f"  or the archive {_CIFAR_ARCHIVE} holding them.\n")


def _unavailable_message(name: str, searched: List[Tuple[Path, str]],
                         download_error: Optional[str]) -> str:
    src = _file_source(name)
    why = ("the download failed: " + download_error) if download_error is not None \
        else "download is off"
    lines = [f"{src.title} (dataset {name!r}) is not available: its files were not found, "
             f"and {why}.",
             _expected_files_text(src).rstrip("\n"),
             "Searched, in order:"]
    lines += [f"  {os.path.abspath(p)}  ({reason})" for p, reason in searched] or \
        ["  (nothing: no --data-root given and the default folders switched off)"]
    subs = ", ".join(f"DIR/{s}" for s in src.subdirs)
    what = "the four files" if src.kind == "idx" else "the files (or the archive)"
    lines.append("To get it, do one of:")
    lines.append(f"  - put {what} in a folder DIR and pass --data-root DIR "
                 f"(looked for in DIR itself, {subs});")
    if src.apt_package:
        lines.append(f"  - on Debian or Ubuntu: sudo apt-get install {src.apt_package} "
                     f"(installs them in {src.system_dirs[0]}/, found automatically);")
    lines.append(f"  - when online, allow the download: torchvision fetches them into "
                 f"./{DEFAULT_DOWNLOAD_ROOT} (or into --data-root DIR).")
    lines.append(f"Offline datasets that work now: {', '.join(OFFLINE_DATASETS)}.")
    return "\n".join(lines)


def _download_with_torchvision(name: str, root: str) -> None:
    """Fetch ``name``'s original files into ``root`` with torchvision (needs internet)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    if name == "cifar10":
        # Only the archive download: torchvision's CIFAR10 class would then unpickle the batches
        # without restriction, which this project does not allow (see _DataOnlyUnpickler).
        c = tvd.CIFAR10
        download_and_extract_archive(c.url, root, filename=c.filename, md5=c.tgz_md5)
    else:  # puts the files in root/<FashionMNIST|MNIST>/raw
        getattr(tvd, _file_source(name).torchvision_name)(root, train=True, download=True)


def _find_or_download(name: str, root: Optional[str], download: bool, search_system: bool
                      ) -> Tuple[Path, Dict[str, Path]]:
    loc, files, searched = locate_files(name, root, search_system=search_system)
    if loc is not None:
        return loc, files
    if not download:
        raise DatasetUnavailable(_unavailable_message(name, searched, None))
    target = str(Path(root).expanduser()) if root is not None else DEFAULT_DOWNLOAD_ROOT
    try:
        _download_with_torchvision(name, target)  # tests replace it: they never go online
    except Exception as e:  # offline, proxy, checksum, no torchvision...: all end the same way
        raise DatasetUnavailable(_unavailable_message(
            name, searched, f"{type(e).__name__}: {e}".strip())) from e
    loc, files, _ = locate_files(name, target, search_system=False)
    if loc is None:
        raise DatasetUnavailable(_unavailable_message(
            name, searched, f"torchvision reported success but the files are not in {target}"))
    return loc, files


# ---- idx files (Fashion-MNIST, MNIST)
#: the largest dataset file read (and gunzipped): CIFAR-10's archive is 170 MB, Fashion-
#: MNIST's training images 47 MB
MAX_DATA_FILE_BYTES = 1 << 30


def _read_data_file(path: Path) -> bytes:
    """A dataset file's bytes (``files``: a regular file of at most MAX_DATA_FILE_BYTES)."""
    try:
        return _files.read_bytes(path, MAX_DATA_FILE_BYTES, "dataset file")
    except _files.UnreadableFile as e:
        raise DatasetUnavailable(str(e)) from None


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip data (by content, not by name), at most
    MAX_DATA_FILE_BYTES either way."""
    raw = _read_data_file(path)
    try:
        if raw[:2] == b"\x1f\x8b":
            parts, left, rest = [], MAX_DATA_FILE_BYTES + 1, raw
            while rest[:2] == b"\x1f\x8b":  # gzip members one after another, as gzip reads
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                parts.append(d.decompress(rest, left))
                left -= len(parts[-1])
                if left <= 0:
                    raise DatasetUnavailable(f"{path}: unpacks to more than "
                                             f"{MAX_DATA_FILE_BYTES >> 20} MB: not a dataset "
                                             f"file")
                if not d.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                rest = d.unused_data
            raw = b"".join(parts)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetUnavailable(f"{path}: cannot be read, the file is corrupt or truncated "
                                 f"({type(e).__name__}: {e})") from e
    return raw


def read_idx(path, magic: Optional[int] = None) -> np.ndarray:
    """Parse an idx file (uint8 data only, as in (Fashion-)MNIST), gzipped or not.

    Checks the magic number (against ``magic`` when given) and that the data size matches the
    header exactly; anything wrong raises DatasetUnavailable naming the file.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DatasetUnavailable(f"{path}: truncated, {len(raw)} bytes (an idx file has a "
                                 f"header of at least 4)")
    found = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0 or \
            (magic is not None and found != magic):
        want = f"0x{magic:08x}" if magic is not None else "0x000008NN"
        raise DatasetUnavailable(f"{path}: not an unsigned-byte idx file of the expected kind "
                                 f"(magic number 0x{found:08x}, expected {want})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetUnavailable(f"{path}: truncated inside its header ({len(raw)} bytes, "
                                 f"the header alone needs {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have != need:
        what = "truncated" if have < need else "corrupt (trailing bytes)"
        raise DatasetUnavailable(f"{path}: {what}: the header says {' x '.join(map(str, dims))}"
                                 f" = {need} bytes of data, the file has {have}")
    return np.frombuffer(bytearray(raw[header:]), dtype=np.uint8).reshape(dims)


def _read_idx_pair(images: Path, labels: Path, num_classes: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, _IDX_IMAGES_MAGIC)
    y = read_idx(labels, _IDX_LABELS_MAGIC)
    if x.shape[1:] != (28, 28):
        raise DatasetUnavailable(f"{images}: images are {x.shape[1]}x{x.shape[2]}, "
                                 f"expected 28x28")
    if len(x) != len(y):
        raise DatasetUnavailable(f"{images} has {len(x)} images but {labels} has "
                                 f"{len(y)} labels")
    if len(y) and int(y.max()) >= num_classes:
        raise DatasetUnavailable(f"{labels}: label {int(y.max())} out of range "
                                 f"0..{num_classes - 1}")
    return x[:, None, :, :], y


def _finish(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
            description: str, source: Path, n_train, n_test, seed) -> Dataset:
    """uint8 arrays -> seeded subset (Dataset.subset, same draw as on floats) -> [0, 1]."""
    src = _file_source(name)
    d = Dataset(name, torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64)),
                torch.from_numpy(xte), torch.from_numpy(yte.astype(np.int64)),
                len(src.classes), list(src.classes), description, str(source))
    d = d.subset(n_train, n_test, seed)  # subset while uint8: 4x less memory
    d.x_train = d.x_train.float().div_(255.0)
    d.x_test = d.x_test.float().div_(255.0)
    return d


def _load_idx_dataset(name: str, root, download, n_train, n_test, seed, search_system
                      ) -> Dataset:
    src = _file_source(name)
    loc, files = _find_or_download(name, root, download, search_system)
    xtr, ytr = _read_idx_pair(files[_IDX_FILES[0]], files[_IDX_FILES[1]], len(src.classes))
    xte, yte = _read_idx_pair(files[_IDX_FILES[2]], files[_IDX_FILES[3]], len(src.classes))
    desc = f"{src.title}, 28x28 grey, {len(xtr):,}/{len(xte):,} from {loc}"
    return _finish(name, xtr, ytr, xte, yte, desc, loc, n_train, n_test, seed)


def load_fashion_mnist(root: Optional[str] = None, download: bool = True,
                       n_train: Optional[int] = None, n_test: Optional[int] = None,
                       seed: int = 0, search_system: bool = True, **_) -> Dataset:
    """Fashion-MNIST from its original idx files: 1x28x28 in [0, 1], 10 classes."""
    return _load_idx_dataset("fashion_mnist", root, download, n_train, n_test, seed,
                             search_system)


def load_mnist(root: Optional[str] = None, download: bool = True,
               n_train: Optional[int] = None, n_test: Optional[int] = None,
               seed: int = 0, search_system: bool = True, **_) -> Dataset:
    """MNIST from its original idx files: 1x28x28 in [0, 1], 10 classes."""
    return _load_idx_dataset("mnist", root, download, n_train, n_test, seed, search_system)


# ---- CIFAR-10 python batches
def _latin1_encode(text, encoding="latin1"):
    """Python 3 pickles (protocol < 3) store bytes as _codecs.encode(text, 'latin1')."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError("only latin1 text-to-bytes is allowed")
    return text.encode("latin1")


def _data_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are refused")
    return dt


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=_data_dtype(dtype)).reshape(shape, order=order)


try:  # numpy 2 (numpy.core still works there, with a deprecation warning)
    from numpy._core.multiarray import _reconstruct as _RECONSTRUCT
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct as _RECONSTRUCT

# (module, name) -> the object handed to the unpickler: everything else is refused.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,   # arrays pickled by numpy 1
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # ... and by numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _data_dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,        # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,                     # bytes in protocol 2
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build plain data only: dicts, lists, tuples, str, bytes, numbers and
    uint8-style numpy arrays.

    Why: unpickling runs code. A pickle may name any global (``os.system``, a class with a
    malicious ``__reduce__``...) and the standard unpickler imports and calls it, so loading a
    tampered or spoofed CIFAR file would execute arbitrary code. This project therefore never
    uses ``pickle.load`` on data files. ``find_class`` refuses every global except the few
    numpy constructors an array needs (the real CIFAR-10 batches hold ``data`` as a numpy
    array), each mapped to a fixed, harmless function -- never imported by name.
    """

    def find_class(self, module, name):
        obj = _PICKLE_ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: data files may "
                                         f"only hold plain data")
        return obj

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def _unpickle_data(raw: bytes, where: str):
    """Restricted unpickling (see _DataOnlyUnpickler); latin1 reads the Python-2 originals."""
    try:
        return _DataOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # refused global, truncated or garbled stream
        raise DatasetUnavailable(f"{where}: not a valid CIFAR-10 batch, refused or corrupt "
                                 f"({type(e).__name__}: {e})") from e


def _str_keys(d, where: str) -> dict:
    if not isinstance(d, dict):
        raise DatasetUnavailable(f"{where}: expected a dict, found {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(raw: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
    d = _str_keys(_unpickle_data(raw, where), where)
    if "data" not in d or "labels" not in d:
        raise DatasetUnavailable(f"{where}: a CIFAR-10 batch needs 'data' and 'labels', found "
                                 f"keys {sorted(map(str, d))}")
    data, labels = d["data"], d["labels"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(bytearray(data), dtype=np.uint8)
        data = data.reshape(-1, 3072) if data.size % 3072 == 0 else data
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetUnavailable(f"{where}: 'data' must be uint8 N x 3072, found "
                                 f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetUnavailable(f"{where}: 'labels' are not integers ({e})") from e
    if y.shape != (len(data),):
        raise DatasetUnavailable(f"{where}: {len(data)} images but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= 10):
        raise DatasetUnavailable(f"{where}: labels out of range 0..9")
    return data.reshape(-1, 3, 32, 32), y


def _cifar_classes(raw: Optional[bytes], where: str) -> List[str]:
    if raw is None:
        return list(_CIFAR_CLASSES)
    names = _str_keys(_unpickle_data(raw, where), where).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DatasetUnavailable(f"{where}: 'label_names' must be a list of 10 names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _cifar_raw_files(loc: Path, files: Dict[str, Path]) -> Dict[str, bytes]:
    """Bytes of each needed file, from the folder or straight out of the archive."""
    if "archive" not in files:
        return {n: _read_data_file(p) for n, p in files.items()}
    out: Dict[str, bytes] = {}
    try:  # the archive: a regular file of bounded size, checked before it is opened
        _files.check_file(loc, MAX_DATA_FILE_BYTES, "dataset archive")
    except _files.UnreadableFile as e:
        raise DatasetUnavailable(str(e)) from None
    try:
        with tarfile.open(loc, "r:gz") as tar:  # read in memory: nothing is extracted
            for m in tar.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in _CIFAR_FILES + (_CIFAR_META,) and base not in out:
                    if m.size > MAX_DATA_FILE_BYTES:
                        raise DatasetUnavailable(f"{loc}: member {base} is larger than "
                                                 f"{MAX_DATA_FILE_BYTES >> 20} MB")
                    out[base] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetUnavailable(f"{loc}: cannot be read, the archive is corrupt or "
                                 f"truncated ({type(e).__name__}: {e})") from e
    missing = [n for n in _CIFAR_FILES if n not in out]
    if missing:
        raise DatasetUnavailable(f"{loc}: the archive lacks {', '.join(missing)}")
    return out


def load_cifar10(root: Optional[str] = None, download: bool = True,
                 n_train: Optional[int] = None, n_test: Optional[int] = None,
                 seed: int = 0, search_system: bool = True, **_) -> Dataset:
    """CIFAR-10 from the python-version batches (folder or archive): 3x32x32 in [0, 1]."""
    loc, files = _find_or_download("cifar10", root, download, search_system)
    raw = _cifar_raw_files(loc, files)
    where = (lambda n: f"{loc}:{n}") if "archive" in files else (lambda n: str(loc / n))
    parts = [_cifar_batch(raw[n], where(n)) for n in _CIFAR_FILES[:5]]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_batch(raw["test_batch"], where("test_batch"))
    classes = _cifar_classes(raw.get(_CIFAR_META), where(_CIFAR_META))
    d = _finish("cifar10", xtr, ytr, xte, yte,
                f"CIFAR-10, 32x32 colour, {len(xtr):,}/{len(xte):,} from {loc}", loc,
                n_train, n_test, seed)
    d.classes = classes
    return d

DATASETS: Dict[str, DatasetSpec] = {
    "moons": DatasetSpec("moons", load_moons, "two moons, 2-D points (offline)", True),
    "spirals": DatasetSpec("spirals", load_spirals, "two spirals, 2-D points (offline)", True),
    "digits": DatasetSpec("digits", load_digits, "8x8 digits bundled with scikit-learn (offline)",
                          True),
    "circles": DatasetSpec("circles", load_circles, "two circles, 2-D points (offline)", True),
    "xor": DatasetSpec("xor", load_xor, "exclusive or, 2-D points (offline)", True),
    "blobs": DatasetSpec("blobs", load_blobs, "two Gaussian blobs, 2-D points (offline)", True),
    "fashion_mnist": DatasetSpec("fashion_mnist", load_fashion_mnist,
                                 "Fashion-MNIST, 28x28 grey, 60,000/10,000 (files or download)",
                                 False),
    "mnist": DatasetSpec("mnist", load_mnist,
                         "MNIST digits, 28x28 grey, 60,000/10,000 (files or download)", False),
    "cifar10": DatasetSpec("cifar10", load_cifar10,
                           "CIFAR-10, 32x32 colour, 50,000/10,000 (files or download)", False),
}

OFFLINE_DATASETS = [n for n, s in DATASETS.items() if s.offline]
# The 2-D point sets (the Playground's; each loader takes n_train, n_test, noise, seed).
DATASETS_2D = ["moons", "spirals", "circles", "xor", "blobs"]


def load_dataset(name: str, *, root: Optional[str] = None, seed: int = 0,
                 download: bool = True, **kwargs) -> Dataset:
    """Load a registered dataset. ``root`` is the folder for file-based datasets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if spec.offline:
        return spec.loader(seed=seed, **kwargs)
    return spec.loader(root=root, download=download, seed=seed, **kwargs)


def dataset_status(name: str, root: Optional[str] = None, *, search_system: bool = True) -> str:
    """One line saying, without loading anything, whether ``name`` can be loaded and from where."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if DATASETS[name].offline:
        return f"{name}: built in, always available (offline)."
    src = _file_source(name)
    loc, _, searched = locate_files(name, root, search_system=search_system)
    if loc is not None:
        how = f" (Debian package {src.apt_package})" if src.apt_package and \
            os.path.abspath(loc) == os.path.abspath(src.system_dirs[0]) else ""
        return f"{name}: files found in {os.path.abspath(loc)}{how}."
    where = "; ".join(f"{os.path.abspath(p)} ({why})" for p, why in searched) or \
        "nothing: no --data-root and default folders off"
    tip = f" or `sudo apt-get install {src.apt_package}`" if src.apt_package else ""
    return (f"{name}: files not found (searched: {where}). Loading will try a torchvision "
            f"download (needs internet); offline, pass --data-root DIR with the files{tip}.")
