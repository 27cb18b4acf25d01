"""Checkpoints: exact round trip, clear refusals, atomic writes, resume after a kill."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normshape_core.training.checkpoints import (CheckpointError, find_checkpoints,
                                                 load_checkpoint, read_meta)
from normshape_core.settings.config import TrainConfig
from normshape_core.blocks.norms import NormMode, norm_mode
from normshape_core.training.trainer import StopTraining, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, moons):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(dataset="moons", method="pgd", shaping="attack+train", epochs=2, steps=3)
    return train(cfg, out, dataset=moons), out


def test_round_trip_preserves_outputs_exactly(run, moons):
    result, out = run
    model, meta = load_checkpoint(out)
    x = moons.x_test[:100]
    for mode in (NormMode.PN, NormMode.FROZEN_BN):
        with torch.no_grad(), norm_mode(result.model, mode), norm_mode(model, mode):
            assert torch.equal(result.model(x), model(x))
    assert meta["config"]["shaping"] == "attack+train" and meta["config"]["ratio"] == "1:3"
    for key in ("dataset", "final_metrics", "versions", "created", "weights_sha256", "run_name"):
        assert key in meta
    # the metadata regenerates the run: same settings, same weights
    again = train(TrainConfig.from_dict(meta["config"]), dataset=moons)
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in ("model.safetensors", "model.json"):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


def test_truncated_weights_refused(run, tmp_path):
    d = _copy_run(run[1], tmp_path / "t")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated"):
        load_checkpoint(d)


def test_truncated_weights_refused_even_with_matching_metadata(run, tmp_path):
    d = _copy_run(run[1], tmp_path / "t2")
    w = d / "model.safetensors"
    data = w.read_bytes()[:-100]
    w.write_bytes(data)
    meta = json.loads((d / "model.json").read_text())
    import hashlib
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    meta["weights_bytes"] = len(data)
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(d)


def test_random_bytes_refused(run, tmp_path):
    d = _copy_run(run[1], tmp_path / "r")
    (d / "model.safetensors").write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(d)


def test_random_bytes_with_fixed_metadata_refused(run, tmp_path):
    d = _copy_run(run[1], tmp_path / "r2")
    data = os.urandom(5000)
    (d / "model.safetensors").write_bytes(data)
    meta = json.loads((d / "model.json").read_text())
    import hashlib
    meta.update(weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(d)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/normshape_pwned",))


def test_pickle_file_refused_and_never_run(run, tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(p)
    # also when disguised as weights with matching metadata
    d = _copy_run(run[1], tmp_path / "p")
    data = pickle.dumps(Evil())
    (d / "model.safetensors").write_bytes(data)
    meta = json.loads((d / "model.json").read_text())
    import hashlib
    meta.update(weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(d)
    assert not Path("/tmp/normshape_pwned").exists()


def test_foreign_json_and_foreign_weights_refused(run, tmp_path, digits):
    d = _copy_run(run[1], tmp_path / "f")
    (d / "model.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CheckpointError, match="not a normshape checkpoint"):
        load_checkpoint(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_meta(d)
    # weights of another model under this metadata
    other = train(TrainConfig(dataset="digits", method="natural", max_steps=1), tmp_path / "dg",
                  dataset=digits)
    d2 = _copy_run(run[1], tmp_path / "f2")
    data = (tmp_path / "dg" / "model.safetensors").read_bytes()
    (d2 / "model.safetensors").write_bytes(data)
    meta = json.loads((d2 / "model.json").read_text())
    import hashlib
    meta.update(weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    (d2 / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="foreign checkpoint"):
        load_checkpoint(d2)


def test_find_checkpoints_lists_valid_and_reports_invalid(run, tmp_path):
    good = _copy_run(run[1], tmp_path / "inv" / "good")
    bad = tmp_path / "inv" / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("garbage")
    found, errors = find_checkpoints(tmp_path / "inv")
    assert [f.path for f in found] == [good]
    assert len(errors) == 1 and "bad" in str(errors[0])


def test_interrupted_run_resumes_to_identical_weights(tmp_path, moons):
    cfg = TrainConfig(dataset="moons", method="pgd", shaping="attack+train", epochs=4, steps=3)
    full = train(cfg, tmp_path / "full", dataset=moons)

    def stop_after_two(trainer, event):
        if trainer.epoch == 2:
            raise KeyboardInterrupt  # as if killed right after the epoch-2 state was saved

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", dataset=moons, callbacks={"on_epoch_end": [stop_after_two]})
    assert not (tmp_path / "cut" / "model.json").exists()
    resumed = train(cfg, tmp_path / "cut", dataset=moons, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs after resume"
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == full.final_metrics["train/steps"]


@pytest.mark.parametrize("die_before", ["json", "cleanup"])
def test_a_kill_between_the_state_files_leaves_a_resumable_pair(tmp_path, moons, monkeypatch,
                                                                 die_before):
    """The training state has one commit point (state.json names its tensor file): a kill
    after the new tensor file is written but before state.json is replaced, or before the
    old tensor file is removed, resumes from the old or the new state, bit-identical."""
    from normshape_core.training import checkpoints as ck

    cfg = TrainConfig(dataset="moons", method="pgd", shaping="attack+train", epochs=3, steps=2)
    full = train(cfg, tmp_path / "full", dataset=moons)
    real_json, real_unlink = ck.atomic_write_json, Path.unlink
    calls = {"n": 0}

    def dying_json(path, obj, **kw):
        if Path(path).name == "state.json":
            calls["n"] += 1
            if calls["n"] == 2 and die_before == "json":
                raise KeyboardInterrupt  # killed: new tensor file on disk, old state.json
        return real_json(path, obj, **kw)

    def dying_unlink(self, *a, **kw):
        if self.name.startswith("state-") and die_before == "cleanup":
            raise KeyboardInterrupt  # killed: new pair committed, old tensor file still there
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(ck, "atomic_write_json", dying_json)
    monkeypatch.setattr(Path, "unlink", dying_unlink)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", dataset=moons)
    monkeypatch.undo()
    assert len(ck.state_files(tmp_path / "cut")) == 2  # the old and the new tensor file
    resumed = train(cfg, tmp_path / "cut", dataset=moons, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert not ck.state_files(tmp_path / "cut") and not (tmp_path / "cut" / "state.json").exists()


def test_killed_cli_run_resumes_and_finishes(tmp_path):
    """A real SIGKILL of the CLI between epochs; the same command with --resume finishes."""
    cmd = [sys.executable, "-m", "normshape_core", "train", "--dataset", "moons", "--method",
           "pgd", "--epochs", "40", "--steps", "3", "--out", str(tmp_path), "--name", "k",
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "k" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 40 and not (tmp_path / "k" / "model.json").exists()
    out = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "checkpoint:" in out.stdout
    model, meta = load_checkpoint(tmp_path / "k")
    assert meta["epochs"] == 40 and meta["steps"] == 40 * (1000 // 64)


def test_a_model_between_the_two_old_limits_trains_and_its_checkpoint_reads_back(
        tmp_path, moons, monkeypatch):
    """One limit on model size (``config.MAX_PARAMETERS``) for the trainer and the checkpoint
    schema. An MLP 4,096 wide and 9 deep has 134 M parameters, between the trainer's old 200 M
    and the schema's old 100 M: it passed the trainer's check and its checkpoint was then
    refused when read back. Built on the meta device (no memory), its checkpoint written by
    ``save_checkpoint`` with the trainer's own metadata (the weights' bytes a stand-in: meta
    tensors have none), it now reads back; one above the limit is refused by both alike."""
    from types import SimpleNamespace

    from normshape_core.training import checkpoints
    from normshape_core.settings.config import MAX_PARAMETERS, ConfigError, model_kwargs
    from normshape_core.blocks.models import build_model
    from normshape_core.training.trainer import Trainer, check_model_size

    def meta_of(cfg):
        trainer = SimpleNamespace(cfg=cfg, data=moons, step=1, epoch=1,
                                  dist=SimpleNamespace(world_size=1))
        return Trainer.checkpoint_meta(trainer, {"test/clean_acc_pn": 0.5})

    cfg = TrainConfig(dataset="moons", model="mlp", method="natural", model_width=4096,
                      model_depth=9)
    check_model_size(cfg, moons.input_shape, moons.num_classes)  # the trainer builds it
    with torch.device("meta"):
        model = build_model(cfg.model, moons.input_shape, moons.num_classes, **model_kwargs(cfg))
    n = sum(p.numel() for p in model.parameters())
    assert 100_000_000 < n <= MAX_PARAMETERS <= 200_000_000, n
    monkeypatch.setattr(checkpoints, "_tensors_to_bytes", lambda tensors: b"meta tensors")
    checkpoints.save_checkpoint(tmp_path / "run", model, meta_of(cfg))
    back = read_meta(tmp_path / "run")  # the schema, with the parameter count, passes
    assert (back["config"]["model_width"], back["config"]["model_depth"]) == (4096, 9)

    big = TrainConfig(dataset="moons", model="mlp", method="natural", model_width=4096,
                      model_depth=14)
    with pytest.raises(ConfigError, match="parameters"):
        check_model_size(big, moons.input_shape, moons.num_classes)
    checkpoints.save_checkpoint(tmp_path / "big", model, meta_of(big))
    with pytest.raises(CheckpointError, match="parameters"):
        read_meta(tmp_path / "big")
