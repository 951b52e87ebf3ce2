"""Block dataset and augmentation: lazy reads, labels, context margin, tissue, determinism."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lsr.augment import NO_AUGMENT, AugmentConfig, augment, hed_jitter
from lsr.counttable import CountTable
from lsr.dataset import BlockDataset, BlockSource, tissue_fraction
from lsr.errors import LsrInputError
from lsr.model import INPUT_MEAN, INPUT_STD, normalise_rgb
from lsr.sampler import GroupBatchSampler, SamplerWarning

B = 16


@dataclass
class FakeSlide:
    """In-memory slide recording the size of every read (out of bounds: white)."""

    image: np.ndarray
    reads: list[tuple[int, int]] = field(default_factory=list)

    def read_working(self, y: int, x: int, h: int, w: int, working_mpp: float) -> np.ndarray:
        self.reads.append((h, w))
        f = working_mpp / 1.0  # this fake's native resolution is 1.0 µm/px
        if f != 1.0:  # coarse read: sub-sample
            k = round(f)
            return self.image[::k, ::k][y : y + h, x : x + w].copy()
        out = np.full((h, w, 3), 255, np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, self.image.shape[0]), min(x + w, self.image.shape[1])
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.image[y0:y1, x0:x1]
        return out


@dataclass
class FakeGrid:
    z: np.ndarray
    block_px: int = B

    def block_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        return (r * self.block_px, c * self.block_px, self.block_px, self.block_px)


def make_source(seed: int = 0, blank: tuple[int, int] | None = None) -> BlockSource:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 200, (3 * B, 4 * B, 3), dtype=np.uint8)
    if blank is not None:
        r, c = blank
        img[r * B : (r + 1) * B, c * B : (c + 1) * B] = 250
    z = np.array([[0, 1, -1, 9], [9, -1, 2, 0], [3, 3, 3, -1]])
    return BlockSource(FakeSlide(img), FakeGrid(z), name=f"s{seed}")


def dataset(**kw: object) -> BlockDataset:
    kw.setdefault("working_mpp", 1.0)
    return BlockDataset([make_source(0), make_source(1)], CountTable.paper_table1(), **kw)  # type: ignore[arg-type]


def test_items_labels_targets_and_lazy_reads() -> None:
    ds = dataset()
    table = CountTable.paper_table1()
    assert len(ds) == 2 * 9  # -1 blocks excluded
    assert (ds.labels >= 0).all()
    for i in range(len(ds)):
        item = ds[i]
        si, r, c, z = ds.index[i]
        assert item["image"].shape == (3, B, B) and item["image"].dtype == torch.float32
        assert item["z"] == z and item["slide"] == si and (item["row"], item["col"]) == (r, c)
        np.testing.assert_allclose(item["eta"].numpy(), table.eta[z], rtol=1e-6)
        np.testing.assert_allclose(item["rho"].numpy(), table.rho[z], rtol=1e-6)
        src = ds.sources[si].slide.image[r * B : (r + 1) * B, c * B : (c + 1) * B]
        expect = (src / 255.0 - np.array(INPUT_MEAN)) / np.array(INPUT_STD)
        np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), expect, atol=1e-5)
    reads = ds.sources[0].slide.reads
    assert reads and max(h * w for h, w in reads) == B * B  # block by block, never the slide


def test_context_margin_surrounds_the_block() -> None:
    ds = dataset(context_px=4)
    plain = dataset()
    for i in (0, 5, 10):
        wide, block = ds[i]["image"], plain[i]["image"]
        assert wide.shape == (3, B + 8, B + 8)
        assert torch.equal(wide[:, 4:-4, 4:-4], block)
    # a block at the slide's top-left corner gets white (normalised) padding
    corner = ds[0]["image"]
    white = normalise_rgb(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0]
    assert torch.allclose(corner[:, 0, 0], white)
    with pytest.raises(LsrInputError):
        dataset(context_px=-1)


def test_tissue_filter_skips_blank_blocks() -> None:
    srcs = [make_source(0, blank=(0, 0))]
    ds = BlockDataset(srcs, CountTable.paper_table1(), working_mpp=1.0, min_tissue=0.5)
    assert ds.skipped_background == 1 and len(ds) == 8
    assert (0, 0, 0) not in {tuple(row[:3]) for row in ds.index.tolist()}
    assert tissue_fraction(np.full((4, 4, 3), 250, np.uint8)) == 0.0
    assert tissue_fraction(np.zeros((4, 4, 3), np.uint8)) == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(LsrInputError, match="no training data"):
        BlockDataset([], CountTable.paper_table1(), working_mpp=1.0)
    empty = BlockSource(FakeSlide(np.zeros((B, B, 3), np.uint8)), FakeGrid(np.full((1, 1), -1)))
    with pytest.raises(LsrInputError, match="no labelled blocks"):
        BlockDataset([empty], CountTable.paper_table1(), working_mpp=1.0)
    big = BlockSource(FakeSlide(np.zeros((B, B, 3), np.uint8)), FakeGrid(np.full((1, 1), 12)))
    with pytest.raises(LsrInputError, match="bins"):
        BlockDataset([big], CountTable.paper_table1(), working_mpp=1.0)


def test_augmentation_is_deterministic_per_draw_and_keeps_pixels() -> None:
    ds = dataset(augment_config=AugmentConfig(), seed=3)
    a, b, c = ds[(4, 0, 100)], ds[(4, 1, 100)], ds[(4, 0, 101)]
    assert torch.equal(a["image"], b["image"])  # same draw key → same augmentation
    assert not torch.equal(a["image"], c["image"])  # another draw → another one
    assert a["group"] == 0 and b["group"] == 1
    other_seed = dataset(augment_config=AugmentConfig(), seed=4)
    assert not torch.equal(a["image"], other_seed[(4, 0, 100)]["image"])
    # geometric augmentation only: a permutation of the pixels
    geo = dataset(augment_config=AugmentConfig(hed_scale=0, hed_shift=0, brightness=0, gamma=0))
    plain = dataset()
    for draw in range(6):
        x, y = geo[(2, 0, draw)]["image"], plain[2]["image"]
        assert torch.equal(x.flatten(1).sort(dim=1).values, y.flatten(1).sort(dim=1).values)


def test_geometric_augmentation_keeps_the_block_central() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(3, 20, 20)
    cfg = AugmentConfig(hed_scale=0, hed_shift=0, brightness=0, gamma=0)
    for _ in range(8):
        state = gen.get_state()
        wide = augment(img, gen, cfg)[:, 2:-2, 2:-2]
        gen2 = torch.Generator()
        gen2.set_state(state)
        centre = augment(img[:, 2:-2, 2:-2], gen2, cfg)
        assert torch.equal(wide, centre)


def test_hed_jitter_identity_and_mildness() -> None:
    img = torch.rand(3, 8, 8) * 0.9 + 0.1
    same = hed_jitter(img, torch.ones(3), torch.zeros(3))
    assert torch.allclose(same, img, atol=1e-5)
    gen = torch.Generator().manual_seed(1)
    out = augment(img, gen, AugmentConfig(flips=False, rotate90=False))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert (out - img).abs().mean() < 0.1
    assert not AugmentConfig(False, False, 0, 0, 0, 0).enabled and AugmentConfig().enabled
    assert AugmentConfig(False, False, 0, 0, 0, 0) == NO_AUGMENT


def test_loader_batches_identical_with_workers() -> None:
    ds = dataset(augment_config=AugmentConfig(), seed=1)
    with pytest.warns(SamplerWarning):  # bins 1 and 2 have 2 blocks each
        sampler = GroupBatchSampler(ds.labels, 2, 3, seed=0, steps=3)

    def batches(workers: int) -> list[dict[str, torch.Tensor]]:
        sampler.position = 0
        return list(DataLoader(ds, batch_sampler=sampler, num_workers=workers))

    serial, parallel = batches(0), batches(2)
    for a, b in zip(serial, parallel, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    groups = serial[0]["group"]
    assert groups.tolist() == [0, 0, 0, 1, 1, 1]


def test_real_slide_and_grid_files(tmp_path: Path) -> None:
    from lsr.grid import BlockGrid, save_grid
    from lsr.slide import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (64, 96, 3), dtype=np.uint8)
    img[:32, :32] = 255
    write_pyramidal_tiff(tmp_path / "s.tif", img, mpp=2.0, tile=32, compression="zlib")
    probs = np.array([[0.1, 0.97, np.nan], [0.55, 0.25, 0.1]], np.float32)
    save_grid(BlockGrid(probs, 32), tmp_path / "s.npy")
    ds = BlockDataset(
        [BlockSource(tmp_path / "s.tif", tmp_path / "s.npy")],
        CountTable.paper_table1(),
        working_mpp=2.0,
        block_px=32,
    )
    assert len(ds) == 5 and sorted(ds.labels.tolist()) == [0, 0, 1, 4, 9]
    item = ds[int(np.flatnonzero(ds.labels == 9)[0])]
    np.testing.assert_allclose(
        item["image"].permute(1, 2, 0).numpy(),
        (img[:32, 32:64] / 255.0 - np.array(INPUT_MEAN)) / np.array(INPUT_STD),
        atol=1e-5,
    )
    filtered = BlockDataset(
        [BlockSource(tmp_path / "s.tif", tmp_path / "s.npy")],
        CountTable.paper_table1(),
        working_mpp=2.0,
        block_px=32,
        min_tissue=0.5,
    )
    assert filtered.skipped_background == 1 and len(filtered) == 4


def test_slide_cache_gives_the_same_blocks_with_one_read_per_slide(tmp_path: Path) -> None:
    from lsr.slide import write_pyramidal_tiff

    # a real pyramidal TIFF at 2 µm/px read at working 4 µm/px (area-averaged), context 5 px
    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (6 * 2 * B, 5 * 2 * B, 3), dtype=np.uint8)
    path = tmp_path / "s.tif"
    write_pyramidal_tiff(path, img, mpp=2.0, tile=64)
    z = np.full((6, 5), -1)
    z[1:5, 1:4] = 3  # a labelled area inside the slide: the cache holds only that box
    z[5, 4] = 0  # and a block at the edge: its context lies beyond the slide (white)
    kw = dict(working_mpp=4.0, block_px=B, context_px=5)
    plain = BlockDataset([BlockSource(path, FakeGrid(z))], CountTable.paper_table1(), **kw)
    cached = BlockDataset(
        [BlockSource(path, FakeGrid(z))], CountTable.paper_table1(), cache_mb=64, **kw
    )
    for i in range(len(plain)):
        np.testing.assert_array_equal(cached.read_block(i), plain.read_block(i))
    y0, x0, area = cached._cache[0]
    assert (y0, x0) == (B - 5, B - 5)
    assert area.shape == (5 * B + 10, 4 * B + 10, 3)


def test_slide_cache_respects_its_budget() -> None:
    src = [make_source(0), make_source(1)]
    # each slide's labelled area is (3B+0) x (4B) x 3 bytes = 9216 B; budget fits one
    ds = BlockDataset(src, CountTable.paper_table1(), working_mpp=1.0, cache_mb=10_000 / 2**20)
    first = [i for i in range(len(ds)) if ds.index[i, 0] == 0]
    second = [i for i in range(len(ds)) if ds.index[i, 0] == 1]
    for i in first:
        ds.read_block(i)
    assert list(ds._cache) == [0] and len(src[0].slide.reads) == 1
    ds.read_block(second[0])
    assert list(ds._cache) == [1]  # the least recently used slide was dropped
    tiny = BlockDataset(src, CountTable.paper_table1(), working_mpp=1.0, cache_mb=1e-4)
    before = len(src[0].slide.reads)
    tiny.read_block(first[0])
    tiny.read_block(first[1])
    assert not tiny._cache and len(src[0].slide.reads) == before + 2  # block by block
    assert tiny._too_big == {0}  # remembered: later blocks skip the size computation


def test_probability_grid_is_binned_with_the_tables_own_edges() -> None:
    """A 3-bin table (edges 0, .5, .8, 1): p = .6 is its bin 1, not the paper's bin 4."""
    from lsr.grid import BlockGrid

    probs = np.array([[0.1, 0.6, np.nan, 0.9], [0.55, 0.85, 0.3, np.nan], [0.2, 0.79, 0.81, 1.0]])
    img = np.random.default_rng(0).integers(0, 200, (3 * B, 4 * B, 3), dtype=np.uint8)
    grid = BlockGrid(probs, B)
    eta = np.array([[0.1, 0.9], [0.5, 0.5], [0.8, 0.2]])
    table = CountTable(eta, np.full((3, 2), 0.1), edges=(0.0, 0.5, 0.8, 1.0))
    ds = BlockDataset([BlockSource(FakeSlide(img), grid)], table, working_mpp=1.0)
    want = np.searchsorted([0.0, 0.5, 0.8, 1.0], probs[~np.isnan(probs)], side="right") - 1
    np.testing.assert_array_equal(np.sort(ds.labels), np.sort(np.minimum(want, 2)))
    # with the paper's table the same grid has ten bins' worth of labels
    paper = BlockDataset([BlockSource(FakeSlide(img), grid)], CountTable.paper_table1(),
                         working_mpp=1.0)  # fmt: skip
    assert paper.labels.max() == 9


def test_no_block_left_says_why_and_names_the_grid(tmp_path: Path) -> None:
    from lsr.grid import BlockGrid, save_grid
    from lsr.slide import write_pyramidal_tiff

    img = np.full((32, 64, 3), 255, np.uint8)  # two blocks, each half glass, half tissue
    img[:16] = (150, 60, 140)
    write_pyramidal_tiff(tmp_path / "s.tif", img, mpp=2.0, tile=32, compression="zlib")
    save_grid(BlockGrid(np.array([[0.3, 0.9]], np.float32), 32), tmp_path / "s.npy")
    save_grid(BlockGrid(np.full((1, 2), np.nan, np.float32), 32), tmp_path / "none.npy")
    kw = dict(working_mpp=2.0, block_px=32)
    src = BlockSource(tmp_path / "s.tif", tmp_path / "s.npy")
    with pytest.raises(LsrInputError) as err:
        BlockDataset([src], CountTable.paper_table1(), min_tissue=0.9, **kw)
    assert str(err.value).startswith(f"{tmp_path / 's.npy'}: no labelled blocks with tissue")
    assert "all 2 labelled blocks of the grid are under min_tissue 0.9" in str(err.value)
    assert len(BlockDataset([src], CountTable.paper_table1(), min_tissue=0.3, **kw)) == 2
    unlabelled = BlockSource(tmp_path / "s.tif", tmp_path / "none.npy")
    with pytest.raises(LsrInputError) as err:
        BlockDataset([unlabelled, unlabelled], CountTable.paper_table1(), **kw)
    assert str(err.value) == (
        "no labelled blocks: every block of the grids (none.npy, none.npy) is unlabelled "
        "(NaN probability or z = -1)"
    )
