"""Background training runs: own process, state on disk, stop, failure, isolation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normshape_app import jobs
from normshape_core.settings.config import ConfigError, TrainConfig

TINY = dict(dataset="moons", method="pgd", shaping="attack+train", ratio="1:3", epochs=1,
            eval_samples=100)


def test_two_runs_started_at_once_train_in_their_own_processes_and_leave_checkpoints(
        tmp_path):
    a = jobs.start_job(TINY, tmp_path, owner="session-a", threads=1)
    b = jobs.start_job(TrainConfig(**TINY), tmp_path, owner="session-b", threads=1)
    assert a.state in ("queued", "running") and a.run_dir != b.run_dir
    assert a.run_dir.parent == tmp_path and a.pid not in (None, os.getpid(), b.pid)
    for status, owner in ((a, "session-a"), (b, "session-b")):
        done = jobs.wait_for(status.run_dir, timeout=180)
        assert done.state == "finished", jobs.read_log_tail(status.run_dir)
        assert done.step == done.total_steps == 15 and done.progress == 1.0
        assert Path(done.checkpoint).exists() and (status.run_dir / "model.json").exists()
        assert "test/clean_acc_pn" in done.final_metrics
        rows = jobs.read_metrics(status.run_dir)
        assert any("train/loss" in r for r in rows)
        assert any("bn/running_mean_drift" in r for r in rows)
        job = json.loads((status.run_dir / "job.json").read_text())
        assert job["owner"] == owner and job["config"]["epochs"] == 1
    assert {j.owner for j in jobs.list_jobs(tmp_path)} == {"session-a", "session-b"}
    # the checkpoints are found by the registry the pages use
    from normshape_core.training.checkpoints import find_checkpoints
    found, errors = find_checkpoints(tmp_path)
    assert {f.path for f in found} == {a.run_dir, b.run_dir} and not errors


def _wait_until(run_dir, cond, timeout=90.0, poll=0.02):
    t0 = time.time()
    while True:
        st = jobs.job_status(run_dir)
        if cond(st):
            return st
        assert time.time() - t0 < timeout and st.state not in jobs.FINAL_STATES, \
            (st.describe(), jobs.read_log_tail(run_dir))
        time.sleep(poll)


#: a first epoch long enough that a stop asked at step 2 lands inside it: 500 steps (1,000
#: moons samples in batches of 2), each a 20-step PGD
LONG_EPOCH = {**TINY, "shaping": "none", "batch_size": 2, "steps": 20, "epochs": 3}


def test_the_worker_says_what_it_does_until_its_first_step_then_stop_keeps_nothing(tmp_path):
    """Until its first step the worker says what it does; a stop inside the first epoch
    keeps nothing (no checkpoint, "nothing kept"). The run that ends an epoch first and
    keeps it: test_stop_keeps_the_last_epoch_and_resume_ends_bit_identical_..."""
    status = jobs.start_job(LONG_EPOCH, tmp_path, threads=1)
    seen = set()
    t0 = time.time()
    while True:  # every phase is written before it starts; the poll sees at least some
        st = jobs.job_status(status.run_dir)
        if st.state == "starting":
            seen.add(st.phase)
            assert st.active and st.describe().startswith("starting: ")
        if st.step >= 2:
            break
        assert time.time() - t0 < 90, jobs.read_log_tail(status.run_dir)
        time.sleep(0.01)
    assert seen and seen <= {"importing torch", "loading the data (moons)",
                             "building the model (mlp)", "the first training step"}, seen
    running = jobs.job_status(status.run_dir)
    assert running.state == "running" and running.eta_s is not None and running.eta_s > 0
    assert running.total_steps == 3 * 500 and running.epoch == 0
    jobs.stop_job(status.run_dir)
    done = jobs.wait_for(status.run_dir, timeout=60)
    assert done.state == "stopped" and 2 <= done.step < 500, done.describe()
    assert done.stopped_epoch is None and "nothing kept" in done.describe()
    assert not (status.run_dir / "model.json").exists()


def test_pause_holds_the_run_and_continue_lets_it_go_on_only_for_its_owner(tmp_path):
    status = jobs.start_job({**TINY, "epochs": 400}, tmp_path, owner="token-a", threads=1)
    _wait_until(status.run_dir, lambda s: s.step >= 2)
    with pytest.raises(jobs.JobError, match="another session"):
        jobs.pause_job(status.run_dir, owner="token-b")
    with pytest.raises(jobs.JobError, match="another session"):
        jobs.stop_job(status.run_dir, owner="token-b")
    with pytest.raises(jobs.JobError, match="another session"):
        jobs.pause_job(status.run_dir, owner="")  # an empty token owns nothing
    assert not (status.run_dir / "STOP").exists() and not (status.run_dir / "PAUSE").exists()
    jobs.pause_job(status.run_dir, owner="token-a")
    paused = _wait_until(status.run_dir, lambda s: s.state == "paused")
    assert paused.active and "paused at step" in paused.describe()
    time.sleep(1.0)
    still = jobs.job_status(status.run_dir)
    assert still.state == "paused" and still.step == paused.step  # no step while paused
    with pytest.raises(jobs.JobError, match="only a stopped run"):
        jobs.resume_job(status.run_dir, owner="token-a")
    jobs.continue_job(status.run_dir, owner="token-a")
    _wait_until(status.run_dir, lambda s: s.state == "running" and s.step > paused.step)
    # another session's run: only through the explicit control (other=True)
    jobs.stop_job(status.run_dir, owner="token-b", other=True)
    assert jobs.wait_for(status.run_dir, timeout=60).state == "stopped"


def test_stop_keeps_the_last_epoch_and_resume_ends_bit_identical_to_an_uninterrupted_run(
        tmp_path):
    from safetensors.torch import load_file

    from normshape_core.training.checkpoints import find_checkpoints, read_meta

    cfg = {**TINY, "epochs": 60}
    ref = jobs.start_job(cfg, tmp_path / "ref", owner="a", threads=1)
    run = jobs.start_job(cfg, tmp_path / "runs", owner="a", threads=1)
    _wait_until(run.run_dir, lambda s: s.epoch >= 1)
    jobs.pause_job(run.run_dir, owner="a")  # hold it, then stop: mid-epoch, deterministic
    paused = _wait_until(run.run_dir, lambda s: s.state == "paused")
    jobs.stop_job(run.run_dir, owner="a")
    stopped = jobs.wait_for(run.run_dir, timeout=60)
    k = stopped.stopped_epoch
    assert stopped.state == "stopped" and k is not None and 1 <= k <= paused.epoch < 60
    assert f"checkpoint of epoch {k}/60 kept" in stopped.describe()
    meta = read_meta(run.run_dir)
    assert meta["stopped"] == {"epoch": k, "epochs": 60} and meta["epochs"] == k
    assert meta["steps"] == k * 15 and "test/clean_acc_pn" in meta["final_metrics"]
    measured = [r for r in jobs.read_metrics(run.run_dir) if r.get("epoch") == k
                and "test/clean_acc_pn" in r]
    assert meta["final_metrics"]["test/clean_acc_pn"] == measured[-1]["test/clean_acc_pn"]
    found, errors = find_checkpoints(tmp_path / "runs")  # every page's checkpoint scan
    assert [f.path for f in found] == [run.run_dir] and not errors
    assert found[0].meta["stopped"]["epoch"] == k
    # another session resumes it only through the confirmed control, and the run stays
    # its owner's (who keeps Pause and Stop); it goes on to its full length
    with pytest.raises(jobs.JobError, match="another session"):
        jobs.resume_job(run.run_dir, owner="b", threads=1)
    assert jobs.job_status(run.run_dir).state == "stopped"
    again = jobs.resume_job(run.run_dir, owner="b", other=True, threads=1)
    assert again.active and again.owner == "a" and again.resumes == 1
    assert jobs.owns(again, "a") and not jobs.owns(again, "b")
    done = jobs.wait_for(run.run_dir, timeout=180)
    assert done.state == "finished", jobs.read_log_tail(run.run_dir)
    assert done.step == done.total_steps == 60 * 15
    assert "stopped" not in read_meta(run.run_dir)
    ref_done = jobs.wait_for(ref.run_dir, timeout=180)
    assert ref_done.state == "finished", jobs.read_log_tail(ref.run_dir)
    a = load_file(str(run.run_dir / "model.safetensors"))
    b = load_file(str(ref.run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    steps = [r["step"] for r in jobs.read_metrics(run.run_dir) if "train/loss" in r]
    assert steps == list(range(1, 60 * 15 + 1))  # the redone steps are logged once


def test_a_run_stopped_in_the_app_and_finished_with_the_cli_resume_is_finished(
        tmp_path, capsys):
    from normshape_core.__main__ import main
    from normshape_core.training.checkpoints import read_meta

    run = jobs.start_job({**TINY, "epochs": 40}, tmp_path, owner="a", threads=1)
    _wait_until(run.run_dir, lambda s: s.epoch >= 1)
    jobs.pause_job(run.run_dir, owner="a")
    _wait_until(run.run_dir, lambda s: s.state == "paused")
    jobs.stop_job(run.run_dir, owner="a")
    stopped = jobs.wait_for(run.run_dir, timeout=60)
    assert stopped.state == "stopped" and stopped.stopped_epoch >= 1
    assert read_meta(run.run_dir)["stopped"]["epochs"] == 40
    rc = main(["train", "--dataset", "moons", "--method", "pgd", "--shaping", "attack+train",
               "--ratio", "1:3", "--epochs", "40", "--eval-samples", "100", "--threads", "1",
               "--out", str(tmp_path), "--name", run.run_dir.name, "--resume", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    meta = read_meta(run.run_dir)
    assert "stopped" not in meta and meta["epochs"] == 40  # the checkpoint's mark is gone
    done = jobs.job_status(run.run_dir)  # and so is the app's
    assert done.state == "finished" and done.stopped_epoch is None, done
    assert done.step == done.total_steps == 40 * 15 and done.progress == 1.0
    assert done.final_metrics["test/clean_acc_pn"] == meta["final_metrics"]["test/clean_acc_pn"]
    assert "finished" in done.describe() and "stopped" not in done.describe()


def test_a_failing_run_reports_its_error_in_one_line(tmp_path):
    # Valid settings that fail at run time: more training samples asked than moons has.
    status = jobs.start_job({**TINY, "n_train": 5000}, tmp_path, threads=1)
    done = jobs.wait_for(status.run_dir, timeout=120)
    assert done.state == "failed"
    assert "ConfigError" in done.error and "n-train 5000" in done.error
    assert "Traceback" in jobs.read_log_tail(status.run_dir)
    assert "failed" in done.describe()


def test_invalid_settings_are_refused_before_any_process_starts(tmp_path):
    with pytest.raises(ConfigError, match="no adversarial part"):
        jobs.start_job({**TINY, "ratio": "0:3"}, tmp_path)
    with pytest.raises(ConfigError):
        jobs.start_job({**TINY, "unknown_setting": 1}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_folders_are_unique_and_sanitised(tmp_path):
    a = jobs.new_run_dir(tmp_path, "../../etc/passwd")
    b = jobs.new_run_dir(tmp_path, "../../etc/passwd")
    c = jobs.new_run_dir(tmp_path, "a b/c;rm -rf ~")
    for p in (a, b, c):
        assert p.parent == tmp_path and p.is_dir()
        assert "/" not in p.name and " " not in p.name and not p.name.startswith(".")
    assert len({a, b, c}) == 3


def test_limit_of_active_runs(tmp_path):
    run = jobs.new_run_dir(tmp_path, "busy")
    (run / "job.json").write_text(json.dumps({"name": run.name, "config": {}, "created": "x"}))
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    with pytest.raises(jobs.JobError, match="limit 1"):
        jobs.start_job(TINY, tmp_path, max_active=1)


def test_a_worker_that_died_silently_is_reported_lost(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run = jobs.new_run_dir(tmp_path, "ghost")
    (run / "job.json").write_text(json.dumps({"name": run.name, "config": {}, "created": "x"}))
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": proc.pid,
                                                 "step": 3, "total_steps": 10}))
    status = jobs.job_status(run)
    assert status.state == "lost" and not status.active and "worker.log" in status.error


def test_metrics_reader_skips_a_half_written_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.5}\n{"step": 2, "tr')
    assert jobs.read_metrics(tmp_path) == [{"step": 1, "train/loss": 0.5}]
    assert jobs.read_metrics(tmp_path / "missing") == []


def test_time_format():
    assert jobs.format_seconds(5) == "5 s"
    assert jobs.format_seconds(125) == "2 min 05 s"
    assert jobs.format_seconds(3700) == "1 h 01 min"
    assert jobs.format_seconds(None) == "?"


def test_the_core_never_imports_streamlit():
    code = ("import sys, normshape_app.jobs, normshape_core.measuring.projections; "
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.stdout.strip() == "False", out.stderr
