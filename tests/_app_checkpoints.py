"""Small real checkpoints for the app tests, trained once per pytest process into a temp
folder through the real trainer (``training.train``), the way the shipped ones are made.

moons: natural, PGD adv only, PGD + shaping in attack+training at 1:1 and 1:3 (3 epochs each);
digits: natural and PGD + shaping 1:3 (1 epoch each). About 10 s on two cores.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

RUNS = [
    ("moons-natural", dict(dataset="moons", method="natural", epochs=3)),
    ("moons-pgd-adv-only", dict(dataset="moons", method="pgd", shaping="none", epochs=3)),
    ("moons-pgd-shaped-1-1", dict(dataset="moons", method="pgd", shaping="attack+train",
                                  ratio="1:1", epochs=3)),
    ("moons-pgd-shaped-1-3", dict(dataset="moons", method="pgd", shaping="attack+train",
                                  ratio="1:3", epochs=3)),
    ("digits-natural", dict(dataset="digits", method="natural", epochs=1, eval_samples=100)),
    ("digits-pgd-shaped-1-3", dict(dataset="digits", method="pgd", shaping="attack+train",
                                   ratio="1:3", epochs=1, eval_samples=100, steps=3)),
]


@functools.lru_cache(maxsize=None)
def checkpoint_root() -> Path:
    """A folder holding the run folders above (trained on the first call)."""
    import torch

    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import train

    root = Path(tempfile.mkdtemp(prefix="normshape-app-ckpts-"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, settings in RUNS:
            train(TrainConfig(seed=0, device="cpu", **settings), root / name)
    finally:
        torch.set_num_threads(threads)
    return root
