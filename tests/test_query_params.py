"""The URL cannot crash a page: every widget bound to the URL (``bind="query-params"``) is in
``ui.URL_PARAMS``, whose ranges and options are those of the widgets the pages draw, and
``ui.sanitize_query_params`` (app.py, before any page runs) drops or clamps what does not
fit. The fuzz test sets every bound key of every page to garbage, huge, non-finite,
negative, repeated and markup values: no page shows an exception or an error."""
from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

from normshape_app import ui
from _apptest import open_app

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "app.py", *sorted((ROOT / "normshape_app").glob("*.py")),
           *sorted((ROOT / "app_pages").glob("*.py"))]
# non-finite, garbage (and markup), negative, huge, a repeated key, empty
BAD = ["inf", "-inf", "1e400", "Infinity", "nan", "<img src=x onerror=alert(1)>", "-5",
       "99999999999999999999999", ["1", "2"], ""]


def _key_pattern(node):
    """A widget's key as a regular expression: a literal key as itself; a key built at run
    time ("train_bs" + k, f"pg_{side}_method") with its computed parts as wildcards."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _key_pattern(node.left), _key_pattern(node.right)
        return None if left is None and right is None else (left or ".+") + (right or ".+")
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+"
                       for v in node.values)
    return None


def bound_keys(path: Path):
    """The keys a source file binds to the URL (as regular expressions): widgets with
    bind="query-params", and the checkpoint pickers (ui.checkpoint_picker binds its key)."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        bound = isinstance(kw.get("bind"), ast.Constant) and kw["bind"].value == "query-params"
        if (bound or name == "checkpoint_picker") and "key" in kw:
            if isinstance(kw["key"], ast.Name):  # a helper passing its caller's key on
                continue
            pattern = _key_pattern(kw["key"])
            assert pattern is not None, f"{path.name}: a bound widget's key the test cannot read"
            keys.add(pattern)
    return keys


def table_keys(patterns):
    """The keys of ui.URL_PARAMS that match these patterns."""
    return {k for k in ui.URL_PARAMS if any(re.fullmatch(p, k) for p in patterns)}


PAGE_KEYS = {p.relative_to(ROOT).as_posix(): bound_keys(p) for p in SOURCES}


def test_every_bound_widget_is_in_the_table():
    found = set().union(*PAGE_KEYS.values())
    missing = {p for p in found if not table_keys({p})}
    assert not missing, (f"widgets bound to the URL but not in ui.URL_PARAMS: {missing}; "
                         "add them there (docs/contributing.md, 'A page')")
    stale = set(ui.URL_PARAMS) - table_keys(found)
    assert not stale, f"ui.URL_PARAMS names keys no page binds: {stale}"


def test_the_tables_lists_agree_with_the_core():
    """ui writes the datasets and the seed bound out (importing them would load torch)."""
    from normshape_core.settings.config import MAX_SEED
    from normshape_core.blocks.data import DATASETS, DATASETS_2D
    assert ui.URL_DATASETS == tuple(DATASETS)
    assert ui.URL_DATASETS_2D == tuple(DATASETS_2D)
    assert ui.URL_MAX_SEED == MAX_SEED


@pytest.mark.parametrize("key", sorted(ui.URL_PARAMS))
def test_clean_values_fit_their_widget(key):
    spec = ui.URL_PARAMS[key]
    for raw in BAD + ["garbage", "1.5", "3", "+7", "true", "FALSE", "1:9", "PN"]:
        values = raw if isinstance(raw, list) else [raw]
        clean = ui.clean_url_value(spec, values)
        if clean is None:
            continue
        assert all(isinstance(v, str) and len(v) <= 200 for v in clean)
        if spec.kind != "many":
            assert len(clean) == 1 and len(values) == 1
        if spec.kind in ("int", "float"):
            x = float(clean[0])
            assert math.isfinite(x) and (spec.lo is None or x >= spec.lo) and (
                spec.hi is None or x <= spec.hi), (key, raw, clean)
            if spec.kind == "int":
                assert clean[0].lstrip("-").isdigit()
        elif spec.kind == "bool":
            assert clean[0] in ("true", "false")
        elif spec.options is not None:
            assert all(v in spec.options or v == "" for v in clean), (key, raw, clean)
        assert spec.max_items is None or len(clean) <= spec.max_items


def test_numbers_are_clamped_and_non_finite_ones_dropped():
    seed = ui.URL_PARAMS["mt_seed"]
    assert ui.clean_url_value(seed, ["-5"]) == ["0"]
    assert ui.clean_url_value(seed, ["20000"]) == ["10000"]
    assert ui.clean_url_value(seed, ["42"]) == ["42"]
    for bad in ("inf", "-inf", "1e400", "Infinity", "nan", "4.5", "0x10", "", " "):
        assert ui.clean_url_value(seed, [bad]) is None, bad
    assert ui.clean_url_value(seed, ["1", "2"]) is None  # a repeated key: ambiguous
    extent = ui.URL_PARAMS["db_extent"]
    assert ui.clean_url_value(extent, ["2.5"]) == ["2.5"]
    assert ui.clean_url_value(extent, ["1e3"]) == ["5.0"]
    assert ui.clean_url_value(extent, ["1e400"]) is None
    cmp = ui.URL_PARAMS["cmp"]
    assert ui.clean_url_value(cmp, ["a", "a", "b", "c", "d", "e"]) == ["a", "b", "c", "d"]
    assert ui.clean_url_value(ui.URL_PARAMS["ratios_infer"], ["1:3", "1:x"]) == ["1:3"]
    assert ui.clean_url_value(ui.URL_PARAMS["ratios_infer"], ["1:x"]) is None


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_CHECKPOINT_DIRS", str(ROOT / "checkpoints"))
    monkeypatch.setenv("NORMSHAPE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_WARM_UMAP", "0")
    import torch
    monkeypatch.setenv("NORMSHAPE_APP_THREADS", str(torch.get_num_threads()))

    return open_app


def widgets(at):
    """Every bound widget on the page: key -> (Streamlit's element type, the element)."""
    out = {}
    for kind in ("number_input", "slider", "select_slider", "selectbox", "radio",
                 "multiselect", "toggle", "button_group"):
        for w in at.get(kind):
            key = getattr(w, "key", None)
            if key in ui.URL_PARAMS:
                out[key] = (kind, w)
    return out


KINDS = {"number_input": {"int", "float"}, "slider": {"int", "float"},
         "select_slider": {"one"}, "selectbox": {"one"}, "radio": {"one"},
         "button_group": {"one"}, "multiselect": {"many"}, "toggle": {"bool"}}
# Pages, and contexts that draw other widgets (an image checkpoint on Decision boundaries).
# db_map stays PCA: its default, UMAP, costs a 15 s compile (its values are checked by
# test_clean_values_fit_their_widget, and Streamlit refuses an unknown radio option).
CASES = [(None, {}), ("app_pages/train.py", {}), ("app_pages/ratios.py", {}),
         ("app_pages/moving_target.py", {}), ("app_pages/decision_boundaries.py",
                                              {"db_map": "PCA"}),
         ("app_pages/decision_boundaries.py",
          {"db_map": "PCA", "db_ckpt": "digits-small_cnn-pgd-shape-attack-train-r1-3-eps0.3-s0"}),
         ("app_pages/compare.py", {}), ("app_pages/confoundings.py", {}),
         ("app_pages/playground.py", {})]


def page_keys(page):
    return table_keys(PAGE_KEYS["app.py"] | (PAGE_KEYS[page] if page else set()))


@pytest.mark.parametrize("page,context", CASES)
def test_query_parameter_fuzz_shows_no_exception(app, page, context):
    """First the page as drawn: ``ui.URL_PARAMS`` has each bound widget's kind, range and
    options. Then each bad value in every bound key of the page at once (the context's own
    keys kept): the page renders, shows no exception and no error, every bound widget holds
    a value that fits it, and what stays in the URL fits too."""
    at = app(page, context)
    assert not at.exception, [e.value for e in at.exception]
    drawn = widgets(at)
    assert set(drawn) <= page_keys(page) | set(context)
    for key, (kind, w) in drawn.items():
        spec = ui.URL_PARAMS[key]
        assert spec.kind in KINDS[kind], (key, kind, spec)
        if spec.kind in ("int", "float"):
            assert spec.lo is not None and w.min >= spec.lo, (key, w.min, spec)
            assert spec.hi is None or w.max == spec.hi, (key, w.max, spec)
        options = getattr(w, "options", None)
        if spec.options is not None and options is not None:
            assert set(map(str, options)) <= set(spec.options), (key, options, spec)
    keys = page_keys(page) - set(context)
    for bad in BAD:
        at = app(page, {**context, **{k: bad for k in keys}})
        assert not at.exception, (page, bad, [e.value for e in at.exception])
        assert not at.error, (page, bad, [e.value for e in at.error])
        for key, (kind, w) in widgets(at).items():
            if kind in ("number_input", "slider"):
                assert math.isfinite(w.value) and w.min <= w.value <= w.max, (key, bad, w.value)
        for key, value in at.query_params.items():  # the browser's URL is corrected too
            if key in ui.URL_PARAMS:
                values = value if isinstance(value, list) else [value]
                assert ui.clean_url_value(ui.URL_PARAMS[key], values) is not None, (key, value)


def test_a_seed_out_of_range_is_clamped_and_inf_gives_the_default(app):
    at = app("app_pages/moving_target.py", {"mt_seed": "-5", "mt_step": "1e400"})
    assert not at.exception
    assert at.number_input(key="mt_seed").value == 0
    at = app("app_pages/moving_target.py", {"mt_seed": "20000"})
    assert at.number_input(key="mt_seed").value == 10_000
    at = app("app_pages/moving_target.py", {"mt_seed": "Infinity"})
    assert not at.exception and at.number_input(key="mt_seed").value == 0
    at = app("app_pages/moving_target.py", {"mt_seed": "7"})
    assert at.number_input(key="mt_seed").value == 7  # a good value still reaches the widget
