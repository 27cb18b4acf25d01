"""The Playground's core: 2-D models that train a few steps at a time while their decision
regions under PN and under shaped inference are drawn, TensorFlow-Playground style.

Each run is a :class:`~normshape_core.training.trainer.Trainer` whose own loop (``Trainer.fit``, the
same loop as the CLI and the background jobs: same batches, same crafting, same epoch-end
checks) runs in a thread of its own, held by an ``on_step`` callback: the loop waits in that
callback until it is granted more steps (:meth:`LiveRun.advance`). While it waits the model
is still, so a frame (decision regions, adversarial examples, accuracies) is computed on a
quiet model, and the numbers are those of ``fit`` with the same settings, step for step.

While playing, the next frame is made while the current one is shown: :meth:`Playground.begin`
grants the steps together with the frame to compute after them, both done in each run's own
thread (the two runs in parallel, one per core), and :meth:`Playground.finish` collects them;
:meth:`Playground.play` is that loop's one step.
The robust accuracies on the test points (the costly part of a frame) are measured every
``ACCURACY_EVERY`` frames while playing, and on every frame asked for while paused.

Everything is per object: a :class:`Playground` holds its data, its runs and its frames; two
sessions never share one. A run's thread ends on :meth:`LiveRun.close` (the app closes a
session's playground when the session ends) or, as a last resort, after ``idle_timeout``
seconds without a request. :class:`Slots` caps how many playgrounds a server runs at once. Only the model's weight
initialisation, which reads torch's global random generator, is done under a lock, so two
sessions building runs at once still get seeded, reproducible weights.

This module never imports Streamlit.
"""
from __future__ import annotations

import functools
import hashlib
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from normshape_core.measuring import projections as P
from normshape_core.attacks import pgd_linf
from normshape_core.settings.config import (METHODS, SHAPING_MODES, ConfigError, Ratio,
                                            TrainConfig)  # noqa: F401
from normshape_core.blocks.data import DATASETS_2D, Dataset, load_dataset
from normshape_core.inference.shaping import PNClassifier, make_reference_pool
from normshape_core.training.trainer import StopTraining, Trainer

SHAPINGS = SHAPING_MODES  # the Playground page's name for config.SHAPING_MODES
#: the MLP's norm layers a run can have: BN, dual BN (a clean and an adversarial set; the
#: regions are drawn with its adversarial set), LayerNorm (no batch statistics)
PLAYGROUND_NORMS = ("bn", "dual_bn", "ln")
PLAYGROUND_NORM_LABELS = {"bn": "BN", "dual_bn": "dual BN [adv norms]",
                          "ln": "LayerNorm (no batch statistics)"}
INFER_RATIOS = ("1:1", "1:3", "1:9", "1:19")
GRID = 80  # decision regions on a GRID x GRID grid over the unit square (80: 25% less time
#            per frame than 100 on two CPU cores; a step of 0.0125 input units)
N_BOXES = 6  # training points shown with their eps-box and current adversarial example
N_EVAL = 100  # test points of the per-frame clean / robust accuracies
EVAL_STEPS = 10  # PGD steps of the per-frame robust accuracy
EPOCHS = 100_000  # a playground run has no end; the trainer needs a length (constant lr)
ACCURACY_EVERY = 4  # while playing, the test accuracies (clean and PGD) every this many frames

# Weight initialisation reads torch's global generator (seeded by Trainer just before): one
# run at a time builds its model, so concurrent sessions still get their seeded weights.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class PlaySettings:
    """Data and model settings shared by the runs; changing any of them resets the runs."""

    dataset: str = "moons"
    noise: float = 0.1
    n_samples: int = 400
    seed: int = 0
    width: int = 64
    depth: int = 3
    lr: float = 0.01
    batch_size: int = 32
    eps: float = 0.1
    attack_steps: int = 5

    def check(self) -> None:
        if self.dataset not in DATASETS_2D:
            raise ConfigError(f"unknown 2-D set {self.dataset!r}; choose one of: "
                              f"{', '.join(DATASETS_2D)}")
        if not (0 <= self.noise <= 1):
            raise ConfigError(f"noise must be in [0, 1], got {self.noise}")
        if not (50 <= self.n_samples <= 5000):
            raise ConfigError(f"sample count must be in [50, 5000], got {self.n_samples}")
        if not (1 <= self.width <= 512) or not (1 <= self.depth <= 8):
            raise ConfigError(f"MLP width must be in [1, 512] and depth in [1, 8], got "
                              f"{self.width} x {self.depth}")
        if self.batch_size > self.n_samples:
            raise ConfigError(f"batch size {self.batch_size} is larger than the "
                              f"{self.n_samples} training samples")


@dataclass(frozen=True)
class RunSpec:
    """What one side trains: method, shaping mode, training ratio adv:clean and norm layers
    (dual BN trains without shaping: its clean rows go through a set of their own)."""

    method: str = "pgd"
    shaping: str = "none"
    ratio: str = "1:3"
    norm: str = "bn"

    def label(self) -> str:
        norms = f", {PLAYGROUND_NORM_LABELS[self.norm]}" if self.norm != "bn" else ""
        if self.method == "natural":
            return "natural training" + norms
        if self.norm == "dual_bn":
            return f"{self.method.upper()}-AT, clean + adv" + norms
        if self.shaping == "none":
            return f"plain {self.method.upper()}-AT (adv only)" + norms
        where = "attack+train" if self.shaping == "attack+train" else "train only"
        return f"{self.method.upper()} + shaping {self.ratio} ({where})" + norms

    def training_batches(self) -> str:
        """What the batches that set the running statistics (PN) hold, in words."""
        if self.method == "natural":
            return "all clean"
        if self.shaping == "none":
            return "all adversarial"
        r = Ratio.parse(self.ratio)
        return f"{r.adv} adversarial : {r.clean} clean"


DEFAULT_SPECS = (RunSpec("pgd", "none", "1:3"), RunSpec("pgd", "attack+train", "1:3"))


def make_data(s: PlaySettings) -> Dataset:
    """The 2-D set: ``n_samples`` training points and half as many test points."""
    s.check()
    return load_dataset(s.dataset, n_train=s.n_samples, n_test=max(N_EVAL, s.n_samples // 2),
                        noise=s.noise, seed=s.seed)


def make_config(s: PlaySettings, r: RunSpec) -> TrainConfig:
    """The run's training settings (validated; ConfigError with one line otherwise)."""
    natural = r.method == "natural"
    dual = r.norm == "dual_bn"
    if dual and natural:
        raise ConfigError("dual BN routes adversarial rows through their own set: choose pgd "
                          "or trades")
    cfg = TrainConfig(dataset=s.dataset, model="mlp", model_width=s.width, model_depth=s.depth,
                      norm=r.norm, method=r.method,
                      shaping="none" if natural or dual else r.shaping,
                      ratio=r.ratio, eps=s.eps, step_size=s.eps / 4, steps=s.attack_steps,
                      batch_size=s.batch_size, epochs=EPOCHS, optimizer="adam", lr=s.lr,
                      weight_decay=0.0, lr_schedule="constant", eval_samples=N_EVAL,
                      seed=s.seed, device="cpu")
    return cfg.resolved()


# ====================================================================== one live run
class LiveRun:
    """One trainer whose ``fit`` loop runs in its own thread, a granted number of steps at a
    time (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, data: Dataset, *, idle_timeout: float = 600.0):
        with _BUILD_LOCK:
            self.trainer = Trainer(cfg, data)
        self.cfg = self.trainer.cfg
        self.idle_timeout = idle_timeout
        self._cv = threading.Condition()
        self._granted = 0
        self._closed = False
        self._ended = False
        self._job: Optional[Callable[[], Any]] = None  # run in this thread after the steps
        self._result: Any = None
        self.error: Optional[str] = None
        self.last_step: Dict[str, Any] = {}  # the trainer's metrics of its last step
        self.epoch_checks: List[Dict[str, Any]] = []  # fit's end-of-epoch checks (PN)
        self.trainer.add_callback("on_step", self._gate)
        self.trainer.add_callback("on_epoch_end", lambda t, e: self.epoch_checks.append(e))
        self._thread: Optional[threading.Thread] = None

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def epoch(self) -> float:
        """Fractional epochs done (steps / steps per epoch)."""
        return self.trainer.step / self.trainer.steps_per_epoch

    def _gate(self, trainer: Trainer, m: Dict[str, Any]) -> None:
        self.last_step = m
        with self._cv:
            job = self._job if trainer.step >= self._granted else None
        if job is not None:  # the granted steps are done: the model is still, make the frame
            try:
                result = job()
            except Exception as e:  # noqa: BLE001 - reported by wait()
                result = None
                self.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            with self._cv:
                self._result, self._job = result, None
        with self._cv:
            self._cv.notify_all()
            while trainer.step >= self._granted and not self._closed:
                if not self._cv.wait(timeout=self.idle_timeout):
                    self._closed = True  # nobody asked for a step for a long time
            if self._closed:
                raise StopTraining()

    def _main(self) -> None:
        # One intra-op thread in this thread only (OpenMP's setting is per calling thread):
        # the tensors are tiny, and two runs each forking an OpenMP team onto the same two
        # cores made 5 PGD-AT steps of the 3 x 64 MLP take 62 ms instead of 9 ms.
        torch.set_num_threads(1)
        name_thread("playground-run")
        try:
            self.trainer.fit(None)
        except BaseException as e:  # noqa: BLE001 - reported by advance()
            self.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        finally:
            with self._cv:
                self._ended = True
                self._cv.notify_all()

    def grant(self, n: int, then: Optional[Callable[[], Any]] = None) -> None:
        """Allow ``n`` more steps (returns at once); ``then()`` runs in this run's thread once
        they are done, on the still model, and :meth:`wait` returns its result."""
        if n < 1:
            raise ValueError("grant at least one step")
        with self._cv:
            if self._closed or self._ended:
                raise RuntimeError(self.error or "this run is closed; reset it")
            if self._job is not None:
                raise RuntimeError("the previous steps of this run are still being made")
            self._granted = max(self._granted, self.trainer.step) + int(n)
            self._job, self._result = then, None
            self._cv.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, daemon=True,
                                            name=f"playground-{id(self):x}")
            self._thread.start()

    def wait(self, timeout: float = 120.0) -> Any:
        """Block until the granted steps (and the job given with them) are done; the model is
        then still. Returns the job's result (None without a job)."""
        end = time.monotonic() + timeout
        with self._cv:
            while ((self.trainer.step < self._granted or self._job is not None)
                   and not self._ended):
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the run did not finish its steps in time")
                self._cv.wait(timeout=left)
            result, self._result = self._result, None
            self._job = None
        if self.error:
            raise RuntimeError(self.error)
        return result

    def advance(self, n: int, timeout: float = 120.0) -> None:
        self.grant(n)
        self.wait(timeout)

    def close(self, wait: bool = True) -> None:
        """End the run's thread: at once if it waits for steps, else after the step or frame
        it is making (``wait``: until then; False returns at once, as from a server's event
        loop when a session ends)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    @property
    def closed(self) -> bool:
        with self._cv:
            return self._closed or self._ended

    @property
    def alive(self) -> bool:
        """The run's thread is running (False before the first grant and after it ended)."""
        return self._thread is not None and self._thread.is_alive()


# ====================================================================== frames
@dataclass
class Frame:
    """What one run looks like now: decision regions under PN and under shaped inference
    (one fixed draw of references), eps-boxes with their adversarial examples, accuracies."""

    step: int
    epoch: float
    infer_ratio: str
    eps: float
    grid_x: np.ndarray
    grid_y: np.ndarray
    prob_pn: np.ndarray  # (GRID, GRID) P(class 1) under PN
    prob_shaped: np.ndarray  # (GRID, GRID) P(class 1) under shaped inference
    box_x: np.ndarray  # (N_BOXES, 2) training points with eps-boxes
    box_y: np.ndarray
    adv_pn: np.ndarray  # their PGD examples crafted against PN
    adv_shaped: np.ndarray  # ... crafted against shaped inference (the exact references)
    adv_pn_right: np.ndarray
    adv_shaped_right: np.ndarray
    metrics: Dict[str, float] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    has_accuracies: bool = True  # the test-set accuracies measured (see ``ACCURACY_EVERY``)

    def digest(self) -> str:
        """A short fingerprint of both boundaries (class maps), to tell frames apart."""
        h = hashlib.sha1((self.prob_pn > 0.5).tobytes() + (self.prob_shaped > 0.5).tobytes())
        return h.hexdigest()[:8]

    def disagreement(self) -> "Disagreement":
        """Where and by how much PN and shaped inference classify the plane differently."""
        pn, sh = self.prob_pn > 0.5, self.prob_shaped > 0.5
        diff = pn != sh
        xx, yy = np.meshgrid(np.asarray(self.grid_x), np.asarray(self.grid_y))
        where = (float(xx[diff].mean()), float(yy[diff].mean())) if diff.any() else None
        return Disagreement(share=float(diff.mean()), to_class1=float((sh & ~pn).mean()),
                            to_class0=float((pn & ~sh).mean()), centre=where)


@dataclass(frozen=True)
class Disagreement:
    """The plane (the unit square, on the frame's grid) classified differently by PN and by
    shaped inference: ``share`` in all, ``to_class1`` where shaped inference says class 1
    and PN class 0, ``to_class0`` the reverse, ``centre`` the mean position of those cells
    (None when they agree everywhere)."""

    share: float
    to_class1: float
    to_class0: float
    centre: Optional[Tuple[float, float]]


METRIC_LABELS = {
    "loss": "training loss (of the trained batch)",
    "clean_pn": "clean accuracy, PN",
    "clean_shaped": "clean accuracy, shaped inference",
    "robust_pn": "robust accuracy, PGD crafted and classified with PN",
    "robust_shaped": "robust accuracy, PGD crafted and classified with shaped inference",
    "drift": "running-mean drift (PN), relative change per step",
}


def compute_frame(run: LiveRun, grid: P.Grid2D, pool: torch.Tensor, box_idx: torch.Tensor,
                  infer_ratio: str, seed: int, accuracies: bool = True) -> Frame:
    """The frame of ``run`` now (call while it waits, i.e. after :meth:`LiveRun.wait`, or in
    its own thread as the job of :meth:`LiveRun.grant`). Without ``accuracies`` the test-set
    numbers (clean and PGD on ``N_EVAL`` points) are left out: the metrics then hold the
    training loss and the drift only."""
    t = run.trainer
    model, data, cfg = t.model, t.data, t.cfg
    times: Dict[str, float] = {}
    t0 = time.perf_counter()
    pn = PNClassifier(model)
    shaped = P.BatchMemberClassifier(model, P.fixed_references(pool, infer_ratio, seed=seed),
                                     crafting_label="BN (exact refs)")
    pts = grid.points
    with torch.no_grad():
        p_pn = torch.softmax(pn(pts), 1)[:, 1].reshape(len(grid.ys), len(grid.xs)).numpy()
        p_sh = torch.softmax(shaped(pts), 1)[:, 1].reshape(len(grid.ys), len(grid.xs)).numpy()
    times["regions_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    eps = float(cfg.eps or 0.1)
    x_box, y_box = data.x_train[box_idx], data.y_train[box_idx]
    x_ev, y_ev = data.x_test[:N_EVAL], data.y_test[:N_EVAL]
    x_all, y_all = (torch.cat([x_box, x_ev]), torch.cat([y_box, y_ev])) if accuracies \
        else (x_box, y_box)
    kw = dict(eps=eps, step_size=eps / 4, steps=EVAL_STEPS, random_start=True)
    adv_pn = pgd_linf(pn, x_all, y_all, generator=torch.Generator().manual_seed(seed + 7), **kw)
    adv_sh = pgd_linf(shaped, x_all, y_all, generator=torch.Generator().manual_seed(seed + 7),
                      **kw)
    k = len(x_box)
    m = run.last_step
    metrics = {"loss": float(m.get("train/loss", float("nan"))),
               "drift": float(m.get("bn/running_mean_drift", float("nan")))}
    with torch.no_grad():
        right_pn = pn(adv_pn).argmax(1) == y_all
        right_sh = shaped(adv_sh).argmax(1) == y_all
        if accuracies:
            metrics.update(clean_pn=float((pn(x_ev).argmax(1) == y_ev).float().mean()),
                           clean_shaped=float((shaped(x_ev).argmax(1) == y_ev).float().mean()),
                           robust_pn=float(right_pn[k:].float().mean()),
                           robust_shaped=float(right_sh[k:].float().mean()))
    times["attacks_s"] = time.perf_counter() - t1
    return Frame(run.step, run.epoch, infer_ratio, eps, grid.xs, grid.ys, p_pn, p_sh,
                 x_box.numpy(), y_box.numpy(), adv_pn[:k].numpy(), adv_sh[:k].numpy(),
                 right_pn[:k].numpy(), right_sh[:k].numpy(), metrics, times, accuracies)


# ====================================================================== memory
def release_memory() -> bool:
    """Collect garbage and return the C heap's free memory to the system (glibc's
    ``malloc_trim``: each thread that allocated keeps an arena of its own, which glibc does
    not shrink by itself, so a server that ran playgrounds would keep their peak forever).
    True if trimmed (Linux with glibc), False elsewhere."""
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def name_thread(name: str) -> None:
    """Give the calling thread ``name`` (15 characters) at the system level too (``ps -L``,
    ``/proc/<pid>/task/*/comm``), where Python's own name does not show (Linux only)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _release_after(threads: Sequence[threading.Thread], timeout: float = 60.0) -> None:
    name_thread("playground-free")
    for t in threads:
        t.join(timeout=timeout)
    release_memory()


# ====================================================================== the server's cap
class Full(RuntimeError):
    """Every slot is taken (the message says how many and what frees one)."""


class Slots:
    """At most ``cap`` live things at once (playgrounds, background jobs) in one process:
    ``acquire`` takes a slot or raises :class:`Full` (taking a slot held already is a no-op),
    ``release`` gives it back (twice is harmless). Thread-safe; the app keeps one per kind
    (``st.cache_resource``). A playground holds one from its first training frame (when its
    runs' threads start) until it is closed; one that only shows its first frame holds
    none."""

    def __init__(self, cap: int, what: str = "playgrounds"):
        if cap < 1:
            raise ValueError(f"a cap of at least 1, got {cap}")
        self.cap, self.what = int(cap), what
        self._held: set = set()
        self._lock = threading.Lock()

    def acquire(self, token: Any) -> None:
        with self._lock:
            if token in self._held:
                return
            if len(self._held) >= self.cap:
                raise Full(f"this server runs at most {self.cap} {self.what} at once and all "
                           f"are in use by other sessions")
            self._held.add(token)

    def release(self, token: Any) -> None:
        with self._lock:
            self._held.discard(token)

    def holders(self) -> List[Any]:
        with self._lock:
            return list(self._held)

    def holds(self, token: Any) -> bool:
        with self._lock:
            return token in self._held

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._held)


# ====================================================================== the playground
class Playground:
    """Runs side by side on the same data and seed, advanced together, one frame at a time.

    ``frame`` counts the frames the runs advanced (play and step add one each; a change of the
    inference ratio redraws without training, so it adds none)."""

    def __init__(self, settings: PlaySettings, specs: Sequence[RunSpec] = DEFAULT_SPECS, *,
                 idle_timeout: float = 600.0, slots: Optional[Slots] = None):
        self.settings = settings
        self.specs = tuple(specs)
        self.uid = uuid.uuid4().hex  # this playground among all (id() is reused after GC)
        self.configs = [make_config(settings, r) for r in self.specs]  # validate all first
        self._slots = slots  # taken by the first frame that trains (the runs' threads)
        self.data = make_data(settings)
        self.runs = [LiveRun(c, self.data, idle_timeout=idle_timeout) for c in self.configs]
        self.grid = P.grid_around(None, GRID, bounds=(0.0, 1.0, 0.0, 1.0))
        self.pool = make_reference_pool(self.data, 1000, seed=settings.seed)
        g = torch.Generator().manual_seed(settings.seed + 3)
        self.box_idx = torch.randperm(len(self.data.x_train), generator=g)[:N_BOXES]
        self.frame = 0
        self.history: List[List[Dict[str, float]]] = [[] for _ in self.runs]
        self._frames: Dict[Tuple[int, int, str], Frame] = {}
        self._pending = False
        self._closing = False
        self.last_play = float("-inf")  # when play() last began a frame (monotonic)
        self._last_played: Optional[Tuple[str, List[Frame]]] = None
        # One caller at a time: a web app may run two script runs of one session at once
        # (a timed refresh and a click), and a frame patches the model's BN layers while it
        # classifies (per-group statistics), so two frames at once would see each other's.
        self.lock = threading.RLock()

    @property
    def steps_per_epoch(self) -> int:
        return self.runs[0].trainer.steps_per_epoch

    def key(self) -> Tuple[Any, ...]:
        return (asdict(self.settings), tuple(asdict(r).values() for r in self.specs))

    def begin(self, steps: int, infer_ratio: Optional[str] = None) -> None:
        """Start the next frame and return at once: every run trains ``steps`` more steps in
        its own thread and then, if ``infer_ratio`` is given, computes its frame there (with
        the test accuracies every ``ACCURACY_EVERY`` frames). :meth:`finish` collects it; a
        frame begun is never lost (:meth:`frames` and :meth:`advance` finish it first)."""
        if infer_ratio is not None:
            Ratio.parse(infer_ratio, allow_zero_clean=False)
        with self.lock:
            self.finish()
            if self._slots is not None:  # Full if the server runs its most playgrounds
                self._slots.acquire(self)
                if self._closing:  # closed meanwhile (a session that ended mid-frame)
                    self._slots.release(self)
            if self._closing:
                raise RuntimeError("this playground is closed; reset it")
            acc = (self.frame + 1) % ACCURACY_EVERY == 0
            for r in self.runs:
                job = None if infer_ratio is None else functools.partial(
                    compute_frame, r, self.grid, self.pool, self.box_idx, infer_ratio,
                    self.settings.seed, acc)
                r.grant(steps, job)
            self._pending = True

    def finish(self) -> bool:
        """Wait for the frame begun (if any) and count it; True if there was one."""
        with self.lock:
            if not self._pending:
                return False
            try:
                for i, r in enumerate(self.runs):
                    f = r.wait()
                    if f is not None:
                        self._store(i, r, f)
            finally:
                self._pending = False
            self.frame += 1
            return True

    @property
    def pending(self) -> bool:
        """A frame is being made (begun, not yet finished)."""
        return self._pending

    def play(self, steps: int, infer_ratio: str, min_interval: float = 0.0) -> List[Frame]:
        """One frame while playing: the frame made meanwhile (made now if none was begun, as
        on the first frame after Play), test accuracies only where they were measured; the
        next frame (``steps`` more steps) is begun before this returns, unless the last one
        was begun less than ``min_interval`` seconds ago (then the same frame again: a server
        running several playgrounds shares its cores out this way)."""
        with self.lock:
            now, last = time.monotonic(), self._last_played
            if (self._pending and last is not None and last[0] == infer_ratio
                    and now - self.last_play < min_interval):
                return last[1]
            if not self._pending:
                self.begin(steps, infer_ratio)
            frames = self.frames(infer_ratio, accuracies=False)
            self.begin(steps, infer_ratio)
            self.last_play = now
            self._last_played = (infer_ratio, frames)
            return frames

    @property
    def playing(self) -> bool:
        """Frames were asked for by :meth:`play` within the last second."""
        return time.monotonic() - self.last_play < 1.0

    def advance(self, steps: int) -> None:
        """Every run trains ``steps`` more steps (in parallel), then the frame counter moves."""
        with self.lock:
            self.begin(steps)
            self.finish()

    def frames(self, infer_ratio: str, accuracies: bool = True) -> List[Frame]:
        """The current frame of every run (cached per step and inference ratio; a frame begun
        is finished first); each new step adds one point to the run's curves. A cached frame
        without the test accuracies is completed unless ``accuracies`` is False."""
        Ratio.parse(infer_ratio, allow_zero_clean=False)
        with self.lock:
            self.finish()
            return self._frames_now(infer_ratio, accuracies)

    def _frames_now(self, infer_ratio: str, accuracies: bool) -> List[Frame]:
        out = []
        for i, r in enumerate(self.runs):
            f = self._frames.get((i, r.step, infer_ratio))
            if f is None or (accuracies and not f.has_accuracies):
                f = compute_frame(r, self.grid, self.pool, self.box_idx, infer_ratio,
                                  self.settings.seed)
                self._store(i, r, f)
            out.append(f)
        return out

    def _store(self, i: int, r: LiveRun, f: Frame) -> None:
        """Cache run ``i``'s frame and put its numbers on the run's curves (one point per
        step; the same step again, e.g. another inference ratio, updates that point)."""
        self._frames = {k: v for k, v in self._frames.items() if k[0] != i}
        self._frames[(i, f.step, f.infer_ratio)] = f
        h = self.history[i]
        if not h or h[-1]["step"] != f.step:
            h.append({"step": f.step, "epoch": f.epoch, **f.metrics})
        else:
            h[-1].update(f.metrics)

    def close(self, wait: bool = True) -> None:
        """End every run's thread and give back the server's slot. Without ``wait`` it
        returns at once (a session that ends: the threads end by themselves within a step,
        then a short-lived thread hands the memory they used back to the system) and does
        not take :attr:`lock`, which a frame being made may hold."""
        self._closing = True  # before the slot is given back: begin() never takes it again
        for r in self.runs:
            r.close(wait=wait)
        if self._slots is not None:
            self._slots.release(self)
        threads = [r._thread for r in self.runs if r._thread is not None]
        if wait:
            release_memory()
        elif threads:
            threading.Thread(target=_release_after, args=(threads,), daemon=True,
                             name="playground-release").start()

    @property
    def threads_alive(self) -> int:
        return sum(r.alive for r in self.runs)

    @property
    def closed(self) -> bool:
        """It, or a run of it, was closed or ended (idle timeout, an error): build anew."""
        return self._closing or any(r.closed for r in self.runs)

    @property
    def holds_slot(self) -> bool:
        """This playground counts against the server's cap (it has trained; until closed)."""
        return self._slots is not None and self._slots.holds(self)
