"""Tests for lsr.geojson: mask outlines, rasterisation, QuPath GeoJSON export and import."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box, shape

from lsr.errors import LsrInputError
from lsr.geojson import (
    FIG4_COLOURS,
    export_geojson,
    import_geojson,
    mask_to_polygons,
    polygons_to_mask,
)


def square_with_hole() -> np.ndarray:
    m = np.zeros((40, 50), bool)
    m[5:35, 10:40] = True  # 30 x 30
    m[15:25, 20:30] = False  # 10 x 10 hole
    return m


def blob_with_hole(h: int = 120, w: int = 150) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    outer = ((yy - 60) / 45.0) ** 2 + ((xx - 75) / 60.0) ** 2 < 1
    hole = ((yy - 55) / 12.0) ** 2 + ((xx - 80) / 18.0) ** 2 < 1
    return outer & ~hole


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# --- mask -> polygons -> mask ------------------------------------------------------------


def test_square_with_hole_scaled_area_and_bounds_exact():
    scale = 4.17 / 0.25  # working -> level 0 at 40X
    mp = mask_to_polygons(square_with_hole(), scale=scale, offset=(100, 200))
    assert isinstance(mp, MultiPolygon) and len(mp.geoms) == 1
    poly = mp.geoms[0]
    assert len(poly.interiors) == 1
    assert poly.area == pytest.approx((30 * 30 - 10 * 10) * scale**2, rel=1e-12)
    # offset (y, x) = (100, 200) working px; x = (col + 200) * scale, y = (row + 100) * scale
    assert poly.bounds == pytest.approx(
        ((10 + 200) * scale, (5 + 100) * scale, (40 + 200) * scale, (35 + 100) * scale)
    )
    expected = box(210, 105, 240, 135).difference(box(220, 115, 230, 125))
    expected = shapely.affinity.scale(expected, scale, scale, origin=(0, 0))
    assert poly.symmetric_difference(expected).area == pytest.approx(0, abs=1e-6)


def test_blob_with_hole_round_trip_iou():
    m = blob_with_hole()
    for scale in (1.0, 16.68):
        mp = mask_to_polygons(m, scale=scale)
        assert sum(len(p.interiors) for p in mp.geoms) == 1
        back = polygons_to_mask(mp, m.shape, scale=scale)
        assert iou(back, m) > 0.97
    exact = mask_to_polygons(m, simplify_tolerance=0)
    np.testing.assert_array_equal(polygons_to_mask(exact, m.shape), m)
    assert exact.area == pytest.approx(m.sum())


def test_min_area_drops_fragments_and_empty_mask():
    m = square_with_hole()
    m[0:2, 0:2] = True  # 4 px fragment
    assert len(mask_to_polygons(m).geoms) == 2
    kept = mask_to_polygons(m, min_area=10)
    assert len(kept.geoms) == 1 and kept.area == pytest.approx(800)
    assert mask_to_polygons(np.zeros((5, 5), bool)).is_empty
    with pytest.raises(LsrInputError):
        mask_to_polygons(np.zeros((2, 2, 2), bool))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 12), st.integers(1, 12)),
        min_size=1,
        max_size=6,
    )
)
def test_unsimplified_outline_rasterises_back_exactly(rects):
    m = np.zeros((32, 32), bool)
    for y, x, h, w in rects:
        m[y : y + h, x : x + w] = ~m[y : y + h, x : x + w]  # xor: holes, touching corners
    mp = mask_to_polygons(m, simplify_tolerance=0)
    assert mp.is_valid
    assert mp.area == pytest.approx(m.sum())
    np.testing.assert_array_equal(polygons_to_mask(mp, m.shape), m)


# --- export -------------------------------------------------------------------------------


def test_export_is_qupath_feature_collection_and_round_trips_through_shapely(tmp_path):
    scale = 2.0
    tumour = mask_to_polygons(blob_with_hole(), scale=scale)
    two_parts = MultiPolygon([box(0, 0, 10, 10), box(20, 20, 30, 40)])
    path = tmp_path / "boundaries.geojson"
    export_geojson(
        path, {"ground_truth": tumour, "intra_inter": two_parts, "mine": box(1, 1, 5, 5)}
    )
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    by_key = {f["properties"]["classification"]["name"]: f for f in doc["features"]}
    gt = by_key["Tumor"]
    assert gt["properties"]["objectType"] == "annotation"
    assert gt["properties"]["classification"]["color"] == list(FIG4_COLOURS["ground_truth"])
    assert gt["geometry"]["type"] == "Polygon"
    assert by_key["Intra+inter-instance"]["geometry"]["type"] == "MultiPolygon"
    assert by_key["Intra+inter-instance"]["properties"]["classification"]["color"] == [0, 0, 255]
    assert by_key["mine"]["geometry"]["type"] == "Polygon"
    for f in doc["features"]:
        polys = (
            [f["geometry"]["coordinates"]]
            if f["geometry"]["type"] == "Polygon"
            else f["geometry"]["coordinates"]
        )
        for poly in polys:
            for ring in poly:
                assert ring[0] == ring[-1] and len(ring) >= 4
    assert shape(gt["geometry"]).area == pytest.approx(tumour.area)
    assert shape(gt["geometry"]).equals(tumour)
    assert shape(by_key["Intra+inter-instance"]["geometry"]).area == pytest.approx(300)
    # and back through our importer
    back = import_geojson(path, classification="Tumor")
    assert back.equals(tumour)


def test_export_custom_names_colours_and_skips_empty(tmp_path):
    path = tmp_path / "b.geojson"
    with pytest.warns(UserWarning, match="empty") as caught:
        left_out = export_geojson(
            path,
            {"a": box(0, 0, 1, 1), "b": MultiPolygon()},
            colours={"a": (1, 2, 3)},
            names={"a": "Region A"},
        )
    # the file is named: the demo exports one per patch, and Python shows a message once
    assert str(caught[0].message) == f"{path}: 'b': empty boundary, not exported"
    assert left_out == ["b"]
    feats = json.loads(path.read_text())["features"]
    assert len(feats) == 1
    assert feats[0]["properties"]["classification"] == {"name": "Region A", "color": [1, 2, 3]}
    assert feats[0]["properties"]["color"] == [1, 2, 3]  # QuPath keeps an existing class's
    with pytest.raises(LsrInputError):
        export_geojson(path, {"a": box(0, 0, 1, 1)}, colours={"a": (300, 0, 0)})


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("boundary: Intra-instance (run-1)", "boundary - Intra-instance (run-1)"),
        ("two\nlines", "two lines"),
        ("tab\there  and\rthere", "tab here and there"),
        ("   ", "LSR prediction"),
        ("Tumor (grade 2)", "Tumor (grade 2)"),
    ],
)
def test_class_names_are_ones_qupath_takes_whole(tmp_path, name, written):
    """QuPath splits a class name at ':' into sub-classes, and refuses a blank name or one
    with a line break (the file's whole import fails); other names pass unchanged."""
    path = tmp_path / "b.geojson"
    export_geojson(path, {"a": box(0, 0, 1, 1)}, names={"a": name})
    (feat,) = json.loads(path.read_text())["features"]
    assert feat["properties"]["classification"]["name"] == written == feat["properties"]["name"]
    assert ":" not in written and written.strip() == written and written.isprintable()


def test_import_names_a_qupath_sub_class_by_its_names(tmp_path):
    """QuPath writes a derived class as {"names": ["Tumor", "Positive"]}: it is the class
    "Tumor: Positive" (QuPath's own spelling), not a feature without a class."""
    f = feature()
    f["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}
    p = write(tmp_path, {"type": "FeatureCollection", "features": [f]})
    assert import_geojson(p, classification="Tumor: Positive").area == pytest.approx(100)
    with pytest.raises(LsrInputError, match="Tumor: Positive"):
        import_geojson(p, classification="Tumor")


# --- import ------------------------------------------------------------------------------


def write(tmp_path, obj, name="in.geojson"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]


def feature(coords=SQUARE, kind="Polygon", cls="Tumor"):
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": {"objectType": "annotation", "classification": {"name": cls}},
    }


def test_import_accepts_array_feature_and_bare_geometry(tmp_path):
    arr = write(tmp_path, [feature(), feature([[[20, 20], [30, 20], [30, 30], [20, 20]]])])
    assert import_geojson(arr).area == pytest.approx(100 + 50)
    single = write(tmp_path, feature(), "f.geojson")
    assert import_geojson(single).area == pytest.approx(100)
    bare = write(tmp_path, {"type": "Polygon", "coordinates": SQUARE}, "g.geojson")
    assert import_geojson(bare).area == pytest.approx(100)


def test_import_filters_by_classification(tmp_path):
    p = write(
        tmp_path,
        {"type": "FeatureCollection", "features": [feature(), feature(cls="Stroma")]},
    )
    assert import_geojson(p, classification="Stroma").area == pytest.approx(100)
    with pytest.raises(LsrInputError, match="Stroma, Tumor"):
        import_geojson(p, classification="Necrosis")


def test_import_repairs_self_intersection_and_ignores_points(tmp_path):
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    p = write(tmp_path, [feature(bowtie), feature([5, 5], kind="Point")])
    with pytest.warns(UserWarning) as caught:
        g = import_geojson(p)
    assert g.is_valid and g.area == pytest.approx(50)
    said = [str(w.message) for w in caught]
    assert any("Point" in m for m in said)
    assert any(f"{p}, feature 0: the Polygon is not valid (Self-intersection" in m for m in said)


def test_an_invalid_ground_truth_polygon_is_repaired_with_a_warning_naming_it(tmp_path):
    """A hole outside its shell became extra cancer without a word (8200 px, not 8100)."""
    shell = [[0, 0], [90, 0], [90, 90], [0, 90], [0, 0]]
    outside = [[100, 0], [110, 0], [110, 10], [100, 10], [100, 0]]
    p = write(tmp_path, [feature([shell, outside])])
    with pytest.warns(UserWarning, match=r"feature 0: the Polygon is not valid \(Hole lies"):
        g = import_geojson(p)
    assert g.area == pytest.approx(8100 + 100)  # what make_valid makes of it, now said


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "bad JSON"),
        ({"type": "FeatureCollection"}, "features"),
        ([feature([[[0, 0], [10, 0], [10, 10], [0, 10]]])], "open ring"),
        ([feature([[[0, 0], [10, 0], [0, 0]]])], "at least 4"),
        ([feature([[[0, 0], [10, "a"], [10, 10], [0, 0]]])], "bad coordinate"),
        ([feature(SQUARE, kind="Circle")], "unknown geometry type 'Circle'"),
        ([{"type": "Feature", "geometry": {"coordinates": SQUARE}}], "type"),
        (["not a feature"], "Feature"),
        ("42", "not GeoJSON"),
    ],
)
def test_import_rejects_malformed_files(tmp_path, content, match):
    p = write(tmp_path, content, "bad.geojson")
    with pytest.raises(LsrInputError, match=match) as err:
        import_geojson(p)
    assert "bad.geojson" in str(err.value)


def test_import_rejects_coordinates_outside_slide(tmp_path):
    p = write(tmp_path, [feature([[[0, 0], [500, 0], [500, 10], [0, 10], [0, 0]]])])
    assert import_geojson(p, slide_shape_level0=(20, 600)).area == pytest.approx(5000)
    with pytest.raises(LsrInputError, match="outside the slide") as err:
        import_geojson(p, slide_shape_level0=(20, 400))
    assert "400x20" in str(err.value)


def test_import_to_mask_at_working_resolution(tmp_path):
    # a level-0 square 160..320 px on a 0.25 µm/px slide, working 1.0 µm/px (scale 4)
    poly = Polygon([(160, 160), (320, 160), (320, 320), (160, 320)])
    p = tmp_path / "roi.geojson"
    export_geojson(p, {"ground_truth": poly})
    mask = polygons_to_mask(import_geojson(p), (100, 100), scale=4.0)
    expected = np.zeros((100, 100), bool)
    expected[40:80, 40:80] = True
    np.testing.assert_array_equal(mask, expected)
