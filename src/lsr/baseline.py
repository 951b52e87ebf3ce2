"""The low-resolution model: the paper's baseline row (Table 2, green lines in Fig. 4).

No training: each working-resolution block takes its patch classifier's cancer probability,
and a block is cancer when that probability is ≥ 0.5. The boundary is blocky by construction.
Both maps here are at working resolution (≈4.2 µm/pixel): block ``(r, c)`` covers pixels
``[r·block_px, (r+1)·block_px) × [c·block_px, (c+1)·block_px)``.
"""

from __future__ import annotations

import numpy as np

from lsr.errors import LsrInputError

__all__ = ["low_res_mask", "low_res_probability"]


def _check(
    block_probs: np.ndarray, block_px: int, out_shape: tuple[int, int] | None
) -> tuple[np.ndarray, int, tuple[int, int]]:
    probs = np.asarray(block_probs)
    if probs.ndim != 2:
        raise LsrInputError(
            f"block probabilities must be a 2-D grid (rows, cols), got shape {probs.shape}"
        )
    if not np.issubdtype(probs.dtype, np.number) or np.iscomplexobj(probs):
        raise LsrInputError(f"block probabilities must be real numbers, got dtype {probs.dtype}")
    probs = probs.astype(np.float64, copy=False)
    labelled = probs[~np.isnan(probs)]
    if labelled.size and (labelled.min() < 0.0 or labelled.max() > 1.0):
        raise LsrInputError(
            "block probabilities must be fractions in [0, 1] (NaN = no label); "
            f"got values in [{labelled.min():g}, {labelled.max():g}]"
        )
    if isinstance(block_px, bool) or not isinstance(block_px, int | np.integer) or block_px < 1:
        raise LsrInputError(f"block_px must be a positive integer, got {block_px!r}")
    block_px = int(block_px)
    if out_shape is None:
        out_shape = (probs.shape[0] * block_px, probs.shape[1] * block_px)
    else:
        if len(out_shape) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in out_shape
        ):
            raise LsrInputError(f"out_shape must be two non-negative integers, got {out_shape!r}")
        out_shape = (int(out_shape[0]), int(out_shape[1]))
    return probs, block_px, out_shape


def _upsample(blocks: np.ndarray, block_px: int, out_shape: tuple[int, int], fill) -> np.ndarray:
    """Nearest upsampling of a (R, C) grid by ``block_px``, cropped/padded with ``fill``."""
    h, w = out_shape
    # Only the blocks that reach the output are repeated: cheap for a small crop of a slide.
    rows = min(blocks.shape[0], -(-h // block_px))
    cols = min(blocks.shape[1], -(-w // block_px))
    up = np.repeat(np.repeat(blocks[:rows, :cols], block_px, axis=0), block_px, axis=1)
    out = np.full((h, w), fill, dtype=blocks.dtype)
    hh, ww = min(h, up.shape[0]), min(w, up.shape[1])
    out[:hh, :ww] = up[:hh, :ww]
    return out


def low_res_probability(
    block_probs: np.ndarray,
    block_px: int,
    out_shape: tuple[int, int] | None = None,
    *,
    fill: float = np.nan,
) -> np.ndarray:
    """Per-pixel cancer probability of the low-resolution model (float64, (H, W)).

    ``block_probs``: (R, C) classifier cancer probability per block, fractions in [0, 1],
    NaN where a block has no label. ``block_px``: block side in working-resolution pixels
    (240 for the paper's 4000 level-0 pixels at 40X). ``out_shape``: working-resolution
    (H, W) to crop/pad to (default ``(R·block_px, C·block_px)``). Pixels of unlabelled
    blocks and of padding get ``fill`` (NaN by default: "no information").
    """
    probs, block_px, out_shape = _check(block_probs, block_px, out_shape)
    if not np.isnan(fill):
        probs = np.where(np.isnan(probs), fill, probs)
    return _upsample(probs, block_px, out_shape, fill)


def low_res_mask(
    block_probs: np.ndarray,
    block_px: int,
    out_shape: tuple[int, int] | None = None,
    threshold: float = 0.5,
) -> np.ndarray:
    """Blocky cancer mask of the low-resolution model (bool, (H, W), working resolution).

    A block is cancer when its probability is ≥ ``threshold`` (0.5 as in the paper);
    unlabelled (NaN) blocks and padding beyond the grid are non-cancer. Shapes and units as in
    :func:`low_res_probability`.
    """
    probs, block_px, out_shape = _check(block_probs, block_px, out_shape)
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise LsrInputError(f"threshold must be a fraction in [0, 1], got {threshold:g}")
    with np.errstate(invalid="ignore"):
        cancer = probs >= threshold  # NaN compares False: no label -> non-cancer
    return _upsample(cancer, block_px, out_shape, False)
