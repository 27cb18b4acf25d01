"""Data parallelism with PyTorch's own launcher: ``torchrun`` + DistributedDataParallel.

    torchrun --nproc_per_node=4 -m normshape_core train --preset cifar10-paper

Every process (rank) joins the process group that torchrun describes in its environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...): NCCL on GPUs, gloo on CPU.
Without those variables (or with ``WORLD_SIZE=1``) nothing here does anything and training
is the plain single-process loop. Launch recipes: ``docs/distributed.md``.

Norm shaping under data parallelism
- ``batch_size`` is the **global** batch B. Each of the W ranks trains on B/W samples: a
  contiguous slice of each global batch of the one seeded permutation a single-process run
  draws. The global batches are therefore exactly those of a single-process run, and a run
  can resume on another number of ranks and keep its data order.
- Every rank's local batch is itself a **shaped batch** with the exact ratio adv:clean
  (n clean parts, one adversarial part of B/(W(n+1)) samples); B must split that way, else
  ``ConfigError``. Without SyncBatchNorm every BN statistic (each attack step with frozen BN,
  the training forward) is the rank's own, which is what the method assumes, at batch B/W.
- With ``sync_bn`` the statistics are those of the global batch of B samples. It has the
  exact ratio too (a union of W batches that each have it), but it is no longer a contiguous
  n-clean-parts-then-one-adversarial-part batch, and the attack steps synchronise as well:
  a W-rank run then computes what one process computes on the global batch (tested).
- PN: without sync_bn each rank's running statistics follow its own batches. They are
  averaged over ranks before every evaluation and every save; running statistics are
  exponential moving averages (linear), so this equals the moving average of the
  rank-averaged batch statistics, whenever it is done. DDP's ``broadcast_buffers`` (which
  would copy rank 0's statistics over the others' before each training forward, keeping only
  1/W of the information) is off.
- Attack forwards run on the bare module (no DDP): they need no gradient sync, and
  ``norm_mode`` scopes frozen BN on the module itself.

Evaluation across ranks: ``map_sharded`` gives each rank a contiguous shard of the test set
and gathers per-sample results in order on every rank; ``map_jobs`` spreads independent jobs
(cells of the Table IV grid, checkpoints) over ranks. See ``docs/distributed.md``.
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..settings.config import ConfigError, Ratio, parse_device

BACKENDS = ("auto", "nccl", "gloo")


# ====================================================================== the rank's context
@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, its device and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None  # None: no process group

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must live for collectives (NCCL: the GPU; gloo: any, CPU here)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---------------------------------------------------------------- batches
    def local_batch_size(self, batch_size: int, ratio: Optional[Ratio] = None) -> int:
        """B/W, checked: it must be whole and, when shaping (``ratio`` given), split into
        the ratio's equal parts, so that every rank's shaped batch has the exact ratio."""
        w = self.world_size
        if batch_size % w:
            raise ConfigError(f"batch size {batch_size} (the global batch) does not split over "
                              f"{w} ranks; use a multiple of {w}")
        local = batch_size // w
        if ratio is not None and local % ratio.parts:
            need = w * ratio.parts
            raise ConfigError(f"batch size {batch_size} over {w} ranks gives local batches of "
                              f"{local}, which do not split into the {ratio.parts} equal parts "
                              f"of ratio {ratio}; use a global batch that is a multiple of {need}")
        return local

    def batch_rows(self, global_batch: int) -> Tuple[int, int]:
        """This rank's rows [start, stop) of a global batch: a contiguous slice."""
        local = global_batch // self.world_size
        return self.rank * local, (self.rank + 1) * local

    def rank_generator(self, seed: int, step: int) -> torch.Generator:
        """A CPU generator for this rank and step, derived from (seed, step, rank) alone:
        independent random starts on every rank, and nothing to save for a resume."""
        state = np.random.SeedSequence([seed, step, self.rank]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))

    # ---------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.active:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Sum over ranks (float64, on CPU afterwards); identity on one process."""
        t = torch.as_tensor(values, dtype=torch.float64)
        if self.active:
            t = t.to(self.comm_device)
            dist.all_reduce(t)
            t = t.cpu()
        return t

    def reduce_metrics(self, m: Dict[str, Any]) -> Dict[str, Any]:
        """Per-step training metrics over the global batch: ``train/*`` averaged over ranks
        (equal local batches, so the mean of means is the global mean)."""
        if not self.active:
            return m
        keys = sorted(k for k, v in m.items() if k.startswith("train/") and k != "train/lr"
                      and isinstance(v, (int, float)))
        if not keys:
            return m
        total = self.all_reduce_sum([float(m[k]) for k in keys])
        return {**m, **{k: float(v) / self.world_size for k, v in zip(keys, total)}}

    def same_on_all_ranks(self, value: Any, problem: str) -> None:
        """Raise ``ConfigError(problem)`` on every rank when the ranks' values differ (nodes
        launched with other flags, a run folder that only some nodes see)."""
        if not self.active:
            return
        values: List[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise ConfigError(f"{problem} (per rank: {values})")

    def local_main_first(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on each node's local rank 0 first (it may download into a shared folder),
        then on the node's other ranks."""
        if not self.active:
            return fn()
        out = fn() if self.local_rank == 0 else None
        self.barrier()
        return out if self.local_rank == 0 else fn()

    # ---------------------------------------------------------------- model
    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` for the training forward (one rank: the
        model itself). No buffer broadcast before forwards: see the module docstring (PN)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer sync before forwards (newer PyTorch calls it forward_sync_buffers; the
        # buffers are still synced once at construction, where all ranks hold the same).
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                   else {"broadcast_buffers": False})
        return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, **no_sync)

    def average_running_stats(self, model: nn.Module) -> None:
        """Running mean and variance of every BN layer averaged over ranks (PN agrees)."""
        if not self.active:
            return
        bufs = [b for m in model.modules() if isinstance(m, _BatchNorm)
                for b in (m.running_mean, m.running_var) if b is not None]
        if not bufs:
            return
        flat = torch.cat([b.detach().reshape(-1).to(self.comm_device, torch.float64) for b in bufs])
        dist.all_reduce(flat)
        flat /= self.world_size
        i = 0
        with torch.no_grad():
            for b in bufs:
                b.copy_(flat[i:i + b.numel()].view_as(b))
                i += b.numel()


_CONTEXT: Optional[DistContext] = None


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def rank_device(spec: str, local_rank: int) -> torch.device:
    """The device of one rank under torchrun: ``auto``/``cuda`` -> cuda:LOCAL_RANK (or CPU
    without GPUs). A fixed index would put several ranks on one GPU, so it is refused."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if spec == "cuda":
                parse_device("cuda")  # raises the usual "no CUDA GPU" error
            return torch.device("cpu")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ConfigError(f"rank with LOCAL_RANK {local_rank} has no GPU ({n} visible): "
                              f"launch at most {n} processes per node (--nproc_per_node)")
        return torch.device("cuda", local_rank)
    if spec.startswith("cuda:"):
        raise ConfigError(f"--device {spec} under torchrun would put every rank on one GPU; use "
                          f"--device cuda (rank i gets cuda:LOCAL_RANK) and CUDA_VISIBLE_DEVICES")
    raise ConfigError(f"--device {spec} cannot be used for distributed training; use auto, "
                      f"cuda or cpu")


def setup(device: str = "auto", backend: str = "auto") -> DistContext:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (once per process; later calls
    return the same context). Without torchrun: a one-rank context on ``parse_device``."""
    global _CONTEXT
    if backend not in BACKENDS:
        raise ConfigError(f"unknown dist backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=parse_device(device))
    if _CONTEXT is not None and dist.is_initialized():
        return _CONTEXT
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    dev = rank_device(device, local_rank)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError("the nccl backend needs GPUs; use --dist-backend gloo on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=local_rank, device=dev, backend=dist.get_backend())
    return _CONTEXT


def current() -> DistContext:
    """The context of this process: the one ``setup`` made, else one rank on CPU."""
    if _CONTEXT is not None:
        return _CONTEXT
    if dist.is_available() and dist.is_initialized():  # a group someone else started
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           backend=dist.get_backend())
    return DistContext()


def is_main() -> bool:
    """True on rank 0 and without torchrun; usable before the group is joined."""
    if _CONTEXT is not None or (dist.is_available() and dist.is_initialized()):
        return current().is_main
    return env_rank() == 0


def cleanup() -> None:
    """Leave the process group (end of a torchrun command)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


# ====================================================================== SyncBatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' output
    gradients (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU ranks: BatchNorm with the statistics of the global batch.

    PyTorch's ``nn.SyncBatchNorm`` runs on GPUs only (and DDP refuses it in CPU modules), so
    on CPU (gloo; what the tests run) the statistics come from differentiable all-reduces of
    per-channel sums: the same mathematics, exact gradients of the summed loss of all ranks.
    Frozen BN holds (``track_running_stats=False`` in training mode updates nothing); in
    eval mode (PN), or without a process group, it is a plain BatchNorm. Same state dict.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        x = input
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = (1, c) + (1,) * (x.dim() - 2)
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        # Two passes (mean, then centred squares): as accurate as a single-process BN.
        s = all_reduce(torch.cat([x.sum(dims), count]))
        n = s[c].detach()
        mean = s[:c] / n
        var = all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / n
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)), alpha=factor)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer synchronised over ranks: PyTorch's ``nn.SyncBatchNorm`` on GPUs,
    ``AllReduceBatchNorm`` on CPU. Parameters and buffers are shared with the old layers (an
    optimiser built before stays valid) and state-dict keys are unchanged (checkpoints load
    into plain BatchNorm models)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                  AllReduceBatchNorm)):
        out = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_bn(child, device))
    return out


# ====================================================================== evaluation helpers
def shard_bounds(n: int, rank: int = None, world_size: int = None, align: int = 1
                 ) -> Tuple[int, int]:
    """This rank's contiguous shard [start, stop) of n samples, balanced over ranks.

    ``align``: shards start on multiples of it (the evaluation batch size whenever BN
    statistics of a test batch matter: BN-mode or grouped shaped inference), so every
    batch is the one a single process would form."""
    ctx = current()
    rank = ctx.rank if rank is None else rank
    world_size = ctx.world_size if world_size is None else world_size
    chunks = -(-n // align)
    base, extra = divmod(chunks, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return min(start * align, n), min(stop * align, n)


def gather_rows(local: torch.Tensor, n: int, align: int = 1) -> torch.Tensor:
    """Concatenate every rank's shard (``shard_bounds(n, align=align)``) in rank order; the
    full n rows on every rank, on ``local``'s device. One process: ``local`` itself."""
    ctx = current()
    if not ctx.active:
        return local
    sizes = [b - a for a, b in (shard_bounds(n, r, ctx.world_size, align)
                                for r in range(ctx.world_size))]
    if local.shape[0] != sizes[ctx.rank]:
        raise ValueError(f"rank {ctx.rank} gives {local.shape[0]} rows, its shard has "
                         f"{sizes[ctx.rank]}")
    dtype = local.dtype
    t = local.to(ctx.comm_device, torch.uint8 if dtype == torch.bool else dtype)
    pad = max(sizes) - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))])
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    full = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return full.to(local.device, dtype)


def map_sharded(fn: Callable[[int, int], torch.Tensor], n: int, align: int = 1) -> torch.Tensor:
    """Run ``fn(start, stop)`` on this rank's shard of n samples (it returns one row per
    sample: correctness, logits, perturbation norms ...) and gather all rows in order.

    Every rank must call it (it is a collective); ``fn`` itself must not call collectives.
    With per-sample results, any figure (accuracy, per-class counts) is exact, whatever W.
    """
    start, stop = shard_bounds(n, align=align)
    return gather_rows(fn(start, stop), n, align)


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any]) -> List[Any]:
    """Spread independent jobs (Table IV cells, checkpoints to evaluate) round-robin over
    ranks; every rank gets all results, in the order of ``jobs``. ``fn`` runs on one rank
    alone, so it must not call collectives (no ``map_sharded`` inside)."""
    ctx = current()
    mine = [(i, fn(job)) for i, job in enumerate(jobs) if i % ctx.world_size == ctx.rank]
    if not ctx.active:
        return [r for _, r in mine]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    results: Dict[int, Any] = {i: r for part in gathered for i, r in part}
    return [results[i] for i in range(len(jobs))]


# ====================================================================== per-rank log
def rank_log_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"rank{rank}.jsonl"


def prepare_rank_logs(run_dir: Path, ctx: DistContext, resume_step: Optional[int]) -> Optional[Path]:
    """Rank 0 clears old rank logs (a fresh run) or cuts them after ``resume_step`` (a
    resume, as metrics.jsonl); then every rank gets its own log path. One process: None."""
    if not ctx.active:
        return None
    if ctx.is_main:
        for p in sorted(Path(run_dir).glob("rank*.jsonl")):
            if resume_step is None:
                p.unlink()
                continue
            from .checkpoints import read_jsonl

            kept = read_jsonl(p, max_step=resume_step)
            p.write_text("".join(json.dumps(row) + "\n" for row in kept))
    ctx.barrier()
    return rank_log_path(run_dir, ctx.rank)


def append_jsonl(path: Optional[Path], row: Dict[str, Any]) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
