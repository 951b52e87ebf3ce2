"""The Compare & evaluate widget in a real (headless) viewer: layers, colours, scores, exports,
notifications for bad input."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lsr.compare import calibration_checks
from lsr.geojson import FIG4_COLOURS, import_geojson
from lsr.metrics import iou_dice, masked_iou_dice

napari = pytest.importorskip("napari")

BLOCK, MPP = 120, 8.33
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 480x600 synthetic slide (4x5 blocks), its grid (+ sidecar), ground truth and a
    width-4, depth-2 U-Net trained for two steps in ``models/a``."""
    from lsr.synthetic import SyntheticConfig, write_slide
    from lsr.train import DataPair, TrainConfig, train

    d = tmp_path_factory.mktemp("cmpw")
    write_slide(SyntheticConfig(), 1, d, "s", 480, 600)
    (d / "s_grid.json").write_text(json.dumps({"block_px": BLOCK, "working_mpp": MPP}))
    cfg = TrainConfig(
        data=[DataPair(str(d / "s.tif"), str(d / "s_grid.npy"))],
        block_px=BLOCK, working_mpp=MPP, loss="intra_inter", width=4, depth=2, steps=2,
        group_size=2, groups_per_batch=1, augment=False, device="cpu",
        out_dir=str(d / "models" / "a"), checkpoint_every=1000,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train(cfg).ok
    return d


@pytest.fixture
def messages(monkeypatch):
    """napari notifications shown by the widget: {"error": [...], "info": [...]}."""
    import napari_lsr.compare as mod

    got: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for kind in got:
        monkeypatch.setattr(mod, f"_{kind}", lambda m, k=kind: got[k].append(str(m)))
    return got


def open_widget(viewer, d: Path, tmp_path: Path):
    for name in ("s.tif", "s_grid.npy", "s_gt.tif"):
        viewer.open(d / name, plugin="napari-lsr")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Compare & evaluate")
    w.cache_folder.setText(str(tmp_path / "cache"))
    w.export_folder.setText(str(tmp_path / "out"))
    return w


def wait_idle(qtbot, w) -> None:
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT_MS)


def test_compare_draws_scores_and_exports(make_napari_viewer, qtbot, data, tmp_path, messages):
    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    assert w.slide_combo.currentText() == "s" and w.gt_combo.currentText() == "s_gt"
    w.model_folder.setText(str(data / "models"))
    w.refresh_models()
    assert w.model_list.count() == 1 and len(w.chosen_models()) == 1
    assert w.run()
    qtbot.waitUntil(lambda: w.scores is not None, timeout=TIMEOUT_MS)
    wait_idle(qtbot, w)
    assert not messages["error"]
    comp = w.comparison

    # one shapes layer per boundary, in the paper's colours; probability maps hidden
    want = {
        "boundary: low-resolution model": FIG4_COLOURS["low_res"],
        "boundary: ground truth": FIG4_COLOURS["ground_truth"],
        "boundary: intra+inter-instance (a)": FIG4_COLOURS["intra_inter"],
    }
    for name, rgb in want.items():
        layer = viewer.layers[name]
        assert layer.__class__.__name__ == "Shapes"
        assert np.allclose(layer.current_edge_color_rgba()[:3] if hasattr(
            layer, "current_edge_color_rgba") else _rgb(layer.current_edge_color),
            np.array(rgb) / 255)  # fmt: skip
        if layer.nshapes:
            assert np.allclose(layer.edge_color[:, :3], np.array(rgb) / 255)
    assert viewer.layers["boundary: ground truth"].nshapes > 0
    assert viewer.layers["boundary: low-resolution model"].nshapes > 0
    with tifffile.TiffFile(data / "s.tif") as tf:  # the writer cuts saved shapes to it
        level0 = list(tf.series[0].levels[0].shape[:2])
    recorded = viewer.layers["boundary: ground truth"].metadata["lsr_boundary"]
    assert recorded["level0_shape"] == level0
    prob = viewer.layers["p(cancer): intra+inter-instance (a)"]
    assert not prob.visible and prob.data.shape == (480, 600)
    assert list(w._legend_checks) == ["low_res", "intra_inter", "ground_truth"]

    # toggles and line width in screen pixels
    w._legend_checks["low_res"].setChecked(False)
    assert not viewer.layers["boundary: low-resolution model"].visible
    w.line_width.setValue(3.0)
    gt_layer = viewer.layers["boundary: ground truth"]
    assert gt_layer.edge_width[0] * viewer.scene.camera.zoom * MPP == pytest.approx(3.0, rel=0.03)
    viewer.scene.camera.zoom *= 2
    w.update_line_width()
    assert gt_layer.edge_width[0] * viewer.scene.camera.zoom * MPP == pytest.approx(3.0, rel=0.03)
    # and on screen: the drawn line gets wider with the width (not only the layer's model)
    viewer.window.show()  # a hidden canvas renders nothing
    viewer.reset_view()
    thin, thick = (_red_pixels(viewer, w, lw) for lw in (1.0, 6.0))
    assert thick > 3 * thin > 0, (thin, thick)
    w.show_band.setChecked(True)
    band = [ly for ly in viewer.layers if ly.name.startswith("evaluation band")]
    assert band and band[0].visible and band[0].data.any()
    gt_choices = [w.gt_combo.itemText(i) for i in range(w.gt_combo.count())]
    assert band[0].name not in gt_choices and "s_gt" in gt_choices  # no ground truth

    # scores equal lsr.metrics on the same arrays (the ground truth read independently)
    gt = tifffile.imread(data / "s_gt.tif") > 0
    np.testing.assert_array_equal(comp.gt, gt)
    for key, row in w.scores.items():
        assert (row["masked_iou"], row["masked_dice"]) == pytest.approx(
            masked_iou_dice(comp.masks[key], gt, BLOCK)
        )
        assert (row["iou"], row["dice"]) == pytest.approx(iou_dice(comp.masks[key], gt))
    assert w.scores_table.rowCount() == 2
    assert w.scores_table.item(0, 0).text() == f"{w.scores['low_res']['masked_iou']:.4f}"
    # a first row with each model's distance from its table (lsr.compare's), seen without
    # scrolling, then ten bins; columns named by the loss, the run's name in the tooltip
    assert w.calib_table.rowCount() == 11
    assert w.calib_table.verticalHeaderItem(0).text() == "off the table"
    assert w.calib_table.verticalHeaderItem(1).text().startswith("z=0 ")
    head = w.calib_table.horizontalHeaderItem(1)
    label = comp.boundary(next(iter(w.calib[0]["models"]))).label
    assert head.text() == label.split(" (")[0] and head.toolTip() == label
    checks = calibration_checks(w.calib)
    key = next(iter(checks))
    c = checks[key]
    cell = w.calib_table.item(0, 1).text()
    assert cell.startswith(f"{100 * c['error']:.1f} points ({c['blocks']} blocks)")
    assert cell.endswith("⚠") == c["flagged"]
    assert ("points off its count table" in w.status.text()) == any(
        v is not None and v["flagged"] for v in checks.values()
    )
    # the same rows with one model 40 points off in every bin: flagged on 50 blocks, not on 5
    for n, flagged in ((50, True), (5, False)):
        far = copy.deepcopy(w.calib)
        for row in far:
            eta = row["table"][key][0]
            row["models"][key] = {"n": n, "mean": eta + 0.4 if eta < 0.6 else eta - 0.4,
                                  "std": 0.0}  # fmt: skip
        label = comp.boundary(key).label
        warning = f" · {label}: 40 points off its count table ⚠"
        far_checks = calibration_checks(far)
        assert w._calibration_warning(far_checks) == (warning if flagged else "")
        w._fill_calibration(far, far_checks)
        item = w.calib_table.item(0, 1)
        assert item.text() == f"40.0 points ({10 * n} blocks)" + (" ⚠" if flagged else "")
        assert (item.foreground().color().name() == "#e05050") is flagged
    # a later evaluation with other columns keeps no cell of the earlier one
    w._fill_calibration(w.calib, checks)
    no_table = [{**row, "table": {}} for row in w.calib]
    w._fill_calibration(no_table, checks)
    first = w.calib_table.horizontalHeaderItem(0).text()
    assert first != "table η ± ρ"
    cells = [w.calib_table.item(0, c) for c in range(w.calib_table.columnCount())]
    assert [c.text() if c else "" for c in cells].count("") == sum(
        1 for k in ["ground_truth"] if "ground_truth" in w.calib[0]
    )
    w._fill_calibration(w.calib, checks)

    # two runs of one loss keep their run names; an empty boundary is named in the status
    scores = copy.deepcopy(w.scores)
    twins = copy.deepcopy(w.scores)
    twins["low_res"]["label"] = "intra+inter-instance (a)"
    twins["intra_inter"]["label"] = "intra+inter-instance (b)"
    twins["intra_inter"]["has_boundary"] = False
    w._show_scores((twins, w.calib, None))
    heads = [w.scores_table.verticalHeaderItem(i).text() for i in range(2)]
    assert heads == ["intra+inter-instance (a)", "intra+inter-instance (b)"]
    assert "no cancer drawn by intra+inter-instance (b)" in w.status.text()
    w._show_scores((scores, w.calib, None))
    assert w.scores_table.verticalHeaderItem(0).text() == "low-resolution model"
    assert all(r["has_boundary"] for r in scores.values())
    assert "no cancer drawn" not in w.status.text()

    # exports: GeoJSON readable by lsr and shapely, PNG, results
    assert w.export_geojson()
    wait_idle(qtbot, w)
    out = tmp_path / "out"
    geo = import_geojson(out / "s_ground_truth.geojson")
    assert geo.symmetric_difference(comp.polygons["ground_truth"]).area < 1e-6
    import shapely.geometry

    doc = json.loads((out / "s_boundaries.geojson").read_text())
    assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in doc["features"])
    assert w.export_png()
    wait_idle(qtbot, w)
    assert (out / "s_fig4.png").read_bytes()[:4] == b"\x89PNG"
    assert w.export_results()
    wait_idle(qtbot, w)
    rec = json.loads((out / "s_results.json").read_text())
    assert rec["scores"]["low_res"]["masked_iou"] == pytest.approx(
        w.scores["low_res"]["masked_iou"]
    )
    assert (out / "s_calibration.csv").is_file() and not messages["error"]

    # the visible region: scores on the crop
    w.region_combo.setCurrentText("visible region")
    region = w.visible_region()
    assert w.evaluate()
    assert not w.cancel_btn.isEnabled() and not w.run_btn.isEnabled()  # scoring cannot stop
    wait_idle(qtbot, w)
    y0, x0, y1, x1 = region
    assert w.region == region
    crop_gt = gt[y0:y1, x0:x1]
    expected = masked_iou_dice(comp.masks["low_res"][y0:y1, x0:x1], crop_gt, BLOCK)
    if w.scores["low_res"]["masked_iou"] is not None:
        assert w.scores["low_res"]["masked_iou"] == pytest.approx(expected[0])

    # a second run reads the predictions from the cache
    assert w.run()
    qtbot.waitUntil(lambda: w.comparison is not comp and w.worker is None, timeout=TIMEOUT_MS)
    wait_idle(qtbot, w)
    assert all(w.comparison.cached.values())
    assert len([ly for ly in viewer.layers if ly.name.startswith("boundary: ")]) == 3


def _rgb(colour) -> np.ndarray:
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(colour)[0][:3]


def test_bad_input_notifies(make_napari_viewer, qtbot, data, tmp_path, messages):
    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    # no model
    assert not w.run()
    assert "no model" in messages["error"][-1]
    assert not w.add_model(str(tmp_path))
    assert "Not a trained model" in messages["error"][-1]
    assert w.add_model(str(data / "models" / "a"))
    # ground truth of the wrong size (a labels layer covering half the slide)
    viewer.add_labels(np.ones((240, 300), np.uint8), name="half", scale=(MPP, MPP))
    w.gt_combo.setCurrentText("half")
    assert w.run()
    wait_idle(qtbot, w)
    assert "wrong size" in messages["error"][-1]
    # malformed GeoJSON
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"')
    w.gt_combo.setCurrentText("file (below)")
    w.gt_path.setText(str(bad))
    assert w.run()
    wait_idle(qtbot, w)
    assert "bad JSON" in messages["error"][-1]
    assert w.comparison is None
    # nothing to evaluate or export yet
    assert not w.evaluate() and "Nothing to evaluate" in messages["error"][-1]


def _red_pixels(viewer, w, line_width: float) -> int:
    """Pixels of the canvas drawn in the ground truth's red at this line width (the ground
    truth's boundary shown alone)."""
    w.line_width.setValue(line_width)
    w.update_line_width()
    shown = {ly.name: ly.visible for ly in viewer.layers}
    for ly in viewer.layers:
        ly.visible = ly.name == "boundary: ground truth"
    img = viewer.screenshot(canvas_only=True, flash=False)
    for ly in viewer.layers:
        ly.visible = shown[ly.name]
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 90) & (b < 90)).sum())


def test_renamed_layers_stay_usable(make_napari_viewer, qtbot, data, tmp_path, messages):
    """Renaming the slide or ground-truth layer updates the choices (was a KeyError)."""
    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    viewer.layers["s"].name = "my slide"
    viewer.layers["s_gt"].name = "my truth"
    assert w.slide_combo.currentText() == "my slide"
    assert w.gt_combo.currentText() == "my truth"
    assert w._ground_truth(MPP)[0].shape[-2:] == (480, 600)
    w.add_model(str(data / "models" / "a"))
    assert w.run()
    w.cancel()
    wait_idle(qtbot, w)
    assert not messages["error"]


def test_a_failed_drawing_step_or_a_cancel_never_leaves_the_widget_stuck(
    make_napari_viewer, qtbot, data, tmp_path, messages, monkeypatch
):
    """The layers go in one per event-loop turn: an error in one step ends the run (Run
    usable again), and Cancel pressed while they go in stops the evaluation."""
    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    w.add_model(str(data / "models" / "a"))
    assert w.run()
    wait_idle(qtbot, w)
    assert w.scores is not None  # a normal run evaluates
    from napari_lsr.compare import _own

    first = [ly for ly in viewer.layers if _own(ly)]
    batches = []
    viewer.layers.events.begin_batch.connect(lambda e: batches.append(e))
    assert w.run()  # a second run swaps every old layer for a new one, removing in one batch
    wait_idle(qtbot, w)
    second = [ly for ly in viewer.layers if _own(ly)]
    assert [ly.name for ly in second] == [ly.name for ly in first]
    assert not {id(ly) for ly in first} & {id(ly) for ly in second}
    assert len(batches) == 1

    def boom(layers):
        raise RuntimeError("simulated: napari could not remove a layer")

    monkeypatch.setattr(w, "_remove_layers", boom)
    assert w.run()
    wait_idle(qtbot, w)
    assert w.run_btn.isEnabled() and not w._drawing
    assert any("Drawing the comparison failed" in m for m in messages["error"])
    assert w.status.text().startswith("drawing failed")
    monkeypatch.undo()

    show = w._show

    def cancel_while_drawing(result):
        show(result)
        w.cancel()

    monkeypatch.setattr(w, "_show", cancel_while_drawing)
    w.scores = None
    assert w.run()
    wait_idle(qtbot, w)
    assert w.scores is None and w.status.text() == "cancelled: boundaries drawn, not evaluated"
    assert w.run_btn.isEnabled()


def test_export_refuses_the_users_file_and_stays_usable(
    make_napari_viewer, qtbot, data, tmp_path, messages
):
    """The user's QuPath ground truth, named after the slide in the export folder (and the
    very ground truth compared), is not replaced by Export GeoJSON: the refusal names the
    file in the status line and a notification, nothing is written, the widget goes on."""
    out = tmp_path / "out"
    out.mkdir()
    gt = out / "s_ground_truth.geojson"
    square = [[100, 100], [400, 100], [400, 400], [100, 400], [100, 100]]
    props = {"objectType": "annotation", "classification": {"name": "Tumor"}, "note": "mine"}
    feature = {"type": "Feature", "properties": props,
               "geometry": {"type": "Polygon", "coordinates": [square]}}  # fmt: skip
    gt.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    mine = gt.read_bytes()
    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    w.add_model(str(data / "models" / "a"))
    w.gt_combo.setCurrentText("file (below)")
    w.gt_path.setText(str(gt))
    assert w.run()
    wait_idle(qtbot, w)
    assert w.scores is not None and not messages["error"]

    assert w.export_geojson()
    assert not w.cancel_btn.isEnabled()  # an export cannot stop part-way
    wait_idle(qtbot, w)
    assert gt.read_bytes() == mine and sorted(p.name for p in out.iterdir()) == [gt.name]
    assert "not exported" in w.status.text() and str(gt) in w.status.text()
    assert len(messages["error"]) == 1 and str(gt) in messages["error"][0]
    assert "refusing to overwrite" in messages["error"][0] and w.exported == []

    # still usable: the other exports go ahead; with the file moved away, so does GeoJSON
    assert w.geojson_btn.isEnabled() and w.export_results()
    wait_idle(qtbot, w)
    assert (out / "s_results.json").is_file() and w.status.text().startswith("wrote")
    gt.rename(tmp_path / "my_gt.geojson")
    assert w.export_geojson()
    wait_idle(qtbot, w)
    assert (out / "s_ground_truth.geojson").is_file() and len(messages["error"]) == 1


def test_a_run_that_cannot_be_read_is_named_once(make_napari_viewer, data, tmp_path, messages):
    """A corrupt run left the model list without a word, and Run then said 'no model
    chosen', pointing the user at the wrong cause."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(data / "models", models)
    (models / "a" / "latest.json").write_text("{trunc")
    w = open_widget(make_napari_viewer(), data, tmp_path)
    w.model_folder.setText(str(models))
    w.refresh_models()
    w.refresh_models()  # the same problem again: not warned twice
    assert w.model_list.count() == 0
    assert len(messages["warning"]) == 1, messages
    assert "1 run(s) left out" in messages["warning"][0] and "latest.json" in messages["warning"][0]


def test_closing_the_dock_during_a_run_stops_it_and_draws_nothing(
    make_napari_viewer, qtbot, data, tmp_path, messages
):
    """Closing the dock did not stop a run: it went on to the end, then added its layers to
    the viewer and scored them, from a widget the user had closed."""
    from napari_lsr.compare import _own

    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    w.add_model(str(data / "models" / "a"))
    before = [ly.name for ly in viewer.layers]
    assert w.run()
    viewer.window.remove_dock_widget(w)  # the dock's ✕
    assert w._cancel.is_set()
    wait_idle(qtbot, w)
    qtbot.wait(200)  # any drawing step left would run now
    assert [ly.name for ly in viewer.layers] == before
    assert not any(_own(ly) for ly in viewer.layers)
    assert w.comparison is None and w.scores is None
    assert not messages["error"] and not messages["info"]
    w.deleteLater()  # out of the dock, napari no longer owns it (its viewer check counts it)
    del w
    qtbot.wait(50)


def test_a_closed_dock_lets_go_of_the_comparisons_arrays(
    make_napari_viewer, qtbot, data, tmp_path, messages
):
    """A comparison replaced by the next is freed; the dock's ✕ leaves the widget alive
    (Qt's connections to its lambdas, and a lambda on the camera's zoom event napari held),
    and with it the slide-sized masks, probability maps and band of its last comparison:
    they are let go; the layers drawn stay."""
    import gc
    import weakref

    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    w.add_model(str(data / "models" / "a"))
    assert w.run()
    qtbot.waitUntil(lambda: w.comparison is not None and w.scores is not None, timeout=TIMEOUT_MS)
    wait_idle(qtbot, w)
    first = weakref.ref(w.comparison)
    assert w.run()  # a second comparison replaces the first: its arrays go (napari's
    # create_worker kept every worker, and the comparison its closure held, for good)
    qtbot.waitUntil(
        lambda: w.comparison is not first() and w.scores is not None, timeout=TIMEOUT_MS
    )
    wait_idle(qtbot, w)
    # (the pool thread that ran a worker holds its arguments until it has returned, a
    # moment after the worker's "finished" reached the widget)
    freed = lambda ref: gc.collect() >= 0 and ref() is None  # noqa: E731
    qtbot.waitUntil(lambda: freed(first), timeout=5000)
    drawn = [ly.name for ly in viewer.layers]
    comp = weakref.ref(w.comparison)
    viewer.window.remove_dock_widget(w)  # the dock's ✕
    assert w.comparison is None and w._band_data is None
    qtbot.waitUntil(lambda: freed(comp), timeout=5000)
    assert [ly.name for ly in viewer.layers] == drawn
    from napari_lsr.viewer_compat import camera as camera_of

    camera = camera_of(viewer)
    camera.zoom = camera.zoom * 2  # the closed widget's outline width follows: no error
    qtbot.wait(200)  # (after the zoom timer's 60 ms)
    assert not messages["error"]
    w.deleteLater()  # out of the dock, napari no longer owns it
    qtbot.wait(50)


def test_closing_the_dock_while_the_layers_go_in_finishes_them_unscored(
    make_napari_viewer, qtbot, data, tmp_path, messages, monkeypatch
):
    """Closed after the old layers were removed, the run left half a comparison."""
    from napari_lsr.compare import _own

    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    w.add_model(str(data / "models" / "a"))
    assert w.run()
    wait_idle(qtbot, w)
    full = sorted(ly.name for ly in viewer.layers if _own(ly))
    show = w._show

    def close_while_drawing(result):
        show(result)
        viewer.window.remove_dock_widget(w)

    monkeypatch.setattr(w, "_show", close_while_drawing)
    w.scores = None
    assert w.run()
    wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: not w._drawing, timeout=TIMEOUT_MS)
    assert sorted(ly.name for ly in viewer.layers if _own(ly)) == full
    assert w.scores is None and w.status.text() == "cancelled: boundaries drawn, not evaluated"
    monkeypatch.undo()
    w.deleteLater()  # out of the dock, napari no longer owns it (its viewer check counts it)
    qtbot.wait(50)


def test_close_watch_sees_the_dock_closed_or_the_window_closed_not_a_hidden_tab(qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

    from napari_lsr.closing import CloseWatch

    def docked() -> tuple[QMainWindow, QWidget, list[str]]:
        win = QMainWindow()
        qtbot.addWidget(win)
        inner, dock = QWidget(), QDockWidget("d")
        dock.setWidget(inner)
        win.addDockWidget(Qt.RightDockWidgetArea, dock)
        win.show()
        qtbot.waitExposed(win)
        calls: list[str] = []
        return win, inner, calls

    win, inner, calls = docked()
    watch = CloseWatch(inner, lambda: calls.append("closed"))
    inner.parent().hide()  # a dock tabbed behind another: still there
    inner.parent().show()
    assert calls == [] and not watch.closed
    watch.stop()
    dock = inner.parent()
    dock.setFloating(True)  # a run started in a floating dock (a window of its own) ...
    qtbot.wait(50)
    watch = CloseWatch(inner, lambda: calls.append("closed"))
    dock.setFloating(False)  # ... docked back meanwhile: hidden as a window, not closed
    qtbot.wait(50)
    assert calls == [] and not watch.closed
    inner.setParent(None)  # napari's remove_dock_widget
    assert calls == ["closed"] and watch.closed
    win.close()
    assert calls == ["closed"]  # once

    win, inner, calls = docked()
    watch = CloseWatch(inner, lambda: calls.append("closed"))
    win.close()
    assert calls == ["closed"]
    watch.stop()

    win, inner, calls = docked()
    watch = CloseWatch(inner, lambda: calls.append("closed"))
    watch.stop()  # the work ended: closing later calls nothing
    win.close()
    assert calls == []


def test_with_two_cases_open_grid_and_truth_follow_the_slide(
    make_napari_viewer, data, tmp_path, messages
):
    """Cases s and u: choosing slide u kept s's grid and ground truth, and Compare scored u
    against the other slide's truth without a word."""
    import shutil

    for suffix in (".tif", "_grid.npy", "_grid.json", "_gt.tif"):
        shutil.copy(data / f"s{suffix}", tmp_path / f"u{suffix}")
    viewer = make_napari_viewer()
    w = open_widget(viewer, data, tmp_path)
    for name in ("u.tif", "u_grid.npy", "u_gt.tif"):
        viewer.open(tmp_path / name, plugin="napari-lsr")
    assert (w.slide_combo.currentText(), w.grid_combo.currentText(), w.gt_combo.currentText()) == (
        "s", "s_grid p(cancer)", "s_gt",
    )  # fmt: skip
    w.slide_combo.setCurrentText("u")
    assert (w.grid_combo.currentText(), w.gt_combo.currentText()) == ("u_grid p(cancer)", "u_gt")
    w.slide_combo.setCurrentText("s")
    assert (w.grid_combo.currentText(), w.gt_combo.currentText()) == ("s_grid p(cancer)", "s_gt")
    assert not messages["error"]


def test_exports_are_named_as_lsr_predict_names_the_slide(qtbot, tmp_path):
    """An OME-TIFF slide's exports are ``case_*`` (not ``case.ome_*``): the name QuPath's
    getNameWithoutExtension and ``lsr predict``'s folder give it."""
    from types import SimpleNamespace

    from qtpy.QtWidgets import QLineEdit

    from napari_lsr.compare import CompareWidget

    folder = QLineEdit(str(tmp_path))
    qtbot.addWidget(folder)
    for file, stem in [("case.ome.tif", "case"), ("CASE.OME.TIFF", "CASE"), ("s.svs", "s")]:
        widget = SimpleNamespace(
            comparison=SimpleNamespace(slide_path=str(tmp_path / file)), export_folder=folder
        )
        assert CompareWidget._export_target(widget) == (tmp_path, stem)
