"""A simulated patch classifier that judges the *image*, imperfectly, the way real ones do.

Real block classifiers see a downsampled, wider context and respond to how much dark,
crowded hematoxylin there is. This one does exactly that and nothing else — it never sees the
ground truth — so it is fooled by the same look-alikes a network meets (lymphocyte
aggregates, dense cellular stroma, crush artefact, normal lobules) and misses sparse tumour
and single-file infiltration.

Pipeline: area-downsample the slide by ``downsample`` → colour deconvolution (Ruifrok &
Johnston's matrix, ``skimage.color.hed_from_rgb``, on natural-log OD) → per classifier
pixel: H OD, "nuclei-dense" (H above a threshold), E OD, tissue → tissue-weighted average
over a ``context_blocks``-wide window centred on each block → ``logit = bias + weights ·
features + noise`` → probability.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb

from lsr.synthetic_config import ClassifierConfig, SyntheticConfig

FEATURES = ("hematoxylin", "dense", "eosin", "tissue")


def downsample_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Area mean of (H, W, 3) uint8 over ``factor`` × ``factor`` cells -> uint8 (H/f, W/f, 3).

    What a classifier reading a downsampled pyramid level sees (rounded to uint8, so the
    tiled and the in-memory paths agree exactly). H and W must be multiples of ``factor``
    (slides are whole blocks; blocks divide by it).
    """
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    a = rgb[: h * factor, : w * factor].astype(np.float32)
    return np.round(a.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))).astype(np.uint8)


def cells_per_block(cfg: SyntheticConfig) -> int:
    """Cells per block side: the context window is counted in cells (≤ 6 per block)."""
    bpx = cfg.scale.block_px // cfg.classifier.downsample
    return max(d for d in range(1, 7) if bpx % d == 0)


def cell_sums(rgb: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Per-cell sums (4, ny, nx) float64 of the classifier's pixel maps for (H, W, 3) uint8.

    The image is area-downsampled by ``downsample`` (:func:`downsample_rgb`), deconvolved,
    and every map (H OD × tissue, dense × tissue, E OD × tissue, tissue) summed over cells of
    ``block_px / cells_per_block`` working px. Sums of tiles concatenate to the sums of the
    slide, so a slide of any size is classified from these small arrays (bounded memory).
    """
    cc = cfg.classifier
    low = downsample_rgb(rgb, cc.downsample)
    od = -np.log(np.clip(low.astype(np.float32), 1.0, 255.0) / 255.0)  # natural-log OD
    hed = od.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)
    h_od = hed[:, 0].reshape(low.shape[:2])
    e_od = hed[:, 1].reshape(low.shape[:2])
    tissue = (low.mean(axis=2, dtype=np.float32) < 215.0).astype(np.float32)
    dense = (h_od > cc.dense_hematoxylin_od) * tissue
    c = (cfg.scale.block_px // cc.downsample) // cells_per_block(cfg)
    ny, nx = low.shape[0] // c, low.shape[1] // c

    def sums(a: np.ndarray) -> np.ndarray:
        return a[: ny * c, : nx * c].reshape(ny, c, nx, c).sum(axis=(1, 3), dtype=np.float64)

    return np.stack([sums(h_od * tissue), sums(dense), sums(e_od * tissue), sums(tissue)])


def block_features(cells: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Features (4, rows, cols) of every block from the slide's :func:`cell_sums`.

    Each block sees a window ``context_blocks`` blocks wide (rounded to whole cells) centred
    on it; outside the slide counts as empty glass. Features (:data:`FEATURES`): mean H OD,
    share of nuclei-dense pixels and mean E OD of the tissue in the window, and the tissue
    share of the window.
    """
    k = cells_per_block(cfg)
    c_px = (cfg.scale.block_px // cfg.classifier.downsample) // k  # classifier px per cell
    _, ny, nx = cells.shape
    rows, cols = ny // k, nx // k
    half = max(0.5, round(cfg.classifier.context_blocks * k) / 2)  # window half-width, cells
    # summed-area table with a zero border: S[i, j] = sum of cells [0, i) x [0, j)
    sat = np.zeros((4, ny + 1, nx + 1))
    sat[:, 1:, 1:] = cells.cumsum(axis=1).cumsum(axis=2)
    centre_y = np.arange(rows) * k + k / 2
    centre_x = np.arange(cols) * k + k / 2
    y0 = np.clip(np.round(centre_y - half).astype(int), 0, ny)
    y1 = np.clip(np.round(centre_y + half).astype(int), 0, ny)
    x0 = np.clip(np.round(centre_x - half).astype(int), 0, nx)
    x1 = np.clip(np.round(centre_x + half).astype(int), 0, nx)
    win = (
        sat[:, y1[:, None], x1[None, :]]
        - sat[:, y0[:, None], x1[None, :]]
        - sat[:, y1[:, None], x0[None, :]]
        + sat[:, y0[:, None], x0[None, :]]
    )
    area = (2 * half * c_px) ** 2  # classifier px in the window, glass outside included
    t = np.maximum(win[3], 1e-3)
    return np.stack([win[0] / t, win[1] / t, win[2] / t, win[3] / area])


def logits(features: np.ndarray, cc: ClassifierConfig) -> np.ndarray:
    """Noise-free logit (rows, cols) of the features (4, rows, cols)."""
    w = np.asarray(cc.weights, dtype=np.float64)
    return cc.bias + np.tensordot(w, features, axes=1)


def classify(features: np.ndarray, cc: ClassifierConfig, seed: int) -> np.ndarray:
    """Cancer probability per block (rows, cols) in [0, 1], with per-block logit noise."""
    z = logits(features, cc)
    if cc.logit_noise_sd > 0:
        z = z + np.random.default_rng([seed, 31]).normal(0.0, cc.logit_noise_sd, z.shape)
    return 1.0 / (1.0 + np.exp(-z))


def block_dice(probs: np.ndarray, cancer_fraction: np.ndarray, truth_fraction: float) -> float:
    """Block-level DICE: predicted = probability >= 0.5, true = cancer share >= ``truth_fraction``.

    Arrays (rows, cols) or flat, same shape. 1.0 when neither has a positive block.
    """
    pred = np.asarray(probs) >= 0.5
    true = np.asarray(cancer_fraction) >= truth_fraction
    denom = pred.sum() + true.sum()
    return 1.0 if denom == 0 else float(2.0 * (pred & true).sum() / denom)


def fit_weights(
    features: np.ndarray, truth: np.ndarray, l2: float = 1e-2, iters: int = 50
) -> tuple[np.ndarray, float]:
    """Logistic regression (Newton / IRLS) of block truth on features.

    ``features`` (4, N), ``truth`` (N,) bool. Returns (weights (4,), bias) — the "training"
    of the simulated classifier, used by :func:`lsr.synthetic.calibrate_classifier`.
    """
    x = np.vstack([features, np.ones(features.shape[1])]).T  # (N, 5)
    y = truth.astype(np.float64)
    beta = np.zeros(x.shape[1])
    reg = l2 * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + reg @ beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])
