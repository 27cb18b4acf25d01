"""Projections: decision regions, input-space slices, feature maps, path straightness."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from _app_checkpoints import checkpoint_root
from normshape_core.measuring import projections as P
from normshape_core.training.checkpoints import load_checkpoint
from normshape_core.blocks.data import load_dataset
from normshape_core.blocks.norms import NormMode, norm_mode, running_stats
from normshape_core.inference.shaping import PNClassifier, ShapedClassifier, make_reference_pool


@functools.lru_cache(maxsize=None)
def _model(name):
    return load_checkpoint(checkpoint_root() / name)[0]


def shaped_mlp():
    return _model("moons-pgd-shaped-1-3")


def pgd_mlp():
    return _model("moons-pgd-adv-only")


def natural_cnn():
    return _model("digits-natural")


@functools.lru_cache(maxsize=None)
def moons():
    return load_dataset("moons")


@functools.lru_cache(maxsize=None)
def digits():
    return load_dataset("digits")


def test_decision_regions_cover_the_grid_and_match_pointwise_classification():
    model, data = shaped_mlp(), moons()
    grid = P.grid_around(data.x_train, resolution=30, margin=0.05)
    reg = P.decision_regions(PNClassifier(model), grid, chunk=97)
    assert reg.probs.shape == (2, 30, 30) and reg.pred.shape == (30, 30)
    assert np.allclose(reg.probs.sum(0), 1, atol=1e-5)
    # cell (iy, ix) is the point (xs[ix], ys[iy])
    iy, ix = 7, 21
    pt = torch.tensor([[grid.xs[ix], grid.ys[iy]]], dtype=torch.float32)
    with torch.no_grad():
        assert int(PNClassifier(model)(pt).argmax(1)) == reg.pred[iy, ix]
    assert 0.2 < (reg.pred == 1).mean() < 0.8  # both classes present on moons
    assert reg.disagreement(reg) == 0.0


def test_regions_under_pn_and_shaped_inference_leave_running_statistics_alone():
    model, data = pgd_mlp(), moons()
    before = running_stats(model)
    pool = make_reference_pool(data, 200, seed=0)
    grid = P.grid_around(data.x_train, resolution=25)
    pn = P.decision_regions(PNClassifier(model), grid)
    sh = P.decision_regions(ShapedClassifier(model, pool, "1:9", group_size=1), grid)
    assert pn.pred.shape == sh.pred.shape
    for k, v in running_stats(model).items():
        assert torch.equal(v, before[k]), k


def test_pinned_batch_statistics_reproduce_the_batch_forward():
    model, data = pgd_mlp(), moons()
    batch = data.x_test[:64]
    clf = P.BatchStatsClassifier(model, batch)
    with torch.no_grad(), norm_mode(model, NormMode.FROZEN_BN):
        expected = model(batch)
        got = clf(batch)
    assert torch.allclose(got, expected, atol=1e-5)
    # ... and differ from PN (the moving target needs them to)
    with torch.no_grad():
        assert not torch.allclose(got, PNClassifier(model)(batch), atol=1e-4)


def test_batch_member_classifier_is_a_per_sample_batch_forward():
    model, data = pgd_mlp(), moons()
    comp, x = data.x_train[:9], data.x_test[:5]
    got = P.BatchMemberClassifier(model, comp)(x)
    with torch.no_grad(), norm_mode(model, NormMode.FROZEN_BN):
        loop = torch.stack([model(torch.cat([comp, x[i:i + 1]]))[-1] for i in range(len(x))])
    assert torch.allclose(got.detach(), loop, atol=1e-5)


def test_fixed_references_have_the_ratio_s_size():
    pool = make_reference_pool(moons(), 100, seed=0)
    assert len(P.fixed_references(pool, "1:9")) == 9
    assert len(P.fixed_references(pool, "1:3")) == 3
    assert torch.equal(P.fixed_references(pool, "1:9", 4), P.fixed_references(pool, "1:9", 4))


def test_orthogonal_direction():
    d = torch.randn(1, 8, 8)
    r = P.orthogonal_direction(d, seed=3)
    assert abs(float((r * d).sum())) < 1e-4
    assert torch.isclose(r.norm(), d.norm(), rtol=1e-5)
    assert torch.equal(r, P.orthogonal_direction(d, seed=3))


def test_image_slice_centre_is_the_image_and_a1_the_perturbed_image():
    model, data = natural_cnn(), digits()
    x0, label = data.x_test[0], int(data.y_test[0])
    d1 = 0.3 * torch.sign(torch.randn_like(x0))
    d2 = P.orthogonal_direction(d1, seed=0)
    sl = P.input_slice(PNClassifier(model), x0, label, d1, d2, extent=2.0, resolution=9)
    assert sl.pred.shape == (9, 9) and sl.alphas[4] == 0.0 and sl.alphas[6] == 1.0
    with torch.no_grad():
        assert int(PNClassifier(model)(x0[None]).argmax(1)) == sl.pred[4, 4]
        assert int(PNClassifier(model)((x0 + d1).clamp(0, 1)[None]).argmax(1)) == sl.pred[4, 6]
    assert 0.0 <= sl.label_fraction(label) <= 1.0
    assert np.all((sl.prob_label >= 0) & (sl.prob_label <= 1))


def test_pinned_bn_slice_of_an_image_differs_from_pn_somewhere_or_agrees_exactly():
    model, data = natural_cnn(), digits()
    x0, label = data.x_test[3], int(data.y_test[3])
    d1 = 0.3 * torch.sign(torch.randn_like(x0))
    d2 = P.orthogonal_direction(d1, seed=1)
    bn = P.BatchStatsClassifier(model, data.x_test[:100])
    a = P.input_slice(PNClassifier(model), x0, label, d1, d2, resolution=11)
    b = P.input_slice(bn, x0, label, d1, d2, resolution=11)
    assert a.pred.shape == b.pred.shape == (11, 11)


def test_penultimate_features_and_pca():
    model, data = natural_cnn(), digits()
    f = P.penultimate_features(model, data.x_test[:50])
    assert f.shape == (50, 128)
    emb, ratio = P.pca_2d(f)
    assert emb.shape == (50, 2) and ratio[0] >= ratio[1] >= 0 and ratio.sum() <= 1 + 1e-6
    assert np.allclose(P.embed_2d(f, "pca"), emb)
    fb = P.penultimate_features(model, data.x_test[:50], NormMode.FROZEN_BN, chunk=50)
    assert fb.shape == f.shape and not np.allclose(fb, f)
    with pytest.raises(ValueError, match="umap or pca"):
        P.embed_2d(f, "tsne")


def test_umap_leaves_torchs_thread_count_as_it_was():
    """UMAP's fit sets OpenMP's threads to the core count; a seeded run at 1 thread that
    stores its feature maps (reproduce, the app's warm-up) must train its next model at 1
    thread still, else with other floats."""
    rng = np.random.default_rng(0)
    f = rng.normal(0, 1, (40, 8)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            P.embed_2d(f, "umap", seed=0)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


def test_umap_map_is_seeded():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 1, (40, 16)), rng.normal(6, 1, (40, 16))])
    a = P.embed_2d(f, "umap", seed=0)
    assert a.shape == (80, 2) and np.isfinite(a).all()
    # the two blobs stay apart in the map
    gap = np.linalg.norm(a[:40].mean(0) - a[40:].mean(0))
    spread = max(a[:40].std(0).max(), a[40:].std(0).max())
    assert gap > 2 * spread


def test_path_straightness():
    straight = np.stack([np.array([[0.0, 0.0]]) + t * np.array([[1.0, 1.0]]) for t in range(5)])
    assert np.allclose(P.path_straightness(straight), 1.0)
    zigzag = np.array([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]], [[3.0, 1.0]]])
    s = P.path_straightness(zigzag)
    assert 0 < s[0] < 1 and np.isclose(s[0], np.sqrt(10) / (3 * np.sqrt(2)))
    still = np.zeros((3, 1, 2))
    assert np.isnan(P.path_straightness(still)[0])
