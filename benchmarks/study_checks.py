"""The numbers behind two label-only warnings, read from finished study runs (results.md).

Neither warning needs ground truth, so a user can have them on their own slides; this script
measures, over every finished (arm, seed) job under ``--out``, how they went with the score:

- **top bin below a lower bin** (:meth:`lsr.counttable.CountTable.top_bin_problem`): the
  expert tables (one per distinct table; arms share generated data) whose top bin's cancer
  mean is more than ``TOP_BIN_MAX_DROP`` below a lower bin's, and intra's masked IoU against
  the blocky model's in those runs, in runs with such a drop only in middle bins, and in
  the rest (lobular arms left out of the last two: there the table is flat anyway).
- **distance from the table** (:func:`lsr.metrics.calibration_error`): every network's
  block-weighted |predicted − η| on the held-out blocks, against its masked IoU (Spearman)
  and, past ``CALIBRATION_ERROR_LIMIT``, how many scored below the blocky model.

    python benchmarks/study_checks.py --out /tmp/study

Prints plain text; nothing is trained or written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from lsr.counttable import TOP_BIN_MAX_DROP, CountTable
from lsr.metrics import CALIBRATION_ERROR_LIMIT, calibration_error


def jobs(out: Path):
    """(arm, seed folder, results, expert table) of every finished job with its data."""
    for res in sorted(out.glob("*/seed*/results.json")):
        job = res.parent
        man = job / "data" / f"seed{job.name[4:]}" / "manifest.json"
        if not man.is_file():
            continue
        manifest = json.loads(man.read_text())
        table = CountTable.load(man.parent / manifest["tables"]["expert"])
        yield job.parent.name, job.name, json.loads(res.read_text()), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the study's output folder")
    args = parser.parse_args()

    tables: dict[bytes, tuple[CountTable, list[str]]] = {}
    gains: dict[str, dict[tuple, float]] = {"top": {}, "middle": {}, "none": {}}
    errors, ious, below = [], [], []
    for arm, seed, res, table in jobs(args.out):
        rows = res["rows"]
        cancer = table.eta[:, 0]
        drops = np.maximum.accumulate(cancer) - cancer
        tables.setdefault(np.round(table.eta, 6).tobytes(), (table, []))[1].append(f"{arm}/{seed}")
        if "intra" in rows and ("lobular" not in arm or table.top_bin_problem()):
            kind = (
                "top" if table.top_bin_problem() else
                "middle" if drops.max() > TOP_BIN_MAX_DROP else "none"
            )  # fmt: skip
            key = (np.round(table.eta, 6).tobytes(), round(rows["intra"]["masked_iou"], 6))
            gains[kind][key] = rows["intra"]["masked_iou"] - rows["low_res"]["masked_iou"]
        for loss, calib in (res.get("calibration") or {}).items():
            if loss == "ground_truth" or loss not in rows:
                continue
            err = calibration_error(calib, cancer)
            if err is not None:
                errors.append(err)
                ious.append(rows[loss]["masked_iou"])
                below.append(rows[loss]["masked_iou"] < rows["low_res"]["masked_iou"])

    flagged = [names for table, names in tables.values() if table.top_bin_problem()]
    print(f"distinct expert tables: {len(tables)}; top bin > {100 * TOP_BIN_MAX_DROP:.0f} "
          f"points below a lower bin: {len(flagged)} {flagged}")  # fmt: skip
    for kind, values in gains.items():
        v = np.array(list(values.values()))
        if v.size:
            print(f"  intra - low-res, {kind:6s} drop: n={v.size:3d} mean {v.mean():+.3f}, "
                  f"below zero {int((v < 0).sum())}")  # fmt: skip
    err, iou, low = np.array(errors), np.array(ious), np.array(below)
    rho = spearmanr(err, iou).statistic
    past = err > CALIBRATION_ERROR_LIMIT
    print(f"networks with a calibration: {err.size}; Spearman(distance, masked IoU) {rho:+.2f}; "
          f"> {100 * CALIBRATION_ERROR_LIMIT:.0f} points: {int(past.sum())}, below the blocky "
          f"model {int(low[past].sum())}; <= that: {int((~past).sum())}, below "
          f"{int(low[~past].sum())}")  # fmt: skip


if __name__ == "__main__":
    main()
