"""npe2 writers: shapes -> QuPath GeoJSON (level-0 px, holes kept), labels -> TIFF (µm/px)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely.geometry
import tifffile

from lsr.geojson import import_geojson, mask_to_polygons
from lsr.slide import open_slide
from napari_lsr import _writer


def rings_of(mask: np.ndarray) -> list[np.ndarray]:
    from lsr.compare import polygon_rings

    return polygon_rings(mask_to_polygons(mask, simplify_tolerance=0))


def test_boundary_rings_keep_holes_and_go_to_level0(tmp_path) -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:30, 10:45] = True
    mask[10:20, 20:30] = False  # a hole
    mask[33:38, 2:6] = True  # a second part
    attrs = {
        "name": "boundary: ground truth",
        "scale": (8.0, 8.0),  # 8 µm per working px
        "translate": (0.0, 0.0),
        "shape_type": ["path"] * 3,
        "metadata": {"lsr_boundary": {"name": "Tumor", "colour": [255, 0, 0], "level0_mpp": 2.0}},
    }
    out = tmp_path / "gt.geojson"
    assert _writer.write_shapes_geojson(str(out), rings_of(mask), attrs) == [str(out)]
    geom = import_geojson(out)
    want = shapely.affinity.scale(mask_to_polygons(mask, simplify_tolerance=0), 4, 4, origin=(0, 0))
    assert geom.symmetric_difference(want).area == pytest.approx(0, abs=1e-6)
    assert geom.area == pytest.approx(mask.sum() * 16)  # 4x4 level-0 px per working px
    feat = json.loads(out.read_text())["features"][0]
    assert feat["properties"]["classification"] == {"name": "Tumor", "color": [255, 0, 0]}
    assert shapely.geometry.shape(feat["geometry"]).is_valid


def test_drawn_shapes_are_united_and_lines_skipped(tmp_path) -> None:
    square = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)  # (row, col)
    overlap = square + 5
    ellipse = np.array([[20, 20], [20, 40], [30, 40], [30, 20]], float)
    line = np.array([[0, 0], [50, 50]], float)
    attrs = {"name": "drawn", "scale": (1.0, 1.0), "translate": (0.0, 0.0),
             "shape_type": ["rectangle", "polygon", "ellipse", "line"],
             "edge_color": np.array([[0.0, 0.0, 1.0, 1.0]] * 4),
             "metadata": {"lsr_boundary": {"level0_mpp": 1.0}}}  # fmt: skip
    out = tmp_path / "d.geojson"
    with pytest.warns(UserWarning, match="open line"):
        _writer.write_shapes_geojson(str(out), [square, overlap, ellipse, line], attrs)
    geom = import_geojson(out)
    assert geom.area == pytest.approx(100 + 100 - 25 + np.pi * 5 * 10, rel=0.01)
    cls = json.loads(out.read_text())["features"][0]["properties"]["classification"]
    assert cls == {"name": "drawn", "color": [0, 0, 255]}


def test_empty_shapes_notify(tmp_path, monkeypatch) -> None:
    got: list[str] = []
    monkeypatch.setattr(_writer, "_notify", got.append)
    attrs = {"name": "x", "metadata": {"lsr_boundary": {"level0_mpp": 1.0}}}
    assert _writer.write_shapes_geojson(str(tmp_path / "e.geojson"), [], attrs) == []
    assert "no area" in got[0] and not (tmp_path / "e.geojson").exists()


def test_labels_to_tiff_keeps_values_and_pixel_size(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (300, 200)).astype(np.int32)
    out = tmp_path / "l.tif"
    assert _writer.write_labels_tiff(str(out), labels, {"scale": (8.33, 8.33)}) == [str(out)]
    np.testing.assert_array_equal(_level0(out), labels)
    with open_slide(out) as s:
        assert s.mpp == pytest.approx(8.33, rel=1e-4)
    got: list[str] = []
    monkeypatch.setattr(_writer, "_notify", got.append)
    assert _writer.write_labels_tiff(str(tmp_path / "n.tif"), -labels - 1, {}) == []
    assert "0..65535" in got[0]


def test_labels_pyramid_holds_only_the_layers_labels(tmp_path) -> None:
    """Lower levels are what QuPath and napari show zoomed out: no invented label values."""
    labels = np.zeros((1100, 900), np.int32)
    labels[::2] = 1
    labels[:, ::3] = 3  # every 2×2 block mixes labels: a mean would make 1s and 2s
    out = tmp_path / "l.tif"
    assert _writer.write_labels_tiff(str(out), labels, {"scale": (2.0, 2.0)}) == [str(out)]
    with tifffile.TiffFile(out) as tf:
        levels = [lv.asarray() for lv in tf.series[0].levels]
    assert len(levels) >= 2
    for level in levels:
        assert set(np.unique(level)) <= {0, 1, 3}
    np.testing.assert_array_equal(levels[1], labels[::2, ::2])


def _level0(path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return tf.series[0].levels[0].asarray()


def test_multiscale_labels_layer_writes_level0(tmp_path) -> None:
    """napari's MultiScaleData (not a list): level 0 with level 0's µm/px, not the coarsest."""
    from napari.layers import Labels

    level0 = np.zeros((1024, 768), np.uint8)
    level0[100:600, 200:500] = 1
    layer = Labels([level0, level0[::2, ::2], level0[::4, ::4]], scale=(8.33, 8.33))
    data, attrs, _kind = layer.as_layer_data_tuple()
    assert type(data).__name__ == "MultiScaleData"
    out = tmp_path / "gt_gt.tif"
    assert _writer.write_labels_tiff(str(out), data, attrs) == [str(out)]
    np.testing.assert_array_equal(_level0(out), level0)
    with open_slide(out) as s:
        assert s.mpp == pytest.approx(8.33, rel=1e-4)


def test_a_folder_at_the_target_notifies_instead_of_raising(tmp_path, monkeypatch) -> None:
    """The writers caught LsrInputError only: an OSError (a folder named like the file, no
    permission) escaped to napari as an uncaught exception."""
    got: list[str] = []
    monkeypatch.setattr(_writer, "_notify", got.append)
    (tmp_path / "d.tif").mkdir()
    labels = np.ones((8, 8), np.uint8)
    assert _writer.write_labels_tiff(str(tmp_path / "d.tif"), labels, {"scale": (1, 1)}) == []
    assert "Cannot write the TIFF" in got[-1] and "d.tif" in got[-1]
    (tmp_path / "d.geojson").mkdir()
    square = [np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)]
    attrs = {"name": "x", "metadata": {"lsr_boundary": {"level0_mpp": 1.0}}}
    assert _writer.write_shapes_geojson(str(tmp_path / "d.geojson"), square, attrs) == []
    assert "Cannot write the GeoJSON" in got[-1] and "d.geojson" in got[-1]


def test_shapes_are_cut_to_the_slide(tmp_path, monkeypatch) -> None:
    """A drawn square half off a 20 x 30 px slide keeps its on-slide half (named in a
    warning); shapes wholly off it are refused; a Compare boundary layer's overhang (its
    rounded working grid) is cut silently by its own record of the slide's size."""
    monkeypatch.setattr(_writer, "_viewer_slide", lambda: {"mpp": 1.0, "shape": [20, 30]})
    square = np.array([[10, 20], [10, 40], [30, 40], [30, 20]], float)  # (row, col)
    attrs = {"name": "drawn", "scale": (1.0, 1.0), "translate": (0.0, 0.0),
             "shape_type": ["polygon"]}  # fmt: skip
    out = tmp_path / "d.geojson"
    with pytest.warns(UserWarning, match=r"d\.geojson: 75 % of the shapes' area lay off"):
        assert _writer.write_shapes_geojson(str(out), [square], attrs) == [str(out)]
    geom = import_geojson(out, slide_shape_level0=(20, 30))
    assert geom.equals(shapely.geometry.box(20, 10, 30, 20))
    got: list[str] = []
    monkeypatch.setattr(_writer, "_notify", got.append)
    off = tmp_path / "off.geojson"
    assert _writer.write_shapes_geojson(str(off), [square + 100], attrs) == []
    assert "off the slide (30 x 20 level-0 px)" in got[-1] and not off.exists()

    monkeypatch.setattr(_writer, "_viewer_slide", lambda: None)
    ring = np.array([[0, 0], [0, 10.25], [5.25, 10.25], [5.25, 0], [0, 0]], float)
    meta = {"key": "intra", "level0_mpp": 2.0, "level0_shape": [10, 20]}  # 4 µm per px
    attrs = {"name": "b", "scale": (4.0, 4.0), "shape_type": ["path"],
             "metadata": {"lsr_boundary": meta}}  # fmt: skip
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _writer.write_shapes_geojson(str(out), [ring], attrs) == [str(out)]
    assert import_geojson(out, slide_shape_level0=(10, 20)).equals(
        shapely.geometry.box(0, 0, 20, 10)
    )


def test_writers_never_replace_a_slide_notes_or_a_file_a_layer_is_open_from(
    tmp_path, monkeypatch
) -> None:
    """`layer.save()` asks nobody: the labels writer replaced the open slide, the shapes
    writer a notes file. A file of the writer's own kind is replaced (napari's Save dialog
    has asked), unless a layer is open from it."""
    from lsr.slide import write_pyramidal_tiff

    got: list[str] = []
    monkeypatch.setattr(_writer, "_notify", got.append)
    monkeypatch.setattr(_writer, "_layer_sources", set)
    slide = tmp_path / "myslide.tif"
    write_pyramidal_tiff(slide, np.full((64, 64, 3), 200, np.uint8), mpp=1.0)
    before = slide.read_bytes()
    labels = np.ones((8, 8), np.uint8)
    assert _writer.write_labels_tiff(str(slide), labels, {"scale": (1, 1)}) == []
    assert "is not a one-channel (labels or mask) image" in got[-1] and "myslide.tif" in got[-1]
    assert slide.read_bytes() == before
    notes = tmp_path / "notes.geojson"
    notes.write_text("my notes")
    square = [np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)]
    attrs = {"name": "x", "metadata": {"lsr_boundary": {"level0_mpp": 1.0}}}
    assert _writer.write_shapes_geojson(str(notes), square, attrs) == []
    assert "is not a GeoJSON file" in got[-1] and notes.read_text() == "my notes"

    mask = tmp_path / "mask.tif"  # the writers' own kinds are replaced
    assert _writer.write_labels_tiff(str(mask), labels, {"scale": (1, 1)}) == [str(mask)]
    assert _writer.write_labels_tiff(str(mask), 2 * labels, {"scale": (1, 1)}) == [str(mask)]
    assert _level0(mask).max() == 2
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
    }
    layouts = {  # every GeoJSON layout import_geojson reads is replaced
        "collection": json.dumps({"type": "FeatureCollection", "features": []}),
        "qupath_list": json.dumps([feature]),  # QuPath's default export
        "bare": json.dumps(feature["geometry"]),
        "bom": "\ufeff" + json.dumps([feature]),
    }  # fmt: skip
    for name, text in layouts.items():
        qupath = tmp_path / f"{name}.geojson"
        qupath.write_text(text, encoding="utf-8")
        assert _writer.write_shapes_geojson(str(qupath), square, attrs) == [str(qupath)], name
        assert import_geojson(qupath).area == pytest.approx(16)

    monkeypatch.setattr(_writer, "_layer_sources", lambda: {mask.resolve(), qupath.resolve()})
    assert _writer.write_labels_tiff(str(mask), labels, {"scale": (1, 1)}) == []
    assert "a layer in napari is open from this file" in got[-1] and _level0(mask).max() == 2
    assert _writer.write_shapes_geojson(str(qupath), square, attrs) == []
    assert "open from this file" in got[-1]


def test_nan_shapes_and_labels_are_notified_not_raised(tmp_path, monkeypatch) -> None:
    got: list[str] = []
    monkeypatch.setattr(_writer, "_notify", got.append)
    square = np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)
    attrs = {"name": "x", "metadata": {"lsr_boundary": {"level0_mpp": 1.0}}}
    bad = square.copy()
    bad[1, 0] = np.nan
    assert _writer.write_shapes_geojson(str(tmp_path / "n.geojson"), [bad], attrs) == []
    assert "not a number (NaN or infinite)" in got[-1] and "n.geojson" in got[-1]
    nan_mpp = {"name": "x", "metadata": {"lsr_boundary": {"level0_mpp": float("nan")}}}
    assert _writer.write_shapes_geojson(str(tmp_path / "m.geojson"), [square], nan_mpp) == []
    assert "pixel size is nan" in got[-1] and "m.geojson" in got[-1]
    labels = np.ones((8, 8))
    labels[2, 2] = np.nan
    assert _writer.write_labels_tiff(str(tmp_path / "l.tif"), labels, {"scale": (1, 1)}) == []
    assert "whole numbers" in got[-1]
    assert _writer.write_labels_tiff(str(tmp_path / "e.tif"), np.zeros((0, 0)), {}) == []
    assert not any(tmp_path.iterdir())
