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
from normshape_core.base.names import INFERENCE_RATIOS


def _user_errors() -> Tuple[type, ...]:
    from normshape_core.training.checkpoints import CheckpointError
    from normshape_core.settings.config import ConfigError
    from normshape_core.blocks.data import DatasetUnavailable

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
    find: Optional[Callable[[], Any]] = None  # the stored value, or None: read, not computed


def _cancel(state_key: str, job: str) -> None:
    st.session_state[state_key] = job


def _progress_text(title: str, k: int, n: int, label: str, done: int, total: int,
                   elapsed: float, frac: float) -> str:
    from normshape_app.jobs import format_seconds

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
    for i, p in enumerate(parts):  # what the stored results hold is read, not computed
        if values[i] is None and p.find is not None:
            values[i] = p.find()
            if values[i] is not None:
                store.put(p.key, values[i])
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


def _with_warnings(df, warnings) -> Any:
    df.attrs = {**df.attrs, "warnings": list(dict.fromkeys(warnings))}
    return df


def _stored(ck: "Ckpt", settings: Dict) -> Any:
    """The evaluation's rows when the stored results (beside the checkpoint: the shipped
    ones; the user's folder) hold every cell of it, else None. Reads files only."""
    from normshape_app import evaljobs

    have = evaljobs.stored(ck.path, settings, ck.meta)
    return _with_warnings(have.rows, have.warnings) if have.complete else None


def stored_evaluation(ck: "Ckpt", settings: Dict) -> Any:
    """``_stored``, remembered in the result store shared by sessions: 0 s once read."""
    key = _evaluation_key(ck, settings)
    store = result_store()
    hit = store.get(key)
    if hit is None:
        hit = _stored(ck, settings)
        if hit is not None:
            store.put(key, hit)
    return hit


def _evaluate(ck: "Ckpt", settings: Dict, progress) -> Any:
    """The evaluation's rows: the cells the stored results hold are read, only the missing
    ones computed (and cached in the user's folder)."""
    from normshape_app import evaljobs
    from normshape_core.measuring.evaluation import evaluate_checkpoint

    have = evaljobs.stored(ck.path, settings, ck.meta)
    if have.complete:
        return _with_warnings(have.rows, have.warnings)
    require_dataset_here(ck.dataset)  # the evaluation would download a missing dataset
    todo = evaljobs.missing_settings(settings, have.missing)
    try:
        df, _ = evaluate_checkpoint(ck.path, progress=progress, **todo)
    except OSError:  # the user's folder is not writable: evaluate without the disk cache
        df, _ = evaluate_checkpoint(ck.path, progress=progress, use_cache=False, **todo)
    return _with_warnings(evaljobs.combined(have.rows, df),
                          have.warnings + list(df.attrs.get("warnings", [])))


def evaluation(ck: "Ckpt", label: Optional[str] = None, **settings):
    """``evaluation.evaluate_checkpoint`` on a checkpoint, memoised by (weights' SHA-256,
    settings) here and on disk: read beside the checkpoint (the shipped results) or from the
    user's folder, written to the user's folder (when it is writable)."""
    return cached_result(_evaluation_key(ck, settings),
                         lambda progress: _evaluate(ck, settings, progress),
                         label or f"Evaluating {ck.id}")


def evaluations_by_attack(cks: Sequence["Ckpt"], attacks: Sequence[str], settings_of,
                          title: str, key: str, label_of=None,
                          compute: bool = True) -> Dict[str, Any]:
    """One evaluation per (checkpoint, attack), each memoised and cached on disk on its own,
    so that adding an attack computes only that attack; returns each checkpoint's rows in
    one frame (``attrs["warnings"]``: every part's warnings and the checks across attacks).
    ``settings_of(ck, attack)``: the evaluation settings; ``label_of(ck, attack)``: what the
    progress bar says while that part runs. ``compute=False``: only what is stored (memory,
    the shipped results, the user's folder) is returned, nothing computed."""
    import pandas as pd

    from normshape_core.measuring.evaluation import sanity_warnings

    label_of = label_of or (lambda ck, attack: f"{ck.id}: {attack}")
    parts, owners = [], []
    for ck in cks:
        for attack in attacks:
            s = settings_of(ck, attack)
            parts.append(Part(_evaluation_key(ck, s), label_of(ck, attack),
                              lambda progress, ck=ck, s=s: _evaluate(ck, s, progress),
                              lambda ck=ck, s=s: _stored(ck, s)))
            owners.append(ck.id)
    if compute:
        values = compute_parts(parts, title, key)
    else:
        values = [result_store().get(p.key) for p in parts]
        values = [v if v is not None else p.find() for p, v in zip(parts, values)]
    out = {}
    for ck in cks:
        dfs = [v for v, o in zip(values, owners) if o == ck.id and v is not None]
        if not dfs:
            out[ck.id] = None
            continue
        df = pd.concat(dfs, ignore_index=True)
        warnings = [w for d in dfs for w in d.attrs.get("warnings", [])]
        warnings += sanity_warnings(df)  # the checks that compare attacks
        df.attrs = {"warnings": list(dict.fromkeys(warnings))}
        out[ck.id] = df
    return out


def _grid_cell(ck: "Ckpt", attack: str, settings: Dict, ratio: str) -> Tuple:
    import json as _json

    return ("shaped-cell", ck.sha, attack, _json.dumps(settings, sort_keys=True, default=str),
            ratio)


def shaped_grid_rows(cks: Dict[str, "Ckpt"], ratios: Sequence[str], attack: str,
                     settings_of, title: str, key: str, compute: bool = True) -> Dict[str, Any]:
    """Rows of ``evaluation`` for each checkpoint (by label) classified with shaped inference
    at each ratio (``attack``: a single attack or an ensemble's name). Each (checkpoint,
    ratio) cell is kept on its own: read from the stored results where they hold it (0 s),
    else the missing cells of a checkpoint are computed in one evaluation (the attack crafted
    once for them), one part of the overall progress per checkpoint. ``compute=False``: only
    the stored cells (the others are left out of the rows)."""
    from normshape_app import evaljobs

    store = result_store()
    parts = []
    for label, ck in cks.items():
        settings = settings_of(ck)
        missing = [r for r in ratios if store.get(_grid_cell(ck, attack, settings, r)) is None]
        if not missing:
            continue
        s = dict(attacks=[attack], classify=[f"shaped:{r}" for r in missing], **settings)
        have = evaljobs.stored(ck.path, s, ck.meta)
        lost = {c.classify for c in have.missing}
        for r in missing:
            if f"shaped:{r}" not in lost:
                store.put(_grid_cell(ck, attack, settings, r),
                          have.rows[have.rows["ratio"] == r].reset_index(drop=True))
        still = [r for r in missing if f"shaped:{r}" in lost]
        if still and compute:
            s = dict(s, classify=[f"shaped:{r}" for r in still])
            parts.append(Part(_evaluation_key(ck, s),
                              f"training {label} at inference {', '.join(still)}",
                              lambda progress, ck=ck, s=s: _evaluate(ck, s, progress)))
    for part, df in zip(parts, compute_parts(parts, title, key) if parts else []):
        ck = next(c for c in cks.values() if c.sha == part.key[1])
        for r in df["ratio"].dropna().unique():
            store.put(_grid_cell(ck, attack, settings_of(ck), r), df[df["ratio"] == r])
    return {label: joined(*[store.get(_grid_cell(ck, attack, settings_of(ck), r))
                            for r in ratios])
            for label, ck in cks.items()}


def grid_jobs(cks: Dict[str, "Ckpt"], ratios: Sequence[str], ensemble: str, settings_of):
    """(pending, running) of a worst-case grid's missing cells, computed as background jobs
    (one per checkpoint, for its missing ratios): pending: {(training label, ratio): (short,
    long)}: the anytime bound ("<= 0.460") and its whole text, or what the job waits for."""
    from normshape_app import evaljobs

    pending, running = {}, []
    for label, ck in cks.items():
        s = dict(attacks=[ensemble], classify=[f"shaped:{r}" for r in ratios],
                 **settings_of(ck))
        have = evaljobs.stored(ck.path, s, ck.meta)
        if have.complete:
            continue
        job = evaluation_job(ck, s, f"{ck.id}: training {label}")
        running.append(job)
        for c in have.missing:
            clf = evaljobs.classifier_label(c.classify, norm=ck.config.get("norm", "bn"))
            b = job.bounds.get(clf) or {}
            short = (f"<= {b['robust'] / b['n']:.3f}" if b.get("n") and not b.get("final")
                     else "…")
            pending[(label, c.classify.split(":", 1)[1])] = (short, job.bound_text(clf))
    return pending, running


def grid_table(dfs: Dict[str, Any], rows: Sequence[str], ratios: Sequence[str], attack: str,
               crafted_with: Optional[str] = None):
    """(accuracy, n): Table IV's layout (rows: training ratios, columns: inference ratios) of
    ``attack``'s robust accuracy under shaped inference (``crafted_with``: only rows crafted
    with these norms; None: any, as for a worst case), with each cell's n; NaN where missing."""
    import pandas as pd

    acc = pd.DataFrame(index=list(rows), columns=list(ratios), dtype=float)
    n = pd.DataFrame(index=list(rows), columns=list(ratios), dtype=float)
    for label, df in dfs.items():
        d = df[(df["attack"] == attack) & df["ratio"].notna()]
        if crafted_with is not None:
            d = d[d["crafted_with"] == crafted_with]
        for r, a, k in zip(d["ratio"], d["robust_acc"], d["n"]):
            if label in acc.index and r in acc.columns:
                acc.loc[label, r], n.loc[label, r] = a, k
    acc.index.name, acc.columns.name = "training ratio", "inference ratio adv:clean"
    return acc, n


#: the Ratios grids' test samples on a dataset the reproduction does not cover
GRID_N = 200


def shipped_grid_worst_n(dataset: str) -> Optional[int]:
    """The test samples of the reproduction's Table IV worst case on ``dataset``
    (``reproduce.table_iv_worst_settings``, the settings the shipped results were computed
    with), at most the test set; None when the reproduction computes none."""
    from normshape_core.studies.reproduce import table_iv_worst_settings

    n = table_iv_worst_settings(dataset).get("n_test")
    return min(int(n), test_set_size(dataset)) if n else None


def shipped_grid_pgd_n(dataset: str) -> Optional[int]:
    """The test samples of the reproduction's Table IV under PGD-20 crafted with PN on
    ``dataset`` (``reproduce.REPRO_N_TEST``: every evaluated sample), at most the test set;
    None for a dataset the reproduction does not cover."""
    from normshape_core.studies.reproduce import REPRO_N_TEST

    n = REPRO_N_TEST.get(dataset)
    return min(int(n), test_set_size(dataset)) if n else None


def grid_n(dataset: str, choice, worst: bool) -> int:
    """The Ratios grid's test samples: ``SHIPPED_N``: the shipped grid's (the reproduction's
    Table IV worst case for ``worst``, else its PGD-20 grid; ``GRID_N`` for a dataset it does
    not cover), so the default grid is read, not computed; a number: that many (at most the
    test set)."""
    if str(choice) == SHIPPED_N:
        n = (shipped_grid_worst_n(dataset) if worst else shipped_grid_pgd_n(dataset)) or GRID_N
    else:
        n = int(choice)
    return min(n, test_set_size(dataset))


def grid_worst_settings(dataset: str, n_test: int) -> Dict:
    """The Ratios grid's worst case: the reproduction's Table IV settings
    (``reproduce.table_iv_worst_settings``: seed, budgets) on ``n_test`` samples; the
    ensemble is the attack, the inference ratios the page's."""
    from normshape_core.studies.reproduce import table_iv_worst_settings

    s = {k: v for k, v in table_iv_worst_settings(dataset).items()
         if k not in ("attacks", "ensembles", "classify")}
    s["n_test"] = int(n_test)
    return s


# ---------------------------------------------------------------- the pages' default evaluations
# One place for the settings of the evaluations the pages show first, so that
# ``python -m normshape_app.ui warm`` can compute them beside the shipped checkpoints (the
# evaluation module's disk cache, keyed by weights' SHA-256 and settings, read-only for the
# app) and a first view reads numbers instead of computing them.
#: Compare's attacks beside the worst case (which is always there), by default
COMPARE_ATTACKS = ["pgd", "fgsm", "shaping"]
#: Compare's sample count that reads the shipped results: each checkpoint's shipped worst case
SHIPPED_N = "shipped"


def compare_settings(attacks: Sequence[str], ratio: str, n_test: int, also_bn: bool) -> Dict:
    return dict(attacks=list(attacks), classify=["pn", "bn", f"shaped:{ratio}"],
                n_test=int(n_test), craft=["pn", "bn"] if also_bn else ["pn"])


@st.cache_data(show_spinner=False)
def _results_worst(path: str, mtime: float) -> Dict[str, Dict[str, Tuple[float, int]]]:
    """{weights SHA-256: {"PN" | "BN" | "shaped 1:9": (worst-case robust accuracy, n)}} of one
    reproduction ``results.json``: per classifier its worst case (of the headline ensemble,
    ``worst_case.DEFAULT_ENSEMBLE``) on the most samples."""
    from normshape_core.base.files import UnreadableFile, read_json

    from normshape_core.measuring.worst_case import DEFAULT_ENSEMBLE

    out: Dict[str, Dict[str, Tuple[float, int]]] = {}
    try:
        results = read_json(path, 64 << 20, "results file")
        for entry in results.get("runs", {}).values():
            for r in entry.get("rows", []):
                ens = str(r.get("ensemble") or "").split(":")[0].strip()
                if r.get("attack") == "worst_case" and r.get("ratio") in (None, "1:9") \
                        and ens == DEFAULT_ENSEMBLE:
                    key = "shaped 1:9" if r.get("ratio") == "1:9" else r["classified_with"]
                    have = out.setdefault(entry["weights_sha256"], {})
                    if key not in have or int(r["n"]) > have[key][1]:
                        have[key] = (float(r["robust_acc"]), int(r["n"]))
    except (UnreadableFile, OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return out


def shipped_worst_cases() -> Dict[str, Dict[str, Tuple[float, int]]]:
    """{weights SHA-256: {"PN" | "BN" | "shaped 1:9": (worst-case robust accuracy, n)}} from
    the reproduction's ``results.json`` files of the shipped checkpoints."""
    out: Dict[str, Dict[str, Tuple[float, int]]] = {}
    for p in sorted(shipped_checkpoints_dir().glob("*/results.json")):
        for sha, v in _results_worst(str(p), p.stat().st_mtime).items():
            out.setdefault(sha, {}).update(v)
    return out


def shipped_worst_n(ck: "Ckpt") -> Optional[int]:
    """How many test samples the shipped worst case of this checkpoint ran on (None: none
    shipped)."""
    ns = [n for _, n in shipped_worst_cases().get(ck.sha, {}).values()]
    return max(ns) if ns else None


def compare_n(ck: "Ckpt", choice) -> int:
    """The test samples of every row of ``ck`` on Compare: ``SHIPPED_N``: those of its shipped
    worst case (else the reproduction's worst-case samples of its dataset), so the shipped
    results are read; a number: that many (the whole test set when smaller)."""
    if str(choice) == SHIPPED_N:
        n = shipped_worst_n(ck) or worst_case_settings(ck.dataset, config=ck.config)["n_test"]
    else:
        n = int(choice)
    return min(n, test_set_size(ck.dataset))


def worst_case_settings(dataset: str, ratio: str = "1:9", n_test: Optional[int] = None,
                        config: Optional[Dict] = None) -> Dict:
    """The worst case (``worst_case.DEFAULT_ENSEMBLE``, each classifier attacked through its
    own norms) as the reproduction computes it (``reproduce.worst_case_settings``: its seed
    and budgets; ``config``: the model's training config, for its samples), on ``n_test``
    samples (default: the reproduction's), so the shipped results are read."""
    from normshape_core.studies.reproduce import worst_case_settings as repro

    s = repro(dataset, config=config)
    s["n_test"] = min(int(n_test or s["n_test"]), test_set_size(dataset))
    return dict(attacks=[], ensembles=[s.pop("ensemble")],
                classify=["pn", "bn", f"shaped:{ratio}"], **s)


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
    each checkpoint, in its ``model.eval.json``, where the app reads them. Only the cells
    the stored results do not hold yet are computed: Compare's default attacks on the samples
    of the checkpoint's shipped worst case, and the Ratios page's PGD grid (on the samples of
    the reproduction's PGD-20 grid and, for its worst-case mode, on those of the shipped
    Table IV worst case; ``GRID_N`` for a dataset the reproduction does not cover). The
    worst cases themselves are the reproduction's (``normshape reproduce``)."""
    import sys

    from normshape_app import evaljobs
    from normshape_core.training.checkpoints import find_checkpoints
    from normshape_core.blocks.data import load_dataset as _load
    from normshape_core.measuring.evaluation import BESIDE, evaluate_checkpoint

    infos, errors = find_checkpoints(*(dirs or [str(shipped_checkpoints_dir())]))
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    sizes: Dict[str, int] = {}
    worst_n: Dict[str, int] = {}
    for p in sorted(shipped_checkpoints_dir().glob("*/results.json")):
        for sha, v in _results_worst(str(p), p.stat().st_mtime).items():
            worst_n[sha] = max(n for _, n in v.values())
    for info in infos:
        cfg = info.meta["config"]
        ds = cfg["dataset"]
        if ds not in sizes:
            sizes[ds] = len(_load(ds, seed=0).x_test)
        n_cmp = min(worst_n.get(info.meta["weights_sha256"]) or
                    worst_case_settings(ds, config=cfg)["n_test"], sizes[ds])
        jobs_ = [compare_settings(COMPARE_ATTACKS, "1:9", n_cmp, False)]
        if cfg["method"] != "natural" and cfg["shaping"] in ("none", "attack+train"):
            grid = [f"shaped:{r}" for r in INFERENCE_RATIOS]
            for n in {shipped_grid_pgd_n(ds) or GRID_N, shipped_grid_worst_n(ds) or GRID_N}:
                jobs_.append(dict(attacks=["pgd"], classify=grid,
                                  **grid_settings(min(n, sizes[ds]), 20)))
        for settings in jobs_:
            try:
                have = evaljobs.stored(info.path, settings, info.meta)
                if have.complete:
                    print(f"{info.path.name}: {settings['attacks']} x {settings['classify']} "
                          f"(n={settings['n_test']}): stored")
                    continue
                todo = evaljobs.missing_settings(settings, have.missing)
                evaluate_checkpoint(info.path, cache_dir=BESIDE, **todo)
                print(f"{info.path.name}: {todo['attacks']} x {todo['classify']} "
                      f"(n={settings['n_test']}): computed")
            except Exception as e:  # one bad checkpoint must not stop the others
                print(f"{info.path.name}: failed: {e}", file=sys.stderr)
    from normshape_core.measuring.projections import store_projections

    store_projections(i.path for i in infos)  # the Decision boundaries page's stored maps


# ---------------------------------------------------------------- background evaluations
def evaluation_job(ck: "Ckpt", settings: Dict, label: str):
    """The background job (``evaljobs``) computing the cells of ``settings`` that are not
    stored: shared with any session that asks for the same, started when none runs,
    started again (resuming) after a kill. Returns its state at once."""
    from normshape_app import evaljobs

    from normshape_app.inventory import worker_threads

    require_dataset_here(ck.dataset)  # a worker would download a missing dataset
    have = evaljobs.stored(ck.path, settings, ck.meta)
    todo = evaljobs.missing_settings(settings, have.missing)
    return evaljobs.ensure_job(ck.path, todo, meta=ck.meta, label=label,
                               threads=worker_threads())


def worst_case_rows(ck: "Ckpt", ratio: str, n_test: int) -> Any:
    """The worst-case rows of ``ck`` on ``n_test`` samples when they are stored (the shipped
    results, the user's folder, this server's memory: 0 s), else None."""
    return stored_evaluation(ck, worst_case_settings(ck.dataset, ratio, n_test))


def compare_worst(cks: Sequence["Ckpt"], ratio: str, n_of: Dict[str, int]):
    """(rows, pending, jobs) of Compare's worst-case row: per checkpoint the stored rows
    (all of them: 0 s; or those of the classifiers already done), and for the cells still
    missing the text of their background job (the anytime bound, "<= 0.460 after apgd;
    apgd_t, square to go", or what the job is waiting for); the jobs still running."""
    from normshape_app import evaljobs
    from normshape_core.figures.compare import WORST, measure_name

    rows, pending, running = {}, {}, []
    for ck in cks:
        s = worst_case_settings(ck.dataset, ratio, n_of[ck.id])
        rows[ck.id] = stored_evaluation(ck, s)
        if rows[ck.id] is not None:
            continue
        have = evaljobs.stored(ck.path, s, ck.meta)
        rows[ck.id] = have.rows if len(have.rows) else None
        job = evaluation_job(ck, s, f"{ck.id}: the worst case")
        name = measure_name(WORST, "", s["ensembles"][0])
        pending[ck.id] = {(name, label): job.bound_text(label) for label in
                          {evaljobs.classifier_label(c.classify, norm=ck.config.get("norm", "bn"))
                           for c in have.missing}}
        running.append(job)
    return rows, pending, running


def joined(*dfs) -> Any:
    """The evaluation rows of several frames in one (None: nothing there yet); warnings kept."""
    import pandas as pd

    from normshape_core.measuring.evaluation import ROW_KEYS

    have = [d for d in dfs if d is not None and len(d)]
    if not have:
        return pd.DataFrame(columns=list(ROW_KEYS))
    out = pd.concat(have, ignore_index=True)
    out.attrs = {"warnings": list(dict.fromkeys(w for d in have
                                                for w in d.attrs.get("warnings", [])))}
    return out
