"""Section 3: shaped inference at 1:3 and 1:9, grouped and per sample, against (n+1) x a PN
forward.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from _timing import fmt_ms, interleaved, table, time_once
from _common import RESULTS, header, load_data, model_for, say, summary


def shaped_rows(rows, ds, suffix, model, pool, x, reps, device, only_grouped):
    """Time PN, BN and shaped inference on ``model``; append table rows; (PN, BN) seconds."""
    from normshape_core.inference.shaping import BNClassifier, PNClassifier, ShapedClassifier

    fns: Dict[str, Callable] = {"PN": lambda: PNClassifier(model)(x),
                                "BN": lambda: BNClassifier(model)(x)}
    clfs = {}
    for ratio in ("1:3", "1:9"):
        clfs[f"{ratio} grouped"] = ShapedClassifier(model, pool, ratio, None)
        if not only_grouped:
            clfs[f"{ratio} per-sample"] = ShapedClassifier(model, pool, ratio, 1)
            clfs[f"{ratio} grouped, fresh refs"] = ShapedClassifier(model, pool, ratio, None,
                                                                    fresh_references=True)
    for k, c in clfs.items():
        fns[k] = (lambda c: lambda: c(x))(c)
    with torch.inference_mode():
        t = interleaved(fns, reps, warmup=2, device=device)
    kind = "cpu" if device.type == "cpu" else "wall"
    for k, c in clfs.items():
        n = c.ratio.clean // c.ratio.adv
        r_pn = t.ratio(k, "PN", kind, scale=n + 1)
        r_bn = t.ratio(k, "BN", kind, scale=n + 1)
        r_wall = t.ratio(k, "PN", "wall", scale=n + 1)
        rows.append([ds + suffix, k, f"g={c.group_size}", fmt_ms(t.median(k)),
                     f"{len(x) / t.median(k):,.0f}/s", f"{r_pn:.2f}", f"{r_wall:.2f}",
                     f"{r_bn:.2f}"])
        RESULTS.setdefault("shaped_inference", []).append(dict(
            dataset=ds + suffix, mode=k, group_size=c.group_size, seconds=t.median(k),
            ratio_to_pn_floor=r_pn, ratio_to_pn_floor_wall=r_wall, ratio_to_bn_floor=r_bn))
        if "fresh" not in k:
            summary(f"3. shaped {k} / ((n+1) PN): {ds}{suffix}", r_pn,
                    1.10 if "grouped" in k else None, note=f"({kind})")
    return t.median("PN"), t.median("BN")


def section_shaped(args, device) -> None:
    header("3. Shaped inference / ((n+1) x a PN forward of the same test rows)")
    from normshape_core.inference.shaping import make_reference_pool

    datasets = ["moons", "digits"] if args.quick else ["moons", "digits", "fashion_mnist"]
    reps = 5 if args.quick else 11
    rows = []
    for ds in datasets:
        data = load_data(ds)
        if data is None:
            continue
        model, source = model_for(ds, "pgd", "attack+train", device, ratio="1:3", data=data)
        pool = make_reference_pool(data, 1000, 0).to(device)
        x = data.x_test[:100].to(device)
        variants = [("", model, False)]
        if data.x_test.dim() == 4 and not args.quick:
            from normshape_core.blocks import models as M

            if hasattr(M, "use_channels_last"):  # the same weights stored NHWC
                variants.append((", channels_last", M.use_channels_last(copy.deepcopy(model)),
                                 True))
        for suffix, m, only_grouped in variants:
            t_pn, t_bn = shaped_rows(rows, ds, suffix, m, pool, x, reps, device, only_grouped)
            say(f"{ds}{suffix}: {source}; PN forward of 100 rows {fmt_ms(t_pn)}, BN "
                f"{fmt_ms(t_bn)}")
    say(table(rows, ["dataset", "mode", "group", "time (100 rows)", "throughput",
                     "/(n+1)PN" + (" CPU" if device.type == "cpu" else ""), "/(n+1)PN wall",
                     "/(n+1)BN"]))
    say("Fixed references: the draw (and its gathered reference rows) is cached per test batch, "
        "as an\nevaluation classifies one batch many times; 'fresh refs' draws anew every call. "
        "', channels_last': the same\nweights stored NHWC (models.use_channels_last).")
