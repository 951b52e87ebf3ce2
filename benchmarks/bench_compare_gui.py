"""How long the Compare widget keeps napari's event loop from running.

    xvfb-run -a .venv/bin/python benchmarks/bench_compare_gui.py [--models DIR --cache DIR]

1. Outlining off the GUI thread: a thread runs ``lsr.geojson.mask_to_polygons`` on a
   fragmented 1200² mask (thousands of specks, what a poorly calibrated network draws on a
   whole slide) while the main thread ticks every 5 ms; the longest tick gap is the longest
   time a GUI could not react. Baseline in the same run: the same outline simplified through
   the geometry's ``.simplify`` method (what the code did before), which holds the GIL.
2. With ``--models`` (e.g. the tutorial's ``/tmp/lsr-tutorial/models`` after
   ``scripts/tutorial_screenshots.py``): the Compare widget on the synthetic sample, two
   runs from the prediction cache, a 10-ms QTimer in the viewer; the longest gap over each
   run (predict, outline, draw, evaluate) and the summed gaps above 50 ms ("blocked"),
   against the longest gap of the idle viewer; a third run removes the previous layers one
   per event-loop turn (the widget before batching) as the same-run baseline of the second.

Writes ``benchmarks/results/compare_gui.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
ROOT = Path(__file__).resolve().parent.parent


def fragmented_mask(size: int = 1200, seed: int = 0) -> np.ndarray:
    """(size, size) bool: smoothed noise above a threshold, thousands of small blobs."""
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).normal(size=(size, size)).astype(np.float32)
    return gaussian_filter(noise, 3.0) > 0.08


def longest_gap_while(work: Any, tick_s: float = 0.005) -> tuple[float, float]:
    """(longest main-thread tick gap in s, wall s) while ``work()`` runs in a thread."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()))
    t0 = last = time.perf_counter()
    longest = 0.0
    thread.start()
    while not done.is_set():
        time.sleep(tick_s)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    return longest, time.perf_counter() - t0


def outline_part() -> dict[str, Any]:
    import shapely

    from lsr.geojson import mask_to_polygons

    mask = fragmented_mask()
    raw = mask_to_polygons(mask, simplify_tolerance=0)
    idle, _ = longest_gap_while(lambda: time.sleep(1.0))
    now, now_wall = longest_gap_while(lambda: mask_to_polygons(mask))
    before, before_wall = longest_gap_while(lambda: raw.simplify(1.0, preserve_topology=True))
    return {
        "parts": len(getattr(raw, "geoms", [raw])),
        "idle_gap_s": idle,
        "mask_to_polygons": {"longest_gap_s": now, "wall_s": now_wall},
        "baseline_method_simplify": {"longest_gap_s": before, "wall_s": before_wall},
        "gap_ratio": now / before,
        "shapely": shapely.__version__,
    }


def layer_kinds_part(repeats: int = 2) -> dict[str, Any]:
    """What adding and first drawing one boundary overlay costs the GUI thread, per napari
    layer kind, against an Image layer of the same pixels (the cheapest overlay napari has):
    the boundary of :func:`fragmented_mask` as the widget's Shapes paths, as a Labels layer
    drawn with ``contour``, and as an Image of its boundary pixels. Each kind is added
    ``repeats`` times (the first one of a kind also compiles its shaders); the milliseconds
    are ``add_layer`` plus the first ``processEvents`` (the first draw)."""
    import napari
    from napari.layers import Image, Labels, Shapes
    from qtpy.QtWidgets import QApplication
    from skimage.segmentation import find_boundaries

    import lsr.compare as lc
    from lsr.geojson import mask_to_polygons

    mask = fragmented_mask()
    rings = lc.polygon_rings(mask_to_polygons(mask))
    edge = find_boundaries(mask, mode="inner").astype(np.float32)

    def contour() -> Any:
        layer = Labels(mask.astype(np.uint8))
        layer.contour = 1
        return layer

    kinds = {
        "image": lambda: Image(edge, colormap="red", blending="additive", contrast_limits=(0, 1)),
        "shapes": lambda: Shapes(
            rings,
            shape_type="path",
            edge_color="red",
            face_color="transparent",
            edge_width=2,
            blending="translucent_no_depth",
        ),
        "labels_contour": contour,
    }
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()

    def settle() -> None:
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)

    settle()
    ms: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for name, make in kinds.items():
            layer = make()  # built before timing, as the widget builds it in a worker
            t0 = time.perf_counter()
            viewer.add_layer(layer)
            app.processEvents()
            ms[name].append(1000 * (time.perf_counter() - t0))
            settle()
    viewer.close()
    best = {k: min(v) for k, v in ms.items()}
    return {
        "rings": len(rings),
        "pixels": list(mask.shape),
        "ms": ms,
        "ratio_vs_image": {k: best[k] / best["image"] for k in kinds},
    }


def widget_part(models: Path, cache: Path) -> dict[str, Any]:
    import napari
    import torch.optim  # noqa: F401 - its first import holds the GIL ~1 s: not ours to time
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-lsr", "synthetic")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Compare & evaluate")
    w.cache_folder.setText(str(cache))
    w.model_folder.setText(str(models))
    w.refresh_models()
    state = {"last": time.perf_counter(), "longest": 0.0, "blocked": 0.0}

    def tick() -> None:
        now = time.perf_counter()
        gap = now - state["last"]
        state["longest"] = max(state["longest"], gap)
        if gap > 0.05:  # the brief's ~50 ms: time the viewer could not react
            state["blocked"] += gap
        state["last"] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()

    def spin(seconds: float = 0.0, until: Any = None) -> tuple[float, float]:
        """(longest gap, summed gaps above 50 ms) while processing events."""
        end = time.perf_counter() + seconds
        state["last"], state["longest"], state["blocked"] = time.perf_counter(), 0.0, 0.0
        while time.perf_counter() < end or (until is not None and not until()):
            QApplication.processEvents()
            time.sleep(0.002)
        return state["longest"], state["blocked"]

    from napari_lsr.compare import _own

    show = w._show

    def show_removing_one_per_turn(result: Any) -> None:
        """The baseline: the previous run's layers removed one per event-loop turn, each
        removal with its own garbage collection (what the widget did before batching)."""
        old = [ly for ly in viewer.layers if _own(ly)]
        show(result)
        if old:
            w._drawing[0:1] = [lambda ly=ly: viewer.layers.remove(ly) for ly in old]

    spin(2.0)  # settle: the sample's first draw
    idle, _ = spin(2.0)
    runs = []
    # the second and third runs also remove the previous run's layers; the third removes
    # them one per turn (baseline, same run)
    for i in range(3):
        w._show = show_removing_one_per_turn if i == 2 else show
        t0 = time.perf_counter()
        w.run()
        gap, blocked = spin(0.5, until=lambda: w.worker is None and w.scores is not None)
        runs.append({"longest_gap_s": gap, "blocked_s": blocked,
                     "wall_s": time.perf_counter() - t0})  # fmt: skip
    rings = sum(ly.nshapes for ly in viewer.layers if "lsr_boundary" in ly.metadata)
    viewer.close()
    return {
        "idle_gap_s": idle, "runs": runs[:2], "baseline_one_removal_per_turn": runs[2],
        "blocked_ratio_rerun_vs_baseline": runs[1]["blocked_s"] / max(runs[2]["blocked_s"], 1e-9),
        "boundary_rings": rings,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "outline": outline_part(),
    }
    o = result["outline"]
    print(
        f"outline of {o['parts']} parts in a thread: longest main-thread gap "
        f"{1000 * o['mask_to_polygons']['longest_gap_s']:.0f} ms "
        f"({o['mask_to_polygons']['wall_s']:.1f} s of work) vs "
        f"{1000 * o['baseline_method_simplify']['longest_gap_s']:.0f} ms with the method "
        f"simplify (ratio {o['gap_ratio']:.3f}); idle {1000 * o['idle_gap_s']:.0f} ms"
    )
    result["layer_kinds"] = lk = layer_kinds_part()
    print(
        f"one overlay of {lk['rings']} rings on {lk['pixels'][0]}² px, add + first draw (ms, "
        "per repeat): "
        + "; ".join(f"{k} {', '.join(f'{v:.0f}' for v in lk['ms'][k])}" for k in lk["ms"])
        + " — ratio of the best to an Image layer's: "
        + ", ".join(f"{k} {r:.2f}" for k, r in lk["ratio_vs_image"].items())
    )
    if args.models is not None:
        cache = args.cache or args.models.parent / "cache"
        result["widget"] = wp = widget_part(args.models, cache)
        gaps = ", ".join(f"{1000 * r['longest_gap_s']:.0f} ms (blocked {r['blocked_s']:.1f} s "
                         f"of {r['wall_s']:.0f} s)" for r in wp["runs"])  # fmt: skip
        base = wp["baseline_one_removal_per_turn"]
        print(
            f"Compare widget ({wp['boundary_rings']} boundary rings): longest GUI gap per "
            f"run {gaps}; idle viewer {1000 * wp['idle_gap_s']:.0f} ms; rerun removing the old "
            f"layers one per turn (baseline): {1000 * base['longest_gap_s']:.0f} ms, blocked "
            f"{base['blocked_s']:.1f} s; blocked ratio rerun / baseline "
            f"{wp['blocked_ratio_rerun_vs_baseline']:.2f}"
        )
    out = ROOT / "benchmarks" / "results" / "compare_gui.json"
    # a run without --models keeps the last widget measurement (it needs trained models)
    kept = json.loads(out.read_text()) if out.exists() else {}
    if "widget" in kept and "widget" not in result:
        result["widget"] = kept["widget"]
        result["widget_from_an_earlier_run"] = True
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
