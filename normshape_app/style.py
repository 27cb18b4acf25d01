"""Colours, safe text, page furniture and figure layout: the PN / BN / class colours, markdown
escaping of anything a user typed, the presentation toggle, and ``style`` / ``show``, where the
layout rules of every figure live (title wrapping, margins, legend, nothing clipped)."""
from __future__ import annotations

import re
from typing import Any, Optional

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


#: presentation mode: every text larger (Streamlit sizes in rem), the page edge to edge
PRESENT_CSS = """<style>
html { font-size: clamp(19px, 1.3vw, 28px); }
[data-testid=stMainBlockContainer] { padding: 3.6rem 2rem 2rem 2rem; max-width: 100%; }
[data-testid=stCaptionContainer] { font-size: 0.95rem; }
[data-testid=stMain] h2 { font-size: 2.1rem; padding: 0.4rem 0 0.2rem 0; }
[data-testid=stMain] h4 { font-size: 1.45rem; }
</style>"""


def presentation_setup() -> None:
    """Presentation mode (called by app.py after the toggle): the sidebar collapsed, the
    text enlarged."""
    if presenting():
        st.set_page_config(initial_sidebar_state="collapsed")
        st.html(PRESENT_CSS)


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
          columns: int = 1):
    """Common look of every figure, legible at 1400 px and, presenting, at 1024x768 and
    1920x1080: the title wrapped to the chart's width (``columns``: charts side by side) with
    room above the plot for it and for a horizontal legend (never over the data), axis
    titles inside the figure (automatic margins), tick labels that do not collide, bar
    charts' y-axes from 0 and any other cut-off axis marked; larger when presenting."""
    present = presenting()
    scale = 1.35 if present else 1.0
    title = title if title is not None else (fig.layout.title.text or None)
    width = max(24, int((68 if present else 96) / max(1, columns)))
    lines = 0
    if title:
        title = wrap_title(title, width)
        lines = title.count("<br>") + 1
    has_frames = bool(fig.frames) or bool(fig.layout.sliders)
    n_legend = sum(1 for t in fig.data if t.showlegend is not False and t.name)
    legend = legend and n_legend > 0
    legend_rows = 0
    if legend and fig.layout.legend.x is None and fig.layout.legend.y is None:
        names = sum(len(str(t.name)) + 4 for t in fig.data if t.name)
        legend_rows = 1 + int(names * 1.1 > width)
        legend_title = fig.layout.legend.title.text
        if legend_title:
            names += len(str(legend_title))
            legend_rows = 1 + int(names * 1.1 > width)
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=1.0,
                                      yanchor="bottom"))
    title_px = 16 * scale
    # the title's height: about 1.25 x its font per line, 1.05 x per <sup> line (measured in
    # Chromium), under a pad; then the legend's rows
    sups = title.count("<sup>") if title else 0
    title_h = (lines - sups) * 1.25 * title_px + sups * 1.05 * title_px
    top = int((14 * scale + title_h if title else 10) + legend_rows * 1.7 * 12 * scale
              + 10 * scale)
    fig.update_layout(template="plotly_white", height=int(height * scale),
                      font=dict(size=int(13 * scale)),
                      margin=dict(l=60, r=20, t=max(top, 30), b=55 + (90 if has_frames else 0)),
                      showlegend=legend, legend=dict(font=dict(size=int(12 * scale))))
    # subplot titles are annotations: keep them at the body size
    for ann in fig.layout.annotations or ():
        if ann.font.size is None:
            ann.font.size = int(13 * scale)
    for ax in _axes(fig, "x") + _axes(fig, "y"):
        ax.automargin = True
        ax.title.standoff = 8
    # an axis title longer than its axis would run into the chart's title or out of the
    # chart: wrap it (the chart's width: the narrowest supported screen, 1024 presenting
    # or 1400 with the sidebar, about 940 px of content, shared by ``columns`` charts)
    bottom = 55 + (90 if has_frames else 0)
    plot_h = height * scale - max(top, 30) - bottom
    plot_w = 940 / max(1, columns) - 90
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
                               font=dict(size=int(11 * scale), color="#666"))
    if title is not None:
        # anchored at the top, plotly lifts a title of several lines by about 0.7 x its font
        first_line = (0.72 * title_px if lines > 1 else 0) / (height * scale)
        fig.update_layout(title=dict(text=title, font=dict(size=int(16 * scale)), x=0.01,
                                     xanchor="left", y=1.0 - first_line, yref="container",
                                     yanchor="top", pad=dict(t=int(8 * scale))))
    return fig


def show(fig, key: str, **style_kw) -> None:
    st.plotly_chart(style(fig, **style_kw), key=key, width="stretch", theme=None,
                    config={"displaylogo": False})


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
