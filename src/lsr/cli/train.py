"""``lsr train``: train a network from a config file and/or flags, or resume a run.

Examples::

    lsr train run.toml
    lsr train --slide a.tif --grid a.csv --loss intra --steps 5000 --out-dir runs/intra
    lsr train --resume runs/intra --steps 8000          # continue, exactly, to step 8000
    torchrun --nproc-per-node 4 -m lsr train run.toml    # DistributedDataParallel

Flags override the file (or, with --resume and no file, the run's own settings and folder);
unset flags keep the file's value or the default of the chosen loss (lsr.train.DEFAULTS).
The first Ctrl-C stops after the current step and writes a checkpoint (exit status 130);
before the first step (while the slides are read) it stops once they are read, writing nothing.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lsr.cli.console import EXIT_INTERRUPTED, QuietOnBrokenPipe, interrupted
from lsr.errors import LsrInputError


class RichProgress:
    """Train callback drawing a rich progress bar (loss, blocks/s, ETA)."""

    def __init__(self, console: Console | None = None):
        self.console = console or QuietOnBrokenPipe(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.total_steps = 0

    def on_start(self, event: Any) -> None:
        cfg = event.config
        self.total_steps = cfg.steps
        self.console.print(
            f"[bold]lsr train[/bold] loss={cfg.loss} distance={cfg.distance} "
            f"lr={cfg.lr:g} batch={_batch_text(cfg)} on {event.device}"
            + (f" × {event.world_size} processes" if event.world_size > 1 else "")
        )
        if getattr(event, "table", ""):
            self.console.print(f"count table: {event.table}", markup=False, soft_wrap=True)
        if cfg.init_from and not event.start_step and not cfg.resume:
            self.console.print(
                f"starting from the weights of: {cfg.init_from}", markup=False, soft_wrap=True
            )
        self.console.print(
            f"{event.n_blocks} labelled blocks; per bin: "
            + ", ".join(f"z={z}: {n}" for z, n in sorted(event.bin_counts.items()))
        )
        from lsr.train import blocks_seen

        if seen := blocks_seen(cfg.steps, (cfg.batch_size or 0) * event.world_size, event.n_blocks):
            self.console.print(seen)  # on large data the default steps see few blocks
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} blocks/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "training", total=cfg.steps, completed=event.start_step, loss="-", speed="-"
        )

    def on_step(self, event: Any) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=event.step,
                loss=f"{event.loss:.4g}",
                speed=f"{event.blocks_per_s:.1f}",
            )

    def on_checkpoint(self, path: Path, step: int) -> None:
        if self.progress is not None:
            self.progress.console.print(f"checkpoint step {step}: {path}")

    def on_end(self, result: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        colour = {"completed": "green", "cancelled": "yellow"}.get(result.status, "red")
        self.console.print(
            f"[{colour}]{result.status}[/{colour}] at step {result.step}"
            + (f": {result.failure}" if result.failure else "")
        )
        if result.checkpoint:
            self.console.print(f"latest checkpoint: {result.checkpoint}")
        if result.status == "cancelled" and result.checkpoint:
            self.console.print(
                f"resume with: lsr train --resume {result.out_dir}"
                + (f" --steps {self.total_steps}" if self.total_steps else ""),  # 0: not begun
                markup=False,
                soft_wrap=True,  # one line, so the command can be copied
            )


def _sidecar_scale(
    grids: list[Path], block_px: int | None, working_mpp: float | None
) -> tuple[int | None, float | None]:
    """``--block-px`` and ``--working-mpp`` as given; one not given comes from the grids'
    sidecars (``<grid>.json``, written by the Annotator and ``lsr synth``), saying so. A given
    value the sidecars contradict is left for the dataset to refuse, naming the sidecar."""
    from lsr.grid import sidecar_geometry

    geo = sidecar_geometry(grids)
    if not geo:
        return block_px, working_mpp
    taken = []
    if block_px is None:
        block_px = int(geo["block_px"])
        taken.append(f"--block-px {block_px}")
    if working_mpp is None:
        working_mpp = float(geo["working_mpp"])
        taken.append(f"--working-mpp {working_mpp:g}")
    if taken:
        QuietOnBrokenPipe(stderr=True).print(
            f"{' '.join(taken)} (from {geo['from']})",
            markup=False,
            soft_wrap=True,
        )
    return block_px, working_mpp


def _unused_batch_flags(loss: str, flags: dict[str, Any]) -> str:
    """A note naming the batch flags that ``loss`` does not use ('' when none): the intra
    loss batches blocks (``--batch-size``), the others groups of blocks, and a flag of the
    other kind was dropped without a word (``--loss intra --group-size 3`` ran 30 blocks)."""
    grouped = ("--groups-per-batch", "--group-size", "--group-policy")
    unused = [f for f, v in flags.items() if v is not None and (f in grouped) == (loss == "intra")]
    if not unused:
        return ""
    takes = "--batch-size" if loss == "intra" else "--groups-per-batch × --group-size"
    return f"{', '.join(unused)} ignored: the {loss} loss's batch is {takes}"


def _latest(out_dir: Path) -> dict | None:
    """``OUT/latest.json`` (the newest checkpoint's step and folder), or None."""
    from lsr.checkpoint import LATEST

    try:
        data = json.loads((out_dir / LATEST).read_text(encoding="utf-8"))
        return {"checkpoint": str(data["checkpoint"]), "step": int(data["step"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kept_after_abort(out_dir: Path, replaced: dict | None) -> str:
    """What a run stopped at once (a second Ctrl-C) keeps, and how to go on. ``replaced``:
    the newest checkpoint of the run ``--overwrite`` was replacing; when it is the newest
    again, this run kept nothing and that run was put back."""
    latest = _latest(out_dir)
    if latest is not None and latest == replaced:
        return (
            f"stopped at once; this run kept no checkpoint, and the run it was to replace "
            f"(--overwrite) is back in {out_dir} (step {latest['step']:,})"
        )
    if latest is None:
        return f"stopped at once; {out_dir} has no checkpoint to resume from"
    return (
        f"stopped at once; its last checkpoint (step {latest['step']:,}) is kept: "
        f"lsr train --resume {out_dir} continues from there"
    )


def _batch_text(cfg: Any) -> str:
    if cfg.loss == "intra":
        return str(cfg.batch_size)
    return f"{cfg.groups_per_batch}×{cfg.group_size}"


#: TrainConfig's defaults that ``--help`` shows (its options default to None, so that a config
#: file's or a resumed run's values are kept); tests/test_train.py checks they agree.
HELP_DEFAULTS: dict[str, Any] = {
    "table": "paper", "loss": "intra_inter", "distance": "gaussian-nll", "rho_floor": 1e-3,
    "block_px": 240, "working_mpp": 4.17, "context_px": 0, "min_tissue": 0.0, "augment": True,
    "cache_mb": 1024.0, "group_policy": "uniform", "rmsprop_alpha": 0.9, "steps": 300,
    "warmup_steps": 0, "lr_schedule": "constant", "width": 8, "depth": 3, "norm": "layer",
    "seed": 0, "device": "auto", "amp": False, "num_workers": 0, "checkpoint_every": 100,
    "out_dir": "lsr-run",
}  # fmt: skip


def _shown(name: str) -> str:
    """The ``[default: ...]`` text of option ``name``."""
    value = HELP_DEFAULTS[name]
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{name.replace('_', '-')}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def train(
    config: Path | None = typer.Argument(None, help="A .toml or .json training config."),
    slide: list[str] = typer.Option(None, "--slide", help="Training slide (repeatable)."),
    grid: list[str] = typer.Option(None, "--grid", help="Its low-resolution grid (repeatable)."),
    mpp: list[float] = typer.Option(
        None,
        "--mpp",
        help="µm per level-0 pixel of slides whose file does not say (e.g. 0.25 at 40X): once "
        "for every --slide, or once per --slide.",
    ),
    table: str | None = typer.Option(
        None,
        help="Count table: 'paper' (the paper's Table 1) or an expert's .json/.csv.",
        show_default=_shown("table"),
    ),
    loss: str | None = typer.Option(
        None,
        help="intra, inter, intra_inter (paper) or intra_plus_inter (sum, not the paper's).",
        show_default=_shown("loss"),
    ),
    distance: str | None = typer.Option(
        None,
        help="gaussian-nll, lsr-interval, paper-printed or kl.",
        show_default=_shown("distance"),
    ),
    variance_norm: str | None = typer.Option(
        None, help="n2 or n (intra, intra_plus_inter: n; others: n2)."
    ),
    rho_floor: float | None = typer.Option(
        None, help="Floor for the table's std (fraction).", show_default=_shown("rho_floor")
    ),
    block_px: int | None = typer.Option(
        None, help="Block side, working-resolution px.", show_default=_shown("block_px")
    ),
    working_mpp: float | None = typer.Option(
        None, help="µm per working-resolution pixel.", show_default=_shown("working_mpp")
    ),
    context_px: int | None = typer.Option(
        None, help="Margin seen around each block (px).", show_default=_shown("context_px")
    ),
    min_tissue: float | None = typer.Option(
        None, help="Skip blocks with less tissue (fraction).", show_default=_shown("min_tissue")
    ),
    augment: bool | None = typer.Option(
        None,
        "--augment/--no-augment",
        help="Random flips, 90° rotations and mild stain, brightness and gamma jitter.",
        show_default=_shown("augment"),
    ),
    cache_mb: float | None = typer.Option(
        None,
        help="MiB per process of slides kept in memory at working resolution (0: off).",
        show_default=_shown("cache_mb"),
    ),
    batch_size: int | None = typer.Option(None, help="Intra loss: blocks per batch (paper 30)."),
    groups_per_batch: int | None = typer.Option(None, help="Inter: groups per batch (6; paper 2)."),
    group_size: int | None = typer.Option(None, help="Inter: blocks per group (5; paper 15)."),
    group_policy: str | None = typer.Option(
        None, help="uniform or proportional.", show_default=_shown("group_policy")
    ),
    lr: float | None = typer.Option(None, help="Learning rate (1e-3; paper intra 1e-5)."),
    rmsprop_alpha: float | None = typer.Option(
        None, help="RMSprop smoothing (the paper's).", show_default=_shown("rmsprop_alpha")
    ),
    steps: int | None = typer.Option(
        None, help="Total optimisation steps.", show_default=_shown("steps")
    ),
    warmup_steps: int | None = typer.Option(
        None,
        help="Steps of linear learning-rate warm-up from 0 (0: none).",
        show_default=_shown("warmup_steps"),
    ),
    lr_schedule: str | None = typer.Option(
        None, help="constant or cosine.", show_default=_shown("lr_schedule")
    ),
    grad_clip: float | None = typer.Option(None, help="Max gradient norm (unset: no clipping)."),
    width: int | None = typer.Option(
        None, help="U-Net channels at full resolution.", show_default=_shown("width")
    ),
    depth: int | None = typer.Option(
        None, help="U-Net down-samplings.", show_default=_shown("depth")
    ),
    norm: str | None = typer.Option(
        None, help="layer, group, batch or none.", show_default=_shown("norm")
    ),
    seed: int | None = typer.Option(
        None,
        help="Seed of the initial weights, the batches and the augmentation.",
        show_default=_shown("seed"),
    ),
    device: str | None = typer.Option(
        None, help="auto, cpu, cuda or mps.", show_default=_shown("device")
    ),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="Mixed precision (CUDA).", show_default=_shown("amp")
    ),
    num_workers: int | None = typer.Option(
        None, help="Data-loading processes.", show_default=_shown("num_workers")
    ),
    checkpoint_every: int | None = typer.Option(
        None, help="Steps between checkpoints.", show_default=_shown("checkpoint_every")
    ),
    out_dir: str | None = typer.Option(
        None,
        help="Output folder; it must not hold another run (see --overwrite).",
        show_default=_shown("out_dir"),
    ),
    resume: Path | None = typer.Option(
        None,
        help="Training folder or checkpoint to continue, with its own settings and folder.",
    ),
    init_from: Path | None = typer.Option(
        None,
        help="A trained model (training folder or checkpoint) whose weights a new run starts "
        "from instead of the table prior, e.g. intra+inter from an intra network; same width, "
        "depth and norm; the optimizer starts afresh at step 0.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the run already in --out-dir: it is moved aside and deleted at the new "
        "run's first periodic checkpoint (put back if the new run fails before one, kept "
        "aside if it is cancelled before one). Without it, "
        "lsr train refuses a folder that holds a run.",
    ),
    save_config: Path | None = typer.Option(
        None,
        help="Also write the resolved config here (.json, paths made absolute; an existing "
        "file there must be a saved config).",
    ),
) -> None:
    """Train a network (per-loss defaults: lsr.train.DEFAULTS, the paper's except intra lr 1e-3 and
    1/n block variance, inter-type 6 groups x 5 blocks; all overridable). Defaults shown apply
    where neither the config file nor the resumed run sets the value."""
    from lsr.checkpoint import read_metadata, training_folder
    from lsr.train import DataPair, TrainConfig, check_resumable
    from lsr.train import train as run_training

    if resume is not None and overwrite:
        raise LsrInputError(
            "--resume continues a run and --overwrite replaces one: give only one of them"
        )
    if resume is not None and init_from is not None:
        raise LsrInputError(
            "--resume continues a run with its own weights and --init-from starts a new one "
            "from a model's: give only one of them"
        )
    if config is not None:
        cfg = TrainConfig.from_file(config)
    elif resume is not None:  # the run's own settings and folder; given options override
        folder, meta = read_metadata(resume)
        cfg = TrainConfig.from_dict(meta.get("config", {}), path=resume)
        cfg.out_dir = str(training_folder(resume))
        cfg.overwrite = False  # continuing: never inherit a replace from the first run
    else:
        cfg = TrainConfig()
    if slide or grid:
        if len(slide or []) != len(grid or []):
            raise LsrInputError("give one --grid per --slide")
        mpps = list(mpp or [])
        if len(mpps) not in (0, 1, len(slide)):
            raise LsrInputError(
                f"give --mpp once for every slide or once per --slide ({len(slide)}), "
                f"not {len(mpps)} times"
            )
        from lsr.slide import check_mpp

        mpps = [check_mpp(m, name="--mpp") for m in mpps]
        per_slide = mpps * len(slide) if len(mpps) == 1 else mpps or [None] * len(slide)
        cfg.data = [DataPair(s, g, m) for s, g, m in zip(slide, grid, per_slide, strict=True)]
    elif mpp:
        raise LsrInputError("--mpp goes with --slide (in a config: mpp in the [[data]] entry)")
    if resume is None:  # a resumed run keeps its own geometry

        def given(flag: Any, name: str) -> Any:  # a flag, else the config file's own value
            return flag if flag is not None or not cfg.sets(name) else getattr(cfg, name)

        block_px, working_mpp = _sidecar_scale(
            [Path(p.grid) for p in cfg.data],
            given(block_px, "block_px"),
            given(working_mpp, "working_mpp"),
        )
    overrides = {
        "table": table, "loss": loss, "distance": distance, "variance_norm": variance_norm,
        "rho_floor": rho_floor, "block_px": block_px, "working_mpp": working_mpp,
        "context_px": context_px, "min_tissue": min_tissue, "augment": augment,
        "cache_mb": cache_mb,
        "batch_size": batch_size, "groups_per_batch": groups_per_batch,
        "group_size": group_size, "group_policy": group_policy, "lr": lr,
        "rmsprop_alpha": rmsprop_alpha, "steps": steps, "warmup_steps": warmup_steps,
        "lr_schedule": lr_schedule, "grad_clip": grad_clip, "width": width, "depth": depth,
        "norm": norm, "seed": seed, "device": device, "amp": amp, "num_workers": num_workers,
        "checkpoint_every": checkpoint_every, "out_dir": out_dir,
        "init_from": None if init_from is None else str(init_from),
    }  # fmt: skip
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    flags = {"--batch-size": batch_size, "--groups-per-batch": groups_per_batch,
             "--group-size": group_size, "--group-policy": group_policy}  # fmt: skip
    if note := _unused_batch_flags(cfg.loss, flags):
        QuietOnBrokenPipe(stderr=True).print(f"[yellow]{note}[/yellow]")
    if cfg.loss == "inter" and variance_norm is not None:
        QuietOnBrokenPipe(stderr=True).print(
            "[yellow]--variance-norm ignored: the inter loss compares the spread of a group's "
            "block means, not the variance within a block[/yellow]"
        )
    if resume is not None:
        cfg.resume = str(resume)
        if config is None:  # before resolving: the run's resolved batch is for its own loss
            cfg.check_types()
            check_resumable(cfg, meta, folder, steps_left=True)
    if overwrite:
        cfg.overwrite = True
    if save_config is not None:
        cfg.resolved().save(save_config)

    cancel = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    shown = RichProgress()

    def on_interrupt(signum: int, frame: Any) -> None:
        cancel.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C aborts at once
        # said at once: while the slides are read, the first step can be many seconds away
        how = (
            "after the current step, with a checkpoint"
            if shown.total_steps
            else "once the slides are read, before the first step (nothing is written)"
        )
        shown.console.print(f"[yellow]Ctrl-C: stopping {how} (Ctrl-C again stops at once)[/yellow]")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)
    out_dir = Path(cfg.out_dir)
    replaced = _latest(out_dir) if cfg.overwrite else None
    try:
        result = run_training(cfg, callbacks=[shown], cancel=cancel)
    except KeyboardInterrupt:  # the second Ctrl-C: stopped at once, no checkpoint written now
        raise interrupted(_kept_after_abort(out_dir, replaced)) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    if result.status == "failed":
        raise typer.Exit(1)
    if result.status == "cancelled":
        raise typer.Exit(EXIT_INTERRUPTED)  # scripts must not take a stopped run for success
