"""Tests for lsr.grid: block grids, their bins, slide fit checks and file round trips."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from lsr.counttable import PAPER_EDGES
from lsr.errors import LsrInputError
from lsr.grid import BlockGrid, load_grid, save_grid


def example_probs() -> np.ndarray:
    probs = np.array(
        [[0.0, 0.1, 0.25, np.nan], [0.5, 0.949, 0.95, 1.0], [np.nan, 0.35, 0.8, 0.2]],
        dtype=np.float32,
    )
    return probs


def test_z_bins_follow_paper_edges_and_mark_nan():
    g = BlockGrid(example_probs(), block_px=240)
    z = g.z
    assert z.dtype == np.int16
    # independent binning: count edges <= p among the inner edges
    inner = np.asarray(PAPER_EDGES[1:-1])
    for (r, c), p in np.ndenumerate(g.probs):
        if np.isnan(p):
            assert z[r, c] == -1
        else:
            assert z[r, c] == int((inner <= p).sum())
    assert z[1, 3] == 9 and z[0, 0] == 0 and z[1, 1] == 8
    np.testing.assert_array_equal(g.labelled, ~np.isnan(g.probs))


def test_from_z_keeps_bins_and_rejects_bad_ones():
    z = np.array([[0, 9], [-1, 4]])
    g = BlockGrid.from_z(z, 240, (10, 20))
    np.testing.assert_array_equal(g.z, z)
    assert np.isnan(g.probs).all()
    with pytest.raises(LsrInputError, match="outside"):
        BlockGrid.from_z(np.array([[0, 10]]), 240)
    with pytest.raises(LsrInputError, match="fractions"):
        BlockGrid(np.array([[12.0, 50.0]]), 240)


def test_block_box_uses_origin_and_block_size():
    g = BlockGrid(np.zeros((3, 4), np.float32), block_px=240, origin=(10, 20))
    assert g.block_box(0, 0) == (10, 20, 240, 240)
    assert g.block_box(2, 3) == (10 + 480, 20 + 720, 240, 240)
    with pytest.raises(IndexError):
        g.block_box(3, 0)


def test_check_fits_allows_last_partial_block_and_names_both_shapes():
    g = BlockGrid(np.zeros((3, 4), np.float32), block_px=240)
    g.check_fits((720, 960))  # exact
    g.check_fits((700, 950))  # last blocks partial: ceil
    g.check_fits((790, 1100))  # floor: a strip beyond the last block is left unlabelled
    with pytest.raises(LsrInputError) as err:
        g.check_fits((2000, 960), path="grid.csv")
    msg = str(err.value)
    assert "3x4 blocks" in msg and "2000x960" in msg and "grid.csv" in msg
    with pytest.raises(LsrInputError):
        g.check_fits((720, 480))
    shifted = BlockGrid(np.zeros((2, 4), np.float32), block_px=240, origin=(240, 0))
    shifted.check_fits((720, 960))


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".tif"])
def test_probability_grid_round_trips(tmp_path, suffix):
    g = BlockGrid(example_probs(), block_px=240, origin=(5, 6))
    path = tmp_path / f"grid{suffix}"
    save_grid(g, path)
    back = load_grid(path, block_px=240, origin=(5, 6))
    np.testing.assert_array_equal(back.probs, g.probs)  # NaN positions equal too
    np.testing.assert_array_equal(back.z, g.z)
    assert back.origin == (5, 6) and back.block_px == 240


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".tif"])
def test_z_grid_round_trips(tmp_path, suffix):
    z = np.array([[0, 1, -1], [9, 5, 3]])
    path = tmp_path / f"z{suffix}"
    save_grid(BlockGrid.from_z(z, 240), path)
    back = load_grid(path, block_px=240)
    np.testing.assert_array_equal(back.z, z)
    assert back.z_explicit is not None


def test_csv_with_missing_cells_and_any_column_order(tmp_path):
    path = tmp_path / "sparse.csv"
    path.write_text("prob,col,row\n0.5,2,0\n0.96,0,1\n")
    g = load_grid(path, block_px=240)
    assert g.shape == (2, 3)
    assert g.probs[0, 2] == pytest.approx(0.5) and g.z[1, 0] == 9
    assert np.isnan(g.probs[0, 0]) and g.z[0, 0] == -1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("row,col,prob\n0,0,0.5\n1,x,0.3\n", "line 3"),
        ("row,col,prob\n0,0,0.5\n0,1,55\n", "line 3.*not percent"),
        ("row,col,prob\n0,0,0.5\n0,0,0.2\n", "line 3.*twice"),
        ("row,col,prob\n0,0,abc\n", "line 2"),
        ("row,col,z\n0,0,11\n", "line 2"),
        ("row,col,z\n0,0,1.5\n", "line 2"),
        ("a,b,c\n0,0,0.1\n", "line 1"),
        ("row,col,prob\n-1,0,0.5\n", "negative"),
        ("", "empty"),
        ("row,col,prob\n", "no blocks"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LsrInputError, match=match) as err:
        load_grid(path, block_px=240)
    assert "bad.csv" in str(err.value)


def test_malformed_npy_and_tif(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    with pytest.raises(LsrInputError, match="2-D"):
        load_grid(tmp_path / "three.npy", block_px=240)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(LsrInputError, match=r"junk\.npy"):
        load_grid(tmp_path / "junk.npy", block_px=240)
    tifffile.imwrite(tmp_path / "pct.tif", np.full((2, 2), 50.0, np.float32))
    with pytest.raises(LsrInputError, match=r"pct\.tif.*fractions"):
        load_grid(tmp_path / "pct.tif", block_px=240)
    with pytest.raises(LsrInputError, match="not found"):
        load_grid(tmp_path / "missing.csv", block_px=240)
    with pytest.raises(LsrInputError, match="format"):
        save_grid(BlockGrid(np.zeros((1, 1), np.float32), 240), tmp_path / "g.xlsx")


def test_bins_use_the_given_edges_and_check_ready_bins():
    g = BlockGrid(np.array([[0.0, 0.49, 0.5], [0.79, 0.8, np.nan]]), block_px=4)
    np.testing.assert_array_equal(g.bins((0, 0.5, 0.8, 1)), [[0, 0, 1], [1, 2, -1]])
    np.testing.assert_array_equal(g.bins(PAPER_EDGES), g.z)
    ready = BlockGrid.from_z(np.array([[0, 2], [-1, 3]]), block_px=4)
    np.testing.assert_array_equal(ready.bins((0, 0.25, 0.5, 0.75, 1)), ready.z)
    with pytest.raises(LsrInputError, match="up to 3 but the count table has 3 bins"):
        ready.bins((0, 0.5, 0.8, 1))


# --- geometry sidecars ---------------------------------------------------------------------
def _sidecar(path, **geo):
    import json

    path.with_suffix(".json").write_text(json.dumps(geo))


def test_sidecar_geometry_round_trip_and_paper_default(tmp_path):
    from lsr.grid import grid_geometry, write_grid_sidecar

    g = tmp_path / "a_grid.npy"
    np.save(g, np.zeros((2, 2), np.int16))
    assert grid_geometry(g) == {
        "block_px": 240, "working_mpp": 4.17, "origin": [0, 0], "sidecar": False
    }  # fmt: skip
    side = write_grid_sidecar(g, 120, 8.33, (0, 4))
    assert side == tmp_path / "a_grid.json"
    assert grid_geometry(g) == {
        "block_px": 120, "working_mpp": 8.33, "origin": [0, 4], "sidecar": True
    }  # fmt: skip
    side.write_text('{"block_px": "many"}')
    with pytest.raises(LsrInputError, match="malformed grid sidecar") as err:
        grid_geometry(g)
    assert str(side) in str(err.value)


def test_sidecars_must_agree_within_one_percent(tmp_path):
    from lsr.grid import sidecar_geometry

    a, b, c = (tmp_path / f"{n}_grid.npy" for n in "abc")
    _sidecar(a, block_px=120, working_mpp=8.33)
    _sidecar(b, block_px=120, working_mpp=8.3333)  # 1000 µm / 120 px, written by the GUI
    assert sidecar_geometry([c]) == {}  # no sidecar: nothing known
    geo = sidecar_geometry([c, a, b])
    assert geo == {"block_px": 120, "working_mpp": 8.33, "from": a.with_suffix(".json")}
    _sidecar(c, block_px=240, working_mpp=4.17)
    with pytest.raises(LsrInputError) as err:
        sidecar_geometry([a, b, c])
    text = str(err.value)
    assert text.startswith(str(c.with_suffix(".json"))) and str(a.with_suffix(".json")) in text
    assert "240 px at 4.17 µm/px" in text and "120 px at 8.33 µm/px" in text


@pytest.mark.parametrize(
    ("geo", "want"),
    [
        ({"block_px": 120, "working_mpp": 8.33}, "--block-px 120 --working-mpp 8.33"),
        ({"block_px": 240, "working_mpp": 4.5}, "--block-px 240 --working-mpp 4.5"),
        ({"block_px": 240, "working_mpp": 4.17, "origin": [0, 8]}, r"origin \[0, 8\]"),
    ],
)
def test_a_grid_read_against_its_sidecar_is_refused_naming_it(tmp_path, geo, want):
    from lsr.grid import check_sidecar

    g = tmp_path / "a_grid.npy"
    check_sidecar(g, 240, 4.17)  # no sidecar: nothing to contradict
    _sidecar(g, **geo)
    with pytest.raises(LsrInputError, match=want) as err:
        check_sidecar(g, 240, 4.17)
    assert str(err.value).startswith(str(g.with_suffix(".json")))
    _sidecar(g, block_px=240, working_mpp=4.18)  # within 1 %: the same resolution
    check_sidecar(g, 240, 4.17)


def test_a_sidecar_records_extra_keys_without_changing_the_geometry(tmp_path):
    import json

    from lsr.grid import grid_geometry, write_grid_sidecar

    g = tmp_path / "a_grid.npy"
    np.save(g, np.zeros((2, 2), np.int16))
    side = write_grid_sidecar(g, 120, 8.33, extra={"saved_by": "me", "block_px": 7})
    assert json.loads(side.read_text())["saved_by"] == "me"
    assert grid_geometry(g)["block_px"] == 120  # extra keys never override the geometry


def test_a_json_named_like_the_grid_without_block_px_is_not_a_sidecar(tmp_path):
    """A GeoJSON (or a count table) saved as ``<grid>.json`` is not read as geometry, and
    writing the sidecar refuses to destroy it."""
    from lsr.grid import grid_geometry, write_grid_sidecar

    g = tmp_path / "a_grid.npy"
    np.save(g, np.zeros((2, 2), np.int16))
    geojson = '{"type": "FeatureCollection", "features": []}'
    side = g.with_suffix(".json")
    side.write_text(geojson)
    geo = grid_geometry(g)
    assert geo["sidecar"] is False and geo["block_px"] == 240
    with pytest.raises(LsrInputError, match="not a grid sidecar") as err:
        write_grid_sidecar(g, 120, 8.33)
    assert str(err.value).startswith(str(side))
    assert side.read_text() == geojson  # untouched
    side.write_text("[1, 2")  # not JSON at all: neither read nor replaced
    with pytest.raises(LsrInputError, match="not readable JSON"):
        grid_geometry(g)
    with pytest.raises(LsrInputError, match="not a grid sidecar"):
        write_grid_sidecar(g, 120, 8.33)
    side.write_text('{"block_px": 0}')  # ours, if broken: a fresh save mends it
    write_grid_sidecar(g, 120, 8.33)
    assert grid_geometry(g)["block_px"] == 120


@pytest.mark.parametrize(
    ("geo", "bad"),
    [
        ({"block_px": True}, "block_px must be a positive whole number"),
        ({"block_px": 240.5}, "block_px must be a positive whole number"),
        ({"block_px": -240}, "block_px must be a positive whole number"),
        ({"block_px": 240, "working_mpp": float("inf")}, "working_mpp must be"),
        ({"block_px": 240, "working_mpp": True}, "working_mpp must be"),
        ({"block_px": 240, "working_mpp": "4.17"}, "working_mpp must be"),
        ({"block_px": 240, "origin": [0]}, r"origin must be \[y, x\]"),
        ({"block_px": 240, "origin": [0, 1.5]}, r"origin must be \[y, x\]"),
        ({"block_px": 240, "origin": [False, 0]}, r"origin must be \[y, x\]"),
    ],
)
def test_a_sidecar_with_a_bad_value_is_refused_naming_it(tmp_path, geo, bad):
    from lsr.grid import grid_geometry

    g = tmp_path / "a_grid.npy"
    _sidecar(g, **geo)
    with pytest.raises(LsrInputError, match=bad) as err:
        grid_geometry(g)
    assert str(err.value).startswith(str(g.with_suffix(".json")))


def test_grid_csvs_from_spreadsheets_get_the_count_tables_errors(tmp_path):
    """Grid CSVs had their own reader: a column twice silently used the first, ';' gave
    'must name columns row, col and prob' and a Windows-1252 file a raw codec message."""
    cases = {
        "dup_grid.csv": (b"row,col,prob,prob\n0,0,0.5,0.9\n", "column 'prob' appears twice"),
        "semi_grid.csv": (b"row;col;prob\n0;0;0.5\n", "separated by semicolons"),
        "latin_grid.csv": ("row,col,prob\n0,0,0.5 \xe9\n".encode("cp1252"), "not UTF-8 text"),
    }
    for name, (raw, want) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(LsrInputError, match=want) as err:
            load_grid(tmp_path / name, block_px=8)
        assert str(tmp_path / name) in str(err.value)


def test_a_csv_row_with_more_or_fewer_fields_than_the_header_names_the_line(tmp_path):
    """``0,0,0,7`` (a decimal comma) under ``row,col,prob`` loaded prob 0 without a word."""
    cases = {
        "comma.csv": ("row,col,prob\n0,1,0.5\n0,0,0,7\n", "line 3.*4 values.*decimal comma"),
        "short.csv": ("row,col,prob\n0,0,0.5\n0,1\n", "line 3.*2 values.*3 columns.*missing"),
    }
    for name, (text, want) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(LsrInputError, match=want) as err:
            load_grid(tmp_path / name, block_px=240)
        assert str(err.value).startswith(str(tmp_path / name))
    # a spreadsheet's empty padding fields (in the header or the rows) are not values
    padded = tmp_path / "padded.csv"
    padded.write_text("row,col,prob,,\n0,0,0.5,,\n0,1,,\n")
    g = load_grid(padded, block_px=240)
    assert g.probs[0, 0] == pytest.approx(0.5) and np.isnan(g.probs[0, 1])


def test_a_huge_block_index_is_refused_naming_file_and_line(tmp_path):
    """Row 100000 asked NumPy for a 100001 × 100001 array (37 GiB) and named no file."""
    path = tmp_path / "big.csv"
    path.write_text("row,col,prob\n0,0,0.3\n1000000,1000000,0.5\n1,1,0.2\n")
    with pytest.raises(LsrInputError, match="line 3") as err:
        load_grid(path, block_px=8)
    assert str(err.value).startswith(str(path))
    from lsr.grid import MAX_GRID_BLOCKS

    assert f"{MAX_GRID_BLOCKS:,}" in str(err.value)  # the message says the bound
    side = int(MAX_GRID_BLOCKS**0.5)
    ok = tmp_path / "long.csv"  # a row of blocks as long as the bound allows loads
    ok.write_text(f"row,col,z\n0,0,3\n0,{side - 1},5\n")
    assert load_grid(ok, block_px=8).shape == (1, side)
    wide = tmp_path / "wide.csv"  # one block more in either direction does not
    wide.write_text(f"row,col,z\n0,{side - 1},5\n{MAX_GRID_BLOCKS // side},0,3\n")
    with pytest.raises(LsrInputError, match="line 3"):
        load_grid(wide, block_px=8)
