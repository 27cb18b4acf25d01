"""The architecture, checked from the source (AST, no import runs): each subpackage of
``normshape_core`` is one layer, and ``ls normshape_core`` lists them; the import graph has no
cycle, follows the layers one way (a module imports its own layer or lower ones, never a
higher one), never imports Streamlit, and keeps argparse in the command-line layer; no
function is longer than a screen (80 lines); the app's pages do not import torch.

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

# The layers, lowest first: a module's layer is the subpackage it lives in (its folder).
# docs/architecture.md describes each one. base and blocks import nothing above them; the
# settings validate names against the registries of blocks (config -> data, models), so they
# sit above them; inference (the classifier views) is what the attacks craft through.
LAYERS: List[str] = [
    "base",       # 0 files, names, stats, faults, userdata: shared, importing nothing
    "blocks",     # 1 the registries of datasets and models, the norm layers
    "settings",   # 2 TrainConfig, presets
    "inference",  # 3 PN, BN, shaped batches; the other BN fixes' classifier views
    "attacks",    # 4 one file per attack, the registry, the threat models
    "training",   # 5 the loop, objectives, checkpoints, torchrun, the run lock
    "measuring",  # 6 evaluation, the worst case, diagnostics, projections, own models
    "figures",    # 7 plotly figures of core results
    "studies",    # 8 the reproduction, its report, the BN fixes, the confoundings sweep
    "cli",        # 9 every argparse parser
]
# The package's own files: the version imports nothing (the floor); the public API
# (``__init__``, ''), and ``python -m normshape_core`` (``__main__``) are the top.
ROOT_MODULES = {"_version": 0, "": len(LAYERS) - 1, "__main__": len(LAYERS) - 1}

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
    if module in ROOT_MODULES:
        return ROOT_MODULES[module]
    folder = module.split(".")[0]
    if folder not in LAYERS:
        raise AssertionError(f"normshape_core.{module} lies in no layer's folder: move it into "
                             f"one of {LAYERS} (or add its folder to tests/test_architecture.py's "
                             f"LAYERS and docs/architecture.md)")
    return LAYERS.index(folder)


def _label(module: str) -> str:
    return f"normshape_core.{module}" if module else "normshape_core"


def test_graph_is_read():
    g = _graph()
    assert {"settings.config", "training.trainer", "training.checkpoints",
            "measuring.evaluation", "cli", "attacks.pgd"} <= set(g)
    assert "training.run_folder" in g["training.trainer"]
    assert "training.checkpoints" in g["training.run_folder"]
    assert "settings.config" in g["training.checkpoints"]
    assert "ext:torch" in g["training.trainer"]


def test_the_folders_are_the_layers():
    """``ls normshape_core`` shows the layers: one folder per layer, no flat module but the
    package's own files, and docs/architecture.md names every folder."""
    folders = {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS), (
        f"folders of normshape_core that are no layer: {sorted(folders - set(LAYERS))}; "
        f"layers without a folder: {sorted(set(LAYERS) - folders)}")
    flat = {p.stem for p in CORE.glob("*.py")} - {"__init__", *ROOT_MODULES}
    assert not flat, f"modules outside the layers' folders: {sorted(flat)}"
    assert all(_layer(m) in range(len(LAYERS)) for m in _modules())
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [f for f in LAYERS if f"{f}/" not in doc]
    assert not missing, f"docs/architecture.md does not describe the layers {missing}"


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


# A function should read in one screen: every function or method of the core, nested ones
# included, has at most this many lines.
MAX_FUNCTION_LINES = 80


def _long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> Dict[str, int]:
    """``qualified name -> lines`` (the ``def`` line to the last, decorators not counted) of
    every function or method in ``path`` longer than ``limit``."""
    out: Dict[str, int] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = child.end_lineno - child.lineno + 1
                if n > limit:
                    out[prefix + child.name] = n
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text(), filename=str(path)), "")
    return out


def test_the_length_check_sees_methods_and_nested_functions(tmp_path):
    body = "".join(f"x{i} = {i}\n" for i in range(4))

    def indent(text: str, n: int) -> str:
        return "".join(" " * n + line + "\n" for line in text.splitlines())

    src = tmp_path / "m.py"
    src.write_text("class A:\n    def long(self):\n" + indent(body, 8)
                   + "def outer():\n    def inner():\n" + indent(body, 8)
                   + "    return inner\n"
                   + "def short():\n    return 1\n")
    assert _long_functions(src, limit=4) == {"A.long": 5, "outer": 7, "outer.inner": 5}


def test_no_function_longer_than_a_screen():
    found = {f"{_label(_module_name(p))}:{name}": n
             for p in sorted(CORE.rglob("*.py")) for name, n in _long_functions(p).items()}
    assert not found, (f"functions longer than {MAX_FUNCTION_LINES} lines (split them into "
                       f"named steps): {found}")
