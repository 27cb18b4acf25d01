"""Names every layer shares, defined once, as plain data that imports nothing: the figures,
the background-run controller (``jobs``) and the app read them without loading torch.
Words: docs/vocabulary.md."""
from __future__ import annotations

from typing import Dict, Tuple

# ---------------------------------------------------------------- the files of a run folder
#: the checkpoint: weights (safetensors) and the metadata beside them (``checkpoints``)
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
#: the resume state's commit point: it names its ``state-<hash>.safetensors`` file
STATE_NAME = "state.json"
#: the run's log, one JSON object per line
METRICS_NAME = "metrics.jsonl"

# ---------------------------------------------------------------- evaluation
#: the ``attack`` of an ensemble's row that gives the worst case per sample (``evaluation``)
WORST = "worst_case"
#: Table IV's inference ratios adv:clean (the paper's columns; ``grid``, the Ratios figure)
INFERENCE_RATIOS: Tuple[str, ...] = ("1:0", "1:1", "1:3", "1:9", "1:19", "1:49")

# ---------------------------------------------------------------- training
#: the shaping modes (``config.SHAPING_MODES``) in words: the paper's three training modes
SHAPING_LABELS: Dict[str, str] = {"none": "adv only", "train": "shaping in training",
                                  "attack+train": "shaping in attack+training"}
