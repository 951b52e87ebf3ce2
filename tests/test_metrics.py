"""Masked / unmasked IoU and DICE against hand-computed cases and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lsr.errors import LsrInputError
from lsr.metrics import (
    CALIBRATION_ERROR_LIMIT,
    CALIBRATION_MIN_BLOCKS,
    block_fractions,
    boundary_band,
    calibration_check,
    calibration_error,
    calibration_table,
    iou_dice,
    masked_iou_dice,
    pooled_scores,
)


def _row(bits: str) -> np.ndarray:
    return np.array([[c == "1" for c in bits]])


def test_hand_computed_strip():
    # gt boundary between pixel 3 and 4; band 2 keeps pixels 2, 3, 4, 5.
    gt = _row("0000111111")
    pred = _row("0011100000")
    np.testing.assert_array_equal(boundary_band(gt, 2)[0], [c == "1" for c in "0011110000"])
    # inside band: P = {2, 3, 4}, G = {4, 5}: I = 1, U = 4, |P| + |G| = 5
    iou, dice = masked_iou_dice(pred, gt, band=2)
    assert iou == pytest.approx(1 / 4)
    assert dice == pytest.approx(2 / 5)
    # unmasked: P = {2, 3, 4}, G = {4..9}: I = 1, U = 8, |P| + |G| = 9
    iou, dice = iou_dice(pred, gt)
    assert iou == pytest.approx(1 / 8)
    assert dice == pytest.approx(2 / 9)


def test_band_is_euclidean_2d():
    gt = np.zeros((7, 7), bool)
    gt[3, 3] = True
    band = boundary_band(gt, 1.5)
    # the single cancer pixel (distance 1) and its 8 neighbours (distance 1 or sqrt 2)
    expect = np.zeros((7, 7), bool)
    expect[2:5, 2:5] = True
    np.testing.assert_array_equal(band, expect)
    band = boundary_band(gt, 1.0)
    assert band.sum() == 5  # the pixel and its 4-neighbours


def test_no_boundary_and_empty_union():
    gt = np.zeros((5, 5), bool)
    assert not boundary_band(gt, 10).any()
    assert iou_dice(gt, gt) == (1.0, 1.0)
    assert masked_iou_dice(gt, gt, band=3) == (1.0, 1.0)
    pred = gt.copy()
    pred[0, 0] = True
    assert iou_dice(pred, gt) == (0.0, 0.0)


def _brute_band(gt: np.ndarray, band: float) -> np.ndarray:
    ys, xs = np.indices(gt.shape)
    out = np.zeros(gt.shape, bool)
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            other = gt != gt[y, x]
            if other.any():
                d = np.sqrt((ys[other] - y) ** 2 + (xs[other] - x) ** 2).min()
                out[y, x] = d <= band
    return out


@settings(max_examples=40, deadline=None)
@given(
    gt=arrays(bool, (9, 11)),
    pred=arrays(bool, (9, 11)),
    band=st.floats(0, 6),
)
def test_band_and_scores_match_brute_force(gt, pred, band):
    m = _brute_band(gt, band)
    np.testing.assert_array_equal(boundary_band(gt, band), m)
    p, g = pred & m, gt & m
    inter, union = (p & g).sum(), (p | g).sum()
    iou, dice = masked_iou_dice(pred, gt, band)
    if union == 0:
        assert (iou, dice) == (1.0, 1.0)
    else:
        assert iou == pytest.approx(inter / union)
        assert dice == pytest.approx(2 * inter / (p.sum() + g.sum()))
    assert 0.0 <= iou <= dice <= 1.0


def test_pooled_sums_counts_and_skips_boundaryless_patches():
    gt1 = _row("0000111111")
    pr1 = _row("0011100000")  # masked band 2: I=1, U=4, P+G=5; unmasked I=1, U=8, P+G=9
    gt2 = _row("1111111111")  # no boundary
    pr2 = _row("1111100000")  # unmasked I=5, U=10, P+G=15
    gt3 = _row("1100000000")
    pr3 = _row("1100000000")  # band 2 keeps 0..3: I=2, U=2, P+G=4; unmasked same
    out = pooled_scores([pr1, pr2, pr3], [gt1, gt2, gt3], band=2)
    assert out["n_patches"] == 3
    assert out["n_with_boundary"] == 2
    assert out["masked_iou"] == pytest.approx((1 + 2) / (4 + 2))
    assert out["masked_dice"] == pytest.approx(2 * 3 / (5 + 4))
    assert out["iou"] == pytest.approx((1 + 5 + 2) / (8 + 10 + 2))
    assert out["dice"] == pytest.approx(2 * 8 / (9 + 15 + 4))
    assert out["masked_iou_mean"] == pytest.approx(np.mean([1 / 4, 1.0]))
    assert out["masked_iou_std"] == pytest.approx(np.std([1 / 4, 1.0]))
    assert out["iou_mean"] == pytest.approx(np.mean([1 / 8, 5 / 10, 1.0]))
    assert not out["per_patch"][1]["has_boundary"]
    assert "masked_iou" not in out["per_patch"][1]


def test_pooled_without_any_boundary_is_none_not_nan():
    gt = np.zeros((4, 4), bool)
    out = pooled_scores([gt], [gt], band=2)
    assert out["masked_iou"] is None and out["masked_dice"] is None
    assert out["iou"] == 1.0


def test_large_band_equals_unmasked_when_every_pixel_is_near():
    rng = np.random.default_rng(0)
    gt = rng.random((20, 20)) > 0.5
    pred = rng.random((20, 20)) > 0.5
    assert masked_iou_dice(pred, gt, band=100) == pytest.approx(iou_dice(pred, gt))


def test_input_errors():
    with pytest.raises(LsrInputError, match="shape"):
        masked_iou_dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(LsrInputError, match="2 ground-truth"):
        pooled_scores([np.zeros((2, 2), bool)], [np.zeros((2, 2), bool)] * 2)
    with pytest.raises(LsrInputError, match="band"):
        boundary_band(np.zeros((3, 3), bool), -1)


def test_block_fractions_and_calibration_table():
    prob = np.zeros((4, 6))
    prob[:2, :2] = 1.0
    prob[:2, 2:4] = 0.5
    prob[2:, 4:] = 0.25
    np.testing.assert_allclose(block_fractions(prob, 2), [[1, 0.5, 0], [0, 0, 0.25]])
    z = np.array([[9, 9, 0], [0, 0, -1]])
    rows = calibration_table([prob], [z], block_px=2)
    assert rows[9]["n"] == 2
    assert rows[9]["mean"] == pytest.approx(0.75)
    assert rows[9]["std"] == pytest.approx(0.25)
    assert rows[0]["n"] == 3 and rows[0]["mean"] == 0.0
    assert rows[5]["n"] == 0 and rows[5]["mean"] is None
    rows = calibration_table([prob], [z], block_px=2, threshold=0.5)
    assert rows[9]["mean"] == pytest.approx(1.0)
    with pytest.raises(LsrInputError, match="label grid"):
        calibration_table([prob], [z[:1]], block_px=2)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.floats(0, 1)), min_size=0, max_size=40),
    st.lists(st.floats(0, 1), min_size=10, max_size=10),
)
def test_calibration_error_is_the_mean_over_blocks(blocks, eta):
    """Block-weighted |bin mean - eta| equals the mean over blocks of |their bin's mean - eta|
    (each block stands in for its bin); None without blocks."""
    z = np.array([b for b, _ in blocks], int)
    f = np.array([v for _, v in blocks], float)
    rows = []
    for b in range(10):
        vals = f[z == b]
        rows.append(
            {"z": b, "n": int(vals.size), "mean": float(vals.mean()) if vals.size else None}
        )
    got = calibration_error(rows, eta)
    if not blocks:
        assert got is None
        return
    means = np.array([rows[b]["mean"] for b in z])
    assert got == pytest.approx(np.abs(means - np.asarray(eta)[z]).mean())


@pytest.mark.parametrize(
    ("off", "n_per_bin", "flagged"),
    [(0.35, 10, True), (0.25, 10, False), (0.35, 9, False), (0.30, 10, False)],
)
def test_calibration_check_flags_past_the_limit_on_enough_blocks(off, n_per_bin, flagged):
    """10 bins x n blocks each, every bin ``off`` from the table: flagged past the limit
    (0.30) on at least 100 blocks only."""
    eta = np.linspace(0.05, 0.6, 10)
    rows = [{"z": b, "n": n_per_bin, "mean": float(eta[b] + off)} for b in range(10)]
    check = calibration_check(rows, eta)
    assert check["blocks"] == 10 * n_per_bin
    assert check["error"] == pytest.approx(off) == pytest.approx(calibration_error(rows, eta))
    assert CALIBRATION_ERROR_LIMIT == 0.30 and CALIBRATION_MIN_BLOCKS == 100
    assert check["flagged"] is flagged


def test_pooled_scores_reports_progress_per_patch() -> None:
    rng = np.random.default_rng(1)
    preds = [rng.random((16, 16)) > 0.5 for _ in range(3)]
    gts = [rng.random((16, 16)) > 0.5 for _ in range(3)]
    seen: list[tuple[int, int]] = []
    with_progress = pooled_scores(preds, gts, band=4, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert with_progress == pooled_scores(preds, gts, band=4)


def test_float_maps_are_cut_at_one_half_integers_at_nonzero_everywhere(tmp_path):
    """One rule for the library, `lsr evaluate` and Compare: a probability map handed to the
    scores directly is the network's mask (p ≥ 0.5), not everything above 0."""
    from lsr.cli.evaluate import read_mask
    from lsr.compare import mask_from_array
    from lsr.metrics import cancer_mask

    rng = np.random.default_rng(4)
    prob = rng.random((40, 40))
    prob[5, 5], prob[6, 6] = 0.5, np.nextafter(0.5, 0)
    labels = rng.integers(0, 3, (40, 40)).astype(np.uint8)
    p32 = prob.astype(np.float32)  # 0.5 - 2^-54 rounds to 0.5 here
    for a, want in ((prob, prob >= 0.5), (p32, p32 >= 0.5),
                    (labels, labels != 0), (labels == 1, labels == 1)):  # fmt: skip
        np.testing.assert_array_equal(cancer_mask(a), want)
        np.testing.assert_array_equal(mask_from_array(a, 1.0, (40, 40), 1.0), want)
    gt = rng.random((40, 40)) < 0.3
    scores = pooled_scores([prob], [gt], band=3)
    direct = pooled_scores([prob >= 0.5], [gt], band=3)
    assert scores == direct
    assert masked_iou_dice(prob, gt, band=3) == masked_iou_dice(prob >= 0.5, gt, band=3)
    soft_gt = np.where(gt, 0.9, 0.1)
    assert iou_dice(prob >= 0.5, soft_gt) == iou_dice(prob >= 0.5, gt)
    np.save(path := tmp_path / "gt.npy", soft_gt)
    np.testing.assert_array_equal(read_mask(path), gt)
