"""npe2 readers: whole-slide images, low-resolution block grids, count tables.

World coordinates are micrometres from the top-left corner of the slide, so that a slide,
its grid and anything painted on them line up and napari's scale bar is right:

- a slide layer has ``scale = (mpp, mpp)`` and ``translate = (mpp/2, mpp/2)`` (napari puts
  a pixel's centre at ``index * scale + translate``; level-0 pixel ``j`` covers
  ``[j, j+1) * mpp`` µm);
- a grid layer has one pixel per block: ``scale = block_px * working_mpp`` and
  ``translate = (origin + block_px / 2) * working_mpp``.

Grid files are recognised by their name: ``*_grid.{npy,csv,tif,tiff}`` or
``*.grid.{npy,csv,tif,tiff}`` (``lsr synth`` writes ``<slide>_grid.npy``). Their geometry
comes from a sidecar JSON beside them (``<grid name without suffix>.json``, e.g.
``slide_grid.json``: ``{"block_px": 240, "working_mpp": 4.17, "origin": [0, 0]}``), else
the paper's 240 px blocks at 4.17 µm/px. A TIFF is read as a slide only when it looks like
one (tiled, several levels, or larger than 4096 px); other TIFFs are left to other readers.

Count-table files (CSV with ``bin`` and ``cancer_mean`` columns, JSON with the count-table
or annotation-session format) open the Count table dock widget: such a reader returns
``[(None,)]`` (npe2's "read, but no layer" sentinel) and docks the widget in the current
viewer. Bad input (no pixel size, unreadable file) is reported as a napari notification.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lsr.errors import LsrInputError
from lsr.grid import grid_geometry, grid_sidecar

SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".scn", ".mrxs", ".vms", ".vmu", ".bif")
GRID_PATTERN = re.compile(r"[._]grid\.(npy|csv|tif|tiff)$", re.IGNORECASE)
GT_PATTERN = re.compile(r"_(gt|mask)(\.ome)?\.(tif|tiff)$", re.IGNORECASE)
#: Colour of a ground-truth mask layer (deep orange): none of the boundary colours (Fig. 4's
#: red, green, blue, cyan, magenta, yellow; lsr.compare.EXTRA_COLOURS), so a filled area
#: is never taken for a model's line.
GT_COLOUR = "#ff6a00"
#: Labels TIFFs (as the plugin's labels writer names them): label values kept as they are.
LABELS_PATTERN = re.compile(r"_labels(\.ome)?\.(tif|tiff)$", re.IGNORECASE)
#: ``lsr predict``'s per-slide outputs (``OUT/<slide>/probability.tif``, ``mask.tif``).
PREDICT_OUTPUTS = ("probability.tif", "probability.tiff", "mask.tif", "mask.tiff")
#: Shape of a plain TIFF above which it is treated as a slide (px, longer side).
PLAIN_TIFF_MAX_PX = 4096
#: Colours of the bins 1..9 on the z labels layer (bin 0 and "no label" are transparent).
Z_COLOURS = {
    z: c
    for z, c in enumerate(
        [
            "#fde0c5", "#facba6", "#f8b58b", "#f59e72", "#f2855d",
            "#ef6a4c", "#e34f45", "#c93a4a", "#a52a54",
        ],
        start=1,
    )
}  # fmt: skip

LayerData = list[tuple]
#: Units of every layer the plugin makes: world coordinates are µm (the scale bar reads µm/mm).
UNITS = ("µm", "µm")


def _notify(message: str, severity: str = "error") -> None:
    from napari.utils.notifications import show_error, show_warning

    (show_warning if severity == "warning" else show_error)(message)


def _one_path(path: str | list[str]) -> str | None:
    if isinstance(path, list | tuple):
        return path[0] if len(path) == 1 else None
    return path


# --- slides ------------------------------------------------------------------------------


def _looks_like_slide_tiff(path: Path) -> bool:
    """A tiled, pyramidal or large TIFF (cheap: reads only the headers)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            if page.is_tiled or len(tf.series[0].levels) > 1 or len(page.pages or ()) > 0:
                return True
            return (
                max(page.shape[:2]) > PLAIN_TIFF_MAX_PX
                or "aperio" in (page.description or "").lower()
            )
    except Exception:
        return True  # a corrupt slide: claim it and say why it cannot be read


def _is_photo_tiff(path: Path, lossy: bool = False) -> bool:
    """A colour TIFF (3+ samples per pixel; with ``lossy``, also JPEG/JPEG 2000 compressed):
    an H&E image whatever its name says (``TMA_grid.tif``, ``Liver_mask.tif``), never a
    grid, and with ``lossy`` never a mask (lossy compression would blur its 0/1 values)."""
    import tifffile

    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            colour = int(page.samplesperpixel) >= 3
            jpeg = int(page.compression) in (6, 7, 33003, 33005, 34712, 50001, 50002)
            return colour and (jpeg or not lossy)
    except Exception:
        return False  # unreadable: the reader its name chose says why


def get_slide_reader(path: str | list[str]):
    """The slide reader for a whole-slide image, else None (grids and small TIFFs)."""
    p = _one_path(path)
    if p is None or (GRID_PATTERN.search(p) and not _is_photo_tiff(Path(p))):
        return None
    pp = Path(p)
    if pp.suffix.lower() not in SLIDE_SUFFIXES or not pp.is_file():
        return None
    if pp.suffix.lower() in (".tif", ".tiff") and not _looks_like_slide_tiff(pp):
        return None
    return read_slide


def slide_layer_data(path: str | Path) -> tuple:
    """(levels, kwargs, layer type) for a slide: a lazy multiscale image in µm.

    ``*_gt.tif`` / ``*_mask.tif`` become a labels layer instead: 1 = cancer wherever the
    file is > 0, as :mod:`lsr.compare` and :mod:`lsr.metrics` read it (0/1 and 0/255 masks
    alike). ``*_labels.tif`` (the labels writer's files) become a labels layer with the
    file's values.
    Raises LsrInputError (e.g. no pixel size in the file).
    """
    from lsr.slide import open_slide, slide_name

    slide = open_slide(path)
    levels = slide.multiscale()
    mpp = float(slide.mpp)
    meta = {"lsr_slide": {"path": str(path), "mpp": mpp, "shape": list(slide.shape)}}
    kwargs: dict[str, Any] = {
        "name": slide_name(path),
        "scale": (mpp, mpp),
        "translate": (mpp / 2, mpp / 2),
        "units": UNITS,
        "metadata": meta,
        "multiscale": len(levels) > 1,
    }
    data = levels if len(levels) > 1 else levels[0]
    if LABELS_PATTERN.search(str(path)):
        labels = [lv[..., 0] if lv.ndim == 3 else lv for lv in levels]
        return (labels if len(labels) > 1 else labels[0], kwargs, "labels")
    if Path(path).name.lower() in PREDICT_OUTPUTS:
        return _prediction_layer(Path(path), levels, slide.dtype, kwargs)
    if GT_PATTERN.search(str(path)) and not _is_photo_tiff(Path(path), lossy=True):
        masks = [(lv[..., 0] if lv.ndim == 3 else lv) > 0 for lv in levels]
        masks = [m.astype(np.uint8) for m in masks]
        kwargs.update(opacity=0.4, colormap={1: GT_COLOUR, None: "transparent"})
        return (masks if len(masks) > 1 else masks[0], kwargs, "labels")
    kwargs["rgb"] = levels[0].ndim == 3 and levels[0].shape[-1] in (3, 4)
    return (data, kwargs, "image")


def _prediction_layer(path: Path, levels: list[Any], dtype: Any, kwargs: dict) -> tuple:
    """``lsr predict``'s probability.tif as a one-channel heat map (0-1, or 0-255 for the
    uint8 file), its mask.tif as labels in the model's Fig. 4 colour, named after their
    slide's folder: not as grey RGB slides."""

    from lsr.geojson import FIG4_COLOURS

    plain = [lv[..., 0] if lv.ndim == 3 else lv for lv in levels]
    folder = path.parent.name
    loss = None
    try:
        summary = json.loads((path.parent / "summary.json").read_text(encoding="utf-8"))
        loss = summary.get("model", {}).get("loss")
    except (OSError, ValueError, AttributeError):
        pass
    tag = f" ({loss})" if loss else ""
    if path.name.lower().startswith("probability"):
        top = 255.0 if np.dtype(dtype) == np.uint8 else 1.0
        kwargs.update(name=f"p(cancer): {folder}{tag}", colormap="inferno",
                      contrast_limits=(0.0, top), opacity=0.6)  # fmt: skip
        return (plain if len(plain) > 1 else plain[0], kwargs, "image")
    masks = [(lv > 0).astype(np.uint8) for lv in plain]
    colour = "#{:02x}{:02x}{:02x}".format(*FIG4_COLOURS.get(str(loss), (255, 225, 25)))
    kwargs.update(name=f"mask: {folder}{tag}", opacity=0.4,
                  colormap={1: colour, None: "transparent"})  # fmt: skip
    return (masks if len(masks) > 1 else masks[0], kwargs, "labels")


def read_slide(path: str | list[str]) -> LayerData:
    p = _one_path(path)
    try:
        return [slide_layer_data(p)]
    except LsrInputError as err:
        hint = ""
        if "--mpp" in str(err):  # the CLI's way out does not exist in napari
            hint = (
                " In napari the pixel size must come from the file: set it in QuPath (Image "
                "▸ Pixel size) and export an OME-TIFF, or rewrite the slide with "
                "lsr.slide.write_pyramidal_tiff(path, image, mpp=...)."
            )
        _notify(f"Cannot open the slide: {err}.{hint}")
        return [(None,)]
    except (ValueError, OSError, MemoryError) as err:  # a file no check foresaw: named
        _notify(f"Cannot open the slide: {p}: {type(err).__name__}: {err}")
        return [(None,)]


# --- grids -------------------------------------------------------------------------------


def get_grid_reader(path: str | list[str]):
    p = _one_path(path)
    if p is None or not GRID_PATTERN.search(p) or not Path(p).is_file():
        return None
    if _is_photo_tiff(Path(p)):  # a slide named *_grid.tif: the slide reader's
        return None
    return read_grid


def grid_layer_data(path: str | Path) -> LayerData:
    """Probability image + z labels of a grid file, one pixel per block, in µm."""
    from lsr.grid import load_grid

    geo = grid_geometry(path)
    grid = load_grid(path, block_px=geo["block_px"], origin=tuple(geo["origin"]))
    s = geo["block_px"] * geo["working_mpp"]  # µm per block
    oy, ox = geo["origin"]
    translate = ((oy + geo["block_px"] / 2) * geo["working_mpp"],
                 (ox + geo["block_px"] / 2) * geo["working_mpp"])  # fmt: skip
    meta = {"lsr_grid": {**geo, "path": str(path), "shape": list(grid.shape), "block_um": s}}
    stem = Path(path).stem
    common = {"scale": (s, s), "translate": translate, "units": UNITS, "metadata": meta}
    layers: LayerData = []
    if grid.z_explicit is None:
        layers.append(
            (
                grid.probs,
                {
                    **common,
                    "name": f"{stem} p(cancer)",
                    "colormap": "magma",
                    "contrast_limits": (0.0, 1.0),
                    "opacity": 0.45,
                    "visible": False,
                },
                "image",
            )
        )
    z = np.maximum(grid.z, 0).astype(np.uint8)
    layers.append(
        (
            z,
            {**common, "name": f"{stem} z", "opacity": 0.5, "colormap": _z_colormap()},
            "labels",
        )
    )
    return layers


def _z_colormap() -> dict:
    return {**Z_COLOURS, None: "transparent"}


def read_grid(path: str | list[str]) -> LayerData:
    p = _one_path(path)
    try:
        layers = grid_layer_data(p)
    except LsrInputError as err:
        _notify(f"Cannot open the block grid: {err}")
        return [(None,)]
    if not layers[0][1]["metadata"]["lsr_grid"].get("sidecar", True):
        geo = layers[0][1]["metadata"]["lsr_grid"]
        side = grid_sidecar(p)
        why = (
            f"{side.name} beside it is not a grid sidecar (no block_px)"
            if side.exists()
            else f"no {side.name} beside it"
        )
        _notify(
            f"{Path(p).name}: {why}, so its blocks are taken "
            f"as the paper's {geo['block_px']} px at {geo['working_mpp']} µm/px; if they are "
            "not, the grid is drawn misplaced and trains on the wrong tissue: write the "
            'sidecar ({"block_px": ..., "working_mpp": ..., "origin": [0, 0]})',
            "warning",
        )
    return layers


# --- count tables ------------------------------------------------------------------------


def _head(path: Path, n: int = 65536) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return fh.read(n)
    except OSError:
        return ""


def get_table_reader(path: str | list[str]):
    """Claims count-table CSV/JSON and annotation autosaves (by content), nothing else."""
    from lsr.annotation import SESSION_FORMAT
    from lsr.counttable import JSON_FORMAT

    p = _one_path(path)
    if p is None or not Path(p).is_file():
        return None
    pp = Path(p)
    head = _head(pp)
    if pp.suffix.lower() == ".csv":
        first = head.splitlines()[0].lower() if head else ""
        # ';' and tabs too: such a table is claimed so that its loader says what is wrong
        # (lsr reads commas), instead of napari's "no reader"
        cols = [c.strip() for c in re.split(r"[,;\t]", first)]
        return read_count_table if "bin" in cols and "cancer_mean" in cols else None
    if pp.suffix.lower() == ".json" and (JSON_FORMAT in head or SESSION_FORMAT in head):
        return read_count_table
    return None


def read_count_table(path: str | list[str]) -> LayerData:
    """Dock the Count table widget in the current viewer and show the table there."""
    import napari

    from lsr.annotation import SESSION_FORMAT, AnnotationSession

    p = Path(_one_path(path))
    viewer = napari.current_viewer()
    if viewer is None:
        _notify(f"{p}: a count table opens in the Count table widget; open a viewer first")
        return [(None,)]
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-lsr", "Count table")
    if SESSION_FORMAT in _head(p):
        try:
            session = AnnotationSession.load(p)
            table = session.table()  # can fail too: e.g. bins that paper Table 1 cannot fill
        except LsrInputError as err:
            named = err if err.path is not None else LsrInputError(err.problem, p, err.where)
            _notify(f"Cannot open the annotation session: {named}")
            return [(None,)]
        widget.set_table(table, f"{p.name} ({session.expert})")
    else:
        widget.load(p)
    return [(None,)]
