"""Norm control: frozen BN leaves running statistics alone; PN equals eval(); scoped modes."""
import pytest
import torch

from normshape_core.blocks.models import MODELS, build_model
from normshape_core.blocks.norms import (NormMode, capture_bn_stats, norm_mode, running_stats)

SHAPES = {"mlp": (2,), "small_cnn": (1, 8, 8), "preact_resnet18": (3, 16, 16),
          "wide_resnet": (3, 16, 16)}
KW = {"preact_resnet18": {"width": 8}, "wide_resnet": {"depth": 10, "width": 1}}


def _model(name):
    torch.manual_seed(0)
    m = build_model(name, SHAPES[name], 3, **KW.get(name, {}))
    # Give the running statistics non-trivial values first (one training forward).
    with norm_mode(m, NormMode.BN_UPDATE):
        m(torch.rand(16, *SHAPES[name]))
    return m


@pytest.mark.parametrize("name", list(MODELS))
def test_frozen_bn_forward_backward_leaves_running_stats_bit_identical(name):
    m = _model(name)
    before = running_stats(m)
    x = torch.rand(8, *SHAPES[name], requires_grad=True)
    with norm_mode(m, NormMode.FROZEN_BN):
        m(x).sum().backward()
    after = running_stats(m)
    assert before.keys() == after.keys() and before
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed under frozen BN"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_frozen_bn_uses_batch_statistics_not_running(name):
    m = _model(name)
    x = torch.rand(8, *SHAPES[name])
    with torch.no_grad():
        with norm_mode(m, NormMode.FROZEN_BN):
            frozen = m(x)
        with norm_mode(m, NormMode.PN):
            pn = m(x)
        m_copy = _model(name)
        m_copy.train()
        bn_update = m_copy(x)  # batch statistics, updating a copy
    assert torch.allclose(frozen, bn_update, atol=1e-5)
    assert not torch.allclose(frozen, pn, atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_pn_forward_equals_eval(name):
    m = _model(name)
    x = torch.rand(8, *SHAPES[name])
    m.train()
    with torch.no_grad():
        with norm_mode(m, NormMode.PN):
            a = m(x)
        m.eval()
        b = m(x)
    assert torch.equal(a, b)


def test_bn_update_moves_running_stats():
    m = _model("small_cnn")
    before = running_stats(m)
    with norm_mode(m, "bn_update"):
        m(torch.rand(8, 1, 8, 8))
    after = running_stats(m)
    moments = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert moments and all(not torch.equal(before[k], after[k]) for k in moments), \
        [k for k in moments if torch.equal(before[k], after[k])]  # every layer's mean and var
    counters = [k for k in before if k.endswith("num_batches_tracked")]
    assert counters and all(int(after[k]) == int(before[k]) + 1 for k in counters)


@pytest.mark.parametrize("start_training", [True, False])
def test_mode_restored_after_exception(start_training):
    m = _model("small_cnn")
    m.train(start_training)
    flags = {n: mod.training for n, mod in m.named_modules()}
    tracks = {n: mod.track_running_stats for n, mod in m.named_modules()
              if hasattr(mod, "track_running_stats")}
    for mode in NormMode:
        with pytest.raises(RuntimeError, match="boom"):
            with norm_mode(m, mode):
                raise RuntimeError("boom")
        assert {n: mod.training for n, mod in m.named_modules()} == flags
        assert {n: mod.track_running_stats for n, mod in m.named_modules()
                if hasattr(mod, "track_running_stats")} == tracks


def test_capture_bn_stats_records_batch_mean_and_var():
    m = _model("mlp")
    x = torch.rand(32, 2)
    with norm_mode(m, NormMode.FROZEN_BN), capture_bn_stats(m) as st, torch.no_grad():
        m(x)
        m(x + 0.1)
    first = st.names[0]
    assert len(st.means[first]) == 2
    lin = m.features[0]
    h = lin(m.norm(x))
    assert torch.allclose(st.means[first][0], h.mean(0), atol=1e-5)
    assert torch.allclose(st.variances[first][0], h.var(0, unbiased=False), atol=1e-5)
    # hooks removed after the block
    with torch.no_grad():
        m(x)
    assert len(st.means[first]) == 2


def test_unknown_norm_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown norm mode"):
        NormMode.parse("population")
