"""The user's folder: where it is, and that evaluation caches go there while the shipped
results beside a checkpoint are read but never written (except by ``reproduce``)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import _trained as T
from _trained import one_thread  # noqa: F401  (autouse fixture)
from normshape_core.base import userdata
from normshape_core.training.checkpoints import save_checkpoint
from normshape_core.settings.config import TrainConfig
from normshape_core.measuring.evaluation import BESIDE, cache_path_for, evaluate_checkpoint

KW = dict(attacks=["fgsm"], classify=["pn", "shaped:1:3"], n_test=60)


def test_the_tests_never_use_the_real_user_folder():
    home = userdata.data_home()
    assert "normshape-test-home-" in str(home)
    assert not str(home).startswith(str(Path.home() / ".local"))


def test_data_home_follows_the_override_then_xdg_then_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "mine"))
    assert userdata.data_home() == tmp_path / "mine"
    assert userdata.eval_cache_dir() == tmp_path / "mine" / "evaluations"
    assert userdata.uploads_dir() == tmp_path / "mine" / "uploads"
    assert userdata.runs_dir() == tmp_path / "mine" / "runs"
    monkeypatch.delenv("NORMSHAPE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert userdata.data_home() == tmp_path / "xdg" / "normshape"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # invalid per the XDG spec: ignored
    assert userdata.data_home() == tmp_path / "home" / ".local" / "share" / "normshape"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert userdata.data_home() == tmp_path / "home" / ".local" / "share" / "normshape"
    assert not (tmp_path / "home").exists()  # nothing is created by asking


def _checkpoint(folder: Path) -> Path:
    cfg = TrainConfig(dataset="moons", model="mlp", method="pgd", shaping="attack+train",
                      ratio="1:3", eps=T.MOONS_EPS, steps=5, seed=0)
    save_checkpoint(folder, T.shaped_mlp(steps=50),
                    {"config": cfg.to_dict(), "run_name": folder.name, "dataset": "moons",
                     "input_shape": [2], "num_classes": 2})
    return folder


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_shipped_results_are_read_and_new_ones_go_to_the_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    ckpt = _checkpoint(tmp_path / "shipped" / "run")
    # reproduce writes the shipped results beside the checkpoint
    df0, meta = evaluate_checkpoint(ckpt, cache_dir=BESIDE, **KW)
    beside = cache_path_for(ckpt, BESIDE)
    assert df0.attrs["cached"] is False and beside == ckpt / "model.eval.json"
    assert beside.exists() and not (tmp_path / "home").exists()
    before = _digest(ckpt)

    df1, _ = evaluate_checkpoint(ckpt, **KW)  # the app's default: found beside, read only
    assert df1.attrs["cached"] is True
    df2, _ = evaluate_checkpoint(ckpt, **{**KW, "n_test": 40})  # new settings: user folder
    assert df2.attrs["cached"] is False
    assert _digest(ckpt) == before, "a shipped checkpoint folder was written to"
    user = cache_path_for(ckpt)
    assert user == tmp_path / "home" / "evaluations" / f"{meta['weights_sha256']}.eval.json"
    assert len(json.loads(user.read_text())["entries"]) == 1
    df3, _ = evaluate_checkpoint(ckpt, **{**KW, "n_test": 40})
    assert df3.attrs["cached"] is True and (df3["n"] == 40).all()

    # the same weights elsewhere (an upload, a copy) share the user folder's results
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(ckpt, copy)
    (copy / "model.eval.json").unlink()
    assert evaluate_checkpoint(copy, **{**KW, "n_test": 40})[0].attrs["cached"] is True
    assert evaluate_checkpoint(copy, **KW)[0].attrs["cached"] is False  # not beside it


def test_reproduce_writes_its_results_beside_the_checkpoints(tmp_path, monkeypatch):
    """``reproduce`` regenerates the shipped results: they land beside the checkpoints."""
    from normshape_core.studies.reproduce import evaluate_set

    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    ckpt = _checkpoint(tmp_path / "checkpoints" / "run")
    res = evaluate_set({"natural": ckpt}, "moons", n_test=60, table_attacks=["fgsm"],
                       diagnostics=False, log=lambda *_: None,
                       worst_budget=dict(apgd_steps=10, square_queries=50))
    assert res["runs"]["natural"]["rows"]
    assert (ckpt / "model.eval.json").exists()
    assert not (tmp_path / "home" / "evaluations").exists()



def test_the_user_folder_is_documented():
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "install.md").read_text()
    assert "NORMSHAPE_HOME" in doc and "~/.local/share/normshape" in doc
    assert "](docs/install.md)" in (root / "README.md").read_text()


def test_error_logs_rotate_and_never_follow_a_file_already_there(monkeypatch, tmp_path):
    from normshape_core.base import userdata

    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path))
    n = userdata.MAX_ERROR_LOGS + 7
    paths = [userdata.write_error_log(f"failure {i}\n") for i in range(n)]
    assert len(set(paths)) == len(paths)  # the same second, the same process: own files
    kept = sorted(userdata.logs_dir().glob("error-*.log"))
    assert len(kept) == userdata.MAX_ERROR_LOGS
    assert set(kept) == set(paths[-userdata.MAX_ERROR_LOGS:])  # the newest ones
    assert paths[-1].read_text() == f"failure {userdata.MAX_ERROR_LOGS + 6}\n"


def test_an_error_log_goes_to_the_temporary_folder_when_the_user_folder_is_unusable(
        monkeypatch, tmp_path):
    import tempfile

    from normshape_core.base import userdata

    (tmp_path / "home").write_text("a file, not a folder")
    monkeypatch.setenv("NORMSHAPE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = userdata.write_error_log("x")
    assert path.parent == tmp_path / "tmp" and path.name.startswith("normshape-error-")
    (tmp_path / "tmp" / "error-other-program.log").write_text("not ours")
    for _ in range(userdata.MAX_ERROR_LOGS + 2):
        userdata.write_error_log("y")
    assert len(list((tmp_path / "tmp").glob("normshape-error-*.log"))) == userdata.MAX_ERROR_LOGS
    assert (tmp_path / "tmp" / "error-other-program.log").exists()  # only ours rotate
