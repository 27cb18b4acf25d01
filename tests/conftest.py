import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Small CPU models run fastest (and deterministically) on a fixed, small thread count.
torch.set_num_threads(int(os.environ.get("NORMSHAPE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def moons():
    from normshape_core.data import load_dataset

    return load_dataset("moons")


@pytest.fixture(scope="session")
def digits():
    from normshape_core.data import load_dataset

    return load_dataset("digits")
