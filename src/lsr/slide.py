"""Whole-slide images: open them, read regions at the working resolution, write pyramids.

A slide is read through :class:`Slide`: its pixel size ``mpp`` (µm per level-0 pixel), its
pyramid (``level_dimensions`` as ``(width, height)`` like OpenSlide) and
:meth:`Slide.read_working`, which returns any region at the *working resolution*
(:data:`WORKING_MPP` µm/px by default: one 240-px block is 1 mm) by reading the nearest finer
pyramid level and area-averaging it in chunks, so memory is bounded by the chunk size, never by
the slide size. Coordinates given to ``read_working`` are working-resolution pixels;
:meth:`Slide.to_level0` / :meth:`Slide.to_working` convert (factor = working_mpp / mpp).

Backends: tiffslide (pure Python; SVS, generic tiled/pyramidal TIFF, OME-TIFF, NDPI where
tifffile supports it), OpenSlide when importable (never required), plain PNG/JPEG through
scikit-image, and :class:`ArraySlide` for arrays already in memory (tests, synthetic data).

:func:`write_pyramidal_tiff` writes an image (numpy, dask or zarr) as a tiled pyramidal TIFF
tile by tile, with the pixel size in the resolution tags (and OME-XML or an Aperio
description) so that tiffslide, QuPath and this module read it back.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsr.atomic import atomic_path
from lsr.errors import LsrInputError

WORKING_MPP: float = 4.17
"""µm per working-resolution pixel (the paper's 2.4X: 240 px = 1 mm)."""

MAX_PLAUSIBLE_MPP: float = 100.0
"""Pixel sizes read from metadata above this (µm/px) are treated as missing: they come from
screen-resolution defaults (72 dpi = 353 µm/px), never from a microscope."""

MIN_PLAUSIBLE_MPP: float = 0.01
"""Pixel sizes read from metadata below this (µm/px) are treated as missing: an oil
objective's scan is ≈ 0.1 µm/px, and 1e-6 comes from a unit mix-up, not a microscope."""

SCREEN_DPI: frozenset[int] = frozenset({72, 96, 100, 150, 200, 300, 400, 600, 1200})
"""Resolution tags in pixels per *inch* with one of these values are an image editor's print
resolution (300 dpi = 84.7 µm/px), not the scanner's: treated as missing."""

#: Name start of the folder a pyramid's lower levels are staged in beside the TIFF being
#: written (removed when the write ends; a killed process leaves it: lsr synth --overwrite
#: and the next lsr predict of the slide clear it).
PYRAMID_STAGE_PREFIX = ".lsr-pyramid-"

LARGE_FLAT_PX: int = 20000
"""A single-level slide with a side this long or longer triggers a warning (slow reads)."""

_CHUNK_SOURCE_PX = 1024  # source pixels per axis read at once by read_working
_PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".btf", ".qptiff"}
_LEVEL_TOLERANCE = 1.01  # a level up to 1 % coarser than asked still counts as "finer"


# --- resampling -------------------------------------------------------------------------


_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif")


def slide_name(path: str | os.PathLike[str]) -> str:
    """A slide's name: its file name without the extension, ``.ome.tif`` taken off as one
    (as QuPath's ``GeneralTools.getNameWithoutExtension`` does). It names ``lsr predict``'s
    folder, the napari layer, Compare's exports and the grid looked for beside the slide,
    so all of them match."""
    name = Path(path).name
    for suffix in _MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def file_stamp(path: str | os.PathLike[str]) -> dict[str, int]:
    """``{"size": bytes, "mtime_ns": ns}`` of a slide file: what tells a slide replaced at
    the same path (a rescan, ``lsr synth --overwrite``) from the one an earlier prediction
    was made of. Raises OSError when the file is gone."""
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _area_resample_axis(
    a: np.ndarray, axis: int, start: float, scale: float, n_out: int
) -> np.ndarray:
    """Exact area average of ``a`` along ``axis`` over ``n_out`` intervals.

    Output ``i`` is the mean of ``a`` over source coordinates
    ``[start + i*scale, start + (i+1)*scale)``, where source pixel ``k`` covers ``[k, k+1)``.
    Non-integer scales and offsets are exact (partial pixels weighted by overlap); a scale
    below 1 gives piecewise-constant upsampling. Returns float64.
    """
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0)
    n = a.shape[0]
    cs = np.zeros((n + 1, *a.shape[1:]), dtype=np.float64)
    np.cumsum(a, axis=0, out=cs[1:])
    edges = np.clip(start + scale * np.arange(n_out + 1, dtype=np.float64), 0.0, float(n))
    k = np.minimum(np.floor(edges).astype(np.int64), n - 1)
    frac = (edges - k).reshape((-1,) + (1,) * (a.ndim - 1))
    integral = cs[k] + frac * a[k]
    length = np.maximum(np.diff(edges), 1e-12).reshape((-1,) + (1,) * (a.ndim - 1))
    out = np.diff(integral, axis=0) / length
    return np.moveaxis(out, 0, axis)


def _halve(a: np.ndarray, nearest: bool = False) -> np.ndarray:
    """2×2 mean of an (H, W[, C]) array; odd edges replicate the last row/column.

    uint8 is averaged in integers (round half up) so no float copy of the band is made.
    ``nearest``: the top-left pixel of each 2×2 instead (masks and labels: a mean would
    invent values — label 2 between labels 1 and 3, grey between a mask's 0 and 255).
    """
    if nearest:
        return np.ascontiguousarray(a[::2, ::2])
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, mode="edge")
    h2, w2 = a.shape[0] // 2, a.shape[1] // 2
    r = a.reshape(h2, 2, w2, 2, *a.shape[2:])
    if a.dtype == np.uint8:
        s = r.sum(axis=(1, 3), dtype=np.uint16)
        return ((s + 2) // 4).astype(np.uint8)
    if a.dtype == np.uint16:
        s = r.sum(axis=(1, 3), dtype=np.uint32)
        return ((s + 2) // 4).astype(np.uint16)
    return r.mean(axis=(1, 3), dtype=np.float64).astype(a.dtype)


def _fraction_halved(band: np.ndarray) -> np.ndarray:
    """Fraction of each 2×2 of an (H, W) 0/255 mask band that is set, float32 (odd edges
    replicated, as :func:`_halve`). Counted in uint8: a float copy of the band would be four
    times its size (a 256 MB band of a wide mask)."""
    a = band > 0
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, [(0, h % 2), (0, w % 2)], mode="edge")
    counts = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).sum(axis=(1, 3), dtype=np.uint8)
    return counts.astype(np.float32) * np.float32(0.25)


def _to_rgb_uint8(arr: np.ndarray, path: Path | None) -> np.ndarray:
    """(h, w[, 1|3|4]) uint8 -> (h, w, 3) uint8: grey replicated, RGBA composited over white
    (transparent = no tissue, as OpenSlide does), so every backend gives the same pixels."""
    if arr.dtype != np.uint8:
        raise LsrInputError(
            f"the network needs an 8-bit RGB or grey slide, this one holds {arr.dtype} pixels; "
            "convert it to 8-bit RGB (QuPath, vips or bfconvert) "
            "(Python: Slide.read_level reads other data such as probability maps)",
            path,
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[2]
    if c == 3:
        return arr
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 4:
        alpha = arr[..., 3:4].astype(np.uint16)
        rgb = arr[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
        return ((rgb + 127) // 255).astype(np.uint8)
    raise LsrInputError(f"slide has {c} channels; expected 1, 3 or 4", path)


# --- the Slide interface -----------------------------------------------------------------


class Slide:
    """A pyramidal image with a known pixel size (base class of every backend).

    Attributes: ``path`` (None for in-memory slides), ``mpp`` (µm per level-0 pixel),
    ``file_mpp`` (the pixel size the file's metadata states, None when it states none; it
    differs from ``mpp`` only when the caller overrode it),
    ``level_dimensions`` ((width, height) per level, level 0 first, like OpenSlide),
    ``level_downsamples`` (level-0 px per level px), ``dtype`` and ``channels`` (0 for a
    2-D single-channel image) of the stored pixels.
    Subclasses implement :meth:`_read_level` (an in-bounds region of one level).
    """

    path: Path | None
    mpp: float
    file_mpp: float | None = None
    notes: tuple[str, ...] = ()  # what opening found worth telling (e.g. no pyramid)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    dtype: np.dtype
    channels: int

    # -- to implement
    def _read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Native pixels of ``level`` in rows [y, y+h), cols [x, x+w), all in bounds."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (reopened on demand if the slide is used again)."""

    # -- context manager
    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return (
            f"{type(self).__name__}({str(self.path)!r}, {w}x{h} px, mpp={self.mpp:g}, "
            f"{len(self.level_dimensions)} levels)"
        )

    # -- geometry
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of level 0 in level-0 pixels."""
        w, h = self.level_dimensions[0]
        return (h, w)

    def _factor(self, working_mpp: float) -> float:
        if not (working_mpp > 0 and math.isfinite(working_mpp)):
            raise LsrInputError(f"working_mpp must be a positive number, got {working_mpp!r}")
        return float(working_mpp) / self.mpp

    def working_shape(self, working_mpp: float = WORKING_MPP) -> tuple[int, int]:
        """(H, W) of the whole slide at ``working_mpp`` µm/px (rounded, at least 1)."""
        f = self._factor(working_mpp)
        h, w = self.shape
        return (max(1, round(h / f)), max(1, round(w / f)))

    def to_level0(self, xy_working: Any, working_mpp: float = WORKING_MPP) -> np.ndarray:
        """Working-resolution coordinates -> level-0 pixel coordinates (float array)."""
        return np.asarray(xy_working, dtype=np.float64) * self._factor(working_mpp)

    def to_working(self, xy_level0: Any, working_mpp: float = WORKING_MPP) -> np.ndarray:
        """Level-0 pixel coordinates -> working-resolution coordinates (float array)."""
        return np.asarray(xy_level0, dtype=np.float64) / self._factor(working_mpp)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (≤1 % slack)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * _LEVEL_TOLERANCE and d >= self.level_downsamples[best]:
                best = i
        return best

    def _level_scale(self, level: int) -> tuple[float, float]:
        """(dy, dx): level-0 px per level px along each axis.

        A level made by an integer downsample ``d`` has ``ceil(n / d)`` or ``floor(n / d)``
        pixels per side, and its pixel ``j`` covers level-0 pixels ``[d j, d (j + 1))``: the
        scale is ``d``, not ``n / ceil(n / d)`` (3001 / 376 = 7.98 for d = 8), which
        squeezed the content towards the origin, by one working pixel at the far edge.
        Other levels keep the ratio of the sides.
        """
        w0, h0 = self.level_dimensions[0]
        wl, hl = self.level_dimensions[level]
        d = round((h0 / hl + w0 / wl) / 2)
        if d >= 1 and all(m in (n // d, -(-n // d)) for n, m in ((h0, hl), (w0, wl))):
            return (float(d), float(d))
        return (h0 / hl, w0 / wl)

    # -- reading
    def _fill_value(self) -> int | float:
        return 255 if self.channels >= 3 and self.dtype == np.uint8 else 0

    def read_level(
        self, level: int, y: int, x: int, h: int, w: int, fill: float | None = None
    ) -> np.ndarray:
        """Native pixels of one pyramid level, rows [y, y+h), cols [x, x+w) in level px.

        Out-of-bounds parts are ``fill`` (default: white 255 for RGB uint8, else 0).
        Shape (h, w, C) or (h, w) for single-channel images; native dtype.
        """
        if not 0 <= level < self.level_count:
            raise LsrInputError(f"level {level} out of range 0..{self.level_count - 1}", self.path)
        if h < 0 or w < 0:
            raise LsrInputError(f"negative region size {h}x{w}", self.path)
        wl, hl = self.level_dimensions[level]
        shape = (h, w) if self.channels == 0 else (h, w, self.channels)
        fill = self._fill_value() if fill is None else fill
        y0, y1 = max(y, 0), min(y + h, hl)
        x0, x1 = max(x, 0), min(x + w, wl)
        if y0 == y and x0 == x and y1 == y + h and x1 == x + w and h and w:
            return self._checked_read(level, y, x, h, w)
        out = np.full(shape, fill, dtype=self.dtype)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._checked_read(
                level, y0, x0, y1 - y0, x1 - x0
            )
        return out

    def _checked_read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        try:
            arr = np.asarray(self._read_level(level, y, x, h, w))
        except LsrInputError:
            raise
        except Exception as exc:  # decoder errors on corrupt tiles, I/O errors
            raise LsrInputError(
                f"cannot read level {level} region y={y} x={x} {h}x{w} px "
                f"(corrupt or truncated file?): {exc}",
                self.path,
            ) from exc
        if arr.ndim == 3 and self.channels == 0:
            arr = arr[..., 0]
        return arr

    def read_working(
        self,
        y: int,
        x: int,
        h: int,
        w: int,
        working_mpp: float = WORKING_MPP,
        stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """An (h, w, 3) uint8 RGB region at ``working_mpp``; y, x, h, w in working px.

        Reads the nearest finer pyramid level and area-averages it (exact for non-integer
        factors), chunk by chunk so that at most ~1024² source pixels are held at once.
        Out-of-bounds pixels are white (255). ``stop``: asked before each chunk; when it
        says True the read ends there, the rest of the region unread (its caller gave up:
        a read of a slide without a pyramid can take a minute, and a thread pool waits for
        its running read before a Ctrl-C can end the process).
        """
        h, w = int(h), int(w)
        if h < 0 or w < 0:
            raise LsrInputError(f"negative region size {h}x{w}", self.path)
        f = self._factor(working_mpp)
        level = self.best_level(f)
        dy, dx = self._level_scale(level)
        sy, sx = f / dy, f / dx  # level px per working px
        out = np.empty((h, w, 3), dtype=np.uint8)
        step_y = max(1, int(_CHUNK_SOURCE_PX // max(sy, 1.0)))
        step_x = max(1, int(_CHUNK_SOURCE_PX // max(sx, 1.0)))
        for oy in range(0, h, step_y):
            ch = min(step_y, h - oy)
            fy0 = (y + oy) * sy
            iy0 = math.floor(fy0)
            iy1 = math.ceil((y + oy + ch) * sy - 1e-9)
            for ox in range(0, w, step_x):
                if stop is not None and stop():
                    return out
                cw = min(step_x, w - ox)
                fx0 = (x + ox) * sx
                ix0 = math.floor(fx0)
                ix1 = math.ceil((x + ox + cw) * sx - 1e-9)
                src = self.read_level(level, iy0, ix0, max(iy1 - iy0, 1), max(ix1 - ix0, 1), 255)
                src = _to_rgb_uint8(src, self.path)
                if abs(sy - 1) < 1e-9 and abs(sx - 1) < 1e-9 and fy0 == iy0 and fx0 == ix0:
                    out[oy : oy + ch, ox : ox + cw] = src[:ch, :cw]
                    continue
                rows = _area_resample_axis(src, 0, fy0 - iy0, sy, ch)
                block = _area_resample_axis(rows, 1, fx0 - ix0, sx, cw)
                out[oy : oy + ch, ox : ox + cw] = np.clip(np.rint(block), 0, 255)
        return out

    def thumbnail(self, max_size: int) -> np.ndarray:
        """The whole slide as (h, w, 3) uint8 with its longer side ≤ ``max_size`` px."""
        if max_size < 1:
            raise LsrInputError(f"thumbnail max_size must be ≥ 1, got {max_size}")
        h0, w0 = self.shape
        mpp_t = max(self.mpp * max(h0, w0) / max_size, self.mpp)
        h, w = self.working_shape(mpp_t)
        h, w = min(h, max_size), min(w, max_size)
        return self.read_working(0, 0, h, w, mpp_t)

    def multiscale(self, chunk: int = 512) -> list[Any]:
        """Lazy pyramid for napari: list of dask arrays, level i of shape (H_i, W_i, 3).

        uint8 slides come as RGB (grey replicated); other dtypes keep their channels.
        A single-level slide gets display levels by 2×2 averaging (dask) down to ≤ 1024 px.
        """
        import dask.array as da

        rgb = self.dtype == np.uint8 and self.channels in (0, 1, 3, 4)
        token = uuid.uuid4().hex
        levels = []
        for i in range(self.level_count):
            arr = _LevelArray(self, i, rgb)
            levels.append(
                da.from_array(
                    arr,
                    chunks=(chunk, chunk, *arr.shape[2:]),
                    asarray=False,
                    fancy=False,
                    meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
                    name=f"lsr-slide-{token}-{i}",
                )
            )
        while self.level_count == 1:
            prev = levels[-1]
            if max(prev.shape[:2]) <= 1024 or min(prev.shape[:2]) < 2:  # a 4200 x 1 strip
                break  # would halve to an empty level
            axes = {0: 2, 1: 2} | ({2: 1} if prev.ndim == 3 else {})
            nxt = da.coarsen(np.mean, prev, axes, trim_excess=True).astype(prev.dtype)
            levels.append(nxt)
        return levels


class _LevelArray:
    """Array-like view of one level for dask.array.from_array (slicing = read_level)."""

    def __init__(self, slide: Slide, level: int, rgb: bool):
        self.slide, self.level, self.rgb = slide, level, rgb
        w, h = slide.level_dimensions[level]
        c = 3 if rgb else slide.channels
        self.shape = (h, w, c) if c else (h, w)
        self.dtype = np.dtype(np.uint8) if rgb else slide.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        arr = self.slide.read_level(self.level, y0, x0, y1 - y0, x1 - x0)
        if self.rgb:
            arr = _to_rgb_uint8(arr, self.slide.path)
        return arr[(slice(None), slice(None), *key[2:])] if len(key) > 2 else arr


# --- backends ----------------------------------------------------------------------------


def _dims_of(shape: Sequence[int]) -> tuple[int, int, int]:
    """(H, W, C) from an (H, W) or (H, W, C) array shape (C = 0 for 2-D)."""
    if len(shape) == 2:
        return int(shape[0]), int(shape[1]), 0
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    raise LsrInputError(f"image must be (H, W) or (H, W, C), got shape {tuple(shape)}")


class ArraySlide(Slide):
    """An in-memory (or dask/zarr) array with the :class:`Slide` interface: one level.

    ``array``: (H, W, 3) uint8 RGB (or (H, W) / (H, W, C) of any dtype for read_level);
    ``mpp``: µm per pixel of the array.
    """

    def __init__(self, array: Any, mpp: float, *, path: str | Path | None = None):
        self.array = array
        self.path = None if path is None else Path(path)
        self.mpp = check_mpp(mpp, self.path, ceiling=False)
        h, w, c = _dims_of(array.shape)
        self.channels = c
        self.dtype = np.dtype(array.dtype)
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def _read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return np.asarray(self.array[y : y + h, x : x + w])


class TiffSlideSlide(Slide):
    """A slide read through tiffslide (SVS, generic pyramidal TIFF, OME-TIFF, NDPI, ...)."""

    def __init__(self, path: Path, mpp: float | None):
        self.path = path
        self._ts: Any = None
        try:
            self._open(mpp)
        except BaseException:
            self.close()  # no file handle left behind by a refused file
            raise

    def _open(self, mpp: float | None) -> None:
        path = self.path
        ts = self._handle()
        props = ts.properties
        axes = props.get("tiffslide.series-axes")
        zgrp = ts.zarr_group
        a0 = zgrp.get("0", None)
        self._axes = axes
        self.dtype = np.dtype(a0.dtype) if a0 is not None else np.dtype(np.uint8)
        if axes == "YXS":
            self.channels = int(a0.shape[2]) if a0 is not None else 3
        elif axes == "CYX":
            self.channels = int(a0.shape[0]) if a0 is not None else 3
        elif axes == "YX":
            self.channels = 0
        else:
            raise LsrInputError(f"unsupported image layout (axes {axes!r})", path)
        _check_colour_model(ts.ts_tifffile, self.channels, path)
        _check_first_series_is_the_slide(ts.ts_tifffile, path)
        self.level_dimensions = tuple((int(w), int(h)) for w, h in ts.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in ts.level_downsamples)
        try:
            self.file_mpp = _mpp_from_metadata(ts, path)
        except LsrInputError:
            if mpp is None:
                raise
            self.file_mpp = None
        self.mpp = check_mpp(mpp, path, ceiling=False) if mpp is not None else self.file_mpp
        if self.level_count == 1 and max(self.level_dimensions[0]) >= LARGE_FLAT_PX:
            note = (
                f"single-level (non-pyramidal) slide of {self.level_dimensions[0][0]}x"
                f"{self.level_dimensions[0][1]} px; every read at working resolution decodes "
                "full-resolution pixels and will be slow. Convert it once to a pyramid "
                "(lsr.slide.write_pyramidal_tiff, vips, QuPath)."
            )
            self.notes = (note,)
            warnings.warn(f"{path}: {note}", stacklevel=4)

    def _handle(self) -> Any:
        if self._ts is None:
            import tiffslide

            self._ts = tiffslide.TiffSlide(self.path)
        return self._ts

    def close(self) -> None:
        if self._ts is not None:
            self._ts.close()
            self._ts = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ts"] = None  # file handles do not pickle: reopen in the worker
        return state

    def _read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        ts = self._handle()
        if self._axes == "CYX":
            sel: tuple[slice, ...] = (slice(None), slice(y, y + h), slice(x, x + w))
        elif self._axes == "YXS":
            sel = (slice(y, y + h), slice(x, x + w), slice(None))
        else:
            sel = (slice(y, y + h), slice(x, x + w))
        try:
            from tiffslide._zarr import get_zarr_selection
        except ImportError:  # pragma: no cover - older/newer tiffslide layout

            def get_zarr_selection(grp: Any, level: int, selection: Any) -> Any:
                return grp[str(level)][selection]

        arr = np.asarray(get_zarr_selection(ts.zarr_group, level=level, selection=sel))
        if self._axes == "CYX":
            arr = np.moveaxis(arr, 0, -1)
        return arr


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide (optional: formats tiffslide cannot read, e.g. MRXS)."""

    def __init__(self, path: Path, mpp: float | None):
        self.path = path
        self._os: Any = None
        osl = self._handle()
        self.level_dimensions = tuple((int(w), int(h)) for w, h in osl.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osl.level_downsamples)
        self.dtype = np.dtype(np.uint8)
        self.channels = 3
        try:
            self.file_mpp = _mpp_from_properties(osl.properties, "openslide.mpp-x", path)
        except LsrInputError:
            if mpp is None:
                raise
            self.file_mpp = None
        self.mpp = check_mpp(mpp, path, ceiling=False) if mpp is not None else self.file_mpp

    def _handle(self) -> Any:
        if self._os is None:
            import openslide

            self._os = openslide.OpenSlide(str(self.path))
        return self._os

    def close(self) -> None:
        if self._os is not None:
            self._os.close()
            self._os = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_os"] = None
        return state

    def _read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        dy, dx = self._level_scale(level)
        # OpenSlide takes level-0 coordinates; round so that x0 / ds lands on x.
        loc = (round(x * dx), round(y * dy))
        img = self._handle().read_region(loc, level, (w, h))
        # openslide-python un-premultiplies the C library's ARGB ("Unlike in the C interface,
        # the image data is not premultiplied"): straight RGBA, composited over white as
        # tiffslide's pixels are (transparent = outside the scanned area)
        return _to_rgb_uint8(np.asarray(img), self.path)


# --- metadata ----------------------------------------------------------------------------

_MPP_PASS = (
    "pass it explicitly (--mpp 0.25 for a 40X scan, --mpp 0.5 for 20X; in a training "
    "config, mpp = ... in the slide's [[data]] entry; Python: open_slide(path, mpp=...))"
)
_MPP_HINT = "the pixel size (µm/px) is not in the file's metadata; " + _MPP_PASS


def check_mpp(
    mpp: Any, path: Any = None, where: str | None = None, name: str = "mpp", ceiling: bool = True
) -> float:
    """A pixel size a user gave (``--mpp``, a config's ``mpp``, ``open_slide(mpp=...)``) as
    a float: a number of µm per pixel in (0, :data:`MAX_PLAUSIBLE_MPP`], else one error
    naming ``path`` (and ``where`` in it). The one check every way in shares."""
    if isinstance(mpp, (bool, str, bytes)):  # true would read as 1 µm/px, "0.25" is a typo
        raise LsrInputError(f"{name} must be a number of µm per pixel, got {mpp!r}", path, where)
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        raise LsrInputError(
            f"{name} must be a number of µm per pixel, got {mpp!r}", path, where
        ) from None
    if not (value > 0 and math.isfinite(value)) or (ceiling and value > MAX_PLAUSIBLE_MPP):
        raise LsrInputError(
            f"{name} must be µm per pixel in (0, {MAX_PLAUSIBLE_MPP:g}], got {mpp!r}", path, where
        )
    return value


def _mpp_from_properties(props: Any, key: str, path: Path) -> float:
    try:
        value = float(props.get(key))
    except (TypeError, ValueError):
        raise LsrInputError(_MPP_HINT, path) from None
    if not (MIN_PLAUSIBLE_MPP <= value <= MAX_PLAUSIBLE_MPP):
        raise LsrInputError(
            f"the metadata's pixel size, {value:.4g} µm/px, is not a microscope's (a screen "
            "resolution such as 72 dpi, or a unit mix-up?) and no other pixel size was found; "
            + _MPP_PASS,
            path,
        )
    key_y = key.replace("-x", "-y")
    with contextlib.suppress(TypeError, ValueError):
        vy = float(props.get(key_y))
        if abs(vy - value) > 0.01 * value:
            warnings.warn(
                f"{path}: non-square pixels ({value:g} x {vy:g} µm); using their mean",
                stacklevel=4,
            )
            value = (value + vy) / 2
    return value


def _mpp_from_ome(ts: Any) -> float | None:
    """PhysicalSizeX of the first OME image, in µm (None when absent)."""
    import xml.etree.ElementTree as ET

    tf = ts.ts_tifffile
    xml = getattr(tf, "ome_metadata", None)
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit)
            if scale is None:
                return None
            return float(el.attrib["PhysicalSizeX"]) * scale
    return None


#: µm per unit of an ImageJ description's ``unit``.
_IMAGEJ_UNITS = {"micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "nm": 1e-3,
                 "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4}  # fmt: skip


def _mpp_from_imagej(ts: Any) -> float | None:
    """µm/px of an ImageJ TIFF (``unit=micron``, nm, mm … in its description, pixels per
    unit in the resolution tags, which tiffslide ignores as their ResolutionUnit is NONE)."""
    tf = ts.ts_tifffile
    meta = getattr(tf, "imagej_metadata", None) or {}
    unit = str(meta.get("unit", "")).replace("\\u00B5", "µ").lower()
    per_um = _IMAGEJ_UNITS.get(unit)
    if per_um is None:
        return None
    tag = tf.pages[0].tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    return float(den) / float(num) * per_um if num else None


def _screen_dpi(ts: Any) -> int | None:
    """The dpi of the first page's resolution tags when they are an editor's print
    resolution (inches, a :data:`SCREEN_DPI` value) and tiffslide's pixel size came from
    them (not from an Aperio MPP beside them): that value is then not the scanner's. None
    otherwise."""
    import tifffile

    with contextlib.suppress(Exception):
        page = ts.ts_tifffile.pages[0]
        unit = page.tags.get("ResolutionUnit")
        if unit is None or unit.value != tifffile.RESUNIT.INCH:
            return None
        num, den = page.tags["XResolution"].value
        dpi = round(num / den)
        from_tags = abs(float(ts.properties.get("tiffslide.mpp-x")) * dpi - 25400) <= 1
        if abs(num / den - dpi) < 1e-6 and dpi in SCREEN_DPI and from_tags:
            return dpi
    return None


def _mpp_from_metadata(ts: Any, path: Path) -> float:
    """Level-0 µm/px: OME-XML's PhysicalSizeX (a physical size, written on purpose), then
    tiffslide's reading (Aperio's MPP, resolution tags), then ImageJ's description. An
    implausible value (72 dpi, 1e-6 µm/px) or an editor's print resolution (300 dpi in
    inches) falls through to the next source."""
    sources: list[tuple[str, Any]] = []
    if (ome := _mpp_from_ome(ts)) is not None:
        sources.append(("x", {"x": ome}))
    if (dpi := _screen_dpi(ts)) is None:
        sources.append(("tiffslide.mpp-x", ts.properties))
    if (imagej := _mpp_from_imagej(ts)) is not None:
        sources.append(("x", {"x": imagej}))
    first_error: LsrInputError | None = None
    for key, props in sources:
        try:
            return _mpp_from_properties(props, key, path)
        except LsrInputError as exc:
            first_error = first_error or exc
    if first_error is None and dpi is not None:
        raise LsrInputError(
            f"the file's only pixel size is {dpi} dpi ({25400 / dpi:.4g} µm/px), an image "
            "editor's print resolution, not the scanner's; " + _MPP_PASS,
            path,
        )
    raise first_error or LsrInputError(_MPP_HINT, path)


#: TIFF colour models whose samples are not the picture's RGB or grey values: read as RGB
#: they would show the wrong colours (CMYK's K as transparency, a palette's indices as grey).
_FOREIGN_COLOURS = {0: "MinIsWhite (inverted grey)", 3: "a palette", 5: "CMYK (separated)",
                    8: "CIELab", 9: "ICCLab", 10: "ITULab", 32803: "a colour filter array",
                    32844: "LogL", 32845: "LogLuv"}  # fmt: skip


def _check_colour_model(tf: Any, channels: int, path: Path) -> None:
    """Refuse images whose samples are not RGB(A) or grey: napari-lsr reads brightfield
    (H&E) slides, and anything else would be drawn in wrong colours or crash napari (2 or 5
    channels of fluorescence). ``channels``: 0 for (H, W)."""
    try:
        page = tf.series[0].keyframe
        photometric = int(page.photometric)
    except Exception:  # no series to look at: the reader's own checks speak
        return
    if photometric in _FOREIGN_COLOURS and not (photometric in (0, 3) and channels in (0, 1)):
        # (a one-channel MinIsWhite or palette TIFF is read as its stored values: what a
        # mask or label image means; only as a slide would its grey be off)
        raise LsrInputError(
            f"its colour model is {_FOREIGN_COLOURS[photometric]}, not RGB or grey, and would "
            "be shown in wrong colours: save the slide as RGB (e.g. an OME-TIFF from QuPath)",
            path,
        )
    rgb = photometric in (2, 6)  # RGB, YCbCr (JPEG)
    if channels not in (0, 1, 3, 4) or (channels == 4 and not rgb):
        raise LsrInputError(
            f"{channels} channels{'' if rgb else ' (not RGB)'}: napari-lsr reads brightfield "
            "slides, RGB (or RGBA) or grey, not a fluorescence or multi-channel image",
            path,
        )


def _yx_pixels(series: Any) -> int:
    axes = str(getattr(series, "axes", ""))
    shape = tuple(getattr(series, "shape", ()))
    if "Y" in axes and "X" in axes and len(shape) == len(axes):
        return int(shape[axes.index("Y")]) * int(shape[axes.index("X")])
    return 0


def _check_first_series_is_the_slide(tf: Any, path: Path) -> None:
    """Refuse files whose first image is not the largest (bfconvert puts a VSI's overview
    first): tiffslide reads only the first, and predicting on an overview looks like success."""
    series = list(getattr(tf, "series", ()) or ())
    if len(series) < 2:
        return
    sizes = [_yx_pixels(s) for s in series]
    big = int(np.argmax(sizes))
    if sizes[big] <= sizes[0]:
        return

    def label(i: int) -> str:
        name = getattr(series[i], "name", "") or f"series {i}"
        return f"{i}: '{name}' {' x '.join(str(v) for v in series[i].shape)}"

    listing = "; ".join(label(i) for i in range(len(series)))
    raise LsrInputError(
        f"the file holds {len(series)} images and the first is not the slide but a smaller "
        f"one ({listing}); napari-lsr reads only the first: save image {big} as its own "
        f"file (e.g. bfconvert -series {big} in.ome.tif out.ome.tif, or QuPath's export)",
        path,
    )


def check_tiff_complete(path: Path) -> None:
    """Raise LsrInputError when a TIFF is unreadable or its image data runs past the end
    ("file is truncated: ..." rather than a decoder's error from the first missing tile)."""
    import tifffile

    size = path.stat().st_size
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise LsrInputError("TIFF holds no image", path)
            for level in tf.series[0].levels:
                for page in level.pages:
                    if page is None:
                        continue
                    offsets = getattr(page, "dataoffsets", ())
                    counts = getattr(page, "databytecounts", ())
                    if len(offsets) and len(counts):
                        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
                        if end > size:
                            raise LsrInputError(
                                f"file is truncated: image data ends at byte {end} but the "
                                f"file has {size} bytes",
                                path,
                            )
    except LsrInputError:
        raise
    except Exception as exc:  # tifffile.TiffFileError, struct errors, ...
        raise LsrInputError(f"not a readable TIFF (corrupt or truncated?): {exc}", path) from exc


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logger: it logs each bad tag of a damaged file, and the one
    LsrInputError raised for the file says it all."""
    import logging

    logger, quiet = logging.getLogger("tifffile"), logging.Filter()
    quiet.filter = lambda record: False  # type: ignore[method-assign]
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head[:2] in (b"II", b"MM")


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None) -> Slide:
    """Open a whole-slide image (or plain image) as a :class:`Slide`.

    TIFF-based files (SVS, NDPI, OME-TIFF, generic tiled/pyramidal TIFF, plain TIFF) go
    through tiffslide; other formats through OpenSlide when it is installed; PNG/JPEG through
    scikit-image (whole image in memory, ``mpp`` required). ``mpp`` (µm per level-0 pixel)
    overrides the metadata; without either, LsrInputError with a hint to pass ``--mpp``.
    """
    p = Path(path)
    if not p.exists():
        raise LsrInputError("file not found", p)
    if p.is_dir():
        raise LsrInputError("is a folder, not a slide file", p)
    if mpp is not None:
        mpp = check_mpp(mpp, p, ceiling=False)
    if p.stat().st_size == 0:
        raise LsrInputError("file is empty (an interrupted copy or download?)", p)
    if p.suffix.lower() in _PLAIN_SUFFIXES:
        return _open_plain(p, mpp)
    is_tiff = _is_tiff(p)
    if p.suffix.lower() in _TIFF_SUFFIXES and not is_tiff:
        raise LsrInputError(
            f"not a TIFF file although named {p.suffix} (it does not start with a TIFF "
            "header): corrupt, or another format renamed?",
            p,
        )
    if is_tiff:
        check_tiff_complete(p)
        try:
            return TiffSlideSlide(p, mpp)
        except LsrInputError:
            raise
        except Exception as exc:
            tiff_error: Exception | None = exc
    else:
        tiff_error = None
    try:
        import openslide  # noqa: F401
    except ImportError:
        detail = f" (tiffslide: {tiff_error})" if tiff_error else ""
        raise LsrInputError(
            "cannot read this slide format without OpenSlide; install it with "
            f"`pip install napari-lsr[wsi]`{detail}",
            p,
        ) from tiff_error
    try:  # pragma: no cover - needs openslide
        return OpenSlideSlide(p, mpp)
    except LsrInputError:  # pragma: no cover
        raise
    except Exception as exc:  # pragma: no cover
        raise LsrInputError(f"OpenSlide cannot read this file: {exc}", p) from exc


def _open_plain(p: Path, mpp: float | None) -> ArraySlide:
    if mpp is None:
        raise LsrInputError(_MPP_HINT, p)
    from skimage import io

    try:
        arr = np.asarray(io.imread(p))
    except Exception as exc:
        raise LsrInputError(f"cannot read image (corrupt or truncated?): {exc}", p) from exc
    return ArraySlide(arr, mpp, path=p)


# --- writing -----------------------------------------------------------------------------

_COMPRESSIONS = {"jpeg", "zlib", "lzw", "none"}


def _level_shapes(h: int, w: int, min_size: int) -> list[tuple[int, int]]:
    """(H, W) per level: halve (ceil) while the longer side exceeds ``min_size``."""
    shapes = [(h, w)]
    while max(shapes[-1]) > min_size and min(shapes[-1]) > 1:
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
    return shapes


def _band_rows(image: Any, tile: int, row_bytes: int) -> int:
    """Rows per band read from the source: one tile row, or the source's chunk rows
    (dask/zarr) when that avoids recomputing chunks, capped at ~256 MB."""
    chunk_rows = None
    chunks = getattr(image, "chunks", None)
    if chunks is not None and len(chunks) and chunks[0]:
        first = chunks[0]
        chunk_rows = int(first[0]) if isinstance(first, tuple) else int(first)
    rows = tile
    if chunk_rows and chunk_rows > tile:
        rows = -(-chunk_rows // tile) * tile
    cap = max(tile, (256 * 2**20 // max(row_bytes, 1)) // tile * tile)
    return min(rows, cap)


def _tiles_of_band(band: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Row-major full-size tiles of a band (edge tiles padded by replication)."""
    for ty in range(0, band.shape[0], tile):
        for tx in range(0, band.shape[1], tile):
            t = band[ty : ty + tile, tx : tx + tile]
            if t.shape[0] != tile or t.shape[1] != tile:
                pad = [(0, tile - t.shape[0]), (0, tile - t.shape[1])] + [(0, 0)] * (t.ndim - 2)
                t = np.pad(t, pad, mode="edge")
            yield np.ascontiguousarray(t)


def _aperio_description(w: int, h: int, tile: int, mpp: float, compression: str) -> str:
    return (
        f"Aperio Image Library v12.0.0 (lsr)\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
        f"{compression.upper()}/RGB|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
    )


def write_pyramidal_tiff(
    path: str | Path,
    image: Any,
    *,
    mpp: float,
    tile: int = 256,
    compression: str = "jpeg",
    min_size: int = 512,
    description: str | None = None,
    photometric: str = "rgb",
    jpeg_quality: int = 90,
    layout: str | None = None,
    downsample: str | None = None,
) -> None:
    """Write ``image`` as a tiled pyramidal TIFF, tile by tile, atomically.

    ``image``: array-like (numpy, dask, zarr) of shape (H, W, 3) uint8 RGB, or (H, W) uint8 /
    uint16 / float32 / bool (probability maps, masks; bool is stored as uint8 0/255).
    Non-RGB images are always stored losslessly (``"jpeg"`` becomes ``"zlib"``).
    ``mpp``: µm per pixel of ``image``; written as resolution tags (CENTIMETER,
    1e4/mpp px/cm, scaled per level) and as OME PhysicalSizeX (subifd layout) or the Aperio
    ``MPP`` field (svs layout). Levels halve while the longer side > ``min_size``, by
    ``downsample``: ``"mean"`` (2×2 mean: images, probability maps), ``"majority"`` (bool
    masks: a coarse pixel is set where at least half of the level-0 pixels under it are, so
    its outline stays in place; the default for bool) or ``"nearest"`` (labels: the top-left
    pixel of each 2×2, no value that is not in the image, but level k sits (2^k − 1)/2 level-0
    px towards the origin); default ``"mean"`` for the others.
    ``layout``: ``"subifd"`` (OME-TIFF-style SubIFD pyramid, read by tiffslide, QuPath and
    Bio-Formats) or ``"svs"`` (Aperio-style: level pages in the main chain plus a thumbnail
    page, read by tiffslide and OpenSlide); default ``"svs"`` when ``description`` starts with
    "Aperio", else ``"subifd"``.
    Memory: one band of tile rows of the source (or of its dask/zarr chunk rows) at a time;
    levels ≥ 1 are staged in temporary memory-mapped files beside ``path``.
    """
    import tifffile

    path = Path(path)
    mpp = check_mpp(mpp, path, ceiling=False)
    h, w, c = _dims_of(image.shape)
    dtype = np.dtype(image.dtype)
    if c == 1:
        c = 0  # (H, W, 1) -> store single-channel
    is_rgb = c == 3 and dtype == np.uint8
    if c not in (0, 3) or (c == 3 and not is_rgb):
        raise LsrInputError(
            f"image must be (H, W, 3) uint8 RGB or (H, W) single-channel, got shape "
            f"{tuple(image.shape)} {dtype}",
            path,
        )
    if c == 0 and dtype not in (np.uint8, np.uint16, np.float32, np.bool_, np.float64):
        raise LsrInputError(f"unsupported single-channel dtype {dtype}", path)
    store_dtype = {
        np.dtype(np.bool_): np.dtype(np.uint8),
        np.dtype(np.float64): np.dtype(np.float32),
    }.get(dtype, dtype)
    if tile % 16 or tile <= 0:
        raise LsrInputError(f"tile must be a positive multiple of 16, got {tile}", path)
    downsample = downsample or ("majority" if dtype == np.bool_ else "mean")
    if downsample not in ("mean", "nearest", "majority"):
        raise LsrInputError(
            f"downsample must be 'mean', 'nearest' or 'majority', got {downsample!r}", path
        )
    if downsample == "majority" and dtype != np.bool_:
        raise LsrInputError(f"downsample 'majority' is for bool masks, got {dtype}", path)
    nearest, majority = downsample == "nearest", downsample == "majority"
    # majority: levels ≥ 1 are staged as the exact fraction of level-0 pixels set (float32
    # holds 4^-k exactly far past any pyramid's depth) and thresholded only when written
    stage_dtype = np.dtype(np.float32) if majority else store_dtype
    compression = "none" if compression is None else str(compression).lower()
    if compression not in _COMPRESSIONS:
        raise LsrInputError(f"compression must be one of {sorted(_COMPRESSIONS)}", path)
    if not is_rgb and compression == "jpeg":
        compression = "zlib"
    if layout is None:
        layout = "svs" if description and description.startswith("Aperio") else "subifd"
    if layout not in ("svs", "subifd"):
        raise LsrInputError(f"layout must be 'svs' or 'subifd', got {layout!r}", path)
    if layout == "svs" and not is_rgb:
        raise LsrInputError("the svs layout is for RGB uint8 images only", path)
    if layout == "svs" and description is None:
        description = _aperio_description(w, h, tile, mpp, compression)

    def convert(band: np.ndarray) -> np.ndarray:
        band = np.asarray(band)
        if band.ndim == 3 and c == 0:
            band = band[..., 0]
        if dtype == np.bool_:
            return band.astype(np.uint8) * np.uint8(255)
        return band.astype(store_dtype, copy=False)

    shapes = _level_shapes(h, w, max(int(min_size), 1))
    spp = 3 if is_rgb else 1
    row_bytes = w * spp * store_dtype.itemsize
    comp_kw: dict[str, Any] = {}
    if compression == "jpeg":
        comp_kw = {"compression": "jpeg", "compressionargs": {"level": int(jpeg_quality)}}
    elif compression in ("zlib", "lzw"):
        # horizontal differencing (Predictor 2) for integers only: for floats tifffile
        # writes Predictor 3, which Bio-Formats (QuPath's reader of such files) refuses
        comp_kw = {"compression": compression, "predictor": store_dtype.kind in "ui"}
    common: dict[str, Any] = {
        "tile": (tile, tile),
        "photometric": photometric if is_rgb else "minisblack",
        "resolutionunit": tifffile.RESUNIT.CENTIMETER,
        "dtype": store_dtype,
        **comp_kw,
    }
    if is_rgb:
        common["planarconfig"] = "contig"

    def res(level: int) -> tuple[float, float]:
        hl, wl = shapes[level]
        return (1e4 / mpp * wl / w, 1e4 / mpp * hl / h)

    def lshape(level: int) -> tuple[int, ...]:
        return shapes[level] + ((3,) if is_rgb else ())

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(atomic_path(path)))
        stage = Path(tempfile.mkdtemp(prefix=PYRAMID_STAGE_PREFIX, dir=path.parent))
        stack.callback(shutil.rmtree, stage, True)
        maps: list[np.ndarray] = []
        for i in range(1, len(shapes)):
            maps.append(
                np.lib.format.open_memmap(
                    stage / f"{i}.npy", mode="w+", dtype=stage_dtype, shape=lshape(i)
                )
            )

        band_rows = _band_rows(image, tile, row_bytes)

        def level0_tiles() -> Iterator[np.ndarray]:
            for y in range(0, h, band_rows):
                band = convert(image[y : min(y + band_rows, h)])
                if maps:
                    if majority:  # counted 1024 rows at a time
                        for sy in range(0, band.shape[0], 1024):
                            half = _fraction_halved(band[sy : sy + 1024])
                            at = (y + sy) // 2
                            maps[0][at : at + half.shape[0]] = half
                    else:
                        half = _halve(band, nearest)
                        maps[0][y // 2 : y // 2 + half.shape[0]] = half
                yield from _tiles_of_band(band, tile)
                del band

        def level_tiles(level: int) -> Iterator[np.ndarray]:
            src = maps[level - 1]
            for y in range(0, src.shape[0], tile):
                band = np.asarray(src[y : y + tile])
                if majority:  # the fraction set -> 0/255
                    band = np.where(band >= 0.5, np.uint8(255), np.uint8(0))
                yield from _tiles_of_band(band, tile)

        def build_lower_levels() -> None:
            for i in range(1, len(maps)):
                src, dst = maps[i - 1], maps[i]
                step = 4 * tile
                for y in range(0, src.shape[0], step):
                    half = _halve(np.asarray(src[y : y + step]), nearest)
                    dst[y // 2 : y // 2 + half.shape[0]] = half
                dst.flush()

        n_sub = len(shapes) - 1
        ome = layout == "subifd" and description is None
        bigtiff = h * w * spp * store_dtype.itemsize > 2**31
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=ome) as tw:
            if layout == "subifd":
                meta: dict[str, Any] | None = None
                if ome:
                    meta = {
                        "axes": "YXS" if is_rgb else "YX",
                        "PhysicalSizeX": mpp,
                        "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeY": mpp,
                        "PhysicalSizeYUnit": "µm",
                    }
                tw.write(
                    level0_tiles(),
                    shape=lshape(0),
                    subifds=n_sub,
                    resolution=res(0),
                    description=description,
                    metadata=meta,
                    **common,
                )
                build_lower_levels()
                for i in range(1, len(shapes)):
                    tw.write(
                        level_tiles(i),
                        shape=lshape(i),
                        subfiletype=1,
                        resolution=res(i),
                        metadata=None,
                        **common,
                    )
            else:  # svs: baseline, thumbnail, levels in the main IFD chain
                tw.write(
                    level0_tiles(),
                    shape=lshape(0),
                    resolution=res(0),
                    description=description,
                    metadata=None,
                    **common,
                )
                build_lower_levels()
                thumb = np.asarray(maps[-1]) if maps else None
                if thumb is None:
                    thumb = convert(image[:])
                tw.write(
                    thumb,
                    photometric="rgb",
                    metadata=None,
                    description=description.split("|")[0],
                    compression="jpeg" if compression == "jpeg" else None,
                )
                for i in range(1, len(shapes)):
                    tw.write(
                        level_tiles(i),
                        shape=lshape(i),
                        resolution=res(i),
                        description=description,
                        metadata=None,
                        **common,
                    )
        maps.clear()  # drop the memory maps before their folder is removed
