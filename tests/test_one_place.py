"""One place per concept: no constant is defined in two modules, no list of names is written
out twice, and no run-folder file name is spelled out where ``normshape_core.base.names`` has it.

The scan reads the source (AST) of the core, the app and the benchmarks. A module-level
UPPER_CASE name assigned a value (not an import, not another name) counts as a definition.
The one duplicate left is on purpose and listed below with its reason. The lists must match
exactly: a new duplicate fails, and so does one that is gone (then delete its line)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, Set

from normshape_core.base import names

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["normshape_core", "normshape_app", "app_pages", "benchmarks", "app.py"]

#: name -> the modules defining it (none: each name is defined in one module)
KNOWN_NAMES: Dict[str, Set[str]] = {}
#: a list of three or more names written out in two places, on purpose
KNOWN_VALUES: Dict[tuple, Set[str]] = {
    # written out so the app starts without torch; tests/test_query_params.py checks them
    ("moons", "spirals", "circles", "xor", "blobs"): {
        "normshape_core/blocks/data.py:DATASETS_2D", "normshape_app/urlparams.py:URL_DATASETS_2D"},
}
#: run-folder file names (``names``) spelled out in a path: file -> how many (none)
KNOWN_FILE_NAMES: Dict[str, int] = {}
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
