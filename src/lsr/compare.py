"""Compare trained models on one slide: boundaries like Fig. 4, scores like Table 2.

The GUI-free half of the napari "Compare & evaluate" widget (the widget only draws what
:func:`run_comparison` returns). Data flows one way: slide → cached probability maps (one
per model, :class:`PredictionCache`) → cancer masks (``p ≥ 0.5``) → boundaries (polygons) →
scores (:mod:`lsr.metrics`) and exports (:mod:`lsr.geojson`, :mod:`lsr.figures`).

Everything is at one *evaluation resolution*: the block grid's working resolution
(``working_mpp`` µm/px, blocks of ``block_px`` px). Models trained at another working
resolution predict at their own and are resampled (bilinear) to it. Masks are boolean (H, W)
at that resolution; polygons are in its pixels (``x = column``, ``y = row``, pixel ``(r, c)``
covering ``[c, c+1) × [r, r+1)``) and exported to QuPath in level-0 pixels.

Boundary keys: ``low_res`` (green), ``ground_truth`` (red), ``intra_inter`` (blue), ``intra``
(cyan), ``inter`` (magenta) and ``intra_plus_inter`` (yellow, the sum loss, not in the
paper) as in :data:`lsr.geojson.FIG4_COLOURS`; a second model trained
with the same loss, or one with another loss, gets the key ``model:<run name>`` and the next
colour of :data:`EXTRA_COLOURS`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon

from lsr.atomic import atomic_path, atomic_write_text
from lsr.errors import LsrInputError
from lsr.geojson import DEFAULT_NAMES, FIG4_COLOURS, qupath_class_name
from lsr.metrics import METRICS, cancer_mask
from lsr.metrics import TABLE2_ROWS as ROW_ORDER

PathType = str | PathLike[str]
#: Colours (RGB 0-255) of models beyond the paper's four: distinct from FIG4_COLOURS and
#: from H&E pink/purple.
EXTRA_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 140, 0),  # orange
    (128, 128, 0),  # olive (not gold: too close to the sum loss's yellow)
    (0, 128, 128),  # teal
    (139, 69, 19),  # brown
    (128, 128, 128),  # grey
    (0, 0, 0),  # black
)
LABELS = {
    "low_res": "low-resolution model",
    "ground_truth": "ground truth",
    "intra_inter": "intra+inter-instance",
    "intra": "intra-instance",
    "inter": "inter-instance",
    "intra_plus_inter": "intra + inter (sum)",
}
#: Polygons smaller than this (evaluation px²) are left out of the drawn boundaries.
MIN_AREA_PX = 4.0
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stage text, then tiles (or steps) done of total."""


# --- boundaries: names and colours ----------------------------------------------------------


@dataclass(frozen=True)
class Boundary:
    """One boundary drawn and exported: ``key`` (see the module doc), legend ``label``,
    ``colour`` (RGB 0-255) and QuPath classification ``name``."""

    key: str
    label: str
    colour: tuple[int, int, int]
    name: str

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


def paper_boundary(key: str) -> Boundary:
    """The low-resolution model or the ground truth (fixed paper colours)."""
    return Boundary(key, LABELS[key], FIG4_COLOURS[key], DEFAULT_NAMES[key])


def model_boundaries(models: Sequence[tuple[str, str]]) -> list[Boundary]:
    """One boundary per model ``(run name, loss)``, in the given order.

    The first model of each loss takes its colour (the paper's blue intra+inter, cyan
    intra, magenta inter; yellow for the sum loss) and the run name in its label; later
    ones and unknown losses take :data:`EXTRA_COLOURS` in turn, so no two boundaries share
    a colour. The QuPath class is ``lsr predict``'s with the run name, e.g.
    ``Intra+inter-instance (run-1)`` or ``LSR prediction (run-2)``: distinct per model (a
    name met again, or made the same by :func:`lsr.geojson.qupath_class_name`, gets `` #2``,
    ...), and matched by the Groovy script of docs/qupath.md that removes earlier imports.
    """
    from lsr.predict import PREDICTION_CLASS

    out: list[Boundary] = []
    taken: set[str] = set()
    classes: set[str] = set()
    extra = 0
    for name, loss in models:
        loss_label = LABELS.get(loss, loss or "model")
        known = loss in DEFAULT_NAMES and loss not in ("low_res", "ground_truth")
        # as the file will hold it (the legend's tooltip shows this name)
        head = DEFAULT_NAMES[loss] if known else PREDICTION_CLASS
        qupath = qupath_class_name(f"{head} ({name})")
        n = 1
        while qupath in classes:  # same run name, or the same once made safe (a:b, a - b)
            n += 1
            qupath = qupath_class_name(f"{head} ({name} #{n})")
        classes.add(qupath)
        if loss in FIG4_COLOURS and known and loss not in taken:
            taken.add(loss)
            out.append(Boundary(loss, f"{loss_label} ({name})", FIG4_COLOURS[loss], qupath))
            continue
        colour = EXTRA_COLOURS[extra % len(EXTRA_COLOURS)]
        extra += 1
        key = f"model:{name}"
        while key in {b.key for b in out}:
            key += "'"
        out.append(Boundary(key, f"{loss_label} ({name})", colour, qupath))
    return out


# --- models and the prediction cache --------------------------------------------------------


@dataclass
class ModelRef:
    """A trained model: checkpoint folder, weights hash and what the comparison needs."""

    path: str
    checkpoint: str
    sha256: str
    name: str
    loss: str
    working_mpp: float
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)


def model_ref(path: PathType) -> ModelRef:
    """Describe the model at ``path`` (run folder, checkpoint folder or its weights file).

    Reads only ``checkpoint.json``: the weights' SHA-256 recorded there keys the cache.
    """
    from lsr.checkpoint import MODEL, read_metadata

    folder, meta = read_metadata(path)
    sha = ((meta.get("files") or {}).get(MODEL) or {}).get("sha256")
    if not sha:
        raise LsrInputError("checkpoint records no hash of its weights", folder)
    cfg = meta.get("config") or {}
    mpp = float(meta.get("working_mpp") or cfg.get("working_mpp") or 0.0)
    run = folder.parent.parent if folder.parent.name == "checkpoints" else folder
    return ModelRef(
        path=str(path),
        checkpoint=str(folder),
        sha256=str(sha),
        name=run.name,
        loss=str(meta.get("loss") or cfg.get("loss") or ""),
        working_mpp=mpp,
        metadata=meta,
    )


def cache_key(model_sha256: str, slide_path: PathType, working_mpp: float) -> str:
    """Cache entry name: weights hash + absolute slide path + the file's size and time +
    working µm/px (a slide replaced at the same path gave the old slide's map back)."""
    from lsr.slide import file_stamp

    stamp = file_stamp(slide_path)
    text = (
        f"{model_sha256}|{Path(slide_path).resolve()}|{stamp['size']}|{stamp['mtime_ns']}|"
        f"{float(working_mpp):.6g}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class PredictionCache:
    """Probability maps on disk, one ``<key>.npy`` (float32, working px) per model and slide.

    ``<key>.json`` beside it records the model, slide and resolution; it is written after
    the map, so an entry without it (an interrupted prediction) is ignored and redone.
    """

    def __init__(self, folder: PathType):
        self.folder = Path(folder)

    #: How long a temporary map must be unchanged before it counts as a killed write's (a
    #: memory-mapped file's time is not updated on every write; another napari may be
    #: predicting into the same cache).
    STALE_S = 24 * 3600.0

    def remove_killed_writes(self) -> list[Path]:
        """Delete the temporary maps of predictions killed mid-write (SIGKILL, a crash skip
        the clean-up; each is as large as a slide's float32 map), once a day old."""
        from lsr.atomic import remove_leftover_temps

        def entry(name: str) -> bool:
            return re.fullmatch(r"[0-9a-f]{32}\.(npy|json)", name) is not None

        return remove_leftover_temps(self.folder, entry, min_age_s=self.STALE_S)

    def entry(self, model: ModelRef, slide_path: PathType, working_mpp: float) -> Path:
        return self.folder / f"{cache_key(model.sha256, slide_path, working_mpp)}.npy"

    def load(self, model: ModelRef, slide_path: PathType, working_mpp: float) -> np.ndarray | None:
        """The cached map (read-only memory map) or None."""
        npy = self.entry(model, slide_path, working_mpp)
        if not (npy.is_file() and npy.with_suffix(".json").is_file()):
            return None
        try:
            return np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            return None  # damaged: predict again

    def predict(
        self,
        model: ModelRef,
        slide: Any,
        working_mpp: float,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        device: str = "cpu",
        tile: int | str = "auto",
    ) -> tuple[np.ndarray, bool]:
        """(probability map (H, W) float32 at ``working_mpp``, whether it came from the cache).

        ``slide`` is an :class:`lsr.slide.Slide`; a slide without a path is not cached.
        """
        from lsr import model as lsr_model
        from lsr.infer import cancer_class_index, predict_slide

        if slide.path is not None:
            hit = self.load(model, slide.path, working_mpp)
            if hit is not None:
                return hit, True
        net, meta = lsr_model.load(model.checkpoint)
        kwargs = dict(
            working_mpp=working_mpp,
            tile=tile,
            device=device,
            class_index=cancer_class_index(meta),
            progress=progress,
            cancel=cancel,
        )
        if slide.path is None:
            return np.asarray(predict_slide(net, slide, **kwargs)), False
        npy = self.entry(model, slide.path, working_mpp)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.remove_killed_writes()
        with atomic_path(npy) as tmp:
            prob = predict_slide(net, slide, out=str(tmp), **kwargs)
            prob.flush()
            del prob
        record = {
            "model": model.checkpoint,
            "model_sha256": model.sha256,
            "slide": str(Path(slide.path).resolve()),
            "working_mpp": float(working_mpp),
            "shape": list(slide.working_shape(working_mpp)),
        }
        atomic_write_text(npy.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
        return np.load(npy, mmap_mode="r"), False


def resample(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) map to ``shape`` (a model at another working µm/px)."""
    if tuple(prob.shape) == tuple(shape):
        return np.asarray(prob)
    from skimage.transform import resize

    return resize(np.asarray(prob, np.float32), shape, order=1, anti_aliasing=False).astype(
        np.float32
    )


# --- ground truth ---------------------------------------------------------------------------


def nearest_resample(mask: Any, pixel_um: float, shape: tuple[int, int], working_mpp: float):
    """Sample a (h, w) array of ``pixel_um`` µm/px at the centres of ``shape`` working px.

    Works on numpy or dask arrays (two integer-index takes); returns numpy.
    """
    h, w = int(mask.shape[0]), int(mask.shape[1])
    f = working_mpp / pixel_um
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * f).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * f).astype(np.int64), w - 1)
    return np.asarray(np.asarray(mask[rows])[:, cols])


def mask_from_array(
    data: Any, pixel_um: float, shape: tuple[int, int], working_mpp: float, what: str = ""
) -> np.ndarray:
    """Ground truth from a (h, w) label array of ``pixel_um`` µm/px: bool (H, W), cancer where
    nonzero, or ≥ 0.5 in a float map (:func:`lsr.metrics.cancer_mask`).

    Raises LsrInputError when its physical extent differs from the slide's (a mask of
    another slide or at another resolution) by more than one working pixel and 1 %.
    """
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = data[..., 0]
    if data.ndim != 2:
        raise LsrInputError(f"ground truth must be a 2-D mask, got shape {tuple(data.shape)}", what)
    ext = np.array(data.shape[:2], float) * pixel_um
    want = np.array(shape, float) * working_mpp
    tol = working_mpp + 0.01 * want
    if np.any(np.abs(ext - want) > tol):
        raise LsrInputError(
            f"ground truth of the wrong size: {data.shape[0]}x{data.shape[1]} px at "
            f"{pixel_um:g} µm/px covers {ext[0]:.0f}x{ext[1]:.0f} µm, but the slide covers "
            f"{want[0]:.0f}x{want[1]:.0f} µm (is it the mask of another slide?)",
            what or None,
        )
    return cancer_mask(nearest_resample(data, pixel_um, shape, working_mpp))


def ground_truth_level(
    levels: Sequence[Any], pixel0_um: float, working_mpp: float
) -> tuple[Any, float]:
    """``(level, µm/px)`` of a label pyramid to read ground truth from: the coarsest level
    still at least as fine as ``working_mpp`` (1 % slack), so the mask is resampled down,
    never up. ``levels``: (…, h, w) arrays, finest first; ``pixel0_um``: the finest one's
    µm/px. A pyramid coarser than ``working_mpp`` throughout gives its finest level."""
    best, best_um = levels[0], float(pixel0_um)
    for lv in levels:
        um = float(pixel0_um) * levels[0].shape[-1] / lv.shape[-1]
        if best_um <= um <= working_mpp * 1.01:
            best, best_um = lv, um
    return best, best_um


def load_ground_truth(path: PathType, slide: Any, working_mpp: float) -> np.ndarray:
    """Ground-truth cancer mask (bool (H, W) at ``working_mpp``) from a file.

    ``.geojson``/``.json``: QuPath annotations in level-0 px (all classes: the areas drawn are
    cancer); anything else: a mask image (cancer where nonzero, or ≥ 0.5 if float) covering
    the slide, whose pixel size comes from the file or, when it has none, from the slide's
    width.
    """
    from lsr.geojson import import_geojson, polygons_to_mask
    from lsr.slide import open_slide

    p = Path(path)
    shape = slide.working_shape(working_mpp)
    if p.suffix.lower() in (".geojson", ".json"):
        geom = import_geojson(p, slide_shape_level0=slide.shape)
        if geom.is_empty:
            raise LsrInputError("no polygon in the ground-truth GeoJSON", p)
        return polygons_to_mask(geom, shape, scale=working_mpp / slide.mpp)
    if not p.is_file():
        raise LsrInputError("ground-truth file not found", p)
    try:
        m = open_slide(p)
    except LsrInputError as err:
        if "pixel size" not in str(err):
            raise
        m = None
    if m is None:  # no pixel size in the file: it must cover the slide
        probe = open_slide(p, mpp=1.0)
        m = open_slide(p, mpp=slide.mpp * slide.shape[1] / probe.shape[1])
    with m:
        level = m.best_level(working_mpp / m.mpp)
        dy, _dx = m._level_scale(level)
        wl, hl = m.level_dimensions[level]
        data = m.read_level(level, 0, 0, hl, wl, 0)
        return mask_from_array(data, m.mpp * dy, shape, working_mpp, str(p))


# --- masks ----------------------------------------------------------------------------------


def low_res_slide_mask(grid: Any, shape: tuple[int, int]) -> np.ndarray:
    """The low-resolution model's cancer mask over a whole slide (bool (H, W), working px).

    A block is cancer when its probability is ≥ 0.5; a grid of ready bins (no
    probabilities) uses the bins whose lower edge is ≥ 50 %. The grid's origin is honoured.
    """
    from lsr.baseline import low_res_mask
    from lsr.grid import PAPER_EDGES

    probs = np.asarray(grid.probs, np.float64)
    if np.isnan(probs).all() and grid.z_explicit is not None:
        first = int(np.searchsorted(np.asarray(PAPER_EDGES, float), 0.5))  # edges are fractions
        probs = np.where(grid.z >= first, 1.0, np.where(grid.z >= 0, 0.0, np.nan))
    oy, ox = grid.origin
    out = np.zeros(shape, bool)
    h, w = shape[0] - oy, shape[1] - ox
    if h > 0 and w > 0:
        out[oy:, ox:] = low_res_mask(probs, grid.block_px, (h, w))
    return out


def polygon_rings(geom: MultiPolygon) -> list[np.ndarray]:
    """Every ring (exteriors and holes) of a MultiPolygon as closed (N, 2) (row, col) arrays."""
    rings: list[np.ndarray] = []
    for poly in geom.geoms:
        for ring in (poly.exterior, *poly.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)
            rings.append(xy[:, ::-1].copy())
    return rings


def crop(a: np.ndarray, region: tuple[int, int, int, int] | None) -> np.ndarray:
    """``a[y0:y1, x0:x1]`` for ``region = (y0, x0, y1, x1)`` in working px (None: all)."""
    if region is None:
        return np.asarray(a)
    y0, x0, y1, x1 = region
    return np.asarray(a[y0:y1, x0:x1])


def clip_region(region: Sequence[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A (y0, x0, y1, x1) box in working px rounded outwards and clipped to the slide."""
    y0, x0, y1, x1 = region
    h, w = shape
    out = (
        max(0, math.floor(y0)),
        max(0, math.floor(x0)),
        min(h, math.ceil(y1)),
        min(w, math.ceil(x1)),
    )
    if out[2] <= out[0] or out[3] <= out[1]:
        raise LsrInputError(f"the region {tuple(region)} lies outside the slide ({h}x{w} px)")
    return out


# --- the comparison -------------------------------------------------------------------------


@dataclass
class Comparison:
    """Everything the widget draws and scores, at the evaluation resolution.

    ``probs[key]``: (H, W) float32 cancer probability of each model; ``masks[key]``: bool
    (H, W) per boundary (ground truth included when given); ``polygons[key]``: outlines in
    evaluation px; ``boundaries``: legend order; ``tables[key]``: the count table a model
    was trained with (dict, as in its checkpoint); ``cached[key]``: map read from the cache.
    """

    slide_path: str
    level0_mpp: float
    working_mpp: float
    shape: tuple[int, int]
    block_px: int
    grid: Any
    boundaries: list[Boundary]
    masks: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]
    polygons: dict[str, MultiPolygon]
    tables: dict[str, dict]
    cached: dict[str, bool]
    models: dict[str, ModelRef]
    level0_shape: tuple[int, int] | None = None  # (H, W) of the slide in level-0 px

    @property
    def band_px(self) -> float:
        """The paper's band: one block (≈1 mm) in evaluation px."""
        return float(self.block_px)

    @property
    def gt(self) -> np.ndarray | None:
        return self.masks.get("ground_truth")

    @property
    def scale_to_level0(self) -> float:
        """Level-0 px per evaluation px (QuPath coordinates)."""
        return self.working_mpp / self.level0_mpp

    def boundary(self, key: str) -> Boundary:
        return next(b for b in self.boundaries if b.key == key)


def run_comparison(
    slide_path: PathType,
    grid: Any,
    working_mpp: float,
    models: Sequence[PathType],
    *,
    ground_truth: PathType | tuple[Any, float] | None = None,
    cache: PredictionCache | None = None,
    device: str = "cpu",
    tile: int | str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Comparison:
    """Predict ``models`` on a slide (cached), and outline every boundary.

    ``grid``: :class:`lsr.grid.BlockGrid` whose ``block_px`` is at ``working_mpp`` µm/px (the
    evaluation resolution). ``ground_truth``: a mask/GeoJSON file, or ``(array,
    µm per pixel)`` (e.g. a napari labels layer). Raises LsrInputError for bad input and
    :class:`lsr.infer.InferenceCancelled` when ``cancel`` is set.
    """
    from lsr.geojson import mask_to_polygons
    from lsr.slide import open_slide

    block_grid = grid
    refs = [model_ref(m) for m in models]
    if not refs:
        raise LsrInputError("no model chosen: pick a trained model (or a model folder) first")
    say = progress or (lambda stage, done, total: None)
    with open_slide(slide_path) as slide:
        shape = slide.working_shape(working_mpp)
        block_grid.check_fits(shape)
        masks: dict[str, np.ndarray] = {}
        boundaries = [paper_boundary("low_res")]
        masks["low_res"] = low_res_slide_mask(block_grid, shape)
        if ground_truth is not None:
            say("reading the ground truth", 0, 1)
            if isinstance(ground_truth, tuple):
                data, pixel_um = ground_truth
                gt = mask_from_array(data, float(pixel_um), shape, working_mpp, "labels layer")
            else:
                gt = load_ground_truth(ground_truth, slide, working_mpp)
            masks["ground_truth"] = gt
        cache = cache or PredictionCache(default_cache_folder())
        mbs = model_boundaries([(r.name, r.loss) for r in refs])
        probs, tables, cached, by_key = {}, {}, {}, {}
        for i, (ref, b) in enumerate(zip(refs, mbs, strict=True)):
            stage = f"model {i + 1}/{len(refs)}: {ref.name}"
            mpp = ref.working_mpp or working_mpp
            prob, hit = cache.predict(
                ref,
                slide,
                mpp,
                progress=lambda d, t, s=stage: say(s, d, t),
                cancel=cancel,
                device=device,
                tile=tile,
            )
            prob = resample(prob, shape)
            probs[b.key], cached[b.key], by_key[b.key] = prob, hit, ref
            tables[b.key] = ref.metadata.get("table") or {}
            masks[b.key] = np.asarray(prob) >= 0.5
            boundaries.append(b)
        if "ground_truth" in masks:
            boundaries.append(paper_boundary("ground_truth"))
        say("outlining boundaries", 0, len(masks))
        polygons = {}
        for j, (key, m) in enumerate(masks.items()):
            if cancel is not None and cancel.is_set():
                from lsr.infer import InferenceCancelled

                raise InferenceCancelled("cancelled while outlining boundaries")
            polygons[key] = mask_to_polygons(m, min_area=MIN_AREA_PX)
            say("outlining boundaries", j + 1, len(masks))
        return Comparison(
            slide_path=str(slide_path),
            level0_mpp=float(slide.mpp),
            level0_shape=(int(slide.shape[0]), int(slide.shape[1])),
            working_mpp=float(working_mpp),
            shape=shape,
            block_px=int(block_grid.block_px),
            grid=block_grid,
            boundaries=boundaries,
            masks=masks,
            probs=probs,
            polygons=polygons,
            tables=tables,
            cached=cached,
            models=by_key,
        )


def default_cache_folder() -> Path:
    """Per-user cache of probability maps (``LSR_PREDICTION_CACHE`` overrides)."""
    env = os.environ.get("LSR_PREDICTION_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-lsr")) / "predictions"


# --- evaluation -----------------------------------------------------------------------------


def evaluate(comp: Comparison, region: tuple[int, int, int, int] | None = None) -> dict[str, dict]:
    """Table 2 rows (masked and unmasked IoU/DICE) of every boundary against the ground truth.

    ``region``: (y0, x0, y1, x1) evaluation px (None: the whole slide). The band (one block of
    the ground-truth boundary) is computed inside the region. Rows in Table 2 order; each is
    :func:`lsr.metrics.pooled_scores` of the one region (masked values None without a
    boundary in it). Raises LsrInputError without ground truth.
    """
    from lsr.metrics import pooled_scores

    if comp.gt is None:
        raise LsrInputError("no ground truth: choose a labels layer, a mask or a GeoJSON file")
    gt = crop(comp.gt, region)
    rows: dict[str, dict] = {}
    for b in comp.boundaries:
        if b.key == "ground_truth":
            continue
        s = pooled_scores([crop(comp.masks[b.key], region)], [gt], band=comp.band_px)
        row = {m: s[m] for m in METRICS}
        row.update(label=b.label, band_px=s["band"], has_boundary=bool(s["n_with_boundary"]))
        row["band_pixels"] = s["per_patch"][0].get("band_pixels", 0)
        rows[b.key] = row
    order = [k for k in ROW_ORDER if k in rows] + [k for k in rows if k not in ROW_ORDER]
    return {k: rows[k] for k in order}


def calibration_checks(calib: Sequence[dict]) -> dict[str, dict[str, Any] | None]:
    """Each model's :func:`lsr.metrics.calibration_check` against its own count table
    (``error`` a fraction, ``blocks``, ``flagged``), from :func:`calibration`'s rows; None
    for a model without a table."""
    from lsr.metrics import calibration_check

    keys = list(calib[0]["models"]) if calib else []
    out: dict[str, dict[str, Any] | None] = {}
    for k in keys:
        if not all(k in row["table"] for row in calib):
            out[k] = None  # no table to compare with
            continue
        rows = [{**row["models"][k], "z": i} for i, row in enumerate(calib)]
        out[k] = calibration_check(rows, [row["table"][k][0] for row in calib])
    return out


def calibration(comp: Comparison, region: tuple[int, int, int, int] | None = None) -> list[dict]:
    """Predicted cancer fraction per bin z vs each model's count table (fractions).

    Whole blocks of the grid inside ``region`` (None: the slide) are used. One row per bin:
    ``z``, ``label``, ``table`` {key: (η, ρ) of that model's training table}, ``models``
    {key: {n, mean, std}} (mean probability per block, :func:`lsr.metrics.calibration_table`)
    and ``ground_truth`` (the true fraction, when given).

    Bins are those of the first model's table (a table with its own edges, e.g. 0, 0.5,
    0.8, 1, bins the grid its own way, as training did); a model whose table has other
    edges gets no ``table`` entry (nothing to compare its bins with). Without tables: the
    paper's ten bins.
    """
    from lsr.counttable import PAPER_EDGES, CountTable
    from lsr.metrics import calibration_table

    tables = {}
    for k, t in comp.tables.items():
        if t:
            with contextlib.suppress(LsrInputError):
                tables[k] = CountTable.from_dict(t)
    first = next(iter(tables.values()), None)
    edges = tuple(first.edges) if first is not None else tuple(PAPER_EDGES)
    tables = {k: t for k, t in tables.items() if tuple(t.edges) == edges}
    n_bins = len(edges) - 1
    g = comp.grid
    b = comp.block_px
    oy, ox = g.origin
    rows_n = min(g.shape[0], (comp.shape[0] - oy) // b)
    cols_n = min(g.shape[1], (comp.shape[1] - ox) // b)
    r0, c0, r1, c1 = 0, 0, rows_n, cols_n
    if region is not None:
        y0, x0, y1, x1 = region
        r0, c0 = max(0, -(-(y0 - oy) // b)), max(0, -(-(x0 - ox) // b))
        r1, c1 = min(rows_n, (y1 - oy) // b), min(cols_n, (x1 - ox) // b)
    bins = g.bins(edges)
    r1, c1 = max(r1, r0), max(c1, c0)  # a region holding no whole block on an axis: 0 there
    z = bins[r0:r1, c0:c1]
    box = (oy + r0 * b, ox + c0 * b, oy + r1 * b, ox + c1 * b)
    maps = {k: crop(p, box) for k, p in comp.probs.items()}
    if comp.gt is not None:
        maps["ground_truth"] = crop(comp.gt, box).astype(np.float32)
    results = {k: calibration_table([m], [z], b, n_bins=n_bins) for k, m in maps.items()}
    labels = first.bin_labels() if first is not None else None
    out = []
    for zb in range(n_bins):
        row: dict[str, Any] = {"z": zb, "label": labels[zb] if labels else str(zb)}
        row["table"] = {
            k: (float(t.eta[zb, t.cancer]), float(t.rho[zb, t.cancer])) for k, t in tables.items()
        }
        row["models"] = {k: results[k][zb] for k in comp.probs}
        if "ground_truth" in results:
            row["ground_truth"] = results["ground_truth"][zb]
        out.append(row)
    return out


# --- exports: lsr's files are replaced, never the user's -----------------------------------

#: Top-level member marking the GeoJSON files of :func:`export_geojson` (a foreign member,
#: RFC 7946 §6.1, which QuPath and :func:`lsr.geojson.import_geojson` ignore).
MARK_KEY = "napari_lsr"
GEOJSON_MARK = {"format": "napari-lsr comparison boundaries", "version": 1}
RESULTS_FORMAT = "napari-lsr comparison"
EXPORT_OPTION = "export folder"


def _check_targets(paths: Iterable[Path], ours: Callable[[Path], bool], what: str) -> None:
    """Refuse the whole export if any target exists and lsr did not write it (checked for
    every file first, so a refused export writes nothing)."""
    from lsr.atomic import check_replaceable

    for path in paths:
        check_replaceable(path, ours, what, EXPORT_OPTION)


def is_geojson_export(path: Path) -> bool:
    """Whether ``path`` is a GeoJSON written by :func:`export_geojson` (carries the mark)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    mark = doc.get(MARK_KEY) if isinstance(doc, dict) else None
    return isinstance(mark, dict) and mark.get("format") == GEOJSON_MARK["format"]


def is_results_json(path: Path) -> bool:
    """Whether ``path`` is a ``<stem>_results.json`` of :func:`write_results`."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(doc, dict) and doc.get("format") == RESULTS_FORMAT


def _first_row(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        return next(csv.reader([fh.readline(1 << 20)]))  # (a header, not a whole table)


def is_scores_csv(path: Path) -> bool:
    """Whether ``path`` starts with the header :func:`scores_csv` writes."""
    return _first_row(path) == SCORES_HEADER


def is_calibration_csv(path: Path) -> bool:
    """Whether ``path`` starts with a header :func:`calibration_csv` writes: ``z, bin``, then
    only ``table_<key>_eta/rho`` and ``<key>_mean/std/n`` columns."""
    head = _first_row(path)
    rest = head[2:]
    table = [c for c in rest if c.startswith("table_") and c.endswith(("_eta", "_rho"))]
    stats = [c for c in rest if c.endswith(("_mean", "_std", "_n"))]
    return head[:2] == ["z", "bin"] and len(table) + len(stats) == len(rest) and len(rest) > 0


def is_lsr_png(path: Path) -> bool:
    """Whether ``path`` is a PNG lsr drew (its "Software" text names napari-lsr)."""
    from PIL import Image

    from lsr.figures import PNG_SOFTWARE

    with Image.open(path) as im:
        return im.format == "PNG" and str(im.info.get("Software", "")).startswith(PNG_SOFTWARE)


def export_geojson(comp: Comparison, folder: PathType, stem: str) -> list[Path]:
    """One QuPath GeoJSON per boundary (``<stem>_<key>.geojson``, level-0 px; ``_2``, ...
    after a key that is another's once made safe for a file name) and one with all of them
    (``<stem>_boundaries.geojson``, listed first). Empty boundaries are skipped.

    Each file carries :data:`GEOJSON_MARK`; a file of one of these names without it (the
    user's own annotations, e.g. a QuPath ground truth named after the slide) is refused
    with LsrInputError before anything is written.
    """
    from lsr.geojson import clip_to_slide
    from lsr.geojson import export_geojson as write

    folder = Path(folder)
    s = comp.scale_to_level0
    geoms, colours, names = {}, {}, {}
    for b in comp.boundaries:
        poly = comp.polygons.get(b.key)
        if poly is None or poly.is_empty:
            continue
        geoms[b.key] = _scaled(poly, s)
        if comp.level0_shape is not None:  # the last evaluation px may overhang the slide
            geoms[b.key] = clip_to_slide(geoms[b.key], comp.level0_shape)
        colours[b.key], names[b.key] = b.colour, b.name
    if not geoms:
        return []
    files: dict[Path, dict[str, Any]] = {folder / f"{stem}_boundaries.geojson": geoms}
    for key, g in geoms.items():  # run_b.v2 and run_b_v2 are one name made safe: _2
        name, n = f"{stem}_{_safe(key)}", 1
        while folder / f"{name}.geojson" in files:
            n += 1
            name = f"{stem}_{_safe(key)}_{n}"
        files[folder / f"{name}.geojson"] = {key: g}
    _check_targets(files, is_geojson_export, "a GeoJSON export of lsr's Compare")
    folder.mkdir(parents=True, exist_ok=True)
    for path, part in files.items():
        write(path, part, colours=colours, names=names, members={MARK_KEY: GEOJSON_MARK})
    return list(files)


def _scaled(geom: MultiPolygon, s: float) -> MultiPolygon:
    import shapely

    return shapely.affinity.affine_transform(geom, [s, 0.0, 0.0, s, 0.0, 0.0])


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in key)


def fig4_png(
    comp: Comparison,
    path: PathType,
    region: tuple[int, int, int, int] | None = None,
    *,
    title: str = "",
    max_px: int = 1600,
) -> None:
    """A Fig. 4-like PNG of ``region`` (None: the slide): H&E, every boundary, legend and
    scale bar. Regions larger than ``max_px`` are shown at a coarser resolution.

    An existing ``path`` that is not a PNG of lsr's (no napari-lsr "Software" text) is
    refused with LsrInputError before the slide is read.
    """
    from lsr import figures
    from lsr.slide import open_slide

    _check_targets([path], is_lsr_png, "a PNG drawn by lsr")

    y0, x0, y1, x1 = region or (0, 0, *comp.shape)
    step = max(1, math.ceil(max(y1 - y0, x1 - x0) / max_px))
    h, w = (y1 - y0) // step, (x1 - x0) // step
    with open_slide(comp.slide_path) as slide:
        mpp = comp.working_mpp * step
        rgb = slide.read_working(y0 // step, x0 // step, h, w, mpp)
    masks = {b.key: crop(comp.masks[b.key], (y0, x0, y1, x1))[::step, ::step][:h, :w]
             for b in comp.boundaries}  # fmt: skip
    colours = {b.key: b.colour for b in comp.boundaries}
    plt = figures._pyplot()
    from matplotlib.lines import Line2D

    width_in = 8.0
    labels = [b.label for b in comp.boundaries]
    # legend columns that fit the width at 8 pt (~0.07 in a character, 0.6 in of line and
    # padding an entry); long run names take more rows, never past the figure's edges
    entry_in = max((0.6 + 0.07 * len(t) for t in labels), default=1.0)
    ncol = max(1, min(3, len(labels), int(width_in // entry_in)))
    legend_in = 0.2 + 0.2 * math.ceil(len(labels) / ncol)
    title_in = 0.3 if title else 0.0
    note = figures.missing_boundaries({b.label: [masks[b.key]] for b in comp.boundaries},
                                      width_in)  # fmt: skip
    note_in = figures.note_height(note)
    height_in = width_in * h / w + legend_in + note_in + title_in
    fig = plt.figure(figsize=(width_in, height_in))
    figures.footnote(fig, note, height_in)
    bottom = (legend_in + note_in) / height_in
    ax = fig.add_axes((0.0, bottom, 1.0, 1.0 - bottom - title_in / height_in))
    figures.draw_boundaries(ax, rgb, masks, linewidth=1.4, colours=colours)
    figures._scale_bar(ax, w, 1000.0 / mpp)
    if title:
        fig.suptitle(title, y=1.0 - 0.05 / height_in, va="top", fontsize=9)
    handles = [Line2D([0], [0], color=figures.colour(b.key) if b.key in FIG4_COLOURS
                      else tuple(v / 255 for v in b.colour), linewidth=2.5)
               for b in comp.boundaries]  # fmt: skip
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, note_in / height_in),
               ncol=ncol, frameon=False, fontsize=8)  # fmt: skip
    figures._save(fig, path)  # (its "Software" text marks the PNG as lsr's)
    plt.close(fig)


def results_dict(
    comp: Comparison,
    scores: Mapping[str, dict] | None,
    calib: Sequence[dict] | None,
    region: tuple[int, int, int, int] | None,
) -> dict:
    """JSON-ready record of a comparison: inputs, Table 2 rows and the calibration table."""
    return {
        "format": "napari-lsr comparison",
        "version": 1,
        "slide": comp.slide_path,
        "level0_mpp": comp.level0_mpp,
        "working_mpp": comp.working_mpp,
        "shape_working_px": list(comp.shape),
        "block_px": comp.block_px,
        "band_px": comp.band_px,
        "region_working_px": list(region) if region else None,
        "boundaries": [
            {"key": b.key, "label": b.label, "colour": list(b.colour), "name": b.name}
            for b in comp.boundaries
        ],
        "models": {
            k: {
                "checkpoint": r.checkpoint,
                "sha256": r.sha256,
                "loss": r.loss,
                "working_mpp": r.working_mpp,
                "cached": comp.cached.get(k, False),
            }
            for k, r in comp.models.items()
        },
        "scores": dict(scores) if scores else None,
        "calibration": list(calib) if calib else None,
        "calibration_check": calibration_checks(calib) if calib else None,
    }


SCORES_HEADER = ["boundary", "label", *METRICS, "band_pixels"]


def scores_csv(scores: Mapping[str, dict]) -> str:
    """Table 2 layout as CSV: boundary, label, masked IoU/DICE, IoU/DICE (fractions)."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(SCORES_HEADER)
    for key, r in scores.items():
        cells = ["" if r[m] is None else f"{r[m]:.6f}" for m in METRICS]
        wr.writerow([key, r["label"], *cells, r["band_pixels"]])
    return buf.getvalue()


def calibration_csv(calib: Sequence[dict]) -> str:
    """Calibration table as CSV (fractions): per bin, table η/ρ and each model's mean/std/n."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    keys = list(calib[0]["models"]) if calib else []
    has_gt = bool(calib) and "ground_truth" in calib[0]
    tkeys = list(calib[0]["table"]) if calib else []
    head = ["z", "bin"] + [f"table_{k}_{s}" for k in tkeys for s in ("eta", "rho")]
    for k in keys + (["ground_truth"] if has_gt else []):
        head += [f"{k}_mean", f"{k}_std", f"{k}_n"]
    wr.writerow(head)
    for row in calib:
        cells: list[Any] = [row["z"], row["label"]]
        for k in tkeys:
            cells += [f"{row['table'][k][0]:.6f}", f"{row['table'][k][1]:.6f}"]
        stats = [row["models"][k] for k in keys] + ([row["ground_truth"]] if has_gt else [])
        for s in stats:
            cells += ["" if s["mean"] is None else f"{s['mean']:.6f}",
                      "" if s["std"] is None else f"{s['std']:.6f}", s["n"]]  # fmt: skip
        wr.writerow(cells)
    return buf.getvalue()


def write_results(
    comp: Comparison,
    folder: PathType,
    stem: str,
    scores: Mapping[str, dict] | None,
    calib: Sequence[dict] | None,
    region: tuple[int, int, int, int] | None = None,
) -> list[Path]:
    """``<stem>_results.json`` and, when computed, ``<stem>_scores.csv`` and
    ``<stem>_calibration.csv`` (fractions), written atomically.

    If any of them exists and is not lsr's (no ``format`` key of a comparison, another CSV
    header), LsrInputError is raised before any is written.
    """
    folder = Path(folder)
    record = json.dumps(results_dict(comp, scores, calib, region), indent=1) + "\n"
    files = [(f"{stem}_results.json", record, is_results_json, "a results JSON")]
    if scores:
        files.append((f"{stem}_scores.csv", scores_csv(scores), is_scores_csv, "a scores CSV"))
    if calib:
        text = calibration_csv(calib)
        files.append((f"{stem}_calibration.csv", text, is_calibration_csv, "a calibration CSV"))
    for name, _text, ours, what in files:
        _check_targets([folder / name], ours, f"{what} of lsr's Compare")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text, _ours, _what in files:
        atomic_write_text(folder / name, text)
    return [folder / name for name, *_ in files]
