"""Per-slide prediction outputs and the cohort driver behind ``lsr predict``.

For one slide, :func:`predict_to_folder` runs :func:`lsr.infer.predict_slide` and writes,
in ``DIR/<slide name>/``:

- ``probability.tif``: cancer probability at the working resolution as a tiled pyramidal
  TIFF with the working pixel size in its resolution tags; uint8 ``round(255 p)`` by default
  (4× smaller than float32, what QuPath and napari display directly; ``probability_dtype=
  "float32"`` keeps the exact values);
- ``mask.tif``: the predicted cancer mask ``p ≥ threshold`` (0.5) as uint8 0/255, computed
  from the float probabilities (not the quantised ones);
- ``boundaries.geojson``: the mask's outline as QuPath annotations in *level-0* slide pixels
  (holes kept, simplified, fragments below ``min_area_mm2`` dropped);
- ``summary.json``: slide, pixel sizes, model metadata, cancer area in mm², timings, and
  ``"status": "complete"``, completed last: a folder with a complete summary and all four
  outputs, made by the same weights with the same result-changing options, is skipped on
  re-runs.

``summary.json`` is written first with ``"status": "running"`` (the outputs of an earlier
run are removed then: they no longer describe the folder). In a cohort
(:func:`predict_one`), a failure turns it into ``"failed"`` and writes ``error.txt`` (the
traceback) and never stops the other slides; :func:`predict_to_folder` itself raises. A
folder holding files under these names without a ``summary.json`` of ours is someone
else's: it is refused, never written into, unless an earlier version left it (see
:func:`adopt_earlier_run`).
:func:`predict_cohort` runs many slides in this process or on dask.distributed (a
``LocalCluster`` or any scheduler address); each task loads the model from its path, so no
model is pickled across processes. ``DIR/cohort.json`` records every slide's status.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lsr.atomic import atomic_write_text, check_replaceable, remove_leftover_temps
from lsr.errors import LsrInputError
from lsr.slide import (
    PYRAMID_STAGE_PREFIX,
    WORKING_MPP,
    Slide,
    file_stamp,
    open_slide,
    slide_name,
    write_pyramidal_tiff,
)

SUMMARY_FORMAT = "napari-lsr slide prediction"
SUMMARY_VERSION = 1
PROBABILITY = "probability.tif"
MASK = "mask.tif"
BOUNDARIES = "boundaries.geojson"
SUMMARY = "summary.json"
ERROR = "error.txt"
COHORT = "cohort.json"
#: Seconds a temporary output or pyramid staging folder must be unchanged before a new run
#: of its slide takes it for a killed run's and deletes it (a live writer changes its
#: files every few seconds).
LEFTOVER_S = 600.0
COHORT_FORMAT = "napari-lsr cohort prediction"
OUTPUTS: tuple[str, ...] = (PROBABILITY, MASK, BOUNDARIES, SUMMARY)
_BAND_ROWS = 1024  # working-resolution rows handled at once when post-processing
PREDICTION_CLASS = "LSR prediction"
"""QuPath class of a model whose loss is not recorded (never ``Tumor``: that is the user's)."""
MPP_TOLERANCE = 0.05
"""Two pixel sizes further apart than this (relative) are a different scale: warned about."""


def parse_tile(tile: int | str) -> int | str:
    """``"auto"`` or a tile side ≥ 16 working px (also from text such as ``"2048"``)."""
    if isinstance(tile, str):
        text = tile.strip().lower()
        if text == "auto":
            return "auto"
        try:
            tile = int(text)
        except ValueError:
            raise LsrInputError(f"tile must be 'auto' or a number of px, got {tile!r}") from None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16:
        raise LsrInputError(f"tile must be 'auto' or at least 16 working px, got {tile!r}")
    return int(tile)


@dataclass
class PredictOptions:
    """Settings of a prediction run (recorded in every summary).

    ``mpp``: level-0 µm/px overriding the slide's metadata (None: from the file; a value more
    than 5 % off the file's own is used, with a warning in the summary).
    ``working_mpp``: µm/px of the network's input (None: the one the model was trained at,
    from its checkpoint; another value is used with a warning). ``tile``/``halo``/``batch_size``/
    ``device``/``tile_memory_mib``: see :func:`lsr.infer.predict_slide` (``tile="auto"``: as
    large as ``tile_memory_mib`` of activations allows; ``halo`` None: the model's). ``tissue``:
    ``"auto"`` (skip background tiles found on a thumbnail) or ``"none"``. ``threshold``:
    probability for the mask. ``simplify_px``: boundary simplification tolerance in working
    px. ``min_area_mm2``: polygons smaller than this are dropped. ``probability_dtype``:
    ``"uint8"`` (0-255) or ``"float32"``. ``torch_threads``: CPU threads per slide (None:
    PyTorch's default).
    """

    mpp: float | None = None
    working_mpp: float | None = None
    tile: int | str = "auto"
    halo: int | None = None
    batch_size: int = 1
    device: str = "auto"
    tile_memory_mib: float | None = None
    tissue: str = "auto"
    threshold: float = 0.5
    simplify_px: float = 1.0
    min_area_mm2: float = 0.01
    probability_dtype: str = "uint8"
    read_threads: int = 1
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.tissue not in ("auto", "none"):
            raise LsrInputError(f"tissue must be 'auto' or 'none', got {self.tissue!r}")
        if self.probability_dtype not in ("uint8", "float32"):
            raise LsrInputError(
                f"probability_dtype must be 'uint8' or 'float32', got {self.probability_dtype!r}"
            )
        if not 0 < self.threshold < 1:
            raise LsrInputError(f"threshold must lie in (0, 1), got {self.threshold}")
        self.tile = parse_tile(self.tile)
        if self.tile_memory_mib is not None and not self.tile_memory_mib > 0:
            raise LsrInputError(f"tile_memory_mib must be > 0, got {self.tile_memory_mib}")
        if self.min_area_mm2 < 0 or self.simplify_px < 0:
            raise LsrInputError("min_area_mm2 and simplify_px must be ≥ 0")
        for key in ("mpp", "working_mpp"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < 1e4):
                raise LsrInputError(f"{key} must be a positive number of µm per pixel, got {value}")
        if int(self.batch_size) < 1 or int(self.read_threads) < 1:
            raise LsrInputError(
                f"batch_size and read_threads must be ≥ 1, got {self.batch_size}, "
                f"{self.read_threads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideResult:
    """What happened to one slide: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    slide: str
    name: str
    status: str
    seconds: float = 0.0
    error: str = ""
    cancer_area_mm2: float | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("summary")
        return d


# --- names and state of output folders ------------------------------------------------------


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The folder's ``summary.json`` if it is a complete prediction with all outputs, else None."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT:
        return None
    if summary.get("status") != "complete":
        return None
    if not all((folder / name).is_file() for name in OUTPUTS):
        return None
    return summary


def summary_status(folder: str | os.PathLike[str]) -> str | None:
    """The ``status`` of ``folder``'s ``summary.json`` when lsr predict wrote it
    (``"complete"``, ``"running"``, ``"failed"``), else None (none, unreadable, another's)."""
    try:
        summary = json.loads((Path(folder) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("format") != SUMMARY_FORMAT:
        return None
    return str(summary.get("status"))


def _is_ours(folder: Path) -> bool:
    """Whether ``folder`` holds a ``summary.json`` of lsr predict (any status)."""
    return summary_status(folder) is not None


def _write_state(folder: Path, status: str, slide: str | None, **extra: str) -> None:
    """A ``summary.json`` that only says how the slide stands (``"running"``, ``"failed"``):
    it marks the folder as lsr predict's until a complete summary replaces it."""
    doc: dict[str, Any] = {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION,
                           "status": status}  # fmt: skip
    if slide is not None:
        doc["slide"] = str(Path(slide).resolve())
    atomic_write_text(folder / SUMMARY, json.dumps({**doc, **extra}, indent=1) + "\n")


def check_output_folder(folder: str | os.PathLike[str]) -> None:
    """Raise unless lsr predict may write a slide's outputs into ``folder``: it does not
    exist, holds none of the output names, or holds an earlier prediction of ours.

    Why: a user's ``boundaries.geojson`` (a QuPath export) or notes in ``summary.json`` in
    a folder named like the slide would otherwise be replaced without a word.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LsrInputError("is a file where the slide's output folder goes", folder)
    if not folder.is_dir() or _is_ours(folder) or _earlier_versions(folder):
        return
    theirs = [name for name in (*OUTPUTS, ERROR) if (folder / name).exists()]
    if theirs:
        raise LsrInputError(
            f"holds {', '.join(theirs)} without a summary.json of lsr predict, so they may be "
            "someone else's; not replaced: choose another --out, or move them (an lsr predict "
            "of an earlier version interrupted here: delete them)",
            folder,
        )


def check_same_slide(folder: str | os.PathLike[str], slide: str | os.PathLike[str]) -> None:
    """Raise when ``folder`` holds the complete prediction of another slide of the same name
    whose file is still there (``siteA/case.tif`` predicted, then ``siteB/case.tif`` into the
    same ``--out``: siteB's outputs replaced siteA's without a word). A slide that moved
    (its old file gone) is predicted again as before; ``--overwrite`` replaces it."""
    done = read_summary(folder)
    other = None if done is None else done.get("slide")
    if other is None or _same_path(other, slide) or not Path(other).exists():
        return
    raise LsrInputError(
        f"holds the prediction of another slide of the same name, {other}; not replaced by "
        f"that of {slide}: choose another --out, or give --overwrite to replace it",
        folder,
    )


def _earlier_versions(folder: Path) -> bool:
    """Whether ``folder`` is a slide folder an earlier lsr predict left without a summary
    (it removed a failed or interrupted slide's summary): the ``cohort.json`` beside it lists
    it, or all it holds of ours is an ``error.txt`` traceback."""
    if _in_our_cohort(folder):
        return True
    theirs = [name for name in (*OUTPUTS, ERROR) if (folder / name).exists()]
    return theirs == [ERROR] and _is_our_traceback(folder / ERROR)


def adopt_earlier_run(folder: str | os.PathLike[str], slide: str | None = None) -> None:
    """Give a slide folder of an earlier version (:func:`_earlier_versions`) a ``"failed"``
    summary, so it stays recognised as ours once this run's ``cohort.json`` replaces the one
    that listed it; its files are kept until the slide is redone."""
    folder = Path(folder)
    if folder.is_dir() and not _is_ours(folder) and _earlier_versions(folder):
        why = "an earlier lsr predict of this slide did not complete"
        _write_state(folder, "failed", slide, error=why)


def _in_our_cohort(folder: Path) -> bool:
    """Whether the ``cohort.json`` beside ``folder`` (lsr predict's, of any version) lists
    it: then its files are an earlier run's, e.g. a failure of a version that removed the
    summary of a failed slide."""
    try:
        doc = json.loads((folder.parent / COHORT).read_text(encoding="utf-8"))
        return doc.get("format") == COHORT_FORMAT and any(
            s.get("name") == folder.name for s in doc.get("slides", [])
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _is_our_traceback(path: Path) -> bool:
    """An ``error.txt`` as lsr predict writes it (a Python traceback), e.g. the only trace of
    a slide that failed first in a cohort run of an earlier version."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(64).startswith("Traceback (most recent call last)")
    except OSError:
        return False


def _claim_folder(folder: Path, slide_path: str | os.PathLike[str]) -> None:
    """Mark ``folder`` as this run's (``"status": "running"``) and remove an earlier run's
    outputs, so the folder never mixes two runs (a failed re-run left the old mask beside
    the new probability map, and the old boundaries for QuPath's batch import)."""
    check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_state(folder, "running", str(slide_path))
    for name in (PROBABILITY, MASK, BOUNDARIES, ERROR):
        (folder / name).unlink(missing_ok=True)
    # and what a killed run's writes left (SIGKILL skips their clean-up), once untouched for
    # LEFTOVER_S: another lsr predict may be writing this slide's folder right now
    remove_leftover_temps(
        folder, {PROBABILITY, MASK, BOUNDARIES, ERROR, SUMMARY}.__contains__,
        min_age_s=LEFTOVER_S, staging_prefixes=(PYRAMID_STAGE_PREFIX,),
    )  # fmt: skip


def _mark_failed(folder: Path, slide_path: str, message: str, details: str) -> None:
    """Record a failed slide: ``summary.json`` says ``"failed"``, ``error.txt`` holds
    ``details``, no output of an earlier run is left. Someone else's folder is untouched."""
    try:
        _claim_folder(folder, slide_path)
    except (LsrInputError, OSError):
        return
    with contextlib.suppress(OSError):
        _write_state(folder, "failed", slide_path, error=message)
        atomic_write_text(folder / ERROR, details)


# --- outputs of one slide -------------------------------------------------------------------


class _Quantised:
    """Lazy uint8 view ``round(255 p)`` of an (H, W) float probability array (row slices)."""

    def __init__(self, prob: Any):
        self.prob = prob
        self.shape = tuple(prob.shape)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        p = np.asarray(self.prob[key], dtype=np.float32)
        return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


class _Thresholded:
    """Lazy bool view ``p ≥ threshold`` of an (H, W) probability array (row slices)."""

    def __init__(self, prob: Any, threshold: float):
        self.prob, self.threshold = prob, float(threshold)
        self.shape = tuple(prob.shape)
        self.dtype = np.dtype(np.bool_)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.prob[key]) >= self.threshold


def _mask_of(prob: Any, threshold: float) -> np.ndarray:
    """(H, W) bool mask, computed band by band from a memory-mapped probability map."""
    mask = np.empty(prob.shape, dtype=bool)
    for y in range(0, prob.shape[0], _BAND_ROWS):
        mask[y : y + _BAND_ROWS] = np.asarray(prob[y : y + _BAND_ROWS]) >= threshold
    return mask


def _off(a: float, b: float) -> bool:
    """True when two pixel sizes differ by more than :data:`MPP_TOLERANCE` (relative)."""
    return abs(a - b) > MPP_TOLERANCE * max(a, b)


def resolve_working_mpp(
    options: PredictOptions, metadata: dict[str, Any]
) -> tuple[float, list[str]]:
    """(µm/px to predict at, warnings): the option, else the model's, else :data:`WORKING_MPP`.

    A network sees tissue at the scale it was trained at; another scale is allowed (to
    experiment) but never silent.
    """
    trained = metadata.get("working_mpp")
    trained = float(trained) if isinstance(trained, (int, float)) and trained > 0 else None
    if options.working_mpp is None:
        return (trained or WORKING_MPP), []
    chosen = float(options.working_mpp)
    if trained is not None and _off(chosen, trained):
        return chosen, [
            f"predicting at {chosen:g} µm/px, but the model was trained at {trained:g} µm/px: "
            f"tissue looks {trained / chosen:.2g}x its training size to the network"
        ]
    return chosen, []


def slide_warnings(slide: Slide, working_mpp: float) -> list[str]:
    """Pixel-size problems of one slide worth telling the user (scale overridden, too coarse)."""
    notes = []
    if slide.file_mpp is not None and _off(slide.mpp, slide.file_mpp):
        notes.append(
            f"--mpp {slide.mpp:g} overrides the file's own {slide.file_mpp:g} µm/px: areas and "
            "the scale the network sees follow --mpp"
        )
    if slide.mpp > working_mpp * (1 + MPP_TOLERANCE):
        notes.append(
            f"the slide ({slide.mpp:g} µm/px) is coarser than the model's {working_mpp:g} "
            f"µm/px: it is upsampled {slide.mpp / working_mpp:.2g}x and holds less detail "
            "than the network was trained on"
        )
    return notes


def _boundary_class(metadata: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(key, {key: QuPath class name}) of a model's boundaries: named after its loss
    (``Intra+inter-instance``, ... as :data:`lsr.geojson.DEFAULT_NAMES`; the Compare export
    adds the run name), never plain ``Tumor``, which is the ground truth's and the user's
    own annotations' class."""
    from lsr.geojson import DEFAULT_NAMES

    key = str(metadata.get("loss") or "prediction")
    if key in DEFAULT_NAMES and key not in ("ground_truth", "low_res"):
        return key, {key: DEFAULT_NAMES[key]}
    return key, {key: PREDICTION_CLASS if key == "prediction" else f"{PREDICTION_CLASS} ({key})"}


def _model_sha256(metadata: dict[str, Any]) -> str | None:
    from lsr.checkpoint import MODEL

    info = metadata.get("files", {}).get(MODEL, {})
    return info.get("sha256") if isinstance(info, dict) else None


def _model_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    keep = ("path", "step", "loss", "distance", "class_names", "model", "working_mpp", "git")
    return {**{k: metadata[k] for k in keep if k in metadata}, "sha256": _model_sha256(metadata)}


#: Options that change what a slide's outputs hold (tile size, batch, device and threads do not).
_RESULT_OPTIONS = ("mpp", "halo", "tissue", "threshold", "simplify_px", "min_area_mm2",
                   "probability_dtype")  # fmt: skip


def _same_path(a: Any, b: Any) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def reusable_summary(
    folder: str | os.PathLike[str],
    options: PredictOptions,
    metadata: dict[str, Any],
    slide: str | os.PathLike[str] | None = None,
) -> dict[str, Any] | None:
    """The folder's complete summary if it was made from this ``slide`` file by this model
    (same weights) with these result-changing options, else None: a re-run with another
    model, threshold or slide file (another path, or another file at the same path: its
    size or time changed) redoes the slide instead of keeping outputs that no longer match
    the command. Summaries written before the weights' SHA-256 was recorded
    are matched by the model's folder and step."""
    done = read_summary(folder)
    if done is None:
        return None
    if slide is not None and not _same_path(done.get("slide"), slide):
        return None
    if slide is not None and done.get("slide_file") is not None:  # (older summaries: none)
        try:
            if file_stamp(slide) != done["slide_file"]:
                return None  # another file at that path now (a rescan): predicted again
        except OSError:
            return None
    model = done.get("model", {})
    if model.get("sha256") is not None:
        if model["sha256"] != _model_sha256(metadata):
            return None
    elif not (
        _same_path(model.get("path"), metadata.get("path"))
        and model.get("step") == metadata.get("step")
    ):
        return None
    working_mpp, _ = resolve_working_mpp(options, metadata)
    if not math.isclose(float(done.get("working_mpp", -1)), working_mpp, rel_tol=1e-6):
        return None
    earlier = done.get("options", {})
    if any(earlier.get(k) != getattr(options, k) for k in _RESULT_OPTIONS):
        return None
    return done


def write_outputs(
    folder: Path,
    prob: Any,
    slide: Slide,
    options: PredictOptions,
    metadata: dict[str, Any],
) -> tuple[float, dict[str, float]]:
    """Write probability, mask and boundaries of ``prob`` (H, W working px) into ``folder``.

    Returns (cancer area in mm², timings). Boundaries are in level-0 px of ``slide``.
    """
    from lsr.geojson import clip_to_slide, export_geojson, mask_to_polygons

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    image = _Quantised(prob) if options.probability_dtype == "uint8" else prob
    write_pyramidal_tiff(folder / PROBABILITY, image, mpp=options.working_mpp, compression="zlib")
    t1 = time.perf_counter()
    write_pyramidal_tiff(  # bool: coarse levels by majority, so outlines stay in place
        folder / MASK, _Thresholded(prob, options.threshold), mpp=options.working_mpp,
        compression="zlib",
    )  # fmt: skip
    t2 = time.perf_counter()
    mask = _mask_of(prob, options.threshold)
    px_mm2 = (options.working_mpp / 1000.0) ** 2
    area_mm2 = float(mask.sum()) * px_mm2
    polygons = mask_to_polygons(
        mask,
        simplify_tolerance=options.simplify_px,
        min_area=options.min_area_mm2 / px_mm2,
        scale=options.working_mpp / slide.mpp,
    )
    polygons = clip_to_slide(polygons, slide.shape)  # the last working px overhangs it
    del mask
    key, names = _boundary_class(metadata)
    with warnings.catch_warnings():  # the Fig. 4 colour of the model's loss
        warnings.simplefilter("ignore", UserWarning)  # no cancer: a valid, empty collection
        export_geojson(folder / BOUNDARIES, {key: polygons}, names=names)
    t3 = time.perf_counter()
    times.update(probability_tif_s=t1 - t0, mask_tif_s=t2 - t1, boundaries_s=t3 - t2)
    return area_mm2, times


def predict_to_folder(
    slide_path: str | os.PathLike[str],
    model: Any,
    metadata: dict[str, Any],
    out_dir: str | os.PathLike[str],
    options: PredictOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Predict one slide and write its four outputs into ``out_dir/<slide name>/``.

    ``model`` is an eval-mode network (see :func:`lsr.model.load`); ``metadata`` its
    checkpoint metadata. Returns the summary (also written as ``summary.json``), whose
    ``"warnings"`` lists what the user should know (a scale other than the model's or the
    file's, no tissue found, ...); each is also issued as a UserWarning naming the slide.
    """
    from lsr.infer import TISSUE_THUMBNAIL_PX, cancer_class_index, predict_slide
    from lsr.tissue import tissue_mask

    options = options or PredictOptions()
    working_mpp, notes = resolve_working_mpp(options, metadata)
    options = replace(options, working_mpp=working_mpp)
    t_start = time.perf_counter()
    folder = Path(out_dir) / slide_name(slide_path)
    _claim_folder(folder, slide_path)  # a re-run invalidates the old result until it completes
    timings: dict[str, float] = {}
    with open_slide(slide_path, mpp=options.mpp) as slide:
        t_open = time.perf_counter()
        notes += [*slide.notes, *slide_warnings(slide, working_mpp)]
        tissue = None
        if options.tissue == "auto":
            try:
                tissue = tissue_mask(slide.thumbnail(TISSUE_THUMBNAIL_PX), on_empty="error")
            except LsrInputError as exc:
                notes.append(f"{exc}; the whole slide was treated as tissue")
        prob = predict_slide(
            model,
            slide,
            working_mpp=options.working_mpp,
            tile=options.tile,
            halo=options.halo,
            batch_size=options.batch_size,
            device=options.device,
            tile_memory_mib=options.tile_memory_mib,
            tissue_mask=tissue,
            class_index=cancer_class_index(metadata),
            progress=progress,
            cancel=cancel,
            read_threads=options.read_threads,
            timings=timings,
        )
        t_pred = time.perf_counter()
        area_mm2, write_times = write_outputs(folder, prob, slide, options, metadata)
        del prob
        h0, w0 = slide.shape
        hw, ww = slide.working_shape(options.working_mpp)
        summary = {
            "format": SUMMARY_FORMAT,
            "version": SUMMARY_VERSION,
            "status": "complete",
            "slide": str(Path(slide_path).resolve()),
            "slide_file": file_stamp(slide_path),
            "name": slide_name(slide_path),
            "mpp": slide.mpp,
            "file_mpp": slide.file_mpp,
            "working_mpp": options.working_mpp,
            "read_level": slide.best_level(options.working_mpp / slide.mpp),
            "level0_shape": [h0, w0],
            "working_shape": [hw, ww],
            "threshold": options.threshold,
            "probability_dtype": options.probability_dtype,
            "cancer_area_mm2": area_mm2,
            "tiles": int(timings.get("tiles", 0)),
            "tiles_total": int(timings.get("tiles_total", 0)),
            "tile_px": int(timings.get("tile_px", 0)),
            "halo_px": int(timings.get("halo_px", 0)),
            "options": options.to_dict(),
            "model": _model_summary(metadata),
            "warnings": notes,
            "timings_s": {
                "open": t_open - t_start,
                "inference": t_pred - t_open,
                **{k: v for k, v in timings.items() if k.endswith("_s")},
                **write_times,
                "total": time.perf_counter() - t_start,
            },
        }
    atomic_write_text(folder / SUMMARY, json.dumps(summary, indent=1, default=str) + "\n")
    with contextlib.suppress(FileNotFoundError):
        (folder / ERROR).unlink()
    for note in notes:
        warnings.warn(f"{slide_name(slide_path)}: {note}", UserWarning, stacklevel=2)
    return summary


def predict_one(
    slide_path: str,
    model_path: str,
    out_dir: str,
    options: PredictOptions | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> SlideResult:
    """One slide of a cohort, never raising: loads the model from ``model_path`` itself.

    This is the unit of work sent to dask workers (only paths and options travel). A
    complete earlier result is skipped unless ``overwrite``; a failure marks the folder's
    summary ``"failed"``, writes ``<slide>/error.txt`` (the earlier outputs are gone) and
    returns ``status="failed"``; a folder of someone else's files is left untouched and the
    slide is ``"failed"`` with that reason.
    """
    options = options or PredictOptions()
    name = slide_name(slide_path)
    folder = Path(out_dir) / name
    t0 = time.perf_counter()
    try:
        check_output_folder(folder)
        if not overwrite:
            check_same_slide(folder, slide_path)
    except LsrInputError as exc:  # someone else's files: not even an error.txt goes there
        return SlideResult(str(slide_path), name, "failed", 0.0, str(exc))
    if not overwrite:
        with contextlib.suppress(LsrInputError):  # an unreadable model fails below, per slide
            done = reusable_summary(folder, options, model_metadata(model_path), slide_path)
            if done is not None:
                return _skipped(str(slide_path), done)
    try:
        import torch

        from lsr.model import load

        if options.torch_threads:
            torch.set_num_threads(int(options.torch_threads))
        from lsr.infer import resolve_device

        device = resolve_device(options.device)
        model, metadata = load(model_path, device=device)
        opts = PredictOptions(**{**options.to_dict(), "device": str(device)})
        summary = predict_to_folder(
            slide_path, model, metadata, out_dir, opts, progress=progress, cancel=cancel
        )
    except Exception as exc:
        message = str(exc) if isinstance(exc, LsrInputError) else f"{type(exc).__name__}: {exc}"
        _mark_failed(folder, str(slide_path), message, traceback.format_exc())
        return SlideResult(str(slide_path), name, "failed", time.perf_counter() - t0, message)
    return SlideResult(
        str(slide_path),
        name,
        "done",
        time.perf_counter() - t0,
        "",
        summary["cancer_area_mm2"],
        summary,
    )


def model_metadata(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint metadata of a model (with its folder as ``"path"``), weights unread."""
    from lsr.checkpoint import read_metadata

    folder, meta = read_metadata(model_path)
    return {**meta, "path": str(folder)}


def _check_run(model_path: str, options: PredictOptions, *, check_device: bool) -> None:
    """Problems that would fail every slide, raised once before any slide: the device
    (``cuda`` without a GPU) and the model (weights missing, truncated or modified; a
    network description that does not build or does not fit the weights)."""
    from lsr.infer import resolve_device
    from lsr.model import load

    if check_device:
        resolve_device(options.device)
    load(model_path)  # on the CPU: a few MB, once


def _skipped(slide: str, done: dict[str, Any]) -> SlideResult:
    name = slide_name(slide)
    return SlideResult(slide, name, "skipped", 0.0, "", done.get("cancer_area_mm2"), done)


# --- the cohort -----------------------------------------------------------------------------


def _check_names(slides: Sequence[str | os.PathLike[str]]) -> None:
    seen: dict[str, str] = {}
    for s in slides:
        name = slide_name(s)
        if name in seen and Path(seen[name]).resolve() != Path(s).resolve():
            raise LsrInputError(
                f"two slides would write to the same folder '{name}': {seen[name]} and {s}"
            )
        seen[name] = str(s)


def _is_cohort(path: Path) -> bool:
    return json.loads(path.read_text(encoding="utf-8")).get("format") == COHORT_FORMAT


def write_cohort_summary(out_dir: str | os.PathLike[str], results: Sequence[SlideResult]) -> Path:
    """``out_dir/cohort.json``: counts per status and one entry per slide."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    doc = {"format": COHORT_FORMAT, **counts,
           "slides": [r.to_dict() for r in results]}  # fmt: skip
    path = Path(out_dir) / COHORT
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def predict_cohort(
    slides: Sequence[str | os.PathLike[str]],
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: PredictOptions | None = None,
    *,
    scheduler: str | None = None,
    workers: int = 1,
    processes: bool = True,
    overwrite: bool = False,
    on_result: Callable[[SlideResult], None] | None = None,
    on_start: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> list[SlideResult]:
    """Predict every slide; never stops at a failure. Returns one result per slide (input
    order; a slide given twice is predicted and listed once).

    ``scheduler``: None or ``"local"`` (a dask ``LocalCluster`` of ``workers`` workers when
    ``workers`` > 1 and there is more than one slide to do, else in this process) or a dask
    scheduler address (``tcp://host:8786``). ``processes``: local workers are processes
    (True) or threads. ``on_start(slide)`` may return a tile-progress callback (in-process
    runs only); ``on_result`` is called as each slide finishes. Writes ``cohort.json``.
    """
    from lsr.checkpoint import resolve

    options = options or PredictOptions()
    if workers < 1:
        raise LsrInputError(f"workers must be ≥ 1, got {workers}")
    check_scheduler(scheduler)
    if not slides:
        raise LsrInputError("no slides given")
    # a slide given twice (a glob and its name) is predicted once: two writers of one folder
    # would delete each other's files
    unique: dict[str, str | os.PathLike[str]] = {}
    for s in slides:
        unique.setdefault(str(Path(s).resolve()), s)
    slides = list(unique.values())
    _check_names(slides)
    model_path = str(resolve(model_path))  # fail early on a missing or foreign model
    metadata = model_metadata(model_path)
    # a remote scheduler's workers may have the GPU this machine lacks
    _check_run(model_path, options, check_device=scheduler in (None, "local"))
    out = Path(out_dir)
    check_replaceable(out / COHORT, _is_cohort, "a cohort summary of lsr predict", "--out")
    for s in slides:  # someone else's files in a slide's folder: refused before any work
        check_output_folder(out / slide_name(s))
        if not overwrite:  # as another slide of the same name's outputs
            check_same_slide(out / slide_name(s), s)
    for s in slides:
        adopt_earlier_run(out / slide_name(s), str(s))
    out.mkdir(parents=True, exist_ok=True)
    remove_leftover_temps(out, {COHORT}.__contains__, min_age_s=LEFTOVER_S)  # a killed run's
    paths = [str(s) for s in slides]
    results: dict[int, SlideResult] = {}
    todo: list[int] = []
    for i, p in enumerate(paths):
        done = None if overwrite else reusable_summary(out / slide_name(p), options, metadata, p)
        if done is not None:
            results[i] = _skipped(p, done)
            if on_result:
                on_result(results[i])
        else:
            todo.append(i)
    distributed = scheduler not in (None, "local") or (workers > 1 and len(todo) > 1)
    if not distributed:
        for i in todo:
            progress = on_start(paths[i]) if on_start else None
            results[i] = predict_one(
                paths[i], model_path, str(out), options, overwrite=overwrite, progress=progress
            )
            if on_result:
                on_result(results[i])
            write_cohort_summary(out, [results[k] for k in sorted(results)])
    elif todo:
        _run_distributed(
            paths, todo, model_path, out, options, results, scheduler, workers, processes,
            overwrite, on_result,
        )  # fmt: skip
    ordered = [results[i] for i in range(len(paths))]
    write_cohort_summary(out, ordered)
    return ordered


def _bad_scheduler(scheduler: str, why: object) -> LsrInputError:
    return LsrInputError(
        f"--scheduler {scheduler!r} is not a dask scheduler address ({why}); give 'local' or "
        "one like tcp://host:8786"
    )


def check_scheduler(scheduler: str | None) -> None:
    """Refuse a malformed ``--scheduler`` address before any work: dask's own ValueError
    (``missing port number in address 'foo'``) came as a traceback once the run had started.
    Only the scheme and, for TCP-like schemes, host:port are checked; reaching it is not."""
    if scheduler in (None, "local"):
        return
    from distributed.comm.addressing import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, _ = parse_address(scheduler)
        get_backend(scheme)  # unknown scheme
        if scheme in ("tcp", "tls", "ws", "wss"):
            get_address_host_port(scheduler)
    except ValueError as exc:
        raise _bad_scheduler(scheduler, exc) from None


def shared_gpu_options(options: PredictOptions, workers: int) -> PredictOptions:
    """``options`` for one of ``workers`` local workers on this machine's GPU: with
    ``tile_memory_mib`` unset each would size its tiles to half of the free GPU memory it
    sees at its start (:func:`lsr.infer.tile_memory_budget`), all of them the same half; here
    they share that half, ``1/workers`` each. On CPU, or with ``tile_memory_mib`` set:
    unchanged (not a result-changing option: earlier outputs stay reusable)."""
    if workers <= 1 or options.tile_memory_mib is not None:
        return options
    from lsr.infer import resolve_device, tile_memory_budget

    device = resolve_device(options.device)
    if device.type != "cuda":
        return options
    mib = tile_memory_budget(device) / 2**20 / workers
    return replace(options, tile_memory_mib=max(mib, 1.0))


def _run_distributed(
    paths: list[str],
    todo: list[int],
    model_path: str,
    out: Path,
    options: PredictOptions,
    results: dict[int, SlideResult],
    scheduler: str | None,
    workers: int,
    processes: bool,
    overwrite: bool,
    on_result: Callable[[SlideResult], None] | None,
) -> None:
    """Submit one :func:`predict_one` task per slide to dask.distributed and collect them."""
    from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler in (None, "local"):
            n = min(workers, len(todo))
            cpus = os.cpu_count() or 1
            if options.torch_threads is None:
                options = PredictOptions(
                    **{**options.to_dict(), "torch_threads": max(1, cpus // n)}
                )
            options = shared_gpu_options(options, n)
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=processes,
                    dashboard_address=None, silence_logs=40,
                )
            )  # fmt: skip
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
            except OSError as exc:
                raise LsrInputError(f"cannot reach the dask scheduler {scheduler}: {exc}") from exc
            except ValueError as exc:  # an address check_scheduler could not parse
                raise _bad_scheduler(scheduler, exc) from None
        futures = {
            client.submit(
                predict_one, paths[i], model_path, str(out), options, overwrite=overwrite,
                key=f"lsr-predict-{i}-{slide_name(paths[i])}", pure=False,
            ): i
            for i in todo
        }  # fmt: skip
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # the worker died, or the task could not run
                res = SlideResult(paths[i], slide_name(paths[i]), "failed", 0.0,
                                  f"{type(exc).__name__}: {exc}")  # fmt: skip
                _mark_failed(out / res.name, paths[i], res.error, res.error + "\n")
            results[i] = res
            if on_result:
                on_result(res)
            write_cohort_summary(out, [results[k] for k in sorted(results)])
