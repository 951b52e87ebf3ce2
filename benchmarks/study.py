"""The training study (issue 6): every arm of ``configs/study/arms.toml`` over several seeds.

An *arm* is a demo config (:class:`lsr.demo.DemoConfig`) plus overrides: which synthetic
config, which losses, which training settings. Each (arm, seed) job runs ``lsr.demo`` in its
own folder ``OUT/<arm>/seed<s>/`` and shares the generated data of its synthetic config and
seed (``OUT/data/<synthetic>/seed<s>/``, generated once, by the first job that needs it).
Jobs run in parallel worker processes (``--jobs``), each with ``--threads`` torch threads;
a finished job leaves ``results.json`` and is skipped next time, an interrupted one resumes
from its checkpoints.

    python benchmarks/study.py run --out /tmp/study --arms defaults,ductal --seeds 0-4 --jobs 2
    python benchmarks/study.py report --out /tmp/study > study.md

``report`` prints, per arm, mean ± std over seeds of masked IoU for every row, the paired
differences with their standard errors, and the failed/collapsed runs. ``audit`` re-checks
every finished run with the trainer's current failure rules (useful for runs trained before
a rule changed): collapse from the last checkpoint's monitor window, and a degenerate mask
from the held-out patches (per class: mean probability vs share of argmax pixels).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parents[1]
ARMS = ROOT / "configs" / "study" / "arms.toml"


def load_arms(path: Path = ARMS) -> dict[str, dict[str, Any]]:
    """Arm name → {"base": demo config name, "synthetic", "losses", "train", "per_loss", ...};
    every arm's ``train`` starts from the file's ``[pinned]`` settings."""
    data = tomllib.loads(path.read_text())
    pinned = data["pinned"]
    return {name: {**arm, "train": {**pinned, **arm.get("train", {})}}
            for name, arm in data["arm"].items()}  # fmt: skip


def load_pinned(path: Path = ARMS) -> dict[str, Any]:
    """The training settings every arm takes unless it overrides them (``[pinned]``)."""
    return tomllib.loads(path.read_text())["pinned"]


def demo_config(arm: dict[str, Any]) -> Any:
    """The :class:`lsr.demo.DemoConfig` of one arm: the base demo config plus the overrides."""
    from lsr.demo import DemoConfig

    cfg = DemoConfig.load(ROOT / "configs" / "demo" / f"{arm.get('base', 'default')}.toml")
    for key in ("synthetic", "n_train_slides", "n_test_patches", "slide_px"):
        if key in arm:
            setattr(cfg, key, arm[key])
    if "losses" in arm:
        cfg.losses = tuple(arm["losses"])
    cfg.train = {**cfg.train, **arm.get("train", {})}
    per_loss = {k: dict(v) for k, v in cfg.per_loss.items()}
    for loss, over in arm.get("per_loss", {}).items():
        per_loss[loss] = {**per_loss.get(loss, {}), **over}
    cfg.per_loss = per_loss
    return cfg


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        seeds += list(range(int(a), int(b or a) + 1))
    return seeds


def _job_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def _link_data(out: Path, synthetic: str, seed: int, job: Path) -> None:
    """Point the job's data folder at the shared data of its synthetic config and seed."""
    shared = out / "data" / Path(synthetic).stem / f"seed{seed}"
    shared.mkdir(parents=True, exist_ok=True)
    link = job / "data" / f"seed{seed}"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)


def _overrides(cfg: Any, loss: str) -> dict[str, Any]:
    return {"synthetic": cfg.synthetic, **cfg.train, **cfg.per_loss.get(loss, {})}


def _reuse_runs(out: Path, arm: dict[str, Any], cfg: Any, seed: int, job: Path) -> None:
    """Copy finished runs named by the arm's ``reuse = {loss = "other arm" or [arms]}`` into
    the job, when another arm trains that loss with exactly the same settings (else train)."""
    import shutil

    arms = load_arms()
    for loss, others in arm.get("reuse", {}).items():
        for other in [others] if isinstance(others, str) else others:
            src = _job_dir(out, other, seed) / "runs" / f"seed{seed}" / loss
            dst = job / "runs" / f"seed{seed}" / loss
            if dst.exists() or not (src / "run.json").exists():
                continue
            done = json.loads((src / "run.json").read_text())
            # a run flagged failed at its end (collapse, degenerate mask) is a result too
            finished = done.get("step") == _overrides(cfg, loss).get("steps")
            if done.get("status") not in ("completed", "failed") or not finished:
                continue
            if _overrides(demo_config(arms[other]), loss) != _overrides(cfg, loss):
                raise ValueError(f"reuse of {other}'s {loss}: its settings differ from this arm's")
            shutil.copytree(src, dst)


def _extend_runs(out: Path, arm: dict[str, Any], cfg: Any, seed: int, job: Path) -> None:
    """Copy finished shorter runs named by the arm's ``extend = {loss = "other arm"}`` into the
    job, to be resumed to this arm's steps: the same run as one trained that long from step 0
    (a longer run starts with the shorter run's batches and resume is exact), when the two arms
    differ in ``steps`` only and the learning rate does not depend on the run's length."""
    import shutil

    for loss, other in arm.get("extend", {}).items():
        mine, theirs = _overrides(cfg, loss), _overrides(demo_config(load_arms()[other]), loss)
        if {**theirs, "steps": mine["steps"]} != mine or theirs["steps"] >= mine["steps"]:
            raise ValueError(f"extend of {other}'s {loss}: settings differ beyond fewer steps")
        if mine.get("lr_schedule") != "constant":
            raise ValueError(f"extend of {other}'s {loss}: the schedule depends on the length")
        src = _job_dir(out, other, seed) / "runs" / f"seed{seed}" / loss
        dst = job / "runs" / f"seed{seed}" / loss
        if dst.exists() or not (src / "run.json").exists():
            continue
        done = json.loads((src / "run.json").read_text())
        if done.get("status") != "completed" or done.get("step") != theirs["steps"]:
            continue
        shutil.copytree(src, dst)
        (dst / "run.json").unlink()  # resumed from its latest checkpoint by lsr.demo


def run_job(out: str, arm_name: str, seed: int, threads: int) -> tuple[str, int, str]:
    """One (arm, seed): ``lsr.demo.run_demo`` in its folder; logs to ``job.log``."""
    import torch

    from lsr.demo import claim_out_dir, make_data, run_demo

    torch.set_num_threads(threads)
    arm = load_arms()[arm_name]
    cfg = demo_config(arm)
    job = _job_dir(Path(out), arm_name, seed)
    claim_out_dir(job, also=("arm.json", "job.log"))
    _link_data(Path(out), cfg.synthetic, seed, job)
    stamp = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    (job / "arm.json").write_text(stamp + "\n")
    with open(job / "job.log", "a", buffering=1) as log:

        def say(msg: str) -> None:
            log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

        try:
            # one job generates a (synthetic config, seed) data set; the others wait for it
            lock = Path(out) / "data" / f"{Path(cfg.synthetic).stem}-seed{seed}.lock"
            with open(lock, "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                make_data(cfg, seed, job, say)
            _reuse_runs(Path(out), arm, cfg, seed, job)
            _extend_runs(Path(out), arm, cfg, seed, job)
            run_demo(job, config=cfg, seeds=[seed], say=say)
        except Exception as err:  # recorded, the other jobs go on
            say(f"FAILED: {type(err).__name__}: {err}")
            return arm_name, seed, f"failed: {err}"
    return arm_name, seed, "done"


def cmd_run(args: argparse.Namespace) -> None:
    arms = load_arms()
    seeds = _parse_seeds(args.seeds)
    out = Path(args.out)
    # In the order given (the first listed finish first): ``arm`` (--seeds narrowed by the
    # arm's own ``seeds``) or ``arm:SEEDS`` (e.g. ``ductal:3-4``).
    todo: list[tuple[str, int]] = []
    for spec in args.arms.split(","):
        name, _, own = spec.partition(":")
        if name not in arms:
            sys.exit(f"unknown arm: {name} (see {ARMS})")
        wanted = _parse_seeds(own) if own else seeds
        todo += [(name, s) for s in wanted if s in arms[name].get("seeds", wanted)
                 and not (_job_dir(out, name, s) / "results.json").exists()
                 and (name, s) not in todo]  # fmt: skip
    print(f"{len(todo)} job(s) to run, {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_job, str(out), n, s, args.threads) for n, s in todo]
        for fut in as_completed(futures):
            arm, seed, status = fut.result()
            print(f"{time.strftime('%H:%M:%S')} {arm} seed {seed}: {status}", flush=True)


# ---------------------------------------------------------------------------- report
def collect(out: Path, arm: str) -> dict[int, dict]:
    """Seed → {"rows": {row: scores}, "runs": {loss: run.json summary}, "calibration",
    "table": the seed's expert CountTable} of one arm."""
    from lsr.counttable import CountTable

    per_seed = {}
    for job in sorted((out / arm).glob("seed*")):
        res = job / "results.json"
        if not res.exists():
            continue
        seed = int(job.name[4:])
        blob = json.loads(res.read_text())
        rows = blob["per_seed"][str(seed)]
        runs = {}
        for run_json in (job / "runs" / f"seed{seed}").glob("*/run.json"):
            r = json.loads(run_json.read_text())
            runs[run_json.parent.name] = {"status": r["status"], "failure": r.get("failure", ""),
                                          "warnings": r.get("warnings", [])}  # fmt: skip
        table = CountTable.load(job / "data" / f"seed{seed}" / "table_expert.json")
        per_seed[seed] = {"rows": rows, "runs": runs, "calibration": blob["calibration"],
                          "table": table}  # fmt: skip
    return per_seed


def report(out: Path, names: list[str]) -> str:
    from lsr.demo import aggregate
    from lsr.geojson import DEFAULT_NAMES

    lines = []
    for arm in names:
        per_seed = collect(out, arm)
        if not per_seed:
            continue
        agg = aggregate(per_seed)
        seeds = sorted(per_seed)
        lines += [f"### {arm} ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
                  "| row | masked IoU | masked DICE | per seed (masked IoU) |",
                  "|---|---|---|---|"]  # fmt: skip
        for row, r in agg["rows"].items():
            per = " ".join(f"{v:.3f}" for v in r["masked_iou_per_seed"])
            lines.append(f"| {DEFAULT_NAMES[row]} | {r['masked_iou']:.3f} ± "
                         f"{r['masked_iou_std']:.3f} | {r['masked_dice']:.3f} ± "
                         f"{r['masked_dice_std']:.3f} | {per} |")  # fmt: skip
        if agg["paired_differences"]:
            lines += ["", "| paired difference | mean | SE | mean/SE |", "|---|---|---|---|"]
            for k, d in agg["paired_differences"].items():
                t = d["masked_iou_diff"] / d["paired_se"] if d["paired_se"] else float("nan")
                se = "–" if d["paired_se"] is None else f"{d['paired_se']:.3f}"  # one seed
                lines.append(f"| {k} | {d['masked_iou_diff']:+.3f} | {se} | {t:+.1f} |")
        bad = [f"seed {s} {loss}: {r['status']} {r['failure']}".strip()
               for s in seeds for loss, r in per_seed[s]["runs"].items()
               if r["status"] != "completed" or r["failure"]]  # fmt: skip
        lines += ["", "Failed or collapsed runs: " + ("; ".join(bad) if bad else "none"), ""]
        lines += calibration_lines(per_seed)
    return "\n".join(lines)


def _pool(cells: list[dict]) -> tuple[int, float | None, float | None]:
    """Pool (n, mean, std) cells (population std) into one."""
    cells = [c for c in cells if c["n"]]
    n = sum(c["n"] for c in cells)
    if not n:
        return 0, None, None
    mean = sum(c["n"] * c["mean"] for c in cells) / n
    second = sum(c["n"] * (c["std"] ** 2 + c["mean"] ** 2) for c in cells) / n
    return n, mean, max(second - mean**2, 0.0) ** 0.5


def calibration_lines(per_seed: dict[int, dict]) -> list[str]:
    """Per bin: predicted cancer % of held-out blocks (pooled over seeds) beside the expert
    tables' η ± ρ (averaged over seeds) and the truth; then each run's overall spread of
    block predictions (a constant output has spread 0)."""
    from lsr.metrics import TABLE2_ROWS as ROWS

    seeds = sorted(per_seed)
    names = [k for k in ("ground_truth", *ROWS[1:])
             if all(k in per_seed[s]["calibration"] for s in seeds)]  # fmt: skip
    n_bins = len(per_seed[seeds[0]]["calibration"][names[0]])
    head = ["bin", "table η ± ρ (mean of seeds)", *names]
    lines = ["Calibration: predicted cancer % of held-out blocks per bin, pooled over seeds",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    labels = per_seed[seeds[0]]["table"].bin_labels()
    for b in range(n_bins):
        eta = np.mean([per_seed[s]["table"].eta[b, 0] for s in seeds])
        rho = np.mean([per_seed[s]["table"].rho[b, 0] for s in seeds])
        cells = [labels[b], f"{100 * eta:.1f} ± {100 * rho:.1f}"]
        for k in names:
            n, m, sd = _pool([per_seed[s]["calibration"][k][b] for s in seeds])
            cells.append("–" if m is None else f"{100 * m:.1f} ± {100 * sd:.1f} (n={n})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Spread (std, %) of the predicted cancer fraction over all held-out blocks, "
              "per seed: " + "; ".join(
                  f"{k} " + " ".join(f"{100 * _pool(per_seed[s]['calibration'][k])[2]:.1f}"
                                     for s in seeds)
                  for k in names), ""]  # fmt: skip
    return lines


def _arm_names(out: Path, arms: str) -> list[str]:
    """The comma-separated ``arms``, or every arm folder under ``out``."""
    if arms:
        return arms.split(",")
    return [p.name for p in sorted(out.iterdir()) if p.is_dir() and p.name != "data"]


def cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    names = _arm_names(out, args.arms)
    text = report(out, names)
    if args.json:
        blob = {a: aggregate_json(out, a) for a in names}
        Path(args.json).write_text(json.dumps(blob, indent=2) + "\n")
    print(text)


def aggregate_json(out: Path, arm: str) -> dict:
    from lsr.demo import aggregate

    per_seed = collect(out, arm)
    return {"seeds": sorted(per_seed), **aggregate(per_seed)} if per_seed else {}


def audit_run(run: Path, patches: list[dict]) -> dict[str, Any]:
    """One run's collapse spread (last window) and held-out soft/hard class shares."""
    from lsr import model as lsr_model
    from lsr.demo import predict_patch
    from lsr.train import CollapseMonitor, MaskMonitor, TrainConfig

    defaults = TrainConfig()
    latest = json.loads((run / "latest.json").read_text())["checkpoint"]
    state = json.loads((run / latest / "trainer.json").read_text())
    mon = CollapseMonitor(defaults.collapse_window, defaults.collapse_std)
    mon.load_state_dict(state.get("monitor", {}))
    net, _ = lsr_model.load(run)
    probs = [predict_patch(net, p["rgb"]) for p in patches]  # cancer probability (H, W)
    soft_c = float(np.mean([pm.mean() for pm in probs]))
    hard_c = float(np.mean([(pm >= 0.5).mean() for pm in probs]))
    mask = MaskMonitor(1, defaults.mask_ratio)
    mask.update([soft_c, 1 - soft_c], [hard_c, 1 - hard_c])
    return {"spread": mon.spread, "collapsed": mon.collapsed, "soft": soft_c, "hard": hard_c,
            "degenerate": mask.degenerate_class is not None}  # fmt: skip


def cmd_audit(args: argparse.Namespace) -> None:
    print("| arm | seed | loss | masked IoU | spread (last window) | held-out cancer: mean p / "
          "share ≥ 0.5 | flagged |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for arm, seed, rows, patches, runs in finished_runs(Path(args.out), args.arms):
        for run in runs:
            a = audit_run(run, patches)
            flags = [f for f, on in (("collapsed", a["collapsed"]),
                                     ("degenerate mask", a["degenerate"])) if on]  # fmt: skip
            print(
                f"| {arm} | {seed} | {run.name} | {rows[run.name]['masked_iou']:.3f} | "
                f"{a['spread']:.1e} | {100 * a['soft']:.1f} % / {100 * a['hard']:.1f} % | "
                f"{', '.join(flags) or '–'} |",
                flush=True,
            )


def finished_runs(out: Path, arms: str) -> Iterator[tuple[str, int, dict, list[dict], list[Path]]]:
    """``(arm, seed, per-row scores, held-out patches, run folders)`` of every finished job of
    ``arms`` (comma-separated; '' = all), seeds in numeric order."""
    from lsr.demo import _load_patch

    for arm in _arm_names(out, arms):
        for job in sorted((out / arm).glob("seed*"), key=lambda j: int(j.name[4:])):
            if not (job / "results.json").exists():
                continue
            seed = int(job.name[4:])
            rows = json.loads((job / "results.json").read_text())["per_seed"][str(seed)]
            data = job / "data" / f"seed{seed}"
            manifest = json.loads((data / "manifest.json").read_text())
            patches = [_load_patch(data / "test", e, int(manifest["block_px"]))
                       for e in manifest["test"]]  # fmt: skip
            yield arm, seed, rows, patches, sorted((job / "runs" / f"seed{seed}").iterdir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(required=True)
    r = sub.add_parser("run", help="run (or resume) arms over seeds")
    r.add_argument("--out", required=True)
    r.add_argument("--arms", required=True, help="comma-separated arms, each NAME or NAME:SEEDS")
    r.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2,5")
    r.add_argument("--jobs", type=int, default=2, help="parallel jobs")
    r.add_argument("--threads", type=int, default=1, help="torch threads per job")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("report", help="print the Markdown summary")
    q.add_argument("--out", required=True)
    q.add_argument("--arms", default="")
    q.add_argument("--json", default="", help="also write the aggregate as JSON here")
    q.set_defaults(func=cmd_report)
    a = sub.add_parser("audit", help="re-check finished runs with the current failure rules")
    a.add_argument("--out", required=True)
    a.add_argument("--arms", default="")
    a.set_defaults(func=cmd_audit)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(getattr(args, "threads", 1)))
    with contextlib.suppress(KeyboardInterrupt):
        args.func(args)


if __name__ == "__main__":
    main()
