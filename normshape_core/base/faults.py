"""Fault injection for the kill-safety tests: ``NORMSHAPE_FAULT=<point>:<n>[,<point>:<n>...]``
kills the process (SIGKILL, no clean-up of any kind) the ``n``-th time it reaches the write
point ``<point>`` (``n`` is the epoch for the training state, 1 for the final checkpoint,
the line number for ``metrics.jsonl``). Unset, every call is one environment look-up.

The write points are named where they are, in ``training.Trainer.fit`` and
``checkpoints.save_training_state`` / ``save_checkpoint``; ``WRITE_POINTS`` lists them.
The kill drivers that run the CLI and kill it at these points are in
``normshape_core/cli/kill_drivers.py`` (``python -m normshape_core.cli.kill_drivers``): this
module sits at the bottom of the layers, they at the top.
"""
from __future__ import annotations

import os
import signal

FAULT_ENV = "NORMSHAPE_FAULT"

#: every write point of the training state and of the final checkpoint, in write order
WRITE_POINTS = (
    "lock.acquired",          # run folder locked, stale files not yet removed
    "metrics.line",           # half a metrics.jsonl line written (n: the line number)
    "state.tensors.tmp",      # new state tensors in a .tmp file, not yet renamed
    "state.tensors.renamed",  # new tensor file in place, state.json still names the old one
    "state.json.tmp",         # new state.json in a .tmp file, not yet renamed
    "state.json.renamed",     # new state.json committed, old tensor file not yet removed
    "state.cleanup",          # old tensor files removed
    "final.weights.tmp",      # model.safetensors in a .tmp file
    "final.weights.renamed",  # model.safetensors in place, model.json not yet written
    "final.json.tmp",         # model.json in a .tmp file
    "final.json.renamed",     # checkpoint committed, resume state not yet removed
    "final.cleanup",          # state.json removed, its tensor file not yet
    "metrics.truncate.tmp",   # on resume: the rewritten metrics.jsonl in a .tmp file
)


def fault_point(name: str, n: int) -> None:
    """Kill this process here if ``NORMSHAPE_FAULT`` names ``name:n``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        point, _, count = item.strip().rpartition(":")
        if point == name and count == str(n):
            os.kill(os.getpid(), signal.SIGKILL)
