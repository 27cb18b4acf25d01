"""Figures of the Playground: the decision regions under PN and under shaped inference with
the training points and eps-boxes as a raster image drawn on the server (numpy + Pillow:
``regions_image``, ``png_bytes``; a browser shows it several times a second for almost
nothing, where re-rendering a plotly chart of a few thousand SVG markers took it 0.1-0.3 s),
and the small live curves (plotly, redrawn every few frames). No Streamlit."""
from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageColor, ImageDraw, ImageFont

from normshape_core.figures.colors import (BN_COLOR, CLASS_COLORS, PN_COLOR, REGION_COLORS,
                                           class_color)

N_EVAL_TEXT = "100 test points, PGD-10"
REGIONS_KEY = ("Left panel of each run: PN, blue boundary; right panel: shaped inference, "
               "orange boundary (every point classified with the same clean references). "
               "Filled: the class regions. Big dots: training points with their eps-box "
               "(dotted); o: the PGD example found in the box against that panel's norms, "
               "x when it fools the model.")


def curves_figure(history: Sequence[Dict[str, float]], title: str, infer_ratio: str,
                  height: int = 560) -> go.Figure:
    """Loss, accuracies (clean and robust, each under PN and under shaped inference) and the
    running-statistics drift, against epochs, one point per frame: three rows sharing the
    epoch axis (readable in a narrow column). Built as one dict."""
    x = [h["epoch"] for h in history]

    def col(key):
        return [h.get(key) for h in history]

    data = [dict(type="scatter", x=x, y=col("loss"), name="training loss",
                 line=dict(color="#333333"), xaxis="x", yaxis="y")]
    for key, name, color, dash in (
            ("clean_pn", "clean, PN", PN_COLOR, "solid"),
            ("robust_pn", "robust, PGD with PN, PN", PN_COLOR, "dash"),
            ("clean_shaped", f"clean, shaped {infer_ratio}", BN_COLOR, "solid"),
            ("robust_shaped", f"robust, PGD with shaped, shaped {infer_ratio}", BN_COLOR,
             "dash")):
        data.append(dict(type="scatter", x=x, y=col(key), name=name, connectgaps=True,
                         line=dict(color=color, dash=dash), xaxis="x", yaxis="y2"))
    data.append(dict(type="scatter", x=x, y=col("drift"), name="running-mean drift (PN)",
                     line=dict(color=PN_COLOR, dash="dot"), xaxis="x", yaxis="y3"))
    layout = dict(title=dict(text=title), height=height, template="plotly_white",
                  margin=dict(l=60, r=10, t=60, b=50), uirevision="curves",
                  legend=dict(orientation="h", y=-0.12, font=dict(size=11)),
                  xaxis=dict(title=dict(text="epoch"), anchor="y"), annotations=[])
    rows = (("training loss", "loss", [0.70, 1.0]),
            (f"test accuracy ({N_EVAL_TEXT})", "accuracy (fraction)", [0.36, 0.64]),
            ("running-mean drift (PN)", "change per step", [0.0, 0.28]))
    for i, (text, ytitle, domain) in enumerate(rows):
        sfx = "" if i == 0 else str(i + 1)
        layout["yaxis" + sfx] = dict(title=dict(text=ytitle, font=dict(size=11)),
                                     domain=domain, anchor="x")
        layout["annotations"].append(dict(text=text, x=0.5, y=domain[1], xref="paper",
                                          yref="paper", xanchor="center", yanchor="bottom",
                                          showarrow=False, font=dict(size=12)))
    layout["yaxis2"]["range"] = [0, 1.02]
    layout["yaxis3"].update(type="log", dtick=1)  # one label per decade: the row is short
    layout["xaxis"]["anchor"] = "y3"
    return go.Figure(data=data, layout=layout)


def curves_pair_figure(histories: Sequence[Sequence[Dict[str, float]]],
                       titles: Sequence[str], infer_ratio: str,
                       height: int = 560) -> go.Figure:
    """The runs' curves side by side in one figure (one column per run, the rows of
    :func:`curves_figure`), so that both advance together in the browser: one chart, one
    redraw. Each run's epoch axis is its own; the y-axes of a row are shared."""
    n = max(1, len(histories))
    figs = [curves_figure(h, t, infer_ratio, height) for h, t in zip(histories, titles)]
    gap = 0.08
    width = (1 - gap * (n - 1)) / n
    data: List[Dict] = []
    layout: Dict = dict(height=height, template="plotly_white", uirevision="curves",
                        margin=dict(l=60, r=10, t=100, b=50), annotations=[],
                        legend=dict(orientation="h", y=-0.12, font=dict(size=11)),
                        title=dict(text=f"Curves of both runs, one point per frame "
                                        f"({N_EVAL_TEXT} for the accuracies)"))
    for c, fig in enumerate(figs):
        dom = [c * (width + gap), c * (width + gap) + width]
        xa = "x" if c == 0 else f"x{c + 1}"
        for tr in fig.to_dict()["data"]:
            row = {"y": 0, "y2": 1, "y3": 2}[tr.get("yaxis", "y")]
            tr = dict(tr, xaxis=xa, yaxis="y" if row == 0 and c == 0 else f"y{3 * c + row + 1}")
            tr["showlegend"] = c == 0
            tr["legendgroup"] = tr.get("name")
            data.append(tr)
        lay = fig.to_dict()["layout"]
        layout["xaxis" if c == 0 else f"xaxis{c + 1}"] = dict(
            title=dict(text=f"epoch, run {'AB'[c] if c < 2 else c + 1}"), domain=dom,
            anchor=f"y{3 * c + 3}")
        for row, key in enumerate(("yaxis", "yaxis2", "yaxis3")):
            ax = dict(lay[key], anchor=xa)
            if c > 0:  # the same scale as the first column's row, no second title
                ax["matches"] = "y" if row == 0 else f"y{row + 1}"
                ax["title"] = dict(text="")
                ax["showticklabels"] = False
            name = "yaxis" if (c == 0 and row == 0) else f"yaxis{3 * c + row + 1}"
            layout[name] = ax
        for a in lay.get("annotations", []):  # the row titles over each column
            layout["annotations"].append(dict(a, x=(dom[0] + dom[1]) / 2))
        layout["annotations"].append(dict(  # above the row title "training loss"
            text=f"<b>{html.escape(titles[c])}</b>", x=(dom[0] + dom[1]) / 2, y=1.0,
            yshift=24, xref="paper", yref="paper", xanchor="center", yanchor="bottom",
            showarrow=False, font=dict(size=13)))
    return go.Figure(data=data, layout=layout)


def _where(centre) -> str:
    """A position in the unit square in words: "in the upper left", "on the left", ..."""
    x, y = centre
    col = "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "")
    row = "lower" if y < 1 / 3 else ("upper" if y > 2 / 3 else "")
    if not col and not row:
        return "in the centre"
    if not row:
        return f"on the {col}"
    if not col:
        return f"at the {'top' if row == 'upper' else 'bottom'}"
    return f"in the {row} {col}"


CLASS_WORDS = ("purple", "green")  # the regions' colours of class 0 and 1 (REGION_COLORS)


def disagreement_sentence(disagreements: Sequence, sides: Sequence[str],
                          batches: Sequence[str], infer_ratio: str) -> str:
    """One sentence from the current frame of each run: how much of the plane PN and shaped
    inference classify differently, where, which class shaped inference favours there, and
    why they differ at all (``disagreements``: each run's ``Frame.disagreement()``;
    ``sides``: "A", "B"; ``batches``: what each run's training batches hold, e.g. "all
    adversarial")."""
    parts = []
    for i, (d, side) in enumerate(zip(disagreements, sides)):
        share = f"{100 * d.share:.1f}%" + (" of the plane differently" if i == 0 else "")
        if d.share < 0.005:
            parts.append(f"{share} in run {side} (practically none)")
            continue
        fav, other = (1, 0) if d.to_class1 >= d.to_class0 else (0, 1)
        big, small = max(d.to_class1, d.to_class0), min(d.to_class1, d.to_class0)
        says = (f"where shaped inference says class {fav} ({CLASS_WORDS[fav]}) and PN class "
                f"{other}" if i == 0 else f"shaped inference saying class {fav}")
        parts.append(f"{share} in run {side}, mostly {_where(d.centre)}, {says} "
                     f"({100 * big:.1f}% of the plane; {100 * small:.1f}% the other way)")
    why = ", ".join(f"run {side}'s {b}" for side, b in zip(sides, batches))
    return (f"PN and shaped inference {infer_ratio} classify " + ", and ".join(parts)
            + f": the weights are the same and only the BN statistics differ, PN normalising "
              f"with the running statistics of the training batches ({why}), shaped inference "
              f"with those of each point's batch of clean references.")


def run_title(side: str, label: str) -> str:
    """A run's panel title: ``A: PGD + shaping 1:3`` with the label's parenthesis (if any)
    as a subtitle."""
    main, _, detail = label.partition(" (")
    return f"{side}: {main}" + (f"<br><sup>({detail}</sup>" if detail else "")


# ====================================================================== the regions as a raster
# ``regions_image`` draws the decision regions as pixels: a plotly chart of them redrawn
# several times a second is too slow for a browser without a GPU, a PNG of the same picture
# is not. Sizes below are at scale 1 (CSS pixels); ``scale`` multiplies all of them.
PANEL_PX = 170          # side of a square panel (two runs side by side fit a 1400 px window)
TEXT_COLOR = "#2a3f5f"  # plotly_white's text colour, as the page's other charts
AXIS_COLOR = "#444444"  # panel frames and ticks
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TICK_TEXT = ("0", "0.2", "0.4", "0.6", "0.8", "1")
POINT_ALPHA = 0.35      # training points, as the figure's marker opacity
# font sizes: title, its subtitle, panel labels, tick labels, axis labels
FONT_TITLE, FONT_SUB, FONT_PANEL, FONT_TICK, FONT_AXIS = 16, 12, 14, 11, 12
PNG_COMPRESS_LEVEL = 1  # see png_bytes


def _rgb(color: str) -> Tuple[int, int, int]:
    return ImageColor.getrgb(color)[:3]


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's own font at ``size`` px (a FreeType font: Pillow is built with FreeType)."""
    return ImageFont.load_default(size=size)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def _title_lines(title: str) -> List[Tuple[str, bool]]:
    """``run_title``'s markup as lines: (text, is_subtitle); ``<br>`` starts a line, a line
    inside ``<sup>`` is a subtitle; other tags are dropped."""
    out = []
    for part in re.split(r"<br\s*/?>", title, flags=re.I):
        sub = "<sup>" in part.lower()
        text = html.unescape(re.sub(r"<[^>]*>", "", part)).strip()
        if text:
            out.append((text, sub))
    return out


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> List[str]:
    """Greedy word wrap to ``width`` px (a word longer than a line is cut by characters)."""
    lines: List[str] = []
    line = ""
    for word in text.split():
        while font.getlength(word) > width and len(word) > 1:  # a word wider than a line
            k = len(word)
            while k > 1 and font.getlength(word[:k]) > width:
                k -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:k])
            word = word[k:]
        cand = f"{line} {word}" if line else word
        if line and font.getlength(cand) > width:
            lines.append(line)
            line = word
        else:
            line = cand
    if line:
        lines.append(line)
    return lines


@dataclass(frozen=True)
class _Layout:
    scale: int
    width: int
    height: int
    panel: int           # side of a panel
    x0: Tuple[int, int]  # left column of each panel
    y0: int              # top row of the panels


def _layout(scale: int, title_h: int) -> _Layout:
    """Margins from the fonts' metrics at scale 1 (so that no text is clipped), times
    ``scale`` (so that scale 2 is exactly twice the size); ``title_h`` at scale 1."""
    tick_font, axis_font = _font(FONT_TICK), _font(FONT_AXIS)
    tick_w = int(np.ceil(max(tick_font.getlength(t) for t in TICK_TEXT)))
    tick_len, pad = 4, 6
    left = pad + _line_height(axis_font) + 4 + tick_w + 2 + tick_len + 1
    gap = 1 + tick_len + 2 + tick_w + 20
    right = max(10, int(np.ceil(tick_font.getlength(TICK_TEXT[-1]) / 2)) + 2)
    y0 = title_h + _line_height(_font(FONT_PANEL)) + 3
    bottom = 1 + tick_len + 2 + _line_height(tick_font) + 3 + _line_height(axis_font) + pad
    p = PANEL_PX
    s = scale
    return _Layout(s, s * (left + 2 * p + gap + right), s * (y0 + p + bottom), s * p,
                   (s * left, s * (left + p + gap)), s * y0)


def _tick_pos(origin: int, t: float, p: int, s: int) -> int:
    """First pixel of the ``s``-px tick at data value ``t`` along a panel starting at
    ``origin``: t=0 and t=1 fall on the panel's frame (drawn just outside the panel)."""
    return origin - s + int(round(t * (p + s)))


@lru_cache(maxsize=32)
def _background(scale: int, title: str, right_label: str) -> Tuple[np.ndarray, _Layout]:
    """Everything that does not change from frame to frame: the title, the panel labels, the
    frames, ticks and axis labels (read-only; a frame copies it)."""
    s = scale
    pad = 6 * s
    # the title's lines, wrapped at scale 1 (the same lines at every scale)
    width = _layout(1, 0).width
    lines = []
    for text, sub in _title_lines(title):
        size = FONT_SUB if sub else FONT_TITLE
        lines += [(t, size) for t in _wrap(text, _font(size), width - 12)]
    text_h = sum(_line_height(_font(size)) for _, size in lines)
    # room for a title and a subtitle at least, so that runs with and without a subtitle
    # have images of the same size
    title_h = 6 + max(text_h, _line_height(_font(FONT_TITLE)) + _line_height(_font(FONT_SUB)))
    lay = _layout(s, title_h + 2)
    img = Image.new("RGB", (lay.width, lay.height), "white")
    draw = ImageDraw.Draw(img)
    y = pad
    for text, size in lines:
        draw.text((pad, y), text, fill=TEXT_COLOR, font=_font(size * s))
        y += s * _line_height(_font(size))
    p, y0 = lay.panel, lay.y0
    panel_font, tick_font, axis_font = (_font(FONT_PANEL * s), _font(FONT_TICK * s),
                                        _font(FONT_AXIS * s))
    tick_len = 4 * s
    for x0, label in zip(lay.x0, ("PN", right_label)):
        draw.text((x0 + p / 2, y0 - 3 * s), label, fill=TEXT_COLOR, font=panel_font,
                  anchor="md")
        # the frame, just outside the panel's p x p pixels
        draw.rectangle([x0 - s, y0 - s, x0 + p + s - 1, y0 + p + s - 1], outline=AXIS_COLOR,
                       width=s)
        for t, text in zip(TICKS, TICK_TEXT):
            cx = _tick_pos(x0, t, p, s)
            draw.rectangle([cx, y0 + p + s, cx + s - 1, y0 + p + s + tick_len - 1],
                           fill=AXIS_COLOR)
            draw.text((cx + s / 2, y0 + p + s + tick_len + 2 * s), text, fill=TEXT_COLOR,
                      font=tick_font, anchor="ma")
            cy = y0 + p - int(round(t * (p + s)))
            draw.rectangle([x0 - s - tick_len, cy, x0 - s - 1, cy + s - 1], fill=AXIS_COLOR)
            draw.text((x0 - s - tick_len - 2 * s, cy + s / 2), text, fill=TEXT_COLOR,
                      font=tick_font, anchor="rm")
        ty = y0 + p + s + tick_len + 2 * s + s * _line_height(_font(FONT_TICK)) + 3 * s
        draw.text((x0 + p / 2, ty), "x1 (input units)", fill=TEXT_COLOR, font=axis_font,
                  anchor="ma")
    # the y label, rotated, left of the left panel
    text = "x2 (input units)"
    w = int(np.ceil(axis_font.getlength(text)))
    label = Image.new("L", (w, s * _line_height(_font(FONT_AXIS))), 0)
    ImageDraw.Draw(label).text((0, 0), text, fill=255, font=axis_font)
    label = label.rotate(90, expand=True)
    img.paste(Image.new("RGB", label.size, TEXT_COLOR),
              (pad, y0 + (p - label.size[1]) // 2), label)
    arr = np.asarray(img).copy()
    arr.flags.writeable = False
    return arr, lay


def _pixel_index(grid: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each pixel centre (data units), the index of the nearest grid value (each grid
    value is a cell reaching halfway to its neighbours, as a heatmap's)."""
    grid = np.asarray(grid, dtype=np.float64)
    return np.searchsorted((grid[1:] + grid[:-1]) / 2, centres)


def _dot_offsets(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dx ** 2 + dy ** 2 <= radius ** 2
    return np.stack([dy[keep], dx[keep]], 1)


def _panel(frame, prob, color: str, adv, right, x_train: np.ndarray, y_train: np.ndarray,
           p: int, s: int) -> np.ndarray:
    """One panel's p x p pixels: regions, boundary, training points, eps-boxes, the boxed
    points and their PGD examples. Anything outside the unit square is cut off here."""
    out = _regions_pixels(frame, prob, color, p, s)
    _blend_training_points(out, x_train, y_train, p, s)
    img = Image.fromarray(out, "RGB")
    draw = ImageDraw.Draw(img)

    def px(pt):
        return float(pt[0]) * p, (1.0 - float(pt[1])) * p

    _draw_eps_boxes(draw, frame, px, p, s)
    _draw_boxed_points(draw, frame, adv, right, color, px, s)
    return np.asarray(img)


def _regions_pixels(frame, prob, color: str, p: int, s: int) -> np.ndarray:
    """The class regions (nearest-neighbour upscaled) and the boundary, s px deep on each
    side, as p x p RGB pixels."""
    centres = (np.arange(p) + 0.5) / p
    ix = _pixel_index(frame.grid_x, centres)
    iy = _pixel_index(frame.grid_y, 1.0 - centres)  # row 0 of the image is the top: y up
    cls = (np.asarray(prob) > 0.5)[iy][:, ix]  # nearest-neighbour upscaling
    # the boundary: the pixels on both sides of a change of class, s deep on each side
    edge = np.zeros((p, p), dtype=bool)
    h = cls[:, 1:] != cls[:, :-1]  # between column j and j + 1
    v = cls[1:, :] != cls[:-1, :]  # between row i and i + 1
    for k in range(s):
        edge[:, :p - 1 - k] |= h[:, k:]
        edge[:, 1 + k:] |= h[:, :p - 1 - k]
        edge[:p - 1 - k, :] |= v[k:, :]
        edge[1 + k:, :] |= v[:p - 1 - k, :]
    idx = cls.view(np.uint8)  # 0, 1: the class regions; 2: the boundary
    idx[edge] = 2
    lut = np.array([_rgb(REGION_COLORS[0]), _rgb(REGION_COLORS[1]), _rgb(color)],
                   dtype=np.uint8)
    return lut.take(idx, 0)


def _blend_training_points(out: np.ndarray, x_train: np.ndarray, y_train: np.ndarray,
                           p: int, s: int) -> None:
    """The training points: small dots blended over what lies below (in place)."""
    x_train = np.asarray(x_train, dtype=np.float64).reshape(-1, 2)
    y_train = np.asarray(y_train).reshape(-1)
    if not len(x_train):
        return
    col = np.floor(x_train[:, 0] * p).astype(np.int64)
    row = np.floor((1.0 - x_train[:, 1]) * p).astype(np.int64)
    off = _dot_offsets(1.5 * s)
    rr = (row[:, None] + off[None, :, 0]).ravel()
    cc = (col[:, None] + off[None, :, 1]).ravel()
    cls_of = np.repeat(y_train.astype(np.int64), len(off))
    ok = (rr >= 0) & (rr < p) & (cc >= 0) & (cc < p)
    rr, cc, cls_of = rr[ok], cc[ok], cls_of[ok]
    palette = np.array([_rgb(c) for c in CLASS_COLORS], dtype=np.float32)
    src = palette[cls_of % len(CLASS_COLORS)]
    below = out[rr, cc].astype(np.float32)
    out[rr, cc] = np.rint(below + POINT_ALPHA * (src - below)).astype(np.uint8)


def _draw_eps_boxes(draw, frame, px, p: int, s: int) -> None:
    """The eps-boxes: dotted black outlines, s px wide, 2 s px on, 2 s px off."""
    eps = float(frame.eps) * p
    dots = []
    for pt in np.asarray(frame.box_x, dtype=np.float64).reshape(-1, 2):
        cx, cy = px(pt)
        x0, x1, y0, y1 = (int(round(cx - eps)), int(round(cx + eps)), int(round(cy - eps)),
                          int(round(cy + eps)))
        along_x = np.arange(x0, x1 + s)
        along_x = along_x[(along_x - x0) % (4 * s) < 2 * s]
        along_y = np.arange(y0, y1 + s)
        along_y = along_y[(along_y - y0) % (4 * s) < 2 * s]
        for k in range(s):
            for yy in (y0 + k, y1 + k):
                dots.append(np.stack([along_x, np.full_like(along_x, yy)], 1))
            for xx in (x0 + k, x1 + k):
                dots.append(np.stack([np.full_like(along_y, xx), along_y], 1))
    if dots:
        xy = np.concatenate(dots)
        xy = xy[(xy[:, 0] >= 0) & (xy[:, 0] < p) & (xy[:, 1] >= 0) & (xy[:, 1] < p)]
        if len(xy):
            draw.point(xy.ravel().tolist(), fill="black")


def _draw_boxed_points(draw, frame, adv, right, color: str, px, s: int) -> None:
    """The boxed points (bigger, class colour, black outline) and their PGD examples: x
    when it fools the model, o otherwise."""
    r = 4 * s
    for pt, c in zip(np.asarray(frame.box_x).reshape(-1, 2), np.asarray(frame.box_y)):
        cx, cy = px(pt)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=class_color(int(c)),
                     outline="black", width=s)
    r = 5 * s
    a = 4 * s
    for pt, ok in zip(np.asarray(adv).reshape(-1, 2), np.asarray(right, dtype=bool)):
        cx, cy = px(pt)
        if ok:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=2 * s)
        else:
            draw.line([cx - a, cy - a, cx + a, cy + a], fill=color, width=2 * s)
            draw.line([cx - a, cy + a, cx + a, cy - a], fill=color, width=2 * s)


def regions_image(frame, x_train: np.ndarray, y_train: np.ndarray, title: str, *,
                  scale: int = 1) -> Image.Image:
    """The decision regions of ``frame`` as an RGB image drawn here (numpy + Pillow), for a
    page that shows a frame several times a second: the title (a ``<br><sup>`` subtitle as a second, smaller
    line), the PN panel (left, blue boundary) and the shaped-inference panel (right, orange
    boundary) over the unit square, y up, with the training points, the eps-boxes (dotted),
    the boxed points and their PGD examples (x: fools the model, o: does not), and the axes.

    439 x 279 px at ``scale`` 1 (panels of ``PANEL_PX`` = 170 px: two runs side by side in a
    1400 px window; a title too long for one line wraps and makes the image taller);
    ``scale=2`` draws everything twice as large, for HiDPI screens.
    The static parts (title, labels, axes) are cached per title and inference ratio: a
    moons frame takes about 1.1 ms to draw at scale 1 and 3.1 ms at scale 2 (two CPU cores;
    a few ms more when the title or ratio is new), ``png_bytes`` 2.0 and 6.6 ms more."""
    s = int(scale)
    if s != scale or s < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    bg, lay = _background(s, title, f"shaped {frame.infer_ratio}")
    canvas = bg.copy()
    p, y0 = lay.panel, lay.y0
    panels = ((frame.prob_pn, PN_COLOR, frame.adv_pn, frame.adv_pn_right),
              (frame.prob_shaped, BN_COLOR, frame.adv_shaped, frame.adv_shaped_right))
    for x0, (prob, color, adv, right) in zip(lay.x0, panels):
        canvas[y0:y0 + p, x0:x0 + p] = _panel(frame, prob, color, adv, right, x_train,
                                              y_train, p, s)
    return Image.fromarray(canvas, "RGB")


def png_bytes(img: Image.Image) -> bytes:
    """``img`` as PNG at zlib level 1: the regions are large flat areas, so the fastest level
    costs little size. Median of 20 on a moons frame, two CPU cores: at scale 1 (439 x 279)
    level 1 takes 2.0 ms for 20 KiB, the default (6) 3.0 ms for 16 KiB; at scale 2 level 1
    takes 6.6 ms for 52 KiB, the default 9.7 ms for 40 KiB."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
