"""Data layer: offline sets, and the file-based sets read from small files that these tests
write in the REAL on-disk formats (idx, gzipped or not; CIFAR-10 python pickles). Nothing here
downloads: every file-based load uses download=False or a stand-in downloader, and
search_system=False so the machine's own folders do not interfere."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from normshape_core.blocks import data as D
from normshape_core.blocks.data import DatasetUnavailable, load_dataset

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------ writers (real formats)
def write_idx(path: Path, arr: np.ndarray, gz: bool, magic=None) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim  # 0x00000803 images, 0x00000801 labels
    payload = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) \
        + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_idx_set(folder: Path, gz: bool, n_train=6, n_test=4, seed=0):
    """Four idx files; image 0 of each split has a 0 pixel and a 255 pixel at known places."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 27, 27] = 0, 255
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[prefix] = (x, y)
    return out


def _py2_str(s: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: Python 2's str
    return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<I", len(s)) + s


def _py2_int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def py2_cifar_pickle(data: np.ndarray, labels, batch_label: bytes = b"batch") -> bytes:
    """A batch byte-for-byte as Python 2's cPickle (protocol 2) wrote the CIFAR-10 originals:
    py2 str keys, numpy.core.multiarray._reconstruct for the uint8 array."""
    arr = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
           + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
           + b"(" + _py2_int(1) + _py2_int(data.shape[0]) + _py2_int(data.shape[1]) + b"\x86"
           + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
           + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
           + _py2_int(0) + b"tb"
           + b"\x89" + _py2_str(data.tobytes()) + b"tb")
    lab = b"](" + b"".join(_py2_int(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + _py2_str(b"batch_label") + _py2_str(batch_label)
            + _py2_str(b"labels") + lab + _py2_str(b"data") + arr + b"u.")


def make_cifar_set(folder: Path, n_per_batch=2, n_test=3, style="py3", seed=0):
    """cifar-10-batches-py-style folder: data_batch_1..5, test_batch, batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + \
            [("test_batch", n_test)]:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        x[0, 0], x[0, 1024], x[0, 3071] = 255, 0, 255  # R(0,0)=255, G(0,0)=0, B(31,31)=255
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        if style == "py2":
            raw = py2_cifar_pickle(x, y, name.encode())
        else:
            raw = pickle.dumps({b"batch_label": name.encode(), b"labels": y, b"data": x,
                                b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]},
                               protocol=2 if style == "py3-proto2" else pickle.DEFAULT_PROTOCOL)
        (folder / name).write_bytes(raw)
        batches[name] = (x, np.array(y))
    meta = {b"num_cases_per_batch": n_per_batch, b"num_vis": 3072,
            b"label_names": [c.encode() for c in D._CIFAR_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def expected_float(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32)) / 255.0


# ------------------------------------------------------------------ offline sets
@pytest.mark.parametrize("name", ["moons", "spirals", "circles", "xor", "blobs"])
def test_2d_sets_in_unit_square_and_seeded(name):
    a = load_dataset(name, n_train=300, n_test=200, seed=3)
    b = load_dataset(name, n_train=300, n_test=200, seed=3)
    c = load_dataset(name, n_train=300, n_test=200, seed=4)
    assert a.x_train.shape == (300, 2) and a.x_test.shape == (200, 2) and a.is_2d
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.long
    for x in (a.x_train, a.x_test):
        assert x.min() >= 0 and x.max() <= 1
    assert set(a.y_train.tolist()) == {0, 1} and a.num_classes == 2
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_digits_split_and_range():
    d = load_dataset("digits")
    assert d.x_train.shape == (1400, 1, 8, 8) and d.x_test.shape == (397, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert d.num_classes == 10 and len(d.classes) == 10
    assert torch.equal(d.x_test, load_dataset("digits").x_test)  # fixed split
    assert D.OFFLINE_DATASETS == ["moons", "spirals", "digits", "circles", "xor", "blobs"]


# ------------------------------------------------------------------ idx: Fashion-MNIST, MNIST
def _check_idx_dataset(ds, written, source: Path):
    xtr, ytr = written["train"]
    xte, yte = written["t10k"]
    assert ds.x_train.shape == (len(xtr), 1, 28, 28) and ds.x_test.shape == (len(xte), 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.long
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    assert float(ds.x_train[0, 0, 0, 0]) == 0.0 and float(ds.x_train[0, 0, 27, 27]) == 1.0
    assert float(ds.x_test[0, 0, 0, 0]) == 0.0 and float(ds.x_test[0, 0, 27, 27]) == 1.0
    assert torch.equal(ds.x_train, expected_float(xtr)[:, None])
    assert torch.equal(ds.x_test, expected_float(xte)[:, None])
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert ds.num_classes == 10 and len(ds.classes) == 10
    assert ds.source == str(source)


def test_fashion_mnist_debian_style_flat_gz(tmp_path):
    written = make_idx_set(tmp_path / "fashion-mnist", gz=True)
    assert sorted(p.name for p in (tmp_path / "fashion-mnist").iterdir()) == \
        sorted(f + ".gz" for f in IDX_FILES)
    for root in (tmp_path / "fashion-mnist", tmp_path):  # the folder itself, or root/fashion-mnist
        ds = load_dataset("fashion_mnist", root=str(root), download=False, search_system=False)
        _check_idx_dataset(ds, written, tmp_path / "fashion-mnist")
    assert ds.classes[:3] == ["T-shirt/top", "Trouser", "Pullover"]
    assert ds.classes[-1] == "Ankle boot"


def test_fashion_mnist_torchvision_layout_uncompressed(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    written = make_idx_set(raw, gz=False, seed=1)
    ds = D.load_fashion_mnist(root=str(tmp_path), download=False, search_system=False)
    _check_idx_dataset(ds, written, raw)


def test_mnist_torchvision_layout_and_subset(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    written = make_idx_set(raw, gz=True, n_train=12, n_test=8, seed=2)
    full = load_dataset("mnist", root=str(tmp_path), download=False, search_system=False)
    _check_idx_dataset(full, written, raw)
    assert full.classes == [str(i) for i in range(10)]
    # seeded subset: same draw as Dataset.subset, passed through load_dataset's seed
    a = load_dataset("mnist", root=str(tmp_path), download=False, search_system=False,
                     n_train=5, n_test=3, seed=7)
    b = full.subset(5, 3, seed=7)
    assert a.x_train.shape == (5, 1, 28, 28) and a.x_test.shape == (3, 1, 28, 28)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset("mnist", root=str(tmp_path), download=False, search_system=False,
                     n_train=5, n_test=3, seed=8)
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_names_the_file(tmp_path, gz):
    make_idx_set(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion_mnist", root=str(tmp_path), download=False, search_system=False)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg


def test_wrong_magic_number_is_refused(tmp_path):
    make_idx_set(tmp_path, gz=False)
    labels = np.zeros(4, np.uint8)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=False, magic=0x00000803)
    with pytest.raises(DatasetUnavailable, match="magic number 0x00000803, expected 0x00000801"):
        D.load_mnist(root=str(tmp_path), download=False, search_system=False)


def test_missing_dataset_offline_message(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion_mnist", root=str(tmp_path), download=False, search_system=False)
    msg = str(e.value)
    for f in IDX_FILES:
        assert f in msg
    assert "download is off" in msg
    assert str(tmp_path) in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "missing train-labels-idx1-ubyte" in msg  # the partial folder says what it lacks
    assert "--data-root DIR" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "moons, spirals, digits" in msg
    # CIFAR-10 too
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("cifar10", root=str(tmp_path), download=False, search_system=False)
    msg = str(e.value)
    assert "data_batch_1" in msg and "test_batch" in msg and "cifar-10-python.tar.gz" in msg
    assert "moons, spirals, digits" in msg and "--data-root DIR" in msg


def test_failed_download_becomes_dataset_unavailable(tmp_path, monkeypatch):
    calls = []

    def offline(name, root):
        calls.append((name, root))
        raise OSError("network is unreachable")

    monkeypatch.setattr(D, "_download_with_torchvision", offline)
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("mnist", root=str(tmp_path), download=True, search_system=False)
    assert calls == [("mnist", str(tmp_path))]
    msg = str(e.value)
    assert "download failed: OSError: network is unreachable" in msg
    assert "t10k-labels-idx1-ubyte" in msg and "moons, spirals, digits" in msg


def test_download_fills_torchvision_layout(tmp_path, monkeypatch):
    def fake(name, root):  # what torchvision leaves behind: root/FashionMNIST/raw
        make_idx_set(Path(root) / "FashionMNIST" / "raw", gz=True)

    monkeypatch.setattr(D, "_download_with_torchvision", fake)
    ds = load_dataset("fashion_mnist", root=str(tmp_path), download=True, search_system=False)
    assert ds.source == str(tmp_path / "FashionMNIST" / "raw") and len(ds.x_train) == 6


def test_dataset_status(tmp_path):
    assert "offline" in D.dataset_status("digits")
    st = D.dataset_status("mnist", root=str(tmp_path), search_system=False)
    assert "not found" in st and str(tmp_path) in st
    make_idx_set(tmp_path / "mnist", gz=True)
    st = D.dataset_status("mnist", root=str(tmp_path), search_system=False)
    assert st.startswith("mnist: files found in") and str(tmp_path / "mnist") in st
    with pytest.raises(ValueError):
        D.dataset_status("imagenet")


def test_default_locations_include_debian_and_torchvision_folders(tmp_path):
    locs = [str(p) for p in D.candidate_locations("fashion_mnist", str(tmp_path))]
    assert locs[:4] == [str(tmp_path), str(tmp_path / "FashionMNIST" / "raw"),
                        str(tmp_path / "fashion-mnist"), str(tmp_path / "fashion_mnist")]
    assert locs[4:] == ["/usr/share/datasets/fashion-mnist", os.path.join("data", "FashionMNIST",
                                                                         "raw")]
    assert D.candidate_locations("fashion_mnist", None, search_system=False) == []


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason=f"{DEBIAN_FASHION} absent: `apt-get install dataset-fashion-mnist` "
                           f"provides the real Fashion-MNIST files")
def test_real_fashion_mnist_from_debian_package():
    labels = D.locate_files("fashion_mnist")[1]
    assert len(D.read_idx(labels["train-labels-idx1-ubyte"], 0x801)) == 60000
    assert len(D.read_idx(labels["t10k-labels-idx1-ubyte"], 0x801)) == 10000
    ds = load_dataset("fashion_mnist", n_train=1000, n_test=500, download=False)
    assert ds.x_train.shape == (1000, 1, 28, 28) and ds.x_test.shape == (500, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.long
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert set(ds.y_train.tolist()) == set(range(10))
    assert ds.classes[0] == "T-shirt/top" and "60,000/10,000" in ds.description
    assert ds.source == str(DEBIAN_FASHION)


# ------------------------------------------------------------------ CIFAR-10
def _check_cifar(ds, batches, source: Path):
    xtr = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    ytr = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    xte, yte = batches["test_batch"]
    assert ds.x_train.shape == (len(xtr), 3, 32, 32) and ds.x_test.shape == (len(xte), 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.long
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    assert float(ds.x_train[0, 0, 0, 0]) == 1.0 and float(ds.x_train[0, 1, 0, 0]) == 0.0
    assert float(ds.x_train[0, 2, 31, 31]) == 1.0 and float(ds.x_test[0, 0, 0, 0]) == 1.0
    assert torch.equal(ds.x_train, expected_float(xtr).reshape(-1, 3, 32, 32))
    assert torch.equal(ds.x_test, expected_float(xte).reshape(-1, 3, 32, 32))
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert ds.classes == list(D._CIFAR_CLASSES) and ds.num_classes == 10
    assert ds.source == str(source)


@pytest.mark.parametrize("style", ["py3", "py3-proto2", "py2"])
def test_cifar10_python_batches(tmp_path, style):
    folder = tmp_path / "cifar-10-batches-py"
    batches = make_cifar_set(folder, style=style)
    ds = load_dataset("cifar10", root=str(tmp_path), download=False, search_system=False)
    _check_cifar(ds, batches, folder)
    sub = load_dataset("cifar10", root=str(folder), download=False, search_system=False,
                       n_train=4, n_test=2, seed=1)
    assert sub.x_train.shape == (4, 3, 32, 32) and sub.x_test.shape == (2, 3, 32, 32)


def test_cifar10_from_archive(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    batches = make_cifar_set(folder)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    archive.rename(root / archive.name)
    ds = load_dataset("cifar10", root=str(root), download=False, search_system=False)
    _check_cifar(ds, batches, root / archive.name)


CALLS = []


def _record(*args):
    CALLS.append(args)
    return {}


class Evil:
    def __reduce__(self):
        return (_record, ("pwned",))


@pytest.mark.parametrize("payload", ["class", "os.system", "object-array"])
def test_cifar_pickle_with_global_is_refused(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_set(folder)
    evil = {"class": Evil(), "os.system": os.system,
            "object-array": np.array([Evil()], dtype=object)}[payload]
    raw = pickle.dumps({b"data": evil, b"labels": [0]})
    if payload == "class":  # the plain unpickler would run it: the test means something
        pickle.loads(raw)
        assert CALLS == [("pwned",)]
        CALLS.clear()
    (folder / "data_batch_3").write_bytes(raw)
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("cifar10", root=str(tmp_path), download=False, search_system=False)
    msg = str(e.value)
    assert str(folder / "data_batch_3") in msg
    assert "refused" in msg
    assert CALLS == []


def test_cifar_truncated_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_set(folder)
    p = folder / "test_batch"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DatasetUnavailable, match="test_batch"):
        load_dataset("cifar10", root=str(tmp_path), download=False, search_system=False)


def test_unpickler_loads_plain_data():
    raw = pickle.dumps({b"a": [1, 2, (3, "x")], "b": b"\x00\xff", "c": 1.5})
    assert D._unpickle_data(raw, "mem") == {b"a": [1, 2, (3, "x")], "b": b"\x00\xff", "c": 1.5}
    buf = io.BytesIO()
    pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), buf, protocol=5)
    arr = D._unpickle_data(buf.getvalue(), "mem")
    assert arr.dtype == np.uint8 and arr.tolist() == [[0, 1, 2], [3, 4, 5]]
