"""The Count table dock widget, opened through the npe2 manifest in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from lsr.counttable import CountTable

napari = pytest.importorskip("napari")


def open_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-lsr", "Count table")
    return widget


def test_widget_from_manifest_shows_table1(make_napari_viewer):
    viewer = make_napari_viewer()
    w = open_widget(viewer)
    assert w.view.rowCount() == 10
    assert w.view.cell_text(0, 0) == "0–20"
    assert w.view.cell_text(0, 1) == "0.0 ± 0.1"
    assert w.view.cell_text(9, 1) == "70.0 ± 5.0"
    assert w.view.cell_text(9, 2) == "30.0 ± 5.0"
    w.compare.setChecked(True)
    assert w.view.columnCount() == 6
    assert w.view.cell_text(8, 2) == "20.0 ± 2.0"


def test_widget_loads_file_and_reports_bad_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    w = open_widget(viewer)
    z = np.repeat(np.arange(10), 3)
    pc = np.array([5.0 * b + (i * 2.0) for b, i in zip(z, np.tile([0, 1, 2], 10), strict=True)])
    t = CountTable.from_estimates(z, pc)
    t.to_csv(tmp_path / "mine.csv")
    w.load(tmp_path / "mine.csv")
    assert w.view.cell_text(3, 1) == f"{pc[z == 3].mean():.1f} ± {pc[z == 3].std(ddof=1):.1f}"
    assert w.view.cell_text(3, 3) == "3"
    bad = tmp_path / "bad.csv"
    bad.write_text("bin,cancer_mean\n0,1\n")
    assert w.load(bad) is None
    assert "missing column" in w.status.text() and str(bad) in w.status.text()
    assert w.view.cell_text(3, 3) == "3"  # the table shown before stays


def test_widget_highlights_a_top_bin_below_a_lower_bin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    w = open_widget(viewer)
    cancer = np.array([10.0, 20, 30, 40, 50, 60, 70, 80, 75, 47]) / 100  # top 33 points low
    CountTable(eta=np.stack([cancer, 1 - cancer], 1), rho=np.full((10, 2), 0.1)).to_json(
        tmp_path / "low_top.json"
    )
    w.load(tmp_path / "low_top.json")
    assert "33 points below bin 80–90% (80.0%)" in w.view.item(9, 1).toolTip()
    assert w.view.item(8, 1).toolTip() == ""
    assert w.view.item(9, 1).background() != w.view.item(8, 1).background()
    assert "1 bin(s) flagged" in w.status.text()


def test_table_with_other_bins_cannot_go_beside_paper_table1(make_napari_viewer, tmp_path):
    """A 2-bin table: the "beside paper Table 1" box is disabled and says why (no traceback)."""
    viewer = make_napari_viewer()
    w = open_widget(viewer)
    two = CountTable(
        eta=np.array([[0.1, 0.9], [0.6, 0.4]]),
        rho=np.full((2, 2), 0.1),
        edges=(0.0, 0.5, 1.0),
    )
    two.to_json(tmp_path / "two.json")
    w.compare.setChecked(True)  # ticked beforehand: the 2-bin table shows alone
    assert w.load(tmp_path / "two.json") is not None
    assert w.view.rowCount() == 2 and w.view.columnCount() == 4
    assert not w.compare.isEnabled() and "other bins (10, not 2)" in w.status.text()
    w.source.setCurrentText("Paper Table 1")
    assert w.compare.isEnabled() and w.view.columnCount() == 6
