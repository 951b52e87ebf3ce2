"""Where tiles come from: a grid of large tiles with a halo, and which of them hold tissue.

Tiled inference of a fully convolutional network reproduces a one-shot pass exactly when
every tile's input reaches ``halo`` px beyond the tile on each side (``halo`` ≥ the
network's receptive-field reach) and when every tile is read on the network's down-sampling
lattice: a U-Net with ``depth`` 2×2 poolings is only equivariant to shifts by multiples of
``2**depth``. So the tile side and the halo are rounded up to multiples of that ``multiple``
and all tiles are read with the same input size (edge tiles read white beyond the slide),
which also lets tiles of a batch be stacked.

The halo costs ``((t + 2 h) / t)²`` in compute for cores of side ``t``, so tiles should be as
large as memory allows: :func:`auto_tile` picks the balanced grid with the fewest input
pixels whose batch of tiles fits a memory budget (the network's activations grow with the
tile, never with the slide).

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


def _breakpoints(side: int, multiple: int, min_tile: int) -> set[int]:
    """Smallest ``tile`` (multiple of ``multiple``, ≥ ``min_tile``) giving ``k`` = 1, 2, ...
    cores on an axis of ``side`` px: the only tiles at which a balanced grid changes."""
    out = set()
    for k in range(1, side + 1):
        t = round_up(-(-side // k), multiple)
        if t < min_tile:
            break
        out.add(t)
    return out


def auto_tile(
    shape: tuple[int, int],
    halo: int,
    multiple: int = 1,
    *,
    bytes_per_px: float,
    budget_bytes: float,
    batch_size: int = 1,
    min_tile: int = 64,
) -> int:
    """The ``tile`` for :func:`tile_grid` that computes the fewest input px within a budget.

    A grid's cost is ``tiles × read_h × read_w`` input px (halo and edges included); its
    memory is ``batch_size × read_h × read_w × bytes_per_px`` (the network's activation
    memory per input px, see :func:`lsr.infer.activation_bytes_per_px`). Among the balanced
    grids (``k`` equal cores per axis) whose memory is ≤ ``budget_bytes`` the cheapest is
    chosen (ties: fewer tiles) among tiles ≥ ``min_tile``; the result is never larger than
    needed to cover ``shape`` in one tile. When nothing fits, the tile needing the least
    memory (``min_tile``) is returned.
    """
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise LsrInputError(f"cannot tile an empty image of shape {shape}")
    if bytes_per_px <= 0 or budget_bytes <= 0 or batch_size < 1:
        raise LsrInputError(
            f"bytes_per_px, budget_bytes and batch_size must be > 0, got {bytes_per_px}, "
            f"{budget_bytes}, {batch_size}"
        )
    m = max(1, int(multiple))
    halo = round_up(max(int(halo), 0), m)
    largest = round_up(max(h, w), m)  # one tile covers the image
    min_tile = min(round_up(max(int(min_tile), 1), m), largest)
    best: tuple[float, int, int] | None = None  # (input px, tiles, tile)
    smallest: tuple[float, int] | None = None  # (memory, tile)
    for t in sorted({min_tile} | _breakpoints(h, m, min_tile) | _breakpoints(w, m, min_tile)):
        th, tw = _balanced(h, t, m), _balanced(w, t, m)
        read = (th + 2 * halo) * (tw + 2 * halo)
        n = (-(-h // th)) * (-(-w // tw))
        memory = batch_size * read * bytes_per_px
        if smallest is None or memory < smallest[0]:
            smallest = (memory, t)
        if memory <= budget_bytes and (best is None or (n * read, n) < best[:2]):
            best = (n * read, n, t)
    assert smallest is not None
    return best[2] if best is not None else smallest[1]
