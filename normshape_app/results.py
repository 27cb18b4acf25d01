"""Heavy results: the result store shared by sessions, cached evaluations keyed by the
weights' SHA-256 and the settings, progress (k of n, time left, cancel) for long computations,
the default settings of the evaluations pages show first, and ``warm`` (precompute them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import streamlit as st

from normshape_app.inventory import (Ckpt, load_dataset, require_dataset_here,
                                     shipped_checkpoints_dir)
from normshape_app.style import md_escape


def _user_errors() -> Tuple[type, ...]:
    from normshape_core.checkpoints import CheckpointError
    from normshape_core.config import ConfigError
    from normshape_core.data import DatasetUnavailable

    return (CheckpointError, ConfigError, DatasetUnavailable)


#: Errors that are the data's fault, not the app's: shown as a message, never a traceback.
USER_ERRORS = _user_errors()


# ---------------------------------------------------------------- heavy results
class ResultStore:
    """A bounded, thread-safe memo of heavy results, shared by all sessions of this server
    (one per process, from ``st.cache_resource``). Keys always hold the weights' SHA-256 and
    every setting that changes the result. Values are treated as read-only by the pages.

    Why not ``st.cache_data`` here: a live progress bar updated from inside a cached function
    would be recorded and replayed by Streamlit on every cache hit; this memo keeps the bar
    outside the cache. Light results use ``st.cache_data`` directly.
    """

    def __init__(self, max_entries: int = 512):
        import threading
        from collections import OrderedDict

        self._data: "OrderedDict[Tuple, Any]" = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: Tuple) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Tuple, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)


@st.cache_resource(show_spinner=False)
def result_store() -> ResultStore:
    return ResultStore()


def cached_result(key: Tuple, compute, label: str):
    """``compute(progress)`` once per key (progress(done, total, what) drives a progress bar
    shown only while computing); later calls, from any session, return the stored value."""
    store = result_store()
    hit = store.get(key)
    if hit is not None:
        return hit
    label = md_escape(label)  # progress texts are Markdown; labels name checkpoints
    bar = st.progress(0.0, text=f"{label} ...")

    def progress(done: int, total: int, what: str = "") -> None:
        frac = min(1.0, done / max(total, 1))
        bar.progress(frac, text=f"{label}: {what} ({done}/{total})" if what else label)

    try:
        value = compute(progress)
    finally:
        bar.empty()
    store.put(key, value)
    return value


@dataclass(frozen=True)
class Part:
    """One part of a multi-part computation, kept in the result store under ``key``."""

    key: Tuple
    label: str  # what is running, in words: "moons-mlp-natural-s0: PGD-20"
    compute: Callable[[Callable[..., None]], Any]  # compute(progress(done, total, what))


def _cancel(state_key: str, job: str) -> None:
    st.session_state[state_key] = job


def _progress_text(title: str, k: int, n: int, label: str, done: int, total: int,
                   elapsed: float, frac: float) -> str:
    from normshape_core.jobs import format_seconds

    left = (f"about {format_seconds(elapsed * (1 - frac) / frac)} left"
            if frac > 0.02 and elapsed > 2 else "estimating the time left")
    step = f", step {done} of {total}" if total > 1 else ""
    return f"{title}: {k} of {n}, {md_escape(label)}{step}; {left}"


def compute_parts(parts: Sequence[Part], title: str, key: str) -> List[Any]:
    """The value of every part, in order. The parts not stored yet are computed one after the
    other under one progress bar that says "k of N", what is running and the time left,
    beside a **Cancel** button. After a cancel the parts computed so far are kept, the page
    says how many and offers **Continue**, and the script stops there."""
    import hashlib
    import time

    store = result_store()
    values = [store.get(p.key) for p in parts]
    todo = [i for i, v in enumerate(values) if v is None]
    if not todo:
        return values
    job = hashlib.sha256(repr([p.key for p in parts]).encode()).hexdigest()[:16]
    state_key = f"{key}_cancelled"
    if st.session_state.get(state_key) == job:
        with st.container(border=True):
            st.warning(f"{title}: stopped. {len(parts) - len(todo)} of {len(parts)} parts are "
                       f"computed and kept; {len(todo)} are missing.")
            if st.button("Continue", key=f"{key}_continue", type="primary"):
                del st.session_state[state_key]
                st.rerun()
        st.stop()
    slot = st.empty()  # emptied when done: no stale bar is left on the page
    box = slot.container(border=True)
    bar = box.progress(0.0, text=f"{title}: 1 of {len(todo)} ...")
    box.button("Cancel", key=f"{key}_cancel", on_click=_cancel, args=(state_key, job),
               help="Stop after the current step; the parts computed so far are kept")
    t0, n = time.monotonic(), len(todo)
    try:
        for k, i in enumerate(todo, start=1):
            part = parts[i]

            def progress(done: int, total: int, what: str = "", _k=k, _part=part) -> None:
                frac = (_k - 1 + min(1.0, done / max(total, 1))) / n
                bar.progress(frac, text=_progress_text(title, _k, n, _part.label, done, total,
                                                       time.monotonic() - t0, frac))

            progress(0, 1)
            values[i] = part.compute(progress)
            store.put(part.key, values[i])
    finally:
        slot.empty()
    return values


def _evaluation_key(ck: "Ckpt", settings: Dict) -> Tuple:
    import json as _json

    return ("evaluation", ck.sha, _json.dumps(settings, sort_keys=True, default=str))


def _evaluate(ck: "Ckpt", settings: Dict, progress) -> Any:
    from normshape_core.evaluation import evaluate_checkpoint

    require_dataset_here(ck.dataset)  # the evaluation would download a missing dataset
    try:
        df, _ = evaluate_checkpoint(ck.path, progress=progress, **settings)
    except OSError:  # the user's folder is not writable: evaluate without the disk cache
        df, _ = evaluate_checkpoint(ck.path, progress=progress, use_cache=False, **settings)
    return df


def evaluation(ck: "Ckpt", label: Optional[str] = None, **settings):
    """``evaluation.evaluate_checkpoint`` on a checkpoint, memoised by (weights' SHA-256,
    settings) here and on disk: read beside the checkpoint (the shipped results) or from the
    user's folder, written to the user's folder (when it is writable)."""
    return cached_result(_evaluation_key(ck, settings),
                         lambda progress: _evaluate(ck, settings, progress),
                         label or f"Evaluating {ck.id}")


def evaluations_by_attack(cks: Sequence["Ckpt"], attacks: Sequence[str], settings_of,
                          title: str, key: str, label_of=None) -> Dict[str, Any]:
    """One evaluation per (checkpoint, attack), each memoised and cached on disk on its own,
    so that adding an attack computes only that attack; returns each checkpoint's rows in
    one frame (``attrs["warnings"]``: every part's warnings and the checks across attacks).
    ``settings_of(ck, attack)``: the evaluation settings; ``label_of(ck, attack)``: what the
    progress bar says while that part runs."""
    import pandas as pd

    from normshape_core.evaluation import sanity_warnings

    label_of = label_of or (lambda ck, attack: f"{ck.id}: {attack}")
    parts = []
    for ck in cks:
        for attack in attacks:
            s = settings_of(ck, attack)
            parts.append(Part(_evaluation_key(ck, s), label_of(ck, attack),
                              lambda progress, ck=ck, s=s: _evaluate(ck, s, progress)))
    values = iter(compute_parts(parts, title, key))
    out = {}
    for ck in cks:
        dfs = [next(values) for _ in attacks]
        df = pd.concat(dfs, ignore_index=True)
        warnings = [w for d in dfs for w in d.attrs.get("warnings", [])]
        warnings += sanity_warnings(df)  # the checks that compare attacks
        df.attrs = {"warnings": list(dict.fromkeys(warnings))}
        out[ck.id] = df
    return out


def shaped_grid_rows(cks: Dict[str, "Ckpt"], ratios: Sequence[str], attack: str,
                     settings_of, title: str, key: str) -> Dict[str, Any]:
    """Rows of ``evaluation`` for each checkpoint (by label) classified with shaped inference
    at each ratio. Each (checkpoint, ratio) cell is kept on its own; the missing cells of a
    checkpoint are computed in one evaluation (the attack crafted once for them), one part of
    the overall progress per checkpoint."""
    import json as _json

    import pandas as pd

    store = result_store()

    def cell(ck, r):
        return ("shaped-cell", ck.sha, attack, _json.dumps(settings_of(ck), sort_keys=True,
                                                          default=str), r)

    parts = []
    for label, ck in cks.items():
        missing = [r for r in ratios if store.get(cell(ck, r)) is None]
        if missing:
            s = dict(attacks=[attack], classify=[f"shaped:{r}" for r in missing],
                     **settings_of(ck))
            parts.append(Part(_evaluation_key(ck, s),
                              f"training {label} at inference {', '.join(missing)}",
                              lambda progress, ck=ck, s=s: _evaluate(ck, s, progress)))
    for part, df in zip(parts, compute_parts(parts, title, key)):
        ck_sha = part.key[1]
        ck = next(c for c in cks.values() if c.sha == ck_sha)
        for r in df["ratio"].unique():
            store.put(cell(ck, r), df[df["ratio"] == r])
    return {label: pd.concat([store.get(cell(ck, r)) for r in ratios], ignore_index=True)
            for label, ck in cks.items()}


# ---------------------------------------------------------------- the pages' default evaluations
# One place for the settings of the evaluations the pages show first, so that
# ``python -m normshape_app.ui warm`` can compute them beside the shipped checkpoints (the
# evaluation module's disk cache, keyed by weights' SHA-256 and settings, read-only for the
# app) and a first view reads numbers instead of computing them.
INFERENCE_RATIOS = ["1:0", "1:1", "1:3", "1:9", "1:19", "1:49"]
COMPARE_ATTACKS = ["autoattack", "pgd", "fgsm", "shaping", "adaptive_exact"]


def compare_default_attacks(cks: Sequence["Ckpt"]) -> List[str]:
    """Compare's default attacks: the worst case (autoattack) whenever the reproduction has
    computed it for every chosen checkpoint (it is then read, not recomputed); otherwise the
    paper's attacks, and the page offers the worst case (minutes of compute on CPU)."""
    known = shipped_worst_cases()
    if cks and all("PN" in known.get(ck.sha, {}) for ck in cks):
        return list(COMPARE_ATTACKS)
    return [a for a in COMPARE_ATTACKS if a != "autoattack"]


def compare_settings(attacks: Sequence[str], ratio: str, n_test: int, also_bn: bool) -> Dict:
    return dict(attacks=list(attacks), classify=["pn", "bn", f"shaped:{ratio}"],
                n_test=int(n_test), craft=["pn", "bn"] if also_bn else ["pn"])


@st.cache_data(show_spinner=False)
def _results_worst(path: str, mtime: float) -> Dict[str, Dict[str, float]]:
    from normshape_core.files import UnreadableFile, read_json

    out: Dict[str, Dict[str, float]] = {}
    try:
        results = read_json(path, 64 << 20, "results file")
        n_worst = results.get("n_test_worst", results.get("n_test"))
        for entry in results.get("runs", {}).values():
            for r in entry.get("rows", []):
                if r.get("attack") == "worst_case" and r.get("n") == n_worst and \
                        r.get("ratio") in (None, "1:9"):
                    key = "shaped 1:9" if r.get("ratio") == "1:9" else r["classified_with"]
                    out.setdefault(entry["weights_sha256"], {})[key] = r["robust_acc"]
    except (UnreadableFile, OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return out


def shipped_worst_cases() -> Dict[str, Dict[str, float]]:
    """{weights SHA-256: {"PN" | "BN" | "shaped 1:9": worst-case robust accuracy}} from the
    reproduction's ``results.json`` files of the shipped checkpoints."""
    out: Dict[str, Dict[str, float]] = {}
    for p in sorted(shipped_checkpoints_dir().glob("*/results.json")):
        for sha, v in _results_worst(str(p), p.stat().st_mtime).items():
            out.setdefault(sha, {}).update(v)
    return out


def worst_case_settings(dataset: str, ratio: str = "1:9") -> Dict:
    """The worst case (autoattack) as the reproduction computes it for this dataset (its
    test samples and APGD-T targets), so the shipped checkpoints' results are read, not
    recomputed."""
    from normshape_core.reproduce import worst_case_settings as repro

    s = repro(dataset)
    s["n_test"] = min(s["n_test"], test_set_size(dataset))
    classify = ["bn", "pn", f"shaped:{ratio}"]
    return dict(attacks=[], ensembles=[s.pop("ensemble")], classify=classify, **s)


def clean_accuracy_settings(n_test: int) -> Dict:
    return dict(attacks=["fgsm"], classify=["pn", "bn", "shaped:1:9"], n_test=int(n_test))


def grid_settings(n_test: int, steps: int) -> Dict:
    return dict(n_test=int(n_test), steps=int(steps))


def test_set_size(dataset: str) -> int:
    return len(load_dataset(dataset).x_test)


# ---------------------------------------------------------------- warm the disk caches
def warm(dirs: Optional[Sequence[str]] = None) -> None:
    """Compute the pages' default evaluations for every checkpoint (``python -m
    normshape_app.ui warm [DIR ...]``, default: the shipped checkpoints); results land beside
    each checkpoint, in its ``model.eval.json``, where the app reads them."""
    import sys

    from normshape_core.checkpoints import find_checkpoints
    from normshape_core.data import load_dataset as _load
    from normshape_core.evaluation import BESIDE, evaluate_checkpoint

    infos, errors = find_checkpoints(*(dirs or [str(shipped_checkpoints_dir())]))
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    sizes: Dict[str, int] = {}
    for info in infos:
        cfg = info.meta["config"]
        ds = cfg["dataset"]
        if ds not in sizes:
            sizes[ds] = len(_load(ds, seed=0).x_test)
        n200, n500 = min(200, sizes[ds]), min(500, sizes[ds])
        # Compare evaluates each attack on its own: one entry per attack
        # (the worst case is the reproduction's: `normshape reproduce` computes it)
        jobs_ = [compare_settings([a], "1:9", n200, False) for a in COMPARE_ATTACKS
                 if a != "autoattack"]
        jobs_.append(clean_accuracy_settings(n500))
        if cfg["method"] != "natural" and cfg["shaping"] in ("none", "attack+train"):
            jobs_.append(dict(attacks=["pgd"], classify=[f"shaped:{r}" for r in
                                                         INFERENCE_RATIOS],
                              **grid_settings(n200, 20)))
        for settings in jobs_:
            try:
                df, _ = evaluate_checkpoint(info.path, cache_dir=BESIDE, **settings)
                print(f"{info.path.name}: {settings['attacks']} x {settings['classify']}: "
                      f"{'cached' if df.attrs.get('cached') else 'computed'}")
            except Exception as e:  # one bad checkpoint must not stop the others
                print(f"{info.path.name}: failed: {e}", file=sys.stderr)
    from normshape_core.projections import store_projections; store_projections(i.path for i in infos)  # noqa: E702,E501
