"""Section 4: how cost grows: epoch time against batch size and ratio, peak RSS of a
training run, UMAP time against the number of points (first call and later calls); the
children that measure RSS and UMAP in a fresh process.
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from _timing import fmt_ms, interleaved, table, time_once
from _common import RESULTS, child_json, header, load_data, model_for, say
from training_step import has_channels_last_setting


def fit_seconds(ds, data, device, steps: Optional[int] = None, **cfg
                ) -> Tuple[float, float, int]:
    """(wall seconds, CPU seconds, steps) of Trainer.fit: a whole epoch, or ``steps`` steps."""
    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import Trainer

    kw = dict(dataset=ds, device=str(device), eval_samples=0, seed=0)
    kw.update(cfg)
    if steps is not None:
        kw["max_steps"] = steps
    else:
        kw["epochs"] = 1
    tr = Trainer(TrainConfig(**kw), data)
    wall, cpu = time_once(tr.fit, device)
    return wall, cpu, tr.step


def section_scaling(args, device) -> None:
    header("4. How cost grows")
    datasets = ["digits"] if args.quick else ["digits", "fashion_mnist"]
    rows = []
    for ds in datasets:
        data = load_data(ds)
        if data is None:
            continue
        n_train = 20000 if ds == "fashion_mnist" else len(data.x_train)
        sample_steps = None if ds == "digits" else (8 if args.quick else 24)
        batches = [32, 64, 128] if args.quick else [32, 64, 128, 256]
        configs = [("natural", "none", "1:3", 64)]
        configs += [("pgd", "attack+train", "1:3", b) for b in batches]
        configs += [("pgd", "none", "1:3", 64)]
        configs += [("pgd", "attack+train", r, 64) for r in (["1:1", "1:7"] if args.quick
                                                             else ["1:1", "1:7", "1:15"])]
        if not args.quick and has_channels_last_setting():
            configs += [("pgd", "attack+train", "1:3", 64, True)]
        for method, shaping, ratio, b, *cl in configs:
            kw = dict(method=method, shaping=shaping, ratio=ratio, batch_size=b)
            if cl:
                kw["channels_last"] = True
            if ds == "fashion_mnist":
                kw["n_train"] = n_train
            fit_seconds(ds, data, device, steps=2, **kw)  # warm-up (allocator, lazy inits)
            secs, cpu, steps = fit_seconds(ds, data, device, steps=sample_steps, **kw)
            per_epoch = n_train // b
            epoch_s = secs / steps * per_epoch
            epoch_cpu = cpu / steps * per_epoch
            label = "natural" if method == "natural" else (
                f"{method}, {'adv only' if shaping == 'none' else 'attack+train ' + ratio}")
            label += ", channels_last" if cl else ""
            rows.append([ds, label, str(b), f"{epoch_s:.2f} s" + ("" if sample_steps is None else
                                                                  f" (from {steps} steps)"),
                         f"{epoch_cpu:.2f} s" if device.type == "cpu" else "-",
                         fmt_ms(secs / steps)])
            RESULTS.setdefault("epoch_time", []).append(dict(
                dataset=ds, method=method, shaping=shaping, ratio=ratio, batch=b,
                epoch_seconds=epoch_s, epoch_cpu_seconds=epoch_cpu, step_seconds=secs / steps,
                measured_steps=steps))
    say("Time per training epoch (Trainer.fit, no evaluation; digits: a whole epoch of 1,400 "
        "samples;\nfashion_mnist: 20,000 samples per epoch as the preset, estimated from the "
        "steps measured):")
    say(table(rows, ["dataset", "training", "batch", "epoch (wall)", "epoch (CPU time)",
                     "per step (wall)"]))

    # peak RSS of a training run, in a fresh process
    say("\nPeak memory (RSS) of a training run, each in a fresh process:")
    rows = []
    for ds in datasets:
        steps = None if ds == "digits" else (20 if args.quick else 60)
        base = child_json(["rss", ds, "0"], timeout=600)
        run = child_json(["rss", ds, str(steps or -1)], timeout=900)
        if base is None or run is None:
            rows.append([ds, "failed", "", ""])
            continue
        rows.append([ds, f"{base['maxrss_mb']:.0f} MB", f"{run['maxrss_mb']:.0f} MB",
                     f"{run['maxrss_mb'] - base['maxrss_mb']:+.0f} MB", run["what"]])
        RESULTS.setdefault("peak_rss", []).append(dict(dataset=ds, baseline_mb=base["maxrss_mb"],
                                                       training_mb=run["maxrss_mb"],
                                                       what=run["what"]))
    say(table(rows, ["dataset", "imports + dataset", "training run", "training adds", "run"]))
    say("(peak RSS from /proc/self/status VmHWM; importing torch alone is ~500 MB of it here: "
        "its shared\nlibraries, CUDA build included.)")

    # UMAP against the number of points
    say("\nUMAP (normshape_core.measuring.projections.embed_2d) of penultimate features, in a fresh "
        "process:")
    sizes = [200, 1000] if args.quick else [200, 500, 1000, 2000, 5000]
    res = child_json(["umap"] + [str(s) for s in sizes], timeout=1200)
    if res is None:
        say("  failed (see above)")
    else:
        rows = [["import umap", "-", f"{res['import_s']:.2f} s", "-"]]
        for r in res["runs"]:
            rows.append([r["what"], str(r["n"]), f"{r['first_s']:.2f} s",
                         "-" if r.get("again_s") is None else f"{r['again_s']:.2f} s"])
        say(f"features: {res['source']}")
        say(table(rows, ["call", "points", "first call", "same call again"]))
        RESULTS["umap"] = res


def child_rss(ds: str, steps: int) -> Dict[str, Any]:
    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import train

    data = load_data(ds)
    what = "imports + dataset"
    if steps != 0:
        kw = dict(dataset=ds, method="pgd", shaping="attack+train", ratio="1:3", device="cpu",
                  eval_samples=0, seed=0)
        if steps > 0:
            kw["max_steps"] = steps
            what = f"pgd attack+train 1:3, {steps} steps of the preset's batch"
        else:
            kw["epochs"] = 1
            what = "pgd attack+train 1:3, one epoch"
        with tempfile.TemporaryDirectory() as d:
            train(TrainConfig(**kw), d, dataset=data)
    return {"maxrss_mb": peak_rss_mb(), "what": what}


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM, which starts afresh at exec (ru_maxrss does
    not: a child forked from a large parent would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def child_umap(sizes: List[int]) -> Dict[str, Any]:
    import numpy as np

    from normshape_core.measuring.projections import embed_2d, penultimate_features

    feats, source = None, ""
    for ds in ("fashion_mnist", "digits"):
        data = load_data(ds)
        if data is None:
            continue
        device = torch.device("cpu")
        model, src = model_for(ds, "pgd", "none", device, data=data)
        x = torch.cat([data.x_test, data.x_train])[:max(sizes)]
        feats = penultimate_features(model, x)
        source = f"{ds}, {feats.shape[1]}-d penultimate features ({src})"
        break
    if feats is None:
        rng = np.random.default_rng(0)
        feats = rng.normal(size=(max(sizes), 128)).astype(np.float32)
        source = "random 128-d features"
    t0 = time.perf_counter()
    import umap  # noqa: F401

    import_s = time.perf_counter() - t0
    runs = []
    for i, n in enumerate(sizes):
        f = feats[:n]
        t0 = time.perf_counter()
        embed_2d(f, "umap", seed=0)
        first = time.perf_counter() - t0
        again = None
        if i == 0 or n == sizes[-1]:
            t0 = time.perf_counter()
            embed_2d(f, "umap", seed=0)
            again = time.perf_counter() - t0
        runs.append({"n": min(n, len(feats)), "first_s": first, "again_s": again,
                     "what": "first call of the process (numba compilation / cache load)"
                     if i == 0 else "later call"})
    return {"import_s": import_s, "runs": runs, "source": source}
