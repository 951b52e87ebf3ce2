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
from scipy import ndimage
from skimage.color import hed_from_rgb

from lsr.synthetic_config import ClassifierConfig, SyntheticConfig

FEATURES = ("hematoxylin", "dense", "eosin", "tissue")


def downsample_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Area mean of (H, W, 3) uint8 over ``factor`` × ``factor`` cells -> float32 (H/f, W/f, 3).

    H and W must be multiples of ``factor`` (slides are whole blocks; blocks divide by it).
    """
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    a = rgb[: h * factor, : w * factor].astype(np.float32)
    return a.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))


def block_features(low_rgb: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Features (4, rows, cols) of every block from the downsampled slide (h, w, 3).

    ``low_rgb`` is :func:`downsample_rgb` of the whole slide (float 0-255). Order of the
    features: :data:`FEATURES`.
    """
    cc = cfg.classifier
    bpx = cfg.scale.block_px // cc.downsample  # block side in classifier px
    rows, cols = low_rgb.shape[0] // bpx, low_rgb.shape[1] // bpx
    od = -np.log(np.clip(low_rgb, 1.0, 255.0) / 255.0)  # natural-log optical density
    hed = (od.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)).reshape(od.shape)
    h_od, e_od = hed[..., 0], hed[..., 1]
    tissue = (low_rgb.mean(axis=2) < 215.0).astype(np.float32)
    dense = (h_od > cc.dense_hematoxylin_od).astype(np.float32)
    size = max(1, round(cc.context_blocks * bpx))

    def ctx(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=size, mode="constant")

    t = ctx(tissue)
    safe = np.maximum(t, 1e-3)
    maps = [ctx(h_od * tissue) / safe, ctx(dense * tissue) / safe, ctx(e_od * tissue) / safe, t]
    # sample each map at the block centres
    cy = (np.arange(rows) * bpx + bpx // 2).astype(np.intp)
    cx = (np.arange(cols) * bpx + bpx // 2).astype(np.intp)
    return np.stack([m[np.ix_(cy, cx)] for m in maps]).astype(np.float64)


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
