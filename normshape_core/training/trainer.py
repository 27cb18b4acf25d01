"""The training loop: data, craft, loss, step, callbacks, checkpoint (``Trainer.fit``).

Methods ``natural``, ``pgd`` (Madry PGD-AT), ``trades`` (Zhang et al. 2019) are objectives,
and the shaping modes ``none``, ``train``, ``attack+train`` are crafting rules, each a small
unit in ``objectives.py`` (which says what each does). In every mode the training forward is
the only forward that updates running statistics (unless ``polluted_running_stats``
reproduces the original TensorFlow behaviour).

The loop knows nothing of who watches it: ``trainer.add_callback("on_step", fn)``, nor of
how its folder is checked, resumed and written: ``run_folder.RunFolder``.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import distributed
from ..attacks import pgd_linf
from ..settings.config import MAX_PARAMETERS, ConfigError, Ratio, TrainConfig
from ..settings.config import model_kwargs  # noqa: F401 - moved to config; this import path stays
from ..blocks.data import Dataset, load_dataset
from ..blocks.models import build_model
from ..blocks.norms import (ADV, CLEAN, NormMode, attack_norm_mode, bn_modules, dual_route,
                            has_dual_bn, norm_mode)
from .objectives import OBJECTIVES, CraftedBatch, adaptive_gradient_clip_, crafting_rule
from .run_folder import RunFolder

EVENTS = ("on_step", "on_epoch_end", "on_train_end")




class StopTraining(Exception):
    """Raised by a callback to stop a run cleanly after the current step."""


class TrainingDiverged(ConfigError):
    """The loss (or a weight) is not finite: the run stops, no checkpoint is written."""


def check_model_size(cfg: TrainConfig, input_shape, num_classes: int) -> None:
    """Build the model without memory (meta device) and count its parameters: a model too
    large, or one that cannot be built for the dataset, is a ConfigError before any weight
    is allocated."""
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, tuple(input_shape), num_classes, **model_kwargs(cfg))
    except ConfigError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as e:
        raise ConfigError(f"model {cfg.model} does not fit dataset {cfg.dataset} (inputs "
                          f"{tuple(input_shape)}): {str(e).splitlines()[0][:160]}") from None
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMETERS:
        raise ConfigError(f"model {cfg.model} with width {cfg.model_width} and depth "
                          f"{cfg.model_depth} has {n_params:,} parameters; at most "
                          f"{MAX_PARAMETERS:,}")


def check_model_fits(model: torch.nn.Module, cfg: TrainConfig, input_shape,
                     num_classes: int) -> None:
    """Two zero samples through the built model (PN, no gradient: nothing changes, no random
    number drawn): a model that does not fit the dataset is a ConfigError, not a traceback
    in the first training step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape, device=next(model.parameters()).device))
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        raise ConfigError(f"model {cfg.model} does not fit dataset {cfg.dataset} (inputs "
                          f"{tuple(input_shape)}): {str(e).splitlines()[0][:160]}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model {cfg.model} gives outputs of shape {tuple(out.shape)[1:]} for "
                          f"dataset {cfg.dataset}, not its {num_classes} classes")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "multistep":  # Madry et al.: x0.1 at 50% and 75% (40k / 60k of 80k)
        return 1.0 if progress < 0.5 else (0.1 if progress < 0.75 else 0.01)
    raise ConfigError(f"unknown lr schedule {schedule!r}")


class Trainer:
    """Adversarial training with optional norm shaping. See the module docstring."""

    def __init__(self, cfg: TrainConfig, dataset: Optional[Dataset] = None):
        self.cfg = cfg = cfg.resolved()
        cfg.check_paths()
        # Under torchrun: join the process group; this rank's device (cuda:LOCAL_RANK or cpu).
        self.dist = distributed.setup(cfg.device, cfg.dist_backend)
        self.dist.same_on_all_ranks(cfg.fingerprint(), "the ranks were started with different "
                                    "settings; launch every node with the same command")
        self.device = self.dist.device
        if cfg.max_steps is None and cfg.epochs is None:
            raise ConfigError("set --epochs or --max-steps")
        seed_everything(cfg.seed)
        if dataset is None:
            dataset = self.dist.local_main_first(  # one download per node, not one per rank
                lambda: load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed))
        if dataset.name != cfg.dataset:
            raise ConfigError(f"dataset {dataset.name!r} given for a {cfg.dataset!r} run")
        if cfg.n_train is not None:
            if cfg.n_train > len(dataset.x_train):
                raise ConfigError(f"n-train {cfg.n_train} is larger than the {len(dataset.x_train)}"
                                  f" training samples of {cfg.dataset}")
            dataset = dataset.subset(n_train=cfg.n_train, seed=cfg.seed)
        self.data = dataset
        if cfg.batch_size > len(dataset.x_train):
            raise ConfigError(f"batch size {cfg.batch_size} is larger than the "
                              f"{len(dataset.x_train)} training samples")
        self.ratio = Ratio.parse(cfg.ratio)
        # batch_size is the global batch; each rank's local batch is a shaped batch of its own
        # with the exact ratio (one process: local = global).
        self.local_batch_size = self.dist.local_batch_size(
            cfg.batch_size, self.ratio if cfg.shaping != "none" else None)
        if cfg.shaping != "none":
            self.n_clean, self.n_adv = self.ratio.split(self.local_batch_size)
        else:
            self.n_clean, self.n_adv = 0, self.local_batch_size
        check_model_size(cfg, dataset.input_shape, dataset.num_classes)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, dataset.input_shape, dataset.num_classes,
                                 **model_kwargs(cfg)).to(self.device)
        check_model_fits(self.model, cfg, dataset.input_shape, dataset.num_classes)
        if cfg.sync_bn and self.dist.active:
            self.model = distributed.convert_sync_bn(self.model, self.device)
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                        weight_decay=cfg.weight_decay)
        self.objective = OBJECTIVES[cfg.method]  # natural / pgd / trades
        self.shaping = crafting_rule(cfg)  # none / train / attack+train; dual BN's
        self.g_data = torch.Generator().manual_seed(cfg.seed)
        self.g_attack = torch.Generator().manual_seed(cfg.seed + 1)
        # DDP for the training forward only; attacks and evaluation use the bare module.
        self.train_model = self.dist.wrap(self.model)
        self.last_composition: Tuple[int, int] = (0, 0)  # (n_clean, n_adv) of the last step
        self.steps_per_epoch = len(dataset.x_train) // cfg.batch_size
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.step = 0
        self.epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.callbacks: Dict[str, List[Callable]] = {e: [] for e in EVENTS}
        self._prev_running: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self.folder: Optional[RunFolder] = None  # the run's folder, while fit runs with one

    # ------------------------------------------------------------------ callbacks
    def add_callback(self, event: str, fn: Callable[["Trainer", Dict[str, Any]], None]) -> None:
        if event not in self.callbacks:
            raise ValueError(f"unknown event {event!r}; choose one of {EVENTS}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str, payload: Dict[str, Any]) -> None:
        for fn in self.callbacks[event]:
            fn(self, payload)

    # ------------------------------------------------------------------ crafting
    def craft(self, x: torch.Tensor, y: torch.Tensor) -> CraftedBatch:
        """The batch to train on: the shaping mode's crafting rule with the objective's
        attack, under the attack's norm mode (``objectives.py``)."""
        cfg, objective = self.cfg, self.objective
        if not objective.adversarial:
            return CraftedBatch(x, y, n_clean=len(x))
        generator = self._attack_generator()

        def attack(fn, xs, ys, target_probs):
            return pgd_linf(fn, xs, ys, target_probs=target_probs, eps=cfg.eps,
                            step_size=cfg.step_size, steps=cfg.steps,
                            random_start=cfg.random_start, loss=objective.attack_loss,
                            generator=generator)

        with norm_mode(self.model, attack_norm_mode(cfg.polluted_running_stats)):
            return self.shaping.craft(self.model, x, y, self.n_clean, objective, attack)

    def _attack_generator(self) -> torch.Generator:
        """Random starts of the training attack. Under torchrun each rank draws its own,
        from (seed, step, rank) alone: independent across ranks, nothing to save for resume."""
        if not self.dist.active:
            return self.g_attack
        return self.dist.rank_generator(self.cfg.seed + 1, self.step)

    # ------------------------------------------------------------------ one step
    def loss(self, batch: CraftedBatch, x_clean: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The objective's loss; the forward of ``batch.x`` here is the one that updates PN.
        Dual BN: the first ``batch.n_clean`` rows go through the clean set, the others through
        the adversarial set (no effect on other models)."""
        with norm_mode(self.model, NormMode.BN_UPDATE), dual_route(self.model, batch.n_clean):
            logits = self.train_model(batch.x)  # through DDP under torchrun: gradients sync
        return self.objective.loss(self.model, self.cfg, batch, logits, x_clean), logits

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
        """One optimiser step on the batch (x, y): craft, loss, step; returns its metrics."""
        self._set_lr()
        batch = self.craft(x, y)
        self.last_composition = (batch.n_clean, len(batch.x) - batch.n_clean)
        loss, logits = self.loss(batch, x)
        self._stop_if_diverged(loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.agc_clip is not None:  # every layer but the classifier (Brock et al.)
            adaptive_gradient_clip_([p for n, p in self.model.named_parameters()
                                     if not n.startswith("head.")], self.cfg.agc_clip)
        self.opt.step()
        self.step += 1
        return self._step_metrics(batch, loss, logits)

    def _set_lr(self) -> None:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg.lr_schedule, self.step / max(1, self.total_steps))

    def _stop_if_diverged(self, loss: torch.Tensor) -> None:
        cfg = self.cfg
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.dist.active:  # every rank stops together (one rank alone would hang the rest)
            bad = float(self.dist.all_reduce_sum([float(bad)])[0]) > 0
        if bad:
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1} (epoch {self.epoch + 1}): the loss "
                f"is {float(loss.detach()):g}; lower --lr (now {cfg.lr:g}) or --weight-decay (now "
                f"{cfg.weight_decay:g}); no checkpoint was written")

    def _step_metrics(self, batch: CraftedBatch, loss: torch.Tensor,
                      logits: torch.Tensor) -> Dict[str, Any]:
        with torch.no_grad():
            correct = (logits.argmax(1) == batch.y).float()
            k = batch.n_clean
            m: Dict[str, Any] = {"step": self.step, "epoch": self.epoch,
                                 "train/loss": float(loss), "train/lr": self.opt.param_groups[0]["lr"]}
            if not self.objective.adversarial:
                m["train/clean_acc"] = float(correct.mean())
            else:
                m["train/adv_acc"] = float(correct[k:].mean())
                if k > 0:
                    m["train/clean_acc"] = float(correct[:k].mean())
            m.update(self._running_stats_drift())
        return m

    def _running_snapshot(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        return [(b.running_mean.detach().clone(), b.running_var.detach().clone())
                for b in bn_modules(self.model)]

    def _running_stats_drift(self) -> Dict[str, float]:
        """Relative change of the running mean / variance in this step, averaged over layers."""
        cur = self._running_snapshot()
        out: Dict[str, float] = {}
        if self._prev_running is not None and cur:
            dm = [float((c[0] - p[0]).norm() / (p[0].norm() + 1e-8)) for c, p in zip(cur, self._prev_running)]
            dv = [float((c[1] - p[1]).norm() / (p[1].norm() + 1e-8)) for c, p in zip(cur, self._prev_running)]
            out = {"bn/running_mean_drift": sum(dm) / len(dm),
                   "bn/running_var_drift": sum(dv) / len(dv)}
        self._prev_running = cur
        return out

    # ------------------------------------------------------------------ evaluation
    def quick_eval(self) -> Dict[str, float]:
        """End-of-epoch check on ``eval_samples`` test samples: clean accuracy classified with
        PN, and PGD robust accuracy crafted with PN and classified with PN. Under torchrun
        the samples are split over ranks (a collective: every rank calls it). Dual BN: with
        the adversarial set, and again with the clean set (keys ending in ``_clean_norms``)."""
        if not has_dual_bn(self.model):
            return self._quick_eval()
        with dual_route(self.model, ADV):
            out = self._quick_eval()
        with dual_route(self.model, CLEAN):
            out.update({f"{k}_clean_norms": v for k, v in self._quick_eval().items()})
        return out

    def _quick_eval(self) -> Dict[str, float]:
        cfg, model, data = self.cfg, self.model, self.data
        n = min(cfg.eval_samples, len(data.x_test))
        if n == 0:
            return {}
        lo, hi = distributed.shard_bounds(n)  # under torchrun: this rank's share (PN: exact)
        x = data.x_test[lo:hi].to(self.device)
        y = data.y_test[lo:hi].to(self.device)
        out: Dict[str, float] = {}
        with norm_mode(model, NormMode.PN):
            with torch.no_grad():
                correct = distributed.gather_rows(model(x).argmax(1) == y, n)
                out["test/clean_acc_pn"] = float(correct.float().mean())
            if cfg.method != "natural" or cfg.eps:
                steps = max(cfg.steps, 10)
                g = (self.dist.rank_generator(cfg.seed + 2, 0) if self.dist.active
                     else torch.Generator().manual_seed(cfg.seed + 2))
                x_adv = pgd_linf(model, x, y, eps=cfg.eps, step_size=cfg.eps / 4, steps=steps,
                                 random_start=True, generator=g)
                with torch.no_grad():
                    correct = distributed.gather_rows(model(x_adv).argmax(1) == y, n)
                    out[f"test/robust_acc_pgd{steps}_pn_pn"] = float(correct.float().mean())
        return out

    # ------------------------------------------------------------------ the loop
    def fit(self, out_dir: Optional[str | Path] = None, resume: bool = False,
            progress: bool = False) -> "TrainResult":
        """Train to the end; with ``out_dir``, write metrics.jsonl, a resumable state at every
        epoch end and the final checkpoint. ``resume`` continues from the saved state.

        The run folder is owned for the whole run (``runlock.RunLock``: a second run on it is
        refused). A folder holding a finished checkpoint is refused (resume or not: it is
        never overwritten); one holding an interrupted run needs ``resume``, with the saved
        settings. Stale ``.tmp`` files of killed writes are removed first."""
        from .runlock import RunLock

        folder = RunFolder(Path(out_dir), self.dist) if out_dir is not None else None
        # The holder text is written once the folder passed its checks: a refused run leaves
        # the run.lock of the run it refused as it was.
        lock = (RunLock(folder.path).acquire(announce=False)
                if folder is not None and self.dist.is_main else None)
        try:
            return self._fit(folder, resume, progress, lock)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, folder: Optional[RunFolder], resume: bool, progress: bool,
             lock=None) -> "TrainResult":
        if folder is not None:
            folder.open(self, resume, lock)  # checked, or resumed from
        self.folder = folder
        bar = self._progress_bar(progress)
        t0 = time.time()
        stopped = False
        try:
            while self.step < self.total_steps:
                for x, y, rows in self._epoch_batches():  # data (this rank's rows)
                    m = self.train_step(x, y)  # craft, loss, step
                    self._after_step(m, rows, t0, bar)  # log, on_step
                self._end_epoch(t0, bar)  # eval, state, on_epoch_end
        except StopTraining:
            stopped = True
        finally:
            if bar is not None:
                bar.close()
        return self._finish(stopped, t0)  # final metrics, checkpoint, on_train_end

    def _progress_bar(self, progress: bool):
        if not (progress and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, unit="step",
                    desc=f"{self.cfg.method}/{self.cfg.shaping}", dynamic_ncols=True)

    def _epoch_batches(self):
        """One epoch's batches (a seeded permutation), until the run's last step: (x, y,
        (lo, hi)), this rank's rows lo:hi of the global batch (all of it on one process)."""
        x_all, y_all, bs = self.data.x_train, self.data.y_train, self.cfg.batch_size
        perm = torch.randperm(len(x_all), generator=self.g_data)
        for i in range(self.steps_per_epoch):
            if self.step >= self.total_steps:
                return
            idx = perm[i * bs:(i + 1) * bs]
            lo, hi = self.dist.batch_rows(len(idx))
            idx = idx[lo:hi]
            yield x_all[idx].to(self.device), y_all[idx].to(self.device), (lo, hi)

    def _after_step(self, m: Dict[str, Any], rows, t0: float, bar) -> None:
        lo, hi = rows
        distributed.append_jsonl(self.folder.rank_log if self.folder else None, {
            "step": self.step, "epoch": self.epoch, "rank": self.dist.rank,
            "world_size": self.dist.world_size, "rows": [lo, hi],
            "n_clean": self.last_composition[0], "n_adv": self.last_composition[1],
            "train/loss": m["train/loss"]})
        m = self.dist.reduce_metrics(m)  # metrics of the global batch
        m["time/elapsed_s"] = time.time() - t0
        self._log(m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{m['train/loss']:.3f}",
                            acc=f"{m.get('train/adv_acc', m.get('train/clean_acc', 0)):.2f}")
        self._fire("on_step", m)

    def _end_epoch(self, t0: float, bar) -> None:
        self.epoch += 1
        self.dist.average_running_stats(self.model)  # one PN for all ranks
        e = {"step": self.step, "epoch": self.epoch, "time/elapsed_s": time.time() - t0}
        e.update(self.quick_eval())
        self._log(e)
        if bar is not None:
            bar.write(f"epoch {self.epoch}: " + ", ".join(
                f"{k}={v:.3f}" for k, v in e.items() if k.startswith("test/")))
        if self.folder is not None:
            self.folder.save_state(self)
        self._fire("on_epoch_end", e)

    def _finish(self, stopped: bool, t0: float) -> "TrainResult":
        """The final metrics and (with a run folder, unless stopped) the checkpoint."""
        self.dist.average_running_stats(self.model)
        final = self.history[-1] if self.history and any(
            k.startswith("test/") for k in self.history[-1]) else {**self.quick_eval()}
        final = {k: v for k, v in final.items() if k.startswith("test/")}
        final["train/seconds"] = time.time() - t0
        final["train/steps"] = self.step
        path = (self.folder.write_final(self, final)
                if self.folder is not None and not stopped else None)
        result = TrainResult(self.model, final, path, stopped, self.history)
        self._fire("on_train_end", {"final": final, "checkpoint": str(path) if path else None,
                                    "stopped": stopped})
        return result

    def checkpoint_meta(self, final_metrics: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "run_name": self.cfg.run_name(),
            "dataset": self.cfg.dataset,
            "input_shape": list(self.data.input_shape),
            "num_classes": self.data.num_classes,
            "classes": self.data.classes,
            "n_train": len(self.data.x_train),
            "final_metrics": final_metrics,
            "steps": self.step,
            "epochs": self.epoch,
            "world_size": self.dist.world_size,
        }

    def _check_finite_weights(self) -> None:
        """No state or checkpoint is written with a NaN / inf weight or running statistic."""
        for name, t in self.model.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise TrainingDiverged(
                    f"training diverged by step {self.step}: {name} is not finite; lower --lr "
                    f"(now {self.cfg.lr:g}) or --weight-decay (now {self.cfg.weight_decay:g}); "
                    f"no checkpoint was written")

    def _log(self, m: Dict[str, Any]) -> None:
        self.history.append(m)
        if self.folder is not None:
            self.folder.append_metrics(m, len(self.history))

@dataclass
class TrainResult:
    model: torch.nn.Module
    final_metrics: Dict[str, Any]
    checkpoint: Optional[Path]
    stopped: bool = False
    history: List[Dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, out_dir: Optional[str | Path] = None, *, dataset: Optional[Dataset] = None,
          resume: bool = False, progress: bool = False,
          callbacks: Optional[Dict[str, List[Callable]]] = None) -> TrainResult:
    """Train one run. With ``out_dir``, the run lives in ``out_dir`` (checkpoint, metrics)."""
    trainer = Trainer(cfg, dataset)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    return trainer.fit(out_dir, resume=resume, progress=progress)
