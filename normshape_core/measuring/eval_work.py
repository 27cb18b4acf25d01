"""An evaluation's work, kept so that a killed evaluation resumes where it stopped and ends
with the same numbers as one that ran through.

An evaluation is a list of *units* (the clean pass over one test batch; one attack on one
batch; one member of a worst-case ensemble on one batch; the defender's final re-check of one
batch). Each finished unit leaves a small JSON record (counts, per-sample masks as hex,
seconds); a worst-case unit also leaves the batch's current examples. Every number the
evaluation reports is computed from the records, so a resumed evaluation, which replays the
records of the units done before the kill and runs the rest, reports what an uninterrupted
one reports (each unit is deterministic given the state before it: attacks draw their
randomness from their own seeded generators).

On disk (``work_dir``): ``work.json`` (the evaluation's key: a different evaluation in the
same folder starts afresh), ``units.jsonl`` (one record per line, appended and fsynced; a
torn last line from a kill is ignored) and ``ens<k>_b<b>_m<m>.safetensors`` (the examples of
ensemble k on batch b after its member m, written atomically before the unit's record, so
the record never names a file that is not there; the state before m is removed only after
m's record is written). Without a folder the records stay in
memory. Fault-injection points (``faults.py``): ``eval.unit`` (n: the n-th record this
process writes) for the kill tests.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..base.faults import fault_point

WORK_FILE = "work.json"
UNITS_FILE = "units.jsonl"
WORK_FORMAT = "normshape-evaluation-work"
#: a record line longer than this is not ours (a 1,000-sample batch's masks are ~1 kB)
MAX_RECORD_BYTES = 1 << 20


class WorkStore:
    """The records (and ensemble states) of one evaluation, in memory or in ``folder``."""

    def __init__(self, folder: Union[None, str, Path], key: str):
        self.folder = Path(folder) if folder else None
        self.key = key
        self.records: Dict[str, Dict[str, Any]] = {}
        self.written = 0
        self.resumed = 0
        self._lock_fd: Optional[int] = None
        if self.folder is not None:
            self._lock()
            self._open()

    def _lock(self) -> None:
        """One process per work folder: a second evaluation of the same thing is refused
        (``fcntl.flock``, released when the process ends in any way)."""
        import fcntl

        from ..settings.config import ConfigError

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"this evaluation is already running in another process (its "
                              f"work folder {self.folder} is in use); wait for it, its "
                              f"results will be cached") from None
        self._lock_fd = fd

    # ------------------------------------------------------------------ disk
    def _open(self) -> None:
        f = self.folder
        f.mkdir(parents=True, exist_ok=True)
        work = f / WORK_FILE
        info = None
        if work.is_file() and work.stat().st_size < 1 << 16:
            try:
                info = json.loads(work.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                info = None
        if not (isinstance(info, dict) and info.get("format") == WORK_FORMAT
                and info.get("key") == self.key):
            self._wipe()
            from ..training.checkpoints import atomic_write_json

            atomic_write_json(work, {"format": WORK_FORMAT, "key": self.key})
            return
        units = f / UNITS_FILE
        if units.is_file():
            with open(units, "rb") as fh:
                for line in fh:
                    if len(line) > MAX_RECORD_BYTES or not line.endswith(b"\n"):
                        break  # a torn last line: the unit is done again
                    try:
                        rec = json.loads(line)
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        break
                    if isinstance(rec, dict) and isinstance(rec.get("unit"), str):
                        self.records[rec["unit"]] = rec
            self._rewrite_units()  # drop a torn tail so that appends start on a fresh line
        self.resumed = len(self.records)

    def _wipe(self) -> None:
        for p in self.folder.iterdir():
            if p.is_file() and (p.name in (WORK_FILE, UNITS_FILE) or p.suffix == ".safetensors"
                                or p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)

    def _rewrite_units(self) -> None:
        from ..training.checkpoints import atomic_write_bytes

        text = "".join(json.dumps(r, separators=(",", ":")) + "\n"
                       for r in self.records.values())
        atomic_write_bytes(self.folder / UNITS_FILE, text.encode())

    # ------------------------------------------------------------------ records
    def done(self, unit: str) -> bool:
        return unit in self.records

    def get(self, unit: str) -> Optional[Dict[str, Any]]:
        return self.records.get(unit)

    def add(self, unit: str, record: Dict[str, Any]) -> None:
        self.add_many([(unit, record)])

    def add_many(self, items) -> None:
        """Records of several units, appended in one write (all of them or, after a kill,
        none: a torn last line is dropped when the folder is read again)."""
        lines = []
        for unit, record in items:
            rec = {"unit": unit, **record}
            self.records[unit] = rec
            lines.append(json.dumps(rec, separators=(",", ":")) + "\n")
        if self.folder is None:
            return
        with open(self.folder / UNITS_FILE, "ab") as fh:
            fh.write("".join(lines).encode())
            fh.flush()
            os.fsync(fh.fileno())
        self.written += 1
        fault_point("eval.unit", self.written)

    # ------------------------------------------------------------------ ensemble states
    def _state_path(self, k: int, b: int, m: int) -> Path:
        return self.folder / f"ens{k}_b{b}_m{m}.safetensors"

    def save_state(self, k: int, b: int, m: int, x_adv: torch.Tensor) -> None:
        """The examples of ensemble k on batch b after member m (before m's record)."""
        if self.folder is None:
            return
        from safetensors.torch import save

        from ..training.checkpoints import atomic_write_bytes

        atomic_write_bytes(self._state_path(k, b, m),
                           save({"x_adv": x_adv.detach().contiguous().cpu()}))

    def prune_states(self, k: int, b: int, m: int) -> None:
        """Remove batch b's earlier states of ensemble k once member m's record is written
        (until then a resume needs the state before m)."""
        if self.folder is None:
            return
        for old in self.folder.glob(f"ens{k}_b{b}_m*.safetensors"):
            if old.name != self._state_path(k, b, m).name:
                old.unlink(missing_ok=True)

    def load_state(self, k: int, b: int, m: int) -> torch.Tensor:
        from safetensors.torch import load

        path = self._state_path(k, b, m)
        if self.folder is None or not path.is_file():
            raise FileNotFoundError(path)
        return load(path.read_bytes())["x_adv"]

    def close(self) -> None:
        """Release the folder's lock (the records stay)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def finish(self) -> None:
        """The evaluation is complete (its numbers are stored): remove the folder."""
        self.close()
        if self.folder is not None:
            self.remove(self.folder)

    @staticmethod
    def remove(folder: Union[str, Path]) -> None:
        folder = Path(folder)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def hex_mask(mask: torch.Tensor) -> str:
    from ..base.stats import pack_mask

    return pack_mask(mask.detach().cpu().tolist())


def mask_of(text: str, n: int, device=None) -> torch.Tensor:
    from ..base.stats import unpack_mask

    return torch.tensor(unpack_mask(text, n), dtype=torch.bool, device=device)
