"""normshape benchmarks: how close the product sits to its floors, and how its cost grows.

    python benchmarks/run.py            # the full run (sections 1-5 several minutes on two
                                        # CPU cores; section 6 about two hours, see BENCHMARKS.md)
    python benchmarks/run.py --quick    # CI: fewer cases and repetitions (~3.5 minutes)

Prints, measured in one run, as ratios (BENCHMARKS.md records a run and what the numbers mean):
1. one training step (pgd, trades, each with shaping in attack+training) against
   (K+1) x one forward+backward of the same batch on the same model;
2. our attacks against torchattacks' on the same model (PN, eval mode) and batch;
3. shaped inference at 1:3 and 1:9, grouped and per sample, against (n+1) x a PN forward;
4. how cost grows: epoch time against batch size and ratio, peak RSS of a training run, UMAP
   time against the number of points (first call and later calls);
5. the app: every page's first view and a cached rerun (AppTest), cold start of
   ``streamlit run app.py`` to the first rendered page in headless Chromium;
6. the worst case per sample (the ``default`` ensemble, crafted through the defender's own
   norms plus transfer) against torchattacks through the same views on the issue's four
   cases; its time over its floor (PN and shaped 1:9) and over torchattacks' same members
   at equal steps; the reproduction's recorded Fashion-MNIST times and floors. ``6x`` (not in
   the default list; hours): every shipped checkpoint's PN, BN and shaped worst case against
   torchattacks, and the member table; ``6alt`` (not in the default list): the BN fixes'
   worst cases on digits (dual BN, GroupNorm, normalizer-free, test-time statistics), each
   against torchattacks through its own view;
7. kill-safety: training runs killed (SIGKILL / SIGTERM) at random moments and resumed, 30
   kills (``--quick``: 10), weights compared with an uninterrupted run's;
8. the Playground: PN + shaped decision regions per frame, the server's frame round trip,
   training steps/s with frames against without, and frames per second in headless Chromium.
Uses a GPU when one is present (``--device``). It prints; it never asserts a time (noise on a
shared machine must not fail CI). Timings interleave the compared functions and take medians
of paired ratios (``_timing.py``); on CPU each ratio is given for wall time and CPU time.

Each section is one file beside this one (``training_step.py``, ``attacks.py``, ``shaped.py``,
``scaling.py``, ``app_timing.py``, ``worst_case.py``, ``kill_safety.py``, ``playground.py``); ``_common.py`` holds
what they share and ``_timing.py`` the paired timings. A section is one line of ``SECTIONS``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _common import RESULTS, SUMMARY, header, machine_text, pick_device, say  # noqa: E402
from _timing import table  # noqa: E402
from app_timing import child_apptest, section_app  # noqa: E402
from attacks import section_attacks  # noqa: E402
from kill_safety import section_kill_safety  # noqa: E402
from playground import section_playground  # noqa: E402
from scaling import child_rss, child_umap, section_scaling  # noqa: E402
from shaped import section_shaped  # noqa: E402
from training_step import section_training, try_compile  # noqa: E402
from worst_case import (section_alternatives, section_every_checkpoint,  # noqa: E402
                        section_worst_case)

SECTIONS = {  # key: the section's function (its file beside this one)
    "1": section_training,
    "2": section_attacks,
    "3": section_shaped,
    "4": section_scaling,
    "5": section_app,
    "6": section_worst_case,
    "6x": section_every_checkpoint,
    "6alt": section_alternatives,
    "7": section_kill_safety,
    "8": section_playground,
    "compile": try_compile,
}


def run_child(argv: List[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "rss":
        res = child_rss(rest[0], int(rest[1]))
    elif kind == "umap":
        res = child_umap([int(s) for s in rest])
    elif kind == "apptest":
        res = child_apptest(rest[0], rest[1], rest[2:])
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(res), flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI mode: fewer cases and repetitions")
    p.add_argument("--sections", default="1,2,3,4,5,6,7,8", help="which sections to run (1-8, "
                   "and 'compile')")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on a CPU machine with <= 4 cores, "
                        "where more threads spin against each other; else torch's default)")
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow: "
                   "compiles with the C++ toolchain)")
    p.add_argument("--json", default=None, help="write all figures as JSON to this file")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    threads = args.threads
    if threads is None and device.type == "cpu" and (os.cpu_count() or 1) <= 4:
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    if args.child:
        run_child(args.child)
        return 0
    t_start = time.perf_counter()
    say(f"normshape benchmarks{' (quick)' if args.quick else ''}: {machine_text(device)}")
    if device.type != "cuda":
        say("No GPU in use: every figure below is CPU-only.")
    RESULTS["machine"] = machine_text(device)
    RESULTS["quick"] = bool(args.quick)
    keys = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.compile and "compile" not in keys:
        keys.append("compile")
    for key in keys:
        t0 = time.perf_counter()
        try:
            SECTIONS[key](args, device)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            import traceback

            say(f"section {key} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
            RESULTS[f"section_{key}_error"] = f"{type(e).__name__}: {e}"
        say(f"[section {key}: {time.perf_counter() - t0:.0f} s]")
    header("Summary (goals from the issue; printed, never asserted)")
    say(table(SUMMARY, ["figure", "measured", "goal", "status"]))
    say(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        RESULTS["summary"] = SUMMARY
        Path(args.json).write_text(json.dumps(RESULTS, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
