"""Training throughput and where a step's time goes: data loading, network, loss, optimiser.

Runs the real trainer (:func:`lsr.train.train`) on generated in-memory slides twice in one
process — with ``num_workers=0`` (the baseline: data loading on the critical path) and with
``--workers`` (default 2) loader processes — and reports for each run the blocks/s and the
share of the mean step time spent waiting for data, in the network (forward + backward),
in the loss (forward + backward, measured separately by the trainer's split backward) and
in the optimiser. Targets (issue 4): loss < 2 % of a step; data loading hidden behind
compute with ≥ 2 workers (its share falls close to 0 relative to the baseline run).

Run: ``python benchmarks/bench_train.py`` (CPU: small blocks and network by default) or
``python benchmarks/bench_train.py --device cuda --block-px 240 --width 32`` (paper-sized
blocks; the loss's default batch, 6 groups × 5 for the inter-type losses). Writes
``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lsr.atomic import atomic_write_text
from lsr.dataset import BlockSource
from lsr.grid import BlockGrid
from lsr.slide import ArraySlide
from lsr.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "train.json"


def make_sources(n_slides: int, rows: int, cols: int, block_px: int, seed: int = 0) -> list:
    """Noisy pink/purple slides with labels z in {0, 4, 9} (enough blocks per bin)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_slides):
        img = rng.integers(60, 255, (rows * block_px, cols * block_px, 3), dtype=np.uint8)
        z = rng.choice([0, 4, 9], size=(rows, cols)).astype(np.int16)
        out.append(BlockSource(ArraySlide(img, 4.17), BlockGrid.from_z(z, block_px), f"b{i}"))
    return out


def _batch(loss: str) -> str:
    """The loss's default batch as printed: '30' (intra) or '6×5' (groups × blocks)."""
    cfg = TrainConfig(loss=loss).resolved()
    return str(cfg.batch_size) if loss == "intra" else f"{cfg.groups_per_batch}×{cfg.group_size}"


def run(args: argparse.Namespace, workers: int, sources: list, folder: Path) -> dict:
    cfg = TrainConfig(
        loss=args.loss,
        block_px=args.block_px,
        width=args.width,
        depth=args.depth,
        steps=args.steps,
        checkpoint_every=10**9,
        device=args.device,
        amp=args.amp,
        num_workers=workers,
        out_dir=str(folder / f"workers{workers}"),
        augment=True,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, sources=sources)
    wall = time.perf_counter() - t0
    t = result.timings
    step = sum(t.values())
    shares = {
        "data": t["data"] / step,
        "network": (t["forward"] + t["backward"]) / step,
        "loss": t["loss"] / step,
        "optimizer": t["optimizer"] / step,
    }
    return {
        "num_workers": workers,
        "blocks_per_s": result.blocks_per_s,
        "step_s": step,
        "mean_s": t,
        "share": shares,
        "wall_s": wall,
        "device": result.device,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--loss", default="intra_inter")
    p.add_argument("--block-px", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", action="store_true")
    args = p.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.block_px = args.block_px or (240 if cuda else 64)
    args.width = args.width or (32 if cuda else 8)
    args.steps = args.steps or (40 if cuda else 8)
    sources = make_sources(2, 8, 8, args.block_px)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            run(args, w, sources, Path(tmp) / f"run{i}") for i, w in enumerate((0, args.workers))
        ]
    base, par = runs
    hidden = 1.0 - par["mean_s"]["data"] / max(base["mean_s"]["data"], 1e-12)
    print(
        f"training throughput: loss={args.loss}, blocks {args.block_px} px, "
        f"U-Net width {args.width} depth {args.depth}, batch {_batch(args.loss)}, "
        f"{args.steps} steps, {base['device']}"
    )
    print(f"{'workers':>8} {'blocks/s':>9} {'step s':>8} {'data':>7} {'network':>8} "
          f"{'loss':>7} {'optim':>7}")  # fmt: skip
    for r in runs:
        s = r["share"]
        print(
            f"{r['num_workers']:>8} {r['blocks_per_s']:>9.1f} {r['step_s']:>8.3f} "
            f"{s['data']:>7.1%} {s['network']:>8.1%} {s['loss']:>7.1%} {s['optimizer']:>7.1%}"
        )
    print(
        f"loss share {par['share']['loss']:.2%} (target < 2 %); data wait with "
        f"{args.workers} workers is {1 - hidden:.1%} of the baseline's "
        f"(speed-up ×{par['blocks_per_s'] / max(base['blocks_per_s'], 1e-12):.2f})"
    )
    payload = {
        "benchmark": "train",
        "settings": {k: v for k, v in vars(args).items()},
        "runs": runs,
        "loss_share": par["share"]["loss"],
        "data_wait_vs_baseline": 1 - hidden,
        "speedup_workers": par["blocks_per_s"] / max(base["blocks_per_s"], 1e-12),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    atomic_write_text(RESULTS, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
