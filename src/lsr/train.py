"""The training loop: blocks → U-Net → softmax → LSR loss → RMSprop, with checkpoints.

:class:`TrainConfig` holds every choice (per-loss :data:`DEFAULTS`, the paper's except intra's
learning rate and variance and the inter-type groups, are filled in by
:meth:`TrainConfig.resolved` for whatever the user left unset); :func:`train` runs it and
reports through callbacks (:class:`TrainCallback`: ``stop_requested``, ``on_start``,
``on_step``, ``on_checkpoint``, ``on_end``) that the CLI and the napari widget both implement.

One step, and why it is split this way::

    probs  = softmax(net(images))[central block]         # network forward
    g      = d loss(probs.detach()) / d probs              # loss forward + backward
    probs.backward(g)                                      # network backward

The split computes exactly the same gradient as ``loss.backward()`` but lets the step
time be attributed to the loss and to the network separately, at no cost.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
DistributedDataParallel (NCCL on CUDA, gloo on CPU); every rank computes the same global
batch plan and draws its own whole groups; only rank 0 writes files and calls callbacks.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import threading
import time
import typing
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import tomllib
import torch
from torch import Tensor
from torch import distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lsr import losses
from lsr.atomic import atomic_write_text, check_replaceable
from lsr.augment import NO_AUGMENT, AugmentConfig
from lsr.checkpoint import (
    CHECKPOINTS,
    LATEST,
    MODEL,
    by_step,
    git_revision,
    library_versions,
    read_checkpoint,
    read_model,
    rng_state,
    set_rng_state,
    step_name,
    training_folder,
    write_checkpoint,
)
from lsr.counttable import CountTable
from lsr.dataset import BlockDataset, BlockSource
from lsr.device import describe_device, mps_available, select_device
from lsr.errors import LsrInputError
from lsr.model import NORMS, UNet, normalise_rgb
from lsr.sampler import GroupBatchSampler, SamplerWarning, ShuffledBatchSampler

#: Most blocks one training step may take (batch_size, or groups × group size): far past
#: any GPU's memory; a larger number is a typo that would only fail as out of memory.
MAX_BLOCKS_PER_STEP = 65_536

LOSSES: tuple[str, ...] = ("intra", "inter", "intra_inter", "intra_plus_inter")
"""The paper's three losses, then ``intra_plus_inter``: intra's per-block term plus the
inter term (:func:`lsr.losses.intra_plus_inter_loss`; not in the paper, docs/results.md)."""
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
#: Paper section 4: RMSprop (α = 0.9); intra: batch 30, lr 1e-5; inter, intra+inter:
#: 2 groups × 15 blocks, lr 1e-3 (for reproduction; set ``lr=1e-5`` for the paper's intra).
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "intra": {"batch_size": 30, "lr": 1e-5},
    "inter": {"groups_per_batch": 2, "group_size": 15, "lr": 1e-3},
    "intra_inter": {"groups_per_batch": 2, "group_size": 15, "lr": 1e-3},
}
#: What :meth:`TrainConfig.resolved` fills in for settings left unset (None): the paper's
#: optimiser and batch of 30 blocks, with three changes backed by the training study
#: (docs/results.md). Intra's learning rate is 1e-3: with the paper's 1e-5 the network stays
#: at its prior in 300 steps (masked IoU 0.28 ± 0.24 over 3 seeds, below the low-resolution
#: model). The inter-type losses draw 6 groups × 5 blocks instead of 2 × 15: each step then
#: compares up to six bins instead of two (masked IoU +0.058, paired SE 0.026, 5 seeds; the
#: one 2 × 15 run that predicted cancer everywhere did not). Intra's block variance is the
#: paper's printed 1/n (mean p(1 − p)), not 1/n²: its log term then rewards confident pixels,
#: which removed intra's empty-mask failures (docs/method.md).
DEFAULTS: dict[str, dict[str, Any]] = {
    "intra": {"batch_size": 30, "lr": 1e-3, "variance_norm": "n"},
    "inter": {"groups_per_batch": 6, "group_size": 5, "lr": 1e-3, "variance_norm": "n2"},
    "intra_inter": {"groups_per_batch": 6, "group_size": 5, "lr": 1e-3, "variance_norm": "n2"},
    # Not the paper's: intra's settings for its per-block term, the inter-type batch shape.
    "intra_plus_inter": {"groups_per_batch": 6, "group_size": 5, "lr": 1e-3, "variance_norm": "n"},
}
RUN_JSON = "run.json"


class TrainWarning(UserWarning):
    """Something about a run the user should know (collapse, AMP unavailable, ...)."""


# ====================================================================== configuration
@dataclass
class DataPair:
    """One training slide and its low-resolution grid (paths); ``mpp`` (µm per level-0 pixel)
    for a slide whose file does not say its pixel size (else None: the file's)."""

    slide: str
    grid: str
    mpp: float | None = None


@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "the default for this loss"
    (:data:`DEFAULTS`: the paper's, except intra's learning rate and block variance and the
    inter-type losses' groups)."""

    # data
    data: list[DataPair] = field(default_factory=list)
    table: str = "paper"  # "paper" or a count-table .json/.csv
    block_px: int = 240  # working-resolution pixels per block side
    working_mpp: float = 4.17  # µm per working-resolution pixel
    context_px: int = 0  # margin the network sees around each block (loss on block only)
    min_tissue: float = 0.0  # skip blocks with a smaller non-white fraction (0: keep all)
    cache_mb: float = 1024.0  # per process: slides' labelled areas kept in memory (0: off)
    augment: bool = True
    # loss
    loss: str = "intra_inter"
    distance: str = "gaussian-nll"
    variance_norm: str | None = None  # "n2" or "n" (None: the loss's default, DEFAULTS)
    rho_floor: float = 1e-3
    # batches (None: the default for the loss, see DEFAULTS)
    batch_size: int | None = None  # intra
    groups_per_batch: int | None = None  # inter, intra_inter, intra_plus_inter
    group_size: int | None = None
    group_policy: str = "uniform"  # or "proportional"
    # optimiser
    lr: float | None = None
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0
    steps: int = 300
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    grad_clip: float | None = None  # max global gradient norm (None: no clipping)
    # network
    width: int = 8
    depth: int = 3
    norm: str = "layer"  # see lsr.model.NORMS
    prior: str | list[float] = "table"  # "table" (mean η), "none" or L fractions
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # mixed precision, CUDA only
    num_workers: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    out_dir: str = "lsr-run"
    resume: str | None = None  # training folder or checkpoint to continue from
    init_from: str | None = None  # trained model whose weights a new run starts from
    overwrite: bool = False  # replace a previous run in out_dir (else: refuse to train there)
    collapse_window: int = 50  # steps
    collapse_std: float = 5e-4  # fraction, std across one step's blocks
    mask_ratio: float = 0.1  # degenerate mask: a class's argmax share < ratio × its mean (0: off)
    #: (file, its settings) when read by :meth:`from_file`: a bad setting that still has the
    #: file's value names the file. Not annotated, so not a field: never saved or compared.
    _from_file = None

    # ------------------------------------------------------------------ defaults
    def resolved(self) -> TrainConfig:
        """A copy with the per-loss defaults (:data:`DEFAULTS`) filled in where a value is None."""
        if self.loss not in LOSSES:
            raise LsrInputError(
                f"unknown loss '{self.loss}' (choose {', '.join(LOSSES)})", self._file_of("loss")
            )
        cfg = dataclasses.replace(self, data=[DataPair(d.slide, d.grid, d.mpp) for d in self.data])
        cfg._from_file = self._from_file
        for key, value in DEFAULTS[self.loss].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.loss == "intra":
            cfg.groups_per_batch = cfg.groups_per_batch or 0
            cfg.group_size = cfg.group_size or 0
        else:
            cfg.batch_size = cfg.groups_per_batch * cfg.group_size
        cfg.validate()
        return cfg

    def check_types(self, path: str | os.PathLike[str] | None = None) -> None:
        """Raise :class:`LsrInputError` naming the first setting of the wrong type.

        Why: a TOML ``steps = "2"`` or ``width = 4.5`` otherwise fails deep inside rich or
        torch. Integers written as whole floats (``4.0``) become ints and ints become floats
        where a float is expected; anything else is an error naming the key and the type.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok, converted, expected = _conform(value, hints[f.name])
            if not ok:
                raise LsrInputError(
                    f"bad setting {f.name} = {value!r}: expected {expected}, "
                    f"got {_type_name(value)}",
                    path,
                )
            setattr(self, f.name, converted)

    def validate(self) -> None:
        """Raise :class:`LsrInputError` naming the first bad setting."""
        self.check_types()

        def bad(name: str, why: str) -> LsrInputError:
            return LsrInputError(
                f"bad setting {name}={getattr(self, name)!r}: {why}", self._file_of(name)
            )

        choices = {
            "loss": LOSSES,
            "distance": losses.DISTANCES,
            "variance_norm": losses.VARIANCE_NORMS,
            "lr_schedule": LR_SCHEDULES,
            "group_policy": ("uniform", "proportional"),
            "norm": NORMS,
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise bad(name, f"choose one of {', '.join(valid)}")
        positive = ["block_px", "steps", "width", "checkpoint_every", "keep_checkpoints"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be ≥ 1")
        # the batch shape the loss uses (None: its default, filled in by resolved()); the
        # sampler would refuse it too, but only after every slide was read
        for name in ("batch_size",) if self.loss == "intra" else ("groups_per_batch",):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise bad(name, "must be ≥ 1")
        for name in ("context_px", "warmup_steps", "num_workers", "depth", "seed"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "must be ≥ 0")
        if self.lr is not None and not 0 < self.lr < math.inf:  # inf: NaN at the first step
            raise bad("lr", "must be a finite number > 0")
        if self.loss == "intra":
            per_step, name = int(self.batch_size or 0), "batch_size"
        else:
            per_step = int(self.groups_per_batch or 0) * int(self.group_size or 0)
            name = "groups_per_batch"
        if per_step > MAX_BLOCKS_PER_STEP:  # 1e12 groups "ran out of host memory" in a process
            raise bad(
                name,
                f"{per_step:,} blocks per step; at most {MAX_BLOCKS_PER_STEP:,} (a 240-px block "
                "with its context is about 1 MB of input, before the network's activations)",
            )
        if not self.working_mpp > 0:
            raise bad("working_mpp", "must be > 0")
        if not 0 <= self.min_tissue <= 1:
            raise bad("min_tissue", "a fraction in [0, 1]")
        if self.loss != "intra" and self.group_size is not None and self.group_size < 2:
            raise bad("group_size", "groups need at least 2 blocks (a group of 1 has no spread)")
        if not 0 <= self.mask_ratio < 1:
            raise bad("mask_ratio", "a fraction in [0, 1)")
        if isinstance(self.prior, str) and self.prior not in ("table", "none"):
            raise bad("prior", "'table', 'none' or a list of class fractions")
        # numbers the optimizer and the losses take as they are: out of range they fail
        # steps later as NaN, or train in silence with a meaningless setting
        if not 0 < self.rho_floor < 1:  # 0 would make the Gaussian forms infinite at ρ = 0
            raise bad("rho_floor", "a fraction in (0, 1) (the smallest ρ the losses use)")
        if not 0 <= self.rmsprop_alpha < 1:
            raise bad("rmsprop_alpha", "RMSprop's smoothing constant, in [0, 1)")
        if not self.rmsprop_eps > 0:
            raise bad("rmsprop_eps", "must be > 0")
        for name in ("momentum", "weight_decay", "cache_mb", "collapse_std"):
            if not getattr(self, name) >= 0:
                raise bad(name, "must be ≥ 0")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise bad("grad_clip", "a gradient norm ≥ 0 (0 or nothing: no clipping)")
        seen_px = int(self.block_px) + 2 * int(self.context_px)
        if 2 ** int(self.depth) > seen_px:
            most = seen_px.bit_length() - 1
            raise bad(
                "depth",
                f"{self.depth} halvings shrink the network's {seen_px}-px input below 1 px "
                f"(at most {most} for block_px {self.block_px}, context_px {self.context_px})",
            )

    def sets(self, name: str) -> bool:
        """Whether the config file this came from sets ``name`` (and it still holds that
        value): such a value is the user's, never replaced by a default from elsewhere."""
        return self._file_of(name) is not None

    def _file_of(self, name: str) -> Path | None:
        """The config file setting ``name`` came from, while it keeps the file's value (a
        command-line flag that replaced it is not the file's fault); else None."""
        if self._from_file is None:
            return None
        path, settings = self._from_file
        if name in settings and settings[name] == getattr(self, name):
            return path
        return None

    # ------------------------------------------------------------------ files
    def to_dict(self, absolute: bool = False) -> dict[str, Any]:
        """Every setting as JSON-ready values, except ``overwrite``: replacing a run is one
        command's decision, never carried by a saved config, run.json or checkpoint (a later
        start from that file would delete whatever run its out_dir then holds).

        ``absolute``: file paths made absolute (from the current folder), as a saved config,
        run.json and a checkpoint hold them: ``lsr train --resume`` from another folder
        looked for ``data/s.tif`` there."""
        d = dataclasses.asdict(self)
        d.pop("overwrite")
        d["data"] = [
            {"slide": p.slide, "grid": p.grid, **({} if p.mpp is None else {"mpp": p.mpp})}
            for p in self.data
        ]
        if absolute:
            for pair in d["data"]:
                pair.update({k: str(Path(pair[k]).absolute()) for k in ("slide", "grid")})
            for key in ("table", "out_dir", "resume", "init_from"):
                value = d.get(key)
                if isinstance(value, str) and value not in ("paper", "paper-table1"):
                    d[key] = str(Path(value).absolute())
        return d

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        base_dir: str | os.PathLike[str] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> TrainConfig:
        """Build from a dict (TOML/JSON); relative data paths are taken from ``base_dir``."""
        if not isinstance(data, dict):
            raise LsrInputError("a training config must be a table/object", path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LsrInputError(f"unknown config keys: {', '.join(unknown)}", path)
        kwargs = dict(data)
        kwargs.pop("overwrite", None)  # never from a file (see to_dict)
        pairs = []
        for i, item in enumerate(kwargs.pop("data", []) or []):
            where = f"data[{i}]"
            if isinstance(item, dict) and (extra := sorted(set(item) - {"slide", "grid", "mpp"})):
                raise LsrInputError(
                    f"unknown key(s) {', '.join(map(repr, extra))} (a data entry has slide, "
                    "grid and, for a slide without its pixel size, mpp)",
                    path,
                    where,
                )
            if isinstance(item, dict) and {"slide", "grid"} <= set(item):
                slide, grid = item["slide"], item["grid"]
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                slide, grid = item
            else:
                raise LsrInputError("each data entry needs a slide and a grid", path, where)
            for name, value in (("slide", slide), ("grid", grid)):
                if not isinstance(value, str) or not value:
                    raise LsrInputError(f"{name} must be a file path, got {value!r}", path, where)
            mpp = item.get("mpp") if isinstance(item, dict) else None
            if mpp is not None:
                from lsr.slide import check_mpp

                mpp = check_mpp(mpp, path, where)
            if base_dir is not None:
                slide, grid = (str(Path(base_dir) / p) for p in (slide, grid))
            pairs.append(DataPair(str(slide), str(grid), None if mpp is None else float(mpp)))
        if base_dir is not None:
            for key in ("table", "out_dir", "resume", "init_from"):
                value = kwargs.get(key)
                if isinstance(value, str) and value not in ("paper", "paper-table1"):
                    kwargs[key] = str(Path(base_dir) / value)
        try:
            cfg = cls(data=pairs, **kwargs)
        except TypeError as err:
            raise LsrInputError(f"malformed config ({err})", path) from None
        cfg.check_types(path)
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a ``.toml`` or ``.json`` config; data paths are relative to the file."""
        p = Path(path)
        if not p.exists():
            raise LsrInputError("config file not found", p)
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            raise LsrInputError(f"cannot parse config ({err})", p) from None
        cfg = cls.from_dict(data, base_dir=p.parent, path=p)
        cfg._from_file = (p, {k: getattr(cfg, k) for k in data if k != "data" and hasattr(cfg, k)})
        return cfg

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON that :meth:`from_file` reads back from anywhere: its paths
        are made absolute (a file's relative paths are read relative to the file). Refuses a
        name that is not ``.json`` and an existing file that is not a training config."""
        p = Path(path)
        known = {f.name for f in dataclasses.fields(type(self))}
        check_replaceable(
            p,
            lambda q: set(json.loads(q.read_text(encoding="utf-8"))) <= known,
            "a training config",
            "file name",
        )
        if p.suffix.lower() != ".json":
            raise LsrInputError("a saved config is JSON: give a name ending in .json", p)
        atomic_write_text(p, json.dumps(self.to_dict(absolute=True), indent=2) + "\n")


def _type_name(value: Any) -> str:
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a decimal number",
        str: "text",
        type(None): "nothing (null)",
    }
    return names.get(type(value), type(value).__name__)


def _conform(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """(fits, the value converted, what was expected) for a TrainConfig type hint."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return True, None, ""
        rest = [a for a in args if a is not type(None)]
        ok, converted, expected = _conform(value, rest[0] if len(rest) == 1 else rest)
        return ok, converted, f"{expected} or nothing (null)"
    if isinstance(hint, list):  # a union of several types: the first that fits
        expected = []
        for option in hint:
            ok, converted, what = _conform(value, option)
            if ok:
                return True, converted, ""
            expected.append(what)
        return False, value, " or ".join(expected)
    if len(args) > 1:
        return _conform(value, list(args))
    origin = typing.get_origin(hint)
    if origin is list:
        item = args[0] if args else Any
        if not isinstance(value, (list, tuple)):
            return False, value, "a list"
        out = []
        for v in value:
            ok, converted, what = _conform(v, item)
            if not ok:
                return False, value, f"a list whose items are each {what}"
            out.append(converted)
        return True, out, ""
    if hint is bool:
        return isinstance(value, bool), value, "true or false"
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return True, int(value), "an integer"
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value, "a number"
    if hint is str:
        return isinstance(value, str), value, "text"
    if isinstance(hint, type):
        return isinstance(value, hint), value, hint.__name__
    return True, value, ""


# ====================================================================== events
@dataclass
class StartEvent:
    config: TrainConfig  # resolved
    device: str
    n_blocks: int
    bin_counts: dict[int, int]
    start_step: int
    world_size: int
    halo_px: int
    table: str = ""  # which count table: a path, "paper Table 1", or the checkpoint's


def blocks_seen(steps: int, blocks_per_step: int, n_blocks: int) -> str:
    """'300 steps × 30 blocks: a block is seen about 7.5 times on average', with a hint when
    it is less than once; '' when a figure is unknown (0). Why: the default steps suit the
    study's data; a few whole slides hold ten times as many blocks (docs/training.md)."""
    if steps <= 0 or blocks_per_step <= 0 or n_blocks <= 0:
        return ""
    times = steps * blocks_per_step / n_blocks
    said = f"{times:.2g}" if times < 100 else f"{times:,.0f}"  # 1800, not 1.8e+03
    return (
        f"{steps} steps × {blocks_per_step} blocks: a block is seen about {said} times "
        "on average" + (" (less than once: more steps may pay)" if times < 1 else "")
    )


@dataclass
class StepEvent:
    step: int  # steps done so far (1-based after the first step)
    total_steps: int
    loss: float
    lr: float
    blocks_per_s: float
    eta_s: float  # estimated seconds to the end
    elapsed_s: float
    timings: dict[str, float]  # seconds of this step: data, forward, loss, backward, optimizer


@runtime_checkable
class TrainCallback(Protocol):
    """Progress interface; every method is optional. ``on_step`` may return ``"stop"``;
    ``stop_requested`` is asked once before the first step, since reading the slides can
    take long and a stop asked meanwhile should not wait for a step."""

    def stop_requested(self) -> bool: ...

    def on_start(self, event: StartEvent) -> None: ...

    def on_step(self, event: StepEvent) -> str | None: ...

    def on_checkpoint(self, path: Path, step: int) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    status: str  # "completed", "cancelled" or "failed"
    failure: str
    step: int
    losses: list[float]
    out_dir: str
    checkpoint: str  # latest checkpoint folder ("" when none was written)
    device: str
    warnings: list[str]
    blocks_per_s: float
    timings: dict[str, float]  # mean seconds per step for data/forward/loss/backward/optimizer
    model: Any = field(default=None, repr=False)  # the trained UNet (not serialised)

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("model")
        return d


# ====================================================================== helpers
class CollapseMonitor:
    """Flags a network whose predicted class fraction no longer depends on the block.

    Keeps the block fractions ``μ_k`` of class 0 from the last ``window`` steps; the spread is
    the standard deviation across the blocks *of one step*, averaged over the window, and
    collapse is that spread falling below ``threshold`` (a fraction) once the window is full.
    Within a step, not pooled over steps: a collapsed network still drifts from step to step
    as the optimiser moves its constant (the study's `paper-printed` runs: 4e-7 within a step,
    1e-2 pooled over steps).
    """

    def __init__(self, window: int, threshold: float):
        self.window = int(window)
        self.threshold = float(threshold)
        self.history: collections.deque[list[float]] = collections.deque(maxlen=self.window)

    def update(self, mu: Sequence[float]) -> bool:
        self.history.append([float(m) for m in mu])
        return self.collapsed

    @property
    def spread(self) -> float:
        per_step = [float(np.std(step)) for step in self.history if len(step) > 1]
        if per_step:
            return float(np.mean(per_step))
        values = [m for step in self.history for m in step]  # one block per step
        return float(np.std(values)) if values else float("nan")

    @property
    def collapsed(self) -> bool:
        return len(self.history) == self.window and self.spread < self.threshold

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        for row in state.get("history", [])[-self.window :]:
            self.history.append(list(row))


class MaskMonitor:
    """Flags a network whose thresholded mask loses a class that it still predicts.

    The losses see only block means of probabilities, so a network can match the count table
    with every pixel on one side of 0.5: cancer everywhere at 0.49 (an empty mask) or at 0.51
    (a full one). Over the last ``window`` steps, per class ``l``: ``soft_l`` is the mean
    probability and ``hard_l`` the share of pixels whose most likely class is ``l``; the mask is
    degenerate when some class has ``soft_l ≥ min_soft`` but ``hard_l < ratio × soft_l``.
    Healthy demo runs had ``hard/soft`` 0.58–1.48, the failed ones 0.00 (docs/results.md).
    """

    def __init__(self, window: int, ratio: float, min_soft: float = 0.02):
        self.window = int(window)
        self.ratio = float(ratio)
        self.min_soft = float(min_soft)
        self.history: collections.deque[tuple[list[float], list[float]]] = collections.deque(
            maxlen=self.window
        )

    def update(self, soft: Sequence[float], hard: Sequence[float]) -> bool:
        """Add one step's (L,) mean probabilities and argmax shares; True when degenerate."""
        self.history.append(([float(v) for v in soft], [float(v) for v in hard]))
        return self.degenerate_class is not None

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(soft, hard), each (L,), averaged over the window."""
        soft = np.mean([s for s, _ in self.history], axis=0)
        hard = np.mean([h for _, h in self.history], axis=0)
        return soft, hard

    @property
    def degenerate_class(self) -> int | None:
        if self.ratio <= 0 or len(self.history) < self.window:
            return None
        soft, hard = self.means()
        bad = (soft >= self.min_soft) & (hard < self.ratio * soft)
        return int(np.argmax(bad)) if bad.any() else None

    def describe(self, class_names: Sequence[str]) -> str:
        k = self.degenerate_class
        if k is None:
            return "the mask is not degenerate"
        soft, hard = self.means()
        text = (
            f"'{class_names[k]}' has mean probability {soft[k]:.1%} but is the most likely "
            f"class at only {hard[k]:.1%} of pixels over the last {self.window} steps, so "
            "its thresholded mask is (nearly) empty"
        )
        if len(class_names) == 2:  # the other class then covers (nearly) everything
            text += f" and (nearly) every pixel is called '{class_names[1 - k]}'"
        return text

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[list(s), list(h)] for s, h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        for soft, hard in state.get("history", [])[-self.window :]:
            self.history.append((list(soft), list(hard)))


#: Training blocks the final network is checked on (stratified over the bins; one forward).
FINAL_CHECK_BLOCKS = 64


def final_check_blocks(labels: np.ndarray, seed: int, n: int = FINAL_CHECK_BLOCKS) -> np.ndarray:
    """Indices of up to ``n`` blocks, about equally many from each bin the labels use.

    Deterministic in ``seed``, so a run and a later look at it check the same blocks.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    bins = np.unique(labels)
    if bins.size == 0:
        return np.zeros(0, np.int64)
    per_bin = -(-n // bins.size)
    # (rank within its bin, bin, index): the n lowest ranks give every bin its share
    drawn = [rng.permutation(np.flatnonzero(labels == z))[:per_bin] for z in bins]
    ranked = sorted((r, k, int(i)) for k, picks in enumerate(drawn) for r, i in enumerate(picks))
    return np.sort(np.array([i for _, _, i in ranked[:n]], dtype=np.int64))


def class_counts(p: torch.Tensor) -> torch.Tensor:
    """(L,) float32: how many pixels of the probabilities ``p`` (B, L, H, W) each class wins
    (argmax; ties to the lower class). Not ``torch.bincount``: on Apple MPS it is slow on
    millions of values in one bin (a step's 1.7 M pixels) and crashed in some releases."""
    winners = p.argmax(dim=1, keepdim=True)
    classes = torch.arange(p.shape[1], device=p.device).view(1, -1, 1, 1)
    return (winners == classes).sum(dim=(0, 2, 3)).float()


def class_shares(p: torch.Tensor) -> torch.Tensor:
    """(L,) the share of the pixels of ``p`` (B, L, H, W) each class wins (sums to 1)."""
    return class_counts(p) / (p.numel() // p.shape[1])


def check_final_network(
    model: torch.nn.Module,
    dataset: BlockDataset,
    cfg: TrainConfig,
    class_names: Sequence[str],
    device: torch.device | str = "cpu",
) -> tuple[str, dict[str, Any]]:
    """Apply the collapse and degenerate-mask rules to the *final* weights.

    Why: the monitors average the last ``collapse_window`` steps, so a network wrecked by a
    loss spike in its last few steps (seen in the study: all cancer after two spikes at steps
    298 and 300) passes them, and it is that network which is saved and used. Predicts
    :func:`final_check_blocks` of the training blocks (no augmentation, eval mode) and
    returns ``(failure text or "", stats)``; stats hold ``spread`` (std of the class-0 block
    fraction), ``soft`` and ``hard`` (per class mean probability and argmax share).
    """
    idx = final_check_blocks(dataset.labels, cfg.seed)
    if idx.size < 2:
        return "", {}
    was_training = model.training
    model.eval()
    mus, softs, hards = [], [], []
    chunk = max(int(cfg.batch_size or 8), 1)
    try:
        with torch.no_grad():
            for start in range(0, idx.size, chunk):
                images = torch.stack([normalise_rgb(dataset.read_block(int(i)))
                                      for i in idx[start : start + chunk]])  # fmt: skip
                logits = model(images.to(device))
                p = F.softmax(crop_to_block(logits, cfg.context_px).float(), dim=1)
                mus.append(p[:, 0].mean(dim=(-2, -1)).cpu())
                softs.append(p.sum(dim=(0, 2, 3)).cpu())
                hards.append(class_counts(p).cpu())
    finally:
        model.train(was_training)
    mu = torch.cat(mus).numpy()
    n_px = float(torch.stack(hards).sum())
    soft = (torch.stack(softs).sum(0) / n_px).numpy()
    hard = (torch.stack(hards).sum(0).float() / n_px).numpy()
    stats = {"blocks": int(idx.size), "spread": float(mu.std()), "soft": soft.tolist(),
             "hard": hard.tolist()}  # fmt: skip
    where = f"the final network on {idx.size} training blocks"
    if stats["spread"] < cfg.collapse_std:
        return (
            f"collapsed: {where} predicts a {class_names[0]} fraction that varies by only "
            f"{stats['spread']:.2g} across blocks (< {cfg.collapse_std})"
        ), stats
    masks = MaskMonitor(1, cfg.mask_ratio)
    masks.update(soft, hard)
    if (k := masks.degenerate_class) is not None:
        text = (
            f"degenerate mask: on {where}, '{class_names[k]}' has mean probability "
            f"{soft[k]:.1%} but is the most likely class at only {hard[k]:.1%} of pixels"
        )
        if len(class_names) == 2:
            text += f", so (nearly) every pixel is called '{class_names[1 - k]}'"
        return text, stats
    return "", stats


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate for (0-based) ``step``: linear warm-up then constant or cosine."""
    assert cfg.lr is not None
    lr = float(cfg.lr)
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.warmup_steps, 1)
        progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def compute_loss(
    cfg: TrainConfig, probs: Tensor, eta: Tensor, rho: Tensor, group: Tensor
) -> Tensor:
    """The configured LSR loss of ``probs`` (B, L, h, w) for targets ``eta``, ``rho`` (B, L)."""
    if cfg.loss == "intra":
        return losses.intra_instance_loss(
            probs,
            eta,
            rho,
            distance=cfg.distance,
            variance_norm=cfg.variance_norm,
            rho_floor=cfg.rho_floor,
        )
    if cfg.loss == "inter":
        return losses.inter_instance_loss(
            probs, eta, rho, group, distance=cfg.distance, rho_floor=cfg.rho_floor
        )
    grouped = {
        "intra_inter": losses.intra_inter_instance_loss,
        "intra_plus_inter": losses.intra_plus_inter_loss,
    }[cfg.loss]
    return grouped(
        probs,
        eta,
        rho,
        group,
        distance=cfg.distance,
        variance_norm=cfg.variance_norm,
        rho_floor=cfg.rho_floor,
    )


def crop_to_block(x: Tensor, context_px: int) -> Tensor:
    """Drop the ``context_px`` margin of ``x`` (B, C, h + 2m, w + 2m) → (B, C, h, w)."""
    if context_px <= 0:
        return x
    m = context_px
    return x[..., m:-m, m:-m]


def build_dataset(
    cfg: TrainConfig, table: CountTable, sources: Sequence[BlockSource] | None = None
) -> BlockDataset:
    """The block dataset of a (resolved) config, or of ``sources`` given directly."""
    if sources is None:
        if not cfg.data:
            raise LsrInputError("no training data: give at least one --slide/--grid pair")
        sources = [BlockSource(d.slide, d.grid, mpp=d.mpp) for d in cfg.data]
    return BlockDataset(
        sources,
        table,
        working_mpp=cfg.working_mpp,
        block_px=cfg.block_px,
        context_px=cfg.context_px,
        augment_config=AugmentConfig() if cfg.augment else NO_AUGMENT,
        seed=cfg.seed,
        min_tissue=cfg.min_tissue,
        cache_mb=cfg.cache_mb,
    )


def build_sampler(
    cfg: TrainConfig, dataset: BlockDataset, rank: int = 0, world_size: int = 1
) -> GroupBatchSampler | ShuffledBatchSampler:
    """Shuffled batches for the intra loss, same-``z`` groups for the others."""
    if cfg.loss == "intra":
        assert cfg.batch_size is not None
        return ShuffledBatchSampler(
            len(dataset), cfg.batch_size, cfg.seed, rank, world_size, steps=cfg.steps
        )
    assert cfg.groups_per_batch is not None and cfg.group_size is not None
    return GroupBatchSampler(
        dataset.labels,
        cfg.groups_per_batch,
        cfg.group_size,
        cfg.group_policy,
        cfg.seed,
        rank,
        world_size,
        steps=cfg.steps,
    )


def _prior(cfg: TrainConfig, table: CountTable) -> np.ndarray | None:
    if isinstance(cfg.prior, str):
        if cfg.prior == "none":
            return None
        return np.asarray(table.eta, dtype=np.float64).mean(axis=0)
    prior = np.asarray(cfg.prior, dtype=np.float64)
    if prior.shape != (len(table.class_names),) or (prior < 0).any() or prior.sum() <= 0:
        raise LsrInputError(f"prior must be {len(table.class_names)} fractions, got {cfg.prior}")
    return prior


def _agreed(stop: bool, world: int, device: torch.device) -> bool:
    """Whether any rank was asked to stop: every rank must leave the loop at the same step."""
    if world <= 1:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _emit(callbacks: Sequence[Any], name: str, *args: Any) -> list[Any]:
    out = []
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            out.append(fn(*args))
    return out


def ddp_backend(device: str) -> str:
    """The process-group backend for training on ``device`` (a :data:`lsr.device.DEVICE_CHOICES`
    name or ``cuda:N``): NCCL for CUDA tensors, gloo for CPU ones — not NCCL whenever a GPU is
    visible (``torchrun … --device cpu`` on a GPU machine sent CPU tensors to NCCL)."""
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "mps":
        raise LsrInputError(
            "distributed training (torchrun) runs on CUDA or CPU, not on Apple MPS: "
            "give --device cpu, or train in one process"
        )
    return "nccl" if name.startswith("cuda") else "gloo"


@contextlib.contextmanager
def _distributed(device: str = "auto") -> Iterator[tuple[int, int]]:
    """Initialise the process group under torchrun (WORLD_SIZE > 1) with the backend for
    ``device`` (:func:`ddp_backend`); yield (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owned = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=ddp_backend(device))
        owned = True
    try:
        if dist.is_initialized():
            yield dist.get_rank(), dist.get_world_size()
        else:
            yield 0, 1
    finally:
        if owned:
            dist.destroy_process_group()


def previous_run(out_dir: str | os.PathLike[str]) -> list[str]:
    """What of an earlier run ``out_dir`` holds: ``run.json``, ``latest.json``, ``checkpoints/``.

    Empty when training there loses nothing (a new folder, or the GUI's fresh run folder
    holding only its ``config.json`` and log).
    """
    out = Path(out_dir)
    found = [name for name in (RUN_JSON, LATEST) if (out / name).exists()]
    ckpts = out / CHECKPOINTS
    if ckpts.is_dir() and any(ckpts.glob("step-*")):
        found.append(f"{CHECKPOINTS}/")
    return found


def check_out_dir(cfg: TrainConfig, ckpt: Any = None) -> None:
    """Refuse to train into a folder that holds another run, unless told to replace it.

    Continuing the run of that very folder (``resume``) is fine; with ``overwrite``,
    :func:`set_aside_run` moves the old run out of the way first. Two runs never share a
    folder: their checkpoints would be mixed and pruned by each other, and latest.json and
    run.json lost.
    """
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise LsrInputError("the output folder is a file, not a folder", out)
    found = previous_run(out)
    if not found or cfg.overwrite:
        return
    if _continues_own_run(out, ckpt):
        return
    if found == [RUN_JSON]:  # nothing to resume: it ended before its first checkpoint
        try:
            run = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
            how = f" ({run.get('status')}: {run.get('failure')})" if run.get("failure") else ""
        except (OSError, ValueError, AttributeError):
            how = ""
        raise LsrInputError(
            f"holds a run that ended before its first checkpoint{how}, so there is nothing "
            "to resume: replace it with --overwrite or choose another --out-dir",
            out,
        )
    raise LsrInputError(
        f"already holds a training run ({', '.join(found)}); continue it with "
        f"--resume {out}, choose another --out-dir, or replace it with --overwrite",
        out,
    )


def check_resumable(
    cfg: TrainConfig,
    meta: dict[str, Any],
    path: str | os.PathLike[str] | None = None,
    *,
    steps_left: bool = False,
) -> None:
    """Say plainly which asked setting a resume from checkpoint ``meta`` cannot honour.

    The loss and seed fix the sampler's batches, so changing them would not continue the run
    (the sampler would only say its state is for another kind or seed). With ``steps_left``
    (the CLI, where the user typed --steps), a checkpoint past ``steps`` is an error too;
    callers that resume automatically (the demo, the Trainer) get the run back as it is,
    with a warning. Called before any data is read.
    """
    step = int(meta.get("step", 0))
    for key, flag in (("loss", "--loss"), ("seed", "--seed")):
        was = meta.get(key, meta.get("config", {}).get(key))
        if was is not None and was != getattr(cfg, key):
            raise LsrInputError(
                f"the run was trained with {key} {was!r}, and the {key} cannot change on "
                f"resume (asked: {getattr(cfg, key)!r}); drop {flag}, or train a new run "
                "in another --out-dir",
                path,
            )
    if steps_left and step > cfg.steps:
        raise LsrInputError(
            f"the checkpoint is already at step {step}, past the {cfg.steps} steps "
            f"asked: nothing to train; give --steps above {step} to continue it",
            path,
        )


def table_source(cfg: TrainConfig, ckpt: Any = None) -> str:
    """Which count table the run uses, for a person: a forgotten --table shows here."""

    def name(table: Any) -> str:
        if str(table) in ("paper", "paper-table1"):
            return "paper Table 1 (the default; --table gives an expert's)"
        return str(table)

    if ckpt is not None and "table" in ckpt.metadata:
        first = ckpt.metadata.get("config", {}).get("table", "")
        return f"the checkpoint's, first from {name(first)}" if first else "the checkpoint's"
    return name(cfg.table)


def _continues_own_run(out_dir: Path, ckpt: Any) -> bool:
    """True when the resumed checkpoint is the run of ``out_dir`` itself."""
    return ckpt is not None and training_folder(ckpt.path).resolve() == out_dir.resolve()


def clear_run(out_dir: str | os.PathLike[str]) -> None:
    """Delete a run's ``latest.json``, checkpoints and ``run.json`` from ``out_dir``.

    ``latest.json`` goes first, so the folder never points at a half-deleted checkpoint;
    each checkpoint is renamed aside in one step before it is deleted, so no partial
    checkpoint is left under a real name. Other files in the folder are kept.
    """
    out = Path(out_dir)
    (out / LATEST).unlink(missing_ok=True)
    ckpts = out / CHECKPOINTS
    if ckpts.is_dir():
        olds = [p for p in ckpts.iterdir() if p.name.startswith(("step-", ".step-"))]
        if olds:
            trash = Path(tempfile.mkdtemp(prefix=".replaced-", dir=ckpts))
            for old in olds:
                os.replace(old, trash / old.name)
            shutil.rmtree(trash)
        with contextlib.suppress(OSError):
            ckpts.rmdir()  # only when empty: nothing of anyone else's is deleted
    (out / RUN_JSON).unlink(missing_ok=True)


#: Where ``--overwrite`` keeps the run it replaces until the new run's first checkpoint.
REPLACED_PREFIX = "replaced-run-"


def set_aside_run(out_dir: str | os.PathLike[str]) -> Path | None:
    """Move an earlier run (``latest.json``, checkpoints, ``run.json``) into
    ``out_dir/replaced-run-<time>-<random>/`` instead of deleting it (``overwrite``).

    Why: the new run may fail before it has anything to show (a corrupt tile found at step 3,
    a NaN loss, Ctrl-C); deleting first would then leave neither run. :func:`discard_run`
    deletes the moved run once the new one has written a checkpoint; :func:`restore_run`
    puts it back when the new one ends without one. Every move is one rename, within the
    folder, and ``latest.json`` goes first; other files in the folder are not touched.
    Returns the folder holding the old run, or None when there was none.
    """
    out = Path(out_dir)
    if not previous_run(out):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = Path(tempfile.mkdtemp(prefix=f"{REPLACED_PREFIX}{stamp}-", dir=out))
    for name in (LATEST, RUN_JSON):
        if (out / name).exists():
            os.replace(out / name, aside / name)
    ckpts = out / CHECKPOINTS
    if ckpts.is_dir():
        (aside / CHECKPOINTS).mkdir()
        for old in ckpts.iterdir():
            if old.name.startswith(("step-", ".step-")):
                os.replace(old, aside / CHECKPOINTS / old.name)
        with contextlib.suppress(OSError):
            ckpts.rmdir()  # only when empty: nothing of anyone else's is moved
    return aside


def restore_run(out_dir: str | os.PathLike[str], aside: Path) -> None:
    """Put the run moved by :func:`set_aside_run` back, replacing what the new run left
    (its ``run.json``; it wrote no checkpoint). ``latest.json`` comes back last, so the
    folder never points at a checkpoint that is not there yet."""
    out = Path(out_dir)
    clear_run(out)
    ckpts = aside / CHECKPOINTS
    if ckpts.is_dir():
        (out / CHECKPOINTS).mkdir(exist_ok=True)
        for old in ckpts.iterdir():
            os.replace(old, out / CHECKPOINTS / old.name)
        ckpts.rmdir()
    for name in (RUN_JSON, LATEST):
        if (aside / name).exists():
            os.replace(aside / name, out / name)
    aside.rmdir()


def discard_run(aside: Path) -> None:
    """Delete the run :func:`set_aside_run` moved, once the new run has a checkpoint."""
    shutil.rmtree(aside)


def replaced_runs(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Runs that ``--overwrite`` set aside and never put back or deleted: the run replacing
    them was cancelled or killed before its first periodic checkpoint (oldest first)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p for p in out.glob(f"{REPLACED_PREFIX}*") if p.is_dir())


def _holds_only_a_summary(aside: Path) -> bool:
    """True when a ``replaced-run-*`` folder holds only the ``run.json`` of the run set
    aside (a run that failed or was cancelled before any checkpoint, replaced by one killed
    before its own): it was warned about on every later run, as if it could be continued."""
    files = [p for p in aside.rglob("*") if not p.is_dir()]
    return [p.relative_to(aside).as_posix() for p in files] == [RUN_JSON]


def _flagged_bins_in_use(table: CountTable, labels: np.ndarray) -> str:
    """The table's flagged bins (one estimate, std 0, filled from a fallback) that training
    blocks carry, with each bin's reason and block count; '' when none. A flagged bin nobody
    uses is harmless; one the loss fits block after block is worth a warning."""
    used = np.bincount(np.asarray(labels, dtype=np.int64), minlength=table.n_bins)
    labels_of = table.bin_labels()
    return "; ".join(
        f"bin {b} ({labels_of[b]}%, {int(used[b])} block{'s' * bool(used[b] != 1)}): {why}"
        for b, why in sorted(table.flagged.items())
        if b < used.size and used[b] > 0
    )


def _network_difference(was: dict[str, Any], now: dict[str, Any]) -> str:
    """'width 4, the run asks for width 8' for two networks' configs; '' when they agree."""
    diff = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
    if not diff:
        return ""
    return (
        ", ".join(f"{k} {was.get(k)!r}" for k in diff)
        + ", the run asks for "
        + ", ".join(f"{k} {now.get(k)!r}" for k in diff)
    )


def _remove_killed_writes(out_dir: Path) -> None:
    """Delete the temporary checkpoint folders and run files a killed run left (SIGKILL or
    the OOM killer mid-write skip the clean-up; a checkpoint's is as large as the model and
    its optimizer state): ``checkpoints/.step-N.tmp-…`` being written, ``.step-N.old-…``
    being replaced. Only those unchanged for a minute: not a live run's."""
    from lsr.atomic import remove_leftover_temps

    remove_leftover_temps(
        out_dir / CHECKPOINTS, lambda t: False, min_age_s=60, staging_prefixes=(".step-",)
    )
    remove_leftover_temps(out_dir, {LATEST, RUN_JSON}.__contains__, min_age_s=60)


def _load_init(model: UNet, path: str) -> dict[str, Any]:
    """Load the weights of the trained model at ``path`` into ``model`` (a new run's start).

    Why: a network can start from another's weights (e.g. intra+inter from an intra network)
    instead of the table prior; only the weights come over, the optimizer starts afresh at
    step 0. Returns the source's provenance for checkpoint.json: folder, weights' SHA-256 and
    the step it was saved at.
    """
    state, meta = read_model(path)
    if problem := _network_difference(meta["model"], model.config()):
        raise LsrInputError(
            f"the network to start from differs from the one this run trains: it has {problem}"
            " (give the same --width, --depth and --norm, or drop --init-from)",
            meta["path"],
        )
    model.load_state_dict(state)
    weights = meta.get("files", {}).get(MODEL, {})
    source = {
        "path": meta["path"],
        "sha256": weights.get("sha256"),
        "step": meta.get("step"),
        "working_mpp": meta.get("working_mpp"),
    }
    try:  # the source run's own verdict, when its folder still has it
        run = json.loads((training_folder(path) / RUN_JSON).read_text(encoding="utf-8"))
        if run.get("status") == "failed":
            source["run_failure"] = str(run.get("failure") or "failed")
    except (OSError, ValueError, AttributeError):
        pass
    return source


def _resume_source(cfg: TrainConfig) -> Any:
    if not cfg.resume:
        return None
    return read_checkpoint(cfg.resume)


# ====================================================================== the loop
def train(
    config: TrainConfig,
    callbacks: Sequence[Any] = (),
    cancel: threading.Event | None = None,
    sources: Sequence[BlockSource] | None = None,
) -> TrainResult:
    """Train a network as ``config`` says; see the module docstring.

    ``callbacks`` receive progress (rank 0 only); ``cancel`` (or an ``on_step`` returning
    ``"stop"``) ends the run after the current step, with a checkpoint. ``sources`` replaces
    ``config.data`` with already-opened slides and grids (tests, the GUI).
    Returns a :class:`TrainResult`; ``run.json`` of the run is written to ``out_dir``.
    """
    with _distributed(config.device) as (rank, world):
        cfg = config.resolved()
        record = _RunRecord()
        try:
            return _train(cfg, list(callbacks), cancel, sources, rank, world, record)
        except BaseException as err:
            try:
                if record.started:  # never touch a run.json this attempt did not write
                    record.fail(cfg, err)
            finally:  # even when run.json cannot be written (a full disk)
                if record.aside is not None:
                    warnings.warn(record.put_back(cfg), TrainWarning, stacklevel=2)
            raise


@dataclass
class _RunRecord:
    """What :func:`_train` has written so far, so an exception can close its ``run.json``.

    Why: an error in the middle of a run (a corrupt tile, out of memory, a second Ctrl-C)
    would otherwise leave ``{"status": "running"}`` in ``run.json`` forever.
    """

    started: bool = False  # run.json says "running" for this attempt
    step: int = 0
    checkpoint: str = ""
    losses: list[float] = field(default_factory=list)
    aside: Path | None = None  # the run --overwrite replaces, until our first checkpoint

    def put_back(self, cfg: TrainConfig) -> str:
        """Restore the replaced run (this one wrote no checkpoint); the message saying so."""
        aside, self.aside = self.aside, None
        assert aside is not None
        try:
            restore_run(cfg.out_dir, aside)
        except OSError as err:
            return (
                f"this run wrote no checkpoint, and the run it was to replace could not be put "
                f"back ({err}): it is in {aside}"
            )
        return (
            f"this run wrote no checkpoint, so the run it was to replace (--overwrite) is "
            f"back in {cfg.out_dir}"
        )

    def fail(self, cfg: TrainConfig, err: BaseException) -> None:
        interrupted = isinstance(err, KeyboardInterrupt)
        reason = str(err) if isinstance(err, LsrInputError) else f"{type(err).__name__}: {err}"
        _write_run_json(
            Path(cfg.out_dir),
            {
                "status": "cancelled" if interrupted else "failed",
                "failure": "interrupted" if interrupted else reason,
                "step": self.step,
                "losses": self.losses,
                "checkpoint": self.checkpoint,
                "config": cfg.to_dict(absolute=True),
            },
        )


def _train(
    cfg: TrainConfig,
    callbacks: list[Any],
    cancel: threading.Event | None,
    sources: Sequence[BlockSource] | None,
    rank: int,
    world: int,
    record: _RunRecord | None = None,
) -> TrainResult:
    record = record if record is not None else _RunRecord()
    run_warnings: list[str] = []

    def warn(msg: str) -> None:
        run_warnings.append(msg)
        warnings.warn(msg, TrainWarning, stacklevel=3)

    is_main = rank == 0
    out_dir = Path(cfg.out_dir)
    ckpt = _resume_source(cfg)
    if rank == 0:  # only rank 0 writes run.json: another rank could take it for an old run
        check_out_dir(cfg, ckpt)
    if ckpt is not None:
        check_resumable(cfg, ckpt.metadata, ckpt.path)
    device = select_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_amp = bool(cfg.amp and device.type == "cuda")
    if cfg.amp and not use_amp:
        warn(f"mixed precision needs CUDA; training in float32 on {device.type}")

    if ckpt is not None and "table" in ckpt.metadata:  # resume with the run's own table
        table = CountTable.from_dict(ckpt.metadata["table"], ckpt.path)
    else:
        table = CountTable.load(cfg.table)
    if why := table.top_bin_problem():
        warn(f"count table: {why}")
    dataset = build_dataset(cfg, table, sources)
    if shaky := _flagged_bins_in_use(table, dataset.labels):
        warn(f"count table: the training blocks use unreliable bins: {shaky}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SamplerWarning)
        sampler = build_sampler(cfg, dataset, rank, world)
    for w in caught:
        warn(str(w.message))

    torch.manual_seed(cfg.seed)
    model = UNet(len(table.class_names), cfg.width, cfg.depth, cfg.norm)
    # what lsr.model.load gives a checkpoint's network: TrainResult.model predicts as trained
    model.working_mpp, model.class_names = float(cfg.working_mpp), tuple(table.class_names)
    prior = _prior(cfg, table)
    if prior is not None:
        model.init_prior(prior)
    init_source = None
    if ckpt is None and cfg.init_from:
        init_source = _load_init(model, cfg.init_from)
        if init_source.get("run_failure"):
            warn(f"the model to start from is from a failed run: {init_source['run_failure']}")
        was_mpp = init_source.get("working_mpp")
        if was_mpp and abs(float(was_mpp) / cfg.working_mpp - 1) > 0.01:
            warn(
                f"the model to start from was trained at {float(was_mpp):g} µm/px, this run "
                f"trains at {cfg.working_mpp:g}: it sees its tissue at another scale"
            )
    model.to(device)
    optimizer = torch.optim.RMSprop(
        model.parameters(),
        lr=float(cfg.lr or 0.0),
        alpha=cfg.rmsprop_alpha,
        eps=cfg.rmsprop_eps,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    monitor = CollapseMonitor(cfg.collapse_window, cfg.collapse_std)
    mask_monitor = MaskMonitor(cfg.collapse_window, cfg.mask_ratio)
    loss_history: list[float] = []
    start = 0
    if ckpt is not None:
        if problem := _network_difference(ckpt.metadata["model"], model.config()):
            raise LsrInputError(
                f"the network cannot change on resume: the checkpoint has {problem}"
                " (drop those options, or train a new run in another --out-dir)",
                ckpt.path,
            )
        model.load_state_dict(ckpt.model_state)
        try:
            optimizer.load_state_dict(ckpt.optimizer_state)
        except (ValueError, KeyError, RuntimeError) as err:
            raise LsrInputError(f"optimizer state does not fit ({err})", ckpt.path) from None
        state = ckpt.trainer_state
        sampler.load_state_dict(state["sampler"])
        if state.get("scaler") and use_amp:
            scaler.load_state_dict(state["scaler"])
        monitor.load_state_dict(state.get("monitor", {}))
        mask_monitor.load_state_dict(state.get("mask_monitor", {}))
        loss_history = [float(v) for v in state.get("losses", [])]
        set_rng_state(ckpt.rng_state)
        start = ckpt.step
        if start >= cfg.steps:
            warn(
                f"the checkpoint is already at step {start}, the {cfg.steps} steps asked: "
                f"nothing to train (give more steps to continue)"
            )

    asked = (cancel is not None and cancel.is_set()) or any(
        _emit(callbacks, "stop_requested") if is_main else ()
    )
    if _agreed(asked, world, device) and start < cfg.steps:
        # stopped while the slides were read: nothing trained, so nothing is written (a
        # run.json here would make the next `lsr train` into this folder need --overwrite)
        result = TrainResult(
            "cancelled", "", start, loss_history, str(out_dir),
            "" if ckpt is None else str(ckpt.path), describe_device(device), run_warnings,
            0.0, {}, model,
        )  # fmt: skip
        if is_main:
            _emit(callbacks, "on_end", result)
        return result

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    device_name = describe_device(device)
    metadata = {
        "config": cfg.to_dict(absolute=True),
        "table": table.to_dict(),
        "class_names": list(table.class_names),
        "loss": cfg.loss,
        "distance": cfg.distance,
        "variance_norm": cfg.variance_norm,
        "seed": cfg.seed,
        "model": model.config(),
        "block_px": cfg.block_px,
        "working_mpp": cfg.working_mpp,
        "context_px": cfg.context_px,
        "git": git_revision(),
        "versions": library_versions(),
        "device": device_name,
        "world_size": world,
    }
    if init_source is not None:
        metadata["init_from"] = init_source
    elif ckpt is not None and "init_from" in ckpt.metadata:
        metadata["init_from"] = ckpt.metadata["init_from"]
    if is_main:
        for left in replaced_runs(out_dir):
            if _holds_only_a_summary(left):  # a run with no checkpoint: nothing to continue
                shutil.rmtree(left)
                warn(
                    f"removed {left}: --overwrite had set it aside and it held only the "
                    f"{RUN_JSON} of a run without a checkpoint (nothing to continue)"
                )
                continue
            warn(
                f"{left}: a run that --overwrite set aside and kept (the run replacing it "
                f"was cancelled or killed before its first periodic checkpoint); move its "
                f"files back into {out_dir} to continue it, or delete the folder"
            )
        if cfg.overwrite and not _continues_own_run(out_dir, ckpt):
            record.aside = set_aside_run(out_dir)
        _remove_killed_writes(out_dir)
        _emit(
            callbacks,
            "on_start",
            StartEvent(
                cfg,
                device_name,
                len(dataset),
                dataset.bin_counts(),
                start,
                world,
                model.halo_px,
                table_source(cfg, ckpt),
            ),
        )
        _write_run_json(
            out_dir, {"status": "running", "step": start, "config": cfg.to_dict(absolute=True)}
        )
        record.started, record.step, record.losses = True, start, loss_history
        if ckpt is not None:
            record.checkpoint = str(ckpt.path)

    last_ckpt = ""
    totals = collections.Counter()
    timed_steps = 0
    status, failure = "completed", ""
    ema_step_s = None
    t_run = time.perf_counter()
    blocks_per_step = (cfg.batch_size or 0) * world
    step = start

    def sync() -> None:  # so that each phase's time is its own
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    def autocast() -> contextlib.AbstractContextManager[Any]:
        # not torch.autocast(enabled=False): before torch 2.5 it refuses device "mps" even off
        if not use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.float16)

    def save(step_done: int, cancelled: bool = False) -> None:
        """Write a checkpoint. The first one deletes the run ``--overwrite`` replaced, unless
        the user cancelled first: a Ctrl-C seconds after a mistaken ``--overwrite`` keeps the
        old run in its ``replaced-run-*`` folder beside the new checkpoint."""
        nonlocal last_ckpt
        if not is_main:
            return
        sampler_state = {**sampler.state_dict(), "position": step_done}
        path = write_checkpoint(
            out_dir,
            step_done,
            model_state=model.state_dict(),
            metadata={**metadata, "final_loss": loss_history[-1] if loss_history else None},
            optimizer_state=optimizer.state_dict(),
            trainer_state={
                "sampler": sampler_state,
                "scaler": scaler.state_dict() if use_amp else {},
                "monitor": monitor.state_dict(),
                "mask_monitor": mask_monitor.state_dict(),
                "losses": loss_history,
            },
            rng_state=rng_state(),
            keep=cfg.keep_checkpoints,
        )
        last_ckpt = record.checkpoint = str(path)
        if record.aside is not None:  # the new run has a checkpoint: the old one can go
            aside, record.aside = record.aside, None  # never put back over our checkpoint
            if cancelled:
                warn(
                    f"cancelled before the first periodic checkpoint: the run --overwrite "
                    f"replaced is kept in {aside}; delete it, or move its files back into "
                    f"{out_dir} (replacing this run's) to continue it"
                )
            else:
                try:
                    discard_run(aside)
                except OSError as err:
                    warn(f"the replaced run in {aside} could not be deleted ({err}); delete it")
        _emit(callbacks, "on_checkpoint", path, step_done)

    net.train()
    batches = iter(loader) if start < cfg.steps else iter(())
    collapse_warned = mask_warned = False
    while step < cfg.steps:
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:  # pragma: no cover - the sampler yields exactly the steps
            break
        except LsrInputError as err:
            raise _from_worker(err) from None
        t1 = time.perf_counter()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # non-blocking only from pinned memory (CUDA): MPS may read a buffer being reused
        images = batch["image"].to(device, non_blocking=device.type == "cuda")
        eta = batch["eta"].to(device)
        rho = batch["rho"].to(device)
        gid = batch["group"].to(device)
        with autocast():
            logits = net(images)
        probs = F.softmax(crop_to_block(logits, cfg.context_px).float(), dim=1)
        sync()
        t2 = time.perf_counter()
        probs_d = probs.detach().requires_grad_(True)
        loss = compute_loss(cfg, probs_d, eta, rho, gid)
        scaler.scale(loss).backward()
        sync()
        t3 = time.perf_counter()
        loss_value = loss.detach()
        if world > 1:
            dist.all_reduce(loss_value)
            loss_value /= world
        loss_f = float(loss_value)
        if not math.isfinite(loss_f):
            status, failure = "failed", f"loss is {loss_f} at step {step + 1}"
            warn(f"training stopped: {failure} (weights of step {step} kept)")
            break
        optimizer.zero_grad(set_to_none=True)
        probs.backward(probs_d.grad)
        sync()
        t4 = time.perf_counter()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        sync()
        t5 = time.perf_counter()
        step += 1
        record.step = step
        loss_history.append(loss_f)
        with torch.no_grad():
            p = probs_d.detach()
            n_cls = p.shape[1]
            mu = p[:, 0].mean(dim=(-2, -1))  # (B,) block fractions of class 0
            soft = p.mean(dim=(0, 2, 3))  # (L,) mean probabilities
            hard = class_shares(p)
            stats = torch.cat([soft, hard, mu]).cpu().tolist()  # one device sync per step
        degenerate = mask_monitor.update(stats[:n_cls], stats[n_cls : 2 * n_cls])
        # A network starting from the table's prior has every pixel on one side of 0.5 for
        # its first tens of steps (the study: until step 50-100 of 300): warn from half-way.
        if degenerate and not mask_warned and 2 * step >= cfg.steps:
            mask_warned = True
            warn(f"degenerate mask at step {step}: {mask_monitor.describe(table.class_names)}")
        if monitor.update(stats[2 * n_cls :]) and not collapse_warned:
            collapse_warned = True
            warn(
                f"collapse at step {step}: the predicted {table.class_names[0]} fraction "
                f"varies by only {monitor.spread:.2g} across the blocks of the last "
                f"{monitor.window} steps"
            )
        timings = {
            "data": t1 - t0,
            "forward": t2 - t1,
            "loss": t3 - t2,
            "backward": t4 - t3,
            "optimizer": t5 - t4,
        }
        if step > start + 1:  # the first step includes start-up (workers, allocations)
            totals.update(timings)
            timed_steps += 1
        step_s = t5 - t0
        ema_step_s = step_s if ema_step_s is None else 0.9 * ema_step_s + 0.1 * step_s
        stop = False
        if is_main:
            event = StepEvent(
                step,
                cfg.steps,
                loss_f,
                lr,
                blocks_per_step / max(ema_step_s, 1e-9),
                ema_step_s * (cfg.steps - step),
                time.perf_counter() - t_run,
                timings,
            )
            stop = any(r == "stop" for r in _emit(callbacks, "on_step", event))
        stop = _agreed(stop or (cancel is not None and cancel.is_set()), world, device)
        if stop and step < cfg.steps:
            status = "cancelled"
            save(step, cancelled=True)
            break
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save(step)
    if world > 1:  # rank 0's last checkpoint (and its pruning) is done before any rank
        dist.barrier()  # reads the checkpoints in the final check below
    if status == "completed" and monitor.collapsed:
        status = "failed"
        failure = f"collapsed: predicted fraction spread {monitor.spread:.2g} < {cfg.collapse_std}"
    elif status == "completed" and mask_monitor.degenerate_class is not None:
        status = "failed"
        failure = f"degenerate mask: {mask_monitor.describe(table.class_names)}"
    elif status == "completed" and step > start and step == cfg.steps >= cfg.collapse_window:
        # like the monitors, judged only after a full window: runs start at the table prior
        problem, _ = check_final_network(model, dataset, cfg, table.class_names, device)
        if problem:
            failure = problem + _earlier_checkpoints(
                out_dir, step, dataset, cfg, table.class_names, device
            )
            status = "failed"
            warn(f"the final network fails a check: {failure}")
    if status == "completed" and start < cfg.steps and not last_ckpt and is_main:
        save(step)  # pragma: no cover - the loop saves at the last step
    if not last_ckpt and ckpt is not None:
        last_ckpt = str(ckpt.path)
    restored = is_main and record.aside is not None  # e.g. a NaN loss before any checkpoint
    if restored:
        warn(record.put_back(cfg))
    means = {k: v / timed_steps for k, v in totals.items()} if timed_steps else {}
    step_mean = sum(means.values())
    result = TrainResult(
        status=status,
        failure=failure,
        step=step,
        losses=loss_history,
        out_dir=str(out_dir),
        checkpoint=last_ckpt,
        device=device_name,
        warnings=run_warnings,
        blocks_per_s=blocks_per_step / step_mean if step_mean > 0 else 0.0,
        timings=means,
        model=model,
    )
    if is_main:
        if not restored:  # else run.json is the replaced run's again
            _write_run_json(out_dir, result.to_dict())
        record.started = False  # run.json holds the result now
        _emit(callbacks, "on_end", result)
    if world > 1:
        dist.barrier()
    return result


def _earlier_checkpoints(
    out_dir: Path,
    step: int,
    dataset: BlockDataset,
    cfg: TrainConfig,
    class_names: Sequence[str],
    device: torch.device,
) -> str:
    """Which kept checkpoints before ``step`` pass :func:`check_final_network` (the check the
    final network failed), for the failure message: '; earlier checkpoints that pass this
    check: step-…, … (in OUT/checkpoints)' (latest first), '; none of the earlier
    checkpoints (…) passes it', or ''. Names, not paths: the message is shown in the GUI."""
    from lsr.model import load

    kept = by_step(out_dir.joinpath(CHECKPOINTS), newest_first=True)
    earlier = [p for p in kept if p.name != step_name(step)]
    if not earlier:
        return ""
    passing = []
    for path in earlier:
        try:
            net, _ = load(path, device)
        except LsrInputError:  # a damaged older checkpoint is not offered
            continue
        if not check_final_network(net, dataset, cfg, class_names, device)[0]:
            passing.append(path.name)
    if passing:
        where = out_dir / CHECKPOINTS
        return f"; earlier checkpoints that pass this check: {', '.join(passing)} (in {where})"
    return f"; none of the earlier checkpoints ({', '.join(p.name for p in earlier)}) passes it"


#: How torch's DataLoader re-raises a worker's exception: same type, traceback as message.
_WORKER_PREFIX = "Caught LsrInputError in DataLoader worker"
_WORKER_MARK = "LsrInputError: "


def _from_worker(err: LsrInputError) -> LsrInputError:
    """The worker's own one-line error instead of torch's ~20-line wrapped traceback.

    Torch rebuilds the exception in the main process as ``LsrInputError("Caught ...
    Original Traceback ... lsr.errors.LsrInputError: <message>")``; the message the worker
    raised is what follows the last ``LsrInputError: `` of that text.
    """
    text = str(err)
    if not text.startswith(_WORKER_PREFIX) or _WORKER_MARK not in text:
        return err
    return LsrInputError(text.rsplit(_WORKER_MARK, 1)[1].strip())


def _write_run_json(out_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_text(out_dir / RUN_JSON, json.dumps(data, indent=1, default=str) + "\n")
