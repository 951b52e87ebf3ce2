"""Training blocks: image, label ``z`` and table targets, read lazily from slides.

:class:`BlockDataset` indexes every *labelled* block (``z ≥ 0``) of any number of slides,
each paired with its low-resolution grid, and reads a block only when it is asked for
(``Slide.read_working``: never a whole slide in memory). Optionally it

- skips background blocks (``min_tissue``: the block's tissue fraction, tested once at
  construction on cheap coarse reads, see :meth:`BlockDataset._tissue_fractions`);
- adds a ``context_px`` margin around each block: the network sees ``block + 2 × margin``
  pixels, and the trainer crops the probabilities back to the central block before the
  loss (the labels describe the block only);
- keeps each slide's labelled area at working resolution in memory (``cache_mb``, least
  recently used slides dropped first): reading a block through tiffslide's zarr store costs
  ~8 ms, a slice of the cached image ~0.05 ms, and at working resolution (4.17 µm/px) even a
  gigapixel slide is only ~30-100 MB; the cached pixels are exactly those of block reads;
- augments (see :mod:`lsr.augment`), seeded by ``(seed, draw)``, so an item is a pure
  function of the run seed and the sampler's key: identical with any number of workers
  and on resume.

Units: block boxes and ``context_px`` are working-resolution pixels; ``eta``/``rho`` are
fractions (B, L) from the count table.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from lsr.augment import NO_AUGMENT, AugmentConfig, augment
from lsr.errors import LsrInputError
from lsr.model import normalise_rgb
from lsr.slide import slide_name

#: A pixel is background when all of R, G, B are at least this (uint8) — white glass.
WHITE_LEVEL = 220
#: Reads for the tissue test are this many times coarser than the working resolution.
TISSUE_TEST_FACTOR = 8


class SlideLike(Protocol):
    """What the dataset needs from a slide (``lsr.slide.Slide`` and test fakes)."""

    def read_working(self, y: int, x: int, h: int, w: int, working_mpp: float) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB at ``working_mpp``; out-of-bounds pixels white."""
        ...


class GridLike(Protocol):
    """What the dataset needs from a low-resolution grid (``lsr.grid.BlockGrid``)."""

    z: np.ndarray  # (rows, cols) int, -1 = no label

    def block_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        """``(y, x, h, w)`` of block (r, c) in working-resolution pixels."""
        ...


@dataclass
class BlockSource:
    """One slide (a path or a :class:`SlideLike`) and its grid (a path or a :class:`GridLike`);
    ``mpp`` (µm/px) opens a slide path whose file lacks its pixel size."""

    slide: Any
    grid: Any
    name: str = ""
    mpp: float | None = None


def tissue_fraction(rgb: np.ndarray, white_level: int = WHITE_LEVEL) -> float:
    """Fraction of pixels of ``rgb`` (h, w, 3) uint8 that are not white background."""
    if rgb.size == 0:
        return 0.0
    return float(np.mean(np.any(rgb < white_level, axis=-1)))


def _open_grid(grid: Any, block_px: int | None, working_mpp: float) -> GridLike:
    """A grid object as it is; a grid file read at ``block_px`` (None: its sidecar's, else
    240), which its sidecar, when it has one, must agree with, as with ``working_mpp``."""
    if hasattr(grid, "z") and hasattr(grid, "block_box"):
        return grid
    from lsr.grid import check_sidecar, grid_geometry, load_grid

    if block_px is None:
        block_px = int(grid_geometry(grid)["block_px"])
    check_sidecar(grid, block_px, working_mpp)
    return load_grid(grid, block_px=block_px)


class BlockDataset(Dataset):
    """Labelled blocks of several slides; item ``i`` is a dict of tensors (see ``__getitem__``).

    ``table`` is a :class:`lsr.counttable.CountTable` (targets ``eta``, ``rho`` (Z, L)).
    ``block_px`` overrides the block size read (default: each box's own size);
    ``context_px`` is the margin on each side. ``labels`` (N,) and ``index`` (N, 4) =
    (source, row, col, z) describe the kept blocks.
    """

    def __init__(
        self,
        sources: Sequence[BlockSource],
        table: Any,
        *,
        working_mpp: float,
        block_px: int | None = None,
        context_px: int = 0,
        augment_config: AugmentConfig | None = None,
        seed: int = 0,
        min_tissue: float = 0.0,
        cache_mb: float = 0.0,
    ):
        if context_px < 0:
            raise LsrInputError(f"context_px must be ≥ 0, got {context_px}")
        self.sources = list(sources)
        if not self.sources:
            raise LsrInputError("no training data: give at least one (slide, grid) pair")
        self.table = table
        self.eta = np.asarray(table.eta, dtype=np.float32)
        self.rho = np.asarray(table.rho, dtype=np.float32)
        self.working_mpp = float(working_mpp)
        self.block_px = block_px
        self.context_px = int(context_px)
        self.augment_config = augment_config or NO_AUGMENT
        self.seed = int(seed)
        self.min_tissue = float(min_tissue)
        self.epoch = 0
        self.names = [s.name or slide_name(str(s.slide)) for s in self.sources]
        self.grids = [_open_grid(s.grid, block_px, self.working_mpp) for s in self.sources]
        self._slides: dict[int, SlideLike] = {}
        self._slides_pid = -1
        self.cache_mb = float(cache_mb)
        #: source -> (y0, x0, image) of its labelled area (+ context), LRU order
        self._cache: OrderedDict[int, tuple[int, int, np.ndarray]] = OrderedDict()
        self._too_big: set[int] = set()  # sources whose area exceeds the budget
        rows = []
        self.skipped_background = 0
        for si, grid in enumerate(self.grids):
            self._check_fits(si, grid)
            where = self.sources[si].grid if not hasattr(self.sources[si].grid, "z") else None
            edges = getattr(table, "edges", None)
            try:  # probabilities binned with the table's own edges (paper's: 10 bins)
                binned = edges is not None and hasattr(grid, "bins")
                z = np.asarray(grid.bins(edges) if binned else grid.z)
            except LsrInputError as err:
                raise LsrInputError(err.problem, where) from None
            n_bins = self.eta.shape[0]
            if (z >= n_bins).any():
                raise LsrInputError(
                    f"grid has labels up to {int(z.max())} but the count table has {n_bins} bins",
                    where,
                )
            tissue = self._tissue_fractions(si) if self.min_tissue > 0 else None
            for r, c in zip(*np.nonzero(z >= 0), strict=True):
                if tissue is not None and tissue[r, c] < self.min_tissue:
                    self.skipped_background += 1
                    continue
                rows.append((si, int(r), int(c), int(z[r, c])))
        if not rows:
            raise self._no_blocks()
        self.index = np.asarray(rows, dtype=np.int64)
        self.labels = self.index[:, 3].copy()

    def _no_blocks(self) -> LsrInputError:
        """Why no block is left, naming the grids: none labelled, or all skipped as glass."""
        grids = [s.grid for s in self.sources if not hasattr(s.grid, "z")]
        where = grids[0] if len(grids) == 1 else None
        named = "" if len(grids) < 2 else " (" + ", ".join(
            Path(str(g)).name for g in grids[:3]
        ) + (", …" if len(grids) > 3 else "") + ")"  # fmt: skip
        if self.skipped_background:
            return LsrInputError(
                f"no labelled blocks with tissue: all {self.skipped_background} labelled blocks "
                f"of the grid{'s' * (len(self.sources) > 1)}{named} are under min_tissue "
                f"{self.min_tissue:g} (lower --min-tissue, or check the slides are the grids')",
                where,
            )
        return LsrInputError(
            f"no labelled blocks: every block of the grid{'s' * (len(self.sources) > 1)}{named} "
            "is unlabelled (NaN probability or z = -1)",
            where,
        )

    def _check_fits(self, si: int, grid: GridLike) -> None:
        """Open source ``si``'s slide and reject a grid that does not tile it.

        Why here: blocks outside the slide would be read as white glass and still carry
        their labels, and a missing or unreadable slide should fail before training starts,
        not at its first block. Slides without ``working_shape`` or grids without
        ``check_fits`` (test fakes) are not checked.
        """
        check = getattr(grid, "check_fits", None)
        slide = self.slide(si)
        shape_of = getattr(slide, "working_shape", None)
        if check is None or shape_of is None:
            return
        source = self.sources[si]
        try:
            check(shape_of(self.working_mpp))
        except LsrInputError as err:
            which = getattr(slide, "path", None) or self.names[si]
            grid_path = None if hasattr(source.grid, "z") else source.grid
            raise LsrInputError(
                f"{err.problem} (slide {which} at {self.working_mpp:g} µm/px)",
                grid_path if grid_path is not None else err.path,
            ) from None

    # ------------------------------------------------------------------ slides
    def slide(self, si: int) -> SlideLike:
        """The slide of source ``si``, opened on first use in *this* process (workers too)."""
        if self._slides_pid != os.getpid():
            self._slides = {}
            self._cache = OrderedDict()
            self._slides_pid = os.getpid()
        if si not in self._slides:
            s = self.sources[si].slide
            if hasattr(s, "read_working"):
                self._slides[si] = s
            else:
                from lsr.slide import open_slide

                self._slides[si] = open_slide(s, mpp=self.sources[si].mpp)
        return self._slides[si]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slides"] = {}
        state["_cache"] = OrderedDict()
        state["_slides_pid"] = -1
        return state

    def _cached_area(self, si: int) -> tuple[int, int, np.ndarray] | None:
        """``(y0, x0, (h, w, 3) uint8)``: the box around source ``si``'s kept blocks and
        their context at working resolution, read once; None when it does not fit the
        budget (then blocks are read one by one)."""
        slide = self.slide(si)  # resets the cache in a new (worker) process
        if si in self._cache:
            self._cache.move_to_end(si)
            return self._cache[si]
        if si in self._too_big:  # known not to fit: no box computation on every block
            return None
        rows = self.index[self.index[:, 0] == si]
        if not len(rows):
            return None
        m = self.context_px
        boxes = np.array([self._box(si, int(r), int(c)) for _, r, c, _ in rows])
        y0, x0 = int(boxes[:, 0].min()) - m, int(boxes[:, 1].min()) - m
        y1 = int((boxes[:, 0] + boxes[:, 2]).max()) + m
        x1 = int((boxes[:, 1] + boxes[:, 3]).max()) + m
        budget = self.cache_mb * 2**20
        nbytes = (y1 - y0) * (x1 - x0) * 3
        if nbytes > budget:
            self._too_big.add(si)
            return None
        while self._cache and sum(v[2].nbytes for v in self._cache.values()) + nbytes > budget:
            self._cache.popitem(last=False)
        area = slide.read_working(y0, x0, y1 - y0, x1 - x0, self.working_mpp)
        self._cache[si] = (y0, x0, area)
        return self._cache[si]

    def _box(self, si: int, r: int, c: int) -> tuple[int, int, int, int]:
        y, x, h, w = (int(v) for v in self.grids[si].block_box(r, c))
        if self.block_px is not None:
            h = w = int(self.block_px)
        return y, x, h, w

    def _tissue_fractions(self, si: int) -> np.ndarray:
        """(rows, cols) tissue fraction of every block of source ``si`` (cheap, coarse reads).

        Slides of :mod:`lsr.slide` with a :class:`lsr.grid.BlockGrid` use the tissue module
        (one Otsu-thresholded thumbnail of the grid's area); other slide-like objects get a
        per-block whiteness test on a read :data:`TISSUE_TEST_FACTOR` times coarser.
        """
        from lsr.grid import BlockGrid
        from lsr.slide import Slide

        slide, grid = self.slide(si), self.grids[si]
        if (
            isinstance(slide, Slide)
            and isinstance(grid, BlockGrid)
            and self.block_px
            in (
                None,
                grid.block_px,
            )
        ):
            from lsr.tissue import block_tissue_fraction

            return np.asarray(block_tissue_fraction(slide, grid, working_mpp=self.working_mpp))
        z = np.asarray(grid.z)
        out = np.zeros(z.shape, dtype=np.float64)
        f = TISSUE_TEST_FACTOR
        for r, c in zip(*np.nonzero(z >= 0), strict=True):
            y, x, h, w = self._box(si, int(r), int(c))
            rgb = slide.read_working(
                y // f, x // f, max(h // f, 1), max(w // f, 1), self.working_mpp * f
            )
            out[r, c] = tissue_fraction(rgb)
        return out

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return int(self.index.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """For plain integer indexing: items of another epoch get other augmentations."""
        self.epoch = int(epoch)

    def read_block(self, i: int) -> np.ndarray:
        """Block ``i`` and its context margin, ``(h + 2m, w + 2m, 3)`` uint8, not augmented."""
        si, r, c, _ = (int(v) for v in self.index[i])
        y, x, h, w = self._box(si, r, c)
        m = self.context_px
        cached = self._cached_area(si) if self.cache_mb > 0 else None
        if cached is not None:
            y0, x0, area = cached
            return area[y - m - y0 : y + h + m - y0, x - m - x0 : x + w + m - x0]
        return self.slide(si).read_working(y - m, x - m, h + 2 * m, w + 2 * m, self.working_mpp)

    def generator(self, draw: int, i: int) -> torch.Generator:
        """The augmentation generator of draw ``draw`` of item ``i`` (pure function of seed)."""
        words = np.random.SeedSequence([self.seed, int(draw), int(i)]).generate_state(2)
        seed = (int(words[0]) << 32 | int(words[1])) & ((1 << 63) - 1)
        return torch.Generator().manual_seed(seed)

    def __getitem__(self, key: int | Sequence[int]) -> dict[str, Any]:
        """``key`` is an index or a sampler key ``(index, group, draw)``.

        Returns ``image`` (3, h + 2m, w + 2m) float32 normalised, ``z`` int, ``eta`` and
        ``rho`` (L,) float32 fractions, ``block`` (dataset index), ``slide`` (source index),
        ``row``, ``col`` (grid cell), ``group`` (from the key, else −1).
        """
        if isinstance(key, (int, np.integer)):
            i, group, draw = int(key), -1, self.epoch * len(self) + int(key)
        else:
            i, group, draw = (int(v) for v in key)
        if not 0 <= i < len(self):
            raise IndexError(i)
        si, r, c, z = (int(v) for v in self.index[i])
        rgb = self.read_block(i)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
        if self.augment_config.enabled:
            image = augment(image, self.generator(draw, i), self.augment_config)
        return {
            "image": normalise_rgb(image),
            "z": z,
            "eta": torch.from_numpy(self.eta[z].copy()),
            "rho": torch.from_numpy(self.rho[z].copy()),
            "block": i,
            "slide": si,
            "row": r,
            "col": c,
            "group": group,
        }

    def bin_counts(self) -> dict[int, int]:
        """Number of kept blocks per label ``z`` (for reports and the sampler warning)."""
        zs, counts = np.unique(self.labels, return_counts=True)
        return {int(a): int(b) for a, b in zip(zs, counts, strict=True)}
