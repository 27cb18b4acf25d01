"""A shipped checkpoint trained again from its metadata: the same weights bit for bit on a
processor whose float kernels are those of the machine that trained it; on another one
(PyTorch promises bit-identity on one machine, not across processors: oneDNN and ATen pick
kernels by instruction set, whose float sums differ in the last bits), the same first
training step exactly (same data, initialisation, settings and first forward pass) and the
same final accuracies within ``ACC_TOL``: adversarial training's sign and argmax steps make
those last bits grow into different weights (measured on an AVX-512 machine with AMX
against the shipped moons runs: 1e-6 to 0.87 of a tensor's largest value, final accuracies
within 0.008). The same machine gives the same weights bit for bit (``test_training``'s
re-run tests)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

ACC_TOL = 0.03


def _step_line(line: dict) -> dict:
    return {k: v for k, v in line.items() if not k.startswith("time/")}


def assert_regenerates(folder: Path, model, again, what) -> str:
    """Returns "bit for bit" or "another processor" (and asserts what holds there)."""
    if all(torch.equal(v, again.model.state_dict()[k]) for k, v in model.state_dict().items()):
        return "bit for bit"
    shipped = json.loads((Path(folder) / "metrics.jsonl").read_text().splitlines()[0])
    assert again.history, what
    assert _step_line(again.history[0]) == _step_line(shipped), (what, again.history[0], shipped)
    meta = json.loads((Path(folder) / "model.json").read_text())
    accs = {k: v for k, v in meta["final_metrics"].items() if "acc" in k}
    assert accs, what
    for k, v in accs.items():
        assert abs(again.final_metrics[k] - v) <= ACC_TOL, (what, k, again.final_metrics[k], v)
    return "another processor"
