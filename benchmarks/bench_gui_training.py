"""How much the Trainer widget costs: Qt event-loop stalls while training, and its overhead.

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_training.py [--steps 150] [--repeats 2]

1. Stall: a QTimer fires every 10 ms in the napari process while the widget trains in the
   background; the longest gap between two firings (minus 10 ms) is the longest time the
   GUI could not react. Measured after warm-up (torch.optim imported, the widget open and
   the first loss on the curve + 0.5 s) until the end of the run is reported
   (notification, model list), and over the whole run (Train click included) for
   reference. Each gap is labelled with what the widget did in it (full render of the
   loss plot, axes redraw, line blit, end report, or "other": labels, Qt, napari).
2. Overhead: wall time of the same training (same config, same steps) started from the
   widget (run folder + launch + polling until the end is shown) divided by
   ``python -m lsr train config.json`` started as a subprocess, both measured in this run
   (alternating, best of ``--repeats``).

Writes ``benchmarks/results/gui_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
ROOT = Path(__file__).resolve().parent.parent
BLOCK = 32
#: what the widget did within a gap: a full render of the loss plot, a redraw of its axes,
#: a line-only update (blit), the end of a run reported ("other": labels, Qt, napari)
WORK = ("full render", "axes", "blit", "end")
MPP = 4.17


def make_data(folder: Path, n: int = 3, blocks: int = 8) -> list[tuple[str, str]]:
    """``n`` random RGB slides of ``blocks`` × ``blocks`` blocks with random bin grids."""
    import numpy as np

    from lsr.grid import BlockGrid, save_grid
    from lsr.slide import write_pyramidal_tiff
    from lsr.training_process import find_pairs

    rng = np.random.default_rng(0)
    for i in range(n):
        size = blocks * BLOCK
        img = rng.integers(60, 255, (size, size, 3), dtype=np.uint8)
        write_pyramidal_tiff(folder / f"s{i}.tif", img, mpp=MPP, tile=128, compression="zlib")
        z = rng.integers(0, 10, (blocks, blocks)).astype(np.int16)
        save_grid(BlockGrid.from_z(z, BLOCK), folder / f"s{i}_grid.npy")
    return find_pairs(folder)


SETTINGS = dict(
    block_px=BLOCK, working_mpp=MPP, width=8, depth=2, group_size=8, groups_per_batch=2,
    checkpoint_every=50, device="cpu", loss="intra_inter", augment=True,
)  # fmt: skip


def run_cli(pairs: list[tuple[str, str]], steps: int, out: Path) -> float:
    """Wall seconds of ``python -m lsr train cfg.json`` (a fresh interpreter, like the GUI's)."""
    from lsr.train import DataPair, TrainConfig

    cfg = TrainConfig(data=[DataPair(s, g) for s, g in pairs], steps=steps, out_dir=str(out),
                      **SETTINGS)  # fmt: skip
    cfg.save(out.parent / f"{out.name}.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lsr", "train", str(out.parent / f"{out.name}.json")],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return time.perf_counter() - t0


def run_gui(widget, pairs, steps: int, out: Path) -> dict:
    """Train from the widget; record the 10 ms timer's gaps until the end is shown."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    widget.out_dir.setText(str(out))
    widget.set_pairs(pairs)
    widget.steps.setValue(steps)
    gaps: list[tuple[float, float, str]] = []  # (time, gap seconds, what the GUI did in it)
    last = [time.perf_counter()]
    ended = [0]

    def count_end(*_: object) -> None:
        ended[0] += 1

    widget.run_finished.connect(count_end)
    plot = widget.plot

    def counters() -> tuple[int, ...]:
        return plot.draws, plot.axes_draws, plot.blits, ended[0]

    seen = [counters()]
    first_step_shown = [None]
    end_shown: list[float | None] = [None]
    loop = QEventLoop()

    def tick() -> None:  # also notes what the widget did, the first loss and the end
        now = time.perf_counter()
        now_counts = counters()
        did = [n for n, a, b in zip(WORK, seen[0], now_counts, strict=True) if a != b]
        gaps.append((now, now - last[0], "+".join(did) or "other"))
        last[0], seen[0] = now, now_counts
        if first_step_shown[0] is None and plot.losses:  # the curve got its first loss
            first_step_shown[0] = now
        if not widget.running and end_shown[0] is None:
            end_shown[0] = now
        if end_shown[0] is not None and ended[0] and now > end_shown[0] + 0.2:
            loop.quit()  # the stalls include the end's report (notification, model list)

    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(tick)
    widget.max_update_s = widget.plot.max_draw_s = 0.0
    counts0 = counters()
    load0 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    timer.start()
    t0 = last[0] = time.perf_counter()
    assert widget.train()  # (its own time is a gap too: "max_stall_ms_all")
    loop.exec_()
    wall, watched = end_shown[0] - t0, time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    gui_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    timer.stop()
    widget.run_finished.disconnect(count_end)
    counts = [b - a for a, b in zip(counts0, counters(), strict=True)]
    first_step_shown = first_step_shown[0]
    state = widget.monitors[-1].state
    assert state.status == "completed", state.message
    warm = [(g, did) for t, g, did in gaps if first_step_shown and t > first_step_shown + 0.5]
    after = [g for g, _ in warm]
    all_gaps = [g for _, g, _ in gaps]
    worst = [[round(1000 * (g - 0.010), 1), did] for g, did in sorted(warm)[-6:]]
    return {
        "wall_s": wall,
        "max_stall_ms_after_warmup": 1000 * (max(after) - 0.010) if after else None,
        "max_stall_ms_all": 1000 * (max(all_gaps) - 0.010),
        "p99_gap_ms": 1000 * sorted(after)[int(0.99 * (len(after) - 1))] if after else None,
        "worst_stalls_ms_after_warmup": worst,
        "napari_cpu_fraction": gui_cpu / watched,  # CPU of the napari process while watching
        "max_update_ms": 1000 * widget.max_update_s,
        "max_plot_draw_ms": 1000 * widget.plot.max_draw_s,
        "ticks": len(gaps),
        "plot_full_renders": counts[0],
        "plot_axes_draws": counts[1],
        "plot_blits": counts[2],
        "load_average_1min": [load0, os.getloadavg()[0]],  # at the start and the end
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gui_training.json")
    args = parser.parse_args()

    import napari
    import torch.optim  # noqa: F401 - warm-up: the widget's first use imports torch anyway
    from qtpy.QtWidgets import QApplication

    from napari_lsr.trainer import TrainerWidget

    tmp = Path(tempfile.mkdtemp(prefix="bench-gui-training-"))
    (tmp / "data").mkdir()
    pairs = make_data(tmp / "data")
    viewer = napari.Viewer(show=True)
    widget = TrainerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Trainer")
    widget.block_px.setValue(BLOCK)
    widget.working_mpp.setValue(MPP)
    widget.width_spin.setValue(SETTINGS["width"])
    widget.depth_spin.setValue(SETTINGS["depth"])
    widget.group_size.setText(str(SETTINGS["group_size"]))
    widget.groups_per_batch.setText(str(SETTINGS["groups_per_batch"]))
    widget.checkpoint_every.setValue(SETTINGS["checkpoint_every"])
    widget.device.setCurrentText("cpu")
    for box in widget.loss_checks.values():
        box.setChecked(False)
    widget.loss_checks["intra_inter"].setChecked(True)
    for _ in range(20):
        QApplication.processEvents()

    cli, gui = [], []
    for i in range(args.repeats):
        cli.append(run_cli(pairs, args.steps, tmp / f"cli{i}"))
        gui.append(run_gui(widget, pairs, args.steps, tmp / f"gui{i}"))
        print(f"repeat {i}: lsr train {cli[-1]:.2f} s, widget {gui[-1]['wall_s']:.2f} s, "
              f"max stall {gui[-1]['max_stall_ms_after_warmup']:.1f} ms, "
              f"update {gui[-1]['max_update_ms']:.1f} ms, "
              f"draw {gui[-1]['max_plot_draw_ms']:.1f} ms, "
              f"napari CPU {gui[-1]['napari_cpu_fraction']:.2f}, "
              f"load {os.getloadavg()[0]:.1f}; worst stalls "
              f"{gui[-1]['worst_stalls_ms_after_warmup'][-3:]}", flush=True)  # fmt: skip
    best_gui = min(gui, key=lambda g: g["wall_s"])
    result = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "device": widget.monitors[-1].state.device,
        "steps": args.steps,
        "config": SETTINGS,
        "lsr_train_s": cli,
        "widget_s": [g["wall_s"] for g in gui],
        "overhead_ratio": best_gui["wall_s"] / min(cli),
        "overhead_ratio_per_repeat": [g["wall_s"] / c for g, c in zip(gui, cli, strict=True)],
        "target_ratio": 1.1,
        "max_stall_ms_after_warmup": max(g["max_stall_ms_after_warmup"] for g in gui),
        "max_stall_ms_all": max(g["max_stall_ms_all"] for g in gui),
        "p99_gap_ms": max(g["p99_gap_ms"] for g in gui),
        "max_update_ms": max(g["max_update_ms"] for g in gui),
        "max_plot_draw_ms": max(g["max_plot_draw_ms"] for g in gui),
        "load_average_1min_at_end": os.getloadavg()[0],
        "target_stall_ms": 50,
        "runs": gui,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    viewer.close()


if __name__ == "__main__":
    main()
