"""Tissue mask: which parts of a slide hold tissue, so that background can be skipped.

Computed on a low-resolution thumbnail: Otsu's threshold on the HSV saturation (stained
tissue is coloured, glass is white or grey; the default) or on the grey level (tissue is
darker than glass), or a fixed threshold; then small specks are removed and small holes
filled (scikit-image). When nothing looks like tissue (a blank or very faint thumbnail) the
documented fallback is a warning and an all-tissue mask (``on_empty="all"``); pass
``on_empty="error"`` to get :class:`~lsr.errors.LsrInputError` instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lsr.errors import LsrInputError
from lsr.slide import WORKING_MPP, ArraySlide, Slide

#: Smallest spread (in [0, 1] units) of the thresholded channel for Otsu to be meaningful.
MIN_CONTRAST = 0.02
#: Otsu thresholds are clipped to these ranges (per channel). Otsu assumes two classes; on a
#: thumbnail that is all tissue (or all glass) it would split one class in two. Glass has a
#: saturation below ~0.05 and a grey level above ~0.9; stained tissue is well beyond.
OTSU_CLIP: dict[str, tuple[float, float]] = {"saturation": (0.05, 0.15), "grey": (0.1, 0.25)}


def _channel(rgb: np.ndarray, channel: str) -> np.ndarray:
    """Per-pixel value in [0, 1] that is high on tissue: saturation or 1 - grey."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise LsrInputError(f"tissue_mask needs an (H, W, 3) RGB image, got shape {rgb.shape}")
    f = rgb[..., :3].astype(np.float32) / (255.0 if rgb.dtype == np.uint8 else 1.0)
    if channel == "saturation":
        mx, mn = f.max(axis=2), f.min(axis=2)
        return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)
    if channel == "grey":
        grey = 0.2125 * f[..., 0] + 0.7154 * f[..., 1] + 0.0721 * f[..., 2]
        return (1.0 - grey).astype(np.float32)
    raise LsrInputError(f"channel must be 'saturation' or 'grey', got {channel!r}")


def tissue_mask(
    thumbnail_rgb: np.ndarray,
    *,
    method: str = "otsu",
    channel: str = "saturation",
    threshold: float | None = None,
    min_fraction: float = 0.001,
    min_object_px: int = 16,
    max_hole_px: int = 64,
    on_empty: str = "all",
) -> np.ndarray:
    """(H, W) bool tissue mask of an (H, W, 3) RGB thumbnail.

    ``method``: ``"otsu"`` (threshold from the image, clipped to :data:`OTSU_CLIP`) or
    ``"fixed"`` (``threshold``, in [0, 1] on the chosen channel). ``channel``:
    ``"saturation"`` or ``"grey"`` (uses 1 - grey, so tissue is high in both). Connected
    specks of ≤ ``min_object_px`` px are dropped and holes of ≤ ``max_hole_px`` px filled
    (thumbnail px). When the tissue fraction is below ``min_fraction`` (or the channel has
    no contrast): ``on_empty="all"`` warns and returns an all-True mask (nothing is
    skipped), ``"error"`` raises LsrInputError.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    if on_empty not in ("all", "error"):
        raise LsrInputError(f"on_empty must be 'all' or 'error', got {on_empty!r}")
    values = _channel(np.asarray(thumbnail_rgb), channel)
    if method == "otsu":
        contrast = float(values.max() - values.min()) if values.size else 0.0
        thr = None
        if contrast >= MIN_CONTRAST:
            lo, hi = OTSU_CLIP[channel]
            thr = float(np.clip(threshold_otsu(values), lo, hi))
    elif method == "fixed":
        if threshold is None or not 0 <= threshold <= 1:
            raise LsrInputError(f"method 'fixed' needs a threshold in [0, 1], got {threshold!r}")
        thr = float(threshold)
    else:
        raise LsrInputError(f"method must be 'otsu' or 'fixed', got {method!r}")
    mask = values > thr if thr is not None else np.zeros(values.shape, bool)
    if min_object_px > 0:
        mask = remove_small_objects(mask, max_size=int(min_object_px))
    if max_hole_px > 0:
        mask = remove_small_holes(mask, max_size=int(max_hole_px))
    fraction = float(mask.mean()) if mask.size else 0.0
    if fraction < min_fraction or thr is None:
        problem = (
            f"no tissue found on the thumbnail ({fraction:.2%} of pixels above the "
            f"{method} threshold on {channel}; blank or very faint slide?)"
        )
        if on_empty == "error":
            raise LsrInputError(problem)
        warnings.warn(problem + "; using the whole slide as tissue", stacklevel=2)
        return np.ones(values.shape, dtype=bool)
    return mask


def block_tissue_fraction(
    slide_or_array: Slide | np.ndarray,
    grid: Any,
    *,
    working_mpp: float = WORKING_MPP,
    px_per_block: int = 16,
    **mask_kwargs: Any,
) -> np.ndarray:
    """(rows, cols) float fraction of each block of ``grid`` (a BlockGrid) that is tissue.

    ``slide_or_array``: a :class:`~lsr.slide.Slide`, an (H, W, 3) uint8 RGB image at the
    working resolution, or an (H, W) bool tissue mask at the working resolution (used as
    is). For images, the mask is computed by :func:`tissue_mask` (``mask_kwargs``) on a
    rendering of the grid's area with ``px_per_block`` px per block side; pixels outside the
    slide count as background.
    """
    rows, cols = grid.shape
    b = grid.block_px
    oy, ox = grid.origin
    if isinstance(slide_or_array, np.ndarray) and slide_or_array.ndim == 2:
        mask = slide_or_array.astype(bool)
        canvas = np.zeros((rows * b, cols * b), dtype=np.float32)
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + rows * b, mask.shape[0]), min(ox + cols * b, mask.shape[1])
        if y1 > y0 and x1 > x0:
            canvas[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = mask[y0:y1, x0:x1]
        return canvas.reshape(rows, b, cols, b).mean(axis=(1, 3))
    if isinstance(slide_or_array, Slide):
        slide = slide_or_array
    else:
        slide = ArraySlide(np.asarray(slide_or_array), mpp=working_mpp)
    k = max(1, min(int(px_per_block), b))
    step = b / k  # working px per rendering px
    coarse_mpp = working_mpp * step
    rgb = slide.read_working(round(oy / step), round(ox / step), rows * k, cols * k, coarse_mpp)
    mask = tissue_mask(rgb, **mask_kwargs)
    return mask.reshape(rows, k, cols, k).mean(axis=(1, 3))
