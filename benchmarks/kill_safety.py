"""Section 7: kill-safety: training runs killed (SIGKILL / SIGTERM) at random moments and
resumed, weights compared with an uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, ROOT, SUMMARY, header, say


#: the run killed and resumed: 3 epochs of 4 steps on moons (a fraction of a second each)
KILL_TRAIN = ["--dataset", "moons", "--method", "pgd", "--epochs", "3", "--steps", "2",
              "--n-train", "256", "--eval-samples", "50", "--seed", "1"]


def section_kill_safety(args, device) -> None:
    """Random kills (SIGKILL / SIGTERM) of training runs at random moments, each resumed with
    --resume until it finishes; the weights compared with an uninterrupted run's. The driver
    runs in a fresh process and forks each run (``normshape_core.cli.kill_drivers``)."""
    kills = 10 if args.quick else 30
    header(f"7. Kill-safety: {kills} random kills of training runs, resumed, weights compared")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "loop.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("NORMSHAPE_FAULT", None)
        proc = subprocess.run([sys.executable, "-m", "normshape_core.cli.kill_drivers", "random", str(out),
                               str(kills), "--", *KILL_TRAIN, "--device", "cpu"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                               else f"exit {proc.returncode}")
        r = json.loads(out.read_text())
    RESULTS["kill_safety"] = r
    say(f"kills: {r['kills']}, resumes from a saved state: {r['resumes']}, runs finished: "
        f"{r['finished_runs']}, weights identical to the uninterrupted run: "
        f"{'yes' if r['identical'] else 'NO'} ({r['seconds']:.0f} s)")
    SUMMARY.append([f"{r['kills']} random kills then --resume: weights identical",
                    "yes" if r["identical"] else "NO", "yes",
                    "meets goal" if r["identical"] else "FAILS goal"])
