"""Realism check of the synthetic H&E generator: pictures and colour/texture statistics.

Writes ``docs/img/synthetic_*.png`` and ``docs/img/synthetic_stats.json`` and prints a
Markdown table for ``docs/synthetic.md``. No real H&E image ships with the installed
packages (scikit-image's ``skin`` H&E image needs a download; ``immunohistochemistry`` is
IHC), so the colours are compared with published reference stain vectors instead:

* Ruifrok & Johnston (2001) H and E OD vectors, as shipped in ``skimage.color.rgb_from_hed``;
* the Macenko et al. (2009) reference stain matrix used by the common normalisation code
  (H = 0.5626, 0.7201, 0.4062; E = 0.2159, 0.8012, 0.5581).

Run: ``python benchmarks/realism_check.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from skimage.color import hed_from_rgb, rgb2hsv, rgb_from_hed
from skimage.segmentation import find_boundaries

from lsr.counttable import bin_probabilities
from lsr.metrics import block_fractions
from lsr.synthetic import generate_patch, generate_slide
from lsr.synthetic_classifier import block_dice
from lsr.synthetic_config import load_config

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
MACENKO_REF = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
RUIFROK = rgb_from_hed[:2] / np.linalg.norm(rgb_from_hed[:2], axis=1, keepdims=True)


def macenko_vectors(rgb: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> np.ndarray:
    """Estimate (2, 3) unit H and E OD vectors from an RGB image (Macenko et al. 2009)."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / 256.0)
    od = od[(od > beta).all(axis=1)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = np.abs(v1), np.abs(v2)  # OD vectors are positive
    he = np.array([v1, v2]) if v1[0] > v2[0] else np.array([v2, v1])
    return he / np.linalg.norm(he, axis=1, keepdims=True)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = float(np.clip(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))
    return float(np.degrees(np.arccos(c)))


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    od = -np.log(np.clip(rgb.astype(np.float64), 1, 255) / 255.0)
    return (od.reshape(-1, 3) @ hed_from_rgb)[:, 0].reshape(rgb.shape[:2])


def main() -> int:
    IMG.mkdir(parents=True, exist_ok=True)
    cfg = load_config("default")
    s = generate_slide(cfg, 7)
    b = cfg.scale.block_px

    # 1. slide thumbnail with the ground-truth boundary
    over = s.rgb.copy()
    edge = find_boundaries(s.gt, mode="outer")
    over[edge] = (220, 0, 0)
    fig, ax = plt.subplots(1, 2, figsize=(12, 6.2))
    ax[0].imshow(s.rgb)
    ax[0].set_title(f"synthetic slide (default config, seed 7), {s.rgb.shape[0]} px ≈ 1 cm")
    ax[1].imshow(over)
    ax[1].imshow(np.ma.masked_where(~s.gt, s.gt), cmap="autumn", alpha=0.25)
    ax[1].set_title("ground truth (cancer): red boundary, tinted")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(IMG / "synthetic_slide.png", dpi=80)
    plt.close(fig)

    # 2. a zoomed block at a tumour boundary (nearest-neighbour x3)
    frac = block_fractions(s.gt, b)
    cand = np.argwhere((frac > 0.3) & (frac < 0.7) & (s.tissue_fraction > 0.97))
    r, c = cand[len(cand) // 2] if len(cand) else (2, 2)
    y, x = int(r * b), int(c * b)
    crop = s.rgb[y : y + b, x : x + b]
    gcrop = s.gt[y : y + b, x : x + b]
    fig, ax = plt.subplots(1, 2, figsize=(10, 5.2))
    ax[0].imshow(crop, interpolation="nearest")
    ax[0].set_title(f"one block ({b} px ≈ {b * cfg.scale.working_mpp / 1000:.1f} mm)")
    ov = crop.copy()
    ov[find_boundaries(gcrop, mode="outer")] = (0, 170, 0)
    ax[1].imshow(ov, interpolation="nearest")
    ax[1].set_title("same block, ground-truth boundary in green")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(IMG / "synthetic_zoom.png", dpi=90)
    plt.close(fig)

    # 3. the classifier's block grid and bins next to the truth
    fig, ax = plt.subplots(1, 2, figsize=(12, 6.2))
    ax[0].imshow(s.rgb)
    ax[0].imshow(
        np.kron(np.nan_to_num(s.probs, nan=0), np.ones((b, b))),
        cmap="viridis", alpha=0.45, vmin=0, vmax=1,
    )  # fmt: skip
    ax[0].contour(s.gt, levels=[0.5], colors="red", linewidths=0.8)
    z = s.z
    for (rr, cc), zz in np.ndenumerate(z):
        if zz >= 0:
            ax[0].text(cc * b + b / 2, rr * b + b / 2, str(zz), ha="center", va="center",
                       color="white", fontsize=9)  # fmt: skip
    ok = np.isfinite(s.probs)
    d = block_dice(s.probs[ok], s.cancer_fraction[ok], cfg.classifier.block_truth_fraction)
    ax[0].set_title(f"classifier probability and bin z per block (block DICE {d:.2f})")
    im = ax[1].imshow(s.cancer_fraction, vmin=0, vmax=1, cmap="viridis")
    ax[1].set_title("true cancer fraction per block")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(IMG / "synthetic_classifier.png", dpi=80)
    plt.close(fig)

    # 4. the three growth-pattern / stain configs, same seed
    names = ["default", "ductal_nested", "lobular_single_file"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 5.4))
    variant_stats = {}
    for a, name in zip(ax, names, strict=True):
        vc = load_config(name)
        vs = generate_slide(vc, 11, 480, 480, is_patch=True)
        ov = vs.rgb.copy()
        ov[find_boundaries(vs.gt, mode="outer")] = (0, 170, 0)
        a.imshow(ov)
        a.set_title(f"{name} (4 × 4 mm, green = truth)")
        a.axis("off")
        variant_stats[name] = macenko_vectors(vs.rgb).round(4).tolist()
    fig.tight_layout()
    fig.savefig(IMG / "synthetic_variants.png", dpi=80)
    plt.close(fig)

    # 5. statistics over several slides: stain vectors, hue histograms, nuclear density
    stats: dict = {"slides": [], "variants_macenko": variant_stats}
    hues_t, hues_n = [], []
    h_t, h_n = [], []
    for seed in range(20, 26):
        sl = generate_slide(cfg, seed)
        t = sl.rgb.mean(axis=2) < 215
        he = macenko_vectors(sl.rgb)
        stats["slides"].append({
            "seed": seed,
            "macenko_h": he[0].round(4).tolist(),
            "macenko_e": he[1].round(4).tolist(),
            "angle_h_vs_macenko_ref_deg": round(angle_deg(he[0], MACENKO_REF[0]), 2),
            "angle_e_vs_macenko_ref_deg": round(angle_deg(he[1], MACENKO_REF[1]), 2),
            "angle_h_vs_ruifrok_deg": round(angle_deg(he[0], RUIFROK[0]), 2),
            "angle_e_vs_ruifrok_deg": round(angle_deg(he[1], RUIFROK[1]), 2),
        })  # fmt: skip
        hsv = rgb2hsv(sl.rgb)
        hues_t.append(hsv[..., 0][sl.gt & t])
        hues_n.append(hsv[..., 0][~sl.gt & t])
        hh = hematoxylin(sl.rgb)
        h_t.append(hh[sl.gt & t])
        h_n.append(hh[~sl.gt & t])
    ht, hn = np.concatenate(hues_t), np.concatenate(hues_n)
    Ht, Hn = np.concatenate(h_t), np.concatenate(h_n)
    stats["hematoxylin_od_median"] = {
        "tumour": float(np.median(Ht)),
        "non_tumour": float(np.median(Hn)),
    }
    stats["nuclear_area_share_h_gt_0.3"] = {
        "tumour": float((Ht > 0.3).mean()), "non_tumour": float((Hn > 0.3).mean())
    }  # fmt: skip
    stats["hue_peak_deg"] = {
        "tumour": float(np.degrees(2 * np.pi * np.median(ht))),
        "non_tumour": float(np.degrees(2 * np.pi * np.median(hn))),
    }
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    bins = np.linspace(0, 360, 73)
    ax[0].hist(ht * 360, bins=bins, density=True, alpha=0.6, color="purple", label="cancer")
    ax[0].hist(hn * 360, bins=bins, density=True, alpha=0.6, color="hotpink", label="non-cancer")
    ax[0].set_xlabel("hue (degrees, HSV)")
    ax[0].set_title("hue of tissue pixels (6 slides)")
    ax[0].legend()
    hb = np.linspace(-0.1, 1.2, 66)
    ax[1].hist(Ht, bins=hb, density=True, alpha=0.6, color="purple", label="cancer")
    ax[1].hist(Hn, bins=hb, density=True, alpha=0.6, color="hotpink", label="non-cancer")
    ax[1].set_xlabel("hematoxylin OD (Ruifrok deconvolution, natural log)")
    ax[1].set_title("hematoxylin per pixel")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(IMG / "synthetic_stats.png", dpi=80)
    plt.close(fig)

    # 6. classifier on held-out test patches and on more slides
    probs, fracs = [], []
    for seed in range(500, 520):
        _, gt, p = generate_patch(cfg, seed)
        probs.append(p.ravel())
        fracs.append(block_fractions(gt, b).ravel())
    p, f = np.concatenate(probs), np.concatenate(fracs)
    stats["classifier_block_dice_20_test_patches"] = block_dice(p, f, 0.5)
    stats["test_patch_bins"] = np.bincount(bin_probabilities(p), minlength=10).tolist()
    (IMG / "synthetic_stats.json").write_text(json.dumps(stats, indent=2))

    ang = np.array([[r[k] for k in r if k.startswith("angle")] for r in stats["slides"]])
    print("| statistic | synthetic (mean over 6 slides) | reference |")
    print("|---|---|---|")
    print(f"| angle of Macenko-estimated H to Macenko reference H | {ang[:, 0].mean():.1f}° | 0° |")
    print(f"| angle of Macenko-estimated E to Macenko reference E | {ang[:, 1].mean():.1f}° | 0° |")
    print(f"| angle of estimated H to Ruifrok H | {ang[:, 2].mean():.1f}° | "
          f"{angle_deg(MACENKO_REF[0], RUIFROK[0]):.1f}° (Macenko ref vs Ruifrok) |")  # fmt: skip
    print(f"| angle of estimated E to Ruifrok E | {ang[:, 3].mean():.1f}° | "
          f"{angle_deg(MACENKO_REF[1], RUIFROK[1]):.1f}° (Macenko ref vs Ruifrok) |")  # fmt: skip
    print(json.dumps({k: v for k, v in stats.items() if k not in ("slides",)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
