"""Section 2: our attacks against torchattacks' on the same model (PN, eval mode) and batch.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from _timing import fmt_ms, interleaved, table, time_once
from _common import RESULTS, header, import_torchattacks, load_data, model_for, say, summary


def section_attacks(args, device) -> None:
    header("2. Our attacks / torchattacks' (same settings, same model in eval() = PN, same batch)")
    torchattacks = import_torchattacks("attacks")
    if torchattacks is None:
        return
    from normshape_core.attacks import make_attack
    from normshape_core.inference.shaping import PNClassifier

    data = load_data("digits")
    model, source = model_for("digits", "pgd", "none", device, data=data)
    model.eval()
    x, y = data.x_test.to(device), data.y_test.to(device)
    n = len(x)
    eps = 0.3
    say(f"model: small CNN on digits, {source}; batch: the {n} test samples; eps {eps}; "
        f"torchattacks {torchattacks.__version__}")
    pn = PNClassifier(model)

    @torch.no_grad()
    def acc(xa):
        return float((model(xa).argmax(1) == y).float().mean())

    @torch.no_grad()
    def l2_stats(xa):
        fooled = model(xa).argmax(1) != y
        right = model(x).argmax(1) == y
        ok = fooled & right
        med = float((xa - x).flatten(1).norm(dim=1)[ok].median()) if ok.any() else float("nan")
        return float(fooled.float().mean()), med

    reps = 4 if args.quick else 9
    steps = 10
    kind = "cpu" if device.type == "cpu" else "wall"  # the summary's ratios
    cases = [
        ("FGSM", make_attack("fgsm", eps=eps), torchattacks.FGSM(model, eps=eps), 1.0, "linf"),
        (f"PGD-{steps} (step eps/4, random start)",
         make_attack("pgd", eps=eps, steps=steps, step_size=eps / 4),
         torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True), 1.0,
         "linf"),
        (f"PGD-{steps} without random start (deterministic: same examples expected)",
         make_attack("pgd", eps=eps, steps=steps, step_size=eps / 4, random_start=False),
         torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=False), None,
         "linf"),
        ("C&W-L2 (c=1, kappa=0, 50 Adam steps, lr 0.01, no binary search)",
         make_attack("cw", steps=50, lr=0.01, initial_const=1.0, binary_search_steps=1,
                     confidence=0.0),
         torchattacks.CW(model, c=1, kappa=0, steps=50, lr=0.01), 1.0, "l2"),
    ]
    rows = []
    for name, ours, theirs, goal, threat in cases:
        model.eval()
        made: Dict[str, List[torch.Tensor]] = {"ours": [], "theirs": []}

        def ours_call(a=ours):
            # a new seed per call, as torchattacks draws its random start from the global RNG
            if hasattr(a.settings, "seed"):
                a.settings.seed = len(made["ours"])
            made["ours"].append(a(pn, x, y))
        fns = {"ours": ours_call, "theirs": lambda a=theirs: made["theirs"].append(a(x, y))}
        t = interleaved(fns, reps, warmup=1, device=device)
        model.eval()
        r = t.ratio("ours", "theirs")
        r_cpu = t.ratio("ours", "theirs", "cpu")
        run_t = interleaved({"run": lambda a=ours: a.run(pn, x, y),
                             "theirs": lambda a=theirs: a(x, y)}, max(2, reps // 2), warmup=0,
                            device=device)
        model.eval()
        short = name.split(" (")[0] + (" (no random start)" if "without" in name else "")
        if threat == "linf":
            # robust accuracy averaged over every call made (random starts differ per call)
            a_o = statistics.mean(acc(xa) for xa in made["ours"])
            a_t = statistics.mean(acc(xa) for xa in made["theirs"])
            quality = (f"robust acc {a_o:.3f} vs {a_t:.3f} (diff {abs(a_o - a_t) * 100:.1f} pts; "
                       f"mean of {len(made['ours'])} calls)")
            RESULTS.setdefault("attacks", []).append(dict(
                attack=name, ratio_wall=r, ratio_cpu=r_cpu, robust_acc_ours=a_o,
                robust_acc_theirs=a_t))
            if goal is not None:
                summary(f"2. {short} ours / torchattacks", t.ratio("ours", "theirs", kind), goal,
                        note=f"({kind} time)")
            summary(f"2. {short}: robust-acc difference (points)", abs(a_o - a_t) * 100, 2.0,
                    fmt="{:.1f}")
        else:
            (s_o, l_o), (s_t, l_t) = l2_stats(made["ours"][-1]), l2_stats(made["theirs"][-1])
            quality = (f"success {s_o:.3f} vs {s_t:.3f}; median L2 {l_o:.3f} vs {l_t:.3f}")
            RESULTS.setdefault("attacks", []).append(dict(
                attack=name, ratio_wall=r, ratio_cpu=r_cpu, success_ours=s_o, success_theirs=s_t,
                median_l2_ours=l_o, median_l2_theirs=l_t))
            summary("2. C&W-L2 ours / torchattacks", t.ratio("ours", "theirs", kind), goal,
                    note=f"({kind} time)")
        rows.append([name, fmt_ms(t.median("ours")), fmt_ms(t.median("theirs")),
                     f"{r:.2f} ({t.spread('ours', 'theirs')})",
                     f"{r_cpu:.2f}" if device.type == "cpu" else "-",
                     f"{run_t.ratio('run', 'theirs'):.2f}", quality])

    # DeepFool: ours batched over the whole batch, theirs one sample at a time
    nd = 50 if args.quick else 100
    xd, yd = x[:nd], y[:nd]
    ours = make_attack("deepfool", max_iter=50, overshoot=0.02)
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)
    model.eval()
    t = interleaved({"ours": lambda: ours(pn, xd, yd), "theirs": lambda: theirs(xd, yd)},
                    max(2, reps - 1), warmup=1, device=device)
    r = t.ratio("ours", "theirs")
    xo, xt = ours(pn, xd, yd), theirs(xd, yd)
    model.eval()
    with torch.no_grad():
        def df_stats(xa):
            fooled = model(xa).argmax(1) != yd
            right = model(xd).argmax(1) == yd
            ok = fooled & right
            return (float(fooled.float().mean()),
                    float((xa - xd).flatten(1).norm(dim=1)[ok].median()) if ok.any() else math.nan)
        (s_o, l_o), (s_t, l_t) = df_stats(xo), df_stats(xt)
    rows.append([f"DeepFool (50 iter, overshoot 0.02; {nd} samples)", fmt_ms(t.median("ours")),
                 fmt_ms(t.median("theirs")), f"{r:.3f} ({t.spread('ours', 'theirs')})",
                 f"{t.ratio('ours', 'theirs', 'cpu'):.3f}" if device.type == "cpu" else "-", "-",
                 f"success {s_o:.3f} vs {s_t:.3f}; median L2 {l_o:.3f} vs {l_t:.3f}"])
    RESULTS.setdefault("attacks", []).append(dict(attack="deepfool", n=nd, ratio_wall=r,
                                                  success_ours=s_o, success_theirs=s_t,
                                                  median_l2_ours=l_o, median_l2_theirs=l_t))
    summary("2. DeepFool ours (batched) / torchattacks (per sample)",
            t.ratio("ours", "theirs", kind), 0.1, fmt="{:.3f}", note=f"({kind} time)")
    say(table(rows, ["attack", "ours", "torchattacks", "ours/theirs wall (IQR)", "CPU",
                     "run()/theirs", "quality: ours vs theirs"]))
    say("ours = attack(PNClassifier(model), x, y), the examples only; run() also computes success "
        "statistics\n(two more forwards). Robust accuracy: the same model in eval() on each "
        "implementation's examples.")
