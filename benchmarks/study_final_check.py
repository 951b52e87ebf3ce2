"""Apply the trainer's final-network check to finished study runs, beside the held-out audit.

The trainer's collapse and degenerate-mask rules average the last 50 steps; since this
check was added it also applies both rules to the final weights on 64 training blocks
(``lsr.train.check_final_network``). This script re-applies that check to runs trained
before it existed and sets it against the held-out audit (``study.py audit``: the same mask
rule on the held-out patches, which a user does not have), so its misses and false alarms
can be counted::

    python benchmarks/study_final_check.py --out /tmp/study --arms final_ref,ii_init_intra

Prints one markdown row per run and a summary; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study


def final_check(run: Path) -> tuple[str, dict]:
    """``check_final_network`` on the run's last checkpoint and its own training blocks."""
    from lsr import model as lsr_model
    from lsr.checkpoint import read_metadata
    from lsr.counttable import CountTable
    from lsr.train import TrainConfig, build_dataset, check_final_network

    _, meta = read_metadata(run)
    cfg = TrainConfig.from_dict(meta["config"]).resolved()
    cfg.cache_mb = 0  # 64 blocks: read them, do not cache whole slides
    table = CountTable.from_dict(meta["table"])
    net, _ = lsr_model.load(run)
    dataset = build_dataset(cfg, table)
    return check_final_network(net, dataset, cfg, table.class_names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="/tmp/study")
    p.add_argument("--arms", default="", help="comma-separated arm names (default: all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    counts = {"runs": 0, "held-out bad": 0, "trainer flagged": 0, "final flagged": 0,
              "held-out bad, trainer missed": 0, "of those, final caught": 0,
              "final flagged, held-out fine": 0}  # fmt: skip
    print("| arm | seed | loss | masked IoU | trainer | final check | held-out cancer mean / "
          "share ≥ 0.5 | held-out rule |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for arm, seed, rows, patches, runs in study.finished_runs(Path(args.out), args.arms):
        for run in runs:
            status = json.loads((run / "run.json").read_text()).get("status")
            problem, stats = final_check(run)
            audit = study.audit_run(run, patches)
            bad = audit["degenerate"] or audit["collapsed"]
            counts["runs"] += 1
            counts["held-out bad"] += bad
            counts["trainer flagged"] += status == "failed"
            counts["final flagged"] += bool(problem)
            if bad and status != "failed":
                counts["held-out bad, trainer missed"] += 1
                counts["of those, final caught"] += bool(problem)
            counts["final flagged, held-out fine"] += bool(problem) and not bad
            final = problem.split(":")[0] if problem else "–"
            if stats:
                final += (
                    f" (cancer {100 * stats['soft'][0]:.0f} % / {100 * stats['hard'][0]:.0f} %)"
                )
            print(
                f"| {arm} | {seed} | {run.name} | {rows[run.name]['masked_iou']:.3f} | "
                f"{status} | {final} | {100 * audit['soft']:.1f} % / "
                f"{100 * audit['hard']:.1f} % | {'bad' if bad else 'fine'} |",
                flush=True,
            )
    print()
    for key, value in counts.items():
        print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
