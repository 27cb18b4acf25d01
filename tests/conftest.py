import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The tests never write to the real user folder (evaluation caches, uploads, app runs): one
# temporary folder for the session, inherited by every subprocess (servers, workers, CLIs).
TEST_HOME = tempfile.mkdtemp(prefix="normshape-test-home-")
os.environ["NORMSHAPE_HOME"] = TEST_HOME
atexit.register(shutil.rmtree, TEST_HOME, ignore_errors=True)
# The app starts a background worker for each worst case it does not have stored: none in
# the tests unless a test asks (its jobs wait, saying so), so no worker outlives its test.
os.environ["NORMSHAPE_MAX_EVAL_JOBS"] = "0"
# Small CPU models run fastest (and deterministically) on a fixed, small thread count.
torch.set_num_threads(int(os.environ.get("NORMSHAPE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def moons():
    from normshape_core.blocks.data import load_dataset

    return load_dataset("moons")


@pytest.fixture(scope="session")
def digits():
    from normshape_core.blocks.data import load_dataset

    return load_dataset("digits")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes long; runs only when its opt-in "
                                       "environment variable is set (see the test)")
