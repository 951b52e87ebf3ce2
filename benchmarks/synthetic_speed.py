"""Speed of the synthetic benchmark generator, as a ratio to a baseline of the same run.

Generates the demo-sized data set (default config: 30 slides of 1200 × 1200 and 10 test
patches of 600 × 600, with TIFFs, grids and tables) and compares its wall time with a
baseline measured in the same run on the same pixel count: one pass of ten float32 NumPy
element-wise operations per RGB pixel (a lower bound for any vectorised renderer).
Target: the data set in well under a minute on 2 cores.

Run: ``python benchmarks/synthetic_speed.py [--workers N] [--slides N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from lsr.synthetic import generate_dataset, load_config


def baseline_seconds(n_pixels: int) -> float:
    """Ten float32 element-wise NumPy operations over ``n_pixels`` (in 1-Mpx chunks)."""
    a = np.random.default_rng(0).random(1_000_000, dtype=np.float32)
    t0 = time.perf_counter()
    for _ in range(max(1, n_pixels // 1_000_000)):
        b = a * 1.5
        b += 0.1
        np.exp(b, out=b)
        b *= a
        np.sqrt(b, out=b)
        b -= a
        np.maximum(b, 0, out=b)
        b /= 2.0
        np.minimum(b, 1, out=b)
        b += a
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slides", type=int, default=30)
    parser.add_argument("--patches", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config("default")
    n_px = (
        args.slides * cfg.slide.height_px * cfg.slide.width_px
        + args.patches * cfg.slide.patch_px**2
    )
    base = baseline_seconds(n_px)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = generate_dataset(
            cfg, 0, tmp, n_slides=args.slides, n_test_patches=args.patches, workers=args.workers
        )
        gen = time.perf_counter() - t0
    print(f"pixels: {n_px / 1e6:.1f} Mpx; workers: {args.workers}")
    print(f"baseline (10 NumPy ops per pixel, 1 core): {base:.2f} s")
    print(f"generate_dataset: {gen:.2f} s = {gen / base:.1f} x baseline "
          f"({gen / n_px * 1e6 * args.workers:.2f} core-µs per pixel)")  # fmt: skip
    print(f"classifier block DICE (train): {m['classifier']['block_dice_train']:.3f}")


if __name__ == "__main__":
    main()
