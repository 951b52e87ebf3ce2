"""Run every benchmark once, each writing its JSON to benchmarks/results/ (``make bench``).

Each benchmark measures its baseline in the same run and reports ratios, so the numbers are
comparable across machines; absolute times on a shared 2-core CPU are noisy. GUI benchmarks
need an X server: run this under ``xvfb-run -a`` (``make bench`` does).

    python benchmarks/run_all.py [--only losses train ...] [--full]

``--full`` uses the sizes the issues name (e.g. a 50 000 px slide for inference), which
take long on a CPU; the default sizes finish in minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, quick arguments, full arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "losses": ("bench_losses.py", [], []),
    "train": ("bench_train.py", [], ["--block-px", "240", "--width", "16"]),
    "infer": ("bench_infer.py", ["--size", "12000", "--norm", "layer"], ["--norm", "layer"]),
    "gui_training": ("bench_gui_training.py", ["--steps", "60"], []),
    "synthetic": ("synthetic_speed.py", ["--slides", "8", "--patches", "2"], []),
    "sample_open": ("bench_sample_open.py", [], []),
    "compare_gui": ("bench_compare_gui.py", [], []),  # --models DIR adds the widget part
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        script, quick, full = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / script), *(full if args.full else quick)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
