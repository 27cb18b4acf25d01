"""Stored evaluations are read cell by cell (``normshape_app.evaljobs``): a cell of a joint
evaluation is the number a single evaluation computes, the cells still missing are named and
only they are computed, other weights find nothing, and the shipped worst case is read as the
reproduction wrote it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from normshape_app import evaljobs
from normshape_core.measuring.evaluation import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints"
COLS = ["attack", "crafted_with", "classified_with", "clean_acc", "robust_acc", "n"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A moons checkpoint (2 epochs) with a joint evaluation cached beside it."""
    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import train

    out = tmp_path_factory.mktemp("evaljobs") / "moons-pgd"
    train(TrainConfig(dataset="moons", method="pgd", shaping="attack+train", epochs=2,
                      seed=0, device="cpu"), out)
    evaluate_checkpoint(out, attacks=["pgd", "fgsm"], classify=["pn", "shaped:1:3"],
                        n_test=64, cache_dir="beside")
    return out


def _sorted(df):
    return df[COLS].sort_values(COLS[:3]).reset_index(drop=True)


def test_a_cell_of_a_joint_evaluation_is_the_cell_of_a_single_one(run):
    single = dict(attacks=["fgsm"], classify=["shaped:1:3"], n_test=64)
    have = evaljobs.stored(run, single)
    assert have.complete and len(have.rows) == 1
    fresh, _ = evaluate_checkpoint(run, use_cache=False, **single)
    assert _sorted(have.rows).equals(_sorted(fresh))


def test_missing_cells_are_named_and_only_they_computed(run, monkeypatch):
    want = dict(attacks=["pgd", "fgsm"], classify=["pn", "bn", "shaped:1:3"], n_test=64)
    have = evaljobs.stored(run, want)
    assert {(c.name, c.classify) for c in have.missing} == {("pgd", "bn"), ("fgsm", "bn")}
    assert len(have.rows) == 4
    todo = evaljobs.missing_settings(want, have.missing)
    assert (todo["attacks"], todo["classify"]) == (["pgd", "fgsm"], ["bn"])
    other = dict(want, n_test=32)  # other samples: nothing stored
    assert len(evaljobs.stored(run, other).missing) == 6


def test_other_weights_find_nothing(run, tmp_path):
    """The cache beside a checkpoint is trusted only for the weights its metadata names."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    have = evaljobs.stored(copy, dict(attacks=["fgsm"], classify=["pn"], n_test=64))
    assert not have.complete and not len(have.rows)


def test_classifier_labels_are_those_of_the_rows(run):
    have = evaljobs.stored(run, dict(attacks=["pgd"], classify=["pn", "shaped:1:3"],
                                     n_test=64))
    assert set(have.rows["classified_with"]) == {
        evaljobs.classifier_label("pn"), evaljobs.classifier_label("shaped:1:3")}


def test_the_shipped_worst_case_is_read_as_the_reproduction_wrote_it():
    """Each shipped checkpoint's worst case of the engine's ensemble, asked with the
    reproduction's settings, is found whole, with the numbers and n of results.json (read from
    the results, not written here). A dataset whose results are of an earlier ensemble (being
    regenerated) is never read as the current worst case: the app finds it missing and runs it
    in the background. At least one dataset is of the current engine."""
    from normshape_core.studies.reproduce import worst_case_settings

    checked = 0
    for results_path in sorted(SHIPPED.glob("*/results.json")):
        results = json.loads(results_path.read_text())
        ds = results["dataset"]
        current = results.get("worst_ensemble") == worst_case_settings(ds)["ensemble"]
        for entry in results["runs"].values():
            ws = worst_case_settings(ds, config=entry["config"])  # this model's samples
            rows = [r for r in entry["rows"] if r["attack"] == "worst_case"
                    and r["n"] == ws["n_test"] and r.get("ratio") in (None, "1:9")]
            if not rows:
                continue
            ckpt = SHIPPED / ds / Path(entry["checkpoint"]).name
            classify = ["pn" if r["classified_with"] == "PN" else "bn"
                        if r["classified_with"] == "BN" else "shaped:1:9" for r in rows]
            settings = {k: v for k, v in ws.items() if k != "ensemble"}
            have = evaljobs.stored(ckpt, dict(attacks=[], ensembles=[ws["ensemble"]],
                                              classify=classify, **settings))
            if not current:  # an earlier engine's numbers are not shown as this one's
                assert not have.complete and not len(have.rows), ckpt.name
                continue
            assert have.complete, (ckpt.name, have.missing)
            got = have.rows[have.rows["attack"] == "worst_case"]
            for r in rows:
                g = got[got["classified_with"] == r["classified_with"]].iloc[0]
                assert (g["robust_acc"], g["n"]) == (r["robust_acc"], r["n"]), ckpt.name
                checked += 1
    assert checked, "no shipped worst case of the current engine: run normshape reproduce"


# ---------------------------------------------------------------- background jobs
FAST = dict(attacks=[], ensembles=["apgd+square"], classify=["pn", "bn"], n_test=48,
            apgd_steps=5, square_queries=20)


def _wait(job_dir, timeout=180.0):
    import time

    end = time.time() + timeout
    while time.time() < end:
        j = evaljobs.read_job(job_dir)
        if not j.active:
            return j
        time.sleep(0.3)
    raise AssertionError(f"the job did not end within {timeout} s: {j}")


@pytest.fixture
def jobs_home(tmp_path, monkeypatch):
    """Workers allowed (the suite's default is none); every worker started is killed after."""
    import os
    import signal

    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_MAX_EVAL_JOBS", "2")
    yield tmp_path / "home"
    root = tmp_path / "home" / "evaluations" / "jobs"
    for pid_file in root.glob("*/worker.pid") if root.is_dir() else []:
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_two_callers_share_one_job_which_ends_with_the_numbers_stored(run, jobs_home):
    first = evaljobs.ensure_job(run, FAST, threads=1)
    second = evaljobs.ensure_job(run, FAST, threads=1)
    assert first.job_dir == second.job_dir and first.pid and first.pid == second.pid
    assert len(list(evaljobs.jobs_root().iterdir())) == 1
    done = _wait(first.job_dir)
    assert done.state == "finished", (done, (first.job_dir / "worker.log").read_text())
    have = evaljobs.stored(run, FAST)
    assert have.complete
    fresh, _ = evaluate_checkpoint(run, use_cache=False, **FAST)
    assert _sorted(have.rows).equals(_sorted(fresh))
    again = evaljobs.ensure_job(run, FAST)  # stored: nothing started again
    assert again.state == "finished" and again.pid == first.pid


def test_a_killed_worker_is_started_again_and_ends_with_the_same_numbers(run, jobs_home):
    import os
    import signal
    import time

    settings = dict(FAST, n_test=64)
    j = evaljobs.ensure_job(run, settings, threads=1)
    end = time.time() + 60
    while evaljobs.read_job(j.job_dir).state != "running" and time.time() < end:
        time.sleep(0.05)
    os.kill(j.pid, signal.SIGKILL)
    time.sleep(0.3)
    lost = evaljobs.read_job(j.job_dir)
    assert lost.state == "lost" and lost.active is False
    again = evaljobs.ensure_job(run, settings, threads=1)
    assert again.pid and again.pid != j.pid
    done = _wait(j.job_dir)
    assert done.state == "finished" and done.resumes == 1
    fresh, _ = evaluate_checkpoint(run, use_cache=False, **settings)
    assert _sorted(evaljobs.stored(run, settings).rows).equals(_sorted(fresh))


def test_a_job_waits_for_a_free_worker(run, jobs_home, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_MAX_EVAL_JOBS", "0")
    j = evaljobs.ensure_job(run, FAST)
    assert j.state == "queued" and not j.pid
    assert j.bound_text("PN") == "waiting for a free worker"


def test_the_worker_keeps_each_bound_and_passes_its_work_folder(run, tmp_path, monkeypatch):
    """The engine's contract (``evaluate_checkpoint(work_dir=..., on_bound=...)``), through a
    stand-in for the engine: the worker passes its ``work/`` folder and keeps the last
    bound of each classifier in status.json, which the job reads back as text."""
    from dataclasses import dataclass

    from normshape_core.measuring import evaluation

    @dataclass
    class Bound:
        classified_with: str
        ensemble: str
        done: list
        to_go: list
        robust: int
        n: int
        final: bool = False

        def text(self):
            return (f"<= {self.robust / self.n:.3f} after {', '.join(self.done)}; "
                    f"{', '.join(self.to_go)} to go")

    seen = {}

    def engine(checkpoint, *, work_dir=None, on_bound=None, progress=None, **settings):
        seen.update(work_dir=work_dir, settings=settings)
        on_bound(Bound("PN", "apgd+square", ["apgd"], ["square"], 22, 48))
        on_bound(Bound("BN", "apgd+square", ["apgd"], ["square"], 30, 48))
        return evaluation.pd.DataFrame(), {}

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", engine)
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NORMSHAPE_MAX_EVAL_JOBS", "0")  # the worker runs here, in-process
    j = evaljobs.ensure_job(run, FAST)
    assert evaljobs.engine_resumes()
    assert evaljobs._EvalWorker(j.job_dir).run() == 0
    assert seen["work_dir"] == j.job_dir / "work" and seen["settings"]["n_test"] == 48
    done = evaljobs.read_job(j.job_dir)
    assert done.state == "finished"
    assert done.bound_text("PN") == "<= 0.458 after apgd; square to go"
    assert done.bounds["BN"]["robust"] == 30 and done.bounds["BN"]["to_go"] == ["square"]
