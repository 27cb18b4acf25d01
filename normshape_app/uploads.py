"""Importing an uploaded checkpoint (weights + JSON): size limits, validation by the core's
schema, written atomically into the uploads folder; never unpickled."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import streamlit as st

from normshape_core.base.names import META_NAME, WEIGHTS_NAME
from normshape_app.inventory import checkpoints, dataset_here, uploads_dir
from normshape_app.style import md_code, md_escape, message_text


def max_upload_mb() -> int:
    """Largest accepted upload per file, in MB: Streamlit's ``server.maxUploadSize``, set in
    ``.streamlit/config.toml`` beside ``app.py`` (256: a wide ResNet-34-10 is about 185 MB), so
    the server, the upload widget and the check below always agree."""
    return int(st.get_option("server.maxUploadSize"))


#: the largest uploaded model.json accepted (a normshape one is a few kB); smaller than
#: ``files.MAX_META_BYTES`` (what the core reads from disk, resume states included), since
#: it comes from anyone who can reach the page and is parsed in the server's memory
MAX_UPLOAD_META_BYTES = 1 << 20


@dataclass(frozen=True)
class Upload:
    """An accepted upload: the checkpoint's id on the pages, and whether it was stored (False:
    the same weights were already there, under ``name``)."""

    name: str
    stored: bool


def import_checkpoint(weights: bytes, meta: bytes, filename: str = "upload",
                      known: Optional[Dict[str, str]] = None,
                      meta_filename: str = META_NAME) -> Upload:
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

    from normshape_core.training.checkpoints import (CheckpointError, atomic_write_json,
                                                     load_checkpoint, sha256_bytes, validate_meta)
    from normshape_core.settings.config import sanitize_name

    def label(name: str, default: str) -> str:  # an uploaded file's name, on one line
        return re.sub(r"[\x00-\x1f\x7f]", "?", Path(str(name)).name)[:80] or default

    meta_name, weights_name = label(meta_filename, META_NAME), label(filename, "weights")
    if len(weights) > max_upload_mb() * (1 << 20):
        raise ValueError(f"weights file is larger than {max_upload_mb()} MB")
    if weights[:2] == b"PK" or weights[:1] == b"\x80":
        raise ValueError("the weights file is a pickle / torch.save file; pickles can run "
                         "code and are never opened here. Save the weights with safetensors.")
    sha = sha256_bytes(weights)
    if known and sha in known:
        return Upload(known[sha], stored=False)
    if len(meta) > MAX_UPLOAD_META_BYTES:
        raise ValueError(f"{meta_name}: larger than {MAX_UPLOAD_META_BYTES >> 20} MB, not a "
                         f"normshape {META_NAME}")
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
    meta_obj["weights_file"] = WEIGHTS_NAME
    root = uploads_dir()
    root.mkdir(parents=True, exist_ok=True)
    incoming = root / f".incoming-{secrets.token_hex(4)}"
    incoming.mkdir()
    try:
        (incoming / WEIGHTS_NAME).write_bytes(weights)
        atomic_write_json(incoming / META_NAME, meta_obj)
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
        if (dest / META_NAME).exists():  # the same weights were uploaded before
            shutil.rmtree(incoming)
            return Upload(dest.name, stored=False)
        os.replace(incoming, dest)
        return Upload(dest.name, stored=True)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


def upload_pair(names) -> "tuple[Optional[int], Optional[int], list]":
    """Which of the uploaded file names are the weights and the metadata: (index of the
    .safetensors file, index of its .json, [names that are not expected]). The metadata is
    the .json whose name matches the weights' (``model.json`` beside ``model.safetensors``),
    else the one .json that is not an evaluation cache (``*.eval.json``); every other file
    is unexpected."""
    names = [str(n) for n in names]
    weights = [i for i, n in enumerate(names) if n.lower().endswith(".safetensors")]
    jsons = [i for i, n in enumerate(names) if n.lower().endswith(".json")]
    w = weights[0] if len(weights) == 1 else None
    stem = names[w][:-len(".safetensors")].lower() if w is not None else None
    meta = [i for i in jsons if names[i][:-len(".json")].lower() == stem] or \
        [i for i in jsons if not names[i].lower().endswith(".eval.json")] or jsons
    m = meta[0] if len(meta) == 1 else None
    unexpected = [n for i, n in enumerate(names) if i not in (w, m)]
    return w, m, unexpected


def _upload_message(kind: str, text: str) -> None:
    st.session_state.cmp_upload_result = (kind, text)


def upload_section() -> None:
    """The upload box (Compare): one .safetensors + its .json, checked, stored once. After
    each attempt the box is cleared (a new widget key) and the outcome is said above it."""
    limit = max_upload_mb()  # the server's limit (.streamlit/config.toml), said once here
    st.markdown("**Upload a checkpoint** (`model.safetensors` + `model.json`, as written by "
                f"normshape; up to {limit} MB per file). It is checked before use: metadata "
                "that passes the checkpoint schema (known dataset, model and settings, a "
                "bounded model size, a dataset present on this server), weights that match "
                "their SHA-256 and fit the model. Pickle files are refused, never opened.")
    done = st.session_state.pop("cmp_upload_result", None)
    if done is not None:  # the last attempt's outcome, kept across the box's reset
        (st.success if done[0] == "success" else st.error)(done[1])
    attempt = st.session_state.setdefault("cmp_upload_attempt", 0)
    st.caption("A model of your own (your code, any architecture with BatchNorm) is not "
               "uploaded here, where no uploaded code ever runs: evaluate it on your machine "
               "with `normshape evaluate --model package.module:factory --weights FILE "
               "--data FILE.npz` (README, \"Evaluate your own model\").")
    files = st.file_uploader("Checkpoint files", type=["safetensors", "json"],
                             accept_multiple_files=True, key=f"cmp_upload_{attempt}",
                             max_upload_size=limit,
                             help=f"At most {limit} MB per file: larger files are refused by "
                                  "the upload box itself.")
    if not files:
        return
    st.session_state.cmp_upload_attempt = attempt + 1  # the next run shows an empty box
    _upload_message(*_import_files(files))
    st.rerun()


def _import_files(files) -> "tuple[str, str]":
    """(kind, message) of one upload attempt: "success" or "error"."""
    w, m, unexpected = upload_pair([f.name for f in files])
    if unexpected or w is None or m is None:
        which = "; ".join(f"{md_escape(n)} is not expected" for n in unexpected)
        return "error", (f"Not accepted: {which + '. ' if which else ''}Upload exactly one "
                         ".safetensors file and its .json metadata (the model.json written "
                         "beside it), nothing else.")
    try:
        up = import_checkpoint(files[w].getvalue(), files[m].getvalue(), files[w].name,
                               known={c.sha: c.id for c in checkpoints()},
                               meta_filename=files[m].name)
    except (ValueError, OSError) as e:  # OSError: the uploads folder cannot be written
        return "error", f"Not accepted: {message_text(e)}"
    if up.stored:
        return "success", (f"Accepted and stored as {md_code(up.name)}: it is now listed on "
                           "every page.")
    return "success", (f"Accepted: these weights are those of {md_code(up.name)} (same "
                       "SHA-256), already listed on every page; nothing was stored again.")
