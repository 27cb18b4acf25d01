"""Confoundings: a slide deck for a 15-minute class. A title slide, then per confounding a
lesson slide (the lesson checkpoint's number beside the paper's) and a slide of the sweep
that shows where the effect appears and where it disappears. The slide number is in the URL
(``?slide=N``): Previous / Next push one browser-history entry each, so Back and Forward
move between slides. Numbers come from the shipped sweep (``checkpoints/sweep``) and lesson
checkpoints (``checkpoints/lessons``); the moving-target animation is computed live."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from normshape_app import experiments as X
from normshape_app import ui
from normshape_app.style import fill_screen
from normshape_core.figures import confoundings as F
from normshape_core.studies.sweep import EFFECT_THRESHOLD, PAPER

SLIDES = ["title", "I", "I-sweep", "II", "II-sweep", "III", "III-sweep"]
HEADINGS = {"title": "Three ways BatchNorm confounds adversarial training",
            "I": "I. Norm differences degrade accuracy",
            "I-sweep": "I. Where does it appear?",
            "II": "II. The moving target",
            "II-sweep": "II. Where does it appear?",
            "III": "III. BN attacks are weaker",
            "III-sweep": "III. Where does it appear?"}
FIG_HEIGHT = 460  # not presenting; presenting, each chart fills the room its slide leaves


def chart(fig, key: str, **kw) -> None:
    """A slide's chart: presenting, as tall as the slide leaves (``fill_screen``); else
    FIG_HEIGHT."""
    present = ui.presenting()
    ui.show(fig, key=key, fill=present, height=200 if present else FIG_HEIGHT, **kw)


def current_slide() -> int:
    raw = st.query_params.get("slide", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= len(SLIDES):
        st.caption(f"There is no slide {ui.md_escape(raw)}: showing slide 1 of {len(SLIDES)}.")
        n = 1
    return n


def go(n: int) -> None:
    """One URL change (one browser-history entry) per slide change."""
    st.query_params["slide"] = str(n)


def header_row(n: int, heading: str) -> None:
    """The slide's heading, and Previous / slide n of N / Next beside it (one row)."""
    c0, c1, c2, c3 = st.columns([5.4, 1.25, 1, 1.25], vertical_alignment="center")
    c0.header(heading, anchor=False)
    c1.button("← Previous", on_click=go, args=(n - 1,), disabled=n <= 1, key="slide_prev",
              width="stretch")
    c2.markdown(f"<div style='text-align:center'>slide {n} of {len(SLIDES)}</div>",
                unsafe_allow_html=True)
    c3.button("Next →", on_click=go, args=(n + 1,), disabled=n >= len(SLIDES),
              key="slide_next", width="stretch")


def takeaway(text: str) -> None:
    st.markdown(f"#### {text}")


def setting_caption(conf: str, ch: dict, cell: dict, sweep_slide: int) -> None:
    c1, c2 = st.columns([2.6, 1], vertical_alignment="center")
    c1.caption(F.lesson_caption(ch, cell, PAPER[conf]["text"]))
    c2.button(f"Where it disappears: slide {sweep_slide} →", on_click=go, args=(sweep_slide,),
              key="slide_sweep_link", width="stretch")


def slide_title(results, lessons) -> None:
    n = len((results or {}).get("cells", []))
    takeaway("Zhang & Ma (ICTAI 2022): PN and BN differ in adversarial training and "
             "confound it three ways" + (f"; each claim measured here on {n} settings."
                                         if n else "."))
    c1, c2 = st.columns([2, 3])
    c1.markdown("**I.** PN learnt on adversarial batches costs clean accuracy.\n\n"
                "**II.** An all-adversarial batch's statistics move at every attack step: a "
                "moving target.\n\n"
                "**III.** Crafted through moving statistics, PGD builds smaller "
                "perturbations.\n\n"
                "**Norm shaping** keeps clean samples dominant in every batch (adv:clean 1:3) "
                "to suppress all three.")
    if results:
        with c2:
            chart(F.claims_figure(results), "slide_title", columns=2)
    else:
        c2.info("The sweep's results are not shipped with this copy: run `python -m "
                "normshape_core sweep-confoundings --ship` in a checkout to make them.")


def slide_lesson(conf: str, ch, cell, lesson_dir: Path, results) -> None:
    m = cell["measures"]
    many = F.how_many(results, conf, EFFECT_THRESHOLD[conf])
    takeaway(F.lesson_takeaway(conf, m, ch["shows_effect"], many))
    if conf == "I":
        chart(F.lesson_i_figure(m, "Clean test accuracy of the lesson's two models"), "slide_i",
              legend=False)
    elif conf == "II":
        frames = X.lesson_animation_frames(lesson_dir / ch["checkpoints"]["plain"], m["batch"])
        chart(F.moving_target_animation({r: v["frame"] for r, v in frames.items()},
                                        "BN statistics of an attacked batch, step by step "
                                        "(press Play)"), "slide_ii")
    else:
        chart(F.lesson_iii_figure(m, "Size of PGD perturbations by the norms they were crafted "
                                     "with"), "slide_iii", legend=False)


def slide_sweep(conf: str, results, lessons) -> None:
    takeaway(F.sweep_takeaway(results, conf, EFFECT_THRESHOLD[conf]))
    chart(F.sweep_figure(results, conf), f"slide_sweep_{conf}")


n = current_slide()
name = SLIDES[n - 1]
if ui.presenting():
    fill_screen()
else:
    st.title("Confoundings")
    st.caption("A slide deck: Previous / Next or the browser's Back and Forward move between "
               "slides; presentation mode (sidebar) hides the sidebar and enlarges the text.")
header_row(n, HEADINGS[name])
results, lessons, lesson_dir = X.confoundings_shipped()
if name == "title":
    slide_title(results, lessons)
elif not results or not lessons:
    st.info("The sweep's results and the lesson checkpoints are not shipped with this copy: "
            "`python -m normshape_core sweep-confoundings --ship` makes them.")
else:
    conf = name.split("-")[0]
    cells = {c["id"]: c for c in results["cells"]}
    if name.endswith("sweep"):
        slide_sweep(conf, results, lessons)
    else:
        ch = lessons[conf]
        slide_lesson(conf, ch, cells[ch["cell"]], lesson_dir, results)
        setting_caption(conf, ch, cells[ch["cell"]], n + 1)
