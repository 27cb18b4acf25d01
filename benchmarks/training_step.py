"""Section 1: one training step (pgd, trades, each with shaping in attack+training) against
(K+1) x one forward+backward of the same batch on the same model; threads and memory
layout; torch.compile (``--compile``).
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F

from _timing import fmt_ms, interleaved, table, time_once
from _common import RESULTS, header, load_data, say, summary


TRAIN_CASES = [
    ("pgd", "pgd", "none", {}),
    ("pgd + shaping (attack+train 1:3)", "pgd", "attack+train", {}),
    ("trades", "trades", "none", {}),
    ("trades + shaping (attack+train 1:3)", "trades", "attack+train", {}),
    ("trades, paper variant (KL for crafting only)", "trades", "none",
     {"trades_kl_in_loss": False}),
    ("pgd, channels_last", "pgd", "none", {"channels_last": True}),
    ("pgd + shaping (attack+train 1:3), channels_last", "pgd", "attack+train",
     {"channels_last": True}),
]


def has_channels_last_setting() -> bool:
    """Whether TrainConfig has the ``channels_last`` training setting (opt-in, recorded)."""
    import dataclasses

    from normshape_core.settings.config import TrainConfig

    return any(f.name == "channels_last" for f in dataclasses.fields(TrainConfig))


def make_trainer(dataset: str, data, method: str, shaping: str, device: torch.device, **extra):
    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import Trainer

    kw = dict(dataset=dataset, method=method, shaping=shaping, device=str(device), epochs=1,
              eval_samples=0, seed=0)
    kw.update(extra)
    return Trainer(TrainConfig(**kw), data)


def fb_fn(model, x, y, times: int = 1):
    """``times`` training forwards (BN updating running statistics) + backward to the
    parameters: the unit the issue's floor counts."""
    from normshape_core.blocks.norms import NormMode, norm_mode

    def run():
        for _ in range(times):
            model.zero_grad(set_to_none=True)
            with norm_mode(model, NormMode.BN_UPDATE):
                out = model(x)
            F.cross_entropy(out, y).backward()
    return run


def attack_step_fn(model, x, y, times: int):
    """``times`` attack steps' worth of work: forward with frozen BN + backward to the input
    only (what one PGD step costs; no parameter gradients), on a freshly allocated (NCHW)
    tensor like PGD's iterates (a dataset tensor's strides can differ, and with them the
    speed of an NCHW model's pooling layers)."""
    from normshape_core.blocks.norms import NormMode, norm_mode

    def run():
        with norm_mode(model, NormMode.FROZEN_BN):
            for _ in range(times):
                xa = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
                xa.requires_grad_(True)
                loss = F.cross_entropy(model(xa), y, reduction="sum")
                torch.autograd.grad(loss, xa)
    return run


def forward_fn(model, x, times: int = 1):
    """``times`` forwards without gradients, frozen BN (TRADES' clean prediction)."""
    from normshape_core.blocks.norms import NormMode, norm_mode

    def run():
        with torch.no_grad(), norm_mode(model, NormMode.FROZEN_BN):
            for _ in range(times):
                model(x)
    return run


def own_floor_fn(tr, x, y):
    """The passes the method itself needs: K attack steps + 1 training fwd+bwd; TRADES adds
    a forward for the clean prediction it crafts against and, with its KL term in the loss,
    one more fwd+bwd (the clean batch)."""
    K = tr.cfg.steps
    parts = [attack_step_fn(tr.model, x, y, K), fb_fn(tr.model, x, y, 1)]
    if tr.cfg.method == "trades":
        parts.append(forward_fn(tr.model, x))
        if tr.cfg.trades_kl_in_loss:
            parts.append(fb_fn(tr.model, x, y, 1))
    return lambda: [f() for f in parts]


def section_training(args, device) -> None:
    header("1. Training step / ((K+1) x one forward+backward of the same batch, same model)")
    say("One train_step (crafting + training forward/backward + optimiser + metrics) against "
        "K+1 training\nforward+backward passes of the same batch, and against the passes the "
        "method itself needs.")
    datasets = ["digits"] if args.quick else ["digits", "fashion_mnist"]
    reps = 5 if args.quick else 11
    rows = []
    for ds in datasets:
        data = load_data(ds)
        if data is None:
            continue
        for label, method, shaping, extra in TRAIN_CASES:
            if args.quick and ("paper variant" in label or "channels_last" in label):
                continue
            if "channels_last" in extra and not has_channels_last_setting():
                continue
            tr = make_trainer(ds, data, method, shaping, device, **extra)
            cfg = tr.cfg
            B, K = cfg.batch_size, cfg.steps
            x = data.x_train[:B].to(device)
            y = data.y_train[:B].to(device)
            fns = {"step": lambda tr=tr: tr.train_step(x, y),
                   "fb": fb_fn(tr.model, x, y, K + 1),
                   "floor": own_floor_fn(tr, x, y)}
            t = interleaved(fns, reps, warmup=2, device=device)
            r_wall = t.ratio("step", "fb")
            r_cpu = t.ratio("step", "fb", "cpu")
            r_floor = t.ratio("step", "floor", "cpu" if device.type == "cpu" else "wall")
            rows.append([ds, label, f"B={B}, K={K}", fmt_ms(t.median("step")),
                         fmt_ms(t.median("fb") / (K + 1)), f"{r_wall:.2f} ({t.spread('step', 'fb')})",
                         f"{r_cpu:.2f}" if device.type == "cpu" else "-", f"{r_floor:.2f}"])
            RESULTS.setdefault("training_step", []).append(dict(
                dataset=ds, case=label, batch=B, K=K, step_s=t.median("step"),
                fb_s=t.median("fb") / (K + 1), ratio_wall=r_wall, ratio_cpu=r_cpu,
                ratio_to_algorithm_floor=r_floor))
            headline = r_cpu if device.type == "cpu" else r_wall
            summary(f"1. train step / ((K+1) fwd+bwd): {ds}, {label}", headline, 1.10,
                    note="(CPU time)" if device.type == "cpu" else "")
            del tr
    say(table(rows, ["dataset", "method", "batch", "step", "fwd+bwd", "ratio wall (IQR)",
                     "ratio CPU", "vs own floor"]))
    say("\nratio = step time / ((K+1) x fwd+bwd time). 'vs own floor' = step / (the passes the "
        "method needs: K attack\nsteps (forward + backward to the input) + 1 training fwd+bwd; "
        "TRADES + 1 clean forward, + 1 clean fwd+bwd\nwhen its KL term is in the loss): the "
        "overhead of everything that is not a forward or backward pass.")

    if device.type == "cpu":
        threads_and_layout(args, device)


def threads_and_layout(args, device) -> None:
    say("\nThreads and memory layout (pgd step and one fwd+bwd, wall time, interleaved):")
    reps = 5 if args.quick else 9
    rows = []
    datasets = ["digits"] if args.quick else ["digits", "fashion_mnist"]
    for ds in datasets:
        data = load_data(ds)
        if data is None:
            continue
        tr = make_trainer(ds, data, "pgd", "attack+train", device)
        B = tr.cfg.batch_size
        x, y = data.x_train[:B].to(device), data.y_train[:B].to(device)
        before = torch.get_num_threads()
        n_cpu = os.cpu_count() or 1

        def with_threads(n, fn):
            def run():
                torch.set_num_threads(n)
                fn()
            return run
        fns = {"step 1 thread": with_threads(1, lambda: tr.train_step(x, y)),
               f"step {n_cpu} threads": with_threads(n_cpu, lambda: tr.train_step(x, y)),
               "fb 1 thread": with_threads(1, fb_fn(tr.model, x, y)),
               f"fb {n_cpu} threads": with_threads(n_cpu, fb_fn(tr.model, x, y))}
        if n_cpu > 1:
            t = interleaved(fns, reps, warmup=1, device=device)
            for what in ("step", "fb"):
                rows.append([ds, f"{what}: {n_cpu} threads / 1 thread",
                             f"{fmt_ms(t.median(f'{what} {n_cpu} threads'))} / "
                             f"{fmt_ms(t.median(f'{what} 1 thread'))}",
                             f"{t.ratio(f'{what} {n_cpu} threads', f'{what} 1 thread'):.2f}"])
                RESULTS.setdefault("threads", []).append(dict(
                    dataset=ds, what=what, n_threads=n_cpu,
                    ratio=t.ratio(f"{what} {n_cpu} threads", f"{what} 1 thread")))
        torch.set_num_threads(before)
        # the default layout (NCHW) against the opt-in channels_last training setting
        if not has_channels_last_setting():
            continue
        cl = make_trainer(ds, data, "pgd", "attack+train", device, channels_last=True)
        fns = {"step NCHW": lambda: tr.train_step(x, y), "step CL": lambda: cl.train_step(x, y),
               "fb NCHW": fb_fn(tr.model, x, y), "fb CL": fb_fn(cl.model, x, y)}
        t = interleaved(fns, reps, warmup=1, device=device)
        for what in ("step", "fb"):
            rows.append([ds, f"{what}: default (NCHW) / channels_last",
                         f"{fmt_ms(t.median(f'{what} NCHW'))} / {fmt_ms(t.median(f'{what} CL'))}",
                         f"{t.ratio(f'{what} NCHW', f'{what} CL', 'cpu'):.2f}"])
            RESULTS.setdefault("layout", []).append(dict(
                dataset=ds, what=what, ratio_nchw_to_cl=t.ratio(f"{what} NCHW", f"{what} CL",
                                                                "cpu")))
    say(table(rows, ["dataset", "comparison", "times", "ratio"]))
    say("(> 1: the second is faster. Thread ratios in wall time: the cost a user sees on this "
        "machine;\nlayout ratios in CPU time. channels_last is an opt-in training setting "
        "(TrainConfig.channels_last,\n--channels-last): its float results differ from NCHW in "
        "the last bits, so it is recorded with the run.)")


def try_compile(args, device) -> None:
    header("torch.compile (default inductor backend) on the digits CNN (one fwd+bwd)")
    data = load_data("digits")
    tr = make_trainer("digits", data, "pgd", "none", device)
    B = tr.cfg.batch_size
    x, y = data.x_train[:B].to(device), data.y_train[:B].to(device)
    eager = tr.model
    compiled = torch.compile(copy.deepcopy(eager))
    w, _ = time_once(fb_fn(compiled, x, y), device)
    say(f"  first call (compilation): {fmt_ms(w)}")
    from normshape_core.blocks.norms import NormMode, norm_mode

    def attack_mode():
        with norm_mode(compiled, NormMode.FROZEN_BN):
            xa = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(compiled(xa), y), xa)
    w2, _ = time_once(attack_mode, device)
    say(f"  first call in frozen-BN mode (recompiles: module flags changed): {fmt_ms(w2)}")
    t = interleaved({"eager": fb_fn(eager, x, y), "compiled": fb_fn(compiled, x, y)}, 9,
                    device=device)
    r = t.ratio("compiled", "eager", "cpu")
    say(f"  steady fwd+bwd: eager {fmt_ms(t.median('eager'))}, compiled "
        f"{fmt_ms(t.median('compiled'))}: compiled / eager = {r:.2f} (CPU time)")
    RESULTS["compile"] = dict(first_call_s=w, recompile_s=w2, ratio_compiled_to_eager=r)
