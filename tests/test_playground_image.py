"""The Playground's regions as a server-drawn raster (``regions_image``, ``png_bytes``): size
and mode, the class regions and the two boundaries in their panels, y up, clipping at the
panels' edges, the x / o markers, the title, HiDPI scale and the PNG round trip."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageColor

from normshape_app import playground as PG
from normshape_core.figures.colors import BN_COLOR, PN_COLOR, REGION_COLORS
from normshape_core.figures.playground import PANEL_PX, png_bytes, regions_image, run_title

SMALL = PG.PlaySettings(n_samples=200, width=16, depth=2, batch_size=32, attack_steps=3)
GRID = np.linspace(0.0, 1.0, 80)


def _rgb(color: str) -> np.ndarray:
    return np.array(ImageColor.getrgb(color)[:3], dtype=np.uint8)


def _is(arr: np.ndarray, color: str) -> np.ndarray:
    return (arr == _rgb(color)).all(-1)


def _panels(arr: np.ndarray):
    """The two panels as (top, bottom, left, right) slices bounds: the bounding boxes of the
    region fills in each half of the image."""
    region = _is(arr, REGION_COLORS[0]) | _is(arr, REGION_COLORS[1])
    w = arr.shape[1]
    out = []
    for lo, hi in ((0, w // 2), (w // 2, w)):
        rows = np.nonzero(region[:, lo:hi].any(1))[0]
        cols = np.nonzero(region[:, lo:hi].any(0))[0] + lo
        out.append((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
    return out


def _frame(prob: np.ndarray, *, box_x=None, box_y=None, adv=None, right=None, eps=0.1,
           ratio="1:3") -> PG.Frame:
    box_x = np.zeros((0, 2), np.float32) if box_x is None else np.asarray(box_x, np.float32)
    n = len(box_x)
    box_y = np.zeros(n, np.int64) if box_y is None else np.asarray(box_y)
    adv = box_x.copy() if adv is None else np.asarray(adv, np.float32)
    right = np.ones(n, bool) if right is None else np.asarray(right, bool)
    return PG.Frame(step=3, epoch=0.5, infer_ratio=ratio, eps=eps, grid_x=GRID, grid_y=GRID,
                    prob_pn=prob, prob_shaped=prob, box_x=box_x, box_y=box_y, adv_pn=adv,
                    adv_shaped=adv.copy(), adv_pn_right=right, adv_shaped_right=right.copy(),
                    metrics={}, seconds={})


NO_POINTS = (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))


@pytest.fixture(scope="module")
def live():
    pg = PG.Playground(SMALL)
    try:
        pg.advance(6)
        frames = pg.frames("1:3")
        yield frames, pg.data.x_train.numpy(), pg.data.y_train.numpy(), pg.specs
    finally:
        pg.close()


def test_a_live_frame_is_an_rgb_image_with_regions_and_each_panels_boundary(live):
    frames, x, y, specs = live
    for i, (f, spec) in enumerate(zip(frames, specs)):
        img = regions_image(f, x, y, run_title("AB"[i], spec.label()))
        assert img.mode == "RGB"
        # two runs side by side in the page's 940 px at a 1400 px window (32 px apart)
        assert 2 * img.width + 32 <= 940 and img.height <= PANEL_PX + 120, img.size
        arr = np.asarray(img)
        (t0, b0, l0, r0), (t1, b1, l1, r1) = _panels(arr)
        assert r0 <= l1 and r0 - l0 == b0 - t0 == r1 - l1 == b1 - t1 == PANEL_PX
        assert (f.prob_pn > 0.5).any() and (f.prob_pn <= 0.5).any()  # a boundary to draw
        for t, b, lft, rgt in ((t0, b0, l0, r0), (t1, b1, l1, r1)):
            panel = arr[t:b, lft:rgt]
            assert _is(panel, REGION_COLORS[0]).any() and _is(panel, REGION_COLORS[1]).any()
        pn, bn = _is(arr, PN_COLOR), _is(arr, BN_COLOR)
        assert pn[t0:b0, l0:r0].sum() > 50 and bn[t1:b1, l1:r1].sum() > 50
        assert not pn[:, l1:].any() and not bn[:, :r0].any()  # each colour in its own panel
        # the title row holds dark text
        assert (arr[:30].astype(int).sum(-1) < 300).sum() > 30


def test_both_runs_give_images_of_one_size_with_or_without_a_subtitle(live):
    frames, x, y, _ = live
    a = regions_image(frames[0], x, y, "B: natural training")
    b = regions_image(frames[0], x, y, run_title("A", "PGD + shaping 1:3 (attack+train)"))
    assert a.size == b.size


def test_a_vertical_split_draws_its_boundary_at_the_middle_column_of_each_panel():
    prob = np.broadcast_to((GRID > 0.5).astype(np.float32), (80, 80)).copy()
    arr = np.asarray(regions_image(_frame(prob), *NO_POINTS, "split"))
    for (t, b, lft, rgt), color in zip(_panels(arr), (PN_COLOR, BN_COLOR)):
        panel = arr[t:b, lft:rgt]
        mid = panel.shape[1] // 2
        line = _is(panel, color)
        cols = np.nonzero(line.any(0))[0]
        assert set(cols) == {mid - 1, mid}  # 2 px, centred
        assert line[:, mid - 1:mid + 1].all()  # from bottom to top
        assert _is(panel[:, :mid - 1], REGION_COLORS[0]).all()
        assert _is(panel[:, mid + 1:], REGION_COLORS[1]).all()


def test_y_points_up():
    prob = np.broadcast_to((GRID > 0.5).astype(np.float32)[:, None], (80, 80)).copy()
    arr = np.asarray(regions_image(_frame(prob), *NO_POINTS, "up"))
    for t, b, lft, rgt in _panels(arr):
        panel = arr[t:b, lft:rgt]
        half = panel.shape[0] // 2
        assert _is(panel[:half - 1], REGION_COLORS[1]).all()  # row 0 is the top: y = 1
        assert _is(panel[half + 1:], REGION_COLORS[0]).all()


def test_points_and_eps_boxes_outside_the_unit_square_are_cut_at_the_panels_edges():
    prob = np.zeros((80, 80), np.float32)
    bare = np.asarray(regions_image(_frame(prob), *NO_POINTS, "clip"))
    boxed = _frame(prob, box_x=[[0.01, 0.01], [0.99, 0.98]], box_y=[0, 1],
                   adv=[[-0.05, 0.05], [1.04, 1.02]], right=[False, True], eps=0.1)
    x = np.array([[-0.02, 0.5], [1.03, 0.4], [0.5, 1.01], [0.5, -0.01], [0.5, 0.5]],
                 np.float32)
    arr = np.asarray(regions_image(boxed, x, np.array([0, 1, 0, 1, 0]), "clip"))
    inside = np.zeros(arr.shape[:2], bool)
    for t, b, lft, rgt in _panels(bare):
        inside[t:b, lft:rgt] = True
    assert (arr[~inside] == bare[~inside]).all()  # frames, ticks and labels untouched
    assert (arr[inside] != bare[inside]).any(-1).sum() > 100


def test_a_fooling_example_is_an_x_and_a_failed_one_an_open_circle():
    prob = np.zeros((80, 80), np.float32)
    f = _frame(prob, box_x=[[0.3, 0.3], [0.7, 0.7]], box_y=[0, 1],
               adv=[[0.35, 0.3], [0.75, 0.7]], right=[False, True])
    arr = np.asarray(regions_image(f, *NO_POINTS, "markers"))
    for (t, b, lft, rgt), color in zip(_panels(arr), (PN_COLOR, BN_COLOR)):
        panel = arr[t:b, lft:rgt]
        p = panel.shape[0]
        (cx0, cy0), (cx1, cy1) = [(int(ax * p), int((1 - ay) * p)) for ax, ay in f.adv_pn]
        assert _is(panel[cy0 - 1:cy0 + 2, cx0 - 1:cx0 + 2], color).any()  # x: its centre
        assert not _is(panel[cy1 - 1:cy1 + 2, cx1 - 1:cx1 + 2], color).any()  # o: hollow
        assert _is(panel[cy1 - 7:cy1 + 8, cx1 - 7:cx1 + 8], color).sum() > 20  # its ring


def test_scale_two_doubles_the_size_and_png_bytes_round_trips(live):
    frames, x, y, _ = live
    a = regions_image(frames[1], x, y, "Run B")
    b = regions_image(frames[1], x, y, "Run B", scale=2)
    assert b.size == (2 * a.width, 2 * a.height) and b.mode == "RGB"
    for img in (a, b):
        data = png_bytes(img)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        back = Image.open(io.BytesIO(data))
        assert back.mode == "RGB" and np.array_equal(np.asarray(back), np.asarray(img))
