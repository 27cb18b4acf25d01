"""Your own model through the front door: ``normshape evaluate --model package.module:factory
--weights FILE --data FILE.npz`` (or an image folder, or --dataset NAME) evaluates a model from
your own code like a shipped checkpoint, and every way it can be wrong is one line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from normshape_core.cli import main
from normshape_core.settings.config import ConfigError
from normshape_core.measuring.own_model import (check_own_model, dataset_from_arrays, load_data,
                                                load_own_model)

ROOT = Path(__file__).resolve().parents[1]
#: a tiny budget: the test checks the path, not the numbers
TINY = ["--n-test", "4", "--batch-size", "4", "--steps", "1", "--apgd-steps", "1",
        "--square-queries", "1", "--target-classes", "1", "--apgd-restarts", "1",
        "--classify", "pn,bn,shaped:1:3", "--group-size", "2", "--device", "cpu"]

MODELS = '''
import torch
from torch import nn


def small(num_classes=3):
    """A BatchNorm CNN for 3x8x8 inputs."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes))


def no_bn():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))


def image_out():
    return nn.Sequential(nn.BatchNorm2d(3))  # [N, 3, 8, 8] out: not logits


def broken():
    raise RuntimeError("cannot build this one")
'''


def _npz(path: Path, n=8, shape=(3, 8, 8), classes=3, scale=1.0, train=16) -> Path:
    rng = np.random.default_rng(0)
    arrays = dict(x=(rng.random((n, *shape)) * scale).astype(np.float32),
                  y=rng.integers(0, classes, n))
    if train:
        arrays["x_train"] = rng.random((train, *shape)).astype(np.float32)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A working folder holding the user's own module (imported from there, as the CLI does)
    and an 8x8 data file; sys.path restored afterwards."""
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("mymodels", None)


def _run(argv, capsys):
    rc = main(["evaluate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_resnet18_from_torchvision_on_cifar10_shaped_data_prints_pn_bn_and_shaped(tmp_path):
    """The acceptance case, through the ``normshape`` command: torchvision's ResNet-18 with
    random weights for 10 classes, a written CIFAR-10-shaped .npz; PN, BN and shaped rows,
    the worst case (the default ensemble) beside PGD, every accuracy with its interval."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(),
              tmp_path / "resnet18.safetensors")
    _npz(tmp_path / "cifar.npz", n=4, shape=(3, 32, 32), classes=10)
    cmd = [sys.executable, "-c", "import sys; from normshape_app.cli import main; "
           "sys.exit(main())", "evaluate", "--model", "torchvision.models:resnet18",
           "--model-kwargs", '{"num_classes": 10}', "--weights", "resnet18.safetensors",
           "--data", "cifar.npz", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("torchvision.models:resnet18, weights resnet18.safetensors: n=4")
    assert "95 % Clopper-Pearson interval" in out
    assert "reference pool drawn from 16 training samples" in out
    import re

    worst = out.split("worst case per sample (the headline)")[1]
    acc = r"[01]\.\d{3} \[[01]\.\d{2}, [01]\.\d{2}\]"  # an accuracy with its interval
    for row in ("PN", "BN", "shaped 1:3 (g=2)"):  # a worst-case row per inference mode:
        line = next(ln for ln in worst.splitlines() if ln.startswith(row + " "))
        assert len(re.findall(acc, line)) == 3, line  # clean, PGD (paper), worst case
    assert worst.count("worst of 5 attacks (default: apgd, transfer, apgd_dlr, apgd_t, "
                       "square)") == 3, out


def test_a_pt_file_is_read_with_weights_only_and_the_api_evaluates(folder):
    from normshape_core import evaluate

    model = load_own_model("mymodels:small")
    torch.save({"state_dict": model.state_dict()}, folder / "w.pt")
    again = load_own_model("mymodels:small", folder / "w.pt")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    data = load_data(_npz(folder / "d.npz"))
    assert check_own_model(again, data) == 3
    df = evaluate(again, data, attacks="pgd", classify=["pn", "bn", "shaped:1:3"], steps=1,
                  batch_size=4, group_size=2, eps=0.1, n_test=4)
    assert set(df["classified_with"]) == {"PN", "BN", "shaped 1:3 (g=2)"}


def test_an_image_folder_in_imagefolder_layout(folder):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            (folder / "imgs" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    folder / "imgs" / split / c / f"{i}.png")
    data = load_data(folder / "imgs")
    assert data.classes == ["cat", "dog"] and data.x_test.shape == (4, 3, 8, 8)
    assert data.x_train.shape == (12, 3, 8, 8) and 0 <= data.x_test.min() <= data.x_test.max() <= 1
    assert data.y_test.tolist() == [0, 0, 1, 1]
    rc = main(["evaluate", "--model", "mymodels:small", "--model-kwargs",
               '{"num_classes": 2}', "--data", "imgs", "--attacks", "pgd", *TINY])
    assert rc == 0


BAD = {  # case -> (argv after evaluate, what the one line says)
    "no BN layer": (["--model", "mymodels:no_bn", "--data", "d.npz"], "no BatchNorm layer"),
    "output not [N, classes]": (["--model", "mymodels:image_out", "--data", "d.npz"],
                                "not [2, classes] logits"),
    "inputs outside [0, 1]": (["--model", "mymodels:small", "--data", "x255.npz"],
                              "x holds values in [0.0"),
    "factory cannot be imported": (["--model", "no_such_package.models:net", "--data",
                                    "d.npz"], "cannot import no_such_package.models"),
    "factory not in the module": (["--model", "mymodels:nothing", "--data", "d.npz"],
                                  "mymodels has no nothing"),
    "factory fails": (["--model", "mymodels:broken", "--data", "d.npz"],
                      "the factory failed (RuntimeError: cannot build this one)"),
    "not a factory spec": (["--model", "mymodels.small", "--data", "d.npz"],
                           "is not package.module:factory"),
    "weights that do not fit": (["--model", "mymodels:small", "--model-kwargs",
                                 '{"num_classes": 5}', "--weights", "w.safetensors", "--data",
                                 "d.npz"], "do not fit the model: wrong shape: 4.weight [3, 256]"
                                           " in the file, [5, 256] in the model"),
    "a pickle in a .pt": (["--model", "mymodels:small", "--weights", "pickle.pt", "--data",
                           "d.npz"], "cannot be read with torch.load(weights_only=True)"),
    "a pickle named .safetensors": (["--model", "mymodels:small", "--weights",
                                     "pickle.safetensors", "--data", "d.npz"],
                                    "never unpickles"),
    "labels beyond the outputs": (["--model", "mymodels:small", "--model-kwargs",
                                   '{"num_classes": 2}', "--data", "d.npz"],
                                  "but the model has 2 outputs"),
    "no data": (["--model", "mymodels:small"], "--model needs its data"),
    "data and dataset": (["--model", "mymodels:small", "--data", "d.npz", "--dataset",
                          "moons"], "--model needs its data"),
    "weights without a model": (["checkpoints/x", "--weights", "w.safetensors"],
                                "--weights goes with --model"),
    "a pool too small": (["--model", "mymodels:small", "--data", "d.npz", "--classify",
                          "shaped:1:9"], "the reference pool has 16 samples but a group needs "
                                         "90 references"),
    "kwargs not JSON": (["--model", "mymodels:small", "--model-kwargs", "{num_classes: 2}",
                         "--data", "d.npz"], "--model-kwargs is not valid JSON"),
    "an npz without y": (["--model", "mymodels:small", "--data", "noy.npz"], "no array y"),
}


class _NotWeights:
    pass


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2(folder, capsys, case):
    from safetensors.torch import save_file

    _npz(folder / "d.npz")
    _npz(folder / "x255.npz", scale=255.0)
    np.savez(folder / "noy.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    save_file(load_own_model("mymodels:small").state_dict(), folder / "w.safetensors")
    torch.save({"state_dict": _NotWeights()}, folder / "pickle.pt")
    (folder / "pickle.safetensors").write_bytes((folder / "pickle.pt").read_bytes())
    argv, says = BAD[case]
    rc, out, err = _run(["--attacks", "pgd", *TINY[:-4], "--device", "cpu", *argv], capsys)
    assert rc == 2, (case, out, err)
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, (case, err)


def test_dataset_from_arrays_names_where_the_pool_comes_from():
    x, y = torch.rand(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    assert "drawn from these 6 test samples" in dataset_from_arrays(x, y).description
    assert "drawn from 10 training samples" in dataset_from_arrays(
        x, y, x_train=torch.rand(10, 2)).description
    with pytest.raises(ConfigError, match="one label per sample"):
        dataset_from_arrays(x, y[:3])


def test_the_upload_box_says_how_to_evaluate_your_own_model():
    """Uploads stay registry-only (no uploaded code runs); the box points to the CLI."""
    from streamlit.testing.v1 import AppTest

    def box():
        from normshape_app.uploads import upload_section

        upload_section()

    at = AppTest.from_function(box).run(timeout=120)
    assert not at.exception
    said = " ".join(c.value for c in at.caption)
    assert "normshape evaluate --model package.module:factory" in said, said
    assert "no uploaded code ever runs" in said


def test_the_readmes_own_model_example_runs(capsys):
    """docs/python-api.md, "Your own model in a notebook": torchvision's ResNet-18 on CIFAR-10-shaped
    tensors, PN, BN and shaped inference, the worst case."""
    import re

    text = (ROOT / "docs" / "python-api.md").read_text()
    section = text.split("\n### Your own model in a notebook", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(compile(block, "docs/python-api.md (your own model)", "exec"), namespace)
    df = namespace["df"]
    assert set(df["classified_with"]) == {"PN", "BN", "shaped 1:9 (g=10)"}
    assert set(df[df["attack"] == "worst_case"]["classified_with"]) == {
        "PN", "BN", "shaped 1:9 (g=10)"}
    assert "worst_case" in capsys.readouterr().out
