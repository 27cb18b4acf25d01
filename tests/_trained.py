"""Small models trained in a second or two for the attack / shaping / evaluation /
diagnostics tests, cached for the whole pytest process (a plain module: no conftest needed).

Training here is a tiny loop of its own (natural, PGD-AT, PGD + shaping in attack and
training) so that these tests do not depend on the trainer's defaults.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from normshape_core.attacks import pgd_linf
from normshape_core.settings.config import Ratio
from normshape_core.blocks.data import load_dataset
from normshape_core.blocks.models import build_model
from normshape_core.blocks.norms import NormMode, norm_mode


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for these tiny models, restored afterwards. On two cores shared
    with other jobs, two threads spin against each other: measured 278 s for these four test
    files with 2 threads against 25 s with 1 (a 200-forward MLP loop: 20 s against 0.03 s).
    Import this fixture into a test module to use it (autouse)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

MOONS_EPS = 0.08
DIGITS_EPS = 0.1


@functools.lru_cache(maxsize=None)
def moons():
    return load_dataset("moons", seed=0)


@functools.lru_cache(maxsize=None)
def digits():
    return load_dataset("digits", seed=0)


def tiny_train(model, data, *, steps: int, batch: int = 64, lr: float = 0.01,
               method: str = "natural", ratio: str = "1:3", eps: float = 0.08,
               attack_steps: int = 5, seed: int = 0):
    """natural | pgd (adv only) | shaped (PGD + shaping in attack and training, Eq. 5)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_clean, _ = Ratio.parse(ratio).split(batch)
    for step in range(steps):
        for group in opt.param_groups:  # cosine schedule: ends with a settled model
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())
        idx = torch.randint(len(data.x_train), (batch,), generator=g)
        x, y = data.x_train[idx], data.y_train[idx]
        kw = dict(eps=eps, step_size=eps / 3, steps=attack_steps, generator=g)
        if method == "pgd":
            with norm_mode(model, NormMode.FROZEN_BN):
                x = pgd_linf(model, x, y, **kw)
        elif method == "shaped":
            k = n_clean
            with norm_mode(model, NormMode.FROZEN_BN):
                x_adv = pgd_linf(lambda xa: model(torch.cat([x[:k], xa]))[k:], x[k:], y[k:], **kw)
            x = torch.cat([x[:k], x_adv])
        elif method != "natural":
            raise ValueError(method)
        with norm_mode(model, NormMode.BN_UPDATE):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@functools.lru_cache(maxsize=None)
def natural_mlp(steps: int = 400):
    torch.manual_seed(0)
    m = build_model("mlp", (2,), 2)
    return tiny_train(m, moons(), steps=steps, lr=0.01)


@functools.lru_cache(maxsize=None)
def pgd_mlp(steps: int = 400):
    torch.manual_seed(0)
    m = build_model("mlp", (2,), 2)
    return tiny_train(m, moons(), steps=steps, lr=0.01, method="pgd", eps=MOONS_EPS)


@functools.lru_cache(maxsize=None)
def shaped_mlp(steps: int = 400):
    torch.manual_seed(0)
    m = build_model("mlp", (2,), 2)
    return tiny_train(m, moons(), steps=steps, lr=0.01, method="shaped", eps=MOONS_EPS)


@functools.lru_cache(maxsize=None)
def natural_cnn(steps: int = 60):
    torch.manual_seed(0)
    m = build_model("small_cnn", (1, 8, 8), 10, channels=16, hidden=64)
    return tiny_train(m, digits(), steps=steps, lr=0.005)


def accuracy(clf, x, y) -> float:
    with torch.no_grad():
        return float((clf(x).argmax(1) == y).float().mean())
