"""Screenshots of docs/tutorial.md, made from the real widgets in a real viewer (Xvfb).

    xvfb-run -a .venv/bin/python scripts/tutorial_screenshots.py [--out docs/img]
        [--work /tmp/lsr-tutorial] [--steps 300]

Steps: the synthetic sample → the count-table annotator → the Trainer (with two models
trained here, intra and intra+inter, on the sample) → Compare & evaluate (boundaries,
Table 2, calibration, band) → the exported Fig. 4 PNG and QuPath GeoJSON. Models and
the prediction cache are kept in ``--work``, so a second run only redraws.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

LOSSES = ("intra", "intra_inter")


def _process(n: int = 5) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()


def _close_notifications(viewer) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _process()


def _grab(viewer, path: Path) -> None:
    for _ in range(10):
        _process()
        time.sleep(0.02)
    _close_notifications(viewer)
    viewer.window._qt_window.grab().save(str(path))
    print(f"wrote {path}")


def expert_table(folder: Path, work: Path) -> Path:
    """The sample's count table from a (simulated, careful) expert: every block's true
    cancer %, rounded to 5 % as a pathologist would; bins nobody saw keep paper Table 1."""
    import tifffile

    from lsr.counttable import CountTable
    from lsr.grid import load_grid
    from napari_lsr._sample_data import NAME

    geo = json.loads((folder / f"{NAME}_grid.json").read_text())
    b = int(geo["block_px"])
    grid = load_grid(folder / f"{NAME}_grid.npy", block_px=b)
    gt = tifffile.imread(folder / f"{NAME}_gt.tif") > 0
    rows, cols = grid.shape
    frac = gt[: rows * b, : cols * b].reshape(rows, b, cols, b).mean(axis=(1, 3))
    z = grid.z.ravel()
    pct = np.clip(np.round(100 * frac.ravel() / 5) * 5, 0, 100)
    keep = z >= 0
    zs, ps = list(z[keep]), list(pct[keep])
    paper = CountTable.paper_table1()
    for missing in sorted(set(range(10)) - set(zs)):  # paper's numbers for unseen bins
        m, s = 100 * paper.eta[missing, 0], 100 * paper.rho[missing, 0]
        zs += [missing] * 3
        ps += [m - s, m, m + s]
    table = CountTable.from_estimates(np.array(zs), np.array(ps), experts=["tutorial"] * len(zs))
    path = work / "count_table.json"
    table.to_json(path)
    return path


def train_models(folder: Path, work: Path, steps: int) -> Path:
    """Train (or reuse) one network per loss on the sample with the shipped per-loss defaults
    (``lsr.train.DEFAULTS``, what the Trainer uses) and the demo's small U-Net; returns the
    models folder. A finished run of another step count is trained again (delete --work after
    changing anything else)."""
    from lsr.train import DataPair, TrainConfig, train
    from napari_lsr._sample_data import NAME

    models = work / "models"
    geo = json.loads((folder / f"{NAME}_grid.json").read_text())
    table = expert_table(folder, work)
    for loss in LOSSES:
        out = models / loss
        cfg = TrainConfig(
            data=[DataPair(str(folder / f"{NAME}.tif"), str(folder / f"{NAME}_grid.npy"))],
            table=str(table),
            block_px=int(geo["block_px"]),
            working_mpp=float(geo["working_mpp"]),
            loss=loss,
            width=8,
            depth=3,
            steps=steps,
            device="cpu",
            out_dir=str(out),
            checkpoint_every=max(steps, 1),
        )
        run = out / "run.json"
        if run.is_file():
            done = json.loads(run.read_text())
            if done.get("status") == "completed" and done.get("step") == steps:
                continue
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(cfg)
        print(f"trained {loss}: {result.status} in {time.perf_counter() - t0:.0f} s")
    return models


def open_sample(viewer) -> None:
    viewer.open_sample("napari-lsr", "synthetic")
    _process()


def shot_sample(viewer, out: Path) -> None:
    open_sample(viewer)
    viewer.window._qt_window.resize(1400, 900)
    viewer.layers["synthetic_slide_grid z"].visible = True
    viewer.reset_view()
    _grab(viewer, out / "tutorial_1_sample.png")


def shot_annotate(viewer, out: Path) -> None:
    import screenshots

    tmp = Path(tempfile.mkdtemp())
    screenshots.annotator(viewer, tmp)
    shutil.copy(tmp / "widget_annotator.png", out / "tutorial_2_annotate.png")
    print(f"wrote {out / 'tutorial_2_annotate.png'}")


def shot_train(viewer, out: Path, models: Path, table: Path, steps: int) -> None:
    open_sample(viewer)
    viewer.window._qt_window.resize(1600, 1000)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    w.use_layers()
    w.set_table_file(table)
    w.out_dir.setText(str(models))
    for loss, box in w.loss_checks.items():
        box.setChecked(loss in LOSSES)
    w.width_spin.setValue(8)
    w.depth_spin.setValue(3)
    w.steps.setValue(steps)
    w.refresh_models()
    _grab(viewer, out / "tutorial_3_train.png")


def _run_compare(viewer, models: Path, work: Path):
    open_sample(viewer)
    viewer.window._qt_window.resize(1700, 1150)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Compare & evaluate")
    viewer.layers["synthetic_slide_grid z"].visible = False
    w.cache_folder.setText(str(work / "cache"))
    w.export_folder.setText(str(work / "export"))
    w.gt_combo.setCurrentText("ground truth (cancer)")
    w.model_folder.setText(str(models))
    w.refresh_models()
    assert w.run()
    end = time.monotonic() + 600
    while (w.worker is not None or w.scores is None) and time.monotonic() < end:
        _process()
        time.sleep(0.05)
    return w


def _zoom_on_boundaries(viewer, w) -> None:
    """Centre on the block-rich part of the ground-truth boundary, about 8 blocks wide."""
    from lsr.metrics import boundary_band
    from napari_lsr.viewer_compat import camera, canvas_size

    comp = w.comparison
    band = boundary_band(comp.gt, comp.block_px / 2)
    ys, xs = np.nonzero(band)
    cy, cx = float(np.median(ys)), float(np.median(xs))
    mpp = comp.working_mpp
    cam = camera(viewer)
    cam.center = (cy * mpp, cx * mpp)
    h, wd = canvas_size(viewer)
    cam.zoom = min(h, wd) / (8 * comp.block_px * mpp)
    w.update_line_width()


def shot_compare(viewer, out: Path, models: Path, work: Path) -> None:
    w = _run_compare(viewer, models, work)
    _zoom_on_boundaries(viewer, w)
    _grab(viewer, out / "tutorial_4_compare.png")
    # evaluate: the band overlay, the visible region's scores, calibration
    w.show_band.setChecked(True)
    w.region_combo.setCurrentText("whole slide")
    w.evaluate()
    while w.worker is not None:
        _process()
        time.sleep(0.05)
    viewer.reset_view()
    w.update_line_width()
    scroll = w.parent()
    while scroll is not None and not hasattr(scroll, "verticalScrollBar"):
        scroll = scroll.parent()
    if scroll is not None:
        scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    _grab(viewer, out / "tutorial_5_evaluate.png")
    # exports
    w.region = None
    for fn in (w.export_geojson, w.export_png, w.export_results):
        fn()
        while w.worker is not None:
            _process()
            time.sleep(0.05)
    shutil.copy(work / "export" / "synthetic_slide_fig4.png", out / "tutorial_6_fig4.png")
    print(f"wrote {out / 'tutorial_6_fig4.png'}")
    res = json.loads((work / "export" / "synthetic_slide_results.json").read_text())
    print(json.dumps(res["scores"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lsr-tutorial")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", nargs="*", choices=["sample", "annotate", "train", "compare"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    import napari

    from napari_lsr._sample_data import sample_folder

    folder = sample_folder()
    todo = args.only or ["sample", "annotate", "train", "compare"]
    models = (
        train_models(folder, args.work, args.steps) if {"train", "compare"} & set(todo) else None
    )
    shots = {
        "sample": lambda v: shot_sample(v, args.out),
        "annotate": lambda v: shot_annotate(v, args.out),
        "train": lambda v: shot_train(
            v, args.out, models, args.work / "count_table.json", args.steps
        ),
        "compare": lambda v: shot_compare(v, args.out, models, args.work),
    }
    for name in todo:
        viewer = napari.Viewer(show=True)
        try:
            shots[name](viewer)
        finally:
            viewer.close()


if __name__ == "__main__":
    main()
