"""The CLI: every flag documented with its default; invalid input -> one line, exit 2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normshape_core.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_help_documents_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    import dataclasses
    from normshape_core.settings.config import TrainConfig
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert text.count("default") >= len(dataclasses.fields(TrainConfig))


@pytest.mark.parametrize("argv,fragment", [
    (["--ratio", "0:3", "--shaping", "attack+train"], "no adversarial part"),
    (["--ratio", "3:1:2", "--shaping", "attack+train"], "ADV:CLEAN"),
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--batch-size", "2", "--shaping", "attack+train"], "smaller than the 4 parts"),
    (["--epochs", "abc"], "invalid int value"),
    (["--preset", "nope"], "unknown preset"),
])
def test_invalid_input_exits_2_with_one_line(argv, fragment, capsys, tmp_path):
    try:
        rc = main(["train", "--out", str(tmp_path)] + argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err


def test_train_through_the_real_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "normshape_core", "train", "--dataset", "moons",
                          "--method", "pgd", "--shaping", "attack+train", "--ratio", "1:3",
                          "--eps", "0.1", "--epochs", "2", "--seed", "3", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("checkpoint: ")][-1]
    path = Path(line.split(": ", 1)[1])
    assert path.exists() and path.suffix == ".safetensors"
    assert "step" in out.stderr  # tqdm progress bar
    again = subprocess.run([sys.executable, "-m", "normshape_core", "train", "--dataset", "moons",
                            "--method", "pgd", "--shaping", "attack+train", "--eps", "0.1",
                            "--epochs", "2", "--seed", "3", "--out", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert again.returncode == 2 and "already holds a finished checkpoint" in again.stderr
