"""Train: start a run in its own background process, watch it live, pause, stop, resume it."""
from __future__ import annotations

import dataclasses
import secrets

import streamlit as st

from normshape_app import runs as X
from normshape_app import ui
from normshape_app import jobs
from normshape_core.base.names import SHAPING_LABELS
from normshape_core.settings.config import MAX_SEED, ConfigError, TrainConfig
from normshape_core.blocks.data import DATASETS, dataset_status
from normshape_core.figures import train as F
from normshape_core.blocks.models import MODELS
from normshape_core.settings.presets import DATASET_PRESETS

HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
SHAPING_HELP = (f"{SHAPING_LABELS['none']}: plain PGD / TRADES, the whole batch adversarial; "
                f"{SHAPING_LABELS['train']}: the whole batch attacked, trained as a shaped "
                f"batch; {SHAPING_LABELS['attack+train']}: the method, Eq. 5")

st.title("Train")
ui.explain("Start a run: it trains in its own process, so it goes on while you change pages, "
           "rerun or refresh the browser, and several runs can go at once. A finished run's "
           "checkpoint appears on every page. Pause holds a run; Stop ends it and keeps the "
           "checkpoint of its last completed epoch (marked *stopped at epoch k*, listed on every "
           "page), which Resume continues to the full run. You control the runs this session "
           "started; another session's only through the confirmed Stop… and Resume… controls.")

if "owner" not in st.session_state:  # this session's token: kept in job.json, never shown
    st.session_state.owner = secrets.token_hex(16)


def run_form() -> None:
    c1, c2, c3 = st.columns(3)
    dataset = c1.selectbox("Dataset", list(DATASETS), key="train_dataset", bind="query-params",
                           help=HELP["dataset"])
    method = c2.selectbox("Method", ["natural", "pgd", "trades"], index=1, key="train_method",
                          bind="query-params", help=HELP["method"])
    shaping = c3.selectbox("Shaping mode", list(SHAPING_LABELS), index=2, key="train_shaping",
                           bind="query-params", disabled=method == "natural",
                           format_func=SHAPING_LABELS.get, help=SHAPING_HELP)
    if not DATASETS[dataset].offline:
        st.caption(dataset_status(dataset))
    p = DATASET_PRESETS[dataset]
    k = f"_{dataset}"  # per-dataset widget state: switching the dataset loads its preset
    with st.form("train_form", border=False):
        c = st.columns(4)
        model = c[0].selectbox("Model", list(MODELS), index=list(MODELS).index(p["model"]),
                               key="train_model" + k, bind="query-params", help=HELP["model"])
        ratio = c[1].text_input("Ratio adv:clean", "1:3", key="train_ratio" + k,
                                bind="query-params", help=HELP["ratio"],
                                disabled=method == "natural")
        eps = c[2].number_input("eps (L-inf, input units [0, 1])", 0.0, 1.0, float(p["eps"]),
                                step=0.01, format="%.4f", key="train_eps" + k,
                                bind="query-params", help=HELP["eps"])
        step_size = c[3].number_input("Attack step size (input units)", 0.0, 1.0,
                                      float(p.get("step_size") or p["eps"] / 4), step=0.005,
                                      format="%.4f", key="train_step" + k, bind="query-params",
                                      help=HELP["step_size"])
        c = st.columns(4)
        steps = c[0].number_input("Attack steps K", 1, 100, int(p["steps"]), key="train_k" + k,
                                  bind="query-params", help=HELP["steps"])
        epochs = c[1].number_input("Epochs", 1, 500, int(p.get("epochs") or 1),
                                   key="train_epochs" + k, bind="query-params", help=HELP["epochs"])
        batch = c[2].number_input("Batch size", 2, 4096, int(p["batch_size"]),
                                  key="train_bs" + k, bind="query-params",
                                  help=HELP["batch_size"])
        lr = c[3].number_input("Learning rate", 0.0001, 10.0, float(p["lr"]), step=0.001,
                               format="%.4f", key="train_lr" + k, bind="query-params",
                               help=HELP["lr"])
        c = st.columns(4)
        seed = c[0].number_input("Seed", 0, MAX_SEED, 0, key="train_seed" + k,
                                 bind="query-params", help=HELP["seed"])
        name = c[1].text_input("Run name (optional)", "", key="train_name" + k,
                               bind="query-params", max_chars=60,
                               help="Names the run folder (letters, digits, '.', '_', '-'; "
                                    "anything else becomes '_'). Default: built from the settings.")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return
    cfg = TrainConfig(dataset=dataset, model=model, method=method,
                      shaping="none" if method == "natural" else shaping,
                      ratio=ratio.strip() or "1:3", eps=float(eps), step_size=float(step_size),
                      steps=int(steps), epochs=int(epochs), batch_size=int(batch), lr=float(lr),
                      seed=int(seed))
    try:
        status = jobs.start_job(cfg, ui.runs_dir(), label=name.strip() or None,
                                owner=st.session_state.owner, threads=ui.worker_threads(),
                                max_active=ui.max_active_runs())
    except (ConfigError, jobs.JobError) as e:
        st.error(f"Not started: {ui.public_text(e)}")
        return
    st.session_state.train_run = status.name  # show the new run below
    st.success(f"Started **{status.name}** in its own process.")


def curves(rows, status: jobs.JobStatus, key: str) -> None:
    df, ev, window = F.split_rows(rows)
    if df.empty:
        st.caption("Waiting for the first training step ...")
        return
    c1, c2, c3 = st.columns(3)
    with c1:
        ui.show(F.loss_figure(df, window), key=f"{key}_loss", height=400, legend=False,
                columns=3)
    with c2:
        ui.show(F.accuracy_figure(df, ev, window, ui.metric_label), key=f"{key}_acc",
                height=400, columns=3)
    with c3:
        ui.show(F.drift_figure(df, window), key=f"{key}_drift", height=400, columns=3)
    if window > 1:
        st.caption(f"Training curves are smoothed over {window} steps.")


def runs_panel() -> None:
    all_jobs = jobs.list_jobs(ui.runs_dir())
    active_names = {j.name for j in all_jobs if j.active}
    seen = st.session_state.setdefault("train_seen_active", set())
    if seen - active_names:  # a run ended since the last refresh: refresh the whole page
        st.session_state.train_seen_active = set(active_names)
        st.rerun(scope="app")
    st.session_state.train_seen_active = set(active_names)
    if not all_jobs:
        st.info("No runs yet. Start one above: moons with the preset settings takes about ten "
                "seconds on two CPU cores.")
        return
    for j in [j for j in all_jobs if j.active]:
        X.run_controls(j)
    names = [j.name for j in all_jobs]
    if st.session_state.get("train_run") not in names:
        st.session_state.train_run = names[0]
    name = st.selectbox("Run to show", names, key="train_run",
                        format_func=lambda n: ui.with_stopped_mark(n, ui.runs_dir() / n))
    X.run_outcome(j := next(j for j in all_jobs if j.name == name))
    cfg = j.config
    st.caption("Settings: " + ", ".join(f"{k}={cfg.get(k)}" for k in (
        "dataset", "model", "method", "shaping", "ratio", "eps", "step_size", "steps", "epochs",
        "batch_size", "lr", "seed")))
    curves(jobs.read_metrics(j.run_dir), j, key=f"curves_{j.name}")


with ui.settings_block("New run"):
    run_form()

st.subheader("Runs")
any_active = any(j.active for j in jobs.list_jobs(ui.runs_dir()))  # idle: every 3 s
st.fragment(run_every=1.0 if any_active else 3.0)(runs_panel)()
