"""``tile="auto"``: the cheapest balanced grid whose tiles fit a memory budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.errors import LsrInputError
from lsr.tiling import auto_tile, round_up, tile_grid


def cost_and_memory(shape, tile, halo, m, bpp, batch=1):
    grid = tile_grid(shape, tile, halo, m)
    read = grid.read_shape[0] * grid.read_shape[1]
    return len(grid) * read, batch * read * bpp


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 900),
    w=st.integers(1, 900),
    halo=st.integers(0, 60),
    m=st.sampled_from([1, 4, 16]),
    budget_px=st.integers(2_000, 2_000_000),
    batch=st.integers(1, 3),
)
def test_auto_tile_is_the_cheapest_tile_within_the_budget(h, w, halo, m, budget_px, batch):
    bpp = 100.0
    budget = budget_px * bpp
    t = auto_tile((h, w), halo, m, bytes_per_px=bpp, budget_bytes=budget, batch_size=batch)
    cost, memory = cost_and_memory((h, w), t, halo, m, bpp, batch)
    # never larger than needed to cover the image in one tile
    assert t <= round_up(max(h, w), m)
    # brute force over every tile side from 64 px (auto_tile's floor) up to the image
    feasible = [
        cost_and_memory((h, w), s, halo, m, bpp, batch)[0]
        for s in range(min(round_up(64, m), round_up(max(h, w), m)), round_up(max(h, w), m) + 1, m)
        if cost_and_memory((h, w), s, halo, m, bpp, batch)[1] <= budget
    ]
    if feasible:
        assert memory <= budget
        assert cost == min(feasible)
    else:  # nothing fits: the smallest tile auto_tile considers
        assert t == min(round_up(64, m), round_up(max(h, w), m))


def test_large_budget_covers_the_image_in_one_tile_and_small_budget_splits_it():
    one = auto_tile((3125, 3125), 128, 16, bytes_per_px=576, budget_bytes=1e12)
    grid = tile_grid((3125, 3125), one, 128, 16)
    assert len(grid) == 1 and grid.tile_h == round_up(3125, 16)
    # the slide with the default U-Net (width 16) in 1 GiB: 3 x 3 tiles of 1056 px
    t = auto_tile((3125, 3125), 128, 16, bytes_per_px=32 * 16 + 64, budget_bytes=2**30)
    grid = tile_grid((3125, 3125), t, 128, 16)
    assert (len(grid), grid.tile_h) == (9, 1056)
    assert grid.read_shape[0] ** 2 * (32 * 16 + 64) <= 2**30
    # a batch of 2 must fit too: smaller tiles
    t2 = auto_tile((3125, 3125), 128, 16, bytes_per_px=576, budget_bytes=2**30, batch_size=2)
    assert t2 < t


def test_auto_tile_rejects_bad_budgets():
    with pytest.raises(LsrInputError):
        auto_tile((10, 10), 4, bytes_per_px=0, budget_bytes=1)
    with pytest.raises(LsrInputError):
        auto_tile((10, 10), 4, bytes_per_px=1, budget_bytes=-1)
    with pytest.raises(LsrInputError):
        auto_tile((0, 10), 4, bytes_per_px=1, budget_bytes=1)
