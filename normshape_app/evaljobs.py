"""Evaluations the app asks for, answered cell by cell from the stored results.

An evaluation's rows are a set of **cells**: one attack (or one ensemble's worst case) under
one inference mode (``pn``, ``bn``, ``shaped:R``), everything else in the settings being
equal (samples, seed, eps, steps, budgets, crafting norms). A cell's numbers do not depend on
which other cells were computed with it: every attack and every classifier is seeded on its
own, so the cell of a joint evaluation (the reproduction's ``pgd, cw, fgsm, deepfool,
shaping`` on 397 samples) is the cell a single evaluation computes (the shipped results agree
on each of their 400 or so repeated cells). :func:`stored` therefore answers a request from
every cached evaluation of the checkpoint (the shipped results beside it and the user's
folder) whose settings match, and names the cells still missing; :func:`missing_settings`
turns those into the smallest evaluation that computes them.

Nothing here imports Streamlit; torch is imported only through the evaluation module.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import pandas as pd

#: the settings that say which cells an evaluation holds; every other setting must be equal
LISTS = ("attacks", "ensembles", "classify")


@dataclass(frozen=True)
class Cell:
    """One attack (``kind="attack"``) or one ensemble's worst case and its members
    (``kind="ensemble"``) under one inference mode (``classify``: pn, bn, shaped:R)."""

    kind: str
    name: str
    classify: str


@dataclass
class Stored:
    """What the stored results hold of a request: the rows found (in the evaluation's own
    columns), the cells still missing, and the warnings of the entries used."""

    rows: pd.DataFrame
    missing: List[Cell]
    warnings: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


def normalized(meta: Dict[str, Any], settings: Dict[str, Any]):
    """The ``EvalSettings`` that ``evaluation.evaluate_checkpoint`` makes of ``settings`` for
    a checkpoint with metadata ``meta`` (eps defaults to the training eps; attack names split
    into single attacks and ensembles; inference modes and crafting norms parsed)."""
    from normshape_core.measuring import evaluation as E

    settings = dict(settings)
    if settings.get("eps") is None:  # as evaluate_checkpoint: the training eps, else 8/255
        settings["eps"] = (meta.get("config") or {}).get("eps") or 8 / 255
    values = E.EvalSettings().to_dict()
    unknown = set(settings) - set(values)
    if unknown:
        raise TypeError(f"unknown evaluation settings: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in settings.items() if v is not None})
    s = E.EvalSettings(**values)
    singles, found = E.split_attacks(s.attacks) if s.attacks else ([], [])
    for e in s.ensembles:
        spec = E.ensemble_spec(e)
        if spec not in found:
            found.append(spec)
    s.attacks, s.ensembles = singles, found
    s.classify = E.parse_classify(s.classify)
    s.craft = E._parse_craft(s.craft)
    return s


def cells_of(s) -> List[Cell]:
    """The cells of normalised settings, in the evaluation's order."""
    return ([Cell("attack", a, c) for a in s.attacks for c in s.classify]
            + [Cell("ensemble", e, c) for e in s.ensembles for c in s.classify])


def _base(d: Dict[str, Any]) -> Dict[str, Any]:
    """The settings every cell of an entry shares (missing keys: the defaults)."""
    from normshape_core.measuring.evaluation import EvalSettings

    out = EvalSettings().to_dict()
    out.update(d)
    for k in LISTS:
        out.pop(k, None)
    out["craft"] = [str(c).lower() for c in out.get("craft") or ["pn"]]
    return out


def _ratio_text(spec: str) -> Optional[str]:
    from normshape_core.settings.config import Ratio

    return str(Ratio.parse(spec.split(":", 1)[1])) if spec.startswith("shaped:") else None


def classifier_label(spec: str, group_size: Optional[int] = None, norm: str = "bn") -> str:
    """What the evaluation's rows say in ``classified_with`` for inference mode ``spec``
    (``"shaped:1:9"`` -> ``"shaped 1:9 (g=10)"``; ``norm``: the model's), before anything is
    computed."""
    from normshape_core.inference.alternatives import describe_spec

    r = _ratio_text(spec)
    if r is not None and group_size:
        return f"shaped {r} (g={group_size})"
    return describe_spec(spec, norm)


def _row_is(row: Dict[str, Any], spec: str, norm: str = "bn") -> bool:
    """Whether an evaluation row was classified with inference mode ``spec``."""
    r = _ratio_text(spec)
    if r is not None:
        return row.get("ratio") is not None and str(row.get("ratio")) == r
    return row.get("classified_with") == classifier_label(spec, norm=norm)


def cache_entries(checkpoint: Union[str, Path], weights_sha256: str) -> List[Dict[str, Any]]:
    """Every cached evaluation of the checkpoint by the current engine: beside it (the
    shipped results) first, then the user's folder; only entries of these weights whose key
    is the one ``evaluate_checkpoint`` gives their settings now (an entry of another engine
    version, ``evaluation.ENGINE_VERSION`` in the key, is not read)."""
    from normshape_core.measuring.evaluation import (BESIDE, EvalSettings, _cache_key, _read_cache,
                                                     cache_path_for)

    paths = [cache_path_for(checkpoint, BESIDE)]
    try:
        paths.append(cache_path_for(checkpoint, None, weights_sha256))
    except Exception:  # noqa: BLE001 - no user folder: the shipped results only
        pass
    out = []
    for p in paths:
        for key, entry in _read_cache(Path(p))["entries"].items():
            if not (isinstance(entry, dict) and entry.get("weights_sha256") == weights_sha256
                    and isinstance(entry.get("settings"), dict)
                    and isinstance(entry.get("rows"), list)):
                continue
            try:
                now = _cache_key(weights_sha256, EvalSettings(**{**EvalSettings().to_dict(),
                                                                 **entry["settings"]}))
            except TypeError:  # settings this engine does not know
                continue
            if now == key:
                out.append(entry)
    return out


def stored(checkpoint: Union[str, Path], settings: Dict[str, Any],
           meta: Optional[Dict[str, Any]] = None) -> Stored:
    """The rows of ``settings`` (as given to ``evaluate_checkpoint``) that the stored results
    already hold, cell by cell, and the cells still missing. The weights on disk must be the
    ones the metadata names (else nothing is found)."""
    from normshape_core.training.checkpoints import read_meta
    from normshape_core.measuring.evaluation import ROW_KEYS, _df_from_rows, ensemble_label

    meta = meta or read_meta(checkpoint)
    sha = meta["weights_sha256"]
    norm = (meta.get("config") or {}).get("norm", "bn")
    s = normalized(meta, settings)
    want = _base(s.to_dict())
    entries = [e for e in cache_entries(checkpoint, sha) if _base(e["settings"]) == want]
    if entries and not weights_match(checkpoint, sha):
        entries = []
    rows: List[Dict[str, Any]] = []
    missing: List[Cell] = []
    warnings: List[str] = []
    for cell in cells_of(s):
        for e in entries:
            es = e["settings"]
            names = es.get("ensembles" if cell.kind == "ensemble" else "attacks") or []
            if cell.name not in names or cell.classify not in (es.get("classify") or []):
                continue
            if cell.kind == "ensemble":
                label = ensemble_label(cell.name)
                rows += [r for r in e["rows"] if r.get("ensemble") == label
                         and _row_is(r, cell.classify, norm)]
            else:
                rows += [r for r in e["rows"] if r.get("attack") == cell.name
                         and not r.get("ensemble") and _row_is(r, cell.classify, norm)]
            if set(es.get("attacks") or []) <= set(s.attacks) and \
                    set(es.get("ensembles") or []) <= set(s.ensembles):
                warnings += [w for w in e.get("warnings", []) if w not in warnings]
            break
        else:
            missing.append(cell)
    df = _df_from_rows([{k: r.get(k) for k in ROW_KEYS} for r in rows])
    return Stored(df, missing, warnings)


def missing_settings(settings: Dict[str, Any], missing: Sequence[Cell]) -> Dict[str, Any]:
    """``settings`` narrowed to the attacks, ensembles and inference modes of the missing
    cells: the evaluation that computes them (and perhaps a few cells already stored)."""
    out = dict(settings)
    out["attacks"] = list(dict.fromkeys(c.name for c in missing if c.kind == "attack"))
    out["ensembles"] = list(dict.fromkeys(c.name for c in missing if c.kind == "ensemble"))
    out["classify"] = list(dict.fromkeys(c.classify for c in missing))
    return out


def combined(found: pd.DataFrame, computed: pd.DataFrame) -> pd.DataFrame:
    """The rows found and the rows computed, one per (attack, ensemble, crafting norms,
    classifier)."""
    parts = [d for d in (found, computed) if len(d)]
    if not parts:
        return found
    df = pd.concat(parts, ignore_index=True)
    return df.drop_duplicates(subset=["attack", "ensemble", "crafted_with",
                                      "classified_with"]).reset_index(drop=True)


@functools.lru_cache(maxsize=256)
def _sha_of(path: str, size: int, mtime_ns: int) -> str:
    from normshape_core.training.checkpoints import sha256_file

    return sha256_file(Path(path))


def weights_match(checkpoint: Union[str, Path], sha: str) -> bool:
    """Whether the weights file on disk has SHA-256 ``sha`` (each file hashed once per size
    and modification time)."""
    from normshape_core.training.checkpoints import resolve_paths

    weights = resolve_paths(checkpoint)[0]
    try:
        st = weights.stat()
    except OSError:
        return False
    return _sha_of(str(weights), st.st_size, st.st_mtime_ns) == sha


# ====================================================================== background jobs
# An evaluation that is not stored runs as a background job, like a training run
# (``normshape_app.jobs``: a worker process per job, its state on disk, status.json rewritten
# atomically; the helpers are that module's). One job per evaluation: its folder is named by
# the evaluation's cache key (the weights' SHA-256 and the settings' fingerprint) and created
# exclusively, so two sessions asking for the same evaluation find the same job. Its folder:
#
# - ``job.json``    the checkpoint, the settings asked, the key, when (written once);
# - ``status.json`` queued -> running -> finished | failed (a dead worker reads as lost), the
#                   progress (steps done of all), and per classifier the ensemble's anytime
#                   bound, ``<= 0.460 after apgd; apgd_t, square to go``, while it tightens;
# - ``work/``       the evaluation's partial state (``evaluate_checkpoint(work_dir=...)``),
#                   from which a worker started again after a kill resumes;
# - ``worker.log``, ``worker.pid``.
#
# The results go to the user's evaluation cache, where :func:`stored` finds them.
JOB_STATES = ("queued", "running", "finished", "failed", "lost")
#: at most this many evaluation workers at once (``NORMSHAPE_MAX_EVAL_JOBS``); others wait
MAX_EVAL_JOBS = 2


def jobs_root() -> Path:
    """Where the evaluation jobs live: ``evaluations/jobs/`` in the user's folder."""
    from normshape_core.base.userdata import eval_cache_dir

    return eval_cache_dir() / "jobs"


@dataclass
class EvalJob:
    """What an evaluation job's folder says (see above)."""

    job_dir: Path
    key: str
    state: str
    label: str = ""
    done: int = 0
    total: int = 0
    bounds: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    error: Optional[str] = None
    pid: Optional[int] = None
    resumes: int = 0
    elapsed_s: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def bound_text(self, classified_with: str) -> str:
        """The anytime bound of one classifier's worst case, or what the job is doing."""
        b = self.bounds.get(classified_with)
        if b and b.get("text"):
            return str(b["text"])
        if self.state == "queued":
            return "waiting for a free worker" if not self.pid else "starting"
        if self.state == "running":
            return "running: no attack finished yet"
        if self.state in ("failed", "lost"):
            return f"{self.state}: {self.error or 'see the worker log'}"
        return self.state


def job_key(checkpoint: Union[str, Path], settings: Dict[str, Any],
            meta: Optional[Dict[str, Any]] = None) -> str:
    """The evaluation's cache key: weights SHA-256 + the settings' fingerprint (as
    ``evaluate_checkpoint`` keys its results)."""
    from normshape_core.training.checkpoints import read_meta
    from normshape_core.measuring.evaluation import _cache_key

    meta = meta or read_meta(checkpoint)
    return _cache_key(meta["weights_sha256"], normalized(meta, settings))


def read_job(job_dir: Union[str, Path]) -> EvalJob:
    """The state of the job in ``job_dir``; a worker that died without saying so is lost."""
    from .jobs import JOB_FILE, PID_FILE, STATUS_FILE, _pid_alive, _read_json

    job_dir = Path(job_dir)
    job = _read_json(job_dir / JOB_FILE) or {}
    st = _read_json(job_dir / STATUS_FILE) or {}
    out = EvalJob(job_dir, job.get("key", job_dir.name), st.get("state", "queued"),
                  label=job.get("label", ""))
    for k in ("done", "total", "bounds", "error", "pid", "resumes", "elapsed_s"):
        if st.get(k) is not None:
            setattr(out, k, st[k])
    if out.pid is None:
        try:
            out.pid = int((job_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            pass
    if out.state == "running" or (out.state == "queued" and out.pid):
        if not _pid_alive(out.pid):
            out.state = "lost"
            out.error = out.error or "the worker process ended without reporting (killed?)"
    return out


def active_jobs(root: Optional[Path] = None) -> List[EvalJob]:
    root = Path(root or jobs_root())
    out = []
    for d in sorted(root.glob("*/job.json")) if root.is_dir() else []:
        j = read_job(d.parent)
        if j.active and j.pid:
            out.append(j)
    return out


def ensure_job(checkpoint: Union[str, Path], settings: Dict[str, Any], *,
               meta: Optional[Dict[str, Any]] = None, label: str = "",
               threads: Optional[int] = None, root: Optional[Path] = None,
               max_active: Optional[int] = None) -> EvalJob:
    """The background job of this evaluation: found when some session asked for it already
    (one job per cache key), started otherwise; a lost or failed one is started again (it
    resumes from its ``work/`` folder); one waiting for a free worker is started when fewer
    than ``max_active`` workers run. Returns at once."""
    import os

    from .jobs import JOB_FILE, STATUS_FILE, _atomic_json, _now, _spawn

    root = Path(root or jobs_root())
    key = job_key(checkpoint, settings, meta)
    job_dir = root / key
    root.mkdir(parents=True, exist_ok=True)
    try:
        job_dir.mkdir()  # exclusive: the first caller writes job.json, the others find it
        _atomic_json(job_dir / JOB_FILE, {"key": key, "checkpoint": str(Path(checkpoint)),
                                          "settings": settings, "label": label,
                                          "threads": threads, "created": _now()})
        _atomic_json(job_dir / STATUS_FILE, {"state": "queued", "updated": _now()})
    except FileExistsError:
        pass
    j = read_job(job_dir)
    if not (job_dir / JOB_FILE).exists():  # another caller is writing it this instant
        return j
    limit = max_active if max_active is not None else int(
        os.environ.get("NORMSHAPE_MAX_EVAL_JOBS", MAX_EVAL_JOBS))
    wants_worker = j.state in ("lost", "failed") or (j.state == "queued" and not j.pid) or (
        j.state == "finished" and not stored(checkpoint, settings, meta).complete)
    if wants_worker and len(active_jobs(root)) < limit:
        import fcntl

        from .jobs import PID_FILE, _read_json

        fd = os.open(job_dir / ".start.lock", os.O_CREAT | os.O_WRONLY, 0o644)
        try:  # one caller starts the worker (the lock goes with a caller that dies)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return read_job(job_dir)
        try:
            j = read_job(job_dir)  # as it is now that this caller holds the lock
            if j.state in ("lost", "failed", "finished") or (j.state == "queued" and not j.pid):
                (job_dir / PID_FILE).unlink(missing_ok=True)
                before = _read_json(job_dir / STATUS_FILE) or {}
                _atomic_json(job_dir / STATUS_FILE, {
                    "state": "queued", "updated": _now(), "bounds": before.get("bounds", {}),
                    "resumes": int(before.get("resumes", 0)) + (j.state != "queued")})
                _spawn(job_dir, module="normshape_app.evaljobs")
        finally:
            os.close(fd)  # releases the lock
        j = read_job(job_dir)
    return j


class _EvalWorker:
    """Runs inside the job's own process: the evaluation of the missing cells, with the
    progress and each ensemble's anytime bound in status.json."""

    def __init__(self, job_dir: Path):
        import time

        from .jobs import JOB_FILE, STATUS_FILE, _read_json

        self.job_dir = job_dir
        self.job = _read_json(job_dir / JOB_FILE) or {}
        before = _read_json(job_dir / STATUS_FILE) or {}
        self.status: Dict[str, Any] = {"state": "running", "pid": __import__("os").getpid(),
                                       "bounds": before.get("bounds", {}),
                                       "resumes": before.get("resumes", 0)}
        self.t0 = time.time()
        self.last = 0.0

    def write(self, force: bool = False, **changes: Any) -> None:
        import time

        from .jobs import STATUS_EVERY_S, STATUS_FILE, _atomic_json, _now

        self.status.update(changes)
        now = time.time()
        if force or now - self.last >= STATUS_EVERY_S:
            self.status.update(elapsed_s=now - self.t0, updated=_now())
            _atomic_json(self.job_dir / STATUS_FILE, self.status)
            self.last = now

    def progress(self, done: int, total: int, what: str = "") -> None:
        self.write(done=int(done), total=int(total), what=str(what))

    def on_bound(self, update) -> None:
        """Keeps the last bound of each classifier's ensemble (the engine's ``BoundUpdate``:
        classified_with, ensemble, members done and to go, robust so far of n, text())."""
        rec = {"text": update.text(), "robust": int(update.robust), "n": int(update.n),
               "done": list(getattr(update, "done", []) or []),
               "to_go": list(getattr(update, "to_go", []) or []),
               "ensemble": str(getattr(update, "ensemble", "")),
               "final": bool(getattr(update, "final", False))}
        bounds = dict(self.status.get("bounds", {}))
        bounds[str(update.classified_with)] = rec
        self.write(force=True, bounds=bounds)

    def run(self) -> int:
        import traceback

        self.write(force=True)
        try:
            import torch

            if self.job.get("threads"):
                torch.set_num_threads(int(self.job["threads"]))
            evaluate_in_job(Path(self.job["checkpoint"]), dict(self.job["settings"]),
                            self.job_dir / "work", self.progress, self.on_bound)
        except BaseException as e:  # noqa: BLE001 - reported in status.json, not raised
            traceback.print_exc()
            msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:500]
            self.write(force=True, state="failed", error=msg)
            return 1
        self.write(force=True, state="finished")
        return 0


def engine_resumes() -> bool:
    """Whether ``evaluate_checkpoint`` takes ``work_dir`` and ``on_bound`` (the resumable
    engine with anytime bounds)."""
    import inspect

    from normshape_core.measuring.evaluation import evaluate_checkpoint

    params = inspect.signature(evaluate_checkpoint).parameters
    return "work_dir" in params and "on_bound" in params


def evaluate_in_job(checkpoint: Path, settings: Dict[str, Any], work_dir: Path, progress,
                    on_bound) -> pd.DataFrame:
    """The job's evaluation: ``evaluate_checkpoint`` into the user's cache, resumable from
    ``work_dir`` and reporting bounds when the engine supports it."""
    from normshape_core.measuring.evaluation import evaluate_checkpoint

    extra = dict(work_dir=work_dir, on_bound=on_bound) if engine_resumes() else {}
    df, _ = evaluate_checkpoint(checkpoint, progress=progress, **extra, **settings)
    return df


def main(argv: Optional[Sequence[str]] = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m normshape_app.evaljobs run JOB_DIR", file=sys.stderr)
        return 2
    return _EvalWorker(Path(argv[1])).run()


if __name__ == "__main__":
    raise SystemExit(main())
