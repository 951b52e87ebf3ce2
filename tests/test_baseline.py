"""Tests for the low-resolution model (lsr.baseline): hand-built cases and a loop reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.baseline import low_res_mask, low_res_probability
from lsr.errors import LsrInputError


def loop_probability(block_probs, block_px, out_shape, fill=np.nan):
    h, w = out_shape
    out = np.full((h, w), fill, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            r, c = y // block_px, x // block_px
            if r < block_probs.shape[0] and c < block_probs.shape[1]:
                v = block_probs[r, c]
                out[y, x] = fill if np.isnan(v) else v
    return out


def loop_mask(block_probs, block_px, out_shape, threshold=0.5):
    h, w = out_shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            r, c = y // block_px, x // block_px
            if r < block_probs.shape[0] and c < block_probs.shape[1]:
                v = block_probs[r, c]
                out[y, x] = (not np.isnan(v)) and v >= threshold
    return out


def test_hand_built_case():
    grid = np.array([[0.1, 0.5], [np.nan, 0.95]])
    mask = low_res_mask(grid, 2)
    expected = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 0, 1, 1],
        ],
        dtype=bool,
    )
    assert mask.dtype == bool and mask.shape == (4, 4)
    np.testing.assert_array_equal(mask, expected)
    # crop to 3×5: the fifth column is padding (non-cancer), the fourth row is cropped
    np.testing.assert_array_equal(
        low_res_mask(grid, 2, (3, 5)),
        np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0]], dtype=bool),
    )
    prob = low_res_probability(grid, 2, (3, 5))
    np.testing.assert_array_equal(
        prob,
        np.array(
            [
                [0.1, 0.1, 0.5, 0.5, np.nan],
                [0.1, 0.1, 0.5, 0.5, np.nan],
                [np.nan, np.nan, 0.95, 0.95, np.nan],
            ]
        ),
    )
    assert low_res_probability(grid, 2, (3, 5), fill=0.0)[2, 0] == 0.0


def test_threshold_is_inclusive_and_configurable():
    grid = np.array([[0.49999, 0.5, 0.7]])
    np.testing.assert_array_equal(low_res_mask(grid, 1)[0], [False, True, True])
    np.testing.assert_array_equal(low_res_mask(grid, 1, threshold=0.7)[0], [False, False, True])


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5),
    cols=st.integers(1, 5),
    block_px=st.integers(1, 6),
    dh=st.integers(-8, 8),
    dw=st.integers(-8, 8),
    seed=st.integers(0, 2**32 - 1),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_matches_loop_implementation(rows, cols, block_px, dh, dw, seed, threshold):
    rng = np.random.default_rng(seed)
    grid = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0, np.nan], size=(rows, cols))
    shape = (max(0, rows * block_px + dh), max(0, cols * block_px + dw))
    np.testing.assert_array_equal(
        low_res_mask(grid, block_px, shape, threshold),
        loop_mask(grid, block_px, shape, threshold),
    )
    np.testing.assert_array_equal(
        low_res_probability(grid, block_px, shape), loop_probability(grid, block_px, shape)
    )


def test_paper_sized_block():
    grid = np.array([[0.9, 0.1]])
    mask = low_res_mask(grid, 240, (240, 400))
    assert mask[:, :240].all() and not mask[:, 240:].any()


@pytest.mark.parametrize(
    ("grid", "block_px", "out_shape", "match"),
    [
        (np.zeros(3), 2, None, "2-D"),
        (np.array([[1.5]]), 2, None, r"\[0, 1\]"),
        (np.array([[-0.1]]), 2, None, r"\[0, 1\]"),
        (np.zeros((2, 2)), 0, None, "block_px"),
        (np.zeros((2, 2)), 2.5, None, "block_px"),
        (np.zeros((2, 2)), 2, (3,), "out_shape"),
        (np.zeros((2, 2)), 2, (-1, 3), "out_shape"),
        (np.array([["a"]]), 2, None, "real numbers"),
    ],
)
def test_bad_input(grid, block_px, out_shape, match):
    with pytest.raises(LsrInputError, match=match):
        low_res_mask(grid, block_px, out_shape)


def test_bad_threshold():
    with pytest.raises(LsrInputError, match="threshold"):
        low_res_mask(np.zeros((1, 1)), 1, threshold=50)
