"""npe2 readers and sample data: what they claim, the layers they make, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lsr.counttable import CountTable
from lsr.grid import BlockGrid, save_grid
from lsr.slide import write_pyramidal_tiff

napari = pytest.importorskip("napari")
from napari_lsr import _reader  # noqa: E402

MPP, B, WMPP = 2.0, 60, 4.0  # slide µm/px; block px at the working resolution; µm/px


@pytest.fixture
def errors(monkeypatch):
    got: list[str] = []
    monkeypatch.setattr(_reader, "_notify", lambda msg, severity="error": got.append(msg))
    return got


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    img = np.full((960, 1200, 3), 240, np.uint8)
    img[100:800, 100:1100] = (190, 110, 160)
    slide = tmp_path / "a.tif"
    write_pyramidal_tiff(slide, img, mpp=MPP, tile=256, compression="zlib", min_size=256)
    # working res 4 µm/px: slide = 480 x 600 working px = 8 x 10 blocks of 60 px
    probs = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)
    probs[0, 0] = np.nan
    grid = tmp_path / "a_grid.npy"
    save_grid(BlockGrid(probs, B, (0, 0)), grid)
    (tmp_path / "a_grid.json").write_text(json.dumps({"block_px": B, "working_mpp": WMPP}))
    plain = tmp_path / "photo.tif"
    tifffile.imwrite(plain, np.zeros((64, 64, 3), np.uint8))
    nompp = tmp_path / "nompp.tif"
    tifffile.imwrite(nompp, np.zeros((512, 512, 3), np.uint8), tile=(256, 256))
    table = tmp_path / "t.csv"
    CountTable.paper_table1().to_csv(table)
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("x,y\n1,2\n")
    other_json = tmp_path / "other.json"
    other_json.write_text('{"a": 1}')
    npy = tmp_path / "weights.npy"
    np.save(npy, np.zeros(3))
    return dict(
        slide=slide, grid=grid, plain=plain, nompp=nompp, table=table,
        other_csv=other_csv, other_json=other_json, npy=npy, probs=probs,
    )  # fmt: skip


def test_readers_claim_only_their_files(files):
    assert _reader.get_slide_reader(str(files["slide"])) is _reader.read_slide
    assert _reader.get_slide_reader(str(files["nompp"])) is _reader.read_slide  # tiled
    assert _reader.get_slide_reader(str(files["plain"])) is None  # small plain TIFF
    assert _reader.get_slide_reader(str(files["grid"])) is None
    grid_tif = files["grid"].with_name("b_grid.tif")
    save_grid(BlockGrid(files["probs"], B), grid_tif)
    assert _reader.get_slide_reader(str(grid_tif)) is None
    assert _reader.get_grid_reader(str(grid_tif)) is _reader.read_grid
    assert _reader.get_grid_reader(str(files["grid"])) is _reader.read_grid
    assert _reader.get_grid_reader(str(files["npy"])) is None
    assert _reader.get_grid_reader(str(files["slide"])) is None
    assert _reader.get_table_reader(str(files["table"])) is _reader.read_count_table
    assert _reader.get_table_reader(str(files["other_csv"])) is None
    assert _reader.get_table_reader(str(files["other_json"])) is None
    assert _reader.get_table_reader(str(files["grid"].with_suffix(".json"))) is None


def test_slide_and_grid_layers_align_in_micrometres(files):
    (data, kw, kind) = _reader.read_slide(str(files["slide"]))[0]
    assert kind == "image" and kw["multiscale"] and kw["rgb"]
    assert kw["scale"] == (MPP, MPP) and kw["translate"] == (MPP / 2, MPP / 2)
    assert data[0].shape == (960, 1200, 3) and data[-1].shape[0] < 960
    assert np.array_equal(
        np.asarray(data[0][500:502, 500:502]), np.full((2, 2, 3), (190, 110, 160))
    )
    layers = _reader.read_grid(str(files["grid"]))
    (probs, pkw, pkind), (z, zkw, zkind) = layers
    assert (pkind, zkind) == ("image", "labels")
    s = B * WMPP  # 240 µm per block
    assert pkw["scale"] == (s, s) and zkw["scale"] == (s, s)
    np.testing.assert_array_equal(probs, files["probs"])
    edges = [0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]  # independent of lsr's binning
    expected_z = np.searchsorted(edges, np.nan_to_num(files["probs"]), "right") - 1
    expected_z = np.minimum(expected_z, 9)
    expected_z[0, 0] = 0  # no label shows as 0 (transparent)
    np.testing.assert_array_equal(z, expected_z)
    # the centre of block (r, c) and of the slide pixels it covers coincide in world µm
    r, c = 3, 7
    block_centre = np.array([r, c]) * s + np.array(zkw["translate"])
    first_px, last_px = np.array([r, c]) * s / MPP, (np.array([r, c]) + 1) * s / MPP - 1
    slide_centre = (first_px + last_px) / 2 * MPP + np.array(kw["translate"])
    np.testing.assert_allclose(block_centre, slide_centre)
    assert block_centre == pytest.approx((np.array([r, c]) + 0.5) * s)


def test_ome_tiff_layers_are_named_as_lsr_predict_names_the_slide(tmp_path):
    """``case.ome.tif`` is slide ``case`` (as ``lsr predict``'s folder and QuPath's
    getNameWithoutExtension have it), and ``case_gt.ome.tif`` is its ground truth."""
    img = np.full((512, 512, 3), 200, np.uint8)
    gt = np.zeros((512, 512), np.uint8)
    gt[100:300, 100:300] = 255
    write_pyramidal_tiff(tmp_path / "case.ome.tif", img, mpp=MPP, tile=256)
    write_pyramidal_tiff(tmp_path / "case_gt.OME.TIFF", gt, mpp=MPP, tile=256)
    ((_, kw, kind),) = _reader.read_slide(str(tmp_path / "case.ome.tif"))
    assert (kw["name"], kind) == ("case", "image")
    ((data, kw, kind),) = _reader.read_slide(str(tmp_path / "case_gt.OME.TIFF"))
    assert (kw["name"], kind) == ("case_gt", "labels")
    level0 = np.asarray(data[0] if isinstance(data, list) else data)
    assert set(np.unique(level0)) == {0, 1} and level0[200, 200] == 1


def test_a_slide_whose_name_ends_like_a_grid_or_mask_opens_as_a_slide(tmp_path):
    """An H&E slide named ``TMA_grid.tif`` went to the grid reader (which failed: "a block
    grid must be 2-D") and ``Liver_mask.tif`` opened as an all-1 labels layer; a colour
    0/255 mask saved without loss is still a mask."""
    img = np.full((512, 512, 3), 230, np.uint8)
    img[100:300, 150:400] = (170, 90, 150)
    for name in ("TMA_grid.tif", "Liver_mask.tif"):
        write_pyramidal_tiff(tmp_path / name, img, mpp=MPP, tile=256)  # JPEG, as scanners do
    mask = np.zeros((512, 512, 3), np.uint8)
    mask[100:300, 150:400] = 255
    write_pyramidal_tiff(tmp_path / "Real_mask.tif", mask, mpp=MPP, tile=256, compression="zlib")
    tma = str(tmp_path / "TMA_grid.tif")
    assert _reader.get_grid_reader(tma) is None
    assert _reader.get_slide_reader(tma) is _reader.read_slide
    for name in ("TMA_grid.tif", "Liver_mask.tif"):
        ((data, kw, kind),) = _reader.read_slide(str(tmp_path / name))
        assert kind == "image" and kw["rgb"]
    ((data, kw, kind),) = _reader.read_slide(str(tmp_path / "Real_mask.tif"))
    level0 = np.asarray(data[0] if isinstance(data, list) else data)
    assert kind == "labels" and level0[200, 200] == 1 and level0[10, 10] == 0
    grid = tmp_path / "real_grid.tif"
    save_grid(BlockGrid(np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10), B), grid)
    assert _reader.get_grid_reader(str(grid)) is _reader.read_grid


def test_grid_without_sidecar_uses_paper_geometry_and_says_so(files, errors):
    (_, kw, _), _ = _reader.read_grid(str(files["grid"]))
    assert not errors  # with its sidecar: nothing to say
    files["grid"].with_suffix(".json").unlink()
    (_, kw, _), _ = _reader.read_grid(str(files["grid"]))
    assert kw["scale"][0] == pytest.approx(240 * 4.17)
    assert kw["metadata"]["lsr_grid"]["sidecar"] is False
    assert len(errors) == 1 and "a_grid.json" in errors[0] and "240 px at 4.17" in errors[0]
    files["grid"].with_suffix(".json").write_text('{"type": "FeatureCollection"}')
    (_, kw, _), _ = _reader.read_grid(str(files["grid"]))  # someone else's JSON: not geometry
    assert kw["metadata"]["lsr_grid"]["sidecar"] is False
    assert "a_grid.json beside it is not a grid sidecar" in errors[-1]


def test_bad_files_notify(files, errors, tmp_path):
    assert _reader.read_slide(str(files["nompp"])) == [(None,)]
    assert "pixel size" in errors[-1] and "nompp.tif" in errors[-1]
    assert "QuPath" in errors[-1]  # a way out that exists in napari, beside the CLI's --mpp
    bad = tmp_path / "bad_grid.npy"
    bad.write_bytes(b"not numpy")
    assert _reader.read_grid(str(bad)) == [(None,)]
    assert "bad_grid.npy" in errors[-1]
    side = tmp_path / "c_grid.npy"
    save_grid(BlockGrid(files["probs"], B), side)
    side.with_suffix(".json").write_text('{"block_px": -3}')
    assert _reader.read_grid(str(side)) == [(None,)] and "c_grid.json" in errors[-1]


def test_a_slide_error_no_check_foresaw_is_a_notification_naming_the_file(
    files, errors, monkeypatch
):
    """A 4200 x 1 flat TIFF raised dask's ValueError through napari as a traceback."""

    def unforeseen(path):
        raise ValueError("Empty tuples are not allowed in chunks")

    monkeypatch.setattr(_reader, "slide_layer_data", unforeseen)
    assert _reader.read_slide(str(files["nompp"])) == [(None,)]
    assert "nompp.tif: ValueError: Empty tuples" in errors[-1]


def test_viewer_opens_all_and_table_opens_widget(make_napari_viewer, files, errors):
    viewer = make_napari_viewer()
    viewer.open(files["slide"], plugin="napari-lsr")
    viewer.open(files["grid"], plugin="napari-lsr")
    assert [layer.name for layer in viewer.layers] == ["a", "a_grid p(cancer)", "a_grid z"]
    assert viewer.layers["a"].multiscale
    # the layers are in µm, so the scale bar reads µm / mm (not "kpixel")
    assert {str(u) for layer in viewer.layers for u in layer.units} == {"micrometer"}
    layers = viewer.open(files["table"], plugin="napari-lsr")
    assert layers == []
    widget = viewer.window.dock_widgets["Count table (napari-lsr)"]
    assert widget.source.currentText() == str(files["table"])
    assert widget.view.cell_text(9, 1) == "70.0 ± 5.0"
    assert not errors


def test_shipped_sample_opens_without_generating(monkeypatch):
    """The sample napari opens is read from the install: nothing is generated on napari's
    main thread (generation takes half a minute, the event loop may block ~50 ms)."""
    import lsr.synthetic
    from napari_lsr import _sample_data

    def no_generation(*_a, **_k):
        raise AssertionError("the shipped sample must not be regenerated")

    monkeypatch.setattr(lsr.synthetic, "write_slide", no_generation)
    assert _sample_data.sample_folder() == _sample_data.SHIPPED
    layers = _sample_data.synthetic_sample()
    assert [kind for _d, _kw, kind in layers] == ["image", "labels", "image", "labels"]
    slide, gt, prob, z = layers
    assert slide[0][0].shape[:2] == (2400, 2400)
    assert gt[1]["visible"] is False
    assert np.asarray(gt[0][0]).max() == 1
    p = np.asarray(prob[0])
    tissue = np.isfinite(p)  # background blocks carry no probability (NaN)
    assert p.shape == (20, 20) and tissue.mean() > 0.3
    assert 0 <= p[tissue].min() <= p[tissue].max() <= 1
    assert np.asarray(z[0]).max() >= 5  # some blocks in high bins: cancer to find


def test_shipped_sample_made_by_the_current_generator():
    from napari_lsr import _sample_data

    record = json.loads((_sample_data.SHIPPED / "sample.json").read_text())
    assert record["sample_version"] == _sample_data.SAMPLE_VERSION
    assert (record["seed"], record["size_px"]) == (_sample_data.SAMPLE_SEED, 2400)
    assert record["generator_sha256"] == _sample_data.generator_fingerprint(), (
        "the synthetic generator's defaults changed: regenerate the shipped sample "
        "with `make sample`"
    )


def test_build_sample_replaces_a_folder_whole(tmp_path):
    from napari_lsr import _sample_data

    folder = tmp_path / "s"
    _sample_data.build_sample(folder, size_px=240, seed=1)
    (folder / "stale.txt").write_text("from an older sample")
    _sample_data.build_sample(folder, size_px=240, seed=2)
    assert sorted(p.name for p in folder.iterdir()) == sorted(_sample_data.FILES)
    assert json.loads((folder / "sample.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary or old folder left


def test_sample_annotations_autosave_outside_the_install(monkeypatch, tmp_path):
    from napari_lsr import _sample_data
    from napari_lsr.annotator import default_autosave_folder

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    shipped = str(_sample_data.SHIPPED / f"{_sample_data.NAME}.tif")
    assert default_autosave_folder(shipped) == str(
        tmp_path / "data" / "napari-lsr" / "sample-annotations"
    )
    own = tmp_path / "slides" / "a.svs"
    assert default_autosave_folder(str(own)) == str(own.parent)
    assert default_autosave_folder(None) == ""


def test_sample_data_generated_once_and_cached(monkeypatch, tmp_path):
    from napari_lsr import _sample_data

    monkeypatch.setenv("LSR_SAMPLE_CACHE", str(tmp_path))
    folder = _sample_data.sample_folder(size_px=240, seed=1)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        ["sample.json", "synthetic_slide.tif", "synthetic_slide_gt.tif",
         "synthetic_slide_grid.npy", "synthetic_slide_grid.json"]
    )  # fmt: skip
    stamp = (folder / "synthetic_slide.tif").stat().st_mtime_ns
    assert _sample_data.sample_folder(size_px=240, seed=1) == folder
    assert (folder / "synthetic_slide.tif").stat().st_mtime_ns == stamp  # not regenerated
    monkeypatch.setattr(_sample_data, "SAMPLE_SIZE_PX", 240)
    monkeypatch.setattr(_sample_data, "SAMPLE_SEED", 1)
    monkeypatch.setattr(_sample_data.sample_folder, "__defaults__", (240, 1))
    layers = _sample_data.synthetic_sample()
    kinds = [(kw["name"], kind) for _d, kw, kind in layers]
    assert kinds[0] == ("synthetic_slide", "image")
    assert kinds[1] == ("ground truth (cancer)", "labels")
    assert [k for _n, k in kinds[2:]] == ["image", "labels"]
    slide_kw, grid_kw = layers[0][1], layers[3][1]
    # the grid spans the slide: blocks x block µm == slide px x µm/px
    n_blocks = layers[3][0].shape[0]
    slide_px = (layers[0][0][0] if slide_kw["multiscale"] else layers[0][0]).shape[0]
    assert n_blocks * grid_kw["scale"][0] == pytest.approx(slide_px * slide_kw["scale"][0], 1e-3)


def test_written_masks_and_labels_reopen_as_written(tmp_path):
    """The labels writer's 0/1 mask reopens as the same ground truth the engine reads (> 0);
    a ``*_labels.tif`` reopens as labels with its values, not as an RGB image."""
    from lsr.compare import EXTRA_COLOURS, load_ground_truth
    from lsr.geojson import FIG4_COLOURS
    from lsr.slide import open_slide
    from napari_lsr import _writer

    labels = np.zeros((900, 700), np.uint8)
    labels[100:500, 50:300] = 1
    labels[600:800, 400:650] = 3
    for name in ("x_gt.tif", "x_labels.tif"):
        assert _writer.write_labels_tiff(str(tmp_path / name), labels, {"scale": (MPP, MPP)})
    (data, kw, kind) = _reader.read_slide(str(tmp_path / "x_gt.tif"))[0]
    assert kind == "labels" and kw["scale"] == (MPP, MPP)
    # filled in a colour no Fig. 4 boundary has (cyan was intra-instance's)
    rgb = tuple(int(kw["colormap"][1][i : i + 2], 16) for i in (1, 3, 5))
    assert rgb not in FIG4_COLOURS.values() and rgb not in EXTRA_COLOURS
    gt = np.asarray(data[0] if kw["multiscale"] else data)
    np.testing.assert_array_equal(gt, (labels > 0).astype(np.uint8))
    with open_slide(tmp_path / "x_gt.tif") as slide:
        engine = load_ground_truth(tmp_path / "x_gt.tif", slide, MPP)
    np.testing.assert_array_equal(gt, engine.astype(np.uint8))
    (data, kw, kind) = _reader.read_slide(str(tmp_path / "x_labels.tif"))[0]
    assert kind == "labels" and "rgb" not in kw
    np.testing.assert_array_equal(np.asarray(data[0] if kw["multiscale"] else data), labels)


def test_lsr_predict_outputs_open_as_a_heat_map_and_a_mask(tmp_path):
    """probability.tif is a one-channel 0-255 heat map, mask.tif labels in the model's
    Fig. 4 colour, both named after the slide's folder (they opened as grey RGB slides)."""
    from lsr.geojson import FIG4_COLOURS

    folder = tmp_path / "case-7"
    folder.mkdir()
    prob = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (96, 1))  # (96, 128)
    write_pyramidal_tiff(folder / "probability.tif", prob, mpp=WMPP, tile=64, min_size=32)
    write_pyramidal_tiff(folder / "mask.tif", np.where(prob >= 128, 255, 0).astype(np.uint8),
                         mpp=WMPP, tile=64, min_size=32)  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({"model": {"loss": "intra"}}))
    assert _reader.get_slide_reader(str(folder / "probability.tif")) is not None
    (data, kw, kind) = _reader.read_slide(str(folder / "probability.tif"))[0]
    level0 = np.asarray(data[0] if kw["multiscale"] else data)
    assert kind == "image" and level0.shape == prob.shape and "rgb" not in kw
    np.testing.assert_array_equal(level0, prob)
    assert kw["contrast_limits"] == (0.0, 255.0) and kw["name"] == "p(cancer): case-7 (intra)"
    (data, kw, kind) = _reader.read_slide(str(folder / "mask.tif"))[0]
    level0 = np.asarray(data[0] if kw["multiscale"] else data)
    assert kind == "labels" and kw["name"] == "mask: case-7 (intra)"
    np.testing.assert_array_equal(level0, (prob >= 128).astype(np.uint8))
    assert kw["colormap"][1] == "#{:02x}{:02x}{:02x}".format(*FIG4_COLOURS["intra"])


def test_an_empty_grid_notifies_instead_of_breaking_napari(tmp_path, errors):
    """A 0-row grid passed the checks and napari's labels thumbnail raised (cannot convert
    float NaN to integer) after the p(cancer) layer was added: half a grid in the viewer."""
    empty = tmp_path / "empty_grid.npy"
    np.save(empty, np.zeros((0, 5), np.float32))
    assert _reader.read_grid(str(empty)) == [(None,)]
    assert "no blocks in the file" in errors[-1] and "empty_grid.npy" in errors[-1]


def test_a_semicolon_separated_table_is_claimed_and_says_why_it_cannot_open(
    make_napari_viewer, files, monkeypatch
):
    """napari said "no reader" for a European Excel's table; the loader names the ';'."""
    semi = files["table"].with_name("semi.csv")
    semi.write_text(files["table"].read_text().replace(",", ";"))
    assert _reader.get_table_reader(str(semi)) is _reader.read_count_table
    viewer = make_napari_viewer()
    from napari_lsr.counttable_widget import CountTableWidget

    shown: list[str] = []
    monkeypatch.setattr(CountTableWidget, "_notify", lambda self, msg: shown.append(msg))
    _reader.read_count_table(str(semi))
    assert len(shown) == 1 and str(semi) in shown[0] and "separated by semicolons" in shown[0]
    assert viewer.window.dock_widgets["Count table (napari-lsr)"] is not None


def test_a_session_whose_table_cannot_be_made_notifies_naming_the_file(
    make_napari_viewer, tmp_path, errors
):
    """Bins that paper Table 1 cannot fill raised an uncaught error naming no file."""
    from lsr.annotation import AnnotationSession, sample_blocks

    s = AnnotationSession(
        expert="ann", slide="s", edges=(0, 0.5, 1),
        blocks=sample_blocks(np.repeat([0, 1], 2).reshape(2, 2), per_bin=2, n_bins=2),
    )  # fmt: skip
    s.go(next(i for i, b in enumerate(s.blocks) if b.z == 0))
    s.record(10.0)  # bin 1 has no estimate
    path = tmp_path / "s.ann.lsr-estimates.json"
    s.save(path)
    make_napari_viewer()
    assert _reader.get_table_reader(str(path)) is _reader.read_count_table
    assert _reader.read_count_table(str(path)) == [(None,)]
    assert len(errors) == 1 and errors[0].startswith(f"Cannot open the annotation session: {path}")
    assert "no estimate yet" in errors[0]
