"""A training run's folder and its life cycle, apart from the loop that trains.

Checked before the first step (a finished checkpoint is never overwritten; an interrupted
run needs ``resume``; a run stopped early keeps its state; stale ``.tmp`` files of killed
writes and orphan states are removed), resumed from (the saved state loaded into the
trainer, the metrics log cut back to the saved step), written while training (one line of
``metrics.jsonl`` per step and epoch, the resumable state at every epoch end) and at the end
(the final checkpoint, then the resume state removed, ``state.json`` first). Under torchrun
rank 0 writes and every rank reads; ``trainer.Trainer`` calls it and owns the folder's lock.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import distributed
from ..base.faults import FAULT_ENV, fault_point
from ..settings.config import ConfigError


class RunFolder:
    """The folder ``path`` of one run, as seen by ``dist`` (the rank's ``DistContext``)."""

    def __init__(self, path: Path, dist):
        from .checkpoints import METRICS_NAME

        self.path = Path(path)
        self.dist = dist
        self.metrics_path = self.path / METRICS_NAME
        self.rank_log: Optional[Path] = None  # under torchrun: this rank's rank{r}.jsonl

    # ------------------------------------------------------------------ before the first step
    def open(self, trainer, resume: bool, lock=None) -> None:
        """The folder made and checked (or resumed from: ``trainer`` gets the saved state and
        the metrics logged up to it), the lock's holder written, the rank logs prepared."""
        from .checkpoints import STATE_NAME, load_training_state

        self.path.mkdir(parents=True, exist_ok=True)
        fault_point("lock.acquired", 1)
        self.check(resume)
        if lock is not None:
            lock.announce()
        resumed = resume and (self.path / STATE_NAME).exists()
        self.dist.same_on_all_ranks(resumed, f"not every rank sees the saved state in "
                                    f"{self.path}: put --out on a filesystem all nodes share")
        if resumed:
            load_training_state(self.path, trainer)  # every rank loads the same state
            # the running statistics the first resumed step's drift is measured from: those
            # the saved epoch ended with, as in a run never interrupted
            trainer._prev_running = trainer._running_snapshot()
            kept = self.truncate_metrics(trainer.step)
            if kept is not None:
                trainer.history = kept
        elif self.metrics_path.exists() and self.dist.is_main:
            self.metrics_path.unlink()
        # under torchrun: rank{r}.jsonl, each rank's own shaped-batch composition per step
        self.rank_log = distributed.prepare_rank_logs(self.path, self.dist,
                                                      trainer.step if resumed else None)

    def check(self, resume: bool) -> None:
        """Refuse a finished checkpoint, a stopped or interrupted run without ``resume``;
        remove what killed writes left."""
        from .checkpoints import (META_NAME, STATE_NAME, WEIGHTS_NAME, remove_orphan_states,
                                  remove_stale_files, saved_state_summary, state_files)

        run_dir = self.path
        if self.dist.is_main:
            remove_stale_files(run_dir)
        stopped = stopped_record(run_dir / META_NAME)
        if stopped is not None and saved_state_summary(run_dir) is not None:
            if not resume:  # the checkpoint of a run stopped at epoch k, with its state
                raise ConfigError(f"{run_dir} holds a run stopped at epoch "
                                  f"{stopped.get('epoch')}/{stopped.get('epochs')}; continue "
                                  f"it with --resume, or choose another --name or --out")
        elif (run_dir / META_NAME).exists():
            if self.dist.is_main:  # a kill after the final commit left the resume state
                for leftover in [run_dir / STATE_NAME] + state_files(run_dir):
                    leftover.unlink(missing_ok=True)
            raise ConfigError(f"{run_dir} already holds a finished checkpoint "
                              f"({run_dir / WEIGHTS_NAME}), left as it is; "
                              + ("--resume continues only an interrupted run; " if resume else "")
                              + "to train a new run choose another --name or --out")
        saved = saved_state_summary(run_dir)
        if saved is not None and not resume:
            raise ConfigError(f"{run_dir} holds an interrupted run (saved at epoch "
                              f"{saved.get('epoch')}); continue it with --resume, or choose "
                              f"another --name or --out for a new run")
        if self.dist.is_main:
            remove_orphan_states(run_dir)

    def truncate_metrics(self, step: int) -> Optional[List[Dict[str, Any]]]:
        """After a resume, drop log lines of the steps that will be redone; the lines kept
        (None: no log)."""
        if not self.metrics_path.exists():
            return None
        from .checkpoints import atomic_write_bytes, read_jsonl

        kept = read_jsonl(self.metrics_path, max_step=step)
        if self.dist.is_main:  # every rank keeps the history; rank 0 rewrites the file, atomically
            atomic_write_bytes(self.metrics_path,
                               "".join(json.dumps(r) + "\n" for r in kept).encode(),
                               fault=("metrics.truncate", 1))
        return kept

    # ------------------------------------------------------------------ while training
    def append_metrics(self, m: Dict[str, Any], ordinal: int) -> None:
        """One line of the metrics log (rank 0); ``ordinal``: the line's number in the run's
        history, the fault-injection point's count."""
        if not self.dist.is_main:
            return
        line = json.dumps(m) + "\n"
        with open(self.metrics_path, "a") as f:
            if os.environ.get(FAULT_ENV):  # fault injection: die with half a line written
                f.write(line[:len(line) // 2])
                f.flush()
                fault_point("metrics.line", ordinal)
                line = line[len(line) // 2:]
            f.write(line)

    def save_state(self, trainer) -> None:
        """The resumable state at an epoch's end (finite weights only)."""
        from .checkpoints import save_training_state

        trainer._check_finite_weights()
        if self.dist.is_main:
            save_training_state(self.path, trainer)
        self.dist.barrier()

    # ------------------------------------------------------------------ at the end
    def write_final(self, trainer, final: Dict[str, Any]) -> Path:
        """The final checkpoint (finite weights only), then the resume state removed; returns
        the weights' path."""
        from .checkpoints import STATE_NAME, WEIGHTS_NAME, save_checkpoint, state_files

        trainer._check_finite_weights()
        if self.dist.is_main:
            save_checkpoint(self.path, trainer.model, trainer.checkpoint_meta(final))
        self.dist.barrier()
        if self.dist.is_main:  # the resume state: done with it (state.json first, so a
            (self.path / STATE_NAME).unlink(missing_ok=True)  # kill never leaves it
            fault_point("final.cleanup", 1)  # naming a missing file)
            for leftover in state_files(self.path):
                leftover.unlink(missing_ok=True)
        return self.path / WEIGHTS_NAME


def stopped_record(meta_path: Path) -> Optional[Dict[str, Any]]:
    """The ``stopped`` record of a checkpoint kept by a stopped background run
    (``normshape_app.jobs``), or None (no checkpoint, a finished one, or metadata that cannot
    be read: treated as finished, so never overwritten)."""
    from ..base.files import MAX_META_BYTES, read_json_or_none

    meta = read_json_or_none(meta_path, MAX_META_BYTES)
    stopped = meta.get("stopped") if isinstance(meta, dict) else None
    return stopped if isinstance(stopped, dict) else None
