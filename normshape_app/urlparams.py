"""Widgets bound to the URL: ``URL_PARAMS`` (every bound key and what its value may be) and
``sanitize_query_params``, which app.py calls before any page runs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from normshape_app.results import INFERENCE_RATIOS


# ---------------------------------------------------------------- widgets bound to the URL
# Every widget bound to the URL (``bind="query-params"``) has its key in ``URL_PARAMS`` below,
# with what its value may be. ``sanitize_query_params()``, called by app.py before any page
# runs, drops or clamps each bound value that does not fit, silently, before Streamlit seeds
# the widget: Streamlit 1.67 raises OverflowError on ``inf``, ``-inf``, ``1e400`` or
# ``Infinity`` in an integer number_input, and a shared link must never crash a page.
# A page that binds a new widget adds its key here (tests/test_query_params.py fails
# otherwise, and checks the ranges and options against the widgets the pages draw).
@dataclass(frozen=True)
class UrlParam:
    """What the URL may say for one bound widget. ``kind``: "int", "float", "bool", "one"
    (one option: selectbox, radio, segmented control, select_slider) or "many" (a list:
    multiselect). ``lo``/``hi``: the range of a number (values outside are clamped; ``hi``
    None: the page's own bound, which Streamlit enforces). ``options``: the texts allowed
    (None: options made by the page, such as checkpoint ids, which Streamlit checks).
    ``max_items``: at most this many values in a list."""

    kind: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    options: Optional[Tuple[str, ...]] = None
    max_items: Optional[int] = None


def url_int(lo: int, hi: Optional[int] = None) -> UrlParam:
    return UrlParam("int", lo, hi)


def url_float(lo: float, hi: float) -> UrlParam:
    return UrlParam("float", lo, hi)


def url_bool() -> UrlParam:
    return UrlParam("bool")


def url_one(*options: Any) -> UrlParam:
    return UrlParam("one", options=tuple(map(str, options)) or None)


def url_many(*options: Any, max_items: Optional[int] = None) -> UrlParam:
    return UrlParam("many", options=tuple(map(str, options)) or None, max_items=max_items)


# Written out rather than imported: importing normshape_core.settings.config or .data loads torch,
# which the app defers until a page needs it (tests/test_query_params.py checks these three
# against the core's DATASETS, DATASETS_2D and MAX_SEED).
URL_DATASETS = ("moons", "spirals", "digits", "circles", "xor", "blobs", "fashion_mnist",
                "mnist", "cifar10")
URL_DATASETS_2D = ("moons", "spirals", "circles", "xor", "blobs")
URL_MAX_SEED = 2 ** 31 - 3

URL_PARAMS: Dict[str, UrlParam] = {
    # app.py, every page
    "present": url_bool(),
    # app_pages/train.py
    "train_dataset": url_one(), "train_method": url_one("natural", "pgd", "trades"),
    "train_shaping": url_one(),
    # app_pages/ratios.py
    "ratios_dataset": url_one(), "ratios_method": url_one(), "ratios_crafted": url_one(),
    "ratios_eps": url_one(),
    "ratios_train": url_many(), "ratios_infer": url_many(*INFERENCE_RATIOS),
    "ratios_n": url_one("shipped", 100, 200, 500, 1000), "ratios_steps": url_one(10, 20, 50),
    "ratios_paper": url_bool(),
    # app_pages/moving_target.py
    "mt_ckpt": url_one(), "mt_comp": url_one(), "mt_shaped": url_one(),
    "mt_batch": url_one(32, 64, 128, 256), "mt_seed": url_int(0, 10_000),
    "mt_measure": url_one(), "mt_stat": url_one("mean", "variance"), "mt_step": url_int(0),
    # app_pages/decision_boundaries.py
    "db_ckpt": url_one(), "db_ratio": url_one(), "db_craft": url_one(),
    "db_boxes": url_int(5, 60), "db_image": url_int(0), "db_right": url_one(),
    "db_extent": url_float(1.0, 5.0), "db_map": url_one("UMAP", "PCA"),
    "db_norms": url_one("PN", "BN"), "db_seed": url_int(0, 10_000),
    # app_pages/compare.py
    "cmp": url_many(max_items=4), "cmp_attacks": url_many(), "cmp_ratio": url_one(),
    "cmp_n": url_one("shipped", 100, 200, 500, 1000), "cmp_bn": url_bool(),
    # app_pages/confoundings.py reads its one parameter, ?slide=N, itself (current_slide)
    # app_pages/playground.py
    "pg_data": url_one(*URL_DATASETS_2D), "pg_noise": url_float(0.0, 1.0), "pg_n": url_int(50, 5000),
    "pg_seed": url_int(0, URL_MAX_SEED), "pg_width": url_int(2, 256), "pg_depth": url_int(1, 6),
    "pg_lr": url_float(0.0001, 1.0), "pg_bs": url_int(4, 1024), "pg_eps": url_float(0.005, 0.5),
    "pg_k": url_int(1, 50), "pg_spf": url_int(1, 200),
    "pg_unit": url_one("steps per frame", "one epoch"),
    "pg_infer": url_one("1:1", "1:3", "1:9", "1:19"),
    **{f"pg_{side}_{what}": spec for side in ("a", "b") for what, spec in (
        ("method", url_one("natural", "pgd", "trades")),
        ("shaping", url_one()),  # shown by label: Streamlit checks the option
        ("ratio", url_one("1:1", "1:2", "1:3", "1:5", "1:9")),
        ("norm", url_one()))},  # shown by label, as shaping
    # app_pages/train.py: the per-dataset settings (key + "_" + dataset)
    **{f"train_{what}_{ds}": spec for ds in URL_DATASETS for what, spec in (
        ("model", url_one()), ("ratio", url_one()), ("eps", url_float(0.0, 1.0)),
        ("step", url_float(0.0, 1.0)), ("k", url_int(1, 100)), ("epochs", url_int(1, 500)),
        ("bs", url_int(2, 4096)), ("lr", url_float(0.0001, 10.0)),
        ("seed", url_int(0, URL_MAX_SEED)), ("name", url_one()))},
}

#: The largest magnitude of a number from the URL (a bound widget's own range is smaller).
URL_NUMBER_LIMIT = 10 ** 12
_URL_INT = re.compile(r"[+-]?\d{1,30}")
_URL_FLOAT = re.compile(r"[+-]?(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(?:[eE][+-]?\d{1,4})?")
_URL_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f]")


def clean_url_value(spec: UrlParam, values: Sequence[str]) -> Optional[List[str]]:
    """The URL values of one bound widget made safe for it, or None to drop the parameter:
    a number that is not a plain finite number (``inf``, ``nan``, ``1e400``, text) is
    dropped, one out of range clamped; a yes/no that is not true/false dropped; a text that
    is not one of the options (when known), too long or with control characters dropped; a
    single-valued widget given the key twice dropped; a list deduplicated and cut to its
    size. Pure: no Streamlit."""
    values = [str(v) for v in values]
    if spec.kind != "many" and len(values) != 1:
        return None
    if spec.kind in ("int", "float"):
        text = values[0].strip()
        if spec.kind == "int" and not _URL_INT.fullmatch(text):
            return None
        if spec.kind == "float" and not _URL_FLOAT.fullmatch(text):
            return None
        number = int(text) if spec.kind == "int" else float(text)
        if not -URL_NUMBER_LIMIT <= number <= URL_NUMBER_LIMIT:  # inf (1e400) included
            return None
        lo = -URL_NUMBER_LIMIT if spec.lo is None else spec.lo
        hi = URL_NUMBER_LIMIT if spec.hi is None else spec.hi
        number = min(max(number, lo), hi)
        return [str(int(number)) if spec.kind == "int" else repr(float(number))]
    if spec.kind == "bool":
        text = values[0].strip().lower()
        return [text] if text in ("true", "false") else None

    def fits(v: str) -> bool:
        return len(v) <= 200 and not _URL_BAD_TEXT.search(v) and (
            spec.options is None or v in spec.options or v == "")

    if spec.kind == "one":
        return values if fits(values[0]) else None
    kept = [v for v in dict.fromkeys(values) if fits(v)]
    if spec.max_items is not None:
        kept = kept[:spec.max_items]
    return kept if kept or not values else None


def sanitize_query_params(params: Optional[Dict[str, UrlParam]] = None) -> List[str]:
    """Clean the URL's values of the bound widgets (``URL_PARAMS``) before any widget reads
    them; returns the keys changed (dropped or clamped). Nothing is shown: a bad value
    simply gives way to the widget's default. Streamlit seeds a bound widget from the
    query string it received at the start of the run, so both that copy and the current
    parameters are cleaned (and the browser's URL updated)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    params = URL_PARAMS if params is None else params
    ctx = get_script_run_ctx()
    if ctx is None:
        return []
    changed: List[str] = []
    with ctx.session_state.query_params() as qp:
        current = getattr(qp, "_query_params", None)
        initial = getattr(qp, "_initial_query_params", None)
        if not isinstance(current, dict) or not isinstance(initial, dict):
            return []  # another Streamlit: tests/test_query_params.py says so
        for key in [k for k in set(current) | set(initial) if k in params]:
            raw = initial.get(key, current.get(key))
            values = raw if isinstance(raw, list) else [raw]
            clean = clean_url_value(params[key], values)
            if clean == values:
                continue
            changed.append(key)
            if clean is None:
                current.pop(key, None)
                initial.pop(key, None)
            else:
                initial[key] = clean
                current[key] = clean[0] if len(clean) == 1 else clean
        if changed:
            qp._send_query_param_msg()
    return changed
