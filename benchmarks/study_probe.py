"""Three looks at finished study runs without training anything (issue 6, results.md).

The 0.5-threshold masked IoU of ``study.py report`` mixes two things: how well a network
orders pixels and where 0.5 cuts that order. This script separates them, per run of the
named arms, from the runs' checkpoints and the shared data:

- **masked AUROC**: the area under the ROC curve of the cancer probability of the pixels
  inside each held-out patch's boundary band (one block wide, the masked IoU's band), pooled
  over the seed's patches; threshold-free. The low-resolution row scores its block's
  classifier probability.
- **table-matched threshold**: predict the first ``--train-slides`` training slides, take
  ``f*`` = the count table's mean cancer fraction over their labelled blocks (what the
  expert's table implies for the training data) and the threshold ``t`` that calls that
  share of their pixels cancer (the ``1 - f*`` quantile); then masked IoU of the held-out
  patches at ``t``. Uses only what a user has (slides, bins, table), no ground truth.
- **test-set share of the spread**: the standard deviation, over bootstrap resamples of a
  seed's held-out patches, of the pooled masked IoU difference of two losses; set against
  the standard deviation of that difference across seeds.

    python benchmarks/study_probe.py --out /tmp/study --arms final_ref:0-9,sum_fresh:10-19

Prints Markdown; ``--json`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

ROWS = ("low_res", "intra", "intra_inter", "intra_plus_inter")


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (N,) for the boolean labels ``positive`` (N,);
    ties count one half (Mann-Whitney U / (n_pos · n_neg)). NaN when a class is absent."""
    score = np.asarray(score, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def table_threshold(pixel_probs: np.ndarray, fraction: float) -> float:
    """The threshold that calls ``fraction`` of ``pixel_probs`` cancer (``>= t``)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return float(np.quantile(np.asarray(pixel_probs, dtype=np.float64), 1.0 - fraction))


def pooled_iou(counts: np.ndarray) -> np.ndarray:
    """Pooled IoU from per-patch counts (..., P, 4) of ``(|P∩G|, |P∪G|, |P|, |G|)``; an empty
    union scores 1, as in :func:`lsr.metrics.pooled_scores` (vectorised for the bootstrap)."""
    tot = counts.sum(axis=-2)
    return np.where(tot[..., 1] > 0, tot[..., 0] / np.maximum(tot[..., 1], 1), 1.0)


def bootstrap_sd(counts_a: np.ndarray, counts_b: np.ndarray, n: int = 2000, seed: int = 0) -> float:
    """SD of pooled IoU(b) − IoU(a) over ``n`` resamples (with replacement) of the patches;
    ``counts_*`` (P, 4) per patch, the same patches in the same order."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(counts_a), (n, len(counts_a)))
    return float((pooled_iou(counts_b[idx]) - pooled_iou(counts_a[idx])).std())


def _train_pixels(net: Any, data: Path, manifest: dict, table: Any, n_slides: int):
    """Every 7th pixel of the labelled blocks of the first training slides, and f*."""
    from lsr.grid import load_grid
    from lsr.infer import predict_array
    from lsr.slide import open_slide

    bp = int(manifest["block_px"])
    vals, fracs = [], []
    for entry in manifest["train"][:n_slides]:
        with open_slide(data / "train" / entry["image"]) as s:
            h, w = s.shape
            prob = predict_array(net, s.read_level(0, 0, 0, h, w))
        z = load_grid(data / "train" / entry["grid"], block_px=bp).z
        for r, c in zip(*np.nonzero(z >= 0), strict=True):
            block = prob[r * bp : (r + 1) * bp, c * bp : (c + 1) * bp]
            if block.shape == (bp, bp):
                vals.append(block.ravel()[::7])
                fracs.append(float(table.eta[z[r, c], 0]))
    return np.concatenate(vals), float(np.mean(fracs))


def low_res_rows(patches: list[dict], block_px: int) -> tuple[list, list]:
    """The blocky model's per-pixel scores and 0.5 masks of each test patch ((H, W) each).

    Unlabelled (NaN) blocks and padding score 0, as :func:`lsr.baseline.low_res_mask` calls
    them non-cancer; with NaN scores the AUROC would be NaN (paper-scale patches reach into
    unlabelled blocks)."""
    from lsr.baseline import low_res_mask, low_res_probability

    shapes = [p["gt"].shape for p in patches]
    scores = [
        low_res_probability(p["probs"], block_px, s, fill=0.0)
        for p, s in zip(patches, shapes, strict=True)
    ]
    masks = [low_res_mask(p["probs"], block_px, s) for p, s in zip(patches, shapes, strict=True)]
    return scores, masks


def probe_seed(job: Path, seed: int, n_slides: int) -> dict[str, Any]:
    """All three looks for one (arm, seed) job folder."""
    from lsr import model as lsr_model
    from lsr.counttable import CountTable
    from lsr.demo import _load_patch, predict_patch
    from lsr.metrics import _counts, boundary_band

    data = job / "data" / f"seed{seed}"
    manifest = json.loads((data / "manifest.json").read_text())
    bp = int(manifest["block_px"])
    band = float(manifest.get("band_px") or bp)
    table = CountTable.load(data / manifest["tables"]["expert"])
    patches = [_load_patch(data / "test", e, bp) for e in manifest["test"]]
    bands = [boundary_band(p["gt"], band) for p in patches]
    truth = np.concatenate([p["gt"][m] for p, m in zip(patches, bands, strict=True)])

    def scores(probs: list[np.ndarray], masks: list[np.ndarray]) -> tuple[float, np.ndarray]:
        counts = np.array([_counts(k, p["gt"], m) for k, p, m in
                           zip(masks, patches, bands, strict=True)], dtype=np.float64)  # fmt: skip
        score = np.concatenate([q[m] for q, m in zip(probs, bands, strict=True)])
        return auroc(score, truth), counts

    auc, counts = scores(*low_res_rows(patches, bp))
    out: dict[str, Any] = {"low_res": {"auroc": auc, "iou05": float(pooled_iou(counts))}}
    count_by_row = {"low_res": counts}
    for run in sorted((job / "runs" / f"seed{seed}").iterdir()):
        net, _ = lsr_model.load(run)
        probs = [predict_patch(net, p["rgb"]) for p in patches]
        auc, counts = scores(probs, [q >= 0.5 for q in probs])
        out[run.name] = {"auroc": auc, "iou05": float(pooled_iou(counts))}
        if n_slides > 0:  # the table-matched threshold (most of the time goes here)
            pixels, fstar = _train_pixels(net, data, manifest, table, n_slides)
            t = table_threshold(pixels, fstar)
            _, counts_t = scores(probs, [q >= t for q in probs])
            out[run.name] |= {"iou_t": float(pooled_iou(counts_t)), "t": t, "fstar": fstar,
                              "train_share05": float((pixels >= 0.5).mean())}  # fmt: skip
        count_by_row[run.name] = counts
    if "intra" in count_by_row and "intra_inter" in count_by_row:
        out["boot_sd_ii_minus_intra"] = bootstrap_sd(count_by_row["intra"],
                                                     count_by_row["intra_inter"])  # fmt: skip
    return out


def _paired(per_seed: dict[int, dict], a: str, b: str, key: str) -> str:
    pairs = [(r[a][key], r[b][key]) for r in per_seed.values()
             if key in r.get(a, {}) and key in r.get(b, {})]  # fmt: skip
    return _diff_text([x - y for x, y in pairs]) if len(pairs) > 1 else "–"


def _diff_text(diffs: list[float]) -> str:
    """Paired differences as "mean (SE), seeds ahead/seeds"."""
    d = np.asarray(diffs, dtype=np.float64)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} ({se:.3f}), {int((d > 0).sum())}/{len(d)}"


def report(per_arm: dict[str, dict[int, dict]]) -> str:
    """Markdown: AUROC per row, the table-matched threshold's effect, the test-set share."""
    lines = ["| arm | seeds | AUROC low-res / intra / intra+inter (/ sum) | intra − low-res | "
             "intra+inter − intra | sum − intra |", "|---|---|---|---|---|---|"]  # fmt: skip
    for arm, per_seed in per_arm.items():
        if not per_seed:
            lines.append(f"| {arm} | no finished seed | | | | |")
            continue
        means = [f"{np.mean([r[k]['auroc'] for r in per_seed.values()]):.3f}" for k in ROWS
                 if all(k in r for r in per_seed.values())]  # fmt: skip
        lines.append(f"| {arm} | {min(per_seed)}–{max(per_seed)} | {' / '.join(means)} | "
                     f"{_paired(per_seed, 'intra', 'low_res', 'auroc')} | "
                     f"{_paired(per_seed, 'intra_inter', 'intra', 'auroc')} | "
                     f"{_paired(per_seed, 'intra_plus_inter', 'intra', 'auroc')} |")  # fmt: skip
    thr: list[str] = []
    for arm, per_seed in per_arm.items():
        for loss in ROWS[1:]:
            rs = [r[loss] for r in per_seed.values() if "iou_t" in r.get(loss, {})]
            if not rs:
                continue
            ts = [r["t"] for r in rs]
            gap = [r["train_share05"] - r["fstar"] for r in rs]
            shift = _diff_text([r["iou_t"] - r["iou05"] for r in rs])
            thr.append(
                f"| {arm} | {loss} | {np.mean([r['iou05'] for r in rs]):.3f} | "
                f"{np.mean([r['iou_t'] for r in rs]):.3f} | {shift} | "
                f"{min(ts):.2f}–{max(ts):.2f} | {min(gap):+.2f} to {max(gap):+.2f} |"
            )
        at_t = _paired(per_seed, "intra_inter", "intra", "iou_t")
        if at_t != "–":
            thr.append(f"| {arm} | intra+inter − intra at t | | {at_t} | | | |")
    if thr:
        lines += ["", "| arm | loss | masked IoU at 0.5 | at t | at t − at 0.5 (SE), seeds up | "
                  "t (range) | share ≥ 0.5 − f* (training blocks) |",
                  "|---|---|---|---|---|---|---|", *thr]  # fmt: skip
    lines += ["", "| arm | SD of intra+inter − intra across seeds | RMS of its patch-bootstrap "
              "SD within a seed |", "|---|---|---|"]  # fmt: skip
    for arm, per_seed in per_arm.items():
        rs = [r for r in per_seed.values() if "boot_sd_ii_minus_intra" in r]
        if len(rs) > 1:
            d = [r["intra_inter"]["iou05"] - r["intra"]["iou05"] for r in rs]
            boot = np.sqrt(np.mean([r["boot_sd_ii_minus_intra"] ** 2 for r in rs]))
            lines.append(f"| {arm} | {np.std(d, ddof=1):.3f} | {boot:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="the study folder of study.py run")
    p.add_argument("--arms", required=True, help="comma-separated NAME:SEEDS, e.g. final_ref:0-9")
    p.add_argument(
        "--train-slides",
        type=int,
        default=10,
        help="training slides for f* and t (0: skip the threshold look)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="", help="also write every number here")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study import _job_dir, _parse_seeds

    out = Path(args.out)
    per_arm: dict[str, dict[int, dict]] = {}
    for spec in args.arms.split(","):
        arm, _, seeds = spec.partition(":")
        per_arm[arm] = {}
        for seed in _parse_seeds(seeds or "0-4"):
            job = _job_dir(out, arm, seed)
            if (job / "results.json").exists():
                per_arm[arm][seed] = probe_seed(job, seed, args.train_slides)
                print(f"{arm} seed {seed} done", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(per_arm, indent=1) + "\n")
    print(report(per_arm))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
