"""The generated part of REPRODUCTION.md: per dataset, the paper's tables beside the worst
case through each classifier's own norms, every accuracy with its n and 95 % interval, and
the paper's claims decided by paired exact tests on the same samples.

Everything here reads a ``results.json`` written by ``reproduce`` (``reproduce.evaluate_set``):
rows of ``evaluation.evaluate`` with their per-sample outcomes (``clean_mask``,
``robust_mask``), so an interval is computed from the row's own n and a verdict from the two
rows' samples. Rows of different sizes pair on their common first samples: the first n of a
seeded test subset are the same samples whatever the subset's size (``Dataset.subset``).

``python -m normshape_core report`` rewrites each dataset's block and the summary; a test
fails when REPRODUCTION.md and the committed results disagree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..settings.config import ConfigError
from ..base.names import WORST
from .reproduce import (ATTACK_LABELS, MAIN_KEYS, POLLUTED_KEY, SHAPED_KEYS, TABLE_ATTACKS,
                        TABLE_IV_INFERENCE, TABLE_IV_TRAINING, WORST_ENSEMBLE, _fmt, load_results)
from ..base.stats import (HOLDS, INCONCLUSIVE, INTERVAL_NAME, REVERSED, PairedVerdict, Proportion,
                          p_text, paired_verdict, unpack_mask)

#: the largest report read and rewritten
MAX_REPORT_BYTES = 16 << 20
PAPER_CLAIMS = {  # the paper's numbers beside each claim (Tables I-III)
    ("clean", "pgd"): "0.942 vs 0.869", ("clean", "trades"): "0.944 vs 0.888",
    ("pgd", "pgd"): "0.816 vs 0.470", ("pgd", "trades"): "0.817 vs 0.462",
    ("adaptive", "pgd"): "0.508 vs 0.470", ("adaptive", "trades"): "0.505 vs 0.462",
}
METHOD_LABELS = {"pgd": "PGD-AT", "trades": "TRADES"}


# ====================================================================== rows
def _rows(results: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    return results["runs"].get(key, {}).get("rows", [])


def _find(rows, attack, classified, crafted=None, ratio=None, n=None):
    """The first row of ``attack`` classified with ``classified`` (and crafted with, at
    ratio, of n samples, where given); worst-case rows: the one of the most samples."""
    hits = [r for r in rows if r["attack"] == attack and r["classified_with"] == classified
            and (crafted is None or r["crafted_with"] == crafted)
            and (ratio is None or r.get("ratio") == ratio) and (n is None or r["n"] == n)]
    if not hits:
        return None
    return max(hits, key=lambda r: r["n"]) if attack == WORST else hits[0]


def _shaped_label(rows, ratio: str) -> str:
    for r in rows:
        if r.get("ratio") == ratio:
            return r["classified_with"]
    return f"shaped {ratio}"


def _mask(r: Dict[str, Any], which: str, m: Optional[int] = None) -> List[bool]:
    """The row's per-sample outcomes (``which``: clean | robust), its first m."""
    bits = unpack_mask(r[f"{which}_mask"], r["n"])
    return bits if m is None else bits[:m]


def _prop(r: Optional[Dict[str, Any]], which: str = "robust",
          m: Optional[int] = None) -> Optional[Proportion]:
    """k of n behind a row's accuracy (on its first m samples, when given)."""
    if r is None:
        return None
    if m is None or m >= r["n"] or not r.get(f"{which}_mask"):
        return Proportion.of(r[f"{which}_acc"], r["n"])
    return Proportion(sum(_mask(r, which, m)), m)


def _cell(p: Optional[Proportion]) -> str:
    """``0.460 [0.36, 0.56]``: the accuracy and its 95 % interval (n in the caption)."""
    if p is None:
        return "-"
    lo, hi = p.interval
    return f"{p.value:.3f} [{lo:.2f}, {hi:.2f}]"


def _pair(a: Dict[str, Any], b: Dict[str, Any], which_a: str = "robust",
          which_b: str = "robust") -> PairedVerdict:
    """The claim "a above b" on their common first samples."""
    m = min(a["n"], b["n"])
    return paired_verdict(_mask(a, which_a, m), _mask(b, which_b, m))


def _n_worst(results: Dict[str, Any]) -> Optional[int]:
    return results.get("n_test_worst", results.get("n_test"))


# ====================================================================== tables
def paper_tables_markdown(results: Dict[str, Any], method: str) -> str:
    """Table I (pgd) / II (trades) layout: training mode x attack, (Acc, R.Acc) per
    inference mode; every robust column names crafted-with and classified-with norms."""
    modes = [("adv-only", "Adv. only"), ("shaping-in-training", "Shaping in training"),
             ("shaping-in-attack+training", "Shaping in attack+training")]
    cls = [("BN", "BN"), ("PN", "PN"), ("shaped 1:9", "BN+Shaping 1:9")]
    head = ("| training | attack (crafted with) | " +
            " | ".join(f"Acc [{c}] | R.Acc [{c}]" for _, c in cls) + " |")
    lines = [head, "|" + "---|" * (2 + 2 * len(cls))]
    for suffix, label in modes:
        rows = _rows(results, f"{method}/{suffix}")
        if not rows:
            continue
        for a in TABLE_ATTACKS:
            crafted = next((r["crafted_with"] for r in rows if r["attack"] == a), None)
            if crafted is None:
                continue
            cells = []
            for clabel, _ in cls:
                name = clabel if clabel != "shaped 1:9" else _shaped_label(rows, "1:9")
                r = _find(rows, a, name, crafted, n=results["n_test"])
                cells += [_cell(_prop(r, "clean")), _cell(_prop(r))]
            lines.append(f"| {label} | {ATTACK_LABELS[a]} ({crafted}) | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def natural_row_markdown(results: Dict[str, Any]) -> str:
    rows = _rows(results, "natural")
    lines = ["| model | attack (crafted with) | Acc [PN] | R.Acc [PN] | Acc [BN+Shaping 1:9] | "
             "R.Acc [BN+Shaping 1:9] |", "|---|---|---|---|---|---|"]
    for a in TABLE_ATTACKS:
        pn = _find(rows, a, "PN", n=results["n_test"])
        sh = _find(rows, a, _shaped_label(rows, "1:9"), n=results["n_test"])
        if pn is None:
            continue
        lines.append(f"| natural | {ATTACK_LABELS[a]} ({pn['crafted_with']}) | "
                     f"{_cell(_prop(pn, 'clean'))} | {_cell(_prop(pn))} | "
                     f"{_cell(_prop(sh, 'clean'))} | {_cell(_prop(sh))} |")
    return "\n".join(lines)


def worst_case_markdown(results: Dict[str, Any], method: Optional[str]) -> str:
    """Tables I/II (``method`` pgd / trades; None: natural) as the worst case per sample,
    each column crafted through the classifier's own norms (plus transfer), beside the
    paper's PGD-20 on the same samples, and how much PGD-20 overstates (paired test)."""
    modes = ([("natural", "natural")] if method is None else
             [(f"{method}/adv-only", "Adv. only"),
              (f"{method}/shaping-in-training", "Shaping in training"),
              (f"{method}/shaping-in-attack+training", "Shaping in attack+training")])
    cls = [("BN", "BN"), ("PN", "PN"), ("shaped 1:9", "BN+Shaping 1:9")]
    crafted: Dict[str, str] = {}
    for key, _ in modes:
        rows = _rows(results, key)
        for clabel, c in cls:
            w = _find(rows, WORST, clabel if clabel != "shaped 1:9" else
                      _shaped_label(rows, "1:9"))
            if w is not None:
                crafted.setdefault(c, w["crafted_with"])
    head = ("| training | n | " + " | ".join(
        f"R.Acc [{c}] PGD-20 (PN) | R.Acc [{c}] worst case ({crafted.get(c, 'own norms')})"
        for _, c in cls) + " | PGD-20 overstates by (largest, points; McNemar p) |")
    lines = [head, "|" + "---|" * (3 + 2 * len(cls))]
    for key, label in modes:
        rows = _rows(results, key)
        if not rows:
            continue
        cells, gaps, n_w = [], [], None
        for clabel, _ in cls:
            name = clabel if clabel != "shaped 1:9" else _shaped_label(rows, "1:9")
            w = _find(rows, WORST, name)
            p = _find(rows, "pgd", name, "PN", n=results["n_test"])
            n_w = w["n"] if w else n_w
            cells += [_cell(_prop(p, m=w and w["n"])), _cell(_prop(w))]
            if _paired_ok(p, w):
                gaps.append(_pair(p, w))
        over = max(gaps, key=lambda v: v.diff) if gaps else None
        lines.append(f"| {label} | {n_w or '-'} | " + " | ".join(cells) + " | " +
                     (f"{over.diff * 100:+.1f} pts (p {p_text(over.p_value)})" if over else "-")
                     + " |")
    return "\n".join(lines)


def table_iii_markdown(results: Dict[str, Any]) -> str:
    lines = ["| attack (crafted with), classified with BN+Shaping 1:9 | n | " +
             " | ".join(SHAPED_KEYS) + " |", "|---|---|" + "---|" * len(SHAPED_KEYS)]
    labels = [("adaptive_eot", "slightly weaker attack: own references from the training set, EOT"),
              ("adaptive_exact", "adaptive attack: the defender's exact references"),
              ("pgd", "PGD crafted with PN (for comparison)")]
    for attack, label in labels:
        cells, crafted, n = [], "", "-"
        for key in SHAPED_KEYS.values():
            rows = _rows(results, key)
            r = _find(rows, attack, _shaped_label(rows, "1:9"),
                      "PN" if attack == "pgd" else None, n=results["n_test"])
            if r is not None:
                crafted, n = r["crafted_with"], r["n"]
            cells.append(_cell(_prop(r)))
        lines.append(f"| {label} ({crafted}) | {n} | " + " | ".join(cells) + " |")
    cells, n = [], "-"
    for key in SHAPED_KEYS.values():
        rows = _rows(results, key)
        w = _find(rows, WORST, _shaped_label(rows, "1:9"))
        n = w["n"] if w else n
        cells.append(_cell(_prop(w)))
    if any(c != "-" for c in cells):
        lines.append(f"| worst case per sample ({_ensemble_of(results)}), crafted through the "
                     f"defender's exact shaped batches plus transfer | {n} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ensemble_of(results: Dict[str, Any]) -> str:
    for run in results["runs"].values():
        for r in run.get("rows", []):
            if r["attack"] == WORST and r.get("ensemble"):
                return r["ensemble"]
    return results.get("worst_ensemble", WORST_ENSEMBLE)


def table_iv_rows(results: Dict[str, Any], worst: bool = False
                  ) -> Dict[str, Dict[str, Optional[Dict[str, Any]]]]:
    """Table IV's rows: PGD-20 crafted with PN, or (``worst``) the worst case through each
    classifier's exact shaped batches on ``n_test_table_iv_worst`` samples."""
    out: Dict[str, Dict[str, Optional[Dict[str, Any]]]] = {}
    n_iv = results.get("n_test_table_iv_worst")
    for training, key in TABLE_IV_TRAINING.items():
        rows = _rows(results, key)
        if not rows:
            continue
        out[training] = {}
        for inf in TABLE_IV_INFERENCE:
            label = _shaped_label(rows, inf)
            out[training][inf] = (_find(rows, WORST, label, n=n_iv) if worst else
                                  _find(rows, "pgd", label, "PN", ratio=inf,
                                        n=results["n_test"]))
    if worst and not any(v is not None for row in out.values() for v in row.values()):
        return {}
    return out


def table_iv_values(results: Dict[str, Any], worst: bool = False
                    ) -> Dict[str, Dict[str, Optional[float]]]:
    return {t: {i: (r and r["robust_acc"]) for i, r in row.items()}
            for t, row in table_iv_rows(results, worst).items()}


def table_iv_markdown(results: Dict[str, Any], worst: bool = False) -> str:
    vals = table_iv_rows(results, worst)
    lines = ["| training adv:clean \\ inference adv:clean | " + " | ".join(TABLE_IV_INFERENCE) +
             " |", "|---|" + "---|" * len(TABLE_IV_INFERENCE)]
    for training, row in vals.items():
        lines.append(f"| {training} | " + " | ".join(_cell(_prop(row[i]))
                                                      for i in TABLE_IV_INFERENCE) + " |")
    return "\n".join(lines)


def confounding_markdown(results: Dict[str, Any]) -> str:
    d = results.get("diagnostics", {})
    lines = ["| measurement | paper | ours: PGD-AT (adv only) | ours: PGD + shaping |",
             "|---|---|---|---|"]

    def get(key, *path):
        v = d.get(key, {})
        for p in path:
            v = v.get(p, {}) if isinstance(v, dict) else {}
        return v if isinstance(v, (int, float)) else None
    specs = [("II: logit error, clean-batch BN vs adversarial batch's own BN (FGSM, one "
              "training step)", "+63%", ("confounding_ii", "relative_difference")),
             ("III: PGD perturbation L2, crafted with PN vs BN", "+17%",
              ("confounding_iii", "pn_vs_bn")),
             ("III: PGD perturbation L2, shaped batch 1:3 vs plain PGD (BN)", "+41%",
              ("confounding_iii", "shaping_vs_bn"))]
    for label, paper, path in specs:
        a = get("pgd/adv-only", *path)
        b = get("pgd/shaping-in-attack+training", *path)
        lines.append(f"| {label} | {paper} | {_pct(a)} | {_pct(b)} |")
    for mode in ("PN", "BN"):
        a = get("pgd/adv-only", "confounding_iii", "modes", mode, "straightness")
        b = get("pgd/shaping-in-attack+training", "confounding_iii", "modes", mode, "straightness")
        lines.append(f"| III: path straightness \\|x(K)-x\\| / sum of steps, crafted with {mode} "
                     f"| - | {_fmt(a)} | {_fmt(b)} |")
    for r in ("1:0", "1:3"):
        a = get("pgd/adv-only", "moving_target", r, "summary", "step_drift_mean")
        b = get("pgd/shaping-in-attack+training", "moving_target", r, "summary", "step_drift_mean")
        lines.append(f"| II: moving target, mean BN drift per PGD step, batch {r} | - | "
                     f"{_fmt(a)} | {_fmt(b)} |")
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{v * 100:+.0f}%"


def polluted_markdown(results: Dict[str, Any]) -> str:
    lines = ["| model | Acc [PN] | R.Acc PGD (PN) [PN] | R.Acc worst case (PN) [PN] | "
             "Acc [BN+Shaping 1:9] | R.Acc PGD (PN) [BN+Shaping 1:9] | R.Acc worst case "
             "(exact shaped batches + transfer) [BN+Shaping 1:9] |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("pgd/shaping-in-attack+training", "frozen BN in attack steps (ours)"),
                       (POLLUTED_KEY, "attack steps update running statistics (paper's code)")):
        rows = _rows(results, key)
        n = results["n_test"]
        pn = _find(rows, "pgd", "PN", "PN", n=n)
        sh = _find(rows, "pgd", _shaped_label(rows, "1:9"), "PN", n=n)
        wp = _find(rows, WORST, "PN")
        ws = _find(rows, WORST, _shaped_label(rows, "1:9"))
        lines.append(f"| {label} | {_cell(_prop(pn, 'clean'))} | {_cell(_prop(pn))} | "
                     f"{_cell(_prop(wp))} (n={wp and wp['n']}) | {_cell(_prop(sh, 'clean'))} | "
                     f"{_cell(_prop(sh))} | {_cell(_prop(ws))} (n={ws and ws['n']}) |")
    return "\n".join(lines)


# ====================================================================== verdicts
@dataclass
class Verdict:
    claim: str
    verdict: str
    """reproduced | reversed | inconclusive at 95 % (or holds / does not hold)"""
    numbers: str
    short: str
    """the verdict and its figures in a few words (the summary table)"""


def _word(v: PairedVerdict, yes: str = "reproduced", no: str = "reversed") -> str:
    return {HOLDS: yes, REVERSED: no, INCONCLUSIVE: INCONCLUSIVE}[v.verdict]


def _paired_ok(*rows: Optional[Dict[str, Any]]) -> bool:
    """Whether the rows keep their per-sample outcomes (results of an earlier engine do not)."""
    return all(r is not None and r.get("clean_mask") and r.get("robust_mask") for r in rows)


def _unpaired(claim: str, a: Dict[str, Any], b: Dict[str, Any], which: str,
              paper: str) -> Verdict:
    pa, pb = _prop(a, which), _prop(b, which)
    return Verdict(claim, "not tested", f"{_cell(pa)} vs {_cell(pb)} (n={a['n']}, {b['n']}): "
                   f"these results keep no per-sample outcomes, so no paired test; rerun "
                   f"reproduce; paper {paper}", "not tested (no per-sample outcomes)")


def _claim(claim: str, a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]], which: str,
           paper: str) -> Verdict:
    """The claim "a above b" (``which``: clean | robust) decided by the paired test."""
    if a is None or b is None:
        return Verdict(claim, "not computed yet", "the evaluation behind it has not run: "
                       "rerun reproduce (it resumes)", "not computed yet")
    if not _paired_ok(a, b):
        return _unpaired(claim, a, b, which, paper)
    v = _pair(a, b, which, which)
    pa, pb = _prop(a, which, v.n), _prop(b, which, v.n)
    word = _word(v)
    numbers = (f"{_cell(pa)} vs {_cell(pb)}, {v.diff * 100:+.1f} points, n={v.n}; McNemar "
               f"exact p {p_text(v.p_value)} ({v.a_only} vs {v.b_only} discordant); paper {paper}")
    return Verdict(claim, word, numbers, f"{word}, {v.diff * 100:+.1f} pts (p {p_text(v.p_value)})")


def verdicts(results: Dict[str, Any]) -> List[Verdict]:
    """The paper's claims, each decided by an exact paired test on the same samples."""
    out: List[Verdict] = []
    for method, label in METHOD_LABELS.items():
        base = _rows(results, f"{method}/adv-only")
        shaped = _rows(results, f"{method}/shaping-in-attack+training")
        if not base or not shaped:
            continue
        s9 = _shaped_label(shaped, "1:9")
        n = results["n_test"]
        b = _find(base, "pgd", "PN", "PN", n=n)
        s = _find(shaped, "pgd", s9, "PN", n=n)
        out.append(_claim(f"clean accuracy: {label} + shaping [BN+Shaping 1:9] above {label} "
                          f"[PN]", s, b, "clean", PAPER_CLAIMS[("clean", method)]))
        out.append(_claim(f"robust accuracy, PGD-20 crafted with PN: {label} + shaping "
                          f"[BN+Shaping 1:9] above {label} [PN]", s, b, "robust",
                          PAPER_CLAIMS[("pgd", method)]))
        a = _find(shaped, "adaptive_exact", s9, n=n)
        if a is not None:
            out.append(_claim(f"adaptive attack (exact references) on {label} + shaping "
                              f"[BN+Shaping 1:9] above {label} under PN-crafted PGD-20 [PN]",
                              a, b, "robust", PAPER_CLAIMS[("adaptive", method)]))
        wb, ws = _find(base, WORST, "PN"), _find(shaped, WORST, s9)
        if wb is not None and ws is not None:
            out.append(_claim(f"**worst case through the own norms**: {label} + shaping "
                              f"[BN+Shaping 1:9, exact shaped batches + transfer] above "
                              f"{label} [PN]", ws, wb, "robust",
                              "(adaptive PGD) " + PAPER_CLAIMS[("adaptive", method)]))
            if not _paired_ok(s, ws):
                out.append(_unpaired(f"no gradient masking on {label} + shaping [BN+Shaping "
                                     f"1:9]: PGD-20 crafted with PN not above the worst case",
                                     s, ws, "robust", "-"))
                continue
            v = _pair(s, ws)
            word = "does not hold" if v.verdict == HOLDS else "holds"
            out.append(Verdict(
                f"no gradient masking on {label} + shaping [BN+Shaping 1:9]: PGD-20 crafted "
                f"with PN not above the worst case", word,
                f"PGD-20 {_cell(_prop(s, m=v.n))} vs worst case {_cell(_prop(ws, m=v.n))}: "
                f"{v.diff * 100:+.1f} points, n={v.n}, McNemar exact p {p_text(v.p_value)}",
                f"{word}: PGD-20 {v.diff * 100:+.1f} pts (p {p_text(v.p_value)})"))
    out += _table_iv_verdicts(table_iv_rows(results), "PGD-20 crafted with PN")
    out += _table_iv_verdicts(table_iv_rows(results, worst=True),
                              "worst case through the exact shaped batches")
    return out


def _table_iv_verdicts(iv, protocol: str) -> List[Verdict]:
    """Table IV's three claims, each a paired test on the same samples: 1:1 training flat
    across inference ratios (no significant difference between its best and worst cell),
    1:3 training best overall (its cells pooled against each other training ratio's), and
    1:7 training weak at inference 1:0 (its best cell significantly above its 1:0 cell)."""
    out: List[Verdict] = []
    if not iv or not all(_paired_ok(r) for row in iv.values() for r in row.values()
                         if r is not None):
        return out
    one = {i: r for i, r in iv.get("1:1", {}).items() if r is not None}
    if len(one) >= 2:
        hi = max(one.values(), key=lambda r: r["robust_acc"])
        lo = min(one.values(), key=lambda r: r["robust_acc"])
        v = _pair(hi, lo)
        word = "reproduced" if v.verdict == INCONCLUSIVE else "not reproduced"
        out.append(Verdict(
            f"Table IV ({protocol}): training 1:1 flat across inference ratios", word,
            f"best cell {_cell(_prop(hi))} vs worst {_cell(_prop(lo))}, n={v.n}, McNemar "
            f"exact p {p_text(v.p_value)} (paper: spread 0.002)",
            f"{word} (spread {v.diff * 100:.1f} pts, p {p_text(v.p_value)})"))
    pooled = {t: [r for r in row.values() if r is not None] for t, row in iv.items()}
    pooled = {t: rs for t, rs in pooled.items() if rs}
    if "1:3" in pooled and len(pooled) > 1:
        means = {t: sum(r["robust_acc"] for r in rs) / len(rs) for t, rs in pooled.items()}
        rival = max((t for t in pooled if t != "1:3"), key=means.get)
        a = [b for r in pooled["1:3"] for b in _mask(r, "robust")]
        b_ = [b for r in pooled[rival] for b in _mask(r, "robust")]
        m = min(len(a), len(b_))
        v = paired_verdict(a[:m], b_[:m])
        word = _word(v, "reproduced", "not reproduced (reversed)")
        out.append(Verdict(
            f"Table IV ({protocol}): training 1:3 best overall (its cells pooled against the "
            f"next best training ratio, {rival})", word,
            ", ".join(f"{t}: {mm:.3f}" for t, mm in means.items()) + f" (mean over inference "
            f"ratios); 1:3 vs {rival}: {v.diff * 100:+.1f} points over {m} (sample, ratio) "
            f"pairs, McNemar exact p {p_text(v.p_value)} (paper: 1:3 best, mean 0.706)",
            f"{word} ({v.diff * 100:+.1f} pts vs {rival}, p {p_text(v.p_value)})"))
    seven = {i: r for i, r in iv.get("1:7", {}).items() if r is not None}
    if "1:0" in seven and len(seven) > 1:
        best = max(seven.values(), key=lambda r: r["robust_acc"])
        v = _pair(best, seven["1:0"])
        word = _word(v, "reproduced", "not reproduced (reversed)")
        out.append(Verdict(
            f"Table IV ({protocol}): training 1:7 weak at inference 1:0 (its best inference "
            f"ratio above 1:0)", word,
            f"1:0 {_cell(_prop(seven['1:0']))} vs best {_cell(_prop(best))}, n={v.n}, McNemar "
            f"exact p {p_text(v.p_value)} (paper: 0.039 vs 0.781)",
            f"{word} ({v.diff * 100:+.1f} pts, p {p_text(v.p_value)})"))
    return out


def verdicts_markdown(results: Dict[str, Any]) -> str:
    lines = ["| claim | verdict | numbers |", "|---|---|---|"]
    for v in verdicts(results):
        lines.append(f"| {v.claim} | **{v.verdict}** | {v.numbers} |")
    return "\n".join(lines)


# ====================================================================== sections
def _budget_sentence(results: Dict[str, Any]) -> str:
    n, nw = results["n_test"], _n_worst(results)
    no, niv = results.get("n_test_worst_others", nw), results.get("n_test_table_iv_worst")
    parts = [f"the headline models (natural, PGD-AT, PGD + shaping 1:3, TRADES, TRADES + "
             f"shaping 1:3) on {'all ' if nw == n else 'the first '}{nw} of the {n} samples"]
    if no != nw:
        parts.append(f"the other models on the first {no}")
    parts.append(f"Table IV's worst case on {'the first ' if niv != n else ''}{niv} per cell"
                 if niv else "Table IV's worst case not computed")
    return "; ".join(parts)


def dataset_section(results: Dict[str, Any]) -> str:
    """The generated part of REPRODUCTION.md for one dataset (tests compare it verbatim)."""
    ds = results["dataset"]
    cfg = next(iter(results["runs"].values()))["config"] if results["runs"] else {}
    ws = results.get("worst_settings", {})
    settings = (
        f"model `{cfg.get('model')}`, eps {cfg.get('eps'):g}, step {cfg.get('step_size'):g}, "
        f"{cfg.get('steps')} attack steps in training, batch 64 (1:2: 63), "
        f"{cfg.get('epochs')} epochs, seed {results['seed']}; evaluation on "
        f"{results['n_test']} test samples: PGD-20 / C&W-L2 / DeepFool / FGSM / the shaping "
        f"attack at the training eps, shaped inference with a 1,000-sample reference pool "
        f"from the training set, batches of 100 as in the paper. Worst case per sample: "
        f"{_ensemble_of(results)} (APGD {ws.get('apgd_steps')} iterations per run and per "
        f"target class, APGD-T on {ws.get('n_target_classes')} target classes at most, Square "
        f"{ws.get('square_queries', 0):,} queries), each classifier attacked through its own "
        f"norms (PN; the test batch's own BN; the exact shaped batches of shaped inference) "
        f"plus transfer from the other norms; {_budget_sentence(results)}. Every accuracy: "
        f"the value and its {INTERVAL_NAME} in brackets, n in the caption or its column."
        if cfg else "")
    n, niv = results["n_test"], results.get("n_test_table_iv_worst")
    if results.get("complete") is False:
        done = len(results.get("evaluations", []))
        planned = results.get("planned_evaluations")
        settings += (f"\n\n**In progress**: {done}" + (f" of {planned}" if planned else "") +
                     " evaluations are done; a cell shown as \"-\" and a verdict \"not "
                     "computed yet\" are still to come (`reproduce` resumes where it stopped).")
    return "\n\n".join([
        f"<!-- generated:{ds} -->",
        f"### {ds}: settings", settings,
        f"### {ds}: natural training (n={n})", natural_row_markdown(results),
        f"### {ds}: Table I layout, PGD-based training (n={n})",
        paper_tables_markdown(results, "pgd"),
        f"### {ds}: Table II layout, TRADES-based training, the paper's variant: KL for "
        f"crafting only (n={n})", paper_tables_markdown(results, "trades"),
        f"### {ds}: worst case per sample beside the paper's protocol on the same samples "
        f"(Tables I and II and natural training)",
        "\n\n".join(worst_case_markdown(results, m) for m in (None, "pgd", "trades")),
        f"### {ds}: Table III layout (adaptive attacks)", table_iii_markdown(results),
        f"### {ds}: Table IV layout (robust accuracy, PGD crafted with PN, classified with "
        f"BN+Shaping at the inference ratio; n={n})", table_iv_markdown(results),
        f"### {ds}: Table IV layout, worst case per sample (crafted through the exact shaped "
        f"batches of each inference ratio plus transfer; n={niv or '-'})",
        table_iv_markdown(results, worst=True) if table_iv_rows(results, True) else
        "(not computed)",
        f"### {ds}: confounding measurements", confounding_markdown(results),
        f"### {ds}: polluted running statistics (the paper's PN column explained; n={n}, "
        f"worst case n in brackets)", polluted_markdown(results),
        f"### {ds}: verdicts (exact McNemar tests on the same samples, 95 %)",
        verdicts_markdown(results),
        f"<!-- end generated:{ds} -->"])


SUMMARY_CLAIMS = [
    ("clean accuracy: PGD-AT + shaping", "clean accuracy of PGD + shaping (BN+Shaping 1:9) "
     "above PGD-AT (PN) (0.942 vs 0.869)"),
    ("clean accuracy: TRADES + shaping", "the same for TRADES (0.944 vs 0.888)"),
    ("robust accuracy, PGD-20 crafted with PN: PGD-AT", "robust accuracy, PGD-20 crafted with "
     "PN: PGD + shaping [BN+Shaping 1:9] above PGD-AT [PN] (0.816 vs 0.470)"),
    ("robust accuracy, PGD-20 crafted with PN: TRADES", "the same for TRADES (0.817 vs 0.462)"),
    ("adaptive attack (exact references) on PGD-AT", "adaptive attack (exact references) on "
     "PGD + shaping above PGD-AT under PGD crafted with PN (0.508 vs 0.470)"),
    ("adaptive attack (exact references) on TRADES", "the same for TRADES (0.505 vs 0.462)"),
    ("**worst case through the own norms**: PGD-AT", "**worst case through the own norms**: "
     "PGD + shaping [BN+Shaping 1:9, exact shaped batches + transfer] above PGD-AT [PN]"),
    ("**worst case through the own norms**: TRADES", "the same for TRADES"),
    ("no gradient masking on PGD-AT", "no gradient masking: PGD-20 crafted with PN not above "
     "the worst case on PGD + shaping [BN+Shaping 1:9]"),
    ("no gradient masking on TRADES", "the same on TRADES + shaping"),
    ("Table IV (PGD-20 crafted with PN): training 1:1 flat", "Table IV, PGD-20: training 1:1 "
     "flat across inference ratios (spread 0.002)"),
    ("Table IV (worst case through the exact shaped batches): training 1:1 flat",
     "the same, worst case"),
    ("Table IV (PGD-20 crafted with PN): training 1:3 best", "Table IV, PGD-20: training 1:3 "
     "best overall (0.706)"),
    ("Table IV (worst case through the exact shaped batches): training 1:3 best",
     "the same, worst case"),
    ("Table IV (PGD-20 crafted with PN): training 1:7 weak", "Table IV, PGD-20: training 1:7 "
     "weak at inference 1:0 (0.039 vs 0.781)"),
    ("Table IV (worst case through the exact shaped batches): training 1:7 weak",
     "the same, worst case"),
]


def summary_markdown(all_results: List[Dict[str, Any]]) -> str:
    """The verdicts of every dataset side by side (the report's summary table)."""
    dss = [r["dataset"] for r in all_results]
    by = {r["dataset"]: verdicts(r) for r in all_results}
    lines = ["<!-- generated:summary -->",
             "| claim (paper's figures) | " + " | ".join(dss) + " |",
             "|---|" + "---|" * len(dss)]
    for prefix, label in SUMMARY_CLAIMS:
        cells = []
        for ds in dss:
            v = next((v for v in by[ds] if v.claim.startswith(prefix)), None)
            cells.append(v.short if v else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("<!-- end generated:summary -->")
    return "\n".join(lines)


def update_report(md_path: Path, results_paths: List[Path]) -> str:
    """Replace (or append) each dataset's generated block and the summary in
    REPRODUCTION.md."""
    from ..base.files import read_text

    text = (read_text(md_path, MAX_REPORT_BYTES, "report") if md_path.exists()
            else "# Reproduction\n")
    all_results = [load_results(p) for p in results_paths]
    blocks = [(r["dataset"], dataset_section(r)) for r in all_results]
    blocks.append(("summary", summary_markdown(all_results)))
    for name, block in blocks:
        pattern = re.compile(rf"<!-- generated:{re.escape(name)} -->.*?<!-- end generated:"
                             rf"{re.escape(name)} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    from ..training.checkpoints import atomic_write_bytes

    atomic_write_bytes(md_path, text.encode())
    return text


@dataclass
class ReportSettings:
    """The settings of ``report``: an existing folder of results, a writable report."""

    checkpoints: Path
    out: Path

    def validate(self) -> "ReportSettings":
        from ..settings.config import check_existing_dir, check_writable_file

        check_existing_dir(self.checkpoints, "--checkpoints")
        check_writable_file(self.out, "--out")
        return self

    def results_paths(self) -> List[Path]:
        paths = sorted(Path(self.checkpoints).glob("*/results.json"))
        if not paths:
            raise ConfigError(f"no */results.json under {self.checkpoints}: run reproduce first")
        for p in paths:  # each one readable and of the expected shape, before any writing
            try:
                results = load_results(p)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise ConfigError(f"{p} is not readable JSON ({e})") from None
            if not isinstance(results, dict) or not isinstance(results.get("dataset"), str):
                raise ConfigError(f"{p} is not a reproduce results file (no \"dataset\")")
        return paths
