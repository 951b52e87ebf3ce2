"""How long napari's main thread is busy opening the sample (File ▸ Open Sample).

    xvfb-run -a .venv/bin/python benchmarks/bench_sample_open.py [--repeats 3]

Sample functions run on napari's main thread, so their whole run is a GUI stall. Measured in
one process: (a) ``viewer.open_sample("napari-lsr", "synthetic")`` from the shipped files
plus the events it queues (first draw), best of ``--repeats``, after one warm-up open (imports);
the plugin's share of it, the sample function alone (reading the files into lazy layer data);
(b) the baseline, what the first use cost before the sample was shipped: generating it
(``build_sample`` into a temporary folder). Reported: both times and their ratio; the target
is a sample function ≲ 50 ms (the rest is napari's own layer work), and a ratio far below 1.

Writes ``benchmarks/results/sample_open.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
ROOT = Path(__file__).resolve().parent.parent


def open_once(viewer) -> float:
    """Seconds from the menu's call to the queued events being handled (layers drawn)."""
    from qtpy.QtWidgets import QApplication

    viewer.layers.clear()
    QApplication.processEvents()
    t = time.perf_counter()
    viewer.open_sample("napari-lsr", "synthetic")
    QApplication.processEvents()
    return time.perf_counter() - t


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sample_open.json")
    args = parser.parse_args()

    import napari

    from napari_lsr._sample_data import SAMPLE_SEED, SAMPLE_SIZE_PX, build_sample, synthetic_sample

    viewer = napari.Viewer(show=True)
    open_once(viewer)  # warm-up: imports, first GL context
    shipped = min(open_once(viewer) for _ in range(args.repeats))
    viewer.close()
    function = min(_timed(synthetic_sample) for _ in range(args.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build_sample(Path(tmp) / "sample", SAMPLE_SIZE_PX, SAMPLE_SEED)
        generate = time.perf_counter() - t
    result = {
        "open_shipped_s": shipped,
        "sample_function_s": function,
        "generate_baseline_s": generate,
        "ratio_open_to_generate": shipped / generate,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"open sample (shipped) {shipped * 1e3:.0f} ms, of which the plugin's sample function "
        f"{function * 1e3:.0f} ms (the rest is napari's layer work); "
        f"generating it {generate:.1f} s; ratio {shipped / generate:.4f}"
    )


if __name__ == "__main__":
    main()
