"""Headless screenshots of the plugin's widgets for the docs (run under Xvfb).

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--out docs/img]

Each screenshot is made from the real widget in a real viewer, so the docs stay current.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")


def count_table(viewer, out: Path) -> None:
    """The Count table widget: an expert's table beside paper Table 1."""
    import numpy as np

    from lsr.counttable import CountTable

    rng = np.random.default_rng(3)
    z = np.repeat(np.arange(10), 11)
    truth = np.array([1, 3, 5, 7, 9, 12, 15, 18, 30, 65])[z]
    pc = np.clip(np.round(rng.normal(truth, 2 + truth / 8) / 5) * 5, 0, 100)
    pc[z == 0] = 0  # all equal: a flagged bin
    table = CountTable.from_estimates(z, pc, experts=["demo"] * z.size)
    table.to_json(out / "example_expert_table.json")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-lsr", "Count table")
    widget.load(out / "example_expert_table.json")
    widget.compare.setChecked(True)
    viewer.window._qt_window.resize(1400, 700)
    _process()
    widget.grab().save(str(out / "widget_count_table.png"))


def annotator(viewer, out: Path) -> None:
    """The count-table annotator on the synthetic sample, part-way through a session."""
    import tempfile

    import numpy as np
    import tifffile

    from napari_lsr._sample_data import NAME, sample_folder

    folder = sample_folder()
    for path in (f"{NAME}.tif", f"{NAME}_grid.npy"):
        viewer.open(folder / path, plugin="napari-lsr")
    viewer.layers[f"{NAME}_grid z"].visible = False
    viewer.window._qt_window.resize(1600, 1000)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-lsr", "Count-table annotator")
    widget.expert.setText("demo")
    widget.folder.setText(tempfile.mkdtemp())  # keep the cache folder free of autosaves
    widget.start()
    while widget.session is None:  # tissue detection runs in a worker thread
        _process()
    gt = tifffile.imread(folder / f"{NAME}_gt.tif") > 0
    b = gt.shape[0] // widget.session.grid["shape"][0]
    rng = np.random.default_rng(1)
    for _ in range(40):  # a simulated expert: the true cancer %, rounded to 5, some noise
        blk = widget.session.block
        frac = gt[blk.row * b : (blk.row + 1) * b, blk.col * b : (blk.col + 1) * b].mean()
        pct = float(np.clip(np.round((100 * frac + rng.normal(0, 2)) / 5) * 5, 0, 100))
        widget.percent.setText(f"{pct:g}")
        widget.record_typed()
    widget.skip("artefact")
    widget.table_widget.compare.setChecked(True)
    widget.percent.setText("1")
    for _ in range(10):
        _process()
    _close_notifications(viewer)
    viewer.window._qt_window.grab().save(str(out / "widget_annotator.png"))


def trainer(viewer, out: Path) -> None:
    """The Trainer mid-training on the synthetic sample: a queue of two losses, live curve."""
    import tempfile
    import time

    from napari_lsr._sample_data import NAME, sample_folder

    folder = sample_folder()
    for path in (f"{NAME}.tif", f"{NAME}_grid.npy"):
        viewer.open(folder / path, plugin="napari-lsr")
    viewer.window._qt_window.resize(1600, 1050)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    from qtpy.QtCore import Qt

    viewer.window._qt_window.resizeDocks([dock], [560], Qt.Horizontal)
    widget.use_layers()
    widget.out_dir.setText(tempfile.mkdtemp(prefix="lsr-models-"))
    widget.width_spin.setValue(8)
    widget.depth_spin.setValue(3)
    widget.group_size.setText("5")
    widget.batch_size.setText("10")
    widget.checkpoint_every.setValue(50)

    def train_until(step: int, timeout_s: float = 300) -> None:
        widget.train()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and widget.running:
            _process()
            if widget.current().state.step >= step:
                break
            time.sleep(0.05)

    widget.loss_checks["intra_inter"].setChecked(False)
    widget.loss_checks["inter"].setChecked(True)  # a finished model for the model list
    widget.steps.setValue(15)
    train_until(10**9)
    widget.loss_checks["inter"].setChecked(False)
    widget.loss_checks["intra_inter"].setChecked(True)
    widget.loss_checks["intra"].setChecked(True)
    widget.steps.setValue(400)
    widget.lr.setText("1e-3")
    train_until(45)
    widget.plot.flush(force=True)
    for _ in range(10):
        _process()
    _close_notifications(viewer)
    viewer.window._qt_window.grab().save(str(out / "widget_trainer.png"))
    widget.cancel()
    widget.job.wait(120)


def _close_notifications(viewer) -> None:
    """Hide napari's toast notifications (e.g. backend deprecation) before a grab."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _process()


def _process() -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()


SHOTS = {"count_table": count_table, "annotator": annotator, "trainer": trainer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--only", nargs="*", choices=sorted(SHOTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import napari

    for name in args.only or SHOTS:
        viewer = napari.Viewer(show=True)
        try:
            SHOTS[name](viewer, args.out)
        finally:
            viewer.close()
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
