"""What every page of the app shares: colours, where checkpoints live, cached loading, the
checkpoint picker, the presentation toggle and figure styling.

The seam between Streamlit and the core: models are cached with ``st.cache_resource`` (and
handed out as private copies, since a norm-mode switch flips module flags and two sessions
run in two threads), results with ``st.cache_data`` keyed by the weights' SHA-256 and the
settings. No science here.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import streamlit as st

from normshape_app import PACKAGE_DIR
from normshape_core import userdata

SOURCE_ROOT = PACKAGE_DIR.parent  # the source tree, when the app runs from a checkout


# ---------------------------------------------------------------- colours (every page)
PN_COLOR = "#1f6fb4"       # PN: population norms (running statistics)
BN_COLOR = "#e07020"       # BN: batch norms, shaped inference included
CLEAN_COLOR = "#2a9d57"    # the clean batch's statistics (a reference line)
# Classes: ten distinct colours, none of them PN's blue or BN's orange.
CLASS_COLORS = ["#7b3294", "#008837", "#e6ab02", "#e7298a", "#666666", "#17becf", "#bcbd22",
                "#8c564b", "#c2a5cf", "#111111"]
REGION_COLORS = ["#e3d3ee", "#cfe9d6"]  # light fills of the two classes of a 2-D set
WRONG_COLOR = "#d62728"    # a misclassified (adversarial) example, as in the paper's Fig. 1


def norm_color(label: str) -> str:
    """PN's colour for anything classified or crafted with PN, BN's for batch norms
    (BN, frozen BN, shaped inference, shaping attack)."""
    return PN_COLOR if str(label).strip().upper().startswith("PN") else BN_COLOR


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


# An absolute path (or ~/...) not inside a word or a URL: /tmp/x/model.json, ~/.local/share/x.
_PATH = re.compile(r"(?<![\w.:/~])~?(?:/[^\s/:'\"`,;()\[\]]+)+/?")


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&:@/])")
# GitHub-flavoured Markdown also links bare addresses, found in the text after escapes are
# read: a WORD JOINER (U+2060, invisible) after "http"/"https"/"www" and before "@" keeps
# them from matching.
_BARE_LINK = re.compile(r"(?i)(https?(?=\\:)|www(?=\\\.)|(?=\\@))")


def md_escape(text: Any) -> str:
    """``text`` shown as itself where Streamlit renders Markdown (``st.table`` cells and
    headers, tab labels, alerts): every Markdown character escaped, so no name is read as
    markup: no link, image, HTML tag or emphasis, and no bare address (``http://``,
    ``www.``, e-mail) turned into a link."""
    return _BARE_LINK.sub("\\1\u2060", _MARKDOWN.sub(r"\\\1", str(text)))


def md_code(text: Any) -> str:
    """``text`` as an inline code span (shown as itself, monospace, where Markdown is
    rendered): backticks and line breaks inside it are replaced, so it cannot end the span."""
    return "`" + re.sub(r"[`\r\n]", "'", str(text)) + "`"


def message_text(message: Any) -> str:
    """An error or warning message fit to show in ``st.error``/``st.warning`` (Markdown): no
    server path (``public_text``) and every Markdown character escaped (``md_escape``), since
    messages quote what users typed or uploaded."""
    return md_escape(public_text(message))


def css_text(text: Any) -> str:
    """``text`` fit for a CSS string (pandas' cell tooltips): no quote, backslash, newline or
    angle bracket that could end the string or the style block."""
    return re.sub(r"[\"'\\\n\r<>{}]", " ", str(text))


def public_text(message: Any) -> str:
    """A message fit to show a user: every absolute path of the server becomes its last part
    (``/tmp/abc/.incoming-1/model.safetensors`` -> ``model.safetensors``)."""
    def last(m: "re.Match") -> str:
        parts = [p for p in m.group(0).split("/") if p and p != "~"]
        return parts[-1] if parts else m.group(0)

    return _PATH.sub(last, str(message))


def _set_threads() -> None:
    """Tiny models on a machine with few cores run fastest on one torch thread (threads spin
    against each other and against the background runs); ``NORMSHAPE_APP_THREADS`` overrides."""
    import torch

    n = os.environ.get("NORMSHAPE_APP_THREADS") or ("1" if (os.cpu_count() or 1) <= 4 else "")
    if n and int(n) > 0 and torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))


_set_threads()


def max_upload_mb() -> int:
    """Largest accepted upload per file, in MB: Streamlit's ``server.maxUploadSize``, set in
    ``.streamlit/config.toml`` beside ``app.py`` (256: a wide ResNet-34-10 is about 185 MB), so
    the server, the upload widget and the check below always agree."""
    return int(st.get_option("server.maxUploadSize"))


MAX_META_BYTES = 1 << 20


def dataset_here(name: str) -> bool:
    """Whether ``name``'s data are on this server (built in, or its files found in the
    standard places), so that using it never downloads anything."""
    from normshape_core.data import DATASETS, locate_files

    if name not in DATASETS:
        return False
    return DATASETS[name].offline or locate_files(name, None)[0] is not None


def require_dataset_here(name: str) -> None:
    """Raise ``DatasetUnavailable`` (one line, shown by the page) unless ``name``'s data are
    on this server: the app never downloads a dataset."""
    from normshape_core.data import DatasetUnavailable

    if not dataset_here(name):
        raise DatasetUnavailable(f"the {name} dataset is not available offline on this server "
                                 "(the app never downloads data); ask whoever runs it to "
                                 "install its files")


@dataclass(frozen=True)
class Upload:
    """An accepted upload: the checkpoint's id on the pages, and whether it was stored (False:
    the same weights were already there, under ``name``)."""

    name: str
    stored: bool


def import_checkpoint(weights: bytes, meta: bytes, filename: str = "upload",
                      known: Optional[Dict[str, str]] = None,
                      meta_filename: str = "model.json") -> Upload:
    """Validate an uploaded checkpoint and store it under the uploads folder, unless its
    weights (SHA-256) are those of a checkpoint already known (``known``: SHA-256 -> id), which
    is then used as is. Raises ValueError (CheckpointError included) with a one-line reason
    that names the uploaded file and the field, never a server path.

    Nothing is unpickled, nothing downloaded, nothing built before the metadata passed the
    checkpoint schema (``checkpoints.validate_meta``: known names, finite values, bounded
    model size, the dataset's shapes); a dataset whose files are not on this server is
    refused. Only then are the weights (safetensors, checked against the SHA-256 in the
    metadata) loaded into the model the metadata describes. The folder name is sanitised;
    paths inside the metadata (``data_root``) are dropped."""
    import json as _json
    import secrets
    import shutil

    from normshape_core.checkpoints import (CheckpointError, atomic_write_json, load_checkpoint,
                                            sha256_bytes, validate_meta)
    from normshape_core.config import sanitize_name

    def label(name: str, default: str) -> str:  # an uploaded file's name, on one line
        return re.sub(r"[\x00-\x1f\x7f]", "?", Path(str(name)).name)[:80] or default

    meta_name, weights_name = label(meta_filename, "model.json"), label(filename, "weights")
    if len(weights) > max_upload_mb() * (1 << 20):
        raise ValueError(f"weights file is larger than {max_upload_mb()} MB")
    if weights[:2] == b"PK" or weights[:1] == b"\x80":
        raise ValueError("the weights file is a pickle / torch.save file; pickles can run "
                         "code and are never opened here. Save the weights with safetensors.")
    sha = sha256_bytes(weights)
    if known and sha in known:
        return Upload(known[sha], stored=False)
    if len(meta) > MAX_META_BYTES:
        raise ValueError(f"{meta_name}: larger than 1 MB, not a normshape model.json")
    try:
        meta_obj = _json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{meta_name}: not valid JSON ({e})") from None
    try:
        validate_meta(meta_obj, meta_name)  # before anything is written or built
    except CheckpointError as e:
        raise ValueError(f"{meta_name}: {e.problem}") from None
    dataset = meta_obj["config"]["dataset"]
    if not dataset_here(dataset):
        raise ValueError(f"{meta_name}: config.dataset: the {dataset} dataset is not available "
                         "offline on this server, and uploads never download data")
    if meta_obj["weights_sha256"] != sha:
        raise ValueError(f"{weights_name}: SHA-256 of the weights does not "
                         f"match weights_sha256 in {meta_name}: another checkpoint's weights, "
                         "or a corrupt file")
    meta_obj["config"]["data_root"] = None  # never follow a path that came with an upload
    meta_obj["config"]["device"] = "auto"
    meta_obj["weights_file"] = "model.safetensors"
    root = uploads_dir()
    root.mkdir(parents=True, exist_ok=True)
    incoming = root / f".incoming-{secrets.token_hex(4)}"
    incoming.mkdir()
    try:
        (incoming / "model.safetensors").write_bytes(weights)
        atomic_write_json(incoming / "model.json", meta_obj)
        try:
            load_checkpoint(incoming)  # format, SHA-256, shapes
        except CheckpointError as e:  # the uploaded file's name, not the temporary folder
            which = weights_name if str(e.path).endswith(".safetensors") else meta_name
            raise ValueError(f"{which}: {e.problem}") from None
        except Exception as e:  # anything else the weights can do: one line, no traceback
            raise ValueError(f"{weights_name}: the weights cannot be read "
                             f"({type(e).__name__})") from None
        name = sanitize_name(str(meta_obj.get("run_name") or Path(filename).stem))[:80]
        dest = root / f"{name}-{sha[:8]}"
        if (dest / "model.json").exists():  # the same weights were uploaded before
            shutil.rmtree(incoming)
            return Upload(dest.name, stored=False)
        os.replace(incoming, dest)
        return Upload(dest.name, stored=True)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


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
        """A few words for a figure title: method, training mode, ratio."""
        c = self.config
        if c["method"] == "natural":
            return "natural"
        mode = {"none": "adv only", "train": "shaping in training",
                "attack+train": "shaping"}[c["shaping"]]
        if c["shaping"] != "none":
            mode += f" {c['ratio']}"
        polluted = ", polluted PN" if c.get("polluted_running_stats") else ""
        return f"{c['method'].upper()} {mode}{polluted}"

    def column_name(self) -> str:
        """A column header that tells checkpoints apart: run name and training label."""
        return f"{self.id} ({self.tag()})"

    def short(self) -> str:
        """dataset / method / training mode / ratio, in the paper's words."""
        c = self.config
        if c["method"] == "natural":
            mode = "natural"
        else:
            mode = {"none": "adv only", "train": "shaping in training",
                    "attack+train": "shaping in attack+training"}[c["shaping"]]
            if c["shaping"] != "none":
                mode += f" {c['ratio']}"
            mode = f"{c['method'].upper()}, {mode}"
        st_ = self.meta.get("stopped")  # a stopped background run's kept epoch
        stop = (f", stopped at epoch {st_.get('epoch')}/{st_.get('epochs')}"
                if isinstance(st_, dict) else "")
        return f"{c['dataset']}: {mode}, eps {eps_text(c)}{stop}"


def eps_text(config: Dict[str, Any]) -> str:
    """A training config's eps (none for a natural run that never set it)."""
    return "-" if config.get("eps") is None else f"{config['eps']:g}"


def _signature(dirs: Sequence[Path]) -> Tuple:
    """Cheap fingerprint of the checkpoint folders: each model.json path and mtime."""
    sig = []
    for d in dirs:
        if d.is_dir():
            for p in d.rglob("model.json"):
                try:
                    sig.append((str(p), p.stat().st_mtime_ns))
                except OSError:
                    pass
    return tuple(sorted(sig))


@st.cache_data(show_spinner=False)
def _scan(dirs: Tuple[str, ...], signature: Tuple) -> Tuple[List[Ckpt], List[str]]:
    from normshape_core.checkpoints import find_checkpoints

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


def checkpoint_by_id(cid: str) -> Optional[Ckpt]:
    return next((c for c in checkpoints() if c.id == cid), None)


@st.cache_resource(show_spinner=False, max_entries=32)
def _load_model(path: str, sha: str):
    from normshape_core.checkpoints import CheckpointError, load_checkpoint

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
    from normshape_core.data import load_dataset as _load

    require_dataset_here(name)
    return _load(name, seed=0, download=False)


def device_text() -> str:
    import torch

    from normshape_core.config import parse_device

    dev = parse_device("auto")
    extra = ""
    if dev.type == "cuda":
        extra = f" ({torch.cuda.get_device_name(0)})"
    return f"{dev.type}{extra}, {torch.get_num_threads()} torch threads"


def _user_errors() -> Tuple[type, ...]:
    from normshape_core.checkpoints import CheckpointError
    from normshape_core.config import ConfigError
    from normshape_core.data import DatasetUnavailable

    return (CheckpointError, ConfigError, DatasetUnavailable)


#: Errors that are the data's fault, not the app's: shown as a message, never a traceback.
USER_ERRORS = _user_errors()


@st.cache_resource(show_spinner=False)
def warm_umap_in_background():
    """Compile UMAP's numba code once per server process in a background thread (no
    Streamlit calls in it), so the first UMAP map a user asks for takes about a second
    instead of 15-20 s. ``NORMSHAPE_WARM_UMAP=0`` turns it off."""
    import threading

    if os.environ.get("NORMSHAPE_WARM_UMAP", "1") == "0":
        return None

    def work():
        import numpy as np

        from normshape_core.projections import embed_2d

        try:
            embed_2d(np.random.default_rng(0).normal(size=(40, 8)).astype("float32"), "umap")
        except Exception:  # the page will report a real failure when it is asked for
            pass

    t = threading.Thread(target=work, name="normshape-umap-warmup", daemon=True)
    t.start()
    return t


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


# Written out rather than imported: importing normshape_core.config or .data loads torch,
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
    "ratios_train": url_many(), "ratios_infer": url_many(*INFERENCE_RATIOS),
    "ratios_n": url_one(100, 200, 500, 1000), "ratios_steps": url_one(10, 20, 50),
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
    "cmp_n": url_one(100, 200, 500, 1000), "cmp_bn": url_bool(),
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
        ("ratio", url_one("1:1", "1:2", "1:3", "1:5", "1:9")))},
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
    import json as _json

    out: Dict[str, Dict[str, float]] = {}
    try:
        results = _json.loads(Path(path).read_text())
        n_worst = results.get("n_test_worst", results.get("n_test"))
        for entry in results.get("runs", {}).values():
            for r in entry.get("rows", []):
                if r.get("attack") == "worst_case" and r.get("n") == n_worst and \
                        r.get("ratio") in (None, "1:9"):
                    key = "shaped 1:9" if r.get("ratio") == "1:9" else r["classified_with"]
                    out.setdefault(entry["weights_sha256"], {})[key] = r["robust_acc"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
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


# ---------------------------------------------------------------- page furniture
def presenting() -> bool:
    """The presentation toggle (sidebar, in the URL as ``present``); before the toggle has
    run, the URL says."""
    if "present" in st.session_state:
        return bool(st.session_state["present"])
    return str(st.query_params.get("present", "")).lower() in ("true", "1")


#: presentation mode: every text larger (Streamlit sizes in rem), the page edge to edge
PRESENT_CSS = """<style>
html { font-size: clamp(19px, 1.3vw, 28px); }
[data-testid=stMainBlockContainer] { padding: 3.6rem 2rem 2rem 2rem; max-width: 100%; }
[data-testid=stCaptionContainer] { font-size: 0.95rem; }
[data-testid=stMain] h2 { font-size: 2.1rem; padding: 0.4rem 0 0.2rem 0; }
[data-testid=stMain] h4 { font-size: 1.45rem; }
</style>"""


def presentation_setup() -> None:
    """Presentation mode (called by app.py after the toggle): the sidebar collapsed, the
    text enlarged."""
    if presenting():
        st.set_page_config(initial_sidebar_state="collapsed")
        st.html(PRESENT_CSS)


def settings_block(label: str = "Settings"):
    """Where a page puts its settings: a bordered box, or a closed expander when presenting."""
    if presenting():
        return st.expander(f"{label} (hidden in presentation mode)", expanded=False)
    return st.container(border=True)


def explain(text: str) -> None:
    """An explanatory paragraph; kept short when presenting (shown as a caption)."""
    if presenting():
        st.caption(text)
    else:
        st.markdown(text)


def wrap_title(text: str, width: int) -> str:
    """Break a title's lines (``<br>``-separated; tags do not count) at spaces so that none
    is longer than ``width`` characters (a ``<sup>`` line, in smaller type, 1.4 x)."""
    out = []
    # spaces inside a tag (<span style='...'>) are not places to break
    text = re.sub(r"<[^>]*>", lambda m: m.group(0).replace(" ", "\0"), text)
    for line in text.split("<br>"):
        words, cur, n = line.split(" "), [], 0
        limit = int(width * 1.4) if line.lstrip().startswith("<sup>") else width
        for w in words:
            vis = len(re.sub(r"<[^>]+>", "", w))
            if cur and n + 1 + vis > limit:
                out.append(" ".join(cur))
                cur, n = [], 0
            cur.append(w)
            n += vis + (1 if n else 0)
        out.append(" ".join(cur))
    # a continued <sup>/<sub> line keeps its tag
    for i in range(1, len(out)):
        for tag in ("sup", "sub"):
            prev = out[i - 1]
            still_open = prev.rfind(f"<{tag}>") > prev.rfind(f"</{tag}>")
            if still_open and not out[i].startswith(f"<{tag}>"):
                out[i - 1] += f"</{tag}>"
                out[i] = f"<{tag}>" + out[i]
    return "<br>".join(out).replace("\0", " ")


def _axes(fig, letter: str):
    return [getattr(fig.layout, k) for k in fig.layout if re.fullmatch(letter + r"axis\d*", k)]


def style(fig, *, title: Optional[str] = None, height: int = 420, legend: bool = True,
          columns: int = 1):
    """Common look of every figure, legible at 1400 px and, presenting, at 1024x768 and
    1920x1080: the title wrapped to the chart's width (``columns``: charts side by side) with
    room above the plot for it and for a horizontal legend (never over the data), axis
    titles inside the figure (automatic margins), tick labels that do not collide, bar
    charts' y-axes from 0 and any other cut-off axis marked; larger when presenting."""
    present = presenting()
    scale = 1.35 if present else 1.0
    title = title if title is not None else (fig.layout.title.text or None)
    width = max(24, int((68 if present else 96) / max(1, columns)))
    lines = 0
    if title:
        title = wrap_title(title, width)
        lines = title.count("<br>") + 1
    has_frames = bool(fig.frames) or bool(fig.layout.sliders)
    n_legend = sum(1 for t in fig.data if t.showlegend is not False and t.name)
    legend = legend and n_legend > 0
    legend_rows = 0
    if legend and fig.layout.legend.x is None and fig.layout.legend.y is None:
        names = sum(len(str(t.name)) + 4 for t in fig.data if t.name)
        legend_rows = 1 + int(names * 1.1 > width)
        legend_title = fig.layout.legend.title.text
        if legend_title:
            names += len(str(legend_title))
            legend_rows = 1 + int(names * 1.1 > width)
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=1.0,
                                      yanchor="bottom"))
    title_px = 16 * scale
    # the title's height: about 1.25 x its font per line, 1.05 x per <sup> line (measured in
    # Chromium), under a pad; then the legend's rows
    sups = title.count("<sup>") if title else 0
    title_h = (lines - sups) * 1.25 * title_px + sups * 1.05 * title_px
    top = int((14 * scale + title_h if title else 10) + legend_rows * 1.7 * 12 * scale
              + 10 * scale)
    fig.update_layout(template="plotly_white", height=int(height * scale),
                      font=dict(size=int(13 * scale)),
                      margin=dict(l=60, r=20, t=max(top, 30), b=55 + (90 if has_frames else 0)),
                      showlegend=legend, legend=dict(font=dict(size=int(12 * scale))))
    # subplot titles are annotations: keep them at the body size
    for ann in fig.layout.annotations or ():
        if ann.font.size is None:
            ann.font.size = int(13 * scale)
    for ax in _axes(fig, "x") + _axes(fig, "y"):
        ax.automargin = True
        ax.title.standoff = 8
    # an axis title longer than its axis would run into the chart's title or out of the
    # chart: wrap it (the chart's width: the narrowest supported screen, 1024 presenting
    # or 1400 with the sidebar, about 940 px of content, shared by ``columns`` charts)
    bottom = 55 + (90 if has_frames else 0)
    plot_h = height * scale - max(top, 30) - bottom
    plot_w = 940 / max(1, columns) - 90
    char_px = 0.6 * 13 * scale
    for ax, size in [(a, plot_h) for a in _axes(fig, "y")] + [(a, plot_w) for a in _axes(fig, "x")]:
        text = ax.title.text
        dom = ax.domain or (0, 1)
        room = size * (dom[1] - dom[0]) * 0.95
        if text and "<br>" not in text and len(text) * char_px > room:
            ax.title.text = wrap_title(text, max(12, int(room / char_px)))
    bar_axes = {getattr(t, "yaxis", None) or "y" for t in fig.data if t.type == "bar"}
    for name in list(fig.layout):
        m = re.fullmatch(r"yaxis(\d*)", name)
        if not m:
            continue
        ax = getattr(fig.layout, name)
        ref = "y" + m.group(1)
        rng = ax.range
        if ref in bar_axes and ax.type in (None, "linear", "-"):
            if rng is not None and rng[0] is not None and rng[0] > 0:
                ax.range = [0, rng[1]]
            elif rng is None:
                ax.rangemode = "tozero"
        elif rng is not None and rng[0] is not None and rng[0] > 0 and ax.type != "log":
            fig.add_annotation(text=f"axis from {rng[0]:g}", xref="paper",
                               yref=f"{ref} domain", x=0, y=0, xanchor="left",
                               yanchor="bottom", showarrow=False,
                               font=dict(size=int(11 * scale), color="#666"))
    if title is not None:
        # anchored at the top, plotly lifts a title of several lines by about 0.7 x its font
        first_line = (0.72 * title_px if lines > 1 else 0) / (height * scale)
        fig.update_layout(title=dict(text=title, font=dict(size=int(16 * scale)), x=0.01,
                                     xanchor="left", y=1.0 - first_line, yref="container",
                                     yanchor="top", pad=dict(t=int(8 * scale))))
    return fig


def show(fig, key: str, **style_kw) -> None:
    st.plotly_chart(style(fig, **style_kw), key=key, width="stretch", theme=None,
                    config={"displaylogo": False})


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
    """Sort key: 2-D sets first, then plain adversarial training (adv only), then shaped."""
    cfg = c.config
    return (not c.is_2d, bool(cfg.get("polluted_running_stats")), cfg["method"] == "natural",
            cfg["method"] != "pgd", cfg["shaping"] != "none", c.id)


def prefer_2d_shaped(c: Ckpt):
    """Sort key: 2-D sets first, then PGD + shaping in attack and training at 1:3."""
    cfg = c.config
    return (not c.is_2d, bool(cfg.get("polluted_running_stats")), cfg["method"] == "natural",
            cfg["method"] != "pgd", cfg["shaping"] != "attack+train", cfg["ratio"] != "1:3",
            c.id)


def no_checkpoints_message(what: str = "checkpoints") -> None:
    dirs = ", ".join(folder_label(d) for d in checkpoint_dirs())
    st.info(f"No {what} found in {dirs}. Train one on the **Train** page (a moons run takes "
            "about ten seconds), or point `NORMSHAPE_CHECKPOINT_DIRS` at a folder of run folders.")


# ---------------------------------------------------------------- metric names
def metric_label(key: str) -> str:
    """``test/robust_acc_pgd10_pn_pn`` -> ``robust acc. PGD-10 (crafted PN, classified PN)``."""
    k = key.split("/", 1)[-1]
    if k.startswith("clean_acc_"):
        return f"clean acc. (classified {k[len('clean_acc_'):].upper()})"
    if k.startswith("robust_acc_"):
        parts = k[len("robust_acc_"):].split("_")
        if len(parts) == 3:
            attack, crafted, classified = parts
            name = attack.upper().replace("PGD", "PGD-") if attack[3:].isdigit() else attack
            return (f"robust acc. {name} (crafted {crafted.upper()}, "
                    f"classified {classified.upper()})")
    return k.replace("_", " ")


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


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "warm":
        print("usage: python -m normshape_app.ui warm [CHECKPOINT_DIR ...]", file=sys.stderr)
        sys.exit(2)
    warm(sys.argv[2:] or None)
