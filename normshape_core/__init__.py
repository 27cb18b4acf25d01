"""normshape_core: Batch-Norm Shaping in adversarial training (Zhang & Ma, ICTAI 2022).

The Python API for notebooks and scripts (README, "Python API"): every public name below is
importable from the package, ``from normshape_core import load_for_evaluation, evaluate``.
Importing the package is light: each name's module (torch, pandas, ...) is imported on first
use of the name. Layers, lowest first (docs/architecture.md, tests/test_architecture.py):
data, models, norms -> settings -> shaping, attacks -> training, checkpoints ->
evaluation, diagnostics, projections -> figures -> CLI / app / jobs / reproduce. This package
never imports Streamlit.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

from ._version import __version__

#: public name -> the module that defines it (imported on first access)
_LAZY: Dict[str, str] = {
    # settings
    "TrainConfig": ".config", "ConfigError": ".config", "Ratio": ".config",
    "DATASET_PRESETS": ".presets", "TRAIN_PRESETS": ".presets",
    # data and models
    "load_dataset": ".data", "Dataset": ".data", "DATASETS": ".data",
    "build_model": ".models", "MODELS": ".models",
    # inference with batch norm: PN, BN, shaped
    "PNClassifier": ".shaping", "BNClassifier": ".shaping", "ShapedClassifier": ".shaping",
    "make_reference_pool": ".shaping", "parse_classifier": ".shaping",
    # the other BN fixes: dual BN, no batch statistics, test-time statistics
    "make_classifier": ".alternatives", "DualBNClassifier": ".alternatives",
    "OwnNormsClassifier": ".alternatives", "TestTimeStatsClassifier": ".alternatives",
    # attacks
    "make_attack": ".attacks", "ATTACKS": ".attacks", "pgd_linf": ".attacks",
    # training and checkpoints
    "train": ".training", "Trainer": ".training", "StopTraining": ".training",
    "TrainResult": ".training",
    "load_checkpoint": ".checkpoints", "find_checkpoints": ".checkpoints",
    "CheckpointError": ".checkpoints",
    # evaluation and the worst case
    "evaluate": ".evaluation", "evaluate_checkpoint": ".evaluation",
    "load_for_evaluation": ".evaluation", "EvalSettings": ".evaluation",
    "table_like_paper": ".evaluation", "table_worst_case": ".evaluation",
    "table_iv": ".evaluation", "format_table": ".evaluation",
    "worst_case": ".worst_case", "make_ensemble": ".worst_case",
    # your own model: its factory and weights, your data, the checks
    "load_own_model": ".own_model", "dataset_from_arrays": ".own_model",
    "check_own_model": ".own_model", "load_data": ".own_model",
    # diagnostics
    "moving_target": ".diagnostics", "diagnose": ".diagnostics",
    "diagnose_checkpoint": ".diagnostics", "DiagnoseSettings": ".diagnostics",
    "logit_error_experiment": ".diagnostics", "perturbation_experiment": ".diagnostics",
    # reproduction
    "ReproduceSettings": ".reproduce", "ReportSettings": ".report",
    "AlternativesSettings": ".bn_fixes",
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
