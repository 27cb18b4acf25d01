"""Playground: decision regions under PN and shaped inference move as two 2-D models train;
play, pause, step, reset; controls and panels in one 1024x768 screen (settings in an expander)."""
from __future__ import annotations

import time

import streamlit as st

from normshape_app import experiments as X
from normshape_app import ui
from normshape_app import playground as PG
from normshape_core.base.names import SHAPING_LABELS
from normshape_core.blocks.data import DATASETS_2D
from normshape_core.settings.config import MAX_SEED, ConfigError
from normshape_core.figures.playground import (REGIONS_KEY, curves_pair_figure,
                                               disagreement_sentence, run_title)

TRAIN_RATIOS = ["1:1", "1:2", "1:3", "1:5", "1:9"]
# both runs' images side by side at 1024 px: narrower page margins than Streamlit's wide ones
PAGE_CSS = ("<style>[data-testid=stMainBlockContainer] {padding: 3.5rem 1.5rem 2rem 1.5rem; "
            "max-width: 100%;} [data-testid=stMain] h1 {padding-top: 0;}</style>")

st.set_page_config(initial_sidebar_state="collapsed")  # a user who opens it keeps it open
st.html(PAGE_CSS)
st.title("Playground")
st.caption("Two small networks learn the same 2-D set with the same seed: by default plain "
           "PGD adversarial training (run A) and PGD with norm shaping 1:3 (run B), each seen "
           "under **PN** (blue boundary) and under **shaped inference** (orange boundary). "
           "Every setting is in the URL: send the link, the other person sees the same.")

ss = st.session_state
ss.setdefault("pg_playing", False)


def settings_form():
    with st.expander("Settings: data, model, runs, steps per frame (a change of data, model "
                     "or run builds new runs and pauses)"):
        c = st.columns(4)
        dataset = c[0].selectbox("2-D set", DATASETS_2D, key="pg_data", bind="query-params")
        noise = c[1].number_input("Noise", 0.0, 1.0, 0.1, step=0.05, format="%.2f",
                                  key="pg_noise", bind="query-params")
        n = c[2].number_input("Training samples", 50, 5000, 400, step=50, key="pg_n",
                              bind="query-params")
        seed = c[3].number_input("Seed", 0, MAX_SEED, 0, key="pg_seed", bind="query-params")
        c = st.columns(6)
        width = c[0].number_input("MLP width", 2, 256, 64, key="pg_width", bind="query-params")
        depth = c[1].number_input("MLP depth (hidden layers)", 1, 6, 3, key="pg_depth",
                                  bind="query-params")
        lr = c[2].number_input("Learning rate (Adam)", 0.0001, 1.0, 0.01, step=0.005,
                               format="%.4f", key="pg_lr", bind="query-params")
        bs = c[3].number_input("Batch size", 4, 1024, 32, step=4, key="pg_bs",
                               bind="query-params")
        eps = c[4].number_input("eps (L-inf, input units)", 0.005, 0.5, 0.1, step=0.01,
                                format="%.3f", key="pg_eps", bind="query-params")
        k = c[5].number_input("Attack steps K", 1, 50, 5, key="pg_k", bind="query-params")
        specs = []
        for side, default in (("a", PG.DEFAULT_SPECS[0]), ("b", PG.DEFAULT_SPECS[1])):
            c = st.columns([1, 2.2, 1, 1.6])
            method = c[0].selectbox(f"Run {side.upper()}: method", PG.METHODS,
                                    index=PG.METHODS.index(default.method),
                                    key=f"pg_{side}_method", bind="query-params")
            norm = c[3].selectbox(f"Run {side.upper()}: norms", PG.PLAYGROUND_NORMS,
                                  key=f"pg_{side}_norm", bind="query-params",
                                  format_func=PG.PLAYGROUND_NORM_LABELS.get)
            shaping = c[1].selectbox(f"Run {side.upper()}: shaping", PG.SHAPINGS,
                                     index=PG.SHAPINGS.index(default.shaping),
                                     format_func=SHAPING_LABELS.get, key=f"pg_{side}_shaping",
                                     bind="query-params",
                                     disabled=method == "natural" or norm == "dual_bn")
            ratio = c[2].selectbox(f"Run {side.upper()}: ratio adv:clean", TRAIN_RATIOS,
                                   index=TRAIN_RATIOS.index(default.ratio),
                                   key=f"pg_{side}_ratio", bind="query-params",
                                   disabled=method == "natural" or shaping == "none")
            specs.append(PG.RunSpec(method, "none" if method == "natural" else shaping, ratio, norm))
        c = st.columns(2)
        spf = c[0].number_input("Training steps per frame", 1, 200, 5, key="pg_spf",
                                bind="query-params", help="Each frame (and each Step) trains "
                                "this many steps of each run")
        unit = c[1].selectbox("Step button advances", ["steps per frame", "one epoch"],
                              key="pg_unit", bind="query-params")
    settings = PG.PlaySettings(dataset=dataset, noise=float(noise), n_samples=int(n),
                               seed=int(seed), width=int(width), depth=int(depth), lr=float(lr),
                               batch_size=int(bs), eps=float(eps), attack_steps=int(k))
    return settings, specs, int(spf), unit


settings, specs, spf, unit = settings_form()
pg = X.playground_session(settings, specs)
if pg is None:
    st.stop()
X.playground_full_notice()

b = st.columns([1.1, 1, 1.1, 3.2], vertical_alignment="bottom")
b[0].button("Pause" if ss.pg_playing else "Play", key="pg_play", type="primary",
            on_click=X.playground_toggle_play,
            icon=":material/pause:" if ss.pg_playing else ":material/play_arrow:")
b[1].button("Step", key="pg_step", on_click=X.playground_step_once, icon=":material/skip_next:",
            help="Advance one frame (the steps per frame, in the settings) and pause")
b[2].button("Reset", key="pg_reset_btn", on_click=X.playground_reset, icon=":material/replay:",
            help="Start both runs again from their initial weights; playing goes on if it was "
                 "playing, a paused playground stays paused")
infer = b[3].selectbox("Shaped inference ratio adv:clean (right panel of each run)",
                       PG.INFER_RATIOS, index=1, key="pg_infer", bind="query-params",
                       help="References per classified point in the right-hand panels (1:3: "
                            "three clean references). Applies at once, even paused.")


def live():  # the regions: images drawn on the server (cheap for a browser to redraw)
    pg = X.playground_now()
    if pg is None:
        return
    t0 = time.perf_counter()
    try:
        if ss.pg_playing:  # the frame made meanwhile; the next one is begun at once
            frames = pg.play(spf, infer, X.frame_interval())
        else:
            if ss.pop("pg_step_pending", False):
                pg.advance(pg.steps_per_epoch if unit == "one epoch" else spf)
            frames = pg.frames(infer)
    except PG.Full as e:  # the server runs its most playgrounds: nothing trained
        ss.pg_playing = False
        st.warning(f"No playground for you right now: {e}. {X.FULL_TEXT}")
        frames = pg.frames(infer)
    except (RuntimeError, TimeoutError, ConfigError, ValueError) as e:
        ss.pg_playing = False
        st.error(f"The playground stopped: {ui.public_text(e)}. Press Reset.")
        return
    now, (last_frame, last_t) = time.perf_counter(), ss.get("pg_tick", (-1, 0.0))
    ss.pg_tick = (pg.frame, now)
    f0 = frames[0]
    state = (f"playing at {1 / (now - last_t):.1f} frames per second"
             if ss.pg_playing and pg.frame == last_frame + 1 else
             "playing" if ss.pg_playing else "paused" + (
                 f" (drawn in {1000 * (now - t0):.0f} ms)" if now - t0 >= 0.001 else ""))
    st.caption(f"Frame {pg.frame} · each run has trained {f0.step} steps ({f0.epoch:.2f} "
               f"epochs of its {len(pg.data.x_train)} points) · {state}")
    sides = ["AB"[i] if i < 2 else str(i + 1) for i in range(len(frames))]
    with st.container(horizontal=True, gap="small"):
        for png in X.region_pngs(pg, frames, [run_title(s, spec.label())
                                              for s, spec in zip(sides, pg.specs)]):
            st.image(png, output_format="PNG")  # as drawn ("auto" re-encodes as JPEG)
    st.markdown(disagreement_sentence([f.disagreement() for f in frames], sides,
                                      [s.training_batches() for s in pg.specs], infer))
    fig = X.playground_curves(pg, infer, frames[0].has_accuracies, lambda: curves_pair_figure(
        pg.history, [f"Run {s}: {spec.label()}" for s, spec in zip(sides, pg.specs)], infer))
    st.plotly_chart(fig, key="pg_curves", theme=None, config={"displaylogo": False})


st.fragment(run_every=X.FRAME_EVERY_S if ss.pg_playing else None)(live)()
st.caption(REGIONS_KEY)
