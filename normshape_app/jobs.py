"""Background training runs for the app: each run is its own process, its state lives on disk.

A job is a run folder ``RUNS/<name>`` holding:

- ``job.json``     what to run (the training config, who asked, when), written once;
- ``status.json``  the worker's state, rewritten atomically: ``queued`` -> ``starting`` ->
                   ``running`` (<-> ``paused``) -> ``finished`` | ``failed`` | ``stopped``,
                   with step, total steps, time left, the checkpoint path or the error;
- ``metrics.jsonl`` the trainer's own log (``train/loss``, ``bn/running_mean_drift`` ...);
- ``worker.log``   the worker's stdout and stderr (the traceback of a failed run);
- ``STOP``         created by :func:`stop_job`; the worker stops after its current step and
                   keeps a checkpoint of the last completed epoch, marked
                   ``"stopped": {"epoch": k, "epochs": N}``, which :func:`resume_job` continues;
- ``PAUSE``        created by :func:`pause_job`, removed by :func:`continue_job`: the worker
                   waits after its current step (state ``paused``) until it is gone.

Nothing is held in memory by the caller, so a run survives page changes, reruns, a browser
refresh and even a restart of the app; any number of callers (browser sessions) can start
and watch runs at once without sharing anything but the folder. The worker is
``python -m normshape_app.jobs run RUN_DIR``: the same ``training.train`` as the CLI, plus
callbacks that write the status and honour the stop and pause requests. Until its first
step the worker reports ``starting`` with what it is doing (importing, loading the data,
building the model).

Runs are owned: ``start_job(owner=TOKEN)`` keeps the caller's token in job.json, and
:func:`stop_job` / :func:`pause_job` / :func:`continue_job` / :func:`resume_job` given
``owner=`` refuse a run started with another token unless ``other=True`` (the app's
separate, confirmed control); resuming never changes a run's owner.

This module never imports Streamlit, and imports torch only inside the worker.
"""
from __future__ import annotations

import datetime as _dt
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from normshape_core.base.names import META_NAME, METRICS_NAME, STATE_NAME, WEIGHTS_NAME

JOB_FILE = "job.json"
STATUS_FILE = "status.json"
STOP_FILE = "STOP"
PAUSE_FILE = "PAUSE"
LOG_FILE = "worker.log"
PID_FILE = "worker.pid"

ACTIVE_STATES = ("queued", "starting", "running", "paused")
ALIVE_STATES = ("starting", "running", "paused")  # a worker process says so itself
FINAL_STATES = ("finished", "failed", "stopped", "lost")
# A queued job whose worker never wrote a status within this time is reported as lost.
QUEUED_TIMEOUT_S = 120.0
STATUS_EVERY_S = 0.5  # the worker rewrites status.json at most this often (plus epoch ends)


class JobError(RuntimeError):
    """A run that cannot be started or found; the message is one line for the user."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_json(path: Path, obj: Any) -> None:
    # Same write-then-rename rule as checkpoints.atomic_write_json, without importing torch.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


#: the largest job.json / status.json read (they hold a config and a few numbers)
MAX_JOB_FILE_BYTES = 1 << 20


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A job file's JSON object, or None (missing, not a regular file, too large, not JSON)."""
    from normshape_core.base.files import read_json_or_none

    obj = read_json_or_none(path, MAX_JOB_FILE_BYTES)
    return obj if isinstance(obj, dict) else None


# ====================================================================== status
@dataclass
class JobStatus:
    """What a run folder says about its run (see the module docstring)."""

    run_dir: Path
    name: str
    state: str
    config: Dict[str, Any] = field(default_factory=dict)
    owner: str = ""
    created: str = ""
    pid: Optional[int] = None
    step: int = 0
    total_steps: Optional[int] = None
    epoch: int = 0
    epochs: Optional[int] = None
    elapsed_s: float = 0.0
    eta_s: Optional[float] = None
    checkpoint: Optional[str] = None
    error: Optional[str] = None
    final_metrics: Dict[str, Any] = field(default_factory=dict)
    updated: str = ""
    phase: str = ""  # while starting: what the worker is doing
    stopped_epoch: Optional[int] = None  # a stopped run: the epoch its checkpoint holds
    resumes: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def progress(self) -> float:
        if self.state == "finished":
            return 1.0
        if not self.total_steps:
            return 0.0
        return max(0.0, min(1.0, self.step / self.total_steps))

    def describe(self) -> str:
        """One line: state, progress and time left, for a list of runs."""
        if self.state == "running":
            left = f", about {format_seconds(self.eta_s)} left" if self.eta_s is not None else ""
            of = f"/{self.total_steps}" if self.total_steps else ""
            return f"running: step {self.step}{of} (epoch {self.epoch}){left}"
        if self.state == "paused":
            of = f"/{self.total_steps}" if self.total_steps else ""
            return f"paused at step {self.step}{of} (epoch {self.epoch}); continue or stop it"
        if self.state == "starting":
            return f"starting: {self.phase or 'the worker process'} ..."
        if self.state == "finished":
            return f"finished in {format_seconds(self.elapsed_s)}"
        if self.state == "failed":
            return f"failed: {self.error or 'see worker.log'}"
        if self.state == "stopped":
            if self.stopped_epoch:
                return (f"stopped at step {self.step}; checkpoint of epoch {self.stopped_epoch}"
                        f"/{self.epochs} kept (resumable)")
            return (f"stopped at step {self.step}, before the first epoch ended: nothing kept "
                    f"(resuming starts it again)")
        if self.state == "lost":
            return f"lost: {self.error}"
        return "queued: starting the worker process"


def format_seconds(s: Optional[float]) -> str:
    if s is None:
        return "?"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.exists() and Path("/proc/self").exists():
        try:
            # "pid (comm) S ...": the state letter follows the last ')'; Z = zombie (exited).
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_status(run_dir: str | Path) -> JobStatus:
    """The status of the run in ``run_dir``; a worker that died without saying so is ``lost``."""
    run_dir = Path(run_dir)
    job = _read_json(run_dir / JOB_FILE)
    if job is None:
        raise JobError(f"{run_dir} is not a job folder (no readable {JOB_FILE})")
    st = _read_json(run_dir / STATUS_FILE) or {}
    status = JobStatus(run_dir=run_dir, name=job.get("name", run_dir.name),
                       state=st.get("state", "queued"), config=job.get("config", {}),
                       owner=job.get("owner", ""), created=job.get("created", ""))
    for key in ("pid", "step", "total_steps", "epoch", "epochs", "elapsed_s", "eta_s",
                "checkpoint", "error", "final_metrics", "updated", "phase", "stopped_epoch",
                "resumes"):
        if st.get(key) is not None:
            setattr(status, key, st[key])
    if status.pid is None:
        from normshape_core.base.files import UnreadableFile, read_text

        try:
            status.pid = int(read_text(run_dir / PID_FILE, 64).strip())
        except (UnreadableFile, ValueError):
            pass
    if status.state in ALIVE_STATES and not _pid_alive(status.pid):
        status.state, status.eta_s = "lost", None
        status.error = "the worker process ended without reporting (killed?); see worker.log"
    elif status.state == "queued":
        age = time.time() - (run_dir / JOB_FILE).stat().st_mtime
        if (status.pid and not _pid_alive(status.pid)) or age > QUEUED_TIMEOUT_S:
            status.state = "lost"
            status.error = "the worker process never started; see worker.log"
    if status.state in ("stopped", "lost", "failed"):
        _finished_elsewhere(status)
    return status


def _finished_elsewhere(status: JobStatus) -> None:
    """A stopped (or lost, failed) run that was then resumed to its end outside the app
    (``normshape train ... --resume`` on its folder): its checkpoint is final (no
    ``stopped`` record, no resume state left), so the run is finished, with the
    checkpoint's metrics."""
    from normshape_core.base.files import MAX_META_BYTES, read_json_or_none

    run_dir = status.run_dir
    if (run_dir / STATE_NAME).exists():
        return
    meta = read_json_or_none(run_dir / META_NAME, MAX_META_BYTES)
    if not isinstance(meta, dict) or "stopped" in meta or not isinstance(
            meta.get("config"), dict):
        return
    final = meta.get("final_metrics")
    status.state, status.error, status.eta_s, status.stopped_epoch = "finished", None, None, None
    status.checkpoint = str(run_dir / WEIGHTS_NAME)
    status.final_metrics = ({k: v for k, v in final.items() if isinstance(v, (int, float))}
                            if isinstance(final, dict) else {})
    if isinstance(meta.get("steps"), int):
        status.step = status.total_steps = meta["steps"]
    if isinstance(meta.get("epochs"), int):
        status.epoch = status.epochs = meta["epochs"]


def list_jobs(runs_root: str | Path) -> List[JobStatus]:
    """Every job under ``runs_root`` (one level), newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    out = []
    for job_file in root.glob(f"*/{JOB_FILE}"):
        try:
            out.append(job_status(job_file.parent))
        except (JobError, OSError):
            continue
    return sorted(out, key=lambda s: (s.created, s.name), reverse=True)


def read_metrics(run_dir: str | Path) -> List[Dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (a half-written last line is skipped)."""
    from normshape_core.base.files import MAX_LOG_BYTES, UnreadableFile, read_text

    path = Path(run_dir) / METRICS_NAME
    rows: List[Dict[str, Any]] = []
    try:
        text = read_text(path, MAX_LOG_BYTES, errors="replace")
    except UnreadableFile:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_log_tail(run_dir: str | Path, max_chars: int = 4000) -> str:
    """The end of the worker's log (only its last bytes are read, whatever its size)."""
    from normshape_core.base.files import UnreadableFile, read_tail

    try:
        text = read_tail(Path(run_dir) / LOG_FILE, 4 * max_chars).decode("utf-8", "replace")
    except UnreadableFile:
        return ""
    return text[-max_chars:]


# ====================================================================== start / stop
def new_run_dir(runs_root: str | Path, label: str) -> Path:
    """A fresh, unique folder ``runs_root/<sanitised label>-<time>-<random>``, created
    exclusively, so two callers never share one even with the same label."""
    from normshape_core.settings.config import sanitize_name

    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = sanitize_name(label)[:80]
    for _ in range(20):
        p = root / f"{base}-{stamp}-{secrets.token_hex(2)}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
    raise JobError(f"could not create a new run folder under {root}")


def start_job(config: "Dict[str, Any] | Any", runs_root: str | Path = "runs", *,
              label: Optional[str] = None, owner: str = "", threads: Optional[int] = None,
              max_active: Optional[int] = None, python: Optional[str] = None,
              cwd: Optional[str | Path] = None) -> JobStatus:
    """Validate ``config`` (a ``TrainConfig`` or its dict), create a run folder and start the
    worker process in its own session. Returns at once with the ``queued`` status.

    ``label`` names the folder (sanitised; default: the config's run name); ``owner`` is a
    free text kept in job.json (e.g. the browser session); ``threads`` caps the worker's
    torch threads; ``max_active`` refuses a new run while that many are queued or running.
    """
    from normshape_core.settings.config import TrainConfig

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg = cfg.resolved()  # raises ConfigError with a one-line message
    if max_active is not None:
        active = [j for j in list_jobs(runs_root) if j.active]
        if len(active) >= max_active:
            raise JobError(f"{len(active)} runs are already going (limit {max_active}); wait for "
                           f"one to end or stop one")
    run_dir = new_run_dir(runs_root, label or cfg.run_name())
    _atomic_json(run_dir / JOB_FILE, {"name": run_dir.name, "config": cfg.to_dict(),
                                      "owner": owner, "created": _now(), "threads": threads})
    _atomic_json(run_dir / STATUS_FILE, {"state": "queued", "updated": _now()})
    _spawn(run_dir, python=python, cwd=cwd)
    return job_status(run_dir)


def _spawn(run_dir: Path, *, python: Optional[str] = None, cwd: Optional[str | Path] = None,
           module: str = "normshape_app.jobs") -> int:
    """Start ``python -m <module> run RUN_DIR`` in its own session (the training worker; the
    evaluation worker of ``evaljobs`` too), its output appended to ``worker.log`` and its pid
    left in ``worker.pid``; returns the pid."""
    cmd = [python or sys.executable, "-m", module, "run", str(run_dir.resolve())]
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(run_dir / LOG_FILE, "ab") as log:
        # start_new_session: the worker is not in the app's process group, so it outlives
        # reruns, Ctrl-C in the app's terminal and the app itself.
        kwargs: Dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(cwd) if cwd else None, env=env, close_fds=True, **kwargs)
    # The worker writes status.json itself from its first line on; the parent only leaves the
    # pid beside it (a separate file, so the two never race), to spot a worker that died early.
    (run_dir / PID_FILE).write_text(f"{proc.pid}\n")
    # The Popen object is dropped: Python's subprocess module reaps the finished child later,
    # and job_status() treats a zombie as ended. Status lives on disk, never in this process.
    return proc.pid


def owns(status: JobStatus, owner: Optional[str]) -> bool:
    """Whether ``owner`` (a session's token) started this run. An empty token owns nothing."""
    return bool(owner) and bool(status.owner) and hmac.compare_digest(str(status.owner),
                                                                      str(owner))


def _check_owner(status: JobStatus, owner: Optional[str], other: bool, what: str) -> None:
    # owner=None: a trusted local caller (scripts, tests, the CLI), not a browser session.
    if owner is None or other or owns(status, owner):
        return
    raise JobError(f"{status.name} was started by another session; only that session can "
                   f"{what} it (or use the separate control for another session's run)")


def stop_job(run_dir: str | Path, *, force: bool = False, owner: Optional[str] = None,
             other: bool = False) -> JobStatus:
    """Ask the run to stop after its current step (``STOP`` file + SIGTERM, which the worker
    handles gracefully; it keeps a checkpoint of the last completed epoch); ``force`` kills it
    at once (SIGKILL). With ``owner``, a run started by another token is refused (JobError)
    unless ``other`` is set."""
    run_dir = Path(run_dir)
    status = job_status(run_dir)
    _check_owner(status, owner, other, "stop")
    (run_dir / STOP_FILE).write_text(_now() + "\n")
    if status.active and _pid_alive(status.pid):
        try:
            os.kill(int(status.pid), signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        if force:
            _atomic_json(run_dir / STATUS_FILE, {**(_read_json(run_dir / STATUS_FILE) or {}),
                                                 "state": "stopped", "eta_s": None,
                                                 "updated": _now()})
    return job_status(run_dir)


def pause_job(run_dir: str | Path, *, owner: Optional[str] = None,
              other: bool = False) -> JobStatus:
    """Ask the run to wait after its current step (``PAUSE`` file); :func:`continue_job`
    lets it go on. The process keeps its memory; nothing is lost or recomputed."""
    run_dir = Path(run_dir)
    status = job_status(run_dir)
    _check_owner(status, owner, other, "pause")
    if not status.active:
        raise JobError(f"{status.name} is {status.state}; only a running run can be paused")
    (run_dir / PAUSE_FILE).write_text(_now() + "\n")
    return job_status(run_dir)


def continue_job(run_dir: str | Path, *, owner: Optional[str] = None,
                 other: bool = False) -> JobStatus:
    """Let a paused run go on (removes ``PAUSE``)."""
    run_dir = Path(run_dir)
    status = job_status(run_dir)
    _check_owner(status, owner, other, "continue")
    (run_dir / PAUSE_FILE).unlink(missing_ok=True)
    return job_status(run_dir)


def resume_job(run_dir: str | Path, *, owner: Optional[str] = None, other: bool = False,
               threads: Optional[int] = None,
               max_active: Optional[int] = None, runs_root: Optional[str | Path] = None,
               python: Optional[str] = None, cwd: Optional[str | Path] = None) -> JobStatus:
    """Continue a stopped (or lost / failed) run in a new worker from its saved training state
    to its full length: the same weights as a run that was never stopped. A run stopped
    before its first epoch ended has no state and starts again from step 0.

    Like :func:`stop_job`, ``owner`` given: a run started by another token is refused
    (JobError) unless ``other`` is set (the app's confirmed control). The run keeps its
    owner, who keeps Pause and Stop; only a run that has none (started by a script)
    becomes the resuming session's."""
    run_dir = Path(run_dir)
    status = job_status(run_dir)
    if status.state not in ("stopped", "lost", "failed"):
        raise JobError(f"{status.name} is {status.state}; only a stopped run can be resumed")
    _check_owner(status, owner, other, "resume")
    if max_active is not None:
        active = [j for j in list_jobs(runs_root or run_dir.parent) if j.active]
        if len(active) >= max_active:
            raise JobError(f"{len(active)} runs are already going (limit {max_active}); wait for "
                           f"one to end or stop one")
    job = _read_json(run_dir / JOB_FILE) or {}
    for f in (STOP_FILE, PAUSE_FILE, PID_FILE):
        (run_dir / f).unlink(missing_ok=True)
    if threads is not None:
        job["threads"] = threads
    if owner and not job.get("owner"):
        job["owner"] = owner
    job["resume"] = True
    _atomic_json(run_dir / JOB_FILE, job)  # also restarts the queued timeout (mtime)
    _atomic_json(run_dir / STATUS_FILE, {"state": "queued", "updated": _now(),
                                         "resumes": status.resumes + 1,
                                         "step": status.step, "epoch": status.epoch,
                                         "total_steps": status.total_steps,
                                         "epochs": status.epochs})
    _spawn(run_dir, python=python, cwd=cwd)
    return job_status(run_dir)


def wait_for(run_dir: str | Path, timeout: float = 120.0, poll: float = 0.2) -> JobStatus:
    """Block until the run ends (or ``timeout`` seconds); for scripts and tests."""
    end = time.time() + timeout
    while True:
        status = job_status(run_dir)
        if not status.active or time.time() > end:
            return status
        time.sleep(poll)


# ====================================================================== the worker
class _Worker:
    """Runs inside the job's own process: trains, writes status.json, honours STOP and PAUSE,
    keeps a checkpoint of the last completed epoch when stopped."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.job = _read_json(run_dir / JOB_FILE)
        if self.job is None:
            raise JobError(f"{run_dir}: no readable {JOB_FILE}")
        before = _read_json(run_dir / STATUS_FILE) or {}
        self.status: Dict[str, Any] = {"state": "starting", "phase": "importing torch",
                                       "pid": os.getpid(), "step": before.get("step", 0),
                                       "epoch": before.get("epoch", 0),
                                       "resumes": before.get("resumes", 0), "started": _now()}
        self.t0 = time.time()
        self.last_write = 0.0
        self.stop_requested = False
        self.first_step: Optional[int] = None
        self.t_first = 0.0

    def write(self, force: bool = False, **changes: Any) -> None:
        self.status.update(changes)
        now = time.time()
        if force or now - self.last_write >= STATUS_EVERY_S:
            self.status["elapsed_s"] = now - self.t0
            self.status["updated"] = _now()
            _atomic_json(self.run_dir / STATUS_FILE, self.status)
            self.last_write = now

    def _stop_wanted(self) -> bool:
        return self.stop_requested or (self.run_dir / STOP_FILE).exists()

    def _check_stop(self) -> None:
        from normshape_core.training.trainer import StopTraining

        if self._stop_wanted():
            raise StopTraining()

    def _wait_while_paused(self, trainer) -> None:
        if not (self.run_dir / PAUSE_FILE).exists():
            return
        self.write(force=True, state="paused", step=trainer.step, epoch=trainer.epoch, eta_s=None)
        t_pause = time.time()
        while (self.run_dir / PAUSE_FILE).exists() and not self._stop_wanted():
            time.sleep(0.1)
        self.t_first += time.time() - t_pause  # the pause is not training time
        self.write(force=True, state="running")

    def on_step(self, trainer, m: Dict[str, Any]) -> None:
        step, total = trainer.step, trainer.total_steps
        # Time left from the training loop's own pace (process start-up and data loading
        # excluded), counted from the first step this process ran (resume-safe).
        if self.first_step is None:
            self.first_step, self.t_first = step, time.time()
            self.write(force=True, state="running", phase="")
        done = step - self.first_step
        eta = (time.time() - self.t_first) / done * (total - step) if done > 0 else None
        self.write(step=step, total_steps=total, epoch=trainer.epoch, eta_s=eta)
        self._check_stop()
        self._wait_while_paused(trainer)
        self._check_stop()

    def on_epoch_end(self, trainer, e: Dict[str, Any]) -> None:
        self.write(force=True, epoch=trainer.epoch, step=trainer.step)
        self._check_stop()

    def keep_stopped_checkpoint(self, trainer) -> Optional[int]:
        """Write the checkpoint of the last completed epoch (the saved training state),
        marked ``"stopped": {"epoch": k, "epochs": N}``; its metrics are the ones measured at
        that epoch's end. Returns k, or None when no epoch had ended (nothing to keep)."""
        from normshape_core.training.checkpoints import load_training_state, save_checkpoint

        if not (self.run_dir / STATE_NAME).exists():
            return None
        load_training_state(self.run_dir, trainer)  # rewinds model, optimizer, counters
        k, n = int(trainer.epoch), int(trainer.cfg.epochs or 0)
        measured = [r for r in read_metrics(self.run_dir)
                    if r.get("epoch") == k and r.get("step") == trainer.step
                    and any(key.startswith("test/") for key in r)]
        final = {key: v for key, v in (measured[-1] if measured else {}).items()
                 if key.startswith("test/")}
        final["train/steps"] = trainer.step
        meta = trainer.checkpoint_meta(final)
        meta["stopped"] = {"epoch": k, "epochs": n}
        save_checkpoint(self.run_dir, trainer.model, meta)
        return k

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.write(force=True)
        trainer = None
        try:
            import torch

            from normshape_core.settings.config import TrainConfig
            from normshape_core.blocks.data import load_dataset
            from normshape_core.training.trainer import Trainer, seed_everything

            if self.job.get("threads"):
                torch.set_num_threads(int(self.job["threads"]))
            cfg = TrainConfig.from_dict(self.job["config"]).resolved()
            self.write(force=True, phase=f"loading the data ({cfg.dataset})")
            seed_everything(cfg.seed)  # as Trainer does before it loads the data itself
            data = load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed)
            self.write(force=True, phase=f"building the model ({cfg.model})")
            trainer = Trainer(cfg, data)
            resume = bool(self.job.get("resume")) and (self.run_dir / STATE_NAME).exists()
            self.write(force=True, total_steps=trainer.total_steps, epochs=trainer.cfg.epochs,
                       phase=("loading the saved training state, then the first step" if resume
                              else "the first training step"))
            trainer.add_callback("on_step", self.on_step)
            trainer.add_callback("on_epoch_end", self.on_epoch_end)
            self._check_stop()
            result = trainer.fit(self.run_dir, resume=resume)
            stopped = result.stopped
        except BaseException as e:  # noqa: BLE001 - the run's error is reported, not raised
            from normshape_core.training.trainer import StopTraining

            if not isinstance(e, StopTraining):
                traceback.print_exc()
                msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:500]
                self.write(force=True, state="failed", error=msg, eta_s=None, phase="")
                return 1
            stopped = True
        if stopped:
            kept = None
            if trainer is not None:
                try:
                    kept = self.keep_stopped_checkpoint(trainer)
                except Exception as e:  # noqa: BLE001 - the stop itself succeeded
                    traceback.print_exc()
                    self.write(error=f"no checkpoint kept: {type(e).__name__}: {e}"[:500])
            extra = {"checkpoint": str(self.run_dir / WEIGHTS_NAME)} if kept else {}
            self.write(force=True, state="stopped", eta_s=None, phase="", stopped_epoch=kept,
                       **extra)
            return 0
        final = {k: v for k, v in result.final_metrics.items() if isinstance(v, (int, float))}
        self.write(force=True, state="finished", step=trainer.step, eta_s=0.0, phase="",
                   stopped_epoch=None, checkpoint=str(result.checkpoint), final_metrics=final)
        print(f"checkpoint: {result.checkpoint}", flush=True)
        return 0

    def _on_sigterm(self, signum, frame) -> None:
        # Stop after the current step: the trainer sees StopTraining from a callback.
        self.stop_requested = True


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m normshape_app.jobs run RUN_DIR", file=sys.stderr)
        return 2
    return _Worker(Path(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main())
