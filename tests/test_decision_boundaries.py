"""Decision boundaries' feature maps (issue 23, item 4): the shipped checkpoints carry their
maps (``model.projection.json``, computed ahead by ``reproduce`` and the warm-up command),
the page reads them instead of computing; a checkpoint without them gets its map computed in
the background, the page showing the progress and the PCA map while UMAP runs; a stored file
is used only for exactly its weights and settings, and a bad one is ignored."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _app_checkpoints import checkpoint_root
from normshape_core.measuring import projections as P
from normshape_core.training.checkpoints import find_checkpoints, load_checkpoint, read_meta
from normshape_core.blocks.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/decision_boundaries.py"


def _fake_doc(meta, n=P.FEATURE_MAP_N, seed=0, labels=None, shift=0.0):
    """A projection file's content with known coordinates (no UMAP needed)."""
    rng = np.random.default_rng(1)
    maps = {f"umap/{norms}": P._pack(rng.normal(shift, 1, (2 * n, 2))) for norms in P.MAP_NORMS}
    return {"format": P.PROJECTION_FORMAT, "version": P.PROJECTION_VERSION,
            "weights_sha256": meta["weights_sha256"], "dataset": meta["config"]["dataset"],
            "n": n, "seed": seed, "eps": 0.1, "samples": "test",
            "labels": labels if labels is not None else "01" * (n // 2), "maps": maps}


@pytest.fixture
def ckpt(tmp_path):
    """A copy of a small moons checkpoint in a folder of its own."""
    dst = tmp_path / "ckpts" / "moons-pgd-shaped-1-3"
    shutil.copytree(checkpoint_root() / "moons-pgd-shaped-1-3", dst)
    return dst


def test_the_12_bit_maps_round_trip_within_half_a_level():
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 5, (600, 2)).astype(np.float32)
    back = P._unpack(P._pack(emb), 600)
    span = emb.max(0) - emb.min(0)
    assert np.all(np.abs(back - emb) <= span / P.QUANT_LEVELS / 2 + 1e-5)
    with pytest.raises(ValueError):
        P._unpack(P._pack(emb), 599)  # a map of another size


def test_a_stored_map_is_read_only_for_its_own_weights_and_settings(ckpt):
    meta = read_meta(ckpt)
    path = P.projection_path(ckpt)
    assert path == ckpt / "model.projection.json"
    assert P.read_projection(ckpt, meta["weights_sha256"], "umap", "pn") is None  # no file
    path.write_text(json.dumps(_fake_doc(meta)))
    got = P.read_projection(ckpt, meta["weights_sha256"], "umap", "pn", classes=["a", "b"])
    assert got["emb"].shape == (600, 2) and got["n"] == 300 and got["classes"] == ["a", "b"]
    assert list(got["y"][:4]) == [0, 1, 0, 1]
    sha = meta["weights_sha256"]
    assert P.read_projection(ckpt, "0" * 64, "umap", "pn") is None  # other weights
    assert P.read_projection(ckpt, sha, "umap", "pn", n=200) is None  # other sample
    assert P.read_projection(ckpt, sha, "umap", "pn", seed=1) is None
    assert P.read_projection(ckpt, sha, "pca", "pn") is None  # PCA is never stored
    for bad in ("{", "[]", json.dumps({**_fake_doc(meta), "version": 99}),
                json.dumps(_fake_doc(meta, labels="0x" * 150)),
                json.dumps({**_fake_doc(meta), "maps": {"umap/pn": {"lo": [0], "hi": [1],
                                                                    "q12": "AAAA"}}})):
        path.write_text(bad)
        assert P.read_projection(ckpt, sha, "umap", "pn") is None, bad[:40]
    path.unlink()
    path.mkdir()  # not a regular file
    assert P.read_projection(ckpt, sha, "umap", "pn") is None
    path.rmdir()
    os.mkfifo(path)  # a FIFO would hang a plain read
    assert P.read_projection(ckpt, sha, "umap", "pn") is None
    path.unlink()
    with open(path, "wb") as f:  # larger than any real file
        f.truncate(P.MAX_PROJECTION_BYTES + 1)
    assert P.read_projection(ckpt, sha, "umap", "pn") is None


def test_store_projections_writes_the_page_s_maps_and_skips_up_to_date_ones(ckpt, monkeypatch):
    """``store_projections`` (what reproduce and the warm-up command call): the UMAP maps of
    PN and BN features of the page's sample, the same as the page computes live (quantised);
    a second call computes nothing."""
    calls = []
    real = P.embed_2d

    def fake_umap(f, method="umap", seed=0, **kw):  # PCA in UMAP's place: fast, the same path
        calls.append(method)
        return real(f, "pca", seed=seed)

    monkeypatch.setattr(P, "embed_2d", fake_umap)
    logs = []
    assert P.store_projections([ckpt], log=logs.append) == [ckpt / "model.projection.json"]
    assert calls == ["umap", "umap"] and "feature maps stored" in logs[-1]
    model, meta = load_checkpoint(ckpt)
    live = P.feature_map(model, load_dataset("moons"), "umap", "bn",
                         eps=float(meta["config"]["eps"]))
    got = P.read_projection(ckpt, meta["weights_sha256"], "umap", "bn")
    span = live["emb"].max(0) - live["emb"].min(0)
    assert np.all(np.abs(got["emb"] - live["emb"]) <= span / P.QUANT_LEVELS + 1e-4)
    assert np.array_equal(got["y"], live["y"])
    assert os.path.getsize(ckpt / "model.projection.json") < 12_000
    calls.clear()
    assert P.store_projections([ckpt], log=logs.append) == [] and calls == []
    # a checkpoint that cannot be read is reported, the others still stored
    assert P.store_projections([ckpt.parent / "missing"], log=logs.append) == []
    assert "feature maps not stored" in logs[-1]


def test_every_shipped_checkpoint_carries_its_maps_and_they_stay_small():
    infos, _ = find_checkpoints(ROOT / "checkpoints")
    assert infos
    total = 0
    for info in infos:
        path = P.projection_path(info.path)
        assert path.is_file(), f"{path} missing: python -m normshape_app.ui warm makes it"
        total += path.stat().st_size
        sha = info.meta["weights_sha256"]
        for norms in P.MAP_NORMS:
            got = P.read_projection(info.path, sha, "umap", norms)
            assert got is not None and np.isfinite(got["emb"]).all(), (path, norms)
    assert total < 400_000, f"{total / 1e3:.0f} KB of stored maps"


def array(v):
    """A plotly JSON array: a list, or plotly's typed-array encoding {dtype, bdata}."""
    import base64
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v, dtype=float)


def figures(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("NORMSHAPE_WARM_UMAP", "0")
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    from _apptest import open_app
    return open_app


def test_the_page_reads_a_stored_map_and_computes_nothing(app, ckpt, monkeypatch):
    meta = read_meta(ckpt)
    P.projection_path(ckpt).write_text(json.dumps(_fake_doc(meta, shift=100.0)))
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(ckpt.parent))

    def refuse(*a, **k):
        raise AssertionError("the page computed a feature map it has stored")

    monkeypatch.setattr(P, "feature_map_samples", refuse)
    monkeypatch.setattr(P, "embed_2d", refuse)
    at = app(PAGE)
    assert not at.exception and not at.error, [e.value for e in at.exception]
    (fm,) = [f for f in figures(at) if "penultimate" in f["layout"]["title"]["text"]]
    assert fm["layout"]["title"]["text"].startswith("UMAP of penultimate features")
    xs = np.concatenate([array(t["x"]) for t in fm["data"]])
    assert len(xs) == 600 and xs.mean() > 90  # the stored coordinates (shifted by 100)
    assert not at.get("progress")


def test_without_a_stored_map_the_page_shows_progress_and_pca_until_umap_is_done(
        app, ckpt, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(ckpt.parent))
    release = threading.Event()
    real = P.embed_2d

    def slow_umap(f, method="umap", seed=0, progress=None, **kw):
        if method == "pca":
            return real(f, "pca")
        progress("laying out the UMAP map, epoch 100 of 500", 0.2)
        assert release.wait(60)
        return real(f, "pca") + 1000.0  # told apart from the PCA map by its offset

    monkeypatch.setattr(P, "embed_2d", slow_umap)
    at = app(PAGE)
    assert not at.exception and not at.error
    end = time.time() + 60  # the job's thread may not have reached the UMAP layout yet
    while time.time() < end:
        (bar,) = at.get("progress")
        if "epoch 100 of 500" in bar.proto.text:
            break
        time.sleep(0.2)
        at.run()
    assert "epoch 100 of 500" in bar.proto.text and bar.proto.value == 20, bar.proto.text
    assert any("PCA of the same features stands in" in c.value for c in at.caption)
    (fm,) = [f for f in figures(at) if "penultimate" in f["layout"]["title"]["text"]]
    assert fm["layout"]["title"]["text"].startswith("PCA of penultimate features")
    release.set()
    end = time.time() + 60
    while time.time() < end:
        at.run()
        if not at.get("progress"):
            break
        time.sleep(0.2)
    assert not at.get("progress") and not at.exception
    (fm,) = [f for f in figures(at) if "penultimate" in f["layout"]["title"]["text"]]
    assert fm["layout"]["title"]["text"].startswith("UMAP of penultimate features")


def test_the_server_computes_at_most_its_cap_of_maps_at_once(app, ckpt, monkeypatch):
    """A second checkpoint's map waits for a free slot (NORMSHAPE_MAX_BACKGROUND_JOBS) and
    the page says so; when the first ends, the second starts."""
    monkeypatch.setenv("NORMSHAPE_MAX_BACKGROUND_JOBS", "1")
    other = ckpt.parent / "moons-pgd-adv-only"
    shutil.copytree(checkpoint_root() / "moons-pgd-adv-only", other)
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(ckpt.parent))
    release = threading.Event()
    real = P.embed_2d

    def slow_umap(f, method="umap", seed=0, progress=None, **kw):
        if method == "umap":
            assert release.wait(60)
        return real(f, "pca")

    monkeypatch.setattr(P, "embed_2d", slow_umap)
    first = app(PAGE, {"db_ckpt": "moons-pgd-shaped-1-3"})
    assert first.get("progress")
    second = app(PAGE, {"db_ckpt": "moons-pgd-adv-only"})
    (bar,) = second.get("progress")
    assert "at most 1 feature-map computations at once" in bar.proto.text
    release.set()
    end = time.time() + 60
    while time.time() < end and second.get("progress") and (
            "at most" in second.get("progress")[0].proto.text):
        time.sleep(0.3)
        second.run()
    assert not second.get("progress") or "at most" not in second.get("progress")[0].proto.text
