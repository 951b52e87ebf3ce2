"""The count-table annotator in a real (headless) viewer, driven by simulated key presses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lsr.counttable import CountTable
from lsr.grid import BlockGrid, save_grid
from lsr.slide import write_pyramidal_tiff

napari = pytest.importorskip("napari")
from qtpy.QtCore import Qt  # noqa: E402

from napari_lsr.annotator import CONTEXT_BLOCKS, _camera  # noqa: E402

H, W, B, MPP = 480, 600, 120, 8.0  # slide working px, block px, µm/px -> 4 x 5 blocks


def write_slide(d: Path, rows: int = 4) -> tuple[Path, Path]:
    """A pink tissue rectangle on white glass, and a grid with every bin on tissue."""
    img = np.full((H, W, 3), 245, np.uint8)
    img[:, 120:] = (200, 120, 170)  # columns 1..4 of blocks are tissue, column 0 glass
    write_pyramidal_tiff(d / "s.tif", img, mpp=MPP, tile=256, compression="zlib", min_size=128)
    probs = np.tile(np.array([0.05, 0.25, 0.55, 0.97, 0.35], np.float32), (rows, 1))
    probs[0, 0] = np.nan  # no label
    save_grid(BlockGrid(probs, B), d / "s_grid.npy")
    (d / "s_grid.json").write_text(json.dumps({"block_px": B, "working_mpp": MPP}))
    return d / "s.tif", d / "s_grid.npy"


@pytest.fixture
def errors(monkeypatch):
    """Messages shown as napari error notifications."""
    import napari.utils.notifications as nt

    got: list[str] = []
    monkeypatch.setattr(nt, "show_error", lambda m: got.append(str(m)))
    monkeypatch.setattr(nt, "show_info", lambda m: None)
    return got


def open_annotator(viewer, slide: Path, grid: Path, expert: str = "ann"):
    viewer.open(slide, plugin="napari-lsr")
    viewer.open(grid, plugin="napari-lsr")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Count-table annotator")
    w.expert.setText(expert)
    w.tissue_only.setChecked(False)
    return w


def test_annotate_by_keys_autosave_and_resume(make_napari_viewer, qtbot, tmp_path, errors):
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    assert w.slide_combo.currentText() == "s" and w.grid_combo.currentText() == "s_grid z"
    w.per_bin.setValue(3)
    viewer.canvas.size = (432, 910)  # (h, w) screen px; the zoom must follow the canvas
    assert w.start()
    s = w.session
    assert len(s.blocks) == 15  # 5 bins (one per column), 3 of each
    assert w.bin_label.text() == "bin hidden"
    first = s.block
    qtbot.keyClicks(w.percent, "5")
    qtbot.keyClick(w.percent, Qt.Key.Key_Return)  # two keystrokes per block
    assert s.results[0].percent_cancer == 5.0 and s.current == 1
    # the camera is on the current block, outlined
    assert s.results[0].block == first.key
    blk = s.block
    outline = viewer.layers["annotator: block"].data[0]
    assert outline.min(axis=0) == pytest.approx([blk.row * B * MPP, blk.col * B * MPP])
    assert outline.max(axis=0) == pytest.approx([(blk.row + 1) * B * MPP, (blk.col + 1) * B * MPP])
    cy, cx = _camera(viewer).center[-2:]
    assert (cy, cx) == pytest.approx(((blk.row + 0.5) * B * MPP, (blk.col + 0.5) * B * MPP))
    # zoomed so that the block and half a block of context each side fill the canvas
    seen_um = 432 / _camera(viewer).zoom
    assert seen_um == pytest.approx((1 + 2 * CONTEXT_BLOCKS) * B * MPP, rel=1e-6)
    qtbot.keyClick(w.percent, Qt.Key.Key_A)  # skip: artefact
    assert s.results[1].skipped == "artefact"
    qtbot.keyClick(w.percent, Qt.Key.Key_Up)  # back to the skipped block
    assert s.current == 1
    qtbot.keyClicks(w.percent, "12,5%")
    qtbot.keyClick(w.percent, Qt.Key.Key_Enter)
    assert s.results[1].percent_cancer == 12.5 and not s.results[1].skipped
    qtbot.keyClick(w.percent, Qt.Key.Key_U)
    assert s.results[2].skipped == "unsure"
    qtbot.keyClicks(w.percent, "250")
    qtbot.keyClick(w.percent, Qt.Key.Key_Return)
    assert "not a percentage" in w.message.text() and 3 not in s.results
    qtbot.keyClick(w.percent, Qt.Key.Key_R)
    assert w.bin_label.text().startswith(f"z = {s.block.z}")
    # the autosave holds everything so far
    saved = json.loads(w.autosave.read_text())
    assert w.autosave.name == "s.tif.ann.lsr-estimates.json"
    assert saved["results"]["1"]["percent_cancer"] == 12.5
    assert saved["results"]["2"]["skipped"] == "unsure"
    # the live table: the bin of the first two blocks
    for i in (0, 1):
        z = s.blocks[i].z
        vals = [s.results[j].percent_cancer for j in (0, 1) if s.blocks[j].z == z]
        assert w.table_widget.view.cell_text(z, len(w.table_widget.view.table.class_names) + 1) == (
            str(len(vals))
        )
    empty = [b for b in range(10) if b not in {s.blocks[j].z for j in (0, 1)}]
    assert w.table_widget.view.cell_text(empty[0], 1) == "—"

    # close, reopen in a new viewer: resumes where it stopped
    viewer.close()
    viewer2 = make_napari_viewer()
    w2 = open_annotator(viewer2, slide, grid)
    w2.per_bin.setValue(3)
    assert w2.start()
    assert w2.session.results == s.results and w2.session.current == s.current
    assert w2.session.blocks == s.blocks
    assert not errors


def test_two_experts_merge_and_export(make_napari_viewer, qtbot, tmp_path, errors):
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid, expert="ann")
    w.per_bin.setValue(2)
    w.start()
    while not w.session.finished:
        qtbot.keyClicks(w.percent, "4" if w.session.block.z < 9 else "60")
        qtbot.keyClick(w.percent, Qt.Key.Key_Return)
    ann_file = w.autosave
    w.expert.setText("bob")
    w.start()
    assert w.session.expert == "bob" and w.session.n_done == 0

    def bob_records() -> None:
        qtbot.keyClicks(w.percent, "8" if w.session.block.z < 9 else "70")
        qtbot.keyClick(w.percent, Qt.Key.Key_Return)

    while len(w.session.blocks) - w.session.n_done > 1:
        bob_records()
    before = w.merge([ann_file])
    bob_records()  # the merged table stays shown and takes bob's last estimate (the Trainer
    table = w.table  # took the live table again, with bob's alone)
    assert len(table.estimates) == len(before.estimates) + 1 and w.session.finished
    assert {e.expert for e in table.estimates} == {"ann", "bob"}
    z9 = [e.percent_cancer for e in table.estimates if e.z == 9]
    assert sorted(z9) == [60, 60, 70, 70]
    assert table.eta[9, 0] == pytest.approx(0.65)
    assert table.rho[9, 0] == pytest.approx(np.std([0.6, 0.6, 0.7, 0.7], ddof=1))
    assert w.table_widget.source.currentText() == "merged: ann + bob"
    assert w.table_widget.view.cell_text(9, 1) == "65.0 ± 5.8"
    assert w.export(tmp_path / "bob.csv") and w.export(tmp_path / "bob.json")
    back = CountTable.load(tmp_path / "bob.json")
    assert {e.expert for e in back.estimates} == {"bob"} and back.n[9] == 2
    assert CountTable.load(tmp_path / "bob.csv").eta[9, 0] == pytest.approx(0.70)
    assert not errors


def test_tissue_only_and_painting(make_napari_viewer, qtbot, tmp_path, errors):
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    w.tissue_only.setChecked(True)
    assert w.start()
    qtbot.waitUntil(lambda: w.session is not None, timeout=20000)
    assert all(b.col >= 1 for b in w.session.blocks)  # column 0 is glass
    assert len(w.session.blocks) == 4 * 4
    w.paint_button.setChecked(True)
    paint = viewer.layers["annotator: cancer paint"]
    y0, x0, b = w._block_box_um()
    px = b / 100  # paint pixel, µm; napari places pixel centres at index * scale + translate
    assert paint.data.shape == (100, 100) and np.allclose(paint.scale, px)
    assert paint.translate == pytest.approx([y0 + px / 2, x0 + px / 2])
    data = np.asarray(paint.data).copy()
    data[:25, :] = 1  # a quarter of the block
    paint.data = data
    paint.events.paint(value=[])
    assert w.percent.text() == "25"
    w.record_typed()
    assert w.session.results[0].percent_cancer == 25
    assert not np.asarray(paint.data).any()  # fresh paint for the next block
    # a stroke, then napari's undo (which emits no paint event): Enter records what is painted
    paint.brush_size = 40
    paint.paint((50, 50), 1)  # (a mouse stroke's paint event comes once it is committed:)
    paint.events.paint(value=[])
    stroke = w.percent.text()
    assert float(stroke) == pytest.approx(100 * (np.asarray(paint.data) > 0).mean(), abs=0.5)
    assert float(stroke) > 5
    paint.undo()
    assert not np.asarray(paint.data).any() and w.percent.text() == stroke  # stale field …
    w.record_typed()
    assert w.session.results[1].percent_cancer == 0  # … but the block is recorded unpainted
    # coarse labels for users without a classifier, saved as a grid the reader opens
    w.paint_coarse_labels()
    coarse = viewer.layers["coarse labels (paint z)"]
    assert coarse.data.shape == (4, 5) and coarse.brush_size == 1
    z = np.zeros((4, 5), np.uint8)
    z[1:3, 2:4] = 7
    coarse.data = z
    out = w.save_coarse_grid(tmp_path / "mine")  # the grid's geometry: B px at MPP
    assert json.loads(out.with_suffix(".json").read_text())["block_px"] == B
    assert out.name == "mine_grid.npy"
    viewer.open(out, plugin="napari-lsr")
    layer = viewer.layers["mine_grid z"]
    assert np.array_equal(layer.data, z)
    assert np.allclose(layer.scale, B * MPP) and np.allclose(layer.translate, B * MPP / 2)
    assert not errors
    z[0, 0] = 12  # not a bin
    coarse.data = z
    assert w.save_coarse_grid(tmp_path / "bad") is None and "0–9" in errors[-1]
    z[0, 0] = 3
    coarse.data = z
    (tmp_path / "roi_grid.json").write_text('{"type": "FeatureCollection", "features": []}')
    assert w.save_coarse_grid(tmp_path / "roi") is None and "not a grid sidecar" in errors[-1]
    assert not (tmp_path / "roi_grid.npy").exists()  # no grid saved without its sidecar
    assert "FeatureCollection" in (tmp_path / "roi_grid.json").read_text()
    # another slide chosen: s's painting is not reused as its labels (saved at the wrong size)
    other = tmp_path / "t"
    other.mkdir()
    write_pyramidal_tiff(other / "t.tif", np.full((H + B, W, 3), 200, np.uint8), mpp=MPP,
                         tile=256, compression="zlib", min_size=128)  # fmt: skip
    viewer.open(other / "t.tif", plugin="napari-lsr")
    w.slide_combo.setCurrentText("t")
    painted = np.asarray(coarse.data).copy()
    w.paint_coarse_labels()
    assert "holds the coarse labels of s.tif (4 x 5 blocks; t.tif needs 5 x 5)" in errors[-1]
    assert np.array_equal(coarse.data, painted) and coarse.data.shape == (4, 5)
    w.slide_combo.setCurrentText("s")
    # ground truth and Compare's layers are no low-res labels
    mask = np.zeros((H, W), np.uint8)
    viewer.add_labels(mask, name="gt", metadata={"lsr_slide": {"path": "x_gt.tif"}})
    viewer.add_image(mask, name="p: a", metadata={"lsr_compare": {"key": "a"}})
    choices = [w.grid_combo.itemText(i) for i in range(w.grid_combo.count())]
    assert "gt" not in choices and "p: a" not in choices and "s_grid z" in choices


def test_bad_inputs_notify_and_overwrite_nothing(make_napari_viewer, tmp_path, errors):
    slide, grid = write_slide(tmp_path, rows=6)  # 6 rows of blocks on a 4-row slide
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    assert not w.start() and w.session is None
    assert "does not fit" in errors[-1] and "s_grid.npy" in errors[-1]
    # a slide layer without pixel size
    viewer.add_image(np.zeros((480, 600, 3), np.uint8), name="plain", rgb=True)
    w.slide_combo.setCurrentText("plain")
    assert not w.start() and "no pixel size" in errors[-1]
    # a corrupt autosave is kept aside, a new session starts
    write_slide(tmp_path)  # a fitting grid again
    viewer.layers.clear()
    viewer.open(slide, plugin="napari-lsr")
    viewer.open(grid, plugin="napari-lsr")
    corrupt = tmp_path / "s.tif.ann.lsr-estimates.json"
    corrupt.write_text("{not json")
    assert w.start() and w.session.n_done == 0
    assert "corrupt" in errors[-1] and "kept as" in errors[-1]
    kept = list(tmp_path.glob("s.tif.ann.lsr-estimates.corrupt-*.json"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"


def test_grid_hidden_while_the_bin_is_hidden(make_napari_viewer, qtbot, tmp_path, errors):
    """The grid layers tint each block by its bin: off while annotating blind, back after."""
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    z_layer, probs_layer = viewer.layers["s_grid z"], viewer.layers["s_grid p(cancer)"]
    assert z_layer.visible and not probs_layer.visible
    w.per_bin.setValue(2)
    assert w.start()
    assert not z_layer.visible and not probs_layer.visible
    qtbot.keyClick(w.percent, Qt.Key.Key_R)  # reveal: the bin may be seen
    assert w.reveal.isChecked() and z_layer.visible and not probs_layer.visible
    qtbot.keyClick(w.percent, Qt.Key.Key_R)
    assert not z_layer.visible
    qtbot.keyClicks(w.percent, "5")
    qtbot.keyClick(w.percent, Qt.Key.Key_Return)
    assert not z_layer.visible  # still hidden on the next block
    qtbot.mouseClick(w.session_button, Qt.MouseButton.LeftButton)  # back to the setup
    assert z_layer.visible and not probs_layer.visible
    assert not errors


def test_renamed_slide_layer_can_be_annotated(make_napari_viewer, tmp_path, errors):
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    viewer.layers["s"].name = "slide A"
    assert w.slide_combo.currentText() == "slide A"
    assert w.start() and w.session is not None and not errors


def test_experts_whose_names_look_alike_keep_their_own_autosaves(
    make_napari_viewer, qtbot, tmp_path, errors
):
    """Müller and Møller reduce to one safe name: Møller must not resume Müller's work."""
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid, expert="Müller")
    w.per_bin.setValue(2)
    assert w.start()
    for pct in ("10", "20", "30"):
        qtbot.keyClicks(w.percent, pct)
        qtbot.keyClick(w.percent, Qt.Key.Key_Return)
    mueller, saved = w.autosave, w.autosave.read_bytes()
    w.expert.setText("Møller")
    assert w.start()
    assert w.session.expert == "Møller" and w.session.n_done == 0 and w.autosave != mueller
    qtbot.keyClicks(w.percent, "99")
    qtbot.keyClick(w.percent, Qt.Key.Key_Return)
    assert json.loads(w.autosave.read_text())["expert"] == "Møller"
    assert mueller.read_bytes() == saved  # Müller's three estimates, untouched
    w.expert.setText("Müller")
    assert w.start() and w.autosave == mueller and w.session.n_done == 3
    assert not errors


@pytest.mark.parametrize("sub", ["", "sub"])
def test_an_autosave_folder_that_is_a_file_is_refused_at_start(
    make_napari_viewer, tmp_path, errors, sub
):
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    w.folder.setText(str(afile / sub))
    assert not w.start() and w.session is None
    assert f"{afile}: is a file" in errors[-1] and "choose another autosave folder" in errors[-1]
    assert afile.read_text() == "mine"


def test_an_autosave_folder_that_cannot_be_written_is_refused_at_start(
    make_napari_viewer, tmp_path, errors, monkeypatch
):
    """A read-only share: Start succeeded and every estimate lived in memory only (each
    Enter said "Autosave failed")."""
    import napari_lsr.annotator as ann

    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    share = tmp_path / "share"
    share.mkdir()
    w.folder.setText(str(share / "not-yet"))

    def read_only(*args, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(ann.tempfile, "TemporaryFile", read_only)
    assert not w.start() and w.session is None
    assert f"{share}: cannot write there (Read-only file system)" in errors[-1]
    assert "choose another autosave folder" in errors[-1] and not (share / "not-yet").exists()
    monkeypatch.undo()
    assert w.start() and w.session is not None  # a writable folder is taken


def test_saving_coarse_labels_replaces_only_a_coarse_grid_saved_before(
    make_napari_viewer, tmp_path, errors
):
    """The typed name becomes <name>_grid.npy: never over the classifier's or the user's file."""
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    w.paint_coarse_labels()
    z = np.zeros((4, 5), np.uint8)
    z[1, 2] = 7
    viewer.layers["coarse labels (paint z)"].data = z
    side = tmp_path / "s_grid.json"
    before = grid.read_bytes(), side.read_bytes()
    assert w.save_coarse_grid(tmp_path / "s.npy") is None  # would be s_grid.npy
    assert "s_grid.npy" in errors[-1] and "refusing to overwrite" in errors[-1]
    assert (grid.read_bytes(), side.read_bytes()) == before
    (tmp_path / "mine_grid.npy").write_bytes(b"my own data")
    out = w.save_coarse_grid(tmp_path / "mine.v2.npy")  # dots in the name are kept
    assert out == tmp_path / "mine.v2_grid.npy" and np.array_equal(np.load(out), z)
    assert (tmp_path / "mine_grid.npy").read_bytes() == b"my own data"
    z[0, 0] = 3
    viewer.layers["coarse labels (paint z)"].data = z
    assert w.save_coarse_grid(out) == out and np.load(out)[0, 0] == 3  # ours: replaced
    n = len(errors)
    assert w.save_coarse_grid(tmp_path / "mine_grid.npy") is None  # the user's, no sidecar
    assert len(errors) == n + 1 and "mine_grid.npy" in errors[-1]
    assert (tmp_path / "mine_grid.npy").read_bytes() == b"my own data"
    assert not (tmp_path / "mine_grid.json").exists()
    # s_grid.csv shares s_grid.json with the classifier's s_grid.npy: never replaced (review)
    assert w.save_coarse_grid(tmp_path / "s_grid.csv") is None
    assert "s_grid.json" in errors[-1] and "another grid" in errors[-1]
    assert (grid.read_bytes(), side.read_bytes()) == before
    assert not (tmp_path / "s_grid.csv").exists()


def test_closing_the_dock_while_tissue_is_found_starts_no_session(
    make_napari_viewer, qtbot, tmp_path, errors
):
    """The tissue search runs in a worker; closing the dock meanwhile still started the
    session when it returned: a block layer added, the camera moved, an autosave begun."""
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    w.folder.setText(str(tmp_path / "autosave"))
    w.tissue_only.setChecked(True)
    before = [ly.name for ly in viewer.layers]
    assert w.start()
    viewer.window.remove_dock_widget(w)
    qtbot.waitUntil(w.start_button.isEnabled, timeout=20000)
    qtbot.wait(100)
    assert w.session is None and [ly.name for ly in viewer.layers] == before
    assert not (tmp_path / "autosave").exists() or not any((tmp_path / "autosave").iterdir())
    assert not errors
    w.deleteLater()  # out of the dock, napari no longer owns it (its viewer check counts it)
    del w
    qtbot.wait(50)


def test_closing_the_dock_mid_session_shows_the_grid_again_and_resumes(
    make_napari_viewer, qtbot, tmp_path, errors
):
    """The dock closed while annotating blind left the grid layer hidden and the block
    outline on the canvas."""
    slide, grid = write_slide(tmp_path)
    viewer = make_napari_viewer()
    w = open_annotator(viewer, slide, grid)
    w.per_bin.setValue(2)
    assert w.start()
    z_layer = viewer.layers["s_grid z"]
    assert not z_layer.visible and "annotator: block" in viewer.layers
    qtbot.keyClicks(w.percent, "5")
    qtbot.keyClick(w.percent, Qt.Key.Key_Return)
    viewer.window.remove_dock_widget(w)
    assert z_layer.visible and "annotator: block" not in viewer.layers
    w.deleteLater()  # out of the dock, napari no longer owns it (its viewer check counts it)
    del w
    qtbot.wait(50)
    _dock, again = viewer.window.add_plugin_dock_widget("napari-lsr", "Count-table annotator")
    again.expert.setText("ann")
    again.tissue_only.setChecked(False)
    again.per_bin.setValue(2)
    assert again.start() and again.session.n_done == 1  # the autosave resumes
    assert not errors


def test_with_two_cases_open_the_grid_follows_the_slide(make_napari_viewer, tmp_path, errors):
    """Slides s and u with their grids: the annotator took the last grid (u's) for slide s
    and sampled s by u's labels without a word."""
    import shutil

    slide, grid = write_slide(tmp_path)
    for suffix in (".tif", "_grid.npy", "_grid.json"):
        shutil.copy(tmp_path / f"s{suffix}", tmp_path / f"u{suffix}")
    viewer = make_napari_viewer()
    for path in (slide, grid, tmp_path / "u.tif", tmp_path / "u_grid.npy"):
        viewer.open(path, plugin="napari-lsr")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Count-table annotator")
    assert (w.slide_combo.currentText(), w.grid_combo.currentText()) == ("s", "s_grid z")
    w.slide_combo.setCurrentText("u")
    assert w.grid_combo.currentText() == "u_grid z"
    w.slide_combo.setCurrentText("s")
    assert w.grid_combo.currentText() == "s_grid z"
    assert not errors
