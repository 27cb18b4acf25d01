"""Kill drivers for the kill-safety tests and benchmark: runs of the CLI forked from a warm
driver process and killed at the write points of ``normshape_core/base/faults.py`` (or at random
times). ``python -m normshape_core.cli.kill_drivers points|random OUT.json [KILLS] -- TRAIN ARGS``.
"""
from __future__ import annotations

import os
import signal

from ..base.faults import FAULT_ENV
from ..base.names import META_NAME, METRICS_NAME, STATE_NAME, WEIGHTS_NAME


# ------------------------------------------------------------------ kill drivers (POSIX)
# Runs are forked children of a driver process that has imported everything and run the
# same command once (no interpreter start, no first-call set-up per run: a run takes a
# fraction of a second). Run the drivers in a fresh process with OMP_NUM_THREADS=1
# (``python -m normshape_core.cli.kill_drivers``), as the tests and the benchmark do: a fork of a
# process whose OpenMP thread pool is running is not safe.
def _prepare_driver(warm_argv=None) -> None:
    """Import every module a run needs once, here (each child is a fork); with
    ``warm_argv``, also run that command once in this process (its output discarded), so
    that every first-call set-up is done before the children are forked."""
    import contextlib
    import io

    from .. import cli

    cli.build_parser()
    import sklearn.datasets  # noqa: F401 - the offline datasets' generator

    if warm_argv is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            if cli.main(list(warm_argv)) != 0:
                raise RuntimeError("the warm-up run failed")


def fork_cli(argv, env=None) -> int:
    """Start ``python -m normshape_core ARGV`` as a forked child of this process (no new
    interpreter), its output discarded, with ``env`` added to its environment. Returns the
    child's pid; reap it with ``os.waitpid``."""
    pid = os.fork()
    if pid:
        return pid
    rc = 1
    try:  # the child: never returns into the caller's code
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.environ.update(env or {})
        from . import main

        rc = main(list(argv))
    except BaseException:  # noqa: BLE001 - the exit status says it
        rc = 1
    finally:
        os._exit(int(rc or 0))


def exit_status(status: int) -> int:
    """``os.waitpid``'s status as subprocess has it: the exit code, or -signal."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_cli_forked(argv, env=None) -> int:
    _, status = os.waitpid(fork_cli(argv, env), 0)
    return exit_status(status)


def _metrics_shape(path) -> list:
    """(step, the line's field names) of every metrics.jsonl line; None for a line that is
    not JSON (a cut line)."""
    import json

    from ..base.files import MAX_LOG_BYTES, UnreadableFile, read_text

    try:
        text = read_text(path, MAX_LOG_BYTES, "metrics log", errors="replace")
    except UnreadableFile:
        return []
    out = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            out.append([row["step"], sorted(row)])
        except (ValueError, KeyError, TypeError):
            out.append(None)
    return out


def _first_difference(want: list, got: list):
    """The first metrics line whose step or fields differ from the uninterrupted run's:
    {line, want, got}; None when the two logs have the same lines with the same fields."""
    for i in range(max(len(want), len(got))):
        a = want[i] if i < len(want) else None
        b = got[i] if i < len(got) else None
        if a != b:
            return {"line": i + 1, "want": a, "got": b}
    return None


def fault_point_runs(workdir, train_args, cases) -> dict:
    """For each case ``(kill, kill_on_resume)``: a run killed at the write point ``kill``
    (``NORMSHAPE_FAULT`` syntax), then the same command with ``--resume`` (killed again at
    ``kill_on_resume`` if given) until it is not killed. Returns the uninterrupted run's
    weights SHA-256 and, per case, the exit statuses, the SHA-256 of the final weights, the
    .tmp files left and whether metrics.jsonl has the uninterrupted run's lines."""
    from pathlib import Path

    from ..training.checkpoints import sha256_file, state_files

    workdir = Path(workdir)
    base = ["train", *train_args, "--out", str(workdir), "--quiet"]
    _prepare_driver(base + ["--name", "warm-up"])
    if run_cli_forked(base + ["--name", "full"]) != 0:
        raise RuntimeError("the uninterrupted run failed")
    want = sha256_file(workdir / "full" / WEIGHTS_NAME)
    want_metrics = _metrics_shape(workdir / "full" / METRICS_NAME)
    out = []
    for i, (kill, kill_on_resume) in enumerate(cases):
        name = f"case{i}"
        first = run_cli_forked(base + ["--name", name], {FAULT_ENV: kill})
        tmp_after_kill = sorted(p.name for p in (workdir / name).glob(".*.tmp"))
        resumes = []
        for attempt in range(4):
            env = {FAULT_ENV: kill_on_resume} if kill_on_resume and attempt == 0 else None
            resumes.append(run_cli_forked(base + ["--name", name, "--resume"], env))
            if resumes[-1] >= 0:
                break
        weights = workdir / name / WEIGHTS_NAME
        out.append({"kill": kill, "kill_on_resume": kill_on_resume, "first": first,
                    "resumes": resumes, "tmp_after_kill": tmp_after_kill,
                    "sha256": sha256_file(weights) if weights.exists() else None,
                    "tmp_left": sorted(p.name for p in (workdir / name).glob(".*.tmp")),
                    "state_left": sorted(p.name for p in state_files(workdir / name)) +
                    ([STATE_NAME] if (workdir / name / STATE_NAME).exists() else []),
                    "metrics_same": _metrics_shape(workdir / name / METRICS_NAME)
                    == want_metrics,
                    "metrics_difference": _first_difference(
                        want_metrics, _metrics_shape(workdir / name / METRICS_NAME))})
    return {"want_sha256": want, "cases": out}


def random_kill_loop(workdir, train_args, *, kills: int = 30, seed: int = 0) -> dict:
    """Train the same run again and again, killing it (SIGKILL or SIGTERM) at random
    moments and resuming it with ``--resume`` until it finishes, until ``kills`` kills are
    made; every finished run's weights are compared with an uninterrupted run's (SHA-256 of
    the tensors file). Returns {kills, resumes, finished_runs, identical, seconds}."""
    import random
    import time
    from pathlib import Path

    from ..training.checkpoints import sha256_file

    rng = random.Random(seed)
    workdir = Path(workdir)
    base = ["train", *train_args, "--out", str(workdir), "--quiet"]
    _prepare_driver(base + ["--name", "warm-up"])
    t0 = time.time()
    pid = fork_cli(base + ["--name", "full"])
    started, status = _wait_for_lock(workdir / "full", pid)
    if status is None:
        _, status = os.waitpid(pid, 0)
    if exit_status(status) != 0:
        raise RuntimeError("the uninterrupted run failed")
    duration = time.time() - started  # the training itself: kills land in [0, 1.1 x] of it
    want = sha256_file(workdir / "full" / WEIGHTS_NAME)
    want_metrics = _metrics_shape(workdir / "full" / METRICS_NAME)
    made = resumes = finished = 0
    identical = True
    metrics_differences = []
    while made < kills:
        name = f"killed{finished}"
        while True:
            had_state = (workdir / name / STATE_NAME).exists()
            pid = fork_cli(base + ["--name", name, "--resume"])
            resumes += had_state
            _, ended = _wait_for_lock(workdir / name, pid)
            if ended is not None:  # ended before taking the lock: refused (e.g. finished)
                done, status = pid, ended
            else:
                time.sleep(rng.uniform(0.0, duration * 1.1))
                done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0 and made < kills:
                os.kill(pid, rng.choice([signal.SIGKILL, signal.SIGTERM]))
                _, status = os.waitpid(pid, 0)
                if exit_status(status) < 0:
                    made += 1
                    continue
            elif done == 0:
                _, status = os.waitpid(pid, 0)
            # killed after its final commit: the resume is refused as finished (status 2)
            finished_before = exit_status(status) == 2 and (workdir / name / META_NAME).exists()
            if exit_status(status) != 0 and not finished_before:
                raise RuntimeError(f"run {name} ended with status {exit_status(status)}")
            break
        finished += 1
        identical = identical and sha256_file(workdir / name / WEIGHTS_NAME) == want
        diff = _first_difference(want_metrics, _metrics_shape(workdir / name / METRICS_NAME))
        if diff is not None:
            metrics_differences.append({"run": name, **diff})
    return {"kills": made, "resumes": resumes, "finished_runs": finished,
            "identical": identical, "metrics_differences": metrics_differences,
            "seconds": round(time.time() - t0, 1)}


def _wait_for_lock(run_dir, pid: int, timeout: float = 120.0) -> tuple:
    """Wait until process ``pid`` holds the run folder's lock (its training has started) or
    has ended without taking it (a resume refused because the run had finished: a refused
    run leaves the lock's holder text as it was). Returns (time, None) in the first case,
    (time, its waitpid status) in the second (the child is then reaped)."""
    import json
    import time

    from ..base.files import UnreadableFile, read_text
    from ..training.runlock import LOCK_NAME

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(read_text(run_dir / LOCK_NAME, 4096)).get("pid") == pid:
                return time.time(), None
        except (UnreadableFile, ValueError, AttributeError):
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return time.time(), status
        time.sleep(0.002)
    raise RuntimeError(f"process {pid} did not start training in {run_dir} in {timeout:.0f} s")


def _main(argv) -> int:
    """``python -m normshape_core.cli.kill_drivers points|random OUT.json [KILLS] -- TRAIN ARGS``."""
    import json

    sep = argv.index("--")
    head, train_args = argv[:sep], argv[sep + 1:]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="normshape-faults-") as work:
        if head[0] == "points":
            cases = json.loads(os.environ["NORMSHAPE_FAULT_CASES"])
            result = fault_point_runs(work, train_args, [tuple(c) for c in cases])
        else:
            result = random_kill_loop(work, train_args, kills=int(head[2]))
    with open(head[1], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
