"""normshape_core: Batch-Norm Shaping in adversarial training (Zhang & Ma, ICTAI 2022).

The Python API for notebooks and scripts (docs/python-api.md): every public name below is
importable from the package, ``from normshape_core import load_for_evaluation, evaluate``.
Importing the package is light: each name's module (torch, pandas, ...) is imported on first
use of the name. Each subpackage is one layer, lowest first (docs/architecture.md,
tests/test_architecture.py): base (files, names, stats, faults, userdata) -> blocks (data,
models, norms) -> settings (config, presets) -> inference (shaping, the other BN fixes) ->
attacks -> training (trainer, objectives, checkpoints) -> measuring (evaluation, worst case,
diagnostics, projections) -> figures -> studies (reproduce, report, bn_fixes, sweep) -> cli
and this package's API. This package never imports Streamlit; the app's background jobs and
Playground live in ``normshape_app``.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

from ._version import __version__

#: public name -> the module that defines it (imported on first access)
_LAZY: Dict[str, str] = {
    # settings
    "TrainConfig": ".settings.config", "ConfigError": ".settings.config",
    "Ratio": ".settings.config",
    "DATASET_PRESETS": ".settings.presets", "TRAIN_PRESETS": ".settings.presets",
    # data and models
    "load_dataset": ".blocks.data", "Dataset": ".blocks.data", "DATASETS": ".blocks.data",
    "build_model": ".blocks.models", "MODELS": ".blocks.models",
    # inference with batch norm: PN, BN, shaped
    "PNClassifier": ".inference.shaping", "BNClassifier": ".inference.shaping",
    "ShapedClassifier": ".inference.shaping",
    "make_reference_pool": ".inference.shaping", "parse_classifier": ".inference.shaping",
    # the other BN fixes: dual BN, no batch statistics, test-time statistics
    "make_classifier": ".inference.alternatives", "DualBNClassifier": ".inference.alternatives",
    "OwnNormsClassifier": ".inference.alternatives",
    "TestTimeStatsClassifier": ".inference.alternatives",
    # attacks
    "make_attack": ".attacks", "ATTACKS": ".attacks", "pgd_linf": ".attacks",
    # training and checkpoints
    "train": ".training.trainer", "Trainer": ".training.trainer",
    "StopTraining": ".training.trainer",
    "TrainResult": ".training.trainer",
    "load_checkpoint": ".training.checkpoints", "find_checkpoints": ".training.checkpoints",
    "CheckpointError": ".training.checkpoints",
    # evaluation and the worst case
    "evaluate": ".measuring.evaluation", "evaluate_checkpoint": ".measuring.evaluation",
    "load_for_evaluation": ".measuring.evaluation", "EvalSettings": ".measuring.evaluation",
    "table_like_paper": ".measuring.evaluation", "table_worst_case": ".measuring.evaluation",
    "table_iv": ".measuring.evaluation", "format_table": ".measuring.evaluation",
    "worst_case": ".measuring.worst_case", "make_ensemble": ".measuring.worst_case",
    # your own model: its factory and weights, your data, the checks
    "load_own_model": ".measuring.own_model", "dataset_from_arrays": ".measuring.own_model",
    "check_own_model": ".measuring.own_model", "load_data": ".measuring.own_model",
    # diagnostics
    "moving_target": ".measuring.diagnostics", "diagnose": ".measuring.diagnostics",
    "diagnose_checkpoint": ".measuring.diagnostics", "DiagnoseSettings": ".measuring.diagnostics",
    "logit_error_experiment": ".measuring.diagnostics",
    "perturbation_experiment": ".measuring.diagnostics",
    # reproduction
    "ReproduceSettings": ".studies.reproduce", "ReportSettings": ".studies.report",
    "AlternativesSettings": ".studies.bn_fixes",
}

__all__: List[str] = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'normshape_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
