"""The Train page's run widgets: an active run's progress with Pause / Continue / Stop (this
session's runs; another session's only through a confirmed Stop), and a run's outcome (error
and log, final metrics, Resume; another session's run only through a confirmed Resume, which
leaves the run its owner's). The runs themselves are background processes
(``normshape_app.jobs``); ``st.session_state.owner`` is this session's token."""
from __future__ import annotations

import streamlit as st

from normshape_app.inventory import max_active_runs, runs_dir, worker_threads
from normshape_app.style import md_escape, metric_label, public_text
from normshape_app import jobs


def _act(fn, j: jobs.JobStatus, done: str, **kw) -> None:
    try:
        fn(j.run_dir, **kw)
    except jobs.JobError as e:
        st.error(public_text(e))
        return
    st.toast(done)


def run_controls(j: jobs.JobStatus) -> None:
    """One active run: progress; Pause / Continue / Stop for this session's own runs; for
    another session's run only a separate, confirmed Stop."""
    mine = jobs.owns(j, st.session_state.owner)
    with st.container(border=True):
        c1, c2, c3 = st.columns([5, 1, 1])
        who = "" if mine else " · started by another session"
        c1.progress(j.progress, text=md_escape(f"{j.name}: {j.describe()}{who}"))
        if mine:
            if j.state == "paused" or (j.run_dir / jobs.PAUSE_FILE).exists():
                if c2.button("Continue", key=f"cont_{j.name}", help="Let the paused run go on"):
                    _act(jobs.continue_job, j, f"Continuing {j.name}",
                         owner=st.session_state.owner)
            elif c2.button("Pause", key=f"pause_{j.name}",
                           help="Hold the run after its current step; nothing is lost"):
                _act(jobs.pause_job, j, f"Pausing {j.name} ...", owner=st.session_state.owner)
            if c3.button("Stop", key=f"stop_{j.name}", help="Stop after the current step; the "
                         "checkpoint of the last completed epoch is kept (resumable)"):
                _act(jobs.stop_job, j, f"Stopping {j.name} ...", owner=st.session_state.owner)
        else:
            with c3.popover("Stop…", help="This run belongs to another browser session"):
                st.caption("This run was started by another session. Stopping it ends "
                           "someone else's work (its last completed epoch is kept).")
                sure = st.checkbox("Yes, stop another session's run", key=f"sure_{j.name}")
                if st.button("Stop another session's run", key=f"stop_other_{j.name}",
                             disabled=not sure, type="primary"):
                    _act(jobs.stop_job, j, f"Stopping {j.name} ...",
                         owner=st.session_state.owner, other=True)


def run_outcome(j: jobs.JobStatus) -> None:
    """What became of run ``j``: its error and log tail, its final test metrics, or that it
    is starting; Resume for a stopped, lost or failed run."""
    if j.state == "failed" or j.state == "lost":
        st.error(f"This run {public_text(j.describe())}")
        with st.expander("Worker log (last lines)"):
            st.code(public_text(jobs.read_log_tail(j.run_dir)) or "(empty)", language=None)
    elif j.state == "finished":
        fm = {metric_label(k): f"{v:.3f}" for k, v in j.final_metrics.items()
              if k.startswith("test/")}
        st.success(f"Finished in {jobs.format_seconds(j.elapsed_s)}. Checkpoint "
                   f"`{j.name}` (now listed on every page). "
                   + "; ".join(f"{k}: {v}" for k, v in fm.items()))
    elif j.state == "starting":
        st.info(f"Starting: {j.phase or 'the worker process'} ... (the curves appear with the "
                f"first training step)")
    if j.state in ("stopped", "lost", "failed"):
        if j.state == "stopped":
            st.warning(f"This run was {j.describe()}.")
        if jobs.owns(j, st.session_state.owner):
            if st.button("Resume", key=f"resume_{j.name}", help="Continue from the last "
                         "completed epoch to the full run (the same weights as a run never "
                         "stopped)"):
                _resume(j, other=False)
            return
        with st.popover("Resume…", help="This run belongs to another browser session"):
            st.caption("This run was started by another session. Resuming it restarts "
                       "someone else's run, and it stays theirs: they keep Pause and Stop, "
                       "this session only the confirmed Stop control.")
            sure = st.checkbox("Yes, resume another session's run", key=f"sure_resume_{j.name}")
            if st.button("Resume another session's run", key=f"resume_other_{j.name}",
                         disabled=not sure, type="primary"):
                _resume(j, other=True)


def _resume(j: jobs.JobStatus, other: bool) -> None:
    """Resume run ``j`` in a new worker (its owner unchanged), then refresh the page."""
    try:
        jobs.resume_job(j.run_dir, owner=st.session_state.owner, other=other,
                        threads=worker_threads(), max_active=max_active_runs(),
                        runs_root=runs_dir())
    except jobs.JobError as e:
        st.error(public_text(e))
    else:
        st.rerun(scope="app")
