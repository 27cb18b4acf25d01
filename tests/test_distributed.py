"""Data parallelism through the real launcher: ``torchrun --nproc_per_node=2`` with gloo on CPU.

Each rank's shaped batches keep the exact ratio adv:clean, rank 0 alone writes the run,
its checkpoint loads, a killed run resumes to the very weights of an uninterrupted one, and
with SyncBatchNorm a 2-rank natural run computes what one process computes on the global
batch. The helpers for splitting evaluation over ranks are checked under torchrun too.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from normshape_core.training.checkpoints import load_checkpoint, read_meta
from normshape_core.settings.config import ConfigError, Ratio, TrainConfig
from normshape_core.training.distributed import DistContext, shard_bounds
from normshape_core.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# Shaped PGD training, 1:3, global batch 64: every rank trains on 32 = 24 clean + 8 adversarial.
SHAPED = ["--dataset", "moons", "--method", "pgd", "--shaping", "attack+train", "--ratio", "1:3",
          "--batch-size", "64", "--epochs", "4", "--steps", "3", "--eval-samples", "100",
          "--device", "cpu", "--quiet"]
EPOCHS, STEPS_PER_EPOCH = 4, 1000 // 64


def _train_cmd(out: Path, name: str, flags):
    return TORCHRUN + ["-m", "normshape_core", "train", *flags, "--out", str(out), "--name", name]


def _run(cmd, timeout=120):
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _rows(path: Path):
    return [json.loads(l) for l in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def shaped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = _run(_train_cmd(out, "shaped", SHAPED))
    return out / "shaped", proc


def test_both_ranks_trained_on_shaped_batches_with_the_exact_ratio(shaped_run):
    run, _ = shaped_run
    total = EPOCHS * STEPS_PER_EPOCH
    for rank, rows in ((0, [0, 32]), (1, [32, 64])):
        log = _rows(run / f"rank{rank}.jsonl")
        assert [r["step"] for r in log] == list(range(1, total + 1)), f"rank {rank} missed steps"
        for r in log:
            assert r["rank"] == rank and r["world_size"] == 2 and r["rows"] == rows
            # the local batch is itself a shaped batch: n_adv : n_clean exactly 1 : 3
            assert (r["n_clean"], r["n_adv"]) == (24, 8), r
            assert r["n_clean"] == 3 * r["n_adv"]
    assert not (run / "rank2.jsonl").exists()


def test_rank0_alone_writes_metrics_and_checkpoint_and_it_loads(shaped_run):
    run, proc = shaped_run
    assert proc.stdout.count("checkpoint: ") == 1, "only rank 0 prints"
    steps = [r["step"] for r in _rows(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), "one metrics line per step"
    model, meta = load_checkpoint(run)
    assert meta["world_size"] == 2 and meta["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert meta["config"]["batch_size"] == 64  # the global batch
    assert meta["final_metrics"]["test/clean_acc_pn"] > 0.8
    assert not any(k.startswith("module.") for k in model.state_dict())


def _children(pid: int):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_distributed_run_resumes_to_the_uninterrupted_weights(shaped_run, tmp_path):
    """SIGKILL of torchrun and of both ranks after the first saved epoch; the same command
    with --resume finishes, and ends on exactly the weights of the uninterrupted run."""
    cmd = _train_cmd(tmp_path, "k", SHAPED)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = tmp_path / "k" / "state.json"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    # torchrun starts every rank in a session of its own: kill the launcher's group and theirs
    ranks = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert len(ranks) == 2, f"expected 2 rank processes under torchrun, found {ranks}"
    while any(_alive(p) for p in ranks) and time.time() < deadline:
        time.sleep(0.02)
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < EPOCHS and not (tmp_path / "k" / "model.json").exists()

    _run(cmd + ["--resume"])
    model, meta = load_checkpoint(tmp_path / "k")
    assert meta["steps"] == EPOCHS * STEPS_PER_EPOCH and meta["epochs"] == EPOCHS
    for rank in (0, 1):
        steps = [r["step"] for r in _rows(tmp_path / "k" / f"rank{rank}.jsonl")]
        assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), "rank log cut at the resume"
    full = load_file(shaped_run[0] / "model.safetensors")
    resumed = load_file(tmp_path / "k" / "model.safetensors")
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), f"{k} differs after a resume (killed at epoch {killed_at})"


def test_sync_bn_natural_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    """natural + SyncBatchNorm, 2 ranks x 32 samples vs one process x 64 samples. SGD: with
    Adam the biases of the Linear layers before BN (gradient exactly 0 in exact arithmetic)
    random-walk on float noise, in one process as in two, so the weights would not compare."""
    flags = ["--dataset", "moons", "--method", "natural", "--sync-bn", "--batch-size", "64",
             "--epochs", "2", "--optimizer", "sgd", "--lr", "0.1", "--eval-samples", "100",
             "--device", "cpu", "--quiet"]
    _run(_train_cmd(tmp_path, "sync", flags))
    meta = read_meta(tmp_path / "sync")
    single = train(TrainConfig.from_dict(meta["config"]))
    dist_w = load_file(tmp_path / "sync" / "model.safetensors")
    diffs = {k: float((dist_w[k].double() - v.double()).abs().max())
             for k, v in single.model.state_dict().items()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 2e-5, f"max abs difference {diffs[worst]:.2e} at {worst}"
    for k, v in single.model.state_dict().items():
        assert torch.allclose(dist_w[k].double(), v.double(), rtol=1e-5, atol=1e-5), k
    # clean accuracy with PN, computed on two shards and gathered: the same figure
    assert meta["final_metrics"]["test/clean_acc_pn"] == single.final_metrics["test/clean_acc_pn"]


def _helpers_on_one_rank(rank: int, port: int, out_dir: str) -> None:
    """One of two ranks, forked from the test process (no interpreter start-up to pay)."""
    from normshape_core.training import distributed as D
    from normshape_core.blocks.norms import NormMode, norm_mode, running_stats

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    ctx = D.setup("cpu", "auto")
    out = {"rank": ctx.rank, "world": ctx.world_size, "backend": ctx.backend}
    # per-sample results of 11 samples in shards aligned on batches of 4, gathered in order
    out["rows"] = D.map_sharded(lambda a, b: torch.arange(a, b) * 10, 11, align=4).tolist()
    lo, hi = D.shard_bounds(5)
    out["bools"] = D.gather_rows(torch.arange(lo, hi) % 2 == 0, 5).tolist()
    out["jobs"] = D.map_jobs(lambda j: (j, D.current().rank), ["a", "b", "c"])
    # AllReduceBatchNorm: global statistics; frozen BN leaves running statistics alone
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    mine = x[rank * 4:(rank + 1) * 4]
    bn = D.convert_sync_bn(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), torch.device("cpu"))
    before = running_stats(bn)
    with norm_mode(bn, NormMode.FROZEN_BN):
        y = bn(mine)
    out["frozen_kept"] = all(torch.equal(v, before[k]) for k, v in running_stats(bn).items())
    ref = torch.nn.functional.batch_norm(x, None, None, training=True)[rank * 4:(rank + 1) * 4]
    out["global_stats_err"] = float((y - ref).abs().max())
    with norm_mode(bn, NormMode.BN_UPDATE):
        bn(mine)
    out["running_mean_err"] = float((bn[0].running_mean - 0.1 * x.mean(0)).abs().max())
    out["running_var_err"] = float((bn[0].running_var - (0.9 + 0.1 * x.var(0))).abs().max())
    # the gradient of the summed loss of both ranks reaches each rank's inputs
    xr = mine.clone().requires_grad_(True)
    with norm_mode(bn, NormMode.FROZEN_BN):
        (bn(xr)[:, 0] * torch.arange(1.0, 5.0)).sum().backward()
    xa = x.clone().requires_grad_(True)
    full = torch.nn.functional.batch_norm(xa, None, None, training=True)
    (full[:, 0] * torch.arange(1.0, 5.0).repeat(2)).sum().backward()
    out["grad_err"] = float((xr.grad - xa.grad[rank * 4:(rank + 1) * 4]).abs().max())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    D.cleanup()


def test_evaluation_helpers_split_work_over_ranks_and_gather_in_order(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_helpers_on_one_rank, args=(port, str(tmp_path)), nprocs=2,
                       start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, r in enumerate(results):
        assert (r["rank"], r["world"], r["backend"]) == (rank, 2, "gloo")
        assert r["rows"] == [i * 10 for i in range(11)]
        assert r["bools"] == [i % 2 == 0 for i in range(5)]
        assert r["jobs"] == [["a", 0], ["b", 1], ["c", 0]]
        assert r["frozen_kept"], "frozen BN moved running statistics"
        assert r["global_stats_err"] < 1e-5, "each rank must normalise with the global batch"
        assert r["running_mean_err"] < 1e-6 and r["running_var_err"] < 1e-5
        assert r["grad_err"] < 1e-5, "input gradients must include the other rank's loss"


# ---------------------------------------------------------------- no launcher needed
@pytest.mark.parametrize("batch,world,ratio,match", [
    (64, 3, Ratio(1, 3), "does not split over 3 ranks"),
    (60, 2, Ratio(1, 3), "local batches of 30, which do not split into the 4 equal parts"),
    (60, 2, Ratio(1, 3), "multiple of 8"),
])
def test_global_batch_that_cannot_keep_the_ratio_on_every_rank_is_refused(batch, world, ratio,
                                                                          match):
    with pytest.raises(ConfigError, match=match):
        DistContext(rank=0, world_size=world).local_batch_size(batch, ratio)


def test_local_batch_and_rows_of_each_rank():
    ranks = [DistContext(rank=r, world_size=4) for r in range(4)]
    assert {c.local_batch_size(64, Ratio(1, 3)) for c in ranks} == {16}
    assert ranks[0].local_batch_size(8) == 2  # no shaping: only divisibility
    assert [c.batch_rows(64) for c in ranks] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert DistContext().local_batch_size(64, Ratio(1, 3)) == 64


@pytest.mark.parametrize("n,world,align", [(11, 2, 4), (500, 3, 1), (2, 4, 1), (130, 4, 32)])
def test_shards_cover_every_sample_once_and_start_on_batch_boundaries(n, world, align):
    bounds = [shard_bounds(n, r, world, align) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(lo % align == 0 or lo == n for lo, _ in bounds)
    chunks = [-(-(hi - lo) // align) for lo, hi in bounds]  # whole batches per rank
    assert max(chunks) - min(chunks) <= 1


def test_one_process_runs_unchanged_without_torchrun(moons):
    cfg = TrainConfig(dataset="moons", method="pgd", shaping="attack+train", max_steps=2,
                      sync_bn=True)
    from normshape_core.training.trainer import Trainer

    tr = Trainer(cfg, dataset=moons)
    assert not tr.dist.active and tr.train_model is tr.model
    assert (tr.n_clean, tr.n_adv) == (48, 16)
    assert TrainConfig(dataset="moons", sync_bn=False).fingerprint() == \
        TrainConfig(dataset="moons", dist_backend="gloo").fingerprint()


@pytest.mark.parametrize("world, teardown", [("2", False), ("1", True)])
def test_a_torchrun_worker_leaves_without_the_interpreters_teardown(world, teardown):
    """Under torchrun (WORLD_SIZE > 1) the command ends with os._exit (no teardown, where
    gloo's leftover threads sometimes aborted a finished rank), its output flushed."""
    code = ("import atexit, sys; from normshape_core.__main__ import exit_process; "
            "atexit.register(lambda: print('teardown ran')); print('done', end=''); "
            "print('to stderr', file=sys.stderr, end=''); exit_process(3)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**ENV, "WORLD_SIZE": world}, timeout=120)
    assert out.returncode == 3 and out.stdout.startswith("done")
    assert out.stderr.endswith("to stderr")
    assert ("teardown ran" in out.stdout) == teardown
