"""Tests for lsr.tissue: Otsu tissue masks on thumbnails and per-block tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from lsr.errors import LsrInputError
from lsr.grid import BlockGrid
from lsr.slide import ArraySlide
from lsr.tissue import block_tissue_fraction, tissue_mask

PINK = (200, 120, 170)  # eosin-like tissue
GLASS = (242, 242, 240)


def synthetic_thumbnail(h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Glass with an elliptical pink tissue piece (with a lumen) and noise; returns (rgb, truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    lumen = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < 25  # a small hole (~80 px)
    truth = tissue & ~lumen
    rgb = np.where(truth[..., None], np.array(PINK), np.array(GLASS)).astype(np.float64)
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("channel", ["saturation", "grey"])
def test_otsu_mask_finds_tissue(channel):
    rgb, truth = synthetic_thumbnail()
    mask = tissue_mask(rgb, channel=channel, max_hole_px=0)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert (mask == truth).mean() > 0.98


def test_small_specks_removed_and_small_holes_filled():
    rgb, _ = synthetic_thumbnail()
    rgb[5:7, 5:7] = PINK  # 4-px speck of dust on glass
    mask = tissue_mask(rgb, min_object_px=16, max_hole_px=200)
    assert not mask[5:7, 5:7].any()
    assert mask[60, 80]  # the lumen (~80 px) is filled
    kept = tissue_mask(rgb, min_object_px=0, max_hole_px=0)
    assert kept[5:7, 5:7].all() and not kept[60, 80]


def test_fixed_threshold_and_bad_options():
    rgb, truth = synthetic_thumbnail()
    mask = tissue_mask(rgb, method="fixed", threshold=0.2, max_hole_px=0)
    assert (mask == truth).mean() > 0.98
    with pytest.raises(LsrInputError):
        tissue_mask(rgb, method="fixed")
    with pytest.raises(LsrInputError):
        tissue_mask(rgb, method="magic")
    with pytest.raises(LsrInputError):
        tissue_mask(rgb, channel="hue")
    with pytest.raises(LsrInputError):
        tissue_mask(rgb[..., 0])


def test_empty_slide_falls_back_to_all_tissue_with_warning_or_errors():
    blank = np.full((50, 60, 3), GLASS, np.uint8)
    with pytest.warns(UserWarning, match="no tissue"):
        mask = tissue_mask(blank)
    assert mask.all()
    with pytest.raises(LsrInputError, match="no tissue"):
        tissue_mask(blank, on_empty="error")
    # only dust: contrast exists but the cleaned mask is below min_fraction
    dusty = blank.copy()
    dusty[10, 10] = PINK
    with pytest.raises(LsrInputError, match="no tissue"):
        tissue_mask(dusty, on_empty="error")


@pytest.mark.parametrize("channel", ["saturation", "grey"])
def test_all_tissue_stays_tissue_and_noisy_glass_is_empty(channel):
    rng = np.random.default_rng(2)
    # tissue of two stains (pale pink and purple): Otsu alone would split it in two
    tissue = np.where(rng.random((60, 80, 1)) < 0.5, PINK, (150, 90, 160)).astype(np.float64)
    tissue = np.clip(tissue + rng.normal(0, 6, tissue.shape), 0, 255).astype(np.uint8)
    assert tissue_mask(tissue, channel=channel).all()
    glass = np.clip(np.array(GLASS) + rng.normal(0, 4, (60, 80, 3)), 0, 255).astype(np.uint8)
    with pytest.raises(LsrInputError, match="no tissue"):
        tissue_mask(glass, channel=channel, on_empty="error")


def test_block_tissue_fraction_from_mask_image_and_slide():
    b = 32
    h, w = 3 * b, 4 * b
    truth = np.zeros((h, w), bool)
    truth[:, : 2 * b] = True  # left half tissue
    truth[b : b + b // 2, 2 * b : 3 * b] = True  # half of block (1, 2)
    grid = BlockGrid(np.zeros((3, 4), np.float32), block_px=b)
    expected = truth.reshape(3, b, 4, b).mean(axis=(1, 3))
    np.testing.assert_allclose(block_tissue_fraction(truth, grid), expected)

    rgb = np.where(truth[..., None], np.array(PINK), np.array(GLASS)).astype(np.uint8)
    frac_img = block_tissue_fraction(rgb, grid, working_mpp=4.17, px_per_block=8)
    np.testing.assert_allclose(frac_img, expected, atol=1 / 8)
    slide = ArraySlide(rgb, mpp=4.17 / 4)  # the slide is 4x finer than working resolution
    big_grid = BlockGrid(np.zeros((3, 4), np.float32), block_px=b // 4)
    frac_slide = block_tissue_fraction(slide, big_grid, working_mpp=4.17, px_per_block=8)
    np.testing.assert_allclose(frac_slide, expected, atol=1 / 8)


def test_block_tissue_fraction_with_origin_and_partial_blocks():
    mask = np.ones((50, 70), bool)
    grid = BlockGrid(np.zeros((2, 3), np.float32), block_px=30, origin=(-10, 0))
    frac = block_tissue_fraction(mask, grid)
    # block (0, 0) covers rows -10..20: 20 of 30 rows inside; column 2 covers 60..90: 10 of 30
    assert frac[0, 0] == pytest.approx(20 / 30)
    assert frac[1, 1] == pytest.approx(30 / 30)
    assert frac[1, 2] == pytest.approx(10 / 30)
