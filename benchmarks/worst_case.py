"""Section 6: the worst case per sample (the ``autoattack`` ensemble, crafted through the
defender's own norms) against torchattacks, and the worst-case evaluation time of a shipped
Fashion-MNIST checkpoint.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from _timing import fmt_ms, interleaved, table, time_once
from _common import RESULTS, header, import_torchattacks, say, shipped_checkpoint, summary


#: test samples of the cross-check per dataset, (PN, shaped 1:9): the first n of the
#: evaluation's seeded test subset. Shaped inference costs 10 rows per test row at 1:9 (a
#: Fashion-MNIST batch of 100 takes ~6 minutes of the ensemble): one batch there.
XCHECK_N = {"moons": (1000, 1000), "digits": (397, 397), "fashion_mnist": (500, 100)}


XCHECK_N_QUICK = {"moons": (100, 100), "digits": (100, 50)}


#: the Fashion-MNIST worst-case evaluation (issue 11's speed target: 1,000 samples, PN and
#: shaped 1:9, within 10 minutes on 2 cores); --quick measures QUICK_EVAL_N and extrapolates
EVAL_N, QUICK_EVAL_N = 1000, 10


XCHECK_GOAL_POINTS = 0.5


class _Images(torch.nn.Module):
    """``model`` for torchattacks, whose APGD / Square expect [N, C, H, W] images: feature
    vectors [N, D] travel as [N, D, 1, 1] and are reshaped back for the model. (Each Square
    query then moves every feature with its own sign; as [N, 1, 1, D] only the first feature
    would ever move: torchattacks' random square position never reaches the last column.)"""

    def __init__(self, model: torch.nn.Module, shape):
        super().__init__()
        self.model, self.shape = model, tuple(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z.reshape((len(z),) + self.shape))


class ShapedBatchModule(torch.nn.Module):
    """The defender's exact shaped batches for one test batch of n rows, as an ``nn.Module``
    that torchattacks can attack: ``forward(z)`` classifies the n rows of z in the shaped
    batches of ``view`` (``ShapedClassifier.with_exact_references(n)``, or its ``restricted``
    to some of those batches: the very reference rows the defender classifies them with) and
    returns their logits. Rows not ``free`` are held at ``template`` (their current example:
    clean, or adversarial once an earlier run fooled them), as the ensemble does
    (``worst_case.PinnedRowsView``): a shaped batch couples its rows, so torchattacks' usual
    slicing of the still-correct rows would change the batch."""

    def __init__(self, view, model: torch.nn.Module, template: torch.Tensor,
                 free: torch.Tensor):
        super().__init__()
        self.model = model  # registered: torchattacks takes its device and sets eval() on it
        self.view = view
        self.template = template.detach().clone()
        self.free = free.clone()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if len(z) != len(self.template):
            raise ValueError(f"a shaped batch of {len(self.template)} rows, called on {len(z)}")
        z = z.reshape(self.template.shape)
        keep = self.free.reshape((len(z),) + (1,) * (z.dim() - 1))
        return self.view(torch.where(keep, z, self.template))


def torchattacks_through_batch(atk, view, model: torch.nn.Module, x: torch.Tensor,
                               y: torch.Tensor, free: torch.Tensor, targeted: bool
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """torchattacks' APGD / APGD-T through the exact shaped batches ``view`` of one test batch:
    its own iterations (``attack_single_run``: random start, step-size schedule, DLR losses,
    target choice), one run per restart (and per target class for APGD-T,
    ``range(2, n_target_classes + 2)`` as its ``perturb``), after
    ``torch.manual_seed(atk.seed)`` as ``perturb`` does. Each run attacks the samples no
    earlier run fooled (``free``; at first those classified right when clean): it goes through
    the shaped batches (groups) that hold such a sample, whole, the group's other rows held at
    their example (``ShapedBatchModule``), as the ensemble does. Returns (examples, rows that
    torchattacks' own bookkeeping still counts as robust)."""
    shape4 = (len(x), -1, 1, 1) if x.dim() == 2 else x.shape
    x4 = x.reshape(shape4)
    groups = view.row_groups().to(x.device)
    template, free = x.detach().clone(), free.clone()
    torch.manual_seed(int(atk.seed))
    targets = list(range(2, atk.n_target_classes + 2)) if targeted else [None]
    for target in targets:
        for _ in range(atk.n_restarts):
            if not bool(free.any()):
                return template, free
            active = torch.unique(groups[free])
            rows = torch.isin(groups, active).nonzero().squeeze(1)
            net = ShapedBatchModule(view.restricted(active.cpu()), model, template[rows],
                                    free[rows]).eval()
            atk.set_model(net)
            if target is not None:
                atk.target_class = target
            _, still, _, adv = atk.attack_single_run(x4[rows], y[rows])
            fooled = ~still.bool() & net.free
            template[rows[fooled]] = adv.detach().reshape((len(rows),) + x.shape[1:])[fooled]
            free[rows[fooled]] = False
    return template, free


def _linf(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).abs().max())


def xcheck_setup(ds: str, n: int, device):
    """(model in eval, data, x, y, eps, checkpoint name) for the PGD + shaping 1:3 model."""
    from normshape_core.checkpoints import load_checkpoint
    from normshape_core.data import load_dataset

    ck = shipped_checkpoint(ds, "pgd", "attack+train", "1:3")
    if ck is None:
        return None
    model, meta = load_checkpoint(ck.path, device=device)
    cfg = meta["config"]
    try:
        data = load_dataset(cfg["dataset"], seed=cfg["seed"], download=False)
    except Exception as e:  # noqa: BLE001 - a missing dataset is reported, not fatal
        say(f"  {ds}: not available here ({type(e).__name__})")
        return None
    n = min(n, len(data.x_test))
    sub = data.subset(n_test=n, seed=0)  # the evaluation's seeded test subset (seed 0)
    return (model.eval(), data, sub.x_test.to(device), sub.y_test.to(device),
            float(cfg["eps"]), ck.path.name)


def our_autoattack(eps: float):
    """The evaluation's ``autoattack`` ensemble with its default settings."""
    from normshape_core.evaluation import EvalSettings
    from normshape_core.worst_case import ensemble_members, make_ensemble

    s = EvalSettings()
    names = ensemble_members("autoattack")
    members = make_ensemble(names, eps=eps, seed=0, steps=s.apgd_steps, restarts=s.restarts,
                            n_queries=s.square_queries, n_target_classes=s.n_target_classes)
    what = (f"{', '.join(names)}; APGD-type {s.apgd_steps} steps x {s.restarts} restart"
            f"{'s' if s.restarts > 1 else ''}, APGD-T {s.n_target_classes} targets (at most "
            f"C-1), Square {s.square_queries} queries")
    return members, what


def theirs_autoattack(torchattacks, model, x, y, eps: float, n_classes: int, steps=None):
    """torchattacks' AutoAttack (standard) on ``model`` (eval = PN); ``steps``: set its APGD,
    APGD-T and FAB-T iterations (its default is 10; the original AutoAttack runs 100).
    Returns (examples, what ran). When AutoAttack itself fails (2 classes: APGD-T's DLR loss
    indexes the 3rd and 4th largest logits), its pieces run in AutoAttack's order on the
    samples still robust, the failing ones left out and named (the time of the failed call,
    up to the failure, stays in what is timed)."""
    x4 = x.reshape(len(x), -1, 1, 1) if x.dim() == 2 else x
    net = _Images(model, x.shape[1:]).eval() if x.dim() == 2 else model
    aa = torchattacks.AutoAttack(net, norm="Linf", eps=eps, version="standard",
                                 n_classes=n_classes, seed=0)
    pieces = aa._autoattack.attacks
    for a in pieces:
        if steps is not None and hasattr(a, "steps"):
            a.steps = int(steps)
    names = [f"{type(a).__name__}" + ("-T" if getattr(a, "multi_targeted", False) else "")
             + (f"({a.n_queries} queries)" if hasattr(a, "n_queries") else
                f"({a.steps} steps)") for a in pieces]
    try:
        return aa(x4, y).reshape(x.shape), "AutoAttack standard: " + ", ".join(names)
    except Exception as e:  # noqa: BLE001 - reported, then the pieces that work
        first_err = f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
    x_adv, robust, ran = x4.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device), []
    for a, name in zip(pieces, names):
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        try:
            adv = a(x4[idx], y[idx])
        except Exception as e:  # noqa: BLE001
            ran.append(f"{name} FAILED ({type(e).__name__})")
            continue
        with torch.no_grad():
            wrong = net(adv).argmax(1) != y[idx]
        x_adv[idx[wrong]] = adv[wrong]
        robust[idx[wrong]] = False
        ran.append(name)
    return x_adv.reshape(x.shape), (f"AutoAttack failed ({first_err}); its pieces in its order: "
                                    + ", ".join(ran))


def section_worst_case(args, device) -> None:
    header("6. Worst case (autoattack ensemble) against torchattacks; its cost")
    torchattacks = import_torchattacks("worst_case")
    if torchattacks is None:
        return
    from normshape_core.shaping import PNClassifier, ShapedClassifier, make_reference_pool
    from normshape_core.worst_case import worst_case

    sizes = XCHECK_N_QUICK if args.quick else XCHECK_N
    say(f"torchattacks {torchattacks.__version__}. Model: the shipped PGD + shaping (attack+train "
        f"1:3) checkpoint per\ndataset; samples: the evaluation's seeded test subset (first n of "
        f"a permutation with seed 0), the same\nfor both sides; eps: the checkpoint's. Every "
        f"robust accuracy is the defender's verdict on the returned examples.")
    rows, speed_rows, notes = [], [], []
    kind = "cpu" if device.type == "cpu" else "wall"
    for ds, (n, n_shaped) in sizes.items():
        setup = xcheck_setup(ds, n, device)
        if setup is None:
            continue
        model, data, x, y, eps, name = setup
        n, C = len(x), data.num_classes
        members, ours_what = our_autoattack(eps)
        say(f"\n{ds}: {name}, n = {n}, eps {eps:g}, {C} classes")
        pn = PNClassifier(model)

        # (a) PN: our worst case against torchattacks' AutoAttack, timed against each other
        made: Dict[str, Any] = {}

        def ours_pn():
            made["ours"] = worst_case(pn, members, x, y, eps=eps)

        def theirs_pn():
            model.eval()
            made["theirs"] = theirs_autoattack(torchattacks, model, x, y, eps, C)
        def theirs_100():  # the original AutoAttack's budget (torchattacks' default: 10)
            model.eval()
            made["theirs100"] = theirs_autoattack(torchattacks, model, x, y, eps, C, steps=100)
        fns = {"ours": ours_pn, "theirs": theirs_pn, "theirs100": theirs_100}
        reps = 1 if (args.quick or ds == "fashion_mnist" or n > 400) else 3
        t = interleaved(fns, reps, warmup=0, device=device)
        res = made["ours"]
        with torch.no_grad():
            ours_acc = float(res.robust.float().mean())
            masks = {k: pn(made[k][0]).argmax(1) == y for k in fns if k != "ours"}
            verdicts = {k: float(m.float().mean()) for k, m in masks.items()}
            # samples our worst case counts robust that torchattacks broke (positions in the
            # seeded test subset): where to look when a row fails
            only = {k: (res.robust & ~m).nonzero().squeeze(1).tolist() for k, m in masks.items()}
            clean = float(res.clean_right.float().mean())
        say(f"  PN, ours: {ours_what}; stages " + ", ".join(
            f"{st.attack} -{st.broken}" for st in res.stages))
        say(f"  PN, torchattacks: {made['theirs'][1]}")
        say(f"  PN, max |x_adv - x|: ours {_linf(res.x_adv, x):.4f}, torchattacks "
            f"{_linf(made['theirs'][0], x):.4f} (eps {eps:g})")
        failed = "failed" in made["theirs"][1]
        for k, budget in (("theirs", "standard"),
                          ("theirs100", "APGD/APGD-T/FAB-T at 100 steps")):
            label = (f"AutoAttack's pieces, {budget} (note)" if failed else
                     f"AutoAttack, {budget}")
            diff = (ours_acc - verdicts[k]) * 100
            ok = diff <= XCHECK_GOAL_POINTS
            rows.append([ds, "PN", str(n), f"{clean:.3f}", f"{ours_acc:.3f}", label,
                         f"{verdicts[k]:.3f}", f"{diff:+.1f}", "pass" if ok else "FAIL"])
            if not ok:
                notes.append(f"{ds} PN, {label}: robust for ours, broken by torchattacks: "
                             f"samples {only[k][:20]} of the seeded subset")
            summary(f"6. {ds} PN: ours - torchattacks {label} (points)", diff,
                    XCHECK_GOAL_POINTS, fmt="{:+.1f}")
            r_w, r_c = t.ratio("ours", k), t.ratio("ours", k, "cpu")
            speed_rows.append([ds, str(n), label, f"{t.median('ours'):.1f} s",
                               f"{t.median(k):.1f} s", f"{r_w:.2f}",
                               f"{r_c:.2f}" if device.type == "cpu" else "-", str(reps)])
            summary(f"6. {ds} PN worst case / torchattacks {label}",
                    t.ratio("ours", k, kind), 1.0 if k == "theirs" else None,
                    note=f"({kind} time)")
            RESULTS.setdefault("worst_case_pn", []).append(dict(
                dataset=ds, n=n, checkpoint=name, eps=eps, ours=ours_acc, theirs=verdicts[k],
                theirs_label=label, theirs_ran=made[k][1], ours_ran=ours_what,
                diff_points=diff, ours_s=t.median("ours"), theirs_s=t.median(k),
                ratio_wall=r_w, ratio_cpu=r_c, reps=reps, ours_only_robust=only[k],
                linf_ours=_linf(res.x_adv, x), linf_theirs=_linf(made[k][0], x)))
        if failed:
            notes.append(f"{ds} PN: {made['theirs'][1]}")

        # (b) shaped 1:9: our worst case against torchattacks' APGD-DLR and APGD-T through
        # the same exact shaped batches, one test batch of 100 at a time
        pool = make_reference_pool(data, 1000, 0).to(device)
        clf = ShapedClassifier(model, pool, "1:9", None, seed=0)
        dlr_ok = C >= 4  # torchattacks' DLR losses index the 3rd (APGD) and 4th (APGD-T) logit
        theirs_names = (["APGD-DLR", "APGD-T"] if dlr_ok else ["APGD-CE"])
        if not dlr_ok:
            notes.append(f"{ds} shaped: {C} classes: torchattacks' APGD-DLR and APGD-T index "
                         f"the 3rd/4th largest logit (IndexError), so its APGD-CE ran instead")
        right = {"ours": 0, "clean": 0, **{k: 0 for k in theirs_names}}
        only_s: Dict[str, List[int]] = {k: [] for k in theirs_names}
        booked = {k: 0 for k in theirs_names}
        secs = {"ours": 0.0, **{k: 0.0 for k in theirs_names}}
        linf = 0.0
        n_s = min(n_shaped, n)
        for b in range(math.ceil(n_s / 100)):
            xb, yb = x[b * 100:min((b + 1) * 100, n_s)], y[b * 100:min((b + 1) * 100, n_s)]
            clf.reference_offset = b  # the evaluation's draw for test batch b
            w0 = time.perf_counter()
            r = worst_case(clf, members, xb, yb, eps=eps)
            secs["ours"] += time.perf_counter() - w0
            right["ours"] += int(r.robust.sum())
            right["clean"] += int(r.clean_right.sum())
            view = clf.with_exact_references(len(xb))
            for k in theirs_names:
                common = dict(norm="Linf", eps=eps, steps=100, n_restarts=1, seed=0)
                atk = (torchattacks.APGDT(model, n_classes=C, **common) if k == "APGD-T" else
                       torchattacks.APGD(model, loss="dlr" if k == "APGD-DLR" else "ce",
                                         **common))
                w0 = time.perf_counter()
                xa, still = torchattacks_through_batch(atk, view, model, xb, yb, r.clean_right,
                                                       targeted=k == "APGD-T")
                secs[k] += time.perf_counter() - w0
                linf = max(linf, _linf(xa, xb))
                with torch.no_grad():
                    verdict = clf(xa).argmax(1) == yb  # the defender's verdict
                right[k] += int(verdict.sum())
                only_s[k] += (b * 100 + (r.robust & ~verdict).nonzero().squeeze(1)).tolist()
                booked[k] += int(still.sum())
        ours_acc = right["ours"] / n_s
        for k in theirs_names:
            acc = right[k] / n_s
            diff = (ours_acc - acc) * 100
            ok = diff <= XCHECK_GOAL_POINTS
            rows.append([ds, "shaped 1:9 (g=10)", str(n_s), f"{right['clean'] / n_s:.3f}",
                         f"{ours_acc:.3f}", f"{k} (100 steps), exact shaped batches",
                         f"{acc:.3f} ({booked[k] / n_s:.3f})", f"{diff:+.1f}",
                         "pass" if ok else "FAIL"])
            summary(f"6. {ds} shaped 1:9: ours - torchattacks {k} (points)", diff,
                    XCHECK_GOAL_POINTS, fmt="{:+.1f}")
            if not ok:
                notes.append(f"{ds} shaped 1:9, {k}: robust for ours, broken by torchattacks "
                             f"(each in its own final batch): samples {only_s[k][:20]} of the "
                             f"seeded subset")
            RESULTS.setdefault("worst_case_shaped", []).append(dict(
                dataset=ds, n=n_s, checkpoint=name, eps=eps, ours=ours_acc, theirs=acc,
                theirs_bookkeeping=booked[k] / n_s, theirs_label=k, diff_points=diff,
                ours_only_robust=only_s[k],
                ours_s=secs["ours"], theirs_s=secs[k], linf_theirs=linf))
        say(f"  shaped 1:9: ours {secs['ours']:.1f} s; torchattacks " + ", ".join(
            f"{k} {secs[k]:.1f} s" for k in theirs_names) + f"; max |x_adv - x| of theirs "
            f"{linf:.4f} (eps {eps:g})")

    say("\nRobust accuracy, ours (worst case per sample over the autoattack ensemble, crafted "
        "through the defender's\nown norms) against torchattacks on the same model, samples, "
        "eps and norms:")
    say(table(rows, ["dataset", "classified with", "n", "clean", "ours (worst case)",
                     "torchattacks", "theirs", "ours - theirs (points)",
                     f"<= {XCHECK_GOAL_POINTS:g}"]))
    say("Shaped rows: test batches of 100 (the evaluation's, with its reference draw per "
        "batch); torchattacks' attack\nthrough ShapedBatchModule (our exact shaped batches as "
        "an nn.Module): its own iterations\n(attack_single_run) on whole shaped batches, each "
        "restart / target class on the batches that still hold\na sample no earlier run fooled "
        "(the other rows held at their example). 'theirs': the defender's verdict\non the "
        "examples it returned (what is compared); in brackets torchattacks' own bookkeeping "
        "(fooled at\nsome iterate, in the batch of that iterate).")
    for note in notes:
        say(f"note: {note}")
    say("\nSpeed, PN: our worst case / torchattacks' AutoAttack, same model (eval = PN), same "
        "samples, interleaved:")
    say(table(speed_rows, ["dataset", "n", "torchattacks", "ours", "theirs", "ratio wall",
                           "ratio CPU", "calls each"]))
    fashion_eval(args, device)


def fashion_eval(args, device) -> None:
    """The worst-case evaluation of one shipped Fashion-MNIST checkpoint, PN and shaped 1:9."""
    from normshape_core.evaluation import WORST, evaluate

    setup = xcheck_setup("fashion_mnist", EVAL_N, device)
    if setup is None:
        say("\nFashion-MNIST worst-case evaluation: no checkpoint or data here: skipped")
        return
    model, data, _, _, eps, name = setup
    n = QUICK_EVAL_N if args.quick else EVAL_N
    say(f"\nWorst-case evaluation of {name} (evaluate(..., ['pn', 'shaped:1:9'], "
        f"ensembles=['autoattack'], eps={eps:g}, n_test={n})), "
        f"{torch.get_num_threads()} torch thread(s):")
    w, c = time_once(lambda: RESULTS.__setitem__("_df", evaluate(
        model, data, [], ["pn", "shaped:1:9"], ensembles=["autoattack"], eps=eps, n_test=n)),
                     device)
    df = RESULTS.pop("_df")
    worst = df[df["attack"] == WORST]
    parts = {r["classified_with"]: (float(r["robust_acc"]), float(r["seconds"]))
             for _, r in worst.iterrows()}
    stages = df[df["ensemble"].notna() & (df["attack"] != WORST)]
    scale = EVAL_N / n
    rows = []
    for k, (acc, sec) in parts.items():
        per = stages[stages["classified_with"] == k]
        where = ", ".join(f"{r['attack']} {float(r['seconds']):.1f} s (broke "
                          f"{int(r['broken'])})" for _, r in per.iterrows())
        rows.append([k, f"{acc:.3f}", f"{sec:.1f} s", f"{sec * scale / 60:.1f} min", where])
    rows.append(["all (clean pass and checks too)", "", f"{w:.1f} s (CPU {c:.1f} s)",
                 f"{w * scale / 60:.1f} min (CPU {c * scale / 60:.1f} min)", ""])
    say(table(rows, ["classified with", "worst case", f"measured (n={n})",
                     f"for {EVAL_N:,} samples" + (" (extrapolated x%g)" % scale
                                                 if scale != 1 else ""), "per attack"]))
    say("Per classifier and per attack: wall time (the evaluation's own timers) and samples "
        "broken; the goal "
        "(issue 11): 10 minutes on\n2 cores. The summary takes CPU time on CPU (the work, "
        "without what other jobs took), wall time on a GPU.")
    if scale != 1:
        say(f"--quick: measured on {n} samples (one shaped group) and scaled linearly to "
            f"{EVAL_N:,} (the cost is per test row;\nthe robust fraction, which sets how much "
            f"work the later attacks do, varies with the sample): an estimate,\nnot a "
            f"measurement.")
    minutes = (c if device.type == "cpu" else w) * scale / 60
    summary(f"6. fashion_mnist worst-case eval, {EVAL_N:,} samples, PN + shaped 1:9"
            + (" (extrapolated)" if scale != 1 else ""), minutes, 10.0, fmt="{:.1f} min",
            note="(CPU time)" if device.type == "cpu" else "")
    RESULTS["worst_case_eval"] = dict(checkpoint=name, n=n, wall_s=w, cpu_s=c,
                                      extrapolated_to=EVAL_N, scale=scale,
                                      per_classifier={k: dict(robust=a, seconds=sec)
                                                      for k, (a, sec) in parts.items()},
                                      per_attack=[dict(classified_with=r["classified_with"],
                                                       attack=r["attack"],
                                                       seconds=float(r["seconds"]),
                                                       broken=int(r["broken"]))
                                                  for _, r in stages.iterrows()])
