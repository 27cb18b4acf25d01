"""The science the pages show, run once per setting and cached (``st.cache_data``): each
function takes a checkpoint's path and SHA-256 (the cache key) and plain settings, runs the
core (classifiers, attacks, projections) and returns plain results for a figure function of
``normshape_core.figures``. Pages call these and never import torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
import torch

from normshape_app.inventory import (load_dataset, load_model, shipped_checkpoints_dir,
                                     warm_umap_in_background)
from normshape_app.style import public_text
from normshape_core import experiments as E
from normshape_core import playground as PG
from normshape_core import projections as P
from normshape_core.attacks import make_attack
from normshape_core.config import ConfigError
from normshape_core.shaping import PNClassifier, make_reference_pool


def _setup(path: str, sha: str):
    model, meta = load_model(path, sha)
    data = load_dataset(meta["config"]["dataset"])
    eps = float(meta["config"].get("eps") or 0.1)
    return model, meta, data, eps


# ---------------------------------------------------------------- Decision boundaries
@st.cache_data(show_spinner="Classifying the plane under PN and under shaped inference ...",
               max_entries=32)
def regions_2d(path: str, sha: str, ratio: str, craft: str, n_boxes: int, seed: int):
    """``normshape_core.experiments.decision_regions_2d`` for a checkpoint, cached."""
    model, meta, data, eps = _setup(path, sha)
    return E.decision_regions_2d(model, data, ratio, craft, n_boxes, seed, eps=eps)


@st.cache_data(show_spinner="Classifying the slice of input space ...", max_entries=32)
def image_slice(path: str, sha: str, index: int, mode: str, extent: float, seed: int):
    """A 2-D slice of input space around test image ``index``: the plane spanned by its
    PGD-20 perturbation (crafted with PN) and a random orthogonal direction, classified with
    PN and with ``mode`` ("BN": the image's test batch of 100, or "shaped 1:R")."""
    model, meta, data, eps = _setup(path, sha)
    x0, label = data.x_test[index], int(data.y_test[index])
    pn = PNClassifier(model)
    res = make_attack("pgd", eps=eps, steps=20, seed=seed).run(pn, x0[None], data.y_test[[index]])
    d1 = (res.x_adv[0] - x0)
    if float(d1.abs().max()) == 0:  # no gradient to follow: fall back to a random sign step
        g = torch.Generator().manual_seed(seed)
        d1 = eps * torch.sign(torch.randn(x0.shape, generator=g))
    d2 = P.orthogonal_direction(d1, seed)
    if mode == "BN":
        start = (index // 100) * 100  # the test batch of 100 that holds the image
        batch = data.x_test[start:start + 100]
        right = P.BatchStatsClassifier(model, batch)
        right_label = f"BN of its test batch ({len(batch)} images)"
    else:
        ratio = mode.split()[-1]
        pool = make_reference_pool(data, 1000, seed=0)
        right = P.BatchMemberClassifier(model, P.fixed_references(pool, ratio, seed=0))
        right_label = f"shaped inference {ratio}"
    with torch.no_grad():
        adv_pred = {"PN": int(pn(res.x_adv).argmax(1)), "right": int(right(res.x_adv).argmax(1))}
    return {"pn": P.input_slice(pn, x0, label, d1, d2, extent, 41),
            "right": P.input_slice(right, x0, label, d1, d2, extent, 41),
            "right_label": right_label, "x0": x0.numpy(), "x_adv": res.x_adv[0].numpy(),
            "label": label, "classes": meta.get("classes"), "eps": eps, "adv_pred": adv_pred}


@st.cache_data(show_spinner="Computing the feature map (UMAP compiles its code on first use in "
                            "a process: about 15-20 s on two cores) ...", max_entries=32)
def feature_map(path: str, sha: str, method: str, norms: str, n: int, seed: int):
    """Penultimate features of ``n`` test samples and their PGD-20 examples (crafted with
    PN), computed with PN or with each set's own batch statistics, mapped to 2-D."""
    model, meta, data, eps = _setup(path, sha)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_test), generator=g)[:n]
    x, y = data.x_test[idx], data.y_test[idx]
    x_adv = make_attack("pgd", eps=eps, steps=20, seed=seed).run(PNClassifier(model), x, y).x_adv
    mode = "pn" if norms == "pn" else "frozen_bn"  # BN: each set with its own batch statistics
    f = np.concatenate([P.penultimate_features(model, x, mode, chunk=len(x)),
                        P.penultimate_features(model, x_adv, mode, chunk=len(x))])
    return {"emb": P.embed_2d(f, method, seed=seed), "y": y.numpy(), "n": len(x),
            "classes": meta.get("classes") or [str(i) for i in range(int(y.max()) + 1)]}


# ---------------------------------------------------------------- Moving target
@st.cache_data(show_spinner="Running PGD on the batch and recording BN statistics ...",
               max_entries=64)
def moving_target_trace(path: str, sha: str, ratio: str, batch: int, seed: int, eps: float,
                        step_size: float, steps: int):
    """``normshape_core.experiments.moving_target_trace`` for a checkpoint, cached."""
    model, meta = load_model(path, sha)
    data = load_dataset(meta["config"]["dataset"])
    return E.moving_target_trace(model, data, ratio, batch, seed, eps, step_size, steps)


# ---------------------------------------------------------------- Confoundings deck
def _read_json(path: Path):
    """A shipped JSON file (bounded, a regular file: ``files``), or None."""
    from normshape_core.files import read_json_or_none

    return read_json_or_none(path, 64 << 20)


@st.cache_data(show_spinner=False)
def _shipped(results_path: str, lessons_path: str, mtimes: tuple):
    return _read_json(Path(results_path)), _read_json(Path(lessons_path))


def confoundings_shipped():
    """(sweep results, lesson choices, lesson folder) as shipped (None where missing),
    reread when a file changes."""
    root = shipped_checkpoints_dir()
    r, l = root / "sweep" / "confoundings.json", root / "lessons" / "lessons.json"
    mt = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (r, l))
    return (*_shipped(str(r), str(l), mt), root / "lessons")


@st.cache_data(show_spinner="Running PGD on a training batch, step by step ...", max_entries=8)
def animation_frames(path: str, sha: str, batch: int, seed: int = 0):
    """The moving-target trace of one training batch, all-adversarial (1:0) and shaped
    (1:3), with the checkpoint's own attack settings."""
    from normshape_core.diagnostics import moving_target

    model, meta = load_model(path, sha)
    cfg = meta["config"]
    data = load_dataset(cfg["dataset"])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:batch]
    x, y = data.x_train[idx], data.y_train[idx]
    out = {}
    for ratio in ("1:0", "1:3"):
        tr = moving_target(model, x, y, ratio, eps=cfg["eps"], step_size=cfg["step_size"],
                           steps=cfg["steps"], seed=seed)
        out[ratio] = {"frame": tr.frame, "summary": tr.summary()}
    return out


def lesson_animation_frames(folder: Path, batch: int):
    """``animation_frames`` for the lesson checkpoint in ``folder``."""
    from normshape_core.checkpoints import read_meta

    meta = read_meta(folder)
    return animation_frames(str(folder), meta["weights_sha256"], int(batch))


# ---------------------------------------------------------------- Playground (per session)
def playground_session(settings, specs):
    """This session's live playground (two 2-D runs training side by side, kept in the
    session); a new one when the data or model settings changed or Reset was pressed."""
    pg = st.session_state.get("pg_obj")
    want = (settings, tuple(specs))
    ss = st.session_state
    if pg is not None and (pg.settings, pg.specs) == want and not ss.pop("pg_reset", False):
        return pg
    if pg is not None:
        pg.close()
        st.session_state.pg_obj = None
    st.session_state.pg_playing = False
    try:
        with st.spinner("Building the data and both models ..."):
            try:
                pg = PG.Playground(settings, specs)
            except ImportError:
                # scikit-learn imported at the same moment by the app's UMAP warm-up thread
                # (a circular-import race between threads): wait for it, then once more.
                warm = warm_umap_in_background()
                if warm is not None:
                    warm.join(timeout=90)
                pg = PG.Playground(settings, specs)
    except (ConfigError, ValueError) as e:
        st.error(f"These settings cannot train: {public_text(e)}")
        return None
    st.session_state.pg_obj = pg
    return pg


def playground_toggle_play():  # the Play / Pause button
    st.session_state.pg_playing = not st.session_state.pg_playing


def playground_step_once():  # Step: one frame, then paused
    st.session_state.pg_playing = False
    st.session_state.pg_step_pending = True


def playground_reset():  # Reset: both runs from their initial weights
    st.session_state.pg_reset = True


def playground_curves(pg, i: int, infer: str, fresh: bool, draw):
    """Run ``i``'s curves figure: while playing, redrawn (``draw()``) only on frames with
    ``fresh`` accuracies (every ``ACCURACY_EVERY`` frames; the same figure in between costs
    the browser nothing); paused, at every change."""
    cache = st.session_state.setdefault("pg_curves", {})
    mark = (id(pg), i, infer)
    old = cache.get(mark)
    if old is None or not st.session_state.pg_playing or (fresh and old[0] != pg.frame):
        old = cache[mark] = (pg.frame, draw())
    return old[1]
