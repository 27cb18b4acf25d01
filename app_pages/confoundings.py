"""Confoundings: a slide deck for a 15-minute class. A title slide, then per confounding a
lesson slide (the lesson checkpoint's number beside the paper's) and a slide of the sweep
that shows where the effect appears and where it disappears. The slide number is in the URL
(``?slide=N``): Previous / Next push one browser-history entry each, so Back and Forward
move between slides. Numbers come from the shipped sweep (``checkpoints/sweep``) and lesson
checkpoints (``checkpoints/lessons``); the moving-target animation is computed live."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st
import torch

from normshape_app import ui
from normshape_core.diagnostics import moving_target
from normshape_core.figures import confoundings as F
from normshape_core.sweep import EFFECT_THRESHOLD, PAPER

SLIDES = ["title", "I", "I-sweep", "II", "II-sweep", "III", "III-sweep"]
HEADINGS = {"title": "Three ways BatchNorm confounds adversarial training",
            "I": "I. Norm differences degrade accuracy",
            "I-sweep": "I. Where does it appear?",
            "II": "II. The moving target",
            "II-sweep": "II. Where does it appear?",
            "III": "III. BN attacks are weaker",
            "III-sweep": "III. Where does it appear?"}
FIG_HEIGHT = 320  # x 1.35 when presenting: 432 px, fits 1024x768 under the heading


def fig_height() -> int:
    return FIG_HEIGHT if ui.presenting() else 460


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@st.cache_data(show_spinner=False)
def _shipped(results_path: str, lessons_path: str, mtimes: tuple):
    return _read_json(Path(results_path)), _read_json(Path(lessons_path))


def shipped():
    root = ui.shipped_checkpoints_dir()
    r, l = root / "sweep" / "confoundings.json", root / "lessons" / "lessons.json"
    mt = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (r, l))
    return (*_shipped(str(r), str(l), mt), root / "lessons")


@st.cache_data(show_spinner="Running PGD on a training batch, step by step ...", max_entries=8)
def animation_frames(path: str, sha: str, batch: int, seed: int = 0):
    model, meta = ui.load_model(path, sha)
    cfg = meta["config"]
    data = ui.load_dataset(cfg["dataset"])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:batch]
    x, y = data.x_train[idx], data.y_train[idx]
    out = {}
    for ratio in ("1:0", "1:3"):
        tr = moving_target(model, x, y, ratio, eps=cfg["eps"], step_size=cfg["step_size"],
                           steps=cfg["steps"], seed=seed)
        out[ratio] = {"frame": tr.frame, "summary": tr.summary()}
    return out


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


def nav(n: int) -> None:
    c1, c2, c3 = st.columns([1, 2, 1], vertical_alignment="center")
    c1.button("← Previous", on_click=go, args=(n - 1,), disabled=n <= 1, key="slide_prev",
              width="stretch")
    c2.markdown(f"<div style='text-align:center'>slide {n} of {len(SLIDES)}</div>",
                unsafe_allow_html=True)
    c3.button("Next →", on_click=go, args=(n + 1,), disabled=n >= len(SLIDES),
              key="slide_next", width="stretch")


def takeaway(text: str) -> None:
    st.markdown(f"#### {text}")


def setting_caption(conf: str, ch: dict, cell: dict, sweep_slide: int) -> None:
    m = cell["measures"]
    why = ("the largest effect of the whole sweep in the paper's direction"
           if ch["shows_effect"] else
           "the largest value of the sweep, and still below the threshold of an effect")
    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.caption(f"Lesson checkpoint: {cell['dataset']}, {m['model']} with {m['bn_layers']} BN "
               f"layers, eps {m['eps']:g}, BN batch {m['batch']} (sweep cell {cell['id']}, "
               f"`checkpoints/lessons/{ch['checkpoints']['plain']}`), chosen as {why}. "
               f"Paper: {PAPER[conf]['text']}.")
    c2.button(f"Where it disappears: slide {sweep_slide} →", on_click=go, args=(sweep_slide,),
              key="slide_sweep_link", width="stretch")


def _pct(v) -> str:
    return f"{v:+.0%}"


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
            ui.show(F.claims_figure(results), key="slide_title", height=fig_height(), columns=2)
    else:
        c2.info("The sweep's results are not shipped with this copy: run `python -m "
                "normshape_core sweep-confoundings` to make them.")


def how_many(results, conf: str) -> str:
    """'k of N settings': the cells whose magnitude clears the effect threshold."""
    key = F.SWEEP_MEASURES[conf][0]
    vals = [c["measures"].get(key) for c in results["cells"]]
    vals = [v for v in vals if v is not None]
    k = sum(v >= EFFECT_THRESHOLD[conf] for v in vals)
    return f"{k} of {len(vals)} settings"


def slide_i(ch, cell, results) -> None:
    m = cell["measures"]
    gap = m["acc_gap_bn_pn"]
    if ch["shows_effect"]:
        takeaway(f"Here PN costs {gap:.3f} of clean accuracy against the clean batch's own "
                 f"statistics ({m['acc_pn']:.3f} vs {m['acc_bn']:.3f}); "
                 f"{how_many(results, 'I')} show it.")
    else:
        takeaway(f"No setting here shows it: even in the clearest one PN costs {gap:+.3f} "
                 f"against clean-batch BN ({m['acc_pn']:.3f} vs {m['acc_bn']:.3f}).")
    ui.show(F.lesson_i_figure(m, "Clean test accuracy of the lesson's two models"),
            key="slide_i", height=fig_height(), legend=False)


def slide_ii(ch, cell, lesson_dir: Path, results) -> None:
    from normshape_core.checkpoints import read_meta

    m = cell["measures"]
    takeaway(f"A shaped batch's statistics move {m['damping']:.1f}x less per PGD step than an "
             f"all-adversarial batch's; the logit-error gap is {_pct(m['logit_gap'])} here "
             f"(paper +63%; {how_many(results, 'II')} reach +10%).")
    folder = lesson_dir / ch["checkpoints"]["plain"]
    meta = read_meta(folder)
    frames = animation_frames(str(folder), meta["weights_sha256"], int(m["batch"]))
    fig = F.moving_target_animation({r: v["frame"] for r, v in frames.items()},
                                    "BN statistics of an attacked batch, step by step (press "
                                    "Play)")
    ui.show(fig, key="slide_ii", height=fig_height())


def slide_iii(ch, cell, results) -> None:
    m = cell["measures"]
    if ch["shows_effect"]:
        takeaway(f"Crafted with constant PN, PGD perturbations are {_pct(m['pn_vs_bn'])} larger "
                 f"than with the batch's own moving BN here (paper +17%; "
                 f"{how_many(results, 'III')} reach +5%).")
    else:
        takeaway(f"No setting here shows it: at most {_pct(m['pn_vs_bn'])} larger with PN than "
                 "with BN (paper +17%).")
    ui.show(F.lesson_iii_figure(m, "Size of PGD perturbations by the norms they were crafted "
                                   "with"), key="slide_iii", height=fig_height(), legend=False)


def slide_sweep(conf: str, results, lessons) -> None:
    key = F.SWEEP_MEASURES[conf][0]
    cells = [c for c in results["cells"] if c["measures"].get(key) is not None]
    base = [c["measures"][key] for c in cells if c["axis"] == "base"]
    spread = max((F.seed_spread(cells, d, key) or 0) for d in {c["dataset"] for c in cells})
    best = max(cells, key=lambda c: c["measures"][key])
    fmt = (lambda v: f"{v:+.3f}") if conf == "I" else _pct
    shows = best["measures"][key] >= EFFECT_THRESHOLD[conf]
    takeaway(f"{'Clearest' if shows else 'Largest'} at {best['id']} "
             f"({fmt(best['measures'][key])}); at each dataset's own setting "
             f"{fmt(min(base))} to {fmt(max(base))}, and seeds alone move it ±"
             f"{fmt(spread).lstrip('+')}.")
    ui.show(F.sweep_figure(results, conf), key=f"slide_sweep_{conf}", height=fig_height())


n = current_slide()
name = SLIDES[n - 1]
if not ui.presenting():
    st.title("Confoundings")
    st.caption("A slide deck: Previous / Next or the browser's Back and Forward move between "
               "slides; presentation mode (sidebar) hides the sidebar and enlarges the text.")
nav(n)
st.header(HEADINGS[name])
results, lessons, lesson_dir = shipped()
if name == "title":
    slide_title(results, lessons)
elif not results or not lessons:
    st.info("The sweep's results and the lesson checkpoints are not shipped with this copy: "
            "`python -m normshape_core sweep-confoundings` makes them.")
else:
    conf = name.split("-")[0]
    cells = {c["id"]: c for c in results["cells"]}
    if name.endswith("sweep"):
        slide_sweep(conf, results, lessons)
    else:
        ch = lessons[conf]
        cell = cells[ch["cell"]]
        {"I": lambda: slide_i(ch, cell, results),
         "II": lambda: slide_ii(ch, cell, lesson_dir, results),
         "III": lambda: slide_iii(ch, cell, results)}[conf]()
        setting_caption(conf, ch, cell, n + 1)
