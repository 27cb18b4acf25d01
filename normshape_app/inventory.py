"""Where checkpoints live and what they are: the folders scanned (shipped, runs, uploads,
``NORMSHAPE_CHECKPOINT_DIRS``), the cached scan (``Ckpt``, ids), cached model and dataset loading
(private copies per session), the checkpoint picker and the app's thread settings."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import streamlit as st

from normshape_app import PACKAGE_DIR
from normshape_app.style import md_escape, public_text
from normshape_core.base import userdata
from normshape_core.base.names import META_NAME, SHAPING_LABELS


SOURCE_ROOT = PACKAGE_DIR.parent  # the source tree, when the app runs from a checkout


# ---------------------------------------------------------------- folders
def shipped_checkpoints_dir() -> Path:
    """The checkpoints that come with normshape (read-only inputs, results included): inside
    the installed package, or ``checkpoints/`` of the source tree."""
    inside = PACKAGE_DIR / "checkpoints"
    return inside if inside.is_dir() else SOURCE_ROOT / "checkpoints"


def _env_dirs(var: str) -> List[Path]:
    raw = os.environ.get(var, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def runs_dir() -> Path:
    """Where the Train page puts new runs: ``NORMSHAPE_RUNS_DIR``, default ``runs/`` in the
    user's folder (``userdata``)."""
    return (_env_dirs("NORMSHAPE_RUNS_DIR") or [userdata.runs_dir()])[0]


def uploads_dir() -> Path:
    """Where accepted uploads are stored: ``uploads/`` in the user's folder."""
    return userdata.uploads_dir()


def checkpoint_dirs() -> List[Path]:
    """Folders searched for checkpoints: ``NORMSHAPE_CHECKPOINT_DIRS`` (os.pathsep-separated;
    default: the shipped checkpoints), plus the runs and uploads folders so that new runs and
    uploads always show."""
    dirs = _env_dirs("NORMSHAPE_CHECKPOINT_DIRS") or [shipped_checkpoints_dir()]
    for d in (runs_dir(), uploads_dir()):
        if d not in dirs:
            dirs.append(d)
    return dirs


def folder_label(d: Path) -> str:
    """What a folder is, for the page: never the server's path."""
    if d == shipped_checkpoints_dir():
        return "the shipped checkpoints"
    if d == runs_dir():
        return "your runs"
    if d == uploads_dir():
        return "your uploads"
    return f"the folder {d.name!r}"


def _set_threads() -> None:
    """Tiny models on a machine with few cores run fastest on one torch thread (threads spin
    against each other and against the background runs); ``NORMSHAPE_APP_THREADS`` overrides."""
    import torch

    n = os.environ.get("NORMSHAPE_APP_THREADS") or ("1" if (os.cpu_count() or 1) <= 4 else "")
    if n and int(n) > 0 and torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))


_set_threads()


def dataset_here(name: str) -> bool:
    """Whether ``name``'s data are on this server (built in, or its files found in the
    standard places), so that using it never downloads anything."""
    from normshape_core.blocks.data import DATASETS, locate_files

    if name not in DATASETS:
        return False
    return DATASETS[name].offline or locate_files(name, None)[0] is not None


def require_dataset_here(name: str) -> None:
    """Raise ``DatasetUnavailable`` (one line, shown by the page) unless ``name``'s data are
    on this server: the app never downloads a dataset."""
    from normshape_core.blocks.data import DatasetUnavailable

    if not dataset_here(name):
        raise DatasetUnavailable(f"the {name} dataset is not available offline on this server "
                                 "(the app never downloads data); ask whoever runs it to "
                                 "install its files")


def max_active_runs() -> int:
    return int(os.environ.get("NORMSHAPE_MAX_RUNS", "4"))


def worker_threads() -> int:
    return int(os.environ.get("NORMSHAPE_JOB_THREADS", "1"))


# ---------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Ckpt:
    """A checkpoint as the pages see it: a short unique id (for pickers and URLs), the run
    folder and its metadata."""

    id: str
    path: str
    sha: str
    meta: Dict[str, Any]

    @property
    def config(self) -> Dict[str, Any]:
        return self.meta["config"]

    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def is_2d(self) -> bool:
        return list(self.meta.get("input_shape", [])) == [2]

    def tag(self) -> str:
        """A few words for a figure title: method, training mode, ratio, norms (other than
        BN's)."""
        c = self.config
        norms = f", {norm_text(c)}" if norm_text(c) else ""
        if c["method"] == "natural":
            return "natural" + norms
        mode = {**SHAPING_LABELS, "attack+train": "shaping"}[c["shaping"]]
        if c.get("norm") == "dual_bn":
            mode = "clean + adv"
        if c["shaping"] != "none":
            mode += f" {c['ratio']}"
        polluted = ", polluted PN" if c.get("polluted_running_stats") else ""
        return f"{c['method'].upper()} {mode}{polluted}{norms}"

    def column_name(self) -> str:
        """A column header that tells checkpoints apart: run name and training label (and
        "stopped at epoch k/N" for a run stopped early)."""
        stop = f", {self.stopped_text()}" if self.stopped_text() else ""
        return f"{self.id} ({self.tag()}{stop})"

    def stopped_text(self) -> str:
        """"stopped at epoch k/N" for a run stopped early (its ``stopped`` record), else ""."""
        st_ = self.meta.get("stopped")
        return (f"stopped at epoch {st_.get('epoch')}/{st_.get('epochs')}"
                if isinstance(st_, dict) else "")

    @property
    def attack_eps(self) -> float:
        """The eps its L-inf attacks use: the training eps (as ``evaluate_checkpoint``: 8/255
        for a run that never set one)."""
        return float(self.config.get("eps") or 8 / 255)

    def short(self) -> str:
        """dataset / method / training mode / ratio, in the paper's words."""
        c = self.config
        if c["method"] == "natural":
            mode = "natural"
        else:
            mode = SHAPING_LABELS[c["shaping"]]
            if c.get("norm") == "dual_bn":
                mode = "clean + adv"
            if c["shaping"] != "none":
                mode += f" {c['ratio']}"
            mode = f"{c['method'].upper()}, {mode}"
        if norm_text(c):
            mode += f", {norm_text(c)}"
        stop = f", {self.stopped_text()}" if self.stopped_text() else ""
        return f"{c['dataset']}: {mode}, eps {eps_text(c)}{stop}"


#: a checkpoint's norm layers as the pages name them: dual BN's pages classify with its
#: adversarial set (PN, BN and shaped inference of that set)
NORM_TEXT = {"bn": "", "dual_bn": "dual BN [adv norms]", "gn": "GroupNorm (no batch statistics)",
             "ln": "LayerNorm (no batch statistics)", "nf": "normalizer-free (no batch statistics)"}


def norm_text(config: Dict[str, Any]) -> str:
    """The norms of a checkpoint other than BN, named ("" for BN)."""
    return NORM_TEXT.get(config.get("norm", "bn"), str(config.get("norm")))


def eps_text(config: Dict[str, Any]) -> str:
    """A training config's eps (none for a natural run that never set it)."""
    return "-" if config.get("eps") is None else f"{config['eps']:g}"


def _signature(dirs: Sequence[Path]) -> Tuple:
    """Cheap fingerprint of the checkpoint folders: each model.json path and mtime."""
    sig = []
    for d in dirs:
        if d.is_dir():
            for p in d.rglob(META_NAME):
                try:
                    sig.append((str(p), p.stat().st_mtime_ns))
                except OSError:
                    pass
    return tuple(sorted(sig))


@st.cache_data(show_spinner=False)
def _scan(dirs: Tuple[str, ...], signature: Tuple) -> Tuple[List[Ckpt], List[str]]:
    from normshape_core.training.checkpoints import find_checkpoints

    infos, errors = find_checkpoints(*dirs)
    ckpts: List[Ckpt] = []
    seen: Dict[str, int] = {}
    for info in infos:
        base = info.path.name
        seen[base] = seen.get(base, 0) + 1
        cid = base if seen[base] == 1 else f"{info.path.parent.name}/{base}"
        ckpts.append(Ckpt(cid, str(info.path), info.meta["weights_sha256"], info.meta))
    return ckpts, [_scan_error(e, dirs) for e in errors]


def _scan_error(e, dirs: Sequence[str]) -> str:
    """One line for a checkpoint the scan refused: where it lies (the folder's label and the
    path inside it, never the server's path) and its problem (which names the field)."""
    path = Path(e.path)
    for d in sorted(map(Path, dirs), key=lambda d: -len(d.parts)):
        try:
            rel = path.relative_to(d)
        except ValueError:
            continue
        return f"{folder_label(d)}: {rel.as_posix()}: {public_text(e.problem)}"
    return public_text(str(e))


def checkpoints() -> List[Ckpt]:
    """Every valid checkpoint in the checkpoint folders (rescanned only when one changes)."""
    dirs = checkpoint_dirs()
    ckpts, _ = _scan(tuple(map(str, dirs)), _signature(dirs))
    return ckpts


def checkpoint_errors() -> List[str]:
    dirs = checkpoint_dirs()
    return _scan(tuple(map(str, dirs)), _signature(dirs))[1]


def with_stopped_mark(name: str, run_dir: "str | Path") -> str:
    """A run's name, with "(stopped at epoch k/N)" when the checkpoint in ``run_dir`` is one
    of a run stopped early (its ``stopped`` record)."""
    where = Path(run_dir).resolve()
    ck = next((c for c in checkpoints() if Path(c.path).resolve() == where), None)
    return f"{name} ({ck.stopped_text()})" if ck is not None and ck.stopped_text() else name


def checkpoint_by_id(cid: str) -> Optional[Ckpt]:
    return next((c for c in checkpoints() if c.id == cid), None)


@st.cache_resource(show_spinner=False, max_entries=32)
def _load_model(path: str, sha: str):
    from normshape_core.training.checkpoints import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as e:  # weights that break the reader: one message on the page
        raise CheckpointError(Path(path).name, f"the weights cannot be read "
                                               f"({type(e).__name__})") from None


def load_model(ck: "Ckpt | str", sha: Optional[str] = None):
    """(model, meta) of a checkpoint (or of a path and its weights' SHA-256): a private copy
    of the cached model (norm-mode switches flip module flags; a copy keeps two sessions
    from seeing each other's modes). PN mode (eval)."""
    path, sha = (ck.path, ck.sha) if isinstance(ck, Ckpt) else (str(ck), sha)
    model, meta = _load_model(path, sha)
    return copy.deepcopy(model), meta


@st.cache_resource(show_spinner=False, max_entries=8)
def load_dataset(name: str):
    """The dataset (shared, read-only tensors); never downloaded (``DatasetUnavailable``, which
    the page shows as one message, when its files are not on this server)."""
    from normshape_core.blocks.data import load_dataset as _load

    require_dataset_here(name)
    return _load(name, seed=0, download=False)


def device_text() -> str:
    import torch

    from normshape_core.settings.config import parse_device

    dev = parse_device("auto")
    extra = ""
    if dev.type == "cuda":
        extra = f" ({torch.cuda.get_device_name(0)})"
    return f"{dev.type}{extra}, {torch.get_num_threads()} torch threads"


@st.cache_resource(show_spinner=False)
def warm_umap_in_background():
    """Compile UMAP's numba code once per server process in a background thread (no
    Streamlit calls in it), so the first UMAP map a user asks for takes about a second
    instead of 15-20 s. Started by the Decision boundaries page (the only one with UMAP
    maps), not at server start: the compilation keeps a core busy for 15-20 s, which
    halved the Playground's frame rate when it ran first. ``NORMSHAPE_WARM_UMAP=0`` turns it
    off."""
    import threading

    if os.environ.get("NORMSHAPE_WARM_UMAP", "1") == "0":
        return None

    def work():
        import numpy as np

        from normshape_core.measuring.projections import embed_2d

        try:
            embed_2d(np.random.default_rng(0).normal(size=(40, 8)).astype("float32"), "umap")
        except Exception:  # the page will report a real failure when it is asked for
            pass

    t = threading.Thread(target=work, name="normshape-umap-warmup", daemon=True)
    t.start()
    return t


def checkpoint_picker(label: str, key: str, *, only_2d: Optional[bool] = None,
                      predicate=None, prefer=None, help: Optional[str] = None) -> Optional[Ckpt]:
    """A selectbox of checkpoints bound to the URL (``?key=<id>``); shows a short description.
    ``only_2d``: True for 2-D datasets only, False for images only; ``prefer``: a sort key,
    the smallest comes first (the default choice)."""
    options = [c for c in checkpoints()
               if (only_2d is None or c.is_2d == only_2d) and (predicate is None or predicate(c))]
    if prefer is not None:
        options.sort(key=prefer)
    if not options:
        return None
    ids = [c.id for c in options]
    by_id = {c.id: c for c in options}
    # Plain ids as options: a bound widget keeps the option's text in the URL.
    cid = st.selectbox(label, ids, key=key, bind="query-params", help=help)
    ck = by_id.get(cid)
    if ck is not None:
        st.caption(md_escape(ck.short()))
    return ck


def prefer_2d_adversarial(c: Ckpt):
    """Sort key: 2-D sets first, the reproduction's checkpoints before the lessons' (their
    settings are chosen to show one confounding), then plain adversarial training (adv
    only), then shaped."""
    cfg = c.config
    return (not c.is_2d, c.id.startswith("lesson-"), cfg.get("norm", "bn") != "bn",
            bool(cfg.get("polluted_running_stats")), cfg["method"] == "natural",
            cfg["method"] != "pgd", cfg["shaping"] != "none", c.id)


def prefer_2d_shaped(c: Ckpt):
    """Sort key: 2-D sets first, the reproduction's checkpoints before the lessons', then
    PGD + shaping in attack and training at 1:3."""
    cfg = c.config
    return (not c.is_2d, c.id.startswith("lesson-"), cfg.get("norm", "bn") != "bn",
            bool(cfg.get("polluted_running_stats")), cfg["method"] == "natural",
            cfg["method"] != "pgd", cfg["shaping"] != "attack+train", cfg["ratio"] != "1:3",
            c.id)


def no_checkpoints_message(what: str = "checkpoints") -> None:
    dirs = ", ".join(folder_label(d) for d in checkpoint_dirs())
    st.info(f"No {what} found in {dirs}. Train one on the **Train** page (a moons run takes "
            "about ten seconds), or point `NORMSHAPE_CHECKPOINT_DIRS` at a folder of run folders.")


def _table_iv_candidates(ckpts: Sequence[Ckpt], dataset: str, method: str) -> List[Ckpt]:
    """Table IV's models: BN, ``dataset``, ``method``, shaping in attack and training or none;
    the listed checkpoints (shipped) before your runs and uploads, the reproduction's before
    the lessons'."""
    mine = [d.resolve() for d in (runs_dir(), uploads_dir())]

    def rank(c: Ckpt):
        return (any(d in Path(c.path).resolve().parents for d in mine),
                c.id.startswith("lesson-"), c.id)

    return sorted((c for c in ckpts if c.dataset == dataset and c.config["method"] == method
                   and c.config["shaping"] in ("attack+train", "none")
                   and c.config.get("norm", "bn") == "bn"), key=rank)


def table_iv_eps(ckpts: Sequence[Ckpt], dataset: str, method: str) -> List[float]:
    """The attack eps of the Ratios page's possible grids on ``dataset`` / ``method``, the
    reproduction's first (the first listed checkpoint's), then ascending: only cells at one
    eps are comparable, so a grid holds one."""
    found = [round(c.attack_eps, 6) for c in _table_iv_candidates(ckpts, dataset, method)]
    return found[:1] + sorted(set(found) - set(found[:1]))


def table_iv_rows(ckpts: Sequence[Ckpt], dataset: str, method: str,
                  eps: Optional[float] = None) -> Dict[str, Ckpt]:
    """The Ratios page's rows: {training label: checkpoint} of ``dataset`` trained with
    ``method`` + shaping in attack and training (by ratio), then adv only ("adv only (1:0)");
    polluted runs and stopped runs said in the label, after their normal twin. Only models
    attacked at ``eps`` (None: ``table_iv_eps``'s first); of two with one label, the listed
    (shipped) one, the reproduction's before a lesson's."""
    from normshape_core.measuring.evaluation import training_label

    found = table_iv_eps(ckpts, dataset, method)
    want = found[0] if eps is None and found else eps
    rows: Dict[str, Ckpt] = {}
    for c in _table_iv_candidates(ckpts, dataset, method):
        if want is None or abs(c.attack_eps - want) > 1e-6:
            continue
        label = training_label(c.meta).replace("adv only", "adv only (1:0)", 1)
        if c.config.get("polluted_running_stats"):
            label += " (polluted PN)"
        if c.stopped_text():
            label += f", {c.stopped_text()}"
        rows.setdefault(label, c)

    def order(r: str):
        ratio = r.split()[0].split(":")
        shaped = not r.startswith("adv") and len(ratio) == 2 and ratio[1].isdigit()
        return (not shaped, int(ratio[1]) if shaped else 0, "polluted" in r, r)

    return {label: rows[label] for label in sorted(rows, key=order)}


#: Compare's first view, in this order of preference: the paper's kind of data (images), all
#: of the test set in the shipped worst case (digits: 397 samples), then the 2-D sets.
PREFERRED_DATASETS = ("digits", "fashion_mnist", "moons", "spirals")


def comparable_groups(cks: Sequence[Ckpt]) -> Dict[Tuple[str, float], List[Ckpt]]:
    """The checkpoints grouped by (dataset, attack eps), in order of first appearance: only
    numbers within one group are comparable."""
    out: Dict[Tuple[str, float], List[Ckpt]] = {}
    for c in cks:
        out.setdefault((c.dataset, round(c.attack_eps, 6)), []).append(c)
    return out


def default_comparison(ckpts: Sequence[Ckpt], has_worst=lambda c: False) -> List[str]:
    """Compare's first view: natural, PGD adv only and PGD + shaping 1:3 (BN models) of one
    dataset at one eps (so every column is comparable), the listed checkpoints (shipped, or
    ``NORMSHAPE_CHECKPOINT_DIRS``) before your runs and uploads, the reproduction's before
    the lessons'. Among the (dataset, eps) groups: those with all three first, then those whose
    three have a shipped worst case (``has_worst``), then ``PREFERRED_DATASETS``, then the
    most checkpoints. Without such a trio: the first two of the largest group."""
    wants = (("natural", None, None), ("pgd", "none", None), ("pgd", "attack+train", "1:3"))
    mine = [d.resolve() for d in (runs_dir(), uploads_dir())]

    def yours(c: Ckpt) -> bool:  # a run trained here or an upload: after the listed ones
        return any(d in Path(c.path).resolve().parents for d in mine)

    groups = comparable_groups(sorted(ckpts, key=lambda c: (yours(c), c.id.startswith(
        "lesson-"), c.id)))
    picks = {}
    for key, members in groups.items():
        pick = []
        for method, shaping, ratio in wants:
            for c in members:
                cfg = c.config
                if cfg["method"] == method and not cfg.get("polluted_running_stats") and \
                        cfg.get("norm", "bn") == "bn" and not c.stopped_text() and \
                        (shaping is None or cfg["shaping"] == shaping) and \
                        (ratio is None or cfg["ratio"] == ratio) and c.id not in pick:
                    pick.append(c.id)
                    break
        picks[key] = pick
    if not picks:
        return []
    by_id = {c.id: c for c in ckpts}

    def rank(key):
        ds = key[0]
        pref = PREFERRED_DATASETS.index(ds) if ds in PREFERRED_DATASETS else len(
            PREFERRED_DATASETS)
        return (-len(picks[key]), not all(has_worst(by_id[i]) for i in picks[key]), pref,
                -len(groups[key]), key)

    best = min(picks, key=rank)
    if len(picks[best]) >= 2:
        return picks[best]
    largest = max(groups, key=lambda k: (len(groups[k]), k))
    return [c.id for c in groups[largest][:2]]
