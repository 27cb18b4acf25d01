"""The architecture, checked from the source (AST, no import runs): the import graph of
``normshape_core`` has no cycle, follows the layer table below one way (a module imports its
own layer or lower ones, never a higher one), never imports Streamlit, and keeps argparse in
the command-line layer; the app's pages do not import torch.

Every import counts, including those inside functions and under ``if``: a lazy import still
ties two modules together. The lazy public names of ``normshape_core/__init__.py`` (its
``_LAZY`` table, resolved on attribute access) count as imports of the package too.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "normshape_core"

# Layers, lowest first. data, models and norms import nothing of the package; the settings
# (config, presets) validate names against their registries (config -> data, models), so
# they sit one layer above them. A module name that is a package covers its submodules
# (``attacks`` covers ``attacks.pgd``); the most specific entry wins.
LAYERS: List[List[str]] = [
    # 0 foundations: the version, registries of datasets and models, the norm layers, the
    #   user folder, the fault-injection points, intervals and paired tests (stats), reading
    #   a file safely (files), the names every layer shares (names)
    ["_version", "data", "models", "norms", "userdata", "faults", "stats", "files", "names"],
    # 1 settings
    ["config", "presets"],
    # 2 building blocks of training and evaluation (the inference modes: shaping's and the
    #   other BN fixes' classifier views)
    ["shaping", "alternatives", "attacks"],
    # 3 training and what it writes
    ["training", "objectives", "checkpoints", "distributed", "runlock"],
    # 4 measuring trained models (own_model: a model from the user's own code, its weights
    #   and data, checked for what the measuring needs)
    ["evaluation", "eval_work", "worst_case", "diagnostics", "projections", "experiments",
     "own_model"],
    # 5 figures (plotly; the Playground's live regions with Pillow)
    ["figures"],
    # 6 entry points: the package's public API, the command line, the app-facing jobs and
    #   playground, the app's evaluation jobs, the reproduce pipeline and its report, the BN
    #   fixes side by side and the confounding sweep
    ["", "__main__", "cli", "jobs", "evaljobs", "playground", "reproduce", "report",
     "bn_fixes", "sweep"],
]

# argparse only in the command-line layer.
ARGPARSE_ALLOWED = ("cli",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Every module this file imports, package-relative names ('' is the package itself) for
    modules of normshape_core, absolute top-level names for the rest."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    out: Set[str] = set()

    def inside(parts: List[str], alias: str = "") -> None:
        mod = ".".join(parts)
        sub = f"{mod}.{alias}" if mod and alias else (alias or mod)
        out.add(sub if alias and sub in known else mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "normshape_core" or a.name.startswith("normshape_core."):
                    inside(a.name.split(".")[1:])
                else:
                    out.add("ext:" + a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module == "normshape_core" or node.module.startswith("normshape_core."):
                parts = node.module.split(".")[1:]
            else:
                out.add("ext:" + node.module.split(".")[0])
                continue
            for a in node.names:
                inside(parts, a.name)
    if name == "":  # the package's lazy public names
        for node in tree.body:
            if (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_LAZY"
                    or isinstance(node, ast.Assign)
                    and any(getattr(t, "id", "") == "_LAZY" for t in node.targets)):
                table = ast.literal_eval(node.value)
                out.update(m.lstrip(".") for m in table.values())
    out.discard(name)
    return out


def _graph() -> Dict[str, Set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            covers = module == n or (n and module.startswith(n + "."))
            if covers and len(n) > best_len:
                best, best_len = i, len(n)
    if best is None:
        raise AssertionError(f"normshape_core.{module} is in no layer of tests/"
                             f"test_architecture.py's LAYERS: place it there")
    return best


def _label(module: str) -> str:
    return f"normshape_core.{module}" if module else "normshape_core"


def test_graph_is_read():
    g = _graph()
    assert {"config", "training", "checkpoints", "evaluation", "cli", "attacks.pgd"} <= set(g)
    assert "checkpoints" in g["training"] and "config" in g["checkpoints"]
    assert "ext:torch" in g["training"]


def test_no_import_cycle():
    g = {m: {d for d in deps if not d.startswith("ext:")} for m, deps in _graph().items()}
    state: Dict[str, int] = {}
    stack: List[str] = []
    cycles: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if state.get(d) == 1:
                cyc = stack[stack.index(d):] + [d]
                cycles.append(" -> ".join(_label(c) for c in cyc))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_has_a_layer_and_imports_downward_only():
    wrong = []
    for m, deps in sorted(_graph().items()):
        lm = _layer(m)
        for d in sorted(deps):
            if d.startswith("ext:"):
                continue
            if _layer(d) > lm:
                wrong.append(f"{_label(m)} (layer {lm}) imports {_label(d)} (layer {_layer(d)})")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_core_never_imports_streamlit():
    bad = [_label(m) for m, deps in sorted(_graph().items()) if "ext:streamlit" in deps]
    assert not bad, f"normshape_core must not import streamlit: {bad}"


def test_argparse_only_in_the_command_line_layer():
    bad = [_label(m) for m, deps in sorted(_graph().items())
           if "ext:argparse" in deps
           and not any(m == a or m.startswith(a + ".") for a in ARGPARSE_ALLOWED)]
    assert not bad, f"argparse outside normshape_core/cli/: {bad}"


def test_the_checker_sees_function_level_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .training import Trainer\n    import argparse\n")
    assert _imports("m", src, {"m", "training"}) == {"training", "ext:argparse"}


def test_pages_do_not_import_torch():
    bad = []
    for p in sorted((ROOT / "app_pages").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            if any(n == "torch" or n.startswith("torch.") for n in names):
                bad.append(p.name)
                break
    assert not bad, f"pages that import torch: {bad}"
