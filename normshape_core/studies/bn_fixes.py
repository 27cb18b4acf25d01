"""``python -m normshape_core alternatives --dataset D``: the BN fixes side by side.

The paper (section III) sets shaping against the other fixes for BatchNorm in adversarial
training. This module trains them at the reproduction's settings and seed
(``reproduce.REPRO_SETTINGS``, the same ``run_config``), evaluates every method through its
own norms with the lab's worst case, and writes the results file and the report:

- dual BN with PGD and with TRADES (``norm="dual_bn"``; TRADES as the reproduction trains it:
  KL for crafting only), classified with its clean norms and with its adversarial norms;
- no batch statistics: LayerNorm (the MLP) or GroupNorm (the CNN) in place of BN, with PGD;
- normalizer-free (the CNN; scaled weight standardisation, adaptive gradient clipping at
  ``NF_AGC_CLIP``), with PGD;
- test-time statistics on the shipped PGD-AT model (no training): re-estimated on 32 clean
  samples, mixed 0.5 with PN, and with one sample in eight poisoned (``alternatives``);
- beside them the shipped PGD-AT, TRADES, PGD + shaping and TRADES + shaping.

Runs live in ``OUT/<run name>/`` (default ``checkpoints/<dataset>/``); finished runs are
skipped, interrupted ones resume. The evaluations are ``evaluation.evaluate_checkpoint``
calls, cached (by default beside each checkpoint, as ``reproduce`` does), so the command
resumes them too. Results: ``OUT/alternatives.json``; the report (``ALTERNATIVES.md``) is
generated from the results files by ``alternatives-report`` (``update_report``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..settings.config import ConfigError
from ..base.names import META_NAME

RESULTS_NAME = "alternatives.json"
REPORT_NAME = "ALTERNATIVES.md"
#: Brock et al.'s clipping threshold (NFNets, 2021)
NF_AGC_CLIP = 0.01
#: the test-time statistics views evaluated on the shipped PGD-AT model: Benz et al.'s 32
#: samples; mixed half and half with PN; one sample in eight replaced by the poisoner's
TTS_SPECS = ("tts", "tts:mix=0.5", "tts:poison=0.125")


@dataclass(frozen=True)
class Alternative:
    """One training run of the comparison (trained by ``train_alternatives``)."""

    key: str
    method: str  # pgd | trades
    norm: str  # dual_bn | no_batch_stats (-> gn or ln, whichever the model has) | nf
    agc_clip: Optional[float] = None

    def norm_for(self, model: str) -> Optional[str]:
        """The norm this run takes on ``model``; None if the model has no such variant."""
        from ..blocks.models import MODELS

        norms = MODELS[model].norms
        if self.norm == "no_batch_stats":
            return "gn" if "gn" in norms else ("ln" if "ln" in norms else None)
        return self.norm if self.norm in norms else None


ALTERNATIVE_SET: List[Alternative] = [
    Alternative("dual_bn/pgd", "pgd", "dual_bn"),
    Alternative("dual_bn/trades", "trades", "dual_bn"),
    Alternative("no_batch_stats/pgd", "pgd", "no_batch_stats"),
    Alternative("nf/pgd", "pgd", "nf", NF_AGC_CLIP),
]


@dataclass(frozen=True)
class Row:
    """One row of a dataset's table: a method (a run of the set or a shipped checkpoint of
    the reproduction, by key) classified with one inference mode (a classify spec)."""

    method: str
    key: str
    spec: str


def table_rows(norms: Dict[str, str]) -> List[Row]:
    """The table of one dataset; ``norms``: alternative key -> the norm it trained with
    (keys missing for this dataset's model are left out)."""
    from ..blocks.models import NORM_LABELS

    rows = [Row("PGD-AT", "pgd/adv-only", "pn")]
    rows += [Row("PGD-AT + test-time statistics", "pgd/adv-only", s) for s in TTS_SPECS]
    rows += [Row("PGD + shaping 1:3", "pgd/shaping-in-attack+training", "shaped:1:9"),
             Row("TRADES", "trades/adv-only", "pn"),
             Row("TRADES + shaping 1:3", "trades/shaping-in-attack+training", "shaped:1:9")]
    for key, label in (("dual_bn/pgd", "dual BN (PGD)"), ("dual_bn/trades", "dual BN (TRADES)")):
        if key in norms:
            rows += [Row(label, key, "dual:clean"), Row(label, key, "dual:adv")]
    for key in ("no_batch_stats/pgd", "nf/pgd"):
        if key in norms:
            rows.append(Row(f"{NORM_LABELS[norms[key]]} (PGD)", key, "own"))
    return rows


#: the row every paired verdict compares against: shaping as the paper proposes it
SHAPING = ("PGD + shaping 1:3", "shaped:1:9")


# ====================================================================== settings
@dataclass
class AlternativesSettings:
    """The settings of ``alternatives``, checked before anything is trained."""

    dataset: str
    out: Path
    repro: Path
    seed: int = 0
    epochs: Optional[int] = None
    only: Optional[List[str]] = None
    n_test: Optional[int] = None
    ensemble: Optional[str] = None
    cache_dir: Optional[Path] = None
    """where the evaluations are cached; None: beside each checkpoint (the shipped results)"""
    threads: int = 1
    device: str = "auto"
    skip_eval: bool = False

    def alternatives(self) -> List[Alternative]:
        model = _dataset_model(self.dataset)
        return [a for a in ALTERNATIVE_SET if a.norm_for(model) is not None
                and (self.only is None or a.key in self.only)]

    def overrides(self) -> Dict[str, Any]:
        return {"epochs": self.epochs} if self.epochs is not None else {}

    def validate(self) -> "AlternativesSettings":
        from ..measuring.evaluation import ensemble_spec
        from ..settings.config import check_writable_dir, parse_device
        from .reproduce import check_study_numbers

        check_study_numbers(self)
        if self.only is not None:
            keys = [a.key for a in ALTERNATIVE_SET]
            unknown = [k for k in self.only if k not in keys]
            if unknown or not self.only:
                raise ConfigError(f"--only: unknown run key(s) {', '.join(unknown) or '(none)'}; "
                                  f"choose from: {', '.join(keys)}")
        if self.ensemble is not None:
            self.ensemble = ensemble_spec(self.ensemble)
        parse_device(self.device)
        check_writable_dir(self.out, "--out")
        if self.cache_dir is not None:
            check_writable_dir(self.cache_dir, "--cache-dir")
        for alt in self.alternatives():  # every run's settings valid before the first is trained
            run_config(self.dataset, alt, self.seed, device=self.device, **self.overrides())
        return self


def _dataset_model(dataset: str) -> str:
    from ..settings.config import dataset_preset

    return dataset_preset(dataset)["model"]


def run_config(dataset: str, alt: Alternative, seed: int = 0, **overrides):
    """The run's TrainConfig: the reproduction's settings (``reproduce.run_config``) with the
    alternative's norm (and clipping)."""
    from .reproduce import RunSpec
    from .reproduce import run_config as repro_config

    norm = alt.norm_for(overrides.get("model") or _dataset_model(dataset))
    if norm is None:
        raise ConfigError(f"{alt.key}: the model of {dataset} has no such variant")
    extra = {"norm": norm}
    if alt.agc_clip is not None:
        extra["agc_clip"] = alt.agc_clip
    return repro_config(dataset, RunSpec(alt.key, alt.method), seed, **extra, **overrides)


# ====================================================================== training
def train_alternatives(settings: AlternativesSettings, *, progress: bool = True,
                       log=print) -> Dict[str, Path]:
    """Train every run of the set that is not finished yet (interrupted ones resume);
    return key -> run folder."""
    from ..training.checkpoints import read_meta
    from ..settings.config import TrainConfig
    from ..blocks.data import load_dataset
    from ..training.trainer import train

    s = settings
    data = load_dataset(s.dataset, seed=s.seed)
    alts = s.alternatives()
    runs: Dict[str, Path] = {}
    for i, alt in enumerate(alts, 1):
        cfg = run_config(s.dataset, alt, s.seed, device=s.device, **s.overrides())
        run_dir = s.out / cfg.run_name()
        runs[alt.key] = run_dir
        if (run_dir / META_NAME).exists():
            meta = read_meta(run_dir)
            if TrainConfig.from_dict(meta["config"]).fingerprint() == cfg.fingerprint():
                log(f"[{i}/{len(alts)}] {alt.key}: done already ({run_dir})")
                continue
            raise ConfigError(f"{run_dir} holds a run with other settings; use another --out")
        log(f"[{i}/{len(alts)}] {alt.key}: training -> {run_dir}")
        t0 = time.time()
        train(cfg, run_dir, dataset=data, resume=True, progress=progress)
        log(f"[{i}/{len(alts)}] {alt.key}: {time.time() - t0:.1f} s")
    return runs


def shipped_runs(dataset: str, repro: Path, seed: int = 0) -> Dict[str, Path]:
    """The reproduction's checkpoints the table compares with (key -> run folder), where they
    exist under ``repro``."""
    from .reproduce import PAPER_SET, run_config as repro_config

    keys = {r.key for r in table_rows({})}
    out = {}
    for spec in PAPER_SET:
        if spec.key in keys:
            folder = Path(repro) / repro_config(dataset, spec, seed).run_name()
            if (folder / META_NAME).exists():
                out[spec.key] = folder
    return out


# ====================================================================== evaluation
def evaluation_calls(rows: Sequence[Row], runs: Dict[str, Path]) -> List[Tuple[str, List[str]]]:
    """(run key, classify specs) per evaluation call. The shipped checkpoints are evaluated
    with the reproduction's own classify list (``reproduce.TABLE_CLASSIFY``), so the call is
    the one ``reproduce`` makes and its cached worst case is read, not recomputed; the test-time
    statistics views of PGD-AT are a call of their own."""
    from .reproduce import TABLE_CLASSIFY

    calls: List[Tuple[str, List[str]]] = []
    for key in dict.fromkeys(r.key for r in rows):
        if key not in runs:
            continue
        specs = [r.spec for r in rows if r.key == key]
        if key not in {a.key for a in ALTERNATIVE_SET}:
            shared = [s for s in specs if s in TABLE_CLASSIFY]
            if shared:
                calls.append((key, list(TABLE_CLASSIFY)))
            rest = [s for s in specs if s not in TABLE_CLASSIFY]
            if rest:
                calls.append((key, rest))
        else:
            calls.append((key, specs))
    return calls


def evaluate_alternatives(settings: AlternativesSettings, runs: Dict[str, Path], *,
                          log=print) -> Dict[str, Any]:
    """Every row of the table evaluated: the worst case of the ensemble through the row's own
    norms and clean accuracy, on the same test samples (the first n of the seeded subset);
    returns the results (``RESULTS_NAME``)."""
    from ..inference.alternatives import describe_spec
    from ..training.checkpoints import read_meta
    from ..measuring.evaluation import BESIDE, WORST, ensemble_label, evaluate_checkpoint, rows_of
    from .reproduce import worst_case_settings

    s = settings
    ws = worst_case_settings(s.dataset, s.n_test)
    ensemble = s.ensemble or ws["ensemble"]
    n_test = s.n_test or ws["n_test"]
    extra = {k: ws[k] for k in ("n_target_classes",) if k in ws}
    norms = {k: read_meta(p)["config"].get("norm", "bn") for k, p in runs.items()}
    rows = [r for r in table_rows({k: v for k, v in norms.items() if k in
                                   {a.key for a in ALTERNATIVE_SET}}) if r.key in runs]
    out: Dict[str, Any] = {"dataset": s.dataset, "seed": s.seed, "n_test": n_test,
                           "ensemble": ensemble_label(ensemble), "settings": extra,
                           "rows": []}
    found: Dict[Tuple[str, str], Dict[str, Any]] = {}
    calls = evaluation_calls(rows, runs)
    for i, (key, classify) in enumerate(calls, 1):
        t0 = time.time()
        df, meta = evaluate_checkpoint(
            runs[key], dataset_name=s.dataset, device=None if s.device == "auto" else s.device,
            attacks=[], ensembles=[ensemble], classify=classify, n_test=n_test, seed=s.seed,
            progress=False, cache_dir=BESIDE if s.cache_dir is None else s.cache_dir, **extra)
        by_label = {r["classified_with"]: r for r in rows_of(df) if r["attack"] == WORST}
        for spec in classify:
            label = describe_spec(spec, norms[key])
            if label in by_label:
                found[(key, spec)] = {**by_label[label], "weights_sha256": meta["weights_sha256"],
                                      "checkpoint": str(runs[key]), "config": meta["config"],
                                      "warnings": list(df.attrs.get("warnings", []))}
        log(f"[eval {i}/{len(calls)}] {key}: {', '.join(classify)} "
            f"({'cached' if df.attrs.get('cached') else f'{time.time() - t0:.1f} s'})")
    for r in rows:
        got = found.get((r.key, r.spec))
        if got is not None:
            out["rows"].append({"method": r.method, "key": r.key, "spec": r.spec, **got})
    return out


def write_results(path: Path, results: Dict[str, Any]) -> None:
    from ..training.checkpoints import atomic_write_json

    atomic_write_json(path, results)


# ====================================================================== the report
def _prop(acc, n) -> str:
    from ..base.stats import interval_text

    return interval_text(acc, n) or "-"


def _mask(row: Dict[str, Any], which: str) -> Optional[List[bool]]:
    """A row's per-sample outcomes (``clean_mask`` / ``robust_mask``, ``stats.pack_mask``
    hex), or None when the results do not carry them."""
    from ..base.stats import unpack_mask

    text = row.get(f"{which}_mask")
    if not isinstance(text, str):
        return None
    try:
        return unpack_mask(text, row["n"])
    except (ValueError, KeyError, TypeError):
        return None


#: short names of the inference modes, for the verdicts' "A above B"
SHORT = {"pn": "PN", "bn": "BN", "shaped:1:9": "shaped 1:9", "dual:clean": "clean norms",
         "dual:adv": "adv norms", "own": "own norms", "tts": "re-estimated on 32 clean samples",
         "tts:mix=0.5": "re-estimated, mixed 0.5 with PN",
         "tts:poison=0.125": "re-estimated, 4 of 32 samples poisoned"}


def _row_name(r: Dict[str, Any]) -> str:
    return f"{r['method']} [{SHORT.get(r['spec'], r['classified_with'])}]"


def paired(a: Dict[str, Any], b: Dict[str, Any], which: str) -> str:
    """The claim "a above b" on ``which`` (clean / robust) accuracy, decided by the exact
    McNemar test on the per-sample outcomes (same samples), in words."""
    from ..base.stats import paired_verdict

    ma, mb = _mask(a, which), _mask(b, which)
    if ma is None or mb is None:
        return "not decided: the results carry no per-sample outcomes"
    if a["n"] != b["n"]:
        return f"not decided: different samples (n={a['n']} against n={b['n']})"
    return paired_verdict(ma, mb).text()


def _verdict_word(a, b, which) -> Optional[str]:
    from ..base.stats import paired_verdict

    ma, mb = _mask(a, which), _mask(b, which)
    if ma is None or mb is None or a["n"] != b["n"]:
        return None
    return paired_verdict(ma, mb).verdict


def _find(results, method_prefix: str, spec: str) -> Optional[Dict[str, Any]]:
    for r in results["rows"]:
        if r["method"].startswith(method_prefix) and r["spec"] == spec:
            return r
    return None


def dataset_section(results: Dict[str, Any]) -> str:
    """One dataset's part of the report: its table, its paired verdicts, its words."""
    from ..base.stats import INTERVAL_NAME

    ds = results["dataset"]
    rows = results["rows"]
    lines = [f"## {ds}", "",
             f"Worst case per sample over {results['ensemble']}, each row crafted through its "
             f"own norms ('crafted with'), on the same {results['n_test']} test samples (the "
             f"first of the evaluation's seeded subset, seed {results['seed']}); clean "
             f"accuracy on the same samples. Each accuracy: value [{INTERVAL_NAME}], n.", "",
             "| method | checkpoint | classified with | crafted with | clean accuracy | "
             "worst-case robust accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | `{Path(r['checkpoint']).name}` | {r['classified_with']}"
                     f" | {r['crafted_with']} | {_prop(r['clean_acc'], r['n'])} | "
                     f"{_prop(r['robust_acc'], r['n'])} |")
    shaped = _find(results, SHAPING[0], SHAPING[1])
    if shaped is not None:
        lines += ["", f"Paired verdicts (exact McNemar, same samples): {_row_name(shaped)} "
                      f"above each other row.", "",
                  "| claim | clean accuracy | worst-case robust accuracy |", "|---|---|---|"]
        for r in rows:
            if r is shaped:
                continue
            lines.append(f"| {_row_name(shaped)} above {_row_name(r)} | "
                         f"{paired(shaped, r, 'clean')} | {paired(shaped, r, 'robust')} |")
    lines += ["", one_norm_words(results)]
    return "\n".join(lines)


def one_norm_words(results: Dict[str, Any]) -> str:
    """Plain words on the paper's claim: shaping "has only one norm ..., avoiding the need
    of selecting the right norm during inference", from this dataset's numbers."""
    shaped = _find(results, SHAPING[0], SHAPING[1])
    clean = _find(results, "dual BN (PGD)", "dual:clean")
    adv = _find(results, "dual BN (PGD)", "dual:adv")
    if shaped is None or clean is None or adv is None:
        return "(The paper's \"only one norm\" claim needs PGD + shaping and dual BN (PGD) " \
               "with both norms; not all of them are in these results.)"

    def acc(r, k):
        return f"{r[k]:.3f}"

    text = (f"**\"Only one norm\".** Dual BN (PGD) is two classifiers: with its clean norms "
            f"{acc(clean, 'clean_acc')} clean, {acc(clean, 'robust_acc')} worst-case robust; "
            f"with its adversarial norms {acc(adv, 'clean_acc')} clean, "
            f"{acc(adv, 'robust_acc')} robust. Shaping is one: {acc(shaped, 'clean_acc')} clean, "
            f"{acc(shaped, 'robust_acc')} robust. ")
    from ..base.stats import HOLDS, REVERSED

    words = [_verdict_word(clean, adv, "clean"), _verdict_word(adv, clean, "robust"),
             _verdict_word(shaped, clean, "clean"), _verdict_word(shaped, adv, "robust")]
    if None in words:
        return text + ("Whether dual BN's choice of norm matters, and whether shaping's one norm "
                       "matches dual BN's best set on each count, is not decided: the results "
                       "carry no per-sample outcomes.")
    clean_wins_clean, adv_wins_robust, v_clean, v_adv = words
    if clean_wins_clean == HOLDS and adv_wins_robust == HOLDS:
        text += ("Dual BN's choice matters here: its clean norms are more accurate on clean "
                 "inputs and its adversarial norms more robust (both paired verdicts hold), so "
                 "a defender must know which inputs to expect. ")
    else:
        text += (f"Dual BN's choice is not shown to matter here (clean norms above adversarial "
                 f"norms on clean accuracy: {clean_wins_clean}; adversarial above clean norms "
                 f"on robustness: {adv_wins_robust}). ")
    text += (f"Against dual BN's best set for each count, shaping's one norm is: on clean "
             f"accuracy against the clean norms {v_clean}; on worst-case robustness against the "
             f"adversarial norms {v_adv}. ")
    if REVERSED in (v_clean, v_adv):
        text += ("So selecting dual BN's right norm buys something that shaping's one norm "
                 "does not give on this dataset: the paper's argument does not carry here.")
    elif v_clean == HOLDS and v_adv == HOLDS:
        text += ("So shaping's one norm beats either choice on its own count: the paper's "
                 "argument holds here.")
    elif HOLDS in (v_clean, v_adv):
        text += ("So shaping's one norm is better on one count and not shown different on the "
                 "other: the paper's argument holds in part here.")
    else:
        text += ("So neither is shown better on these samples: avoiding the choice costs "
                 "nothing measurable here, and buys nothing measurable either.")
    return text


#: the related work's measurable claims (paper, section III): (reference, claim, row A,
#: row B, which accuracy) -- "A above B"
RELATED_CLAIMS: List[Tuple[str, str, Tuple[str, str], Tuple[str, str], str]] = [
    ("[14], [29] (dual BN)", "two sets of norms give accuracy: dual BN's clean norms above "
     "PGD-AT on clean accuracy", ("dual BN (PGD)", "dual:clean"), ("PGD-AT", "pn"), "clean"),
    ("[14], [29] (dual BN)", "... and robustness: dual BN's adversarial norms at least as "
     "robust as PGD-AT", ("dual BN (PGD)", "dual:adv"), ("PGD-AT", "pn"), "robust"),
    ("[30] (Sridhar et al.)", "clean and adversarial samples through one BN (TRADES) do not "
     "work well: dual BN (TRADES) [adv norms] above TRADES on robustness",
     ("dual BN (TRADES)", "dual:adv"), ("TRADES", "pn"), "robust"),
    ("[33] (Wang et al.)", "removing BN boosts adversarial training: normalizer-free above "
     "PGD-AT on robustness", ("normalizer-free (PGD)", "own"), ("PGD-AT", "pn"), "robust"),
    ("[33] (Wang et al.)", "... and on clean accuracy", ("normalizer-free (PGD)", "own"),
     ("PGD-AT", "pn"), "clean"),
    ("[5], [11] (BN and vulnerability)", "BN makes models more vulnerable: a model without "
     "batch statistics (GroupNorm / LayerNorm) above PGD-AT on robustness",
     ("GroupNorm (PGD)|LayerNorm (PGD)", "own"), ("PGD-AT", "pn"), "robust"),
    ("[4] (Benz et al.)", "rectifying BN statistics at inference improves robustness: PGD-AT "
     "with test-time statistics above PGD-AT with PN", ("PGD-AT + test-time statistics", "tts"),
     ("PGD-AT", "pn"), "robust"),
    ("[4] (Benz et al.), attacked", "... also when one re-estimation sample in eight is an "
     "attacker's", ("PGD-AT + test-time statistics", "tts:poison=0.125"), ("PGD-AT", "pn"),
     "robust"),
]


def _find_any(results, methods: str, spec: str):
    for m in methods.split("|"):
        r = next((r for r in results["rows"] if r["method"] == m and r["spec"] == spec), None)
        if r is not None:
            return r
    return None


def related_work_markdown(all_results: Sequence[Dict[str, Any]]) -> str:
    """The related work's measurable claims, one row per claim, one column per dataset."""
    datasets = [r["dataset"] for r in all_results]
    lines = ["| reference | claim | " + " | ".join(datasets) + " |",
             "|---|---|" + "---|" * len(datasets)]
    for ref, claim, a, b, which in RELATED_CLAIMS:
        cells = []
        for res in all_results:
            ra, rb = _find_any(res, *a), _find_any(res, *b)
            cells.append("not measured (no such row)" if ra is None or rb is None
                         else paired(ra, rb, which))
        lines.append(f"| {ref} | {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the datasets the report is meant to cover (each with shipped alternatives' checkpoints)
REPORT_DATASETS = ("moons", "digits", "fashion_mnist")


def report_markdown(all_results: Sequence[Dict[str, Any]]) -> str:
    """The whole report (``REPORT_NAME``) from every dataset's results, in dataset order."""
    order = {"moons": 0, "spirals": 1, "digits": 2, "fashion_mnist": 3}
    all_results = sorted(all_results, key=lambda r: (order.get(r["dataset"], 9), r["dataset"]))
    parts = ["# The BN fixes side by side",
             "",
             "<!-- generated by `python -m normshape_core alternatives-report` from "
             "checkpoints/*/" + RESULTS_NAME + "; do not edit by hand -->",
             "",
             "Shaping (the paper's method) against the other fixes for BatchNorm in adversarial "
             "training that its section III names: dual BN (a clean and an adversarial set of "
             "statistics and affine parameters, [14], [29]), no batch statistics (GroupNorm / "
             "LayerNorm in place of BN), normalizer-free networks ([33]: scaled weight "
             "standardisation, adaptive gradient clipping at " + f"{NF_AGC_CLIP:g}" + "), and "
             "test-time statistics on the PGD-AT model ([4]: BN statistics re-estimated on 32 "
             "clean samples; mixed 0.5 with PN; and with 4 of the 32 replaced by an attacker's "
             "inputs, optimised to do the most harm). Every model is trained at the "
             "reproduction's settings and seed (REPRODUCTION.md); every row is classified and "
             "attacked through its own norms.", ""]
    have = [r["dataset"] for r in all_results]
    missing = [d for d in REPORT_DATASETS if d not in have]
    if missing:
        parts += [f"Evaluated so far: {', '.join(have)}. Not yet: {', '.join(missing)} (their "
                  "checkpoints ship; `python -m normshape_core alternatives --dataset D` "
                  "evaluates them, then `alternatives-report`).", ""]
    parts += [dataset_section(r) + "\n" for r in all_results]
    parts += ["## The related work's measurable claims", "",
              "Each claim as \"A above B\" on the same samples, decided by the exact McNemar "
              "test at 95 %.", "", related_work_markdown(all_results), ""]
    return "\n".join(parts)


def load_results(paths: Sequence[Path]) -> List[Dict[str, Any]]:
    out = []
    for p in paths:
        try:
            res = json.loads(Path(p).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{p} is not readable JSON ({e})") from None
        if not (isinstance(res, dict) and isinstance(res.get("dataset"), str)
                and isinstance(res.get("rows"), list)):
            raise ConfigError(f"{p} is not an alternatives results file (no dataset and rows)")
        out.append(res)
    return out


def results_paths(checkpoints: Path) -> List[Path]:
    return sorted(Path(checkpoints).glob(f"*/{RESULTS_NAME}"))


def update_report(md_path: Path, paths: Sequence[Path]) -> str:
    """Write the report from the results files (atomically); returns its text."""
    from ..training.checkpoints import atomic_write_bytes

    if not paths:
        raise ConfigError(f"no results files ({RESULTS_NAME}) given: run alternatives first")
    try:
        text = report_markdown(load_results(paths))
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"a results file lacks what the report needs ({type(e).__name__}: "
                          f"{str(e)[:120]})") from None
    atomic_write_bytes(Path(md_path), text.encode())
    return text


@dataclass
class AlternativesReportSettings:
    checkpoints: Path
    out: Path
    paths: List[Path] = field(default_factory=list)

    def validate(self) -> "AlternativesReportSettings":
        from ..settings.config import check_existing_dir, check_writable_file

        check_existing_dir(self.checkpoints, "--checkpoints")
        check_writable_file(self.out, "--out")
        self.paths = results_paths(self.checkpoints)
        if not self.paths:
            raise ConfigError(f"no */{RESULTS_NAME} under {self.checkpoints}: run "
                              f"`python -m normshape_core alternatives --dataset D` first")
        return self
