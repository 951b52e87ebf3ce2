"""QuPath-compatible GeoJSON: masks to polygons and back, export and import of annotations.

Coordinates: a mask pixel ``(r, c)`` covers the square ``x ∈ [c, c+1), y ∈ [r, r+1)``;
polygons follow pixel edges exactly (no half-pixel shift), so a mask turned into polygons
and rasterised again gives the same mask. Exported coordinates are *level-0* (full
resolution) pixels, ``(x, y)`` with y down, as QuPath expects: polygons from a mask at the
working resolution are scaled by ``scale = working_mpp / level0_mpp``.

Export writes a FeatureCollection, one Feature per named boundary, with
``properties.objectType = "annotation"`` and ``properties.classification = {"name",
"color"}``. The colours are those of the paper's Fig. 4 (:data:`FIG4_COLOURS`).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
import warnings
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from lsr.atomic import atomic_write_text
from lsr.errors import LsrInputError

PathType = str | PathLike[str]

#: Boundary colours of the paper's Fig. 4 (RGB), keyed by model.
FIG4_COLOURS: dict[str, tuple[int, int, int]] = {
    "low_res": (0, 255, 0),  # green: low-resolution model
    "ground_truth": (255, 0, 0),  # red: ground truth
    "intra_inter": (0, 0, 255),  # blue: intra+inter-instance loss
    "intra": (0, 255, 255),  # cyan: intra-instance loss
    "inter": (255, 0, 255),  # magenta: inter-instance loss
    "intra_plus_inter": (255, 255, 0),  # yellow: intra + inter sum (not in the paper)
}
#: QuPath classification names used by default for those keys ("Tumor" is QuPath's class).
DEFAULT_NAMES: dict[str, str] = {
    "low_res": "Low-resolution model",
    "ground_truth": "Tumor",
    "intra_inter": "Intra+inter-instance",
    "intra": "Intra-instance",
    "inter": "Inter-instance",
    "intra_plus_inter": "Intra + inter (sum)",
}
_FALLBACK_COLOUR = (255, 200, 0)

_AREAL = {"Polygon", "MultiPolygon"}
_NON_AREAL = {"Point", "MultiPoint", "LineString", "MultiLineString"}


# --- mask <-> polygons -------------------------------------------------------------------


def _mask_rectangles(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cover the True pixels by disjoint rectangles (x0, y0, x1, y1): row runs merged down."""
    rects: list[tuple[int, int, int, int]] = []
    open_runs: dict[tuple[int, int], int] = {}  # (x0, x1) -> first row
    h = mask.shape[0]
    for y in range(h + 1):
        runs: set[tuple[int, int]] = set()
        if y < h:
            row = mask[y]
            if row.any():
                d = np.diff(np.concatenate(([0], row.view(np.uint8), [0])).astype(np.int8))
                starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
                runs = set(zip(starts.tolist(), ends.tolist(), strict=True))
        for run in list(open_runs):
            if run not in runs:
                y0 = open_runs.pop(run)
                rects.append((run[0], y0, run[1], y))
        for run in runs:
            open_runs.setdefault(run, y)
    return rects


def clip_to_slide(geom: BaseGeometry | None, shape_level0: tuple[int, int]) -> MultiPolygon:
    """``geom`` (level-0 px, x right, y down) cut to the slide's ``(H, W)`` rectangle.

    Why: the working grid's last row or column reaches up to half a working pixel past the
    slide (its size is rounded), and :func:`import_geojson` with the slide's shape, like
    QuPath, takes coordinates outside the image for another slide's.
    """
    h, w = shape_level0
    return _as_multipolygon(_as_multipolygon(geom).intersection(box(0, 0, w, h)))


def _as_multipolygon(geom: BaseGeometry | None) -> MultiPolygon:
    """Keep the areal parts of ``geom`` as a valid MultiPolygon."""
    if geom is None or geom.is_empty:
        return MultiPolygon()
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys: list[Polygon] = []
    stack = [geom]
    while stack:
        g = stack.pop()
        if isinstance(g, Polygon):
            if not g.is_empty and g.area > 0:
                polys.append(g)
        elif hasattr(g, "geoms"):
            stack.extend(g.geoms)
    return MultiPolygon(polys) if polys else MultiPolygon()


def mask_to_polygons(
    mask: np.ndarray,
    *,
    simplify_tolerance: float = 1.0,
    min_area: float = 0.0,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> MultiPolygon:
    """Outline the True pixels of an (H, W) mask as a MultiPolygon (holes kept).

    The outline follows pixel edges, then is simplified (Douglas-Peucker, topology
    preserved) by ``simplify_tolerance`` mask px; parts smaller than ``min_area`` mask px²
    are dropped (holes are kept whatever their size). Output coordinates are
    ``((c + offset_x) * scale, (r + offset_y) * scale)``: ``offset = (y, x)`` is the mask's
    top-left in its own pixel units (e.g. a region's origin at the working resolution) and
    ``scale`` converts to level-0 px (``working_mpp / level0_mpp``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise LsrInputError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        return MultiPolygon()
    rects = _mask_rectangles(mask)
    boxes = shapely.box(*np.asarray(rects, dtype=np.float64).T)
    geom = shapely.union_all(boxes)
    if simplify_tolerance > 0:
        # the function, not the geometry's method: the method holds the GIL throughout
        # (6 s for a whole slide's fragmented mask, freezing napari's event loop), the
        # function releases it like the union above
        geom = shapely.simplify(geom, simplify_tolerance, preserve_topology=True)
    multi = _as_multipolygon(geom)
    if min_area > 0:
        multi = MultiPolygon([p for p in multi.geoms if p.area >= min_area])
    if multi.is_empty:
        return MultiPolygon()
    oy, ox = offset
    s = float(scale)
    return shapely.affinity.affine_transform(multi, [s, 0.0, 0.0, s, ox * s, oy * s])


def polygons_to_mask(
    geom: BaseGeometry,
    shape: tuple[int, int],
    *,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterise polygons (level-0 px) into an (H, W) bool mask (holes subtracted).

    Inverse of :func:`mask_to_polygons`: a pixel is True when its centre lies inside;
    coordinates are divided by ``scale`` (level-0 -> working) and ``offset = (y, x)`` is
    subtracted, so ``polygons_to_mask(mask_to_polygons(m, scale=s), m.shape, scale=s) == m``.
    """
    from skimage.draw import polygon as draw_polygon

    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=bool)
    oy, ox = offset

    def ring_pixels(coords: Any) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(coords, dtype=np.float64)[:, :2]
        rows = xy[:, 1] / scale - oy - 0.5  # pixel (r, c) is the point (c + .5, r + .5)
        cols = xy[:, 0] / scale - ox - 0.5
        return draw_polygon(rows, cols, shape=(h, w))

    for poly in _as_multipolygon(geom).geoms:
        minx, miny, maxx, maxy = poly.bounds
        r0 = max(math.floor(miny / scale - oy) - 1, 0)
        c0 = max(math.floor(minx / scale - ox) - 1, 0)
        r1 = min(math.ceil(maxy / scale - oy) + 1, h)
        c1 = min(math.ceil(maxx / scale - ox) + 1, w)
        if r1 <= r0 or c1 <= c0:
            continue
        local = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        rr, cc = ring_pixels(poly.exterior.coords)
        keep = (rr >= r0) & (rr < r1) & (cc >= c0) & (cc < c1)
        local[rr[keep] - r0, cc[keep] - c0] = True
        for hole in poly.interiors:
            rr, cc = ring_pixels(hole.coords)
            keep = (rr >= r0) & (rr < r1) & (cc >= c0) & (cc < c1)
            local[rr[keep] - r0, cc[keep] - c0] = False
        out[r0:r1, c0:c1] |= local
    return out


# --- export ------------------------------------------------------------------------------


def _colour(value: Any, key: str) -> list[int]:
    try:
        rgb = [int(v) for v in value]
    except (TypeError, ValueError):
        raise LsrInputError(f"colour of {key!r} must be (r, g, b), got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise LsrInputError(f"colour of {key!r} must be three values 0-255, got {value!r}")
    return rgb


def qupath_class_name(name: str, default: str = "LSR prediction") -> str:
    """``name`` as a QuPath class name: QuPath splits a class name at ``:`` into a class and
    sub-classes (a layer named ``boundary: Intra-instance`` became class ``boundary``), and
    refuses a blank one or one with a line break, failing the whole file's import. Colons
    become `` - ``, control characters spaces, runs of spaces one; blank: ``default``."""
    text = re.sub(r"\s*:\s*", " - ", str(name))
    text = " ".join("".join(" " if unicodedata.category(c)[0] == "C" else c for c in text).split())
    return text or default


def _geometry_json(geom: BaseGeometry) -> dict[str, Any]:
    """Polygon for one part, MultiPolygon for several; exterior rings counter-clockwise."""
    multi = _as_multipolygon(geom)
    parts = [orient(p, 1.0) for p in multi.geoms]
    single = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return mapping(single)


def export_geojson(
    path: PathType,
    polygons: dict[str, BaseGeometry],
    *,
    colours: dict[str, tuple[int, int, int]] | None = None,
    names: dict[str, str] | None = None,
    members: dict[str, Any] | None = None,
) -> list[str]:
    """Write boundaries as a QuPath FeatureCollection, one annotation per key, atomically;
    return the keys left out because their geometry is empty.

    ``polygons``: name -> Polygon/MultiPolygon in level-0 px. ``colours``: name -> (r, g, b)
    (default :data:`FIG4_COLOURS`, else orange). ``names``: name -> QuPath classification
    name (default :data:`DEFAULT_NAMES`, else the key), made one QuPath takes whole by
    :func:`qupath_class_name` (no ``:``, no line break). Empty geometries are skipped with a
    warning (QuPath cannot show an annotation without a shape). ``members``: extra top-level
    members of the FeatureCollection (RFC 7946 §6.1 "foreign members", ignored by QuPath and
    :func:`import_geojson`), e.g. a mark saying which lsr tool wrote the file, so a later
    export can tell its own file from the user's.
    """
    colours = {**FIG4_COLOURS, **(colours or {})}
    names = {**DEFAULT_NAMES, **(names or {})}
    features, empty = [], []
    for key, geom in polygons.items():
        if geom is None or _as_multipolygon(geom).is_empty:
            warnings.warn(f"{path}: {key!r}: empty boundary, not exported", stacklevel=2)
            empty.append(key)
            continue
        class_name = qupath_class_name(names.get(key, key))
        rgb = _colour(colours.get(key, _FALLBACK_COLOUR), key)
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": _geometry_json(geom),
                "properties": {
                    "objectType": "annotation",
                    "name": class_name,
                    # the object's own colour too: QuPath keeps a class's colour once the
                    # class exists (its Tumor is (200, 0, 0)), and draws this one first
                    "color": rgb,
                    "classification": {"name": class_name, "color": rgb},
                    "isLocked": False,
                },
            }
        )
    doc = {"type": "FeatureCollection", **(members or {})}
    doc.update(type="FeatureCollection", features=features)  # (members cannot replace them)
    atomic_write_text(path, json.dumps(doc))
    return empty


# --- import ------------------------------------------------------------------------------


def _class_name(props: Any) -> str | None:
    if not isinstance(props, dict):
        return None
    cls = props.get("classification")
    if isinstance(cls, dict) and isinstance(cls.get("names"), list) and "name" not in cls:
        return ": ".join(map(str, cls["names"]))  # QuPath's sub-classes: ["Tumor", "Positive"]
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return None


def _check_ring(ring: Any, p: Path, where: str) -> None:
    if not isinstance(ring, list) or len(ring) < 4:
        raise LsrInputError("a polygon ring needs at least 4 positions", p, where)
    for pos in ring:
        if (
            not isinstance(pos, list)
            or len(pos) < 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in pos[:2])
        ):
            raise LsrInputError(f"bad coordinate {pos!r} (expected [x, y] numbers)", p, where)
    if ring[0][:2] != ring[-1][:2]:
        raise LsrInputError(
            f"open ring: first position {ring[0]} differs from last {ring[-1]}", p, where
        )


def _check_geometry(g: Any, p: Path, where: str) -> list[BaseGeometry]:
    """Validate one GeoJSON geometry dict; return its areal shapely parts."""
    if not isinstance(g, dict) or "type" not in g:
        raise LsrInputError("geometry must be an object with a 'type'", p, where)
    kind = g["type"]
    if kind == "GeometryCollection":
        parts: list[BaseGeometry] = []
        for i, sub in enumerate(g.get("geometries") or []):
            parts += _check_geometry(sub, p, f"{where}, geometry {i}")
        return parts
    if kind in _NON_AREAL:
        warnings.warn(f"{p}, {where}: {kind} is not a region; ignored", stacklevel=4)
        return []
    if kind not in _AREAL:
        raise LsrInputError(f"unknown geometry type {kind!r}", p, where)
    coords = g.get("coordinates")
    polys = [coords] if kind == "Polygon" else coords
    if not isinstance(polys, list):
        raise LsrInputError(f"{kind} coordinates must be a list", p, where)
    for poly in polys:
        if not isinstance(poly, list) or not poly:
            raise LsrInputError("a polygon needs at least its exterior ring", p, where)
        for ring in poly:
            _check_ring(ring, p, where)
    try:
        geom = shapely.geometry.shape(g)
    except Exception as exc:
        raise LsrInputError(f"invalid {kind}: {exc}", p, where) from exc
    if not geom.is_valid:  # repaired (make_valid) later; a hole outside its shell, for one,
        # becomes more cancer than was drawn: the user should look at the region
        warnings.warn(
            f"{p}, {where}: the {kind} is not valid ({shapely.is_valid_reason(geom)}) and is "
            "repaired; check that region, its area may differ from what was meant",
            stacklevel=4,
        )
    return [geom]


def _features(doc: Any, p: Path) -> Iterable[tuple[str, Any, Any]]:
    """(where, geometry, properties) for each feature in any accepted document layout."""
    if isinstance(doc, list):  # QuPath's "export as array of features"
        for i, f in enumerate(doc):
            yield from _features_of(f, p, f"feature {i}")
        return
    if not isinstance(doc, dict) or "type" not in doc:
        raise LsrInputError("not GeoJSON: expected an object with a 'type'", p)
    if doc["type"] == "FeatureCollection":
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise LsrInputError("FeatureCollection without a 'features' list", p)
        for i, f in enumerate(feats):
            yield from _features_of(f, p, f"feature {i}")
    elif doc["type"] == "Feature":
        yield from _features_of(doc, p, "feature 0")
    else:
        yield ("geometry", doc, None)


def _features_of(f: Any, p: Path, where: str) -> Iterable[tuple[str, Any, Any]]:
    if not isinstance(f, dict) or f.get("type") != "Feature":
        raise LsrInputError("expected a GeoJSON Feature", p, where)
    yield (where, f.get("geometry"), f.get("properties"))


def import_geojson(
    path: PathType,
    *,
    slide_shape_level0: tuple[int, int] | None = None,
    classification: str | None = None,
) -> MultiPolygon:
    """Read annotations (e.g. QuPath tumour regions) as one MultiPolygon in level-0 px.

    Accepts a FeatureCollection, a list of Features (QuPath's default export), a single
    Feature or a bare geometry. With ``classification``, only features of that class name
    are kept (error if none). Raises LsrInputError for bad JSON, open rings, unknown
    geometry types, and, given ``slide_shape_level0 = (H, W)``, coordinates outside the
    slide. Points and lines are ignored with a warning; invalid polygons are repaired, with a
    warning naming the feature.
    """
    p = Path(path)
    if not p.exists():
        raise LsrInputError("file not found", p)
    try:
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise LsrInputError(f"bad JSON: {exc.msg}", p, f"line {exc.lineno}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LsrInputError(f"cannot read as text: {exc}", p) from exc
    parts: list[BaseGeometry] = []
    seen: set[str] = set()
    for where, geometry, props in _features(doc, p):
        name = _class_name(props)
        if name:
            seen.add(name)
        if classification is not None and name != classification:
            continue
        if geometry is None:
            continue
        geoms = _check_geometry(geometry, p, where)
        if slide_shape_level0 is not None:
            h, w = slide_shape_level0
            for g in geoms:
                minx, miny, maxx, maxy = g.bounds
                if minx < 0 or miny < 0 or maxx > w or maxy > h:
                    raise LsrInputError(
                        f"coordinates outside the slide: bounds x {minx:g}..{maxx:g}, "
                        f"y {miny:g}..{maxy:g} but the slide is {w}x{h} level-0 px (W x H); "
                        "was it exported from another slide or at another resolution?",
                        p,
                        where,
                    )
        parts += geoms
    if classification is not None and not parts:
        found = ", ".join(sorted(seen)) or "none"
        raise LsrInputError(f"no region classified {classification!r} (classes found: {found})", p)
    if not parts:
        return MultiPolygon()
    return _as_multipolygon(shapely.union_all([_as_multipolygon(g) for g in parts]))
