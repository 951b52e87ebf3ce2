"""Tests for lsr.slide: pyramidal TIFF writing, opening, reading at working resolution."""

from __future__ import annotations

import pickle
import re
import tracemalloc
import warnings

import dask.array as da
import numpy as np
import pytest
import tifffile
import tiffslide

from lsr import slide as slide_mod
from lsr.errors import LsrInputError
from lsr.slide import WORKING_MPP, ArraySlide, open_slide, write_pyramidal_tiff


def smooth_rgb(h: int, w: int) -> np.ndarray:
    """A smooth RGB test image (JPEG-friendly) with distinct channels."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [(yy / 4) % 256, (xx / 6) % 256, (128 + 100 * np.sin((yy + xx) / 40))], axis=-1
    ).astype(np.uint8)


def noisy_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def zlib_slide(tmp_path_factory):
    img = noisy_rgb(1100, 1500)
    path = tmp_path_factory.mktemp("slides") / "noise.tif"
    write_pyramidal_tiff(path, img, mpp=0.5, compression="zlib", min_size=256)
    return path, img


# --- writer + reader round trips ---------------------------------------------------------


def test_zlib_round_trip_exact_pixels_mpp_and_levels(zlib_slide):
    path, img = zlib_slide
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5)
        assert s.level_dimensions[0] == (1500, 1100)
        # halving (ceil) down to a longer side <= 256
        assert s.level_dimensions == ((1500, 1100), (750, 550), (375, 275), (188, 138))
        assert s.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        np.testing.assert_array_equal(s.read_level(0, 0, 0, 1100, 1500), img)
    # the pixel size is readable by tiffslide itself (resolution tags), not only by us
    ts = tiffslide.TiffSlide(path)
    assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    ts.close()
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.tilewidth == 256
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.5)


def test_pyramid_levels_are_2x2_means(zlib_slide):
    path, img = zlib_slide
    with open_slide(path) as s:
        lvl1 = s.read_level(1, 0, 0, 550, 750).astype(np.float64)
    expected = img.reshape(550, 2, 750, 2, 3).mean(axis=(1, 3))
    assert np.abs(lvl1 - expected).max() <= 0.5 + 1e-9


def _levels(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [lv.asarray() for lv in tf.series[0].levels]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_pyramids_take_the_nearest_pixel(tmp_path, dtype):
    """A mean would invent values: label 2 between labels 1 and 3. Levels are every other
    pixel of the level above (odd sizes included)."""
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 1, 3, 300 if dtype == np.uint16 else 9], (1301, 1077)).astype(dtype)
    path = tmp_path / "labels.tif"
    write_pyramidal_tiff(path, labels, mpp=1.0, compression="zlib", min_size=200,
                         downsample="nearest")  # fmt: skip
    levels = _levels(path)
    assert len(levels) >= 3
    expected = labels
    for level in levels:
        np.testing.assert_array_equal(level, expected)
        expected = expected[::2, ::2]


def _fraction_set(mask: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the 2^k × 2^k level-0 pixels under each level-k pixel that are set, the
    sides padded by repeating the last row/column at every halving (the writer's rule)."""
    a = mask.astype(np.float64)
    for _ in range(k):
        a = np.pad(a, [(0, a.shape[0] % 2), (0, a.shape[1] % 2)], mode="edge")
        a = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
    return a


def test_bool_mask_pyramids_keep_the_outline_in_place(tmp_path):
    """Level k of a bool mask is 255 where at least half of the level-0 pixels under it are
    set: a mean would invent grey, and the top-left pixel of each 2×2 moved a disc's outline
    (2^k − 1)/2 level-0 px towards the origin (7.5 px at level 4: a QuPath overlay or a
    ground truth read at a coarse level sat off its slide)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:1301, :1077]
    disc = (yy - 650.3) ** 2 + (xx - 530.7) ** 2 < 400.0**2
    noisy = disc ^ (rng.random(disc.shape) < 0.05)
    for name, mask in (("disc", disc), ("noisy", noisy)):
        path = tmp_path / f"{name}.tif"
        write_pyramidal_tiff(path, mask, mpp=1.0, compression="zlib", min_size=60)
        levels = _levels(path)
        assert len(levels) >= 5
        np.testing.assert_array_equal(levels[0], mask.astype(np.uint8) * 255)
        for k, level in enumerate(levels[1:], 1):
            assert set(np.unique(level)) <= {0, 255}
            np.testing.assert_array_equal(level, (_fraction_set(mask, k) >= 0.5) * 255)
    # the disc's centre of mass stays put at level 4 (top-left sampling: 7.5 px off)
    level4 = _levels(tmp_path / "disc.tif")[4] > 0
    cy, cx = (np.argwhere(level4).mean(axis=0) + 0.5) * 16
    assert abs(cy - 650.8) < 1.0 and abs(cx - 531.2) < 1.0
    with pytest.raises(LsrInputError, match=r"l\.tif: downsample 'majority' is for bool masks"):
        write_pyramidal_tiff(tmp_path / "l.tif", disc.astype(np.uint8), mpp=1.0,
                             downsample="majority")  # fmt: skip


def test_downsample_mean_stays_the_default_and_a_bad_choice_is_named(tmp_path):
    grey = np.zeros((600, 600), np.uint8)
    grey[1::2, 1::2] = 200  # a 2×2 mean of 50 everywhere; nearest would keep 0
    write_pyramidal_tiff(tmp_path / "g.tif", grey, mpp=1.0, compression="zlib", min_size=200)
    assert (_levels(tmp_path / "g.tif")[1] == 50).all()
    named = r"g2\.tif: downsample must be 'mean', 'nearest' or 'majority'"
    with pytest.raises(LsrInputError, match=named):
        write_pyramidal_tiff(tmp_path / "g2.tif", grey, mpp=1.0, downsample="mode")
    assert not (tmp_path / "g2.tif").exists()


def test_jpeg_round_trip_close_pixels(tmp_path):
    img = smooth_rgb(700, 900)
    path = tmp_path / "smooth.tif"
    write_pyramidal_tiff(path, img, mpp=0.25)  # jpeg by default
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.JPEG
    with open_slide(path) as s:
        got = s.read_level(0, 0, 0, 700, 900).astype(int)
        assert s.mpp == pytest.approx(0.25)
    assert np.abs(got - img).mean() < 2.0
    assert np.abs(got - img).max() < 30


def test_svs_like_aperio_description_is_read_by_tiffslide(tmp_path):
    img = smooth_rgb(1200, 1000)
    path = tmp_path / "slide.svs"
    desc = (
        "Aperio Image Library v12.0.0\n1000x1200 [0,0 1000x1200] (256x256) JPEG/RGB Q=90"
        "|AppMag = 40|MPP = 0.2525"
    )
    write_pyramidal_tiff(path, img, mpp=0.2525, description=desc, min_size=256)
    ts = tiffslide.TiffSlide(path)
    assert ts.properties["tiffslide.vendor"] == "aperio"
    assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.2525)
    assert ts.level_count == 4
    ts.close()
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.2525)
        assert s.level_dimensions[1] == (500, 600)
        assert np.abs(s.read_level(0, 0, 0, 1200, 1000).astype(int) - img).mean() < 2.0


def test_single_channel_float_and_bool_maps_are_lossless(tmp_path):
    rng = np.random.default_rng(1)
    prob = rng.random((600, 700)).astype(np.float32)
    write_pyramidal_tiff(tmp_path / "p.tif", prob, mpp=WORKING_MPP, min_size=128)
    with open_slide(tmp_path / "p.tif") as s:
        assert s.channels == 0 and s.dtype == np.float32
        assert s.mpp == pytest.approx(WORKING_MPP)
        np.testing.assert_array_equal(s.read_level(0, 0, 0, 600, 700), prob)
        lvl1 = s.read_level(1, 0, 0, 300, 350)
        np.testing.assert_allclose(lvl1, prob.reshape(300, 2, 350, 2).mean((1, 3)), atol=1e-6)
        with pytest.raises(LsrInputError, match="8-bit RGB"):
            s.read_working(0, 0, 10, 10)
    with tifffile.TiffFile(tmp_path / "p.tif") as tf:  # Bio-Formats (QuPath) refuses 3
        assert all(
            p.predictor == tifffile.PREDICTOR.NONE for p in [tf.pages[0], *tf.pages[0].pages]
        )
    write_pyramidal_tiff(tmp_path / "u.tif", (prob * 255).astype(np.uint8), mpp=WORKING_MPP)
    with tifffile.TiffFile(tmp_path / "u.tif") as tf:  # integers keep differencing
        assert tf.pages[0].predictor == tifffile.PREDICTOR.HORIZONTAL
    mask = prob > 0.5
    write_pyramidal_tiff(tmp_path / "m.tif", mask, mpp=WORKING_MPP, compression="jpeg")
    with tifffile.TiffFile(tmp_path / "m.tif") as tf:
        assert tf.pages[0].compression != tifffile.COMPRESSION.JPEG  # lossless for non-RGB
    with open_slide(tmp_path / "m.tif") as s:
        np.testing.assert_array_equal(s.read_level(0, 0, 0, 600, 700) > 0, mask)


def test_written_file_is_atomic_on_failure(tmp_path):
    path = tmp_path / "out.tif"
    path.write_bytes(b"old")

    class Exploding:
        shape, dtype = (600, 600, 3), np.dtype(np.uint8)

        def __getitem__(self, key):
            raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_pyramidal_tiff(path, Exploding(), mpp=0.5)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(LsrInputError, match="mpp"):
        write_pyramidal_tiff(tmp_path / "a.tif", np.zeros((8, 8, 3), np.uint8), mpp=0)
    with pytest.raises(LsrInputError, match="shape"):
        write_pyramidal_tiff(tmp_path / "a.tif", np.zeros((8, 8, 2), np.uint8), mpp=1)
    with pytest.raises(LsrInputError, match="compression"):
        write_pyramidal_tiff(
            tmp_path / "a.tif", np.zeros((8, 8, 3), np.uint8), mpp=1, compression="webp2000"
        )


def test_dask_write_is_bounded_in_memory(tmp_path):
    def block(block_info=None):
        info = block_info[None]
        r, c, _ = info["chunk-location"]
        return np.full(info["chunk-shape"], (r * 37 + c * 11) % 256, np.uint8)

    n = 8192
    big = da.map_blocks(
        block, dtype=np.uint8, chunks=((512,) * (n // 512), (512,) * (n // 512), (3,))
    )
    nbytes = n * n * 3
    tracemalloc.start()
    try:
        write_pyramidal_tiff(tmp_path / "big.tif", big, mpp=0.25)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < nbytes / 4, f"peak {peak / 2**20:.0f} MiB for a {nbytes / 2**20:.0f} MiB image"
    with open_slide(tmp_path / "big.tif") as s:
        assert s.level_dimensions[0] == (n, n)
        assert s.level_dimensions[-1] == (512, 512)
        # a block of chunk (3, 5) holds its value (JPEG of a flat tile is ~exact)
        got = s.read_level(0, 3 * 512 + 100, 5 * 512 + 100, 50, 50).astype(int)
        assert np.abs(got - (3 * 37 + 5 * 11) % 256).max() <= 2


# --- read_working ------------------------------------------------------------------------


def test_read_working_matches_block_mean_of_level0(zlib_slide):
    path, img = zlib_slide
    with open_slide(path) as s:
        # factor 4 (working 2.0 µm/px on a 0.5 µm/px slide): read from level 2 (rounded twice)
        assert s.best_level(4.0) == 2
        got = s.read_working(0, 0, 275, 375, working_mpp=2.0).astype(np.float64)
        expected = img.reshape(275, 4, 375, 4, 3).mean(axis=(1, 3))
        assert np.abs(got - expected).max() <= 1.0


def test_read_working_non_power_of_two_factor_matches_block_mean(tmp_path):
    # factor 3 reads level 1 and resamples by 1.5: exact only for smooth images, since a
    # half level-1 pixel is not a level-0 pixel
    img = smooth_rgb(960, 1290)
    write_pyramidal_tiff(tmp_path / "s.tif", img, mpp=0.5, compression="zlib", min_size=256)
    with open_slide(tmp_path / "s.tif") as s:
        assert s.best_level(3.0) == 1
        got = s.read_working(10, 20, 300, 400, working_mpp=1.5).astype(np.float64)
    expected = img[30:930, 60:1260].reshape(300, 3, 400, 3, 3).mean(axis=(1, 3))
    assert np.abs(got - expected).mean() < 0.5
    assert np.abs(got - expected).max() <= 2.0


def test_read_working_non_integer_factor_is_exact_area_mean():
    # Area averaging at factor 2.5 = 5x5 block mean of the image upsampled 2x by repetition.
    img = noisy_rgb(250, 300, seed=3)
    s = ArraySlide(img, mpp=1.0)
    got = s.read_working(0, 0, 100, 120, working_mpp=2.5).astype(np.float64)
    up = img.repeat(2, axis=0).repeat(2, axis=1).astype(np.float64)
    expected = up.reshape(100, 5, 120, 5, 3).mean(axis=(1, 3))
    assert np.abs(got - expected).max() <= 0.5 + 1e-9


def test_read_working_chunking_is_seamless(monkeypatch):
    img = noisy_rgb(400, 500, seed=4)
    s = ArraySlide(img, mpp=1.0)
    whole = s.read_working(3, 7, 90, 110, working_mpp=3.3)
    monkeypatch.setattr(slide_mod, "_CHUNK_SOURCE_PX", 40)  # many small chunks
    np.testing.assert_array_equal(s.read_working(3, 7, 90, 110, working_mpp=3.3), whole)


def test_read_working_out_of_bounds_is_white(zlib_slide):
    path, img = zlib_slide
    with open_slide(path) as s:
        got = s.read_working(-10, -20, 40, 50, working_mpp=0.5)
        assert (got[:10] == 255).all() and (got[:, :20] == 255).all()
        np.testing.assert_array_equal(got[10:, 20:], img[:30, :30])
        hw = s.working_shape(0.5)
        far = s.read_working(hw[0] - 5, hw[1] - 5, 10, 10, working_mpp=0.5)
        np.testing.assert_array_equal(far[:5, :5], img[-5:, -5:])
        assert (far[5:] == 255).all() and (far[:, 5:] == 255).all()
        assert (s.read_working(5000, 5000, 8, 8) == 255).all()


def test_working_shape_and_coordinate_helpers():
    s = ArraySlide(np.zeros((4000, 2400, 3), np.uint8), mpp=0.25)
    factor = WORKING_MPP / 0.25
    assert s.working_shape() == (round(4000 / factor), round(2400 / factor))
    xy = np.array([[10.0, 20.0], [0.5, 3.25]])
    np.testing.assert_allclose(s.to_level0(xy, WORKING_MPP), xy * factor)
    np.testing.assert_allclose(s.to_working(s.to_level0(xy, 2.0), 2.0), xy)
    with pytest.raises(LsrInputError):
        s.working_shape(0)


def test_thumbnail_and_multiscale(zlib_slide):
    path, img = zlib_slide
    with open_slide(path) as s:
        th = s.thumbnail(300)
        assert max(th.shape[:2]) <= 300 and th.dtype == np.uint8 and th.shape[2] == 3
        assert th.shape[:2] == (220, 300)
        ms = s.multiscale(chunk=256)
        assert [a.shape[:2][::-1] for a in ms] == list(s.level_dimensions)
        assert all(isinstance(a, da.Array) and a.dtype == np.uint8 for a in ms)
        np.testing.assert_array_equal(ms[0][250:270, 500:530].compute(), img[250:270, 500:530])
    flat = ArraySlide(smooth_rgb(2100, 3000), mpp=1.0).multiscale()
    assert [a.shape for a in flat] == [(2100, 3000, 3), (1050, 1500, 3), (525, 750, 3)]


def test_grey_slide_reads_as_rgb():
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    s = ArraySlide(grey, mpp=1.0)
    got = s.read_working(0, 0, 64, 64, working_mpp=1.0)
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got[..., 1], grey)


def test_tiffslide_slide_pickles_for_worker_processes(zlib_slide):
    path, img = zlib_slide
    with open_slide(path) as s:
        s.read_level(0, 0, 0, 4, 4)
        clone = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(clone.read_level(0, 5, 6, 7, 8), img[5:12, 6:14])
    clone.close()


# --- bad input ---------------------------------------------------------------------------


def test_truncated_tiff_is_an_input_error_naming_the_file(zlib_slide, tmp_path, caplog):
    path, _ = zlib_slide
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LsrInputError, match=r"cut\.tif"):
        open_slide(cut)
    # the one error says it: tifffile's own log lines about bad tags are not shown too
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(
        b"II*\x00" + bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8))
    )
    with pytest.raises(LsrInputError, match=r"garbage\.tif"):
        open_slide(garbage)


def test_corrupt_tile_data_is_an_input_error_on_read(tmp_path):
    img = noisy_rgb(512, 512)
    path = tmp_path / "bad.tif"
    write_pyramidal_tiff(path, img, mpp=0.5, compression="zlib", min_size=256)
    with tifffile.TiffFile(path) as tf:
        off, n = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[off : off + n] = b"\xff" * n
    path.write_bytes(bytes(raw))
    with open_slide(path) as s, pytest.raises(LsrInputError, match=r"bad\.tif"):
        s.read_level(0, 0, 0, 100, 100)


def test_missing_mpp_needs_explicit_mpp(tmp_path):
    img = smooth_rgb(64, 80)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, img, photometric="rgb")  # no resolution unit
    with pytest.raises(LsrInputError, match="--mpp") as err:
        open_slide(plain)
    assert "plain.tif" in str(err.value)
    with open_slide(plain, mpp=0.5) as s:
        assert s.mpp == 0.5
        np.testing.assert_array_equal(s.read_working(0, 0, 64, 80, working_mpp=0.5), img)
    # 72 dpi (a screen default, 353 µm/px) is not a pixel size: treated as missing
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, img, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(LsrInputError, match="--mpp"):
        open_slide(dpi)
    # explicit mpp overrides the metadata
    with open_slide(dpi, mpp=2.0) as s:
        assert s.mpp == 2.0
    with pytest.raises(LsrInputError, match="mpp"):
        open_slide(plain, mpp=-1)


def test_png_needs_mpp_and_reads(tmp_path):
    from skimage import io

    img = smooth_rgb(50, 60)
    png = tmp_path / "img.png"
    io.imsave(png, img, check_contrast=False)
    with pytest.raises(LsrInputError, match="--mpp"):
        open_slide(png)
    with open_slide(png, mpp=1.0) as s:
        np.testing.assert_array_equal(s.read_working(0, 0, 50, 60, working_mpp=1.0), img)
    bad = tmp_path / "bad.png"
    bad.write_bytes(png.read_bytes()[:100])
    with pytest.raises(LsrInputError, match=r"bad\.png"):
        open_slide(bad, mpp=1.0)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(LsrInputError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    other = tmp_path / "x.mrxs"
    other.write_bytes(b"not a slide at all")
    with pytest.raises(LsrInputError, match=r"x\.mrxs"):
        open_slide(other)


def test_ome_physical_size_is_used_when_tags_lack_it(tmp_path):
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(
        path,
        smooth_rgb(64, 64),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.3, "PhysicalSizeXUnit": "µm"},
    )
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.3)


def test_non_pyramidal_large_tiff_warns(tmp_path, monkeypatch):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(
        path,
        smooth_rgb(300, 200),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
        tile=(64, 64),
    )
    monkeypatch.setattr(slide_mod, "LARGE_FLAT_PX", 256)
    with pytest.warns(UserWarning, match="non-pyramidal"), open_slide(path) as s:
        assert s.level_count == 1
    monkeypatch.setattr(slide_mod, "LARGE_FLAT_PX", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_slide(path).close()


def test_ome_size_is_used_when_the_tags_say_72_dpi(tmp_path):
    """An image editor's 72 dpi in the tags must not hide a valid OME PhysicalSizeX."""
    path = tmp_path / "edited.ome.tif"
    tifffile.imwrite(
        path, smooth_rgb(64, 64), photometric="rgb", resolution=(72, 72),
        resolutionunit="INCH", metadata={"axes": "YXS", "PhysicalSizeX": 0.5},
    )  # fmt: skip
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5) and s.file_mpp == pytest.approx(0.5)


def test_72_dpi_alone_names_the_value_and_asks_for_mpp(tmp_path):
    path = tmp_path / "screen.tif"
    tifffile.imwrite(path, smooth_rgb(32, 32), photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")  # fmt: skip
    with pytest.raises(LsrInputError) as err:
        open_slide(path)
    text = str(err.value)
    assert "screen.tif" in text and "352.8" in text and "--mpp" in text
    assert "not in the file's metadata" not in text  # it is there, and it was ignored


def test_print_dpi_and_impossible_pixel_sizes_are_not_taken_for_the_scanners(tmp_path):
    """An OME-TIFF saved by an editor (300 dpi tags beside PhysicalSizeX 0.25) was drawn 339x
    too large; 300 dpi alone gave 84.7 µm/px, and tags of 1e-6 µm/px were taken as they are."""
    ome = tmp_path / "edited.ome.tif"
    meta = {"axes": "YXS", "PhysicalSizeX": 0.25}
    tifffile.imwrite(ome, smooth_rgb(64, 64), photometric="rgb", resolution=(300, 300),
                     resolutionunit="INCH", metadata=meta)  # fmt: skip
    with open_slide(ome) as s:
        assert s.mpp == pytest.approx(0.25)
    for dpi in (300, 600):
        path = tmp_path / f"print{dpi}.tif"
        tifffile.imwrite(path, smooth_rgb(32, 32), photometric="rgb", resolution=(dpi, dpi),
                         resolutionunit="INCH")  # fmt: skip
        with pytest.raises(LsrInputError, match=f"only pixel size is {dpi} dpi") as err:
            open_slide(path)
        assert f"print{dpi}.tif" in str(err.value) and "--mpp" in str(err.value)
        with open_slide(path, mpp=0.5) as s:  # the way out works
            assert s.mpp == 0.5
    scanner = tmp_path / "scanner.tif"  # 0.25 µm/px in inches: 101600 dpi, taken
    tifffile.imwrite(scanner, smooth_rgb(32, 32), photometric="rgb",
                     resolution=(101600, 101600), resolutionunit="INCH")  # fmt: skip
    with open_slide(scanner) as s:
        assert s.mpp == pytest.approx(0.25)
    tiny = tmp_path / "tiny.tif"
    tifffile.imwrite(tiny, smooth_rgb(32, 32), photometric="rgb", resolution=(1e6, 1e6),
                     resolutionunit="MICROMETER")  # fmt: skip
    with pytest.raises(LsrInputError, match="1e-06 µm/px, is not a microscope's"):
        open_slide(tiny)


def test_imagej_calibration_in_other_units_is_read(tmp_path):
    """Fiji's unit may be mm or nm: such files were refused as having no pixel size."""
    for unit, px_per_unit in (("mm", 4000.0), ("nm", 0.004), ("micron", 4.0)):
        path = tmp_path / f"fiji_{unit}.tif"
        res = (px_per_unit, px_per_unit)
        tifffile.imwrite(path, smooth_rgb(32, 48), imagej=True, resolution=res,
                         metadata={"unit": unit})  # fmt: skip
        with open_slide(path) as s:
            assert s.mpp == pytest.approx(0.25), unit


def test_imagej_micron_calibration_is_read(tmp_path):
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, smooth_rgb(32, 48), imagej=True, resolution=(2.5, 2.5),
                     metadata={"unit": "micron"})  # fmt: skip
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.4)
    other = tmp_path / "fiji_inch.tif"
    tifffile.imwrite(other, smooth_rgb(32, 48), imagej=True, resolution=(2.5, 2.5),
                     metadata={"unit": "inch"})  # fmt: skip
    with pytest.raises(LsrInputError, match="--mpp"):
        open_slide(other)


def test_explicit_mpp_keeps_the_files_own_value(zlib_slide):
    path, _ = zlib_slide
    with open_slide(path) as s:
        own = s.mpp
    with open_slide(path, mpp=3 * own) as s:
        assert s.mpp == pytest.approx(3 * own) and s.file_mpp == pytest.approx(own)


def test_a_file_whose_first_image_is_an_overview_is_refused(tmp_path):
    """bfconvert writes a VSI's overview as series 0: it must not pass for the slide."""
    path = tmp_path / "vsi.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(smooth_rgb(40, 60), photometric="rgb", metadata={"Name": "overview"})
        tw.write(smooth_rgb(256, 384), photometric="rgb", tile=(64, 64),
                 metadata={"Name": "20x", "PhysicalSizeX": 0.5})  # fmt: skip
    with pytest.raises(LsrInputError) as err:
        open_slide(path)
    text = str(err.value)
    assert "vsi.ome.tif" in text and "overview" in text and "20x" in text
    assert "-series 1" in text
    # the usual order (slide first, smaller images after) opens
    fine = tmp_path / "slide_first.ome.tif"
    with tifffile.TiffWriter(fine, ome=True) as tw:
        tw.write(smooth_rgb(256, 384), photometric="rgb", tile=(64, 64),
                 metadata={"PhysicalSizeX": 0.5})  # fmt: skip
        tw.write(smooth_rgb(40, 60), photometric="rgb")
    with open_slide(fine) as s:
        assert s.shape == (256, 384)


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[..., 3] = [[0], [255], [128], [64]]
    got = ArraySlide(rgba, mpp=1.0).read_working(0, 0, 4, 4, working_mpp=1.0)
    a = rgba[..., 3:4] / 255.0
    want = np.rint(rgba[..., :3] * a + 255 * (1 - a))
    np.testing.assert_allclose(got, want, atol=1)
    assert (got[0] == 255).all()  # fully transparent = glass, not black


def test_large_flat_slide_note_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, smooth_rgb(256, 100), photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # fmt: skip
    monkeypatch.setattr(slide_mod, "LARGE_FLAT_PX", 256)  # a side of exactly the limit
    with pytest.warns(UserWarning, match="non-pyramidal"), open_slide(path) as s:
        assert len(s.notes) == 1 and "non-pyramidal" in s.notes[0]


def test_openslide_backend_gives_the_pixels_of_the_other_backends(monkeypatch, tmp_path):
    """openslide-python hands out straight (not premultiplied) RGBA; composited as if
    premultiplied, a half-transparent edge came out lighter than tiffslide's same pixels."""
    import sys
    import types

    from PIL import Image

    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0  # outside the scanned area
    rgba[1, :, 3] = 255

    class FakeOpenSlide:  # openslide.OpenSlide's surface that OpenSlideSlide uses
        level_dimensions = ((8, 6),)
        level_downsamples = (1.0,)

        def __init__(self, path: str) -> None:
            self.path = path
            self.properties = {"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.5"}

        def read_region(self, loc, level, size):
            (x, y), (w, h) = loc, size
            out = np.zeros((h, w, 4), np.uint8)  # transparent beyond the slide, as OpenSlide
            part = rgba[y : y + h, x : x + w]
            out[: part.shape[0], : part.shape[1]] = part
            return Image.fromarray(out, "RGBA")

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "openslide", types.SimpleNamespace(OpenSlide=FakeOpenSlide))
    osl = slide_mod.OpenSlideSlide(tmp_path / "a.mrxs", None)
    assert osl.mpp == 0.5
    got = osl.read_working(0, 0, 6, 8, working_mpp=0.5)
    want = ArraySlide(rgba, mpp=0.5).read_working(0, 0, 6, 8, working_mpp=0.5)
    np.testing.assert_array_equal(got, want)
    assert (got[0] == 255).all()


def test_empty_or_non_tiff_bytes_are_named_as_such_not_a_missing_openslide(tmp_path):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(LsrInputError, match=r"empty\.svs: file is empty"):
        open_slide(empty)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(LsrInputError, match=r"junk\.tif: not a TIFF file") as err:
        open_slide(junk)
    assert "OpenSlide" not in str(err.value)


def test_coarse_pixel_sizes_made_inside_the_tool_are_accepted(tmp_path):
    """The 100 µm/px ceiling is for sizes a user types (--mpp, a config's mpp); a grid's
    labels layer (~1000 µm/px) or a coarse pyramid level is written and opened as it is."""
    import numpy as np

    from lsr.errors import LsrInputError
    from lsr.slide import check_mpp, open_slide, write_pyramidal_tiff

    write_pyramidal_tiff(tmp_path / "z.tif", np.zeros((4, 4), np.uint8), mpp=1000.8)
    with open_slide(tmp_path / "z.tif", mpp=1000.8) as s:
        assert s.mpp == 1000.8
    with pytest.raises(LsrInputError, match=r"in \(0, 100\]"):
        check_mpp(1000.8, name="--mpp")


@pytest.mark.parametrize(("h", "w"), [(601, 403), (600, 400), (599, 1001)])
def test_a_level_of_rounded_size_is_read_at_its_integer_downsample(tmp_path, h, w):
    """A 2× level of a 601-px side has 301 px, each the mean of level-0 px [2j, 2j + 2):
    taken as 601 / 301 = 1.997 px per pixel, reads squeezed the content towards the origin
    (one working px at the far edge of a 40X slide)."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "odd.tif"
    write_pyramidal_tiff(path, img, mpp=0.5, tile=128, compression="zlib", min_size=64)
    with open_slide(path) as s:
        assert s.level_count >= 3
        for level in (1, 2):
            d = 2**level
            hl, wl = s.level_dimensions[level][1], s.level_dimensions[level][0]
            assert s._level_scale(level) == (d, d)
            got = s.read_working(0, 0, hl, wl, working_mpp=0.5 * d)  # exactly that level
            np.testing.assert_array_equal(got, s.read_level(level, 0, 0, hl, wl))
        # a level-0 region read at 2×: the exact 2 × 2 means, up to the level's rounding
        h2, w2 = h // 2, w // 2
        want = img[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, 3).mean(axis=(1, 3))
        got = s.read_working(0, 0, h2, w2, working_mpp=1.0).astype(float)
        assert np.abs(got - want).max() <= 1.0


@pytest.mark.parametrize(
    ("name", "data", "kw", "said"),
    [
        ("cmyk", np.full((64, 64, 4), 255, np.uint8) * np.array([1, 0, 0, 0], np.uint8),
         {"photometric": "separated"}, "CMYK"),
        ("grey_alpha", np.zeros((64, 64, 2), np.uint8),
         {"photometric": "minisblack", "extrasamples": [2]}, "2 channels"),
        ("if5", np.zeros((5, 64, 64), np.uint16),
         {"photometric": "minisblack", "ome": True, "metadata": {"axes": "CYX"}}, "5 channels"),
        ("if4", np.zeros((4, 64, 64), np.uint16),
         {"photometric": "minisblack", "ome": True, "metadata": {"axes": "CYX"}},
         "4 channels (not RGB)"),
    ],
)  # fmt: skip
def test_images_that_are_not_rgb_or_grey_are_refused_naming_their_colours(
    tmp_path, name, data, kw, said
):
    """CMYK cyan was drawn white (K taken as alpha), MinIsWhite white as black, a palette's
    red as grey; 2- and 5-channel images crashed napari when their layer was added."""
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, data, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **kw)
    with pytest.raises(LsrInputError, match=re.escape(said)) as err:
        open_slide(path)
    assert f"{name}.tif" in str(err.value)


def test_one_channel_palette_and_inverted_masks_open_with_their_stored_values(tmp_path):
    """Masks saved with a colour map (PIL "P") or as MinIsWhite (Fiji) are label images:
    their stored values are what they mean, so they open as before (cancer = nonzero)."""
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:20] = 1
    for name, kw in (("palette", {"photometric": "palette",
                                  "colormap": np.zeros((3, 256), np.uint16)}),
                     ("inverted", {"photometric": "miniswhite"})):  # fmt: skip
        path = tmp_path / f"{name}_mask.tif"
        tifffile.imwrite(path, mask, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **kw)
        with open_slide(path) as s:
            stored = np.asarray(s.read_level(0, 0, 0, 64, 64))
            np.testing.assert_array_equal(stored.reshape(64, 64, -1)[..., 0] > 0, mask > 0)


def test_an_aperio_mpp_beside_print_dpi_tags_is_the_scanners(tmp_path):
    """Only a pixel size that came from the 72-dpi tags is skipped, not Aperio's MPP."""
    path = tmp_path / "scan.svs"
    tifffile.imwrite(path, smooth_rgb(64, 64), photometric="rgb", tile=(32, 32),
                     resolution=(72, 72), resolutionunit="INCH",
                     description="Aperio Image Library v12.0.0\n64x64 (32x32) NONE|MPP = 0.25",
                     metadata=None)  # fmt: skip
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25)


def test_rgba_and_grey_still_open(tmp_path):
    for name, data, kw in (
        ("rgba", np.full((64, 64, 4), 200, np.uint8), {"photometric": "rgb", "extrasamples": [2]}),
        ("grey", np.full((64, 64), 90, np.uint8), {"photometric": "minisblack"}),
    ):
        tifffile.imwrite(tmp_path / f"{name}.tif", data, resolution=(2e4, 2e4),
                         resolutionunit="CENTIMETER", **kw)  # fmt: skip
        with open_slide(tmp_path / f"{name}.tif") as s:
            assert s.read_working(0, 0, 8, 8, s.mpp).shape == (8, 8, 3)


def test_a_thin_flat_strip_gets_display_levels_without_an_empty_one(tmp_path):
    """A 4200 x 1 flat TIFF: halving for display made a level of width 0 (dask raised)."""
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.full((4200, 1, 3), 128, np.uint8), photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(path) as s:
        levels = s.multiscale()
        assert all(min(lv.shape[:2]) >= 1 for lv in levels)
        assert np.asarray(levels[-1]).shape[0] >= 1
