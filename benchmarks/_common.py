"""What every benchmark section shares: the printing (``say``, ``header``, the summary
rows), the results, the device and the machine text, the shipped checkpoints and data, the
child processes (``run.py --child``) and the torchattacks import.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"  # the Streamlit app's main script
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS: Dict[str, Any] = {}
SUMMARY: List[List[str]] = []  # [what, measured, goal, status]
TORCHATTACKS_HINT = ("torchattacks not installed: skipped (install with pip install --no-deps "
                     "torchattacks)")


def say(text: str = "") -> None:
    print(text, flush=True)


def header(title: str) -> None:
    say()
    say("=" * 100)
    say(title)
    say("=" * 100)


def goal_status(value: float, goal: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return "meets goal" if value <= goal else "ABOVE goal"


def summary(what: str, value: float, goal: Optional[float], fmt: str = "{:.2f}",
            note: str = "") -> None:
    SUMMARY.append([what, fmt.format(value) + (f" {note}" if note else ""),
                    "-" if goal is None else f"<= {goal:g}",
                    "-" if goal is None else goal_status(value, goal)])


def pick_device(arg: str) -> torch.device:
    if arg != "auto":
        return torch.device(arg)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def machine_text(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load average %.1f %.1f %.1f" % os.getloadavg()
    dev = device.type
    if device.type == "cuda":
        dev = f"cuda ({torch.cuda.get_device_name(device)})"
    return (f"{cpu}, {os.cpu_count()} CPUs{load}; device {dev}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads; python {platform.python_version()}")


def load_data(name: str):
    from normshape_core.blocks.data import load_dataset

    try:
        return load_dataset(name, download=False)  # never downloads: absent data is skipped
    except Exception as e:  # noqa: BLE001 - a missing dataset is reported, not fatal
        say(f"  {name}: not available here ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None


def shipped_checkpoint(dataset: str, method: str, shaping: str, ratio: Optional[str] = None):
    """A shipped checkpoint of ``checkpoints/`` (the newest fit), or None."""
    from normshape_core.training.checkpoints import find_checkpoints

    found, _ = find_checkpoints(ROOT / "checkpoints")
    fits = []
    for c in found:
        cfg = c.meta.get("config", {})
        if (cfg.get("dataset") == dataset and cfg.get("method") == method
                and (method == "natural" or cfg.get("shaping") == shaping)
                and (ratio is None or cfg.get("ratio") == ratio)
                and not cfg.get("polluted_running_stats")):
            fits.append(c)
    return fits[0] if fits else None


def model_for(dataset: str, method: str, shaping: str, device: torch.device,
              ratio: Optional[str] = None, data=None):
    """(model in PN/eval, description): a shipped checkpoint, else a quick natural model."""
    from normshape_core.training.checkpoints import load_checkpoint

    ck = shipped_checkpoint(dataset, method, shaping, ratio)
    if ck is not None:
        model, meta = load_checkpoint(ck.path, device=device)
        return model.eval(), f"checkpoint {ck.path.relative_to(ROOT)}"
    from normshape_core.settings.config import TrainConfig
    from normshape_core.training.trainer import train

    torch.manual_seed(0)
    res = train(TrainConfig(dataset=dataset, method="natural", epochs=2, device=str(device),
                            eval_samples=0, seed=0), dataset=data)
    return res.model.eval(), "no shipped checkpoint: a natural model trained for 2 epochs here"


def import_torchattacks(section_key: str):
    """torchattacks, or None after saying the section is skipped (not installed, or broken)."""
    try:
        import torchattacks
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        say(TORCHATTACKS_HINT + ("" if isinstance(e, ImportError) else f" [{e}]"))
        RESULTS[section_key] = "skipped: torchattacks not installed"
        return None
    return torchattacks


def child_json(argv: List[str], timeout: int, env=None) -> Optional[Dict[str, Any]]:
    """Run ``run.py --child ...`` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, str(HERE / "run.py"), "--threads", str(torch.get_num_threads()),
           "--child"] + argv
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        say(f"  child {argv[0]} timed out after {timeout} s")
        return None
    if out.returncode != 0:
        say(f"  child {argv[0]} failed ({out.returncode}): {out.stderr.strip()[-600:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])
