"""Cost of the LSR losses relative to one 3×3 convolution on the same tensor.

A loss must be cheap next to the network: this times forward+backward of each loss × distance
on a paper-sized batch (30 blocks, 2 classes, 240×240 working-resolution pixels, 2 groups of
15) and of a 3×3 conv (2 → 2 channels) forward+backward on the same tensor, measured in the
same run, and prints the ratio loss / conv. Run: ``python benchmarks/bench_losses.py
[--device cuda] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from lsr.losses import (
    DISTANCES,
    inter_instance_loss,
    intra_instance_loss,
    intra_inter_instance_loss,
    intra_plus_inter_loss,
)


def _timed(fn: Callable[[], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``fn().backward()`` (gradient w.r.t. ``x`` cleared each time)."""

    def step() -> None:
        x.grad = None
        fn().backward()
        if x.is_cuda:
            torch.cuda.synchronize()

    step()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=240, help="block side in pixels")
    args = parser.parse_args()

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    b, n_cls, size = 30, 2, args.size
    logits = torch.randn(b, n_cls, size, size, generator=gen).to(device).requires_grad_()
    group = torch.arange(b, device=device) // 15  # 2 groups × 15 blocks, as in the paper
    eta = torch.tensor([0.05, 0.95], device=device).expand(b, n_cls)
    rho = torch.tensor([0.008, 0.008], device=device).expand(b, n_cls)
    conv = torch.nn.Conv2d(n_cls, n_cls, 3, padding=1).to(device)

    def conv_step() -> torch.Tensor:
        return conv(logits).sum()

    conv_s = _timed(conv_step, logits, args.repeats)
    print(f"device={device} batch={tuple(logits.shape)} repeats={args.repeats}")
    print(f"3x3 conv fwd+bwd (baseline): {conv_s * 1e3:8.2f} ms")
    print(f"{'loss':<12} {'distance':<14} {'ms':>8} {'ratio vs conv':>14}")

    losses: dict[str, Callable[[torch.Tensor, str], torch.Tensor]] = {
        "intra": lambda p, d: intra_instance_loss(p, eta, rho, distance=d),
        "inter": lambda p, d: inter_instance_loss(p, eta, rho, group, distance=d),
        "intra+inter": lambda p, d: intra_inter_instance_loss(p, eta, rho, group, distance=d),
        "sum": lambda p, d: intra_plus_inter_loss(p, eta, rho, group, distance=d),
    }
    for name, loss in losses.items():
        for dist in DISTANCES:
            if name in ("intra", "sum") and dist == "kl":
                continue  # warns by design; same cost as the others

            def loss_step(loss=loss, dist=dist) -> torch.Tensor:
                return loss(torch.softmax(logits, 1), dist)

            s = _timed(loss_step, logits, args.repeats)
            print(f"{name:<12} {dist:<14} {s * 1e3:8.2f} {s / conv_s:14.2f}")
    print("(loss timings include the softmax, which any training step pays anyway)")


if __name__ == "__main__":
    main()
