"""Training checkpoints: safetensors + JSON, written atomically, verified on reading.

Layout of a training output folder::

    OUT/latest.json                     {"checkpoint": "checkpoints/step-000500", "step": 500}
    OUT/checkpoints/step-000500/
        checkpoint.json                 metadata: format, step, config, count table, loss,
                                        distance, seed, network, git revision, versions,
                                        and the size + SHA-256 of every file below
        model.safetensors               network weights (and buffers)
        optimizer.safetensors           optimizer tensors (``state/<param>/<name>``)
        trainer.json                    optimizer scalars and param groups, sampler position,
                                        grad-scaler state, collapse monitor, progress
        rng.safetensors                 torch RNG states (CPU and CUDA)

A checkpoint folder is assembled under a temporary name and renamed into place in one
step (its files are written with :mod:`lsr.atomic`); ``latest.json`` is replaced
atomically after that, so a crash never leaves a half checkpoint that looks complete.
Reading verifies sizes and hashes: a truncated or foreign checkpoint raises
:class:`LsrInputError`. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lsr.atomic import atomic_write_bytes, atomic_write_text, make_temp_dir
from lsr.errors import LsrInputError

FORMAT = "napari-lsr checkpoint"
VERSION = 1
METADATA = "checkpoint.json"
MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER = "trainer.json"
RNG = "rng.safetensors"
LATEST = "latest.json"
CHECKPOINTS = "checkpoints"


@dataclass
class Checkpoint:
    """Everything one checkpoint holds, as read back."""

    path: Path
    metadata: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    trainer_state: dict[str, Any]
    rng_state: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.metadata["step"])


# ---------------------------------------------------------------------- provenance
def git_revision() -> str:
    """The source tree's git commit (``+dirty`` if modified), or ``""`` when unknown."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run."""
    import numpy
    import safetensors

    import lsr

    return {
        "lsr": lsr.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------- optimizer state
def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and scalars (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pid}/{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in rest.get("scalars", {}).items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


# ---------------------------------------------------------------------- writing
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def by_step(folder: Path, *, newest_first: bool = False) -> list[Path]:
    """The ``step-N`` checkpoint folders in ``folder``, ordered by N (the name is padded to
    six digits only, so past step 999 999 name order is not step order)."""
    found = [p for p in folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=newest_first)


def write_checkpoint(
    out_dir: str | os.PathLike[str],
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    rng_state: dict[str, torch.Tensor] | None = None,
    keep: int | None = 3,
) -> Path:
    """Write checkpoint ``step`` under ``out_dir/checkpoints`` and point ``latest.json`` at it.

    ``metadata`` is stored in ``checkpoint.json`` (with format, step and file hashes
    added); keep the ``keep`` newest checkpoints (``None``: all). Returns the folder.
    """
    out = Path(out_dir)
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_rest = _flatten_optimizer(optimizer_state)
    payload = {
        MODEL: st_save({k: v.detach().cpu().contiguous() for k, v in model_state.items()}),
        OPTIMIZER: st_save(opt_tensors),
        TRAINER: (json.dumps({**trainer_state, "optimizer": opt_rest}, indent=1) + "\n").encode(),
        RNG: st_save({k: v.cpu().contiguous() for k, v in (rng_state or {}).items()}),
    }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **metadata,
        "step": int(step),
        "files": {n: {"bytes": len(b), "sha256": _sha256(b)} for n, b in payload.items()},
    }
    final = root / step_name(step)
    tmp = make_temp_dir(f".{final.name}.tmp-", root)
    try:
        for name, data in payload.items():
            atomic_write_bytes(tmp / name, data)
        atomic_write_text(tmp / METADATA, json.dumps(meta, indent=1, default=str) + "\n")
        if final.exists():
            trash = _set_aside(final)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest = {"checkpoint": f"{CHECKPOINTS}/{final.name}", "step": int(step)}
    atomic_write_text(out / LATEST, json.dumps(latest) + "\n")
    if keep is not None:
        olds = [p for p in by_step(root) if p != final]
        for old in olds[: max(len(olds) - (keep - 1), 0)]:
            # renamed first: a process killed while deleting leaves a hidden .step-N.old-…
            # (removed by the next run), never a half-deleted step-N under its own name
            with contextlib.suppress(OSError):
                shutil.rmtree(_set_aside(old), ignore_errors=True)
    return final


def _set_aside(folder: Path) -> Path:
    """Move checkpoint ``folder`` into a new hidden ``.<name>.old-…`` folder beside it (one
    rename, so it is either whole under its name or gone from it); returns that folder."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    try:
        os.replace(folder, trash / folder.name)
    except OSError:
        shutil.rmtree(trash, ignore_errors=True)
        raise
    return trash


# ---------------------------------------------------------------------- reading
def resolve(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder of ``path``: an output folder, a checkpoint folder or a file in one."""
    p = Path(path)
    if not p.exists():
        raise LsrInputError("checkpoint not found", p)
    if p.is_file():
        if not ((p.parent / METADATA).exists() or (p.parent / LATEST).exists()):
            raise LsrInputError(
                "not an lsr model: give a training folder or a checkpoint folder (one with "
                f"{METADATA})",
                p,
            )
        p = p.parent
    if (p / METADATA).exists():
        return p
    latest = p / LATEST
    if latest.exists():
        try:
            rel = json.loads(latest.read_text(encoding="utf-8"))["checkpoint"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise LsrInputError("malformed latest.json", latest) from None
        if not isinstance(rel, str) or not rel:
            raise LsrInputError(f"malformed latest.json (checkpoint {rel!r})", latest)
        target = p / rel
        if not (target / METADATA).exists():
            what = "has no " + METADATA if target.is_dir() else "is missing"
            raise LsrInputError(
                f"latest.json points at checkpoint '{rel}', which {what}{_others(p, target)}",
                latest,
            )
        return target
    # a run killed between its first checkpoint and latest.json: the checkpoint is whole
    # (it took its name in one rename, last), so the run resumes from it
    whole = [c for c in by_step(p / CHECKPOINTS, newest_first=True) if (c / METADATA).exists()]
    if whole:
        return whole[0]
    raise LsrInputError(f"not an lsr checkpoint or training folder (no {METADATA} or {LATEST})", p)


def training_folder(path: str | os.PathLike[str]) -> Path:
    """The training output folder a checkpoint belongs to (where a resumed run keeps writing).

    ``OUT`` for ``OUT``, ``OUT/checkpoints/step-N`` or a file in it; a checkpoint folder
    that is not under a ``checkpoints/`` folder is its own training folder.
    """
    folder = resolve(path)
    if folder.parent.name == CHECKPOINTS:
        return folder.parent.parent
    return folder


def _read_verified(folder: Path, name: str, meta: dict[str, Any]) -> bytes:
    path = folder / name
    info = meta.get("files", {}).get(name)
    if info is None:
        raise LsrInputError(f"{METADATA} does not list {name}", folder)
    if not path.exists():
        raise LsrInputError("missing checkpoint file", path)
    data = path.read_bytes()
    if len(data) != info.get("bytes"):
        problem = f"file is truncated or extended ({len(data)} bytes, expected {info.get('bytes')})"
    elif _sha256(data) != info.get("sha256"):
        problem = "file content was modified or damaged (its SHA-256 differs from the checkpoint's)"
    else:
        return data
    raise LsrInputError(problem + _others(folder.parent, folder), path)


def _others(checkpoints: Path, broken: Path) -> str:
    """'; intact-looking older checkpoints: …' to offer when one checkpoint is unusable."""
    if checkpoints.name != CHECKPOINTS:
        checkpoints = checkpoints / CHECKPOINTS
    if not checkpoints.is_dir():
        return ""
    others = [
        c
        for c in by_step(checkpoints, newest_first=True)
        if (c / METADATA).exists() and c != broken
    ]
    if not others:
        return ""
    listed = ", ".join(str(c) for c in others[:3])
    return f"; other checkpoints of this run: {listed} (give one as --model or --resume)"


def _load_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise LsrInputError(f"not a valid safetensors file ({err})", path) from None


def read_metadata(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``(checkpoint folder, checkpoint.json)`` after checking it is one of ours."""
    folder = resolve(path)
    meta_path = folder / METADATA
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LsrInputError(f"malformed checkpoint metadata ({err})", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LsrInputError(f'not an lsr checkpoint (no "format": "{FORMAT}")', meta_path)
    version = meta.get("version", -1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise LsrInputError(f"malformed checkpoint metadata (version {version!r})", meta_path)
    if version > VERSION:
        raise LsrInputError(
            f"checkpoint version {meta.get('version')} is newer than this lsr ({VERSION})",
            meta_path,
        )
    for key in ("step", "model", "files"):
        if key not in meta:
            raise LsrInputError(f"checkpoint metadata lacks '{key}'", meta_path)
    kinds = {"step": int, "model": dict, "files": dict}
    for key, kind in kinds.items():
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise LsrInputError(
                f"malformed checkpoint metadata ('{key}' should be {kind.__name__}, got "
                f"{type(meta[key]).__name__})",
                meta_path,
            )
    if meta.get("working_mpp") is not None:  # a corrupt scale must not read as "unrecorded"
        from lsr.slide import check_mpp

        check_mpp(meta["working_mpp"], meta_path, name="working_mpp", ceiling=False)
    return folder, meta


def read_model(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata only (what inference needs)."""
    folder, meta = read_metadata(path)
    state = _load_tensors(_read_verified(folder, MODEL, meta), folder / MODEL)
    meta = {**meta, "path": str(folder)}
    return state, meta


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Everything needed to resume training (all files verified)."""
    folder, meta = read_metadata(path)
    model_state = _load_tensors(_read_verified(folder, MODEL, meta), folder / MODEL)
    opt_tensors = _load_tensors(_read_verified(folder, OPTIMIZER, meta), folder / OPTIMIZER)
    rng = _load_tensors(_read_verified(folder, RNG, meta), folder / RNG)
    try:
        trainer = json.loads(_read_verified(folder, TRAINER, meta).decode("utf-8"))
        opt_rest = trainer.pop("optimizer")
        optimizer_state = _unflatten_optimizer(opt_tensors, opt_rest)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError, TypeError) as err:
        raise LsrInputError(f"malformed trainer state ({err})", folder / TRAINER) from None
    return Checkpoint(folder, meta, model_state, optimizer_state, trainer, rng)


def rng_state() -> dict[str, torch.Tensor]:
    """Torch's global RNG states (CPU, and CUDA when in use) as tensors. CUDA's only once
    this process has started CUDA: asking for them starts it (a CPU run on a GPU machine
    took GPU memory and start-up time for nothing)."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with contextlib.suppress(RuntimeError):
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                out[f"cuda{i}"] = s
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore :func:`rng_state` (CUDA states only where the GPUs exist)."""
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda{i}" in state:
                torch.cuda.set_rng_state(state[f"cuda{i}"], i)
