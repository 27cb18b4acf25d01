"""The science the pages show, run once per setting and cached (``st.cache_data``): each
function takes a checkpoint's path and SHA-256 (the cache key) and plain settings, runs the
core (classifiers, attacks, projections) and returns plain results for a figure function of
``normshape_core.figures``. Pages call these and never import torch."""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from normshape_app.inventory import (load_dataset, load_model, shipped_checkpoints_dir,
                                     warm_umap_in_background)
from normshape_app.style import public_text
from normshape_core.measuring import experiments as E
from normshape_app import playground as PG
from normshape_core.measuring import projections as P
from normshape_core.attacks import make_attack
from normshape_core.settings.config import ConfigError
from normshape_core.inference.shaping import PNClassifier, make_reference_pool


def _setup(path: str, sha: str):
    model, meta = load_model(path, sha)
    data = load_dataset(meta["config"]["dataset"])
    eps = float(meta["config"].get("eps") or 0.1)
    return model, meta, data, eps


# ---------------------------------------------------------------- Decision boundaries
@st.cache_data(show_spinner="Classifying the plane under PN and under shaped inference ...",
               max_entries=32)
def regions_2d(path: str, sha: str, ratio: str, craft: str, n_boxes: int, seed: int):
    """``normshape_core.measuring.experiments.decision_regions_2d`` for a checkpoint, cached."""
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


def max_background_jobs() -> int:
    """Feature maps a server computes at once in the background
    (``NORMSHAPE_MAX_BACKGROUND_JOBS``, default 2): each keeps a core busy."""
    return _env_int("NORMSHAPE_MAX_BACKGROUND_JOBS", 2)


class MapJob:
    """One feature map computed in a thread of its own (no Streamlit calls in it): PGD on
    the sample, the features, the PCA map (ready first: it stands in while UMAP runs), then
    UMAP with its progress. ``text`` / ``fraction`` say how far it is."""

    def __init__(self, model, data, method: str, norms: str, n: int, seed: int, eps: float,
                 classes, on_end):
        self.method, self.text, self.fraction = method, "starting", None
        self.t0 = self.t_phase = time.monotonic()
        self.standin = self.result = self.error = None
        self.done = threading.Event()
        self.shown = threading.Event()  # something to show: the PCA map (or the end)
        self._args = (model, data, norms, n, seed, eps, classes)
        self._on_end = on_end
        threading.Thread(target=self._run, daemon=True, name="normshape-feature-map").start()

    def _say(self, text: str, fraction=None) -> None:
        if text.split(",")[0] != self.text.split(",")[0]:
            self.t_phase = time.monotonic()
        self.text, self.fraction = text, fraction

    def _run(self) -> None:
        model, data, norms, n, seed, eps, classes = self._args
        torch.set_num_threads(1)  # this thread only; the page's other work keeps its cores
        PG.name_thread("normshape-map")
        try:
            self._say(f"running PGD-{P.FEATURE_MAP_STEPS} on {n} test samples (crafted with "
                      "PN)")
            x, x_adv, y = P.feature_map_samples(model, data, n, seed, eps)
            self._say(f"penultimate features with {norms.upper()}")
            feats = P.feature_map_features(model, x, x_adv, norms)
            pca = P.map_result(P.embed_2d(feats, "pca"), y.numpy(), classes)
            if self.method == "pca":
                self.result = pca
                return
            self.standin = pca
            self.shown.set()
            self._say("preparing UMAP (the first UMAP map in a server compiles its code: "
                      "15-60 s)")
            emb = P.embed_2d(feats, "umap", seed=seed, progress=self._say)
            self.result = P.map_result(emb, y.numpy(), classes)
        except Exception as e:  # noqa: BLE001 - shown on the page
            self.error = public_text(f"{type(e).__name__}: {e}".splitlines()[0][:300])
        finally:
            self._args = None
            self.done.set()
            self.shown.set()
            self._on_end(self)


class MapJobs:
    """The server's feature-map jobs: one per (checkpoint, settings), shared by every
    session, at most ``cap`` running (:class:`normshape_app.playground.Slots`); the last
    32 finished ones kept for their results."""

    def __init__(self, cap: int):
        self.slots = PG.Slots(cap, "feature-map computations")
        self.jobs: "OrderedDict[tuple, MapJob]" = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple, make):
        """(job, started now): the job of ``key``, started by ``make(on_end)`` if there is
        none (or the last one failed); ``PG.Full`` when ``cap`` jobs are running."""
        with self.lock:
            job = self.jobs.get(key)
            if job is not None and job.error is None:
                self.jobs.move_to_end(key)
                return job, False
            self.slots.acquire(key)
            try:
                job = make(lambda j: self.slots.release(key))
            except BaseException:
                self.slots.release(key)
                raise
            self.jobs[key] = job
            done = [k for k, j in self.jobs.items() if j.done.is_set()]
            for k in done[:max(0, len(self.jobs) - 32)]:
                del self.jobs[k]
            return job, True


@st.cache_resource(show_spinner=False)
def _map_jobs() -> MapJobs:
    return MapJobs(max_background_jobs())


@st.cache_data(show_spinner=False, max_entries=64)
def _stored_map(path: str, sha: str, method: str, norms: str, n: int, seed: int, classes,
                mtime: int):
    return P.read_projection(path, sha, method, norms, n, seed, classes)


FIRST_WAIT_S = 2.5  # a new job is waited for (its PCA map, at most) before progress shows


def feature_map(path: str, sha: str, method: str, norms: str, n: int, seed: int,
                classes=None) -> dict:
    """The page's feature map: ``{"map": ..., "method": "UMAP"/"PCA", "pending": bool,
    "text", "fraction", "error"}``. Read from the checkpoint's ``model.projection.json`` when
    it holds this map (the shipped checkpoints: computed ahead by ``reproduce`` and the
    warm-up command); else computed in the background, the page showing the progress and
    the PCA map while UMAP runs."""
    method, norms = method.lower(), norms.lower()
    classes = tuple(classes) if classes else None
    if method == "umap":
        proj = P.projection_path(path)
        mtime = proj.stat().st_mtime_ns if proj.is_file() else 0
        stored = _stored_map(path, sha, method, norms, n, seed, classes, mtime) if mtime else None
        if stored is not None:
            return dict(map=stored, method="UMAP", pending=False, stored=True)

    def make(on_end):
        model, meta, data, eps = _setup(path, sha)
        return MapJob(model, data, method, norms, n, seed, eps,
                      classes or meta.get("classes"), on_end)

    try:
        job, new = _map_jobs().get((path, sha, method, norms, n, seed), make)
    except PG.Full as e:
        return dict(map=None, method=None, pending=True, fraction=None,
                    text=f"waiting: {e}; yours starts when one of them ends")
    if new:
        job.shown.wait(FIRST_WAIT_S)
    if job.error:
        return dict(map=None, method=None, pending=False, error=job.error)
    if job.result is not None:
        return dict(map=job.result, method=method.upper(), pending=False)
    shown = job.standin
    elapsed = time.monotonic() - job.t_phase
    return dict(map=shown, method="PCA" if shown is not None else None, pending=True,
                fraction=job.fraction, text=f"{job.text} ({elapsed:.0f} s)")


# ---------------------------------------------------------------- Moving target
@st.cache_data(show_spinner="Running PGD on the batch and recording BN statistics ...",
               max_entries=64)
def moving_target_trace(path: str, sha: str, ratio: str, batch: int, seed: int, eps: float,
                        step_size: float, steps: int):
    """``normshape_core.measuring.experiments.moving_target_trace`` for a checkpoint, cached."""
    model, meta = load_model(path, sha)
    data = load_dataset(meta["config"]["dataset"])
    return E.moving_target_trace(model, data, ratio, batch, seed, eps, step_size, steps)


# ---------------------------------------------------------------- Confoundings deck
def _read_json(path: Path):
    """A shipped JSON file (bounded, a regular file: ``files``), or None."""
    from normshape_core.base.files import read_json_or_none

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
    from normshape_core.measuring.diagnostics import moving_target

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
    from normshape_core.training.checkpoints import read_meta

    meta = read_meta(folder)
    return animation_frames(str(folder), meta["weights_sha256"], int(batch))


# ---------------------------------------------------------------- Playground (per session)
def _env_int(name: str, default: int, low: int = 1, high: int = 64) -> int:
    try:
        return min(high, max(low, int(os.environ.get(name, default))))
    except ValueError:
        return default


def max_playgrounds() -> int:
    """Live playgrounds a server runs at once (``NORMSHAPE_MAX_PLAYGROUNDS``; default: one
    per CPU core, at least 2): each playing one keeps about a core busy, so beyond this the
    others' frames and every other page slow down for everyone."""
    return _env_int("NORMSHAPE_MAX_PLAYGROUNDS", max(2, os.cpu_count() or 2))


@st.cache_resource(show_spinner=False)
def playground_slots() -> PG.Slots:
    """The server's count of live playgrounds (one object per process)."""
    return PG.Slots(max_playgrounds(), "playgrounds")


class _Box:
    """This session's playground: a session-scoped resource, so that Streamlit closes it
    (``_release``) when the session ends, a closed tab included: its threads end and its slot
    is given back at once instead of after the idle timeout."""

    def __init__(self):
        self.pg = None

    def close(self) -> None:
        pg, self.pg = self.pg, None
        if pg is not None:
            pg.close(wait=False)  # on the server's event loop: never wait here


def _release(box: _Box) -> None:
    box.close()


@st.cache_resource(scope="session", on_release=_release, show_spinner=False)
def _session_box() -> _Box:
    return _Box()


def playground_now():
    """This session's playground, or None."""
    return _session_box().pg


def playground_session(settings, specs):
    """This session's live playground (two 2-D runs training side by side); a new one when
    the data or model settings changed or Reset was pressed. A settings change pauses; Reset
    keeps playing if it was playing. None (with the page's message shown) if the settings
    cannot train or the server runs its most playgrounds already."""
    box, ss = _session_box(), st.session_state
    pg = box.pg
    want = (settings, tuple(specs))
    fresh = pg is not None and not pg.closed  # closed: idle timeout or an error: build anew
    if fresh and (pg.settings, pg.specs) == want and not ss.pop("pg_reset", False):
        return pg
    reset = fresh and (pg.settings, pg.specs) == want
    box.close()
    if not reset:
        ss.pg_playing = False
    try:
        with st.spinner("Building the data and both models ..."):
            try:
                pg = PG.Playground(settings, specs, slots=playground_slots())
            except ImportError:
                # scikit-learn imported at the same moment by the app's UMAP warm-up thread
                # (a circular-import race between threads): wait for it, then once more.
                warm = warm_umap_in_background()
                if warm is not None:
                    warm.join(timeout=90)
                pg = PG.Playground(settings, specs, slots=playground_slots())
    except (ConfigError, ValueError) as e:
        st.error(f"These settings cannot train: {public_text(e)}")
        return None
    box.pg = pg
    return pg


FRAME_EVERY_S = 0.1  # a playing page asks for its next frame this soon after the last


def frame_interval() -> float:
    """The least time between two frames of a playground: ``FRAME_EVERY_S`` while the
    server's playing playgrounds fit half its cores (each keeps about one core busy at full
    speed: two runs' threads, the page's drawing), longer in proportion beyond (two playing
    on two cores: half the rate each), so that one core is left to every other page."""
    playing = sum(1 for pg in playground_slots().holders() if pg.playing)
    share = playing / max(1, (os.cpu_count() or 2) // 2)
    # the page asks every FRAME_EVERY_S: half a tick less than the interval wanted, so that
    # a page's own jitter never skips a tick (and one playground alone is never held back)
    return 0.0 if share <= 1 else FRAME_EVERY_S * (share - 0.5)


FULL_TEXT = ("A playground is freed when its session ends (its tab closed: within seconds); "
             "press Play again then. Every other page works meanwhile.")


def playground_full_notice() -> None:
    """Say so when every playground of the server is in use (Play would be refused)."""
    slots = playground_slots()
    if slots.in_use >= slots.cap and (playground_now() is None
                                      or not playground_now().holds_slot):
        st.warning(f"No playground for you right now: this server runs at most {slots.cap} "
                   f"playgrounds at once and all are in use by other sessions. {FULL_TEXT}")


def playground_toggle_play():  # the Play / Pause button
    st.session_state.pg_playing = not st.session_state.pg_playing


def playground_step_once():  # Step: one frame, then paused
    st.session_state.pg_playing = False
    st.session_state.pg_step_pending = True


def playground_reset():  # Reset: both runs from their initial weights, playing or not
    st.session_state.pg_reset = True


def region_pngs(pg, frames, titles):
    """Each run's regions image as PNG bytes, kept while the frames are the same (a throttled
    page shows the same frame again without drawing it again)."""
    from normshape_core.figures.playground import png_bytes, regions_image

    key = (pg.uid, tuple((f.step, f.infer_ratio) for f in frames), tuple(titles))
    cached = st.session_state.get("pg_pngs")
    if cached is None or cached[0] != key:
        x, y = pg.data.x_train.numpy(), pg.data.y_train.numpy()
        cached = st.session_state.pg_pngs = (key, [png_bytes(regions_image(f, x, y, t))
                                                   for f, t in zip(frames, titles)])
    return cached[1]


CURVES_EVERY_S = 3.0  # while playing, the curves are redrawn at most this often


def playground_curves(pg, infer: str, fresh: bool, draw):
    """Both runs' curves (one figure): while playing, redrawn (``draw()``) only on frames
    with ``fresh`` accuracies (every ``ACCURACY_EVERY`` frames) and at most every
    ``CURVES_EVERY_S`` seconds: measured in headless Chromium on two loaded cores, each
    redraw of this chart (six axes, 14 lines) cost the browser about as much CPU as three
    frames of everything else; the same figure in between costs it nothing. Paused, at
    every change."""
    cache = st.session_state.setdefault("pg_curves", {})
    mark = (pg.uid, infer)
    old = cache.get(mark)
    now = time.monotonic()
    if (old is None or not st.session_state.pg_playing
            or (fresh and old[0] != pg.frame and now - old[2] >= CURVES_EVERY_S)):
        cache.clear()
        old = cache[mark] = (pg.frame, draw(), now)
    return old[1]
