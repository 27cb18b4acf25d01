"""Colours, safe text, page furniture and figure layout: the PN / BN / class colours, markdown
escaping of anything a user typed, the presentation toggle, and ``style`` / ``show``, where the
layout rules of every figure live (title wrapping, margins, legend, nothing clipped)."""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Tuple

import streamlit as st


# ---------------------------------------------------------------- colours (every page)
# defined with the figures (normshape_core.figures.colors), so pages and figures agree
from normshape_core.figures.colors import (  # noqa: E402,F401
    BN_COLOR, CLASS_COLORS, CLEAN_COLOR, PN_COLOR, REGION_COLORS, WRONG_COLOR)


def norm_color(label: str) -> str:
    """PN's colour for anything classified or crafted with PN, BN's for batch norms
    (BN, frozen BN, shaped inference, shaping attack)."""
    return PN_COLOR if str(label).strip().upper().startswith("PN") else BN_COLOR


# An absolute path (or ~/...) not inside a word or a URL: /tmp/x/model.json, ~/.local/share/x.
_PATH = re.compile(r"(?<![\w.:/~])~?(?:/[^\s/:'\"`,;()\[\]]+)+/?")


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&:@/])")
# GitHub-flavoured Markdown also links bare addresses, found in the text after escapes are
# read: a WORD JOINER (U+2060, invisible) after "http"/"https"/"www" and before "@" keeps
# them from matching.
_BARE_LINK = re.compile(r"(?i)(https?(?=\\:)|www(?=\\\.)|(?=\\@))")


def md_escape(text: Any) -> str:
    """``text`` shown as itself where Streamlit renders Markdown (``st.table`` cells and
    headers, tab labels, alerts): every Markdown character escaped, so no name is read as
    markup: no link, image, HTML tag or emphasis, and no bare address (``http://``,
    ``www.``, e-mail) turned into a link."""
    return _BARE_LINK.sub("\\1\u2060", _MARKDOWN.sub(r"\\\1", str(text)))


def md_code(text: Any) -> str:
    """``text`` as an inline code span (shown as itself, monospace, where Markdown is
    rendered): backticks and line breaks inside it are replaced, so it cannot end the span."""
    return "`" + re.sub(r"[`\r\n]", "'", str(text)) + "`"


def message_text(message: Any) -> str:
    """An error or warning message fit to show in ``st.error``/``st.warning`` (Markdown): no
    server path (``public_text``) and every Markdown character escaped (``md_escape``), since
    messages quote what users typed or uploaded."""
    return md_escape(public_text(message))


def css_text(text: Any) -> str:
    """``text`` fit for a CSS string (pandas' cell tooltips): no quote, backslash, newline or
    angle bracket that could end the string or the style block."""
    return re.sub(r"[\"'\\\n\r<>{}]", " ", str(text))


def public_text(message: Any) -> str:
    """A message fit to show a user: every absolute path of the server becomes its last part
    (``/tmp/abc/.incoming-1/model.safetensors`` -> ``model.safetensors``)."""
    def last(m: "re.Match") -> str:
        parts = [p for p in m.group(0).split("/") if p and p != "~"]
        return parts[-1] if parts else m.group(0)

    return _PATH.sub(last, str(message))


# ---------------------------------------------------------------- page furniture
def presenting() -> bool:
    """The presentation toggle (sidebar, in the URL as ``present``); before the toggle has
    run, the URL says."""
    if "present" in st.session_state:
        return bool(st.session_state["present"])
    return str(st.query_params.get("present", "")).lower() in ("true", "1")


# ---------------------------------------------------------------- the screen's size
#: the screen every presenting layout is designed for; larger screens scale it up
DESIGN_VIEWPORT = (1024, 768)
VIEWPORT_KEY = "normshape_viewport"
_VIEWPORT_JS = """
export default function(component) {
  const { data, setStateValue } = component;
  document.documentElement.dataset.normshapeViewport = data.applied;  // what the server drew for
  const report = () => {
    const size = Math.round(window.innerWidth) + 'x' + Math.round(window.innerHeight);
    if (size !== data.applied) setStateValue('size', size);
  };
  report();
  let timer = null;
  const later = () => { clearTimeout(timer); timer = setTimeout(report, 300); };
  window.addEventListener('resize', later);
  return () => { window.removeEventListener('resize', later); clearTimeout(timer); };
}
"""
_viewport_probe = st.components.v2.component("normshape_viewport", js=_VIEWPORT_JS)


def _parse_size(text: Any) -> Optional[Tuple[int, int]]:
    m = re.fullmatch(r"(\d{3,5})x(\d{3,5})", str(text or ""))
    if not m:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    return (w, h) if 200 <= w <= 20000 and 200 <= h <= 20000 else None


def viewport() -> Tuple[int, int]:
    """The browser window's size in CSS pixels as its page last reported it
    (:func:`viewport_probe`), else :data:`DESIGN_VIEWPORT`."""
    state = st.session_state.get(VIEWPORT_KEY)
    return _parse_size(getattr(state, "size", None) if state is not None else None) \
        or DESIGN_VIEWPORT


def viewport_probe() -> None:
    """A component without a view that reports the window's size (and each resize) to the
    server, which lays the figures out for it; the first report reruns the page once."""
    w, h = viewport()
    _viewport_probe(key=VIEWPORT_KEY, data={"applied": f"{w}x{h}"}, height=0,
                    on_size_change=lambda: None)


def zoom() -> float:
    """How much larger than the design screen (1024x768) everything is drawn when
    presenting: the smaller of the two ratios, so that what fits 1024x768 fits the screen
    (1920x1080: 1.41). The page's text scales the same way in CSS (``PRESENT_CSS``)."""
    w, h = viewport()
    return min(4.0, max(0.6, min(w / DESIGN_VIEWPORT[0], h / DESIGN_VIEWPORT[1])))


#: presentation mode: every text larger (Streamlit sizes in rem) and growing with the screen,
#: nine tenths as fast as ``zoom()`` grows the figures (19 px at 1024x768, 26 px at
#: 1920x1080: the charts get the room the text leaves), the page edge to edge, the probe's
#: element taking no room
PRESENT_CSS = """<style>
html { font-size: clamp(12px, calc(1.9px + min(1.67vw, 2.2266vh)), 64px); }
[data-testid=stMainBlockContainer] { padding: 3.6rem 2rem 1rem 2rem; max-width: 100%; }
[data-testid=stCaptionContainer] { font-size: 0.95rem; }
[data-testid=stMain] h2 { font-size: 2.1rem; padding: 0.2rem 0 0.2rem 0; }
[data-testid=stMain] h4 { font-size: 1.45rem; padding: 0.1rem 0 0.1rem 0; }
[data-testid=stElementContainer].st-key-normshape_viewport { display: none; }
</style>"""


def presentation_setup() -> None:
    """Presentation mode (called by app.py after the toggle): the sidebar collapsed, the
    text enlarged, the window's size reported (figures are drawn for it)."""
    if presenting():
        st.set_page_config(initial_sidebar_state="collapsed")
        st.html(PRESENT_CSS)
        viewport_probe()


#: a page exactly the window's height whose chart (or row holding a chart) stretches to the
#: room the rest leaves: every slide fits the screen whatever its text, its chart growing
#: with the screen (``show(..., fill=True)``)
FILL_SCREEN_CSS = """<style>
[data-testid=stMainBlockContainer] { height: 100vh; display: flex; flex-direction: column; }
[data-testid=stMainBlockContainer] > [data-testid=stVerticalBlock] { flex: 1 1 auto;
  min-height: 0; }
[data-testid=stLayoutWrapper]:has(.stPlotlyChart) { flex: 1 1 0; min-height: 0; }
[data-testid=stLayoutWrapper]:has(.stPlotlyChart) > [data-testid=stHorizontalBlock] {
  flex: 1 1 0; min-height: 0; align-items: stretch; }
[data-testid=stHorizontalBlock]:has(.stPlotlyChart) > [data-testid=stColumn] > div {
  height: 100%; }
</style>"""


def fill_screen() -> None:
    """This page is one screen: its figures shown with ``fill=True`` take what is left."""
    st.html(FILL_SCREEN_CSS)


def settings_block(label: str = "Settings"):
    """Where a page puts its settings: a bordered box, or a closed expander when presenting."""
    if presenting():
        return st.expander(f"{label} (hidden in presentation mode)", expanded=False)
    return st.container(border=True)


def explain(text: str) -> None:
    """An explanatory paragraph; kept short when presenting (shown as a caption)."""
    if presenting():
        st.caption(text)
    else:
        st.markdown(text)


def wrap_title(text: str, width: int) -> str:
    """Break a title's lines (``<br>``-separated; tags do not count) at spaces so that none
    is longer than ``width`` characters (a ``<sup>`` line, in smaller type, 1.4 x)."""
    out = []
    # spaces inside a tag (<span style='...'>) are not places to break
    text = re.sub(r"<[^>]*>", lambda m: m.group(0).replace(" ", "\0"), text)
    for line in text.split("<br>"):
        words, cur, n = line.split(" "), [], 0
        limit = int(width * 1.4) if line.lstrip().startswith("<sup>") else width
        for w in words:
            vis = len(re.sub(r"<[^>]+>", "", w))
            if cur and n + 1 + vis > limit:
                out.append(" ".join(cur))
                cur, n = [], 0
            cur.append(w)
            n += vis + (1 if n else 0)
        out.append(" ".join(cur))
    # a continued <sup>/<sub> line keeps its tag
    for i in range(1, len(out)):
        for tag in ("sup", "sub"):
            prev = out[i - 1]
            still_open = prev.rfind(f"<{tag}>") > prev.rfind(f"</{tag}>")
            if still_open and not out[i].startswith(f"<{tag}>"):
                out[i - 1] += f"</{tag}>"
                out[i] = f"<{tag}>" + out[i]
    return "<br>".join(out).replace("\0", " ")


def _axes(fig, letter: str):
    return [getattr(fig.layout, k) for k in fig.layout if re.fullmatch(letter + r"axis\d*", k)]


def style(fig, *, title: Optional[str] = None, height: int = 420, legend: bool = True,
          columns: int = 1, fill: bool = False):
    """Common look of every figure, legible at 1400 px and, presenting, at 1024x768 and
    1920x1080: the title wrapped to the chart's width (``columns``: charts side by side) with
    room above the plot for it and for a horizontal legend (never over the data), axis
    titles inside the figure (automatic margins), tick labels that do not collide, bar
    charts' y-axes from 0 and any other cut-off axis marked; larger when presenting.
    ``fill``: the chart will be as tall as its container leaves (``height`` the least), about
    half the screen, which is the height long axis titles are wrapped for."""
    present = presenting()
    z = zoom() if present else 1.0
    scale = 1.35 * z if present else 1.0
    title = title if title is not None else (fig.layout.title.text or None)
    # characters per line of the title: the content's width (the screen's, presenting,
    # less the margins) over the title font's average character
    content_px = (viewport()[0] - 4 * 19 * z) if present else 940
    chars = content_px / (0.6 * 16 * scale) - 4 if present else 96  # 69 at 1024 px
    width = max(24, int(chars / max(1, columns)))
    lines = 0
    if title:
        title = wrap_title(title, width)
        lines = title.count("<br>") + 1
    has_frames = bool(fig.frames) or bool(fig.layout.sliders)
    n_legend = sum(1 for t in fig.data if t.showlegend is not False and t.name)
    legend = legend and n_legend > 0
    legend_rows = 0
    if legend and fig.layout.legend.x is None and fig.layout.legend.y is None:
        names = sum(len(str(t.name)) + 4 for t in fig.data
                    if t.name and t.showlegend is not False)
        names += len(str(fig.layout.legend.title.text or ""))
        legend_rows = max(1, math.ceil(names * 1.1 / width))  # as many rows as it needs
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=1.0,
                                      yanchor="bottom"))
    title_px = 16 * scale
    # the title's height: about 1.25 x its font per line, 1.05 x per <sup> line (measured in
    # Chromium), under a pad; then the legend's rows
    sups = title.count("<sup>") if title else 0
    title_h = (lines - sups) * 1.25 * title_px + sups * 1.05 * title_px
    top = int((14 * scale + title_h if title else 10) + legend_rows * 1.7 * 12 * scale
              + 10 * scale)
    m = scale / (1.35 if present else 1.0)  # margins grow with the screen when presenting
    # a figure's own right margin (room for labels there, e.g. a reference line's) is kept,
    # grown with its text
    own_right = int((fig.layout.margin.r or 0) * scale)
    bottom = int((55 + (90 if has_frames else 0)) * m)
    fig.update_layout(template="plotly_white", height=int(height * scale),
                      font=dict(size=round(13 * scale, 1)),
                      margin=dict(l=int(60 * m), r=max(int(20 * m), own_right),
                                  t=max(top, 30), b=bottom),
                      showlegend=legend, legend=dict(font=dict(size=round(12 * scale, 1))))
    # subplot titles are annotations: keep them at the body size
    for ann in fig.layout.annotations or ():
        if ann.font.size is None:
            ann.font.size = round(13 * scale, 1)
    for ax in _axes(fig, "x") + _axes(fig, "y"):
        ax.automargin = True
        ax.title.standoff = 8
    # an axis title longer than its axis would run into the chart's title or out of the
    # chart: wrap it (the chart's width: the narrowest supported screen, 1024 presenting
    # or 1400 with the sidebar, about 940 px of content, shared by ``columns`` charts)
    fig_h = max(height * scale, 0.5 * viewport()[1]) if fill else height * scale
    plot_h = fig_h - max(top, 30) - bottom
    plot_w = content_px / max(1, columns) - 90 * m
    char_px = 0.6 * 13 * scale
    for ax, size in [(a, plot_h) for a in _axes(fig, "y")] + [(a, plot_w) for a in _axes(fig, "x")]:
        text = ax.title.text
        dom = ax.domain or (0, 1)
        room = size * (dom[1] - dom[0]) * 0.95
        if text and "<br>" not in text and len(text) * char_px > room:
            ax.title.text = wrap_title(text, max(12, int(room / char_px)))
    bar_axes = {getattr(t, "yaxis", None) or "y" for t in fig.data if t.type == "bar"}
    for name in list(fig.layout):
        m = re.fullmatch(r"yaxis(\d*)", name)
        if not m:
            continue
        ax = getattr(fig.layout, name)
        ref = "y" + m.group(1)
        rng = ax.range
        if ref in bar_axes and ax.type in (None, "linear", "-"):
            if rng is not None and rng[0] is not None and rng[0] > 0:
                ax.range = [0, rng[1]]
            elif rng is None:
                ax.rangemode = "tozero"
        elif rng is not None and rng[0] is not None and rng[0] > 0 and ax.type != "log":
            fig.add_annotation(text=f"axis from {rng[0]:g}", xref="paper",
                               yref=f"{ref} domain", x=0, y=0, xanchor="left",
                               yanchor="bottom", showarrow=False,
                               font=dict(size=round(11 * scale, 1), color="#666"))
    if title is not None:
        # anchored at the top, plotly lifts a title of several lines by about 0.7 x its font:
        # padded down by as much (in pixels, so whatever height the chart gets)
        first_line = 0.72 * title_px if lines > 1 else 0
        fig.update_layout(title=dict(text=title, font=dict(size=round(16 * scale, 1)), x=0.01,
                                     xanchor="left", y=1.0, yref="container", yanchor="top",
                                     pad=dict(t=int(8 * scale + first_line))))
    return fig


def show(fig, key: str, *, fill: bool = False, **style_kw) -> None:
    """``style`` the figure and show it across the page's width; ``fill``: as tall as the
    room its container leaves (the slides when presenting), ``height`` then being the least
    it gets."""
    st.plotly_chart(style(fig, fill=fill, **style_kw), key=key, width="stretch", theme=None,
                    height="stretch" if fill else "content", config={"displaylogo": False})


# ---------------------------------------------------------------- metric names
def metric_label(key: str) -> str:
    """``test/robust_acc_pgd10_pn_pn`` -> ``robust acc. PGD-10 (crafted PN, classified PN)``;
    dual BN's ``..._clean_norms`` -> ``... [clean norms]`` (the others: its adversarial set)."""
    if key.endswith("_clean_norms"):
        return metric_label(key[:-len("_clean_norms")]) + " [clean norms]"
    k = key.split("/", 1)[-1]
    if k.startswith("clean_acc_"):
        return f"clean acc. (classified {k[len('clean_acc_'):].upper()})"
    if k.startswith("robust_acc_"):
        parts = k[len("robust_acc_"):].split("_")
        if len(parts) == 3:
            attack, crafted, classified = parts
            name = attack.upper().replace("PGD", "PGD-") if attack[3:].isdigit() else attack
            return (f"robust acc. {name} (crafted {crafted.upper()}, "
                    f"classified {classified.upper()})")
    return k.replace("_", " ")
