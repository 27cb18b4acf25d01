"""One place per concept: no constant is defined in two modules, no list of names is written
out twice, and no run-folder file name is spelled out where ``normshape_core.base.names`` has it.

The scan reads the source (AST) of the core, the app and the benchmarks. A module-level
UPPER_CASE name assigned a value (not an import, not another name) counts as a definition.
The duplicates that remain sit in files other work owns right now; each is listed below with
the change that removes it. The lists must match exactly: a new duplicate fails, and so does
one that is gone (then delete its line), so they only shrink."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, Set

from normshape_core.base import names

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["normshape_core", "normshape_app", "app_pages", "benchmarks", "app.py"]

#: name -> the modules defining it, still (and what removes the duplicate)
KNOWN_NAMES: Dict[str, Set[str]] = {
    # normshape_app/results.py: import names.INFERENCE_RATIOS
    "INFERENCE_RATIOS": {"normshape_core/base/names.py", "normshape_app/results.py"},
    # the Train page: its option texts from names.SHAPING_LABELS
    "SHAPING_LABELS": {"normshape_core/base/names.py", "app_pages/train.py"},
    # normshape_app/uploads.py: import files.MAX_META_BYTES (uploads allow 1 MiB today)
    "MAX_META_BYTES": {"normshape_core/base/files.py", "normshape_app/uploads.py"},
    # the Playground's norms and their labels (its page reads PG.NORMS, PG.NORM_LABELS):
    # rename to PLAYGROUND_NORMS / PLAYGROUND_NORM_LABELS with the page
    "NORMS": {"normshape_core/blocks/models.py", "normshape_app/playground.py"},
    "NORM_LABELS": {"normshape_core/blocks/models.py", "normshape_app/playground.py"},
    # Compare's attack list: read the registry (attacks.ATTACKS) instead
    "ATTACKS": {"normshape_core/attacks/registry.py", "app_pages/compare.py"},
}
#: a list of three or more names written out in two places, still
KNOWN_VALUES: Dict[tuple, Set[str]] = {
    # reproduce.TABLE_IV_INFERENCE (lead's file) and results.INFERENCE_RATIOS: import names'
    ("1:0", "1:1", "1:3", "1:9", "1:19", "1:49"): {
        "normshape_core/base/names.py:INFERENCE_RATIOS",
        "normshape_core/studies/reproduce.py:TABLE_IV_INFERENCE",
        "normshape_app/results.py:INFERENCE_RATIOS"},
    # written out so the app starts without torch; tests/test_query_params.py checks them
    ("moons", "spirals", "circles", "xor", "blobs"): {
        "normshape_core/blocks/data.py:DATASETS_2D", "normshape_app/urlparams.py:URL_DATASETS_2D"},
    # the Decision boundaries page: import playground.INFER_RATIOS
    ("1:1", "1:3", "1:9", "1:19"): {
        "normshape_app/playground.py:INFER_RATIOS",
        "app_pages/decision_boundaries.py:SHAPED_RATIOS"},
}
#: run-folder file names (``names``) spelled out in a path, still: file -> how many
KNOWN_FILE_NAMES: Dict[str, int] = {
    "normshape_app/uploads.py": 3,  # use names.META_NAME / WEIGHTS_NAME
    "normshape_core/studies/reproduce.py": 1,  # the lead's file: names.META_NAME
}
RUN_FILES = {names.WEIGHTS_NAME, names.META_NAME, names.STATE_NAME, names.METRICS_NAME}


def _files():
    for src in SOURCES:
        path = ROOT / src
        yield from ([path] if path.suffix == ".py" else sorted(path.rglob("*.py")))


def _definitions():
    by_name, by_value = defaultdict(set), defaultdict(set)
    for path in _files():
        rel = str(path.relative_to(ROOT))
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for t in targets:
                if not (isinstance(t, ast.Name) and t.id.lstrip("_").isupper()):
                    continue
                if isinstance(value, (ast.Name, ast.Attribute)):
                    continue  # another name for a constant defined elsewhere
                by_name[t.id].add(rel)
                try:
                    v = ast.literal_eval(value)
                except ValueError:
                    continue
                if isinstance(v, (list, tuple)) and len(v) >= 3 and all(
                        isinstance(x, str) for x in v):
                    by_value[tuple(v)].add(f"{rel}:{t.id}")
    return by_name, by_value


def _path_literals() -> Dict[str, int]:
    """Run-folder names written out as a path part: ``folder / "model.json"``, or the pattern
    of a ``glob`` / ``rglob``."""
    out: Dict[str, int] = defaultdict(int)
    for path in _files():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            parts = []
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                parts = [node.left, node.right]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("glob", "rglob", "joinpath", "with_name"):
                parts = list(node.args)
            for p in parts:
                if isinstance(p, ast.Constant) and isinstance(p.value, str) and \
                        p.value.rsplit("/", 1)[-1] in RUN_FILES:
                    out[rel] += 1
    return dict(out)


def test_no_constant_is_defined_in_two_modules():
    by_name, _ = _definitions()
    twice = {k: v for k, v in by_name.items() if len(v) > 1}
    assert twice == KNOWN_NAMES


def test_no_list_of_names_is_written_out_twice():
    _, by_value = _definitions()
    twice = {k: v for k, v in by_value.items() if len(v) > 1}
    assert twice == KNOWN_VALUES


def test_run_folder_file_names_come_from_names():
    assert _path_literals() == KNOWN_FILE_NAMES


def test_the_scan_sees_a_duplicate(tmp_path, monkeypatch):
    """The scan itself: a module defining a constant the core has, and a path literal."""
    (tmp_path / "a.py").write_text('WORST = "worst_case"\nP = "x" / "model.json"\n')
    (tmp_path / "b.py").write_text('from normshape_core.base.names import WORST\nWORST2 = WORST\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.SOURCES", ["a.py", "b.py"])
    by_name, _ = _definitions()
    assert by_name["WORST"] == {"a.py"} and "WORST2" not in by_name
    assert _path_literals() == {"a.py": 1}


def test_the_documents_the_code_points_to_are_in_the_repository():
    """The code cites its documents in ``docs/`` (the vocabulary, the method and the
    evaluation rules: docs/vocabulary.md), never a file outside the repository."""
    import re

    cited = set()
    for path in _files():
        text = path.read_text()
        assert "DESIGN.md" not in text and "STYLE.md" not in text, path
        cited |= set(re.findall(r"\bdocs/[\w.-]+\.md\b", text))
    assert "docs/vocabulary.md" in cited
    for doc in sorted(cited):
        assert (ROOT / doc).is_file(), doc
