"""Where tiles come from: a grid of large tiles with a halo, and which of them hold tissue.

Tiled inference of a fully convolutional network reproduces a one-shot pass exactly when
every tile's input reaches ``halo`` px beyond the tile on each side (``halo`` ≥ the
network's receptive-field reach) and when every tile is read on the network's down-sampling
lattice: a U-Net with ``depth`` 2×2 poolings is only equivariant to shifts by multiples of
``2**depth``. So the tile side and the halo are rounded up to multiples of that ``multiple``
and all tiles are read with the same input size (edge tiles read white beyond the slide),
which also lets tiles of a batch be stacked.

All coordinates here are working-resolution pixels ``(y, x)`` of the whole slide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lsr.errors import LsrInputError


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ ``n`` (``multiple`` ≥ 1)."""
    return -(-int(n) // int(multiple)) * int(multiple)


@dataclass(frozen=True)
class Tile:
    """One tile: the core it writes (in bounds) and the box it reads (may leave the slide).

    ``y, x, h, w``: the core in working px, clipped to the slide; ``halo``: px read beyond
    the core on each side; ``read_h, read_w``: input size (core size before clipping + 2 halo,
    the same for every tile of a grid).
    """

    index: int
    y: int
    x: int
    h: int
    w: int
    halo: int
    read_h: int
    read_w: int

    @property
    def read_box(self) -> tuple[int, int, int, int]:
        """(y, x, h, w) of the input to read; parts outside the slide are padding."""
        return (self.y - self.halo, self.x - self.halo, self.read_h, self.read_w)

    @property
    def core(self) -> tuple[slice, slice]:
        """Slices of the slide-sized output this tile writes."""
        return (slice(self.y, self.y + self.h), slice(self.x, self.x + self.w))

    @property
    def core_in_output(self) -> tuple[slice, slice]:
        """Slices of the tile's (read_h, read_w) prediction that are its core."""
        return (slice(self.halo, self.halo + self.h), slice(self.halo, self.halo + self.w))


@dataclass(frozen=True)
class TileGrid:
    """Non-overlapping cores of ``tile_h × tile_w`` covering ``shape``, each read with a halo.

    Build with :func:`tile_grid`. ``tiles`` is in row-major order.
    """

    shape: tuple[int, int]
    tile_h: int
    tile_w: int
    halo: int
    multiple: int
    tiles: tuple[Tile, ...]

    @property
    def read_shape(self) -> tuple[int, int]:
        """(h, w) of every tile's input."""
        return (self.tile_h + 2 * self.halo, self.tile_w + 2 * self.halo)

    @property
    def overhead(self) -> float:
        """Input pixels computed per output pixel (≥ 1): the cost of the halo and edges."""
        n_in = len(self.tiles) * self.read_shape[0] * self.read_shape[1]
        return n_in / max(self.shape[0] * self.shape[1], 1)

    def __len__(self) -> int:
        return len(self.tiles)


def _balanced(n: int, tile: int, m: int) -> int:
    """Core side ≤ ``round_up(tile, m)`` that splits ``n`` px into equal tiles (multiple of m).

    With ``k = ceil(n / tile)`` tiles, each gets ``round_up(ceil(n / k), m)`` px, so the last
    tile is not a sliver that costs a whole tile of compute.
    """
    k = -(-n // round_up(tile, m))
    return round_up(-(-n // k), m)


def tile_grid(shape: tuple[int, int], tile: int, halo: int, multiple: int = 1) -> TileGrid:
    """Tiles for an image of ``shape`` (H, W) working px.

    ``tile``: largest core side in px; per axis the image is split into
    ``ceil(side / tile)`` equal cores (rounded up to ``multiple``) so no tile is a sliver.
    ``halo``: px of context on each side (rounded up to ``multiple``). ``multiple``: the
    network's down-sampling factor (``2**depth`` for a U-Net), so every read starts on its
    lattice.
    """
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise LsrInputError(f"cannot tile an empty image of shape {shape}")
    if int(tile) < 1:
        raise LsrInputError(f"tile must be ≥ 1 px, got {tile}")
    if int(halo) < 0:
        raise LsrInputError(f"halo must be ≥ 0 px, got {halo}")
    if int(multiple) < 1:
        raise LsrInputError(f"multiple must be ≥ 1, got {multiple}")
    m = int(multiple)
    th, tw = _balanced(h, int(tile), m), _balanced(w, int(tile), m)
    halo = round_up(halo, m)
    tiles = []
    for y in range(0, h, th):
        for x in range(0, w, tw):
            tiles.append(
                Tile(len(tiles), y, x, min(th, h - y), min(tw, w - x), halo, th + 2 * halo,
                     tw + 2 * halo)
            )  # fmt: skip
    return TileGrid((h, w), th, tw, halo, m, tuple(tiles))


def tiles_with_tissue(grid: TileGrid, mask: np.ndarray) -> list[Tile]:
    """The tiles whose core touches a True pixel of ``mask``.

    ``mask``: (h, w) bool covering the whole slide at any resolution (e.g. a thumbnail
    mask); a tile's core is mapped onto it by the ratio of the shapes, rounded outwards so
    that tissue on a tile's border is never missed.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.size == 0:
        raise LsrInputError(f"tissue mask must be a non-empty 2-D array, got shape {mask.shape}")
    sy, sx = mask.shape[0] / grid.shape[0], mask.shape[1] / grid.shape[1]
    # integral image: any() over a box in O(1)
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0), axis=1, out=ii[1:, 1:])
    keep = []
    for t in grid.tiles:
        y0 = min(math.floor(t.y * sy), mask.shape[0] - 1)
        x0 = min(math.floor(t.x * sx), mask.shape[1] - 1)
        y1 = max(math.ceil((t.y + t.h) * sy), y0 + 1)
        x1 = max(math.ceil((t.x + t.w) * sx), x0 + 1)
        y1, x1 = min(y1, mask.shape[0]), min(x1, mask.shape[1])
        if ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0] > 0:
            keep.append(t)
    return keep
