"""Training in a separate process that outlives its launcher, watched through files.

Why a separate process: a crash, a CUDA out-of-memory or a segfault in training must not
take the viewer down, and the GUI must never wait for a step. Why a plain
``python -m lsr.training_process`` subprocess in its own session rather than a
``multiprocessing`` child: ``multiprocessing`` joins (or kills) its children when the
parent exits, which would make "close napari, keep training" impossible. The child is
started the same way ``spawn`` starts one (a fresh interpreter), so nothing of the GUI
process is inherited.

Everything between the two processes goes through files in the run folder, so a new
napari session can re-attach to a running or finished run::

    RUN/config.json        the TrainConfig of the run (out_dir = RUN)
    RUN/process.json       pid of the training process (and of the job it belongs to)
    RUN/progress.jsonl     one JSON object per line: launch, start, step, checkpoint,
                           warning, error, end (appended; a resume appends a new start)
    RUN/train.log          the child's stdout/stderr: tracebacks, faulthandler dumps
    RUN/STOP               present = please stop after the current step (cancel)
    RUN/run.json, RUN/latest.json, RUN/checkpoints/...   written by :func:`lsr.train.train`

A *job* is one process running several runs one after another (a queue of losses).
Reading the progress file is cheap and non-blocking (:class:`RunMonitor`: one ``stat``,
then only the new bytes); the GUI reads and parses in a worker thread
(:meth:`RunMonitor.read`) and folds the events into the state in its own thread
(:meth:`RunMonitor.apply`).

This module imports neither Qt nor torch at import time (torch only inside the child).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsr.atomic import atomic_write_text
from lsr.errors import LsrInputError
from lsr.slide import slide_name

if TYPE_CHECKING:  # pragma: no cover
    from lsr.counttable import CountTable
    from lsr.train import TrainConfig

CONFIG = "config.json"
PROCESS = "process.json"
EVENTS = "progress.jsonl"
LOG = "train.log"
STOP = "STOP"
TABLE = "count_table.json"
RUN_JSON = "run.json"  # written by lsr.train
LATEST = "latest.json"  # written by lsr.checkpoint

#: Run states. ``queued``: waiting for its job; ``running``; ``completed``, ``cancelled``,
#: ``failed`` (the trainer or the pre-flight check said why); ``died``: the process ended
#: without saying anything (segfault, killed, out of host memory).
ACTIVE = ("queued", "running")
FINISHED = ("completed", "cancelled", "failed", "died")

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".bif", ".png")
GRID_SUFFIXES = (".npy", ".csv", ".tif", ".tiff")
_PROC = Path("/proc")  # Linux: a process's command line (absent on macOS and Windows)
#: How a grid beside a slide ``S.tif`` may be named (tried in this order).
GRID_PATTERNS = ("{stem}_grid{ext}", "{stem}.grid{ext}", "{stem}-grid{ext}")
_NOT_SLIDES = re.compile(r"([._-]grid|_gt|[._-]mask|[._-]probs?)$", re.IGNORECASE)


# ====================================================================== data pairing
def grid_beside(slide: str | os.PathLike[str]) -> Path | None:
    """The grid file next to ``slide`` named by :data:`GRID_PATTERNS`, or None."""
    p = Path(slide)
    stem = slide_name(p)
    for pattern in GRID_PATTERNS:
        for ext in GRID_SUFFIXES:
            candidate = p.with_name(pattern.format(stem=stem, ext=ext))
            if candidate.is_file():
                return candidate
    return None


_GRID_TAG = re.compile(r"[._-]grid$")


def grid_slide_name(grid: str | os.PathLike[str]) -> str | None:
    """The name of the slide a grid file is named for by :data:`GRID_PATTERNS`
    (``S_grid.npy``, ``S.grid.csv``, ``S-grid.tif`` -> ``S``), or None."""
    name = slide_name(grid)
    return name[:-5] if _GRID_TAG.search(name) else None


def find_pairs(folder: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(slide, grid) path pairs of a folder: every slide with a grid beside it, sorted.

    Files that look like grids, ground truths or masks (``*_grid.*``, ``*_gt.*``,
    ``*_mask.*``) are not taken as slides. Raises :class:`LsrInputError` when the folder
    does not exist or holds no pair.
    """
    root = Path(folder)
    if not root.is_dir():
        raise LsrInputError("not a folder", root)
    pairs = []
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES:
            continue
        if _NOT_SLIDES.search(slide_name(p)):
            continue
        grid = grid_beside(p)
        if grid is not None:
            pairs.append((str(p), str(grid)))
    if not pairs:
        raise LsrInputError(
            "no slide with a grid beside it (a slide S.tif needs S_grid.npy, S.grid.csv, ...)",
            root,
        )
    return pairs


def check_data(
    pairs: Iterable[tuple[str, str]], block_px: int, working_mpp: float
) -> list[tuple[int, int]]:
    """Open every slide and grid and check the grid tiles the slide (no torch needed).

    Returns the working-resolution (H, W) of each slide. Raises :class:`LsrInputError`
    naming the file on a missing or unreadable file or a grid that does not fit.
    """
    from lsr.grid import check_sidecar, load_grid
    from lsr.slide import open_slide

    shapes = []
    for slide_path, grid_path in pairs:
        check_sidecar(grid_path, block_px, working_mpp)
        grid = load_grid(grid_path, block_px=block_px)
        with open_slide(slide_path) as slide:
            shape = slide.working_shape(working_mpp)
        grid.check_fits(shape, grid_path)
        shapes.append(shape)
    return shapes


def check_grid_bins(grids: Iterable[str], block_px: int, edges: Sequence[float]) -> None:
    """Refuse a grid of ready bins beyond the count table's (a 10-bin grid, a 5-bin table)
    before a training process starts: there it failed only once the slides were read,
    leaving a failed run folder. Reads the grids only (small), not the slides."""
    from lsr.grid import load_grid

    for grid_path in grids:
        try:
            load_grid(grid_path, block_px=block_px).bins(tuple(edges))
        except LsrInputError as err:
            raise LsrInputError(err.problem, grid_path, err.where) from None


# ====================================================================== run folders
def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, not JSON or not
    an object (a run's own files, read while a process may be writing them)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def run_name(loss: str, distance: str, when: datetime | None = None) -> str:
    """A readable folder name: ``intra_inter-gaussian-nll-20240131-142501``."""
    when = when or datetime.now()
    return f"{loss}-{distance}-{when:%Y%m%d-%H%M%S}"


def _unique(folder: Path, name: str) -> Path:
    path, i = folder / name, 2
    while path.exists():
        path, i = folder / f"{name}-{i}", i + 1
    return path


def prepare_run(
    config: TrainConfig,
    folder: str | os.PathLike[str],
    name: str | None = None,
    table: CountTable | None = None,
) -> Path:
    """Create a new run folder under ``folder`` holding ``config`` (its ``out_dir`` = the run).

    ``table`` (an in-memory count table, e.g. the one shown in the GUI) is saved in the run
    folder and used instead of ``config.table``. Returns the run folder.
    """
    root = Path(folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # "[Errno 17] File exists" said nothing
        raise LsrInputError(
            "a file is in the way: the output folder must be a folder (or a new name)", root
        ) from None
    run = _unique(root, name or run_name(config.loss, config.distance))
    run.mkdir()
    cfg = dataclasses.replace(config, out_dir=str(run), resume=None)
    if table is not None:
        table.to_json(run / TABLE)
        cfg.table = str(run / TABLE)
    atomic_write_text(run / CONFIG, json.dumps(cfg.to_dict(absolute=True), indent=1) + "\n")
    return run


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (raises :class:`LsrInputError` if unreadable)."""
    path = Path(run_dir) / CONFIG
    data = read_json_object(path)
    if data is None:
        raise LsrInputError("not a training run folder (no readable config.json)", path)
    return data


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run has a checkpoint to continue from: ``latest.json``, or a whole
    ``checkpoints/step-N`` of a run killed before it wrote ``latest.json`` (what
    :func:`lsr.checkpoint.resolve` falls back to)."""
    run = Path(run_dir)
    if (run / LATEST).is_file():
        return True
    return any((c / "checkpoint.json").is_file() for c in (run / "checkpoints").glob("step-*"))


def prepare_resume(run_dir: str | os.PathLike[str], steps: int | None = None) -> Path:
    """Make a cancelled/failed run continue: from its checkpoint when it has one.

    ``steps`` raises the total number of steps (``None`` keeps it). Clears the stop request.
    A run that ended before its first checkpoint starts again from scratch in its own folder:
    its ``run.json`` (all it left of a run; the trainer refuses a folder holding one) is
    removed here, not by an ``overwrite`` written into the config, which would replace
    whatever run the folder holds on any later start.
    """
    run = Path(run_dir)
    cfg = read_config(run)
    resumable = has_checkpoint(run)
    cfg["resume"] = str(run) if resumable else None
    cfg.pop("overwrite", None)
    if not resumable:
        (run / RUN_JSON).unlink(missing_ok=True)
    if steps is not None:
        cfg["steps"] = int(steps)
    atomic_write_text(run / CONFIG, json.dumps(cfg, indent=1) + "\n")
    with contextlib.suppress(FileNotFoundError):
        (run / STOP).unlink()
    return run


def request_stop(run_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> None:
    """Ask the training process to stop after its current step (it writes a checkpoint)."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    for run in run_dirs:
        atomic_write_text(Path(run) / STOP, _now() + "\n")


# ====================================================================== processes
def pid_alive(pid: int | None) -> bool:
    """True while process ``pid`` exists and is not a zombie (POSIX and Windows)."""
    if not pid or pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - no Windows CI
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


@dataclass
class TrainingJob:
    """A launched training process and the runs it works through, in order."""

    runs: list[Path]
    process: subprocess.Popen[bytes] | None  # None when re-attached from another session
    pid: int

    @property
    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def cancel(self) -> None:
        """Stop the running run after its current step; queued runs do not start."""
        request_stop(self.runs)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.process is not None:
            return self.process.wait(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while pid_alive(self.pid):
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return None


def launch(run_dirs: Sequence[str | os.PathLike[str]], python: str | None = None) -> TrainingJob:
    """Start one process that trains ``run_dirs`` one after another; return at once.

    The process runs in its own session (no signal from the launcher's terminal, survives
    the launcher's exit); its output goes to ``train.log`` of the first run until each run
    redirects to its own.
    """
    runs = [Path(r).resolve() for r in run_dirs]
    if not runs:
        raise LsrInputError("nothing to train: no run folders")
    for run in runs:
        read_config(run)
        with contextlib.suppress(FileNotFoundError):
            (run / STOP).unlink()
        log = _EventLog(run / EVENTS)  # readers see "queued" before the process starts
        log.write("queued", job=[str(r) for r in runs])
        log.close()
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":  # pragma: no cover
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x00000008
    else:
        kwargs["start_new_session"] = True
    with open(runs[0] / LOG, "ab") as log:
        process = subprocess.Popen(
            [python or sys.executable, "-m", "lsr.training_process", *map(str, runs)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            **kwargs,
        )
    info = {
        "pid": process.pid,
        "job": [str(r) for r in runs],
        "launched": _now(),
        "launcher": os.getpid(),  # napari, say: while it lives, its Trainer watches the job
    }
    for run in runs:
        atomic_write_text(run / PROCESS, json.dumps(info, indent=1) + "\n")
    return TrainingJob(runs, process, process.pid)


def process_pid(run_dir: str | os.PathLike[str]) -> int:
    """The pid of the process launched to train ``run_dir`` (0: never launched, or its
    ``process.json`` unreadable)."""
    return _pid_of(read_json_object(Path(run_dir) / PROCESS) or {})


def _pid_of(info: dict[str, Any], key: str = "pid") -> int:
    try:
        return max(int(info.get(key, 0) or 0), 0)
    except (TypeError, ValueError):
        return 0


def is_training_process(pid: int) -> bool:
    """True when ``pid`` is alive and runs ``lsr.training_process`` (its command line from
    ``/proc``, else from psutil on macOS and Windows; alive when neither can tell): a run
    killed by a reboot keeps its pid in ``process.json``, and another program may hold that
    pid later."""
    if not pid_alive(pid):
        return False
    try:
        return b"lsr.training_process" in (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        pass
    import psutil  # (napari's and dask.distributed's dependency: always there)

    try:
        return any("lsr.training_process" in part for part in psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # access denied, a zombie: cannot tell
        return True


def _ended_in_this_job(run: Path) -> bool:
    """The run's ``run.json`` says it ended, and was written since its job was launched: a
    resumed run keeps its last attempt's "cancelled" until its turn comes."""
    try:
        summary = run / RUN_JSON
        ended = str((read_json_object(summary) or {}).get("status")) in FINISHED
        return ended and summary.stat().st_mtime >= (run / PROCESS).stat().st_mtime
    except OSError:
        return False


def running_runs(folder: str | os.PathLike[str]) -> list[Path]:
    """One run folder per training job still running under ``folder`` (its run folders)
    whose launcher (the napari that started it) is gone or is this process, newest launch
    first: what a Trainer opened in a napari started again should watch. Runs that ended
    (``run.json``) are skipped, and pids that are no training process. Only :func:`launch`
    writes ``process.json``."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    found: dict[int, tuple[float, Path]] = {}
    for run in root.iterdir():
        info = (read_json_object(run / PROCESS) or {}) if run.is_dir() else {}
        pid, launcher = _pid_of(info), _pid_of(info, "launcher")
        if not pid or pid in found:
            continue
        if _ended_in_this_job(run):
            continue  # (the job may go on with a later run: found through that one)
        if launcher and launcher != os.getpid() and pid_alive(launcher):
            continue  # another napari watches it
        if is_training_process(pid):
            found[pid] = ((run / PROCESS).stat().st_mtime, run)
    return [run for _, run in sorted(found.values(), reverse=True)]


def attach(run_dir: str | os.PathLike[str]) -> TrainingJob:
    """The job of an existing run folder (running or not), e.g. after napari restarted."""
    run = Path(run_dir).resolve()
    read_config(run)
    info = read_json_object(run / PROCESS) or {}
    runs = [Path(r) for r in info.get("job", [str(run)])]
    if run not in runs:
        runs = [run]
    return TrainingJob(runs, None, process_pid(run))


# ====================================================================== reading progress
@dataclass
class RunState:
    """What a run's files say about it; updated event by event by :class:`RunMonitor`."""

    run_dir: Path
    name: str
    loss: str = ""
    distance: str = ""
    status: str = "queued"
    step: int = 0
    total_steps: int = 0
    start_step: int = 0
    losses: list[float] = field(default_factory=list)
    blocks_per_s: float = 0.0
    eta_s: float = float("nan")
    elapsed_s: float = 0.0
    device: str = ""
    n_blocks: int = 0
    blocks_per_step: int = 0
    checkpoint: str = ""
    message: str = ""  # failure reason for failed/died runs
    warnings: list[str] = field(default_factory=list)
    started: str = ""
    ended: str = ""
    resumes: list[int] = field(default_factory=list)  # steps a resumed attempt started from

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one progress event into the state."""
        kind = event.get("event")
        if kind == "queued":
            self.status = "queued"
            self.message = ""
        elif kind == "launch":
            self.status = "running"
            self.message = ""
        elif kind == "start":
            self.status = "running"
            self.start_step = int(event.get("start_step", 0))
            self.step = self.start_step
            self.total_steps = int(event.get("total_steps", self.total_steps))
            del self.losses[self.start_step :]  # a resume redoes the steps after its checkpoint
            self.resumes = [r for r in self.resumes if r < self.start_step]
            if self.start_step > 0:
                self.resumes.append(self.start_step)
            self.device = str(event.get("device", ""))
            self.n_blocks = int(event.get("n_blocks", 0))
            self.blocks_per_step = int(event.get("blocks_per_step", 0))
            self.started = str(event.get("time", ""))
            self.message = ""
        elif kind == "step":
            self.step = int(event["step"])
            self.total_steps = int(event.get("total_steps", self.total_steps))
            del self.losses[self.step - 1 :]
            self.losses.append(float(event["loss"]))
            self.blocks_per_s = float(event.get("blocks_per_s", 0.0))
            self.eta_s = float(event.get("eta_s", float("nan")))
            self.elapsed_s = float(event.get("elapsed_s", 0.0))
        elif kind == "checkpoint":
            self.checkpoint = str(event.get("path", ""))
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
        elif kind == "error":
            self.status = "failed"
            self.message = str(event.get("message", "error"))
            self.ended = str(event.get("time", ""))
        elif kind == "end":
            self.status = str(event.get("status", "failed"))
            self.step = int(event.get("step", self.step))
            if event.get("failure"):
                self.message = str(event["failure"])
            if event.get("checkpoint"):
                self.checkpoint = str(event["checkpoint"])
            self.ended = str(event.get("time", ""))


@dataclass
class ProgressBatch:
    """What one read of a progress file found (:meth:`RunMonitor.read`, any thread).

    ``alive``: the job's process was alive *before* the read, so a ``False`` means every
    event it will ever write was read (a truncated read always says ``True``).
    ``restart``: the file was replaced (shorter than what was read): the state starts over.
    ``more``: the read stopped at its byte limit; read again at once for the rest.
    """

    events: list[dict[str, Any]]
    alive: bool
    launched: bool
    restart: bool = False
    more: bool = False


class RunMonitor:
    """Tails one run's ``progress.jsonl``; :meth:`poll` is cheap and never blocks.

    ``job`` (optional) tells whether the process is still alive, so a run whose process
    ended without an ``end`` event is reported as ``died``.

    :meth:`poll` is :meth:`read` (file I/O and JSON parsing; touches only the read position,
    so a worker thread may call it) then :meth:`apply` (folds the events into
    :attr:`state`; call it from the thread that reads the state, e.g. the GUI thread).
    Call :meth:`read` from one thread at a time.
    """

    def __init__(self, run_dir: str | os.PathLike[str], job: TrainingJob | None = None):
        self.run_dir = Path(run_dir)
        self.job = job
        self._offset = 0
        self._partial = b""
        self.state = RunState(self.run_dir, self.run_dir.name)
        cfg = read_json_object(self.run_dir / CONFIG) or {}
        self.state.loss = str(cfg.get("loss", ""))
        self.state.distance = str(cfg.get("distance", ""))
        self.state.total_steps = int(cfg.get("steps", 0) or 0)

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call (already applied to :attr:`state`)."""
        return self.apply(self.read())

    def read(self, max_bytes: int | None = None) -> ProgressBatch:
        """Parse the complete lines appended since the last read (at most ``max_bytes``).

        A partly written last line is kept for the next read; lines that are not JSON
        objects are skipped.
        """
        alive = self._job_alive()  # before reading: a dead process has written everything
        launched = self._launched()
        path = self.run_dir / EVENTS
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        restart = size < self._offset  # the file was replaced: read it again
        if restart:
            self._offset, self._partial = 0, b""
        events: list[dict[str, Any]] = []
        todo = size - self._offset
        more = max_bytes is not None and todo > max_bytes
        if more:
            todo, alive = max_bytes, True  # not the last word yet
        if todo > 0:
            with open(path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(todo)
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(event, dict):
                    events.append(event)
        return ProgressBatch(events, alive, launched, restart, more)

    def apply(self, batch: ProgressBatch) -> list[dict[str, Any]]:
        """Fold a :meth:`read` into :attr:`state`; returns its events (plus ``died``)."""
        if batch.restart:
            s = self.state
            self.state = RunState(self.run_dir, self.run_dir.name, s.loss, s.distance,
                                  total_steps=s.total_steps)  # fmt: skip
        events = list(batch.events)
        for event in events:
            self.state.apply(event)
        if self.state.status == "running" and not batch.alive:
            died = self._died_event()
            self.state.apply(died)
            self.state.status = "died"
            events.append(died)
        if self.state.status == "queued" and batch.launched and not batch.alive:
            self.state.status = "died"
            self.state.message = "the training process ended before this run started"
        return events

    def _launched(self) -> bool:
        return (self.run_dir / PROCESS).exists()

    def _job_alive(self) -> bool:
        if self.job is not None:
            return self.job.alive
        return pid_alive(process_pid(self.run_dir))

    def _died_event(self) -> dict[str, Any]:
        code = self.job.returncode if self.job is not None else None
        if code is not None and code < 0:
            try:
                why = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                why = f"killed by signal {-code}"
            if -code == getattr(signal, "SIGKILL", 9):
                why += " (out of memory?)"
        elif code is not None:
            why = f"exit code {code}"
        else:
            why = "it is no longer running"
        return {
            "event": "error",
            "kind": "died",
            "message": f"the training process ended unexpectedly ({why}); see {self.run_dir / LOG}",
            "time": _now(),
        }


def read_run(run_dir: str | os.PathLike[str]) -> RunState:
    """The state of a run folder from its files (one full read of the progress file)."""
    monitor = RunMonitor(run_dir)
    monitor.poll()
    state = monitor.state
    if not (Path(run_dir) / EVENTS).exists():
        summary = read_json_object(Path(run_dir) / RUN_JSON)
        if summary and summary.get("status") in FINISHED:  # trained by `lsr train`
            state.status = str(summary["status"])
            state.step = int(summary.get("step", 0))
            state.losses = [float(v) for v in summary.get("losses", [])]
            state.checkpoint = str(summary.get("checkpoint", ""))
            state.message = str(summary.get("failure", ""))
    return state


def list_runs(folder: str | os.PathLike[str]) -> list[RunState]:
    """Every run folder directly under ``folder`` (newest first)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    runs = [read_run(p) for p in root.iterdir() if (p / CONFIG).is_file()]
    return sorted(runs, key=lambda s: (s.run_dir / CONFIG).stat().st_mtime, reverse=True)


# ====================================================================== model registry
@dataclass
class ModelInfo:
    """One trained model of an output folder, as the model list and compare widget show it."""

    name: str
    run_dir: str
    checkpoint: str  # checkpoint folder (model.safetensors + checkpoint.json)
    loss: str
    distance: str
    steps: int
    date: str  # ISO 8601, local time
    final_loss: float | None
    status: str  # completed (finished_only) or cancelled/failed with a checkpoint
    device: str = ""
    block_px: int = 0
    working_mpp: float = 0.0
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _model_of(
    run: Path, finished_only: bool, problems: list[str] | None = None
) -> ModelInfo | None:
    from lsr.checkpoint import read_metadata

    if not has_checkpoint(run):
        return None
    try:
        folder, meta = read_metadata(run)
    except LsrInputError as err:
        if problems is not None:
            problems.append(str(err))
        return None
    summary = read_json_object(run / RUN_JSON) or {}
    status = str(summary.get("status", "running"))
    if finished_only and status != "completed":
        return None
    if status not in FINISHED and pid_alive(process_pid(run)):
        return None  # still training: not a finished model
    losses = summary.get("losses") or []
    final = losses[-1] if losses else meta.get("final_loss")
    final_f = float(final) if final is not None and math.isfinite(float(final)) else None
    stamp = (folder / "checkpoint.json").stat().st_mtime
    cfg = meta.get("config", {})
    return ModelInfo(
        name=run.name,
        run_dir=str(run),
        checkpoint=str(folder),
        loss=str(meta.get("loss", cfg.get("loss", ""))),
        distance=str(meta.get("distance", cfg.get("distance", ""))),
        steps=int(meta["step"]),
        date=datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds"),
        final_loss=final_f,
        status=status,
        device=str(meta.get("device", "")),
        block_px=int(meta.get("block_px", cfg.get("block_px", 0)) or 0),
        working_mpp=float(meta.get("working_mpp", cfg.get("working_mpp", 0.0)) or 0.0),
        class_names=list(meta.get("class_names", [])),
    )


def list_models(
    folder: str | os.PathLike[str], finished_only: bool = True, problems: list[str] | None = None
) -> list[ModelInfo]:
    """Trained models in an output folder (the folder itself or its run folders), newest first.

    A model is a run folder with a checkpoint (``latest.json``); ``finished_only`` keeps
    runs whose ``run.json`` says ``completed``; otherwise cancelled and failed runs with a
    checkpoint are listed too (never a run still training). Unreadable checkpoints are
    skipped; ``problems``, when given, receives one line per skipped run ("<file>: <what is
    wrong>"), so a list can say why a model the user expects is not in it.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():  # not yet made (the Trainer's output folder before a run): no models
        return []
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    models = [m for p in candidates if (m := _model_of(p, finished_only, problems)) is not None]
    return sorted(models, key=lambda m: m.date, reverse=True)


# ====================================================================== device probe
def probe_device(name: str = "auto", timeout: float = 120.0) -> str:
    """What ``select_device(name)`` finds, asked in a fresh process (the GUI never imports
    CUDA): e.g. ``"CUDA: NVIDIA H100 80GB HBM3"``, ``"MPS"``, ``"CPU (8 threads)"``.

    Returns ``"unavailable: <reason>"`` when the device cannot be used.
    """
    code = (
        "import sys\n"
        "from lsr.device import describe_device, select_device\n"
        "from lsr.errors import LsrInputError\n"
        "try:\n"
        f"    print(describe_device(select_device({name!r})))\n"
        "except LsrInputError as err:\n"
        "    print('unavailable: ' + str(err))\n"
    )
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"unavailable: {err}"
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return f"unavailable: {(out.stderr.strip().splitlines() or ['no answer'])[-1]}"
    return lines[-1]


# ====================================================================== the child process
class _EventLog:
    """Appends progress events, one JSON line each, flushed at once (readers tail it)."""

    def __init__(self, path: Path):
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, event: str, **data: Any) -> None:
        record = {"event": event, "time": _now(), **data}
        self.fh.write(json.dumps(record, default=str, allow_nan=True) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class _ProgressCallback:
    """The :class:`lsr.train.TrainCallback` of the child: events to the file, STOP to "stop"."""

    def __init__(self, log: _EventLog, stop_path: Path):
        self.log = log
        self.stop_path = stop_path

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def on_start(self, event: Any) -> None:
        self.log.write(
            "start",
            start_step=event.start_step,
            total_steps=event.config.steps,
            device=event.device,
            n_blocks=event.n_blocks,
            blocks_per_step=(event.config.batch_size or 0) * event.world_size,
            bin_counts={str(k): v for k, v in event.bin_counts.items()},
            loss=event.config.loss,
            distance=event.config.distance,
        )

    def on_step(self, event: Any) -> str | None:
        self.log.write(
            "step",
            step=event.step,
            total_steps=event.total_steps,
            loss=event.loss,
            lr=event.lr,
            blocks_per_s=event.blocks_per_s,
            eta_s=event.eta_s,
            elapsed_s=event.elapsed_s,
        )
        return "stop" if self.stop_path.exists() else None

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.log.write("checkpoint", path=str(path), step=step)

    def on_end(self, result: Any) -> None:
        for message in result.warnings:
            self.log.write("warning", message=message)
        self.log.write(
            "end",
            status=result.status,
            failure=result.failure,
            step=result.step,
            checkpoint=result.checkpoint,
            final_loss=result.losses[-1] if result.losses else None,
            blocks_per_s=result.blocks_per_s,
        )


@contextlib.contextmanager
def _output_to(path: Path) -> Any:
    """Send this process's stdout/stderr (file descriptors 1 and 2) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _describe_error(err: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) for a person."""
    if "nan" in str(err).lower().split() or "NaN" in str(err):
        return "nan", f"the network diverged (NaN); try a lower learning rate. {err}"
    if isinstance(err, LsrInputError):
        return "input", str(err)
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else name
    if "OutOfMemory" in name or "out of memory" in str(err).lower():
        return "out-of-memory", f"out of memory: {text}"
    if isinstance(err, MemoryError):
        return "out-of-memory", "out of host memory"
    if isinstance(err, (FileNotFoundError, PermissionError)):
        return "input", f"{name}: {err}"
    return "crash", f"{name}: {text}"


def run_one(run_dir: str | os.PathLike[str]) -> str:
    """Train one run folder in this process, reporting to its files; returns the status."""
    import faulthandler

    run = Path(run_dir)
    log = _EventLog(run / EVENTS)
    info = read_json_object(run / PROCESS) or {}
    info.update({"pid": os.getpid(), "started": _now()})
    atomic_write_text(run / PROCESS, json.dumps(info, indent=1) + "\n")
    status = "failed"
    with _output_to(run / LOG), open(run / LOG, "a") as fault_fh:
        faulthandler.enable(fault_fh)
        print(f"[{_now()}] training {run} (pid {os.getpid()})", flush=True)
        try:
            if (run / STOP).exists():
                log.write("end", status="cancelled", failure="", step=_latest_step(run))
                return "cancelled"
            log.write("launch", pid=os.getpid())
            cfg_dict = read_config(run)
            pairs = [(d["slide"], d["grid"]) for d in cfg_dict.get("data", [])]
            if not pairs:
                raise LsrInputError("no training data: give at least one slide and grid")
            check_data(
                pairs, int(cfg_dict.get("block_px", 240)), float(cfg_dict.get("working_mpp", 4.17))
            )
            from lsr.train import TrainConfig, train

            cfg = TrainConfig.from_dict(cfg_dict, path=run / CONFIG)
            cfg.out_dir = str(run)
            result = train(cfg, [_ProgressCallback(log, run / STOP)])
            status = result.status
            print(f"[{_now()}] {status} at step {result.step} {result.failure}", flush=True)
        except BaseException as err:  # everything is reported (and Ctrl-C re-raised)
            kind, reason = _describe_error(err)
            traceback.print_exc()
            log.write("error", kind=kind, message=reason, log=str(run / LOG))
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            status = "failed"
        finally:
            faulthandler.disable()
            log.close()
    return status


def _latest_step(run: Path) -> int:
    return int((read_json_object(run / LATEST) or {}).get("step", 0))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lsr.training_process RUN [RUN ...]``: train the runs in order."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__)
        return 2
    statuses = [run_one(run) for run in args]
    return 0 if all(s in ("completed", "cancelled") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
