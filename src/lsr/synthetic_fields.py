"""Seeded random fields defined at *global* pixel coordinates, evaluated window by window.

Every value depends only on ``(seed, layer, y, x)``, never on which window asked for it, so a
slide generated tile by tile is identical to one generated in one piece (tests check this),
any tile can be regenerated alone, and memory is bounded by the tile size.

* :meth:`Fields.white` — uniform noise on a lattice, drawn in fixed cells of the lattice,
  each cell from its own ``numpy`` generator seeded by ``(seed, layer, cell)``.
* :meth:`Fields.smooth` — Gaussian-filtered white noise with standard deviation ≈ 1 and
  correlation length ``scale_px`` (the Gaussian's sigma, working px), computed on a lattice
  a few times coarser than ``scale_px`` and interpolated bilinearly to pixels.
* :meth:`Fields.points` — one jittered point per lattice cell (a cheap Poisson-like point
  process) with per-point uniforms for presence, size, ... (Worley / cellular patterns).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_CELL = 64  # lattice nodes per side of one seeded noise cell (small: little waste per tile)
_OFFSET = 1 << 31  # keeps negative cell indices valid SeedSequence entries
_TRUNCATE = 4.0


def _gauss_sq_sum(sigma: float) -> float:
    """Sum of squared weights of scipy's normalised 1-D Gaussian kernel (std of filtered noise)."""
    r = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float((w**2).sum())


def _interp_axis(
    n0: int, start: int, count: int, step: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index and weight for pixels ``start + k*stride`` (node n at pixel n*step)."""
    pos = (start + stride * np.arange(count, dtype=np.float64)) / step - n0
    idx = np.floor(pos).astype(np.intp)
    return idx, (pos - idx).astype(np.float32)


class Fields:
    """Random fields of one slide (or patch), keyed by ``seed``."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def white(self, layer: int, i0: int, j0: int, h: int, w: int, step: int = 1) -> np.ndarray:
        """Uniform [0, 1) float32 (h, w) at lattice nodes ``i0..i0+h-1`` × ``j0..j0+w-1``."""
        out = np.empty((h, w), dtype=np.float32)
        ci0, ci1 = i0 // _CELL, (i0 + h - 1) // _CELL
        cj0, cj1 = j0 // _CELL, (j0 + w - 1) // _CELL
        for ci in range(ci0, ci1 + 1):
            for cj in range(cj0, cj1 + 1):
                key = [self.seed, layer, step, ci + _OFFSET, cj + _OFFSET]
                cell = np.random.default_rng(key).random((_CELL, _CELL), dtype=np.float32)
                ya, yb = max(i0, ci * _CELL), min(i0 + h, (ci + 1) * _CELL)
                xa, xb = max(j0, cj * _CELL), min(j0 + w, (cj + 1) * _CELL)
                out[ya - i0 : yb - i0, xa - j0 : xb - j0] = cell[
                    ya - ci * _CELL : yb - ci * _CELL, xa - cj * _CELL : xb - cj * _CELL
                ]
        return out

    def smooth(
        self,
        layer: int,
        scale_px: float,
        y0: int,
        x0: int,
        h: int,
        w: int,
        stride: int = 1,
        nodes_per_scale: float = 3.0,
    ) -> np.ndarray:
        """Smooth noise, mean 0, std ≈ 1: float32 (h, w) at pixels (y0 + i*s, x0 + j*s), s = stride.

        ``scale_px`` is the Gaussian sigma of the correlation (working px); the lattice step is
        ``scale_px / nodes_per_scale`` (at least one pixel). ``stride`` > 1 samples a coarse
        grid of the same field (used to plan whole slides cheaply).
        """
        step = max(1, int(scale_px / nodes_per_scale))
        sigma = scale_px / step
        r = int(_TRUNCATE * sigma + 0.5) + 1
        i0 = y0 // step - r
        j0 = x0 // step - r
        i1 = (y0 + (h - 1) * stride) // step + r + 2
        j1 = (x0 + (w - 1) * stride) // step + r + 2
        g = self.white(layer, i0, j0, i1 - i0, j1 - j0, step=step)
        g -= 0.5
        g = ndimage.gaussian_filter(g, sigma, mode="nearest", truncate=_TRUNCATE)
        g *= np.float32(1.0 / np.sqrt(_gauss_sq_sum(sigma) ** 2 / 12.0))
        if step == 1:
            return g[
                y0 - i0 : y0 - i0 + h * stride : stride, x0 - j0 : x0 - j0 + w * stride : stride
            ]
        iy, wy = _interp_axis(i0, y0, h, step, stride)
        ix, wx = _interp_axis(j0, x0, w, step, stride)
        rows = g[iy] * (1 - wy)[:, None] + g[iy + 1] * wy[:, None]  # (h, nodes)
        return rows[:, ix] * (1 - wx) + rows[:, ix + 1] * wx

    def points(
        self, layer: int, cell_px: float, y0: int, x0: int, h: int, w: int, n_attrs: int = 2
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Jittered points, one per ``cell_px`` cell, for cells that may touch the window.

        Returns ``py, px`` (n,) pixel coordinates and ``attrs`` (n, n_attrs) uniforms [0, 1)
        (presence, size, ...). Cells are indexed globally, so neighbours agree.
        """
        c0y, c0x = int(np.floor(y0 / cell_px)) - 1, int(np.floor(x0 / cell_px)) - 1
        c1y, c1x = int(np.floor((y0 + h) / cell_px)) + 1, int(np.floor((x0 + w) / cell_px)) + 1
        ny, nx = c1y - c0y + 1, c1x - c0x + 1
        u = [self.white(layer * 16 + k, c0y, c0x, ny, nx, step=7919) for k in range(2 + n_attrs)]
        cy, cx = np.meshgrid(np.arange(c0y, c1y + 1), np.arange(c0x, c1x + 1), indexing="ij")
        py = ((cy + u[0]) * cell_px).ravel()
        px = ((cx + u[1]) * cell_px).ravel()
        attrs = np.stack([a.ravel() for a in u[2:]], axis=1)
        return py, px, attrs


def worley(
    fields: Fields, layer: int, cell_px: float, y0: int, x0: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px, float32 (h, w)) to the nearest and second-nearest jittered point.

    Cellular texture: ``f2 - f1`` is small on the walls between cells (adipocyte membranes),
    ``f1`` small near cell centres (acinar lumina).
    """
    c0y, c0x = int(np.floor(y0 / cell_px)) - 1, int(np.floor(x0 / cell_px)) - 1
    c1y, c1x = int(np.floor((y0 + h) / cell_px)) + 1, int(np.floor((x0 + w) / cell_px)) + 1
    ny, nx = c1y - c0y + 1, c1x - c0x + 1
    uy = fields.white(layer * 16, c0y, c0x, ny, nx, step=7919)
    ux = fields.white(layer * 16 + 1, c0y, c0x, ny, nx, step=7919)
    ys = np.arange(y0, y0 + h, dtype=np.float32)
    xs = np.arange(x0, x0 + w, dtype=np.float32)
    cyi = (np.floor(ys / cell_px) - c0y).astype(np.intp)
    cxi = (np.floor(xs / cell_px) - c0x).astype(np.intp)
    # point coordinates relative to each pixel's own cell corner, per cell: (ny, nx)
    gy = ((np.arange(ny)[:, None] + c0y) + uy) * np.float32(cell_px)
    gx = ((np.arange(nx)[None, :] + c0x) + ux) * np.float32(cell_px)
    f1 = np.full((h, w), np.inf, dtype=np.float32)
    f2 = np.full((h, w), np.inf, dtype=np.float32)
    for dy in (-1, 0, 1):
        ry = cyi + dy
        rows_y, rows_x = gy[ry], gx[ry]  # (h, nx): cheap row gathers
        for dx in (-1, 0, 1):
            rx = cxi + dx
            d = (rows_y[:, rx] - ys[:, None]) ** 2
            d += (rows_x[:, rx] - xs[None, :]) ** 2
            np.minimum(f2, np.maximum(f1, d), out=f2)
            np.minimum(f1, d, out=f1)
    return np.sqrt(f1), np.sqrt(f2)
