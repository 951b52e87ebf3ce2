"""``lsr evaluate``: masked and unmasked IoU / DICE of predicted masks against ground truth."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lsr.arrays import is_single_channel, read_npy
from lsr.atomic import atomic_write_text, check_replaceable
from lsr.cli.console import interrupted
from lsr.errors import LsrInputError
from lsr.slide import slide_name
from lsr.synthetic_config import MANIFEST, MANIFEST_FORMAT

_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
#: Ground truth is named ``<patch>_gt.*`` or ``<patch>_mask.*`` (as ``lsr synth`` writes it and
#: as the napari reader and the Trainer's folder scan recognise it); in a --gt folder nothing
#: else (the H&E image ``<patch>.tif``, the grid ``<patch>_grid.npy``) may serve as ground truth.
_GT_STEM = re.compile(r"_(gt|mask)$", re.IGNORECASE)
#: Grids as the Trainer finds them beside a slide (lsr.training_process.GRID_PATTERNS).
_GRID_STEM = re.compile(r"[_.-]grid$", re.IGNORECASE)
#: The tag that tells a file's role, after the patch name.
_TAG = re.compile(r"[_.-]grid$|_(gt|mask|pred|prediction|prob|probability)$", re.IGNORECASE)


def _expand(paths: list[Path], suffixes: tuple[str, ...] = _SUFFIXES) -> list[Path]:
    """Files as given; a folder stands for its files with ``suffixes`` (masks by default;
    grids may also be .csv), sorted by name."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():  # hidden names: a killed save's .x.tmp-….tif, .DS_Store, never data
            out += sorted(
                q
                for q in p.iterdir()
                if q.suffix.lower() in suffixes and not q.name.startswith(".")
            )
        elif not p.exists():
            raise LsrInputError("file not found", p)
        else:
            out.append(p)
    return out


#: ``lsr predict``'s outputs in ``OUT/<slide>/``, preferred first; keyed by the folder name.
_PREDICT_OUTPUTS = ("probability.tif", "mask.tif")


def _expand_predictions(paths: list[Path]) -> list[Path]:
    """Prediction files: a folder stands for its mask files and, for ``lsr predict``'s output
    ``OUT/<slide>/``, each sub-folder's ``probability.tif`` (its ``mask.tif`` only when there
    is no ``probability.tif``); ``mask.tif`` beside ``probability.tif`` is skipped."""
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            if p.name in _PREDICT_OUTPUTS and _unfinished_status(p.parent):
                continue  # lsr predict's file of a failed or killed run, named by itself
            out += _expand([p])
            continue
        for folder in (p, *sorted(q for q in p.iterdir() if q.is_dir())):
            if _unfinished_status(folder):  # a killed run's probability.tif, no mask: not it
                continue
            outputs = [folder / n for n in _PREDICT_OUTPUTS if (folder / n).is_file()]
            if folder is not p:
                out += outputs[:1]
                continue
            files = _expand([p])
            if len(outputs) > 1:  # a slide folder of lsr predict given itself
                files = [f for f in files if f not in outputs[1:]]
            out += files
    return out


def _unfinished_status(folder: Path) -> str | None:
    """``"failed"`` or ``"running"`` when ``folder`` is a slide folder of ``lsr predict``
    whose last run did not complete (its ``summary.json`` says so), else None."""
    from lsr.predict import summary_status

    status = summary_status(folder)
    return status if status in ("failed", "running") else None


def _unfinished_predictions(paths: list[Path]) -> list[str]:
    """One line per slide folder of ``lsr predict`` whose last run failed or did not end:
    not evaluated (:func:`_expand_predictions` leaves it out), whatever files it holds."""
    from lsr.predict import ERROR

    notes = []
    for p in paths:
        folders = [p, *sorted(q for q in p.iterdir() if q.is_dir())] if p.is_dir() else []
        if p.is_file() and p.name in _PREDICT_OUTPUTS:
            folders = [p.parent]
        for folder in folders:
            if status := _unfinished_status(folder):
                see = f" (see {folder / ERROR})" if (folder / ERROR).is_file() else ""
                why = {"failed": f"failed{see}",
                       "running": "is running (or was killed)"}[status]  # fmt: skip
                notes.append(f"{folder}: its lsr predict {why}, no prediction there")
    return notes


def _expand_gt(paths: list[Path]) -> list[Path]:
    """Ground-truth files: a folder stands for its ``*_gt.*`` / ``*_mask.*`` files; a folder
    without any such file (``gt/x.png`` for ``preds/x.png``) for its one-channel images that
    are not grids (an H&E picture or a grid never counts); a file given by itself is taken as
    ground truth unless it is a grid."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = _expand([p])
            gts = [q for q in found if _GT_STEM.search(_stem(q))]
            if found and not gts:
                gts = [q for q in found if not _is_grid_name(q) and is_single_channel(q)]
            if found and not gts:
                raise LsrInputError(
                    "no ground truth in this folder: ground truth is named <patch>_gt.* or "
                    "<patch>_mask.*, or is a folder of one-channel masks (RGB images and grids "
                    "never count); rename it, or give the files themselves",
                    p,
                )
            out += gts
        else:
            if _is_grid_name(p):
                raise LsrInputError("a grid is not ground truth: give it with --grid", p)
            out += _expand([p])
    return out


def read_map(path: Path, what: str = "mask") -> np.ndarray:
    """A 2-D map from .npy, .png or a (pyramidal) TIFF, as stored: float maps are cancer
    probabilities, integer maps are masks. Only the full-resolution level of a pyramid is
    read; an RGB(A) image whose colour channels agree (a grey map saved as RGB) gives its
    first channel, one with colours (an H&E slide given by mistake) is an error. ``what``
    (``"probability map"``, ``"ground-truth mask"``, ...) names the map in errors; an
    empty map is one (it would score a perfect IoU 1)."""
    from lsr.slide import check_tiff_complete, quiet_tifffile

    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            a = read_npy(path)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with quiet_tifffile():
                check_tiff_complete(path)  # a truncated file says so, not a zlib error
                a = tifffile.imread(path, level=0) if _is_pyramid(path) else tifffile.imread(path)
        elif suffix == ".png":
            from skimage import io

            a = io.imread(path)
        else:
            raise LsrInputError(f"unknown mask format '{suffix}'; use .tif, .png or .npy", path)
    except LsrInputError:
        raise
    except Exception as err:
        raise LsrInputError(f"cannot read {what}: {err}", path) from err
    a = np.asarray(a)
    if a.size == 0:
        dims = " × ".join(str(d) for d in a.shape)
        raise LsrInputError(f"empty image ({dims} pixels): a {what} needs pixels", path)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise LsrInputError(
                "a colour (RGB) image, not a mask or probability map: its red, green and "
                "blue differ (the H&E slide itself?)",
                path,
            )
        a = a[..., 0]
    a = np.squeeze(a)
    if a.ndim != 2:
        raise LsrInputError(f"a {what} must be 2-D, got shape {a.shape}", path)
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        raise LsrInputError(f"{what} contains NaN", path)
    return a


def read_mask(path: Path) -> np.ndarray:
    """A 2-D boolean ground-truth mask (see :func:`read_map`): float maps are cancer where
    >= 0.5, integer maps (masks, label images) where nonzero (:func:`lsr.metrics.cancer_mask`)."""
    from lsr.metrics import cancer_mask

    return cancer_mask(read_map(path, "ground-truth mask"))


#: How ``lsr evaluate`` reads a prediction (``--pred-kind``).
PRED_KINDS = ("auto", "probability", "mask")
#: What a prediction read as each kind is called in errors.
_PRED_WHAT = {"auto": "prediction", "probability": "probability map", "mask": "predicted mask"}


def prediction_kind(path: Path, a: np.ndarray) -> str:
    """'probability' or 'mask' for a prediction ``a`` read from ``path`` (``--pred-kind auto``).

    A value count cannot tell a near-constant probability map (a collapsed network's {81, 82},
    or {0, v} where tissue was skipped) from a mask, so the rule uses dtype, name and the exact
    mask values: float maps are probabilities; bool and integer maps other than uint8/uint16
    (label images) are masks; ``lsr predict``'s files go by name (``probability.*`` is a
    probability, ``mask.*`` a mask); any other uint8/uint16 map is a mask when its values are
    only {0, 1}, {0, 255} or {0, dtype max}, else a quantised probability (value / dtype max).
    """
    if np.issubdtype(a.dtype, np.floating):
        return "probability"
    if a.dtype not in (np.uint8, np.uint16):
        return "mask"
    stem = path.name.split(".")[0].lower()
    if stem in ("probability", "mask"):
        return stem
    values = set(np.flatnonzero(np.bincount(a.ravel(), minlength=2)).tolist())
    top = int(np.iinfo(a.dtype).max)
    if any(values <= {0, on} for on in (1, 255, top)):
        return "mask"
    return "probability"


def read_prediction(path: Path, kind: str = "auto") -> tuple[np.ndarray, bool]:
    """((H, W) float64 cancer probability, whether it is one) of a prediction.

    ``kind``: 'probability' (float maps as stored, uint8/uint16 value / dtype max, as
    ``lsr predict``'s ``probability.tif`` stores round(255 p)), 'mask' (nonzero = 1, not a
    probability) or 'auto' (:func:`prediction_kind` decides).
    """
    if kind not in PRED_KINDS:
        raise LsrInputError(f"--pred-kind must be one of {', '.join(PRED_KINDS)}, got {kind!r}")
    a = read_map(path, _PRED_WHAT[kind])
    if kind == "auto":
        kind = prediction_kind(path, a)
    if kind == "mask":
        return (a > 0).astype(np.float64), False
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise LsrInputError(
                f"a probability map must lie in [0, 1], found {lo:g}..{hi:g} (percent, logits "
                "or a scaled map?); pass --pred-kind mask if nonzero means cancer",
                path,
            )
        return a.astype(np.float64), True
    if a.dtype in (np.uint8, np.uint16):
        return a.astype(np.float64) / np.iinfo(a.dtype).max, True
    raise LsrInputError(
        f"a probability map must be float, uint8 (value / 255) or uint16 (value / 65535), got "
        f"{a.dtype}; pass --pred-kind mask if it is a mask",
        path,
    )


def stored_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) of a TIFF's full-resolution image or a ``.npy``'s array, from its header
    alone; None when the header does not tell (the full read then says what is wrong).
    Why: a ground truth at the slide's level 0 (30000 x 40000) was read whole, 2.4 GB,
    only to be refused for not matching a prediction at the working resolution."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            from lsr.slide import quiet_tifffile

            with quiet_tifffile(), tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                axes, shape = series.axes, series.shape
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        elif path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None
    except Exception:  # the full read names the problem
        return None
    return None


def _is_pyramid(path: Path) -> bool:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return len(tf.series) > 0 and len(tf.series[0].levels) > 1


def _stem(p: Path) -> str:
    """The name without its extension (``.ome.tif`` as one), as ``lsr predict`` names a
    slide's folder: ``S21.1234.A1_gt.ome.tif`` -> ``S21.1234.A1_gt`` (the dots are the
    name's)."""
    return slide_name(p)


def _is_grid_name(p: Path) -> bool:
    return bool(_GRID_STEM.search(_stem(p)))


def _key(p: Path) -> str:
    """The patch name a file stands for: ``patch_000_gt.tif`` -> ``patch_000``. One tag is
    taken off, in any case (``Liver_mask_gt`` is patch ``Liver_mask``; ``CASE_GT``, ``CASE``)."""
    if p.name.lower() in _PREDICT_OUTPUTS:  # lsr predict's OUT/<slide>/probability.tif
        return p.resolve().parent.name
    return _TAG.sub("", _stem(p), count=1)


def _by_key(files: list[Path], what: str) -> dict[str, Path]:
    """``{patch name: file}``; two files for one patch is an error naming both (a dict
    would silently keep the last)."""
    out: dict[str, list[Path]] = {}
    for f in files:
        out.setdefault(_key(f), []).append(f)
    for key, fs in out.items():
        if len(fs) > 1:
            raise LsrInputError(
                f"{len(fs)} {what} files for patch '{key}': {', '.join(str(f) for f in fs)}; "
                "keep one"
            )
    return {key: fs[0] for key, fs in out.items()}


def _pair(
    preds: list[Path], gts: list[Path], by: str, what: str = "ground-truth"
) -> list[tuple[Path, Path]]:
    """Pair each prediction with its ground truth (or grid: ``what``) by name or by order."""
    if by == "order":
        if len(preds) != len(gts):
            raise LsrInputError(f"{len(preds)} predictions but {len(gts)} {what} files")
        return list(zip(preds, gts, strict=True))
    _by_key(preds, "prediction")
    gmap = _by_key(gts, what)
    pairs = []
    for p in preds:
        if _key(p) not in gmap:
            k = _key(p)
            named = f"{k}_gt.* or {k}_mask.*" if what == "ground-truth" else f"{k}_grid.*"
            raise LsrInputError(f"no {what} file for patch '{k}' (looked for {named})", p)
        pairs.append((p, gmap[_key(p)]))
    return pairs


def calibration(
    pairs: list[tuple[Path, Path]],
    block_px: int,
    table: Path | None = None,
    pred_kind: str = "auto",
) -> tuple[list[dict], bool]:
    """Per bin z: predicted cancer fraction of the blocks (mean, std, n) beside the count
    table's eta ± rho (``table_mean``/``table_std``) when a table is given; and whether every
    prediction was a probability map (not a mask)."""
    from lsr.counttable import PAPER_EDGES
    from lsr.grid import grid_fits, grid_geometry, load_grid
    from lsr.metrics import calibration_table

    ct = None
    if table is not None:
        from lsr.counttable import CountTable

        ct = CountTable.load(table)
    edges = ct.edges if ct is not None else PAPER_EDGES
    maps, zs, probabilities = [], [], True
    with _progress() as bar:
        task = bar.add_task("reading grids", total=len(pairs))
        for p, g in pairs:
            m, is_probability = read_prediction(p, pred_kind)
            probabilities &= is_probability
            oy, ox = (int(v) for v in grid_geometry(g)["origin"])  # the sidecar's, else (0, 0)
            grid = load_grid(g, block_px=block_px, origin=(oy, ox))
            m = m[oy:, ox:]  # block (0, 0) starts at the origin, as in training and Compare
            rows, cols = m.shape[0] // block_px, m.shape[1] // block_px
            fits, expected = grid_fits(grid.shape, block_px, (0, 0), m.shape)
            if not fits:  # the last partial block may be in the grid, as training allows
                at = f" from the grid's origin (y, x) = ({oy}, {ox}) px" if oy or ox else ""
                raise LsrInputError(
                    f"grid of {grid.shape} blocks does not match the prediction's {m.shape} px"
                    f"{at} = {' x '.join(expected)} blocks of {block_px} px",
                    g,
                )
            try:  # probabilities are binned with the table's edges, not always the paper's
                zs.append(grid.bins(edges)[:rows, :cols])  # partial blocks are not scored
            except LsrInputError as err:
                raise LsrInputError(err.problem, g) from None
            maps.append(m)
            bar.advance(task)
    if not any((z >= 0).any() for z in zs):  # every bin would show 0 blocks, no distance
        _no_labelled_blocks([g for _, g in pairs])
    n_bins = len(edges) - 1
    rows_out = calibration_table(maps, zs, block_px, n_bins=n_bins)
    for row in rows_out:
        if ct is not None:
            row["table_mean"] = float(ct.eta[row["z"], ct.cancer])
            row["table_std"] = float(ct.rho[row["z"], ct.cancer])
    return rows_out, probabilities


def _progress() -> Any:
    """A transient progress bar on stderr (stdout keeps only the tables, for files)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip


def _no_labelled_blocks(grids: list[Path]) -> None:
    """Refuse grids without a labelled block, naming them, as ``lsr train`` does: their
    calibration would be an empty table."""
    if len(grids) == 1:
        raise LsrInputError(
            "no labelled blocks: every block of the grid is unlabelled (NaN probability or "
            "z = -1), nothing to calibrate",
            grids[0],
        )
    named = ", ".join(g.name for g in grids[:3]) + (", …" if len(grids) > 3 else "")
    raise LsrInputError(
        f"no labelled blocks: every block of the {len(grids)} grids ({named}) is unlabelled "
        "(NaN probability or z = -1), nothing to calibrate"
    )


def evaluate(
    pred: list[Path] = typer.Option(..., "--pred", "-p", help="predicted masks or probability "
                                    "maps (files or folder), or lsr predict's output folder "
                                    "(each OUT/<slide>/probability.tif, named <slide>)"),
    gt: list[Path] = typer.Option([], "--gt", "-g", help="ground-truth masks (files or folder)"),
    band: int | None = typer.Option(None, "--band", "-b", help="band around the boundary, "
                                    "working px", show_default="240, or band_px of the lsr "
                                    "synth manifest.json beside --gt/--grid"),
    pair_by: str = typer.Option("name", "--pair-by", help="'name' (strip _gt/_pred) or 'order'"),
    grid: list[Path] = typer.Option([], "--grid", help="low-resolution grids of the same "
                                    "patches (files or folder): adds the calibration table"),
    block_px: int | None = typer.Option(None, "--block-px", help="block side of the grids, "
                                        "working px", show_default="the grids' sidecars' "
                                        "(<grid>.json), else the lsr synth manifest.json's "
                                        "beside --gt/--grid, else 240"),
    table: Path | None = typer.Option(None, "--table", "-t", help="count table shown beside "
                                      "the calibration (.json/.csv)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the scores as JSON here"),
    pred_kind: str = typer.Option("auto", "--pred-kind", help="'probability', 'mask' or "
                                  "'auto': float = probability; uint8/uint16 only 0/1, 0/255 or "
                                  "0/max = mask, other values = probability (value / max); "
                                  "probability.tif / mask.tif by name; other integers = mask"),
) -> None:  # fmt: skip
    """Masked (within BAND px of the true boundary) and unmasked IoU / DICE, paper Table 2;
    with --grid, the calibration per bin z: the predicted cancer fraction of the blocks
    (mean ± std) beside the count table's η ± ρ, which needs no ground truth."""
    if pred_kind not in PRED_KINDS:
        raise LsrInputError(
            f"--pred-kind must be one of {', '.join(PRED_KINDS)}, got {pred_kind!r}"
        )
    if pair_by not in ("name", "order"):
        raise LsrInputError(f"--pair-by must be 'name' or 'order', got {pair_by!r}")
    if not gt and not grid:
        raise LsrInputError("nothing to evaluate against: give --gt masks and/or --grid grids")
    if band is not None and band < 0:
        raise LsrInputError(f"--band must be a non-negative number of px, got {band}")
    if block_px is not None and block_px <= 0:  # the flag's fault, before any grid is read
        raise LsrInputError(f"--block-px must be a positive whole number of px, got {block_px}")
    if table is not None and not grid:
        raise LsrInputError(
            "--table needs --grid: calibration compares predictions per block with the table"
        )
    if json_out is not None:  # before the work: never replace a file that is not ours
        check_replaceable(json_out, _is_scores_json, "an lsr evaluate result", "--json")
    preds = _expand_predictions(list(pred))
    unfinished = _unfinished_predictions(list(pred))
    if not preds:
        raise LsrInputError(
            "no predictions to evaluate: --pred takes .tif/.png/.npy files, folders of them, "
            "or lsr predict's output folder (OUT/<slide>/probability.tif)"
            + (f"; {'; '.join(unfinished)}" if unfinished else "")
        )
    console = Console()
    for note in unfinished:
        console.print(f"[yellow]{note}: not evaluated[/yellow]", markup=True, highlight=False)
    if block_px is not None and not grid:
        console.print(f"[yellow]--block-px {block_px} is used only with --grid: ignored[/yellow]")
    if band is not None and not gt:
        console.print(f"[yellow]--band {band} is used only with --gt: ignored[/yellow]")
    from lsr.grid import GRID_SUFFIXES

    grids = _expand(list(grid), GRID_SUFFIXES)  # grid folders may hold .csv grids
    # a folder of test patches also holds images and ground truth: keep its grid files
    grids = [g for g in grids if _is_grid_name(g)] or grids
    block_px = _block_px_from_sidecars(grids, block_px, console)
    band, block_px = _scale_from_manifest(
        band, block_px, [*gt, *grid], console, (bool(gt), bool(grid))
    )
    try:
        calib: list[dict] | None = None
        probabilities = True
        if grid:  # before the scores are printed: unusable grids are refused first
            calib, probabilities = calibration(
                _pair(preds, grids, pair_by, "grid"), block_px, table, pred_kind
            )
        result: dict = {}
        if gt:
            result = _scores(_pair(preds, _expand_gt(list(gt)), pair_by), band, console, pred_kind)
        if calib is not None:
            result["calibration"] = calib
            result["block_px"] = block_px
            console.print(_calibration_table(calib, table is not None))
            if table is not None:
                result["calibration_check"] = _report_calibration_check(
                    calib, probabilities, console
                )
    except KeyboardInterrupt:
        raise interrupted("nothing was written" + (f" to {json_out}" if json_out else "")) from None
    if json_out is not None:  # (after the work: a Ctrl-C above leaves no file)
        atomic_write_text(json_out, json.dumps(result, indent=2))
        console.print(f"scores written to {json_out}")


def _block_px_from_sidecars(
    grids: list[Path], block_px: int | None, console: Console
) -> int | None:
    """``--block-px`` as given, else the one the grids' sidecars (``<grid>.json``) agree on;
    a given value they contradict is an error naming the sidecar, as in ``lsr train``."""
    from lsr.grid import sidecar_geometry

    geo = sidecar_geometry(grids)
    if not geo:
        return block_px
    if block_px is None:
        console.print(f"--block-px {geo['block_px']} (from {geo['from']})", markup=False)
        return int(geo["block_px"])
    if block_px != geo["block_px"]:
        raise LsrInputError(
            f"the grids' blocks are {geo['block_px']} px, and --block-px says {block_px}: "
            "drop --block-px (or fix the sidecar)",
            geo["from"],
        )
    return block_px


def _is_scores_json(path: Path) -> bool:
    """Whether ``path`` holds what ``lsr evaluate --json`` writes (scores and/or calibration)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and bool({"per_patch", "calibration"} & set(data))


#: What ``lsr evaluate`` assumes without --band/--block-px and without a manifest: one block
#: of the paper's scale (240 px at 4.17 µm/px).
DEFAULT_BAND_PX = DEFAULT_BLOCK_PX = 240


def find_manifest(paths: list[Path], unreadable: list[str] | None = None) -> Path | None:
    """The ``lsr synth`` manifest.json of the first path inside a synth output: beside a file,
    in a folder, or one folder up (``OUT/test/`` -> ``OUT/manifest.json``). A manifest.json
    that cannot be read (truncated, not JSON) is passed over, with a line saying why added to
    ``unreadable``: the caller must say so, as its band and blocks are then not used."""
    for p in paths:
        folder = p if p.is_dir() else p.parent
        for candidate in (folder / MANIFEST, folder.parent / MANIFEST):
            if candidate.is_file():
                try:
                    data = json.loads(candidate.read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    line = f"{candidate}: cannot read it ({err})"
                    if unreadable is not None and line not in unreadable:  # once, not per file
                        unreadable.append(line)
                    continue
                if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT:
                    return candidate
    return None


def _scale_from_manifest(
    band: int | None,
    block_px: int | None,
    paths: list[Path],
    console: Console,
    used: tuple[bool, bool] = (True, True),
) -> tuple[int, int]:
    """(band, block_px): each as given; one not given comes from the lsr synth manifest
    beside the data (its default blocks are 120 px, not the paper's 240), else 240. Says which
    values it took from where, and notes a given value that differs from the manifest's;
    ``used`` (band, block_px) keeps an option the run does not use out of the output."""
    problems: list[str] = []
    manifest = find_manifest(paths, problems)
    data: dict[str, Any] = {}
    if manifest is not None:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    out, defaults = [], []
    options = (
        ("--band", band, "band_px", DEFAULT_BAND_PX),
        ("--block-px", block_px, "block_px", DEFAULT_BLOCK_PX),
    )
    for (name, value, key, default), use in zip(options, used, strict=True):
        known = data.get(key)
        known = int(known) if isinstance(known, int | float) and known > 0 else None
        if use and value is None and known is None and key in data:
            problems.append(f"{manifest}: its {key} {data[key]!r} is not a positive number")
        if use and value is None and known is not None:
            console.print(f"{name} {known} (from {manifest}; pass {name} to override)")
            value = known
        elif use and value is not None and known is not None and value != known:
            console.print(f"[yellow]{name} {value}: the data's {manifest} says {known}[/yellow]")
        if use and value is None:
            defaults.append(f"{name} {default}")
        out.append(default if value is None else value)
    for line in problems:  # its band and blocks would silently become the defaults
        used_instead = f"; using the default {' and '.join(defaults)}" if defaults else ""
        console.print(f"[yellow]{escape(line)}: ignored{used_instead}[/yellow]", highlight=False)
    return out[0], out[1]


def _scores(
    pairs: list[tuple[Path, Path]], band: int, console: Console, pred_kind: str = "auto"
) -> dict:
    """Pooled masked/unmasked scores of the pairs, printed as a table and returned; each
    per-patch row says how its prediction was read (``pred_kind``)."""
    from lsr.metrics import pooled_scores

    preds, gts, kinds = [], [], []
    with _progress() as bar:
        task = bar.add_task("reading", total=len(pairs))
        for p, g in pairs:
            prob, is_probability = read_prediction(p, pred_kind)
            pm = prob >= 0.5
            gt_shape = stored_shape(g)  # before reading it: it may be level 0 of a slide
            # (an empty one is read, and named so)
            if gt_shape is not None and min(gt_shape) > 0 and gt_shape != pm.shape:
                raise LsrInputError(f"shape {pm.shape} differs from ground truth {g} {gt_shape}", p)
            gm = read_mask(g)
            kinds.append("probability" if is_probability else "mask")
            if pm.shape != gm.shape:
                raise LsrInputError(f"shape {pm.shape} differs from ground truth {g} {gm.shape}", p)
            preds.append(pm)
            gts.append(gm)
            bar.advance(task)
        bar.update(task, description="scoring", completed=0)
        scores = pooled_scores(
            preds, gts, band=band, progress=lambda done, _n: bar.update(task, completed=done)
        )
    for row, (p, g), kind in zip(scores["per_patch"], pairs, kinds, strict=True):
        row["pred"], row["gt"], row["pred_kind"] = str(p), str(g), kind
    n_prob = kinds.count("probability")
    console.print(
        f"predictions read as {n_prob} probability map(s) (>= 0.5 = cancer) and "
        f"{len(kinds) - n_prob} mask(s) (nonzero = cancer); --pred-kind {pred_kind}"
    )
    table = Table(
        title=f"{len(pairs)} patches, band {band} px ({scores['n_with_boundary']} with a boundary)"
    )
    for col in ("score", "pooled", "per-patch mean ± std"):
        table.add_column(col, justify="right")

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    for key, label in (("masked_iou", "masked IoU"), ("masked_dice", "masked DICE"),
                       ("iou", "IoU"), ("dice", "DICE")):  # fmt: skip
        table.add_row(
            label, f(scores[key]), f"{f(scores[key + '_mean'])} ± {f(scores[key + '_std'])}"
        )
    console.print(table)
    return scores


def _report_calibration_check(
    rows: list[dict], probabilities: bool, console: Console
) -> dict[str, Any] | None:
    """Print the block-weighted distance from the table; warn when
    :func:`lsr.metrics.calibration_check` flags it (probability maps only)."""
    from lsr.metrics import CALIBRATION_ERROR_LIMIT, calibration_check

    check = calibration_check(rows, [r["table_mean"] for r in rows])
    if check["error"] is None:
        return None
    check["flagged"] = check["flagged"] and probabilities
    console.print(
        f"block-weighted distance from the count table: {100 * check['error']:.1f} points "
        f"({check['blocks']} blocks)"
    )
    if check["flagged"]:
        console.print(
            f"[yellow]more than {100 * CALIBRATION_ERROR_LIMIT:.0f} points: the network does "
            "not follow its count table (in the training study 6 of 8 such networks scored "
            "below the blocky model)[/yellow]"
        )
    return check


def _calibration_table(rows: list[dict], with_table: bool) -> Table:
    """Rich table: bin, blocks, predicted cancer % (mean ± std)[, count table η ± ρ]."""
    t = Table(title="Calibration: predicted cancer fraction of the blocks per bin z")
    cols = ["z", "blocks", "predicted %"] + (["count table %"] if with_table else [])
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        pred = "–" if r["mean"] is None else f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
        cells = [str(r["z"]), str(r["n"]), pred]
        if with_table:
            cells.append(f"{100 * r['table_mean']:.1f} ± {100 * r['table_std']:.1f}")
        t.add_row(*cells)
    return t
