"""npe2 writers: shapes → QuPath GeoJSON, labels → TIFF.

World coordinates are micrometres (see :mod:`napari_lsr._reader`). QuPath wants level-0
slide pixels, so a shapes layer's vertices go data → world (µm, the layer's scale and
translate) → level-0 px (÷ the slide's µm/px). The slide's pixel size is taken from the
layer's ``metadata["lsr_boundary"]["level0_mpp"]`` (the Compare widget's boundary layers),
else from a slide layer in the current viewer; without either, world units are written as
they are (with a warning). Shapes are cut to the slide (``level0_shape`` of the same
metadata, else the viewer's slide layer): QuPath, like :func:`lsr.geojson.import_geojson`,
takes coordinates past the image for another slide's; the part cut off is named.

Closed paths (the Compare widget draws each ring of a boundary as one) are combined by
even-odd nesting, so holes stay holes; polygons, rectangles and ellipses are united.
Open lines carry no area and are left out with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Vertices of the polygon standing in for an ellipse.
ELLIPSE_VERTICES = 64


def _notify(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _problem(err: Exception, path: str) -> str:
    """One line naming the file: LsrInputError's own, or an OSError's (as the CLI says it)."""
    from lsr.errors import LsrInputError, os_problem

    if isinstance(err, OSError):
        return os_problem(err, path)
    if isinstance(err, LsrInputError) and err.path is None:  # about the layer: name the file
        return str(LsrInputError(err.problem, path, err.where))
    return str(err)


def _viewer_layers() -> list[Any]:
    """The current napari viewer's layers; none when there is no viewer (a script)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:
        return []
    return list(getattr(viewer, "layers", ()))


def _layer_sources() -> set[Path]:
    """Files the current viewer's layers were opened from (resolved)."""
    out = set()
    for layer in _viewer_layers():
        src = getattr(getattr(layer, "source", None), "path", None)
        if src:
            out.add(Path(src).resolve())
    return out


def _check_target(path: str, ours: Any, what: str) -> None:
    """Refuse to replace a file a layer is open from (the slide itself) or a file of another
    kind (napari's Save dialog asks before replacing, ``layer.save()`` does not): writing is
    atomic, but the user's slide or notes would still be gone."""
    from lsr.atomic import check_replaceable
    from lsr.errors import LsrInputError

    p = Path(path)
    if p.exists() and p.resolve() in _layer_sources():
        raise LsrInputError(
            "a layer in napari is open from this file; saving over it would replace what the "
            "layer shows: choose another name",
            p,
        )
    check_replaceable(p, ours, what, "file name")


def _is_geojson(path: Path) -> bool:
    """Whether ``path`` holds GeoJSON in a layout :func:`lsr.geojson.import_geojson` reads:
    a FeatureCollection, QuPath's list of Features, a Feature or a bare geometry."""
    import json

    data = json.loads(path.read_text(encoding="utf-8-sig"))
    if isinstance(data, list):
        return all(isinstance(f, dict) and f.get("type") == "Feature" for f in data)
    return isinstance(data, dict) and isinstance(data.get("type"), str)


def _viewer_slide() -> dict[str, Any] | None:
    """The ``metadata["lsr_slide"]`` (``mpp``, ``shape`` (H, W) level-0 px, ``path``) of the
    first slide layer in the current viewer, or None."""
    for layer in _viewer_layers():
        meta = getattr(layer, "metadata", {}) or {}
        if "lsr_slide" in meta:
            return dict(meta["lsr_slide"])
    return None


def _viewer_slide_mpp() -> float | None:
    slide = _viewer_slide()
    return None if slide is None else float(slide["mpp"])


def _slide_shape(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(H, W) level-0 px of the slide the shapes lie on: the boundary layer's own record,
    else the viewer's slide layer; None when neither says."""
    shape = meta.get("level0_shape")
    if shape is None:
        slide = _viewer_slide()
        shape = None if slide is None else slide.get("shape")
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _ellipse(corners: np.ndarray) -> np.ndarray:
    """napari stores an ellipse as its 4 bounding-box corners (row, col)."""
    centre = corners.mean(axis=0)
    half = np.abs(corners - centre).max(axis=0)
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return np.stack([centre[0] + half[0] * np.sin(t), centre[1] + half[1] * np.cos(t)], 1)


def shapes_to_geometry(data: list[np.ndarray], attributes: dict[str, Any]) -> Any:
    """A shapes layer's shapes as one shapely MultiPolygon in level-0 px (x right, y down)."""
    import shapely
    from shapely.geometry import Polygon

    from lsr.geojson import _as_multipolygon

    meta = (attributes.get("metadata") or {}).get("lsr_boundary") or {}
    mpp = meta.get("level0_mpp") or _viewer_slide_mpp()
    if mpp is None:
        warnings.warn("no slide pixel size known: writing world coordinates", stacklevel=2)
        mpp = 1.0
    from lsr.errors import LsrInputError

    if not (np.isfinite(float(mpp)) and float(mpp) > 0):
        raise LsrInputError(f"the slide's pixel size is {mpp}, not a positive number")
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), float)[-2:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), float)[-2:]
    types = attributes.get("shape_type") or ["polygon"] * len(data)
    rings, areas, n_lines = [], [], 0
    for verts, kind in zip(data, types, strict=False):
        v = np.asarray(verts, float)[:, -2:]
        if kind == "ellipse":
            v = _ellipse(v)
        yx = (v * scale + translate) / float(mpp)
        if not np.isfinite(yx).all():
            raise LsrInputError("a shape has a vertex that is not a number (NaN or infinite)")
        xy = yx[:, ::-1]
        if kind in ("line",) or len(xy) < 3:
            n_lines += 1
            continue
        if kind == "path":
            if not np.allclose(xy[0], xy[-1]):
                n_lines += 1
                continue
            rings.append(Polygon(xy))
        else:
            areas.append(Polygon(xy))
    if n_lines:
        warnings.warn(f"{n_lines} open line(s) have no area and were left out", stacklevel=2)
    parts = [_as_multipolygon(p) for p in areas]
    nested = None
    for r in rings:
        r = _as_multipolygon(r)
        nested = r if nested is None else nested.symmetric_difference(r)
    if nested is not None:
        parts.append(_as_multipolygon(nested))
    if not parts:
        return _as_multipolygon(None)
    return _as_multipolygon(shapely.union_all(parts))


def write_shapes_geojson(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: a shapes layer → one QuPath annotation in a GeoJSON file."""
    import shapely.errors

    from lsr.errors import LsrInputError
    from lsr.geojson import clip_to_slide, export_geojson

    meta = (attributes.get("metadata") or {}).get("lsr_boundary") or {}
    name = meta.get("name") or attributes.get("name") or "annotation"
    colour = meta.get("colour")
    if colour is None:
        edge = np.asarray(attributes.get("edge_color", [[1.0, 0.8, 0.0, 1.0]]), float)
        colour = tuple(round(255 * c) for c in (edge[0] if edge.ndim == 2 else edge)[:3])
    try:
        _check_target(path, _is_geojson, "a GeoJSON file")
        geom = shapes_to_geometry(list(data), attributes)
        if geom.is_empty:
            raise LsrInputError("the shapes layer holds no area to export", path)
        if (shape := _slide_shape(meta)) is not None:
            area = geom.area
            geom = clip_to_slide(geom, shape)
            if geom.is_empty:
                raise LsrInputError(
                    f"the shapes lie off the slide ({shape[1]} x {shape[0]} level-0 px)", path
                )
            cut = 1 - geom.area / area
            if cut > 1e-6 and "key" not in meta:  # Compare's: the rounded grid's overhang
                warnings.warn(
                    f"{path}: {100 * cut:.2g} % of the shapes' area lay off the slide and was "
                    "cut (QuPath would take such coordinates for another slide's)",
                    stacklevel=2,
                )
        export_geojson(path, {name: geom}, colours={name: tuple(colour)}, names={name: name})
    except (LsrInputError, OSError) as err:  # OSError: a folder or no permission there
        _notify(f"Cannot write the GeoJSON: {_problem(err, path)}")
        return []
    except (ValueError, shapely.errors.GEOSException) as err:  # NaN vertices, a NaN pixel size
        _notify(f"Cannot write the GeoJSON: {path}: the shapes cannot be converted ({err})")
        return []
    return [path]


def write_labels_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: a labels layer → a tiled pyramidal TIFF with its µm/px.

    The pixel size is the layer's scale (µm per pixel, as the readers set it); labels are
    stored as uint8 (or uint16 above 255). Multiscale layers write their full resolution
    (level 0, whose µm/px the scale is); the file gets its own pyramid, by the nearest
    pixel (a mean would invent labels).
    """
    from lsr.arrays import is_single_channel
    from lsr.errors import LsrInputError
    from lsr.slide import write_pyramidal_tiff

    if isinstance(data, Sequence) or attributes.get("multiscale"):
        data = data[0]  # level 0 (napari's MultiScaleData is a Sequence, not a list)
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.size == 0:
        _notify(f"Cannot write {path}: only 2-D labels are supported, got shape {arr.shape}")
        return []
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool) and not (
        np.isfinite(arr).all() and (arr == np.round(arr)).all()
    ):
        _notify(f"Cannot write {path}: labels must be whole numbers (NaN or fractions found)")
        return []
    top = int(arr.max())
    if arr.min(initial=0) < 0 or top > 65535:
        _notify(f"Cannot write {path}: label values must lie in 0..65535")
        return []
    arr = arr.astype(np.uint8 if top <= 255 else np.uint16)
    mpp = float(np.asarray(attributes.get("scale", (1.0, 1.0)), float)[-1])
    try:
        _check_target(path, is_single_channel, "a one-channel (labels or mask) image")
        write_pyramidal_tiff(path, arr, mpp=mpp, compression="zlib", tile=256, downsample="nearest")
    except (LsrInputError, OSError) as err:
        _notify(f"Cannot write the TIFF: {_problem(err, path)}")
        return []
    return [path]
