"""Held-out masked IoU along a study run: each kept checkpoint scored like the demo's last one.

A study arm that keeps its checkpoints (``checkpoint_every`` / ``keep_checkpoints``, e.g.
``cli_defaults``) can be read at several training lengths without training again: with a
constant learning rate the first ``n`` steps of a long run are the ``n``-step run (the sampler's
order does not depend on the total; ``f_long900`` reproduced ``final_ref`` loss for loss). Each
checkpoint predicts the seed's held-out test patches and is scored as ``lsr.demo`` scores the
final network (0.5 threshold, pooled masked IoU, band of one block), so the last step's value
must equal the run's ``results.json`` (printed beside it as a check).

    python benchmarks/study_curve.py --out /tmp/study --arm cli_defaults --steps 300,1000,2000

Prints Markdown: one row per seed, one column per step, the mean and the low-resolution model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def checkpoint_dir(run: Path, step: int) -> Path:
    """The folder of checkpoint ``step`` of a training output folder (must exist)."""
    path = run / "checkpoints" / f"step-{step:06d}"
    if not path.is_dir():
        kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
        raise FileNotFoundError(f"{path}: no such checkpoint (kept: {', '.join(kept) or 'none'})")
    return path


def curve_seed(job: Path, seed: int, loss: str, steps: list[int]) -> dict[str, float]:
    """Masked IoU (0.5 threshold) of the held-out patches at each step, plus the blocky model's
    (``"low_res"``) and the demo's own final score (``"results"``)."""
    from lsr import model as lsr_model
    from lsr.baseline import low_res_mask
    from lsr.demo import _load_patch, predict_patch
    from lsr.metrics import pooled_scores

    data = job / "data" / f"seed{seed}"
    manifest = json.loads((data / "manifest.json").read_text())
    bp = int(manifest["block_px"])
    band = float(manifest.get("band_px") or bp)
    patches = [_load_patch(data / "test", e, bp) for e in manifest["test"]]
    gts = [p["gt"] for p in patches]
    low = [low_res_mask(p["probs"], bp, p["gt"].shape) for p in patches]
    out = {"low_res": pooled_scores(low, gts, band=band)["masked_iou"]}
    run = job / "runs" / f"seed{seed}" / loss
    for step in steps:
        net, meta = lsr_model.load(checkpoint_dir(run, step))
        if int(meta["step"]) != step:
            raise ValueError(f"{run}: checkpoint step-{step:06d} holds step {meta['step']}")
        masks = [predict_patch(net, p["rgb"]) >= 0.5 for p in patches]
        out[str(step)] = pooled_scores(masks, gts, band=band)["masked_iou"]
    results = job / "results.json"
    if results.exists():
        rows = json.loads(results.read_text())["per_seed"][str(seed)]
        out["results"] = rows[loss]["masked_iou"]
    return out


def table(per_seed: dict[int, dict[str, float]], steps: list[int]) -> str:
    """Markdown: seeds × (low-res, steps..., results.json)."""
    head = ["seed", "low-res", *(f"{s} steps" for s in steps), "results.json"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = ["low_res", *map(str, steps), "results"]
    for seed, row in sorted(per_seed.items()):
        cells = [f"{row[k]:.3f}" if k in row else "–" for k in keys]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    cols = [[r[k] for r in per_seed.values() if k in r] for k in keys]
    lines.append("| mean | " + " | ".join(f"{np.mean(c):.3f}" if c else "–" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the study's output folder")
    ap.add_argument("--arm", required=True)
    ap.add_argument("--loss", default="intra_inter")
    ap.add_argument("--steps", required=True, help="comma-separated checkpoint steps")
    ap.add_argument("--seeds", default="", help="comma-separated (default: every seed folder)")
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    arm_dir = args.out / args.arm
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds else
             sorted(int(p.name[4:]) for p in arm_dir.glob("seed*") if p.is_dir()))  # fmt: skip
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = curve_seed(arm_dir / f"seed{seed}", seed, args.loss, steps)
        print(f"seed {seed}: {per_seed[seed]}", file=sys.stderr, flush=True)
    print(table(per_seed, steps))
    if args.json:
        args.json.write_text(json.dumps(per_seed, indent=1))


if __name__ == "__main__":
    main()
