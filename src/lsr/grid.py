"""Low-resolution labels: one cancer probability (or ready bin ``z``) per block of a slide.

A :class:`BlockGrid` places a (rows, cols) array of labels on the slide at the working
resolution: block ``(r, c)`` covers working-resolution pixels
``[oy + r*block_px, oy + (r+1)*block_px) × [ox + c*block_px, ox + (c+1)*block_px)`` where
``(oy, ox) = origin``. NaN probabilities (or ``z = -1``) mean "no label" (background,
unscored blocks). Files: ``.npy`` (2-D float probabilities or integer bins), ``.csv`` with
``row,col,prob`` (or ``row,col,z``) columns, single-channel TIFF (float = probabilities,
integer = bins).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from lsr.atomic import atomic_path, atomic_write_text
from lsr.counttable import PAPER_EDGES, bin_probabilities
from lsr.errors import LsrInputError

N_BINS = len(PAPER_EDGES) - 1
PathType = str | PathLike[str]
#: Files :func:`load_grid` reads.
GRID_SUFFIXES = (".npy", ".csv", ".tif", ".tiff")
#: Most blocks a CSV grid may span (10,000 × 10,000): a whole slide has a few thousand blocks
#: per side at most; a larger index is a typo or a px coordinate, and its (rows, cols) array
#: would not fit in memory (row 100000 asked NumPy for 37 GiB).
MAX_GRID_BLOCKS = 10_000 * 10_000


@dataclass
class BlockGrid:
    """Per-block labels on a slide, in working-resolution pixels.

    ``probs``: (rows, cols) float32 cancer probability per block in [0, 1], NaN = no label.
    ``block_px``: block side in working-resolution px (240 at 4.17 µm/px).
    ``origin``: (y, x) working px of block (0, 0)'s top-left corner.
    ``z_explicit``: (rows, cols) bins given directly (see :meth:`from_z`); -1 = no label.
    """

    probs: np.ndarray
    block_px: int
    origin: tuple[int, int] = (0, 0)
    z_explicit: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float32)
        if probs.ndim != 2:
            raise LsrInputError(f"a block grid must be 2-D (rows, cols), got shape {probs.shape}")
        finite = probs[~np.isnan(probs)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise LsrInputError(
                f"block probabilities must lie in [0, 1] (fractions, not percent); found "
                f"{float(finite.min()):g}..{float(finite.max()):g}"
            )
        self.probs = probs
        if int(self.block_px) != self.block_px or self.block_px <= 0:
            raise LsrInputError(f"block_px must be a positive integer, got {self.block_px!r}")
        self.block_px = int(self.block_px)
        if len(self.origin) != 2:
            raise LsrInputError(f"origin must be (y, x), got {self.origin!r}")
        self.origin = (int(self.origin[0]), int(self.origin[1]))
        if self.z_explicit is not None:
            z = np.asarray(self.z_explicit)
            if z.shape != probs.shape:
                raise LsrInputError(f"z shape {z.shape} differs from probs shape {probs.shape}")
            self.z_explicit = _check_z(z)

    @classmethod
    def from_z(cls, z: np.ndarray, block_px: int, origin: tuple[int, int] = (0, 0)) -> BlockGrid:
        """A grid of ready bins ``z`` (0..9, -1 = no label); its probabilities are NaN."""
        z = _check_z(np.asarray(z))
        if z.ndim != 2:
            raise LsrInputError(f"a block grid must be 2-D (rows, cols), got shape {z.shape}")
        return cls(np.full(z.shape, np.nan, np.float32), block_px, origin, z_explicit=z)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of blocks."""
        return (int(self.probs.shape[0]), int(self.probs.shape[1]))

    @property
    def z(self) -> np.ndarray:
        """(rows, cols) int16 bins 0..9 (paper edges), -1 where there is no label."""
        if self.z_explicit is not None:
            return self.z_explicit.astype(np.int16)
        z = np.full(self.probs.shape, -1, dtype=np.int16)
        known = ~np.isnan(self.probs)
        if known.any():
            z[known] = bin_probabilities(self.probs[known])
        return z

    def bins(self, edges: tuple[float, ...] | list[float] = PAPER_EDGES) -> np.ndarray:
        """(rows, cols) int16 bins for a count table with bin ``edges`` (-1 = no label).

        :attr:`z` bins probabilities with the paper's ten edges; a table with its own edges
        (e.g. 0, 0.5, 0.8, 1) needs its own bins, or every block above 0.5 would get a paper
        bin the table does not have. Ready bins (:meth:`from_z`) are returned as given, and
        one beyond the table's last bin is an error.
        """
        n_bins = len(edges) - 1
        if self.z_explicit is not None:
            z = self.z_explicit.astype(np.int16)
            if (z >= n_bins).any():
                raise LsrInputError(
                    f"the grid's ready bins go up to {int(z.max())} but the count table has "
                    f"{n_bins} bins (0..{n_bins - 1})"
                )
            return z
        z = np.full(self.probs.shape, -1, dtype=np.int16)
        known = ~np.isnan(self.probs)
        if known.any():
            z[known] = bin_probabilities(self.probs[known], edges)
        return z

    @property
    def labelled(self) -> np.ndarray:
        """(rows, cols) bool: blocks that carry a label."""
        return self.z >= 0

    def block_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        """(y, x, h, w) of block (r, c) in working-resolution px."""
        rows, cols = self.shape
        if not (0 <= r < rows and 0 <= c < cols):
            raise IndexError(f"block ({r}, {c}) outside a {rows}x{cols} grid")
        b = self.block_px
        return (self.origin[0] + r * b, self.origin[1] + c * b, b, b)

    def check_fits(self, working_shape: tuple[int, int], path: PathType | None = None) -> None:
        """Raise LsrInputError unless the grid tiles a slide of ``working_shape`` (H, W).

        Along each axis the grid may stop at the last whole block or include the last
        partial one: rows ∈ {floor, ceil}((H - origin_y) / block_px), same for columns.
        """
        h, w = int(working_shape[0]), int(working_shape[1])
        rows, cols = self.shape
        b = self.block_px
        ok, expected = grid_fits((rows, cols), b, self.origin, (h, w))
        if not ok:
            raise LsrInputError(
                f"block grid of {rows}x{cols} blocks ({b} px each, origin {self.origin}) does not "
                f"match the slide of {h}x{w} working px, which needs {expected[0]} x "
                f"{expected[1]} blocks; check block_px, origin and working_mpp",
                path,
            )


def grid_fits(
    grid_shape: tuple[int, int],
    block: float,
    origin: tuple[float, float],
    extent: tuple[float, float],
    slack: float = 0.0,
) -> tuple[bool, list[str]]:
    """Whether ``grid_shape`` blocks of side ``block`` from ``origin`` tile ``extent`` (H, W).

    Any consistent unit (working px, µm). Along each axis the grid may stop at the last whole
    block or include the last partial one: n ∈ {floor, ceil}((extent - origin) / block), each
    widened by ``slack`` blocks (for rounded pixel sizes). Returns (fits, the expected count
    per axis as text, e.g. ``"10"`` or ``"10 or 11"``).
    """
    ok, expected = True, []
    for n, size, o in zip(grid_shape, extent, origin, strict=True):
        span = (size - o) / block
        lo, hi = math.floor(span + slack), math.ceil(span - slack)
        lo, hi = min(lo, hi), max(lo, hi)
        expected.append(f"{lo}" if lo == hi else f"{lo} or {hi}")
        ok &= lo <= n <= hi and n > 0
    return ok, expected


def _check_z(z: np.ndarray, path: PathType | None = None) -> np.ndarray:
    if z.dtype.kind == "f":
        finite = z[np.isfinite(z)]
        if not np.all(np.isfinite(z)) or not np.array_equal(finite, np.round(finite)):
            raise LsrInputError("bins z must be whole numbers (-1 = no label)", path)
    elif z.dtype.kind not in "iu":
        raise LsrInputError(f"bins z must be integers, got {z.dtype}", path)
    z = z.astype(np.int64)
    bad = (z < -1) | (z >= N_BINS)
    if bad.any():
        raise LsrInputError(
            f"{int(bad.sum())} bins lie outside -1..{N_BINS - 1} (e.g. {int(z[bad].flat[0])})", path
        )
    return z.astype(np.int16)


# --- files -------------------------------------------------------------------------------


def load_grid(path: PathType, *, block_px: int, origin: tuple[int, int] = (0, 0)) -> BlockGrid:
    """Read a block grid: ``.npy``, ``.csv`` (row,col,prob or row,col,z) or TIFF.

    Floating-point data are probabilities (NaN = no label), integers are bins z (-1 = none).
    Malformed files raise LsrInputError naming the file (and the CSV line).
    """
    p = Path(path)
    if not p.exists():
        raise LsrInputError("file not found", p)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _load_csv(p, block_px, origin)
    if suffix == ".npy":
        from lsr.arrays import read_npy

        arr = read_npy(p)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            arr = tifffile.imread(p)
        except Exception as exc:
            raise LsrInputError(f"not a readable TIFF: {exc}", p) from exc
        arr = np.squeeze(arr)
    else:
        raise LsrInputError("unknown grid format; use .npy, .csv or .tif", p)
    if arr.ndim != 2:
        raise LsrInputError(f"a block grid must be 2-D (rows, cols), got shape {arr.shape}", p)
    if arr.size == 0:  # napari's labels thumbnail divides by it; a slide has blocks
        raise LsrInputError(
            f"no blocks in the file (an empty {arr.shape[0]} × {arr.shape[1]} grid)", p
        )
    try:
        if arr.dtype.kind == "f":
            return BlockGrid(arr.astype(np.float32), block_px, origin)
        if arr.dtype.kind in "iu":
            return BlockGrid.from_z(_check_z(arr, p), block_px, origin)
    except LsrInputError as err:
        raise LsrInputError(err.problem, p) from None
    raise LsrInputError(
        f"grid values must be float probabilities or integer bins, got {arr.dtype}", p
    )


def _load_csv(p: Path, block_px: int, origin: tuple[int, int]) -> BlockGrid:
    from lsr.csvfile import check_field_count, check_header, read_text, separator_hint

    reader = csv.reader(io.StringIO(read_text(p)))
    header = next(reader, None)
    if header is None:
        raise LsrInputError("empty file; expected a header row,col,prob (or row,col,z)", p)
    names = [h.strip().lower() for h in header]
    check_header(names, p)
    value_col = next((n for n in ("prob", "probability", "z") if n in names), None)
    if "row" not in names or "col" not in names or value_col is None:
        raise LsrInputError(
            f"header {header} must name columns row, col and prob (or z){separator_hint(header)}",
            p,
            "line 1",
        )
    ir, ic, iv = names.index("row"), names.index("col"), names.index(value_col)
    is_z = value_col == "z"
    # empty names at the end are a spreadsheet's padding: a row may leave them out
    n_named = max(i for i, n in enumerate(names) if n) + 1
    cells: dict[tuple[int, int], float] = {}
    rows = cols = 0
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not v.strip() for v in row):
            continue
        where = f"line {line_no}"
        check_field_count(row, header, p, where, least=n_named,
                          missing="leave it empty for no label: 0,1,")  # fmt: skip
        try:
            r, c = int(row[ir]), int(row[ic])
            raw = row[iv].strip()
        except ValueError:
            raise LsrInputError(f"row and col must be integers, got {row}", p, where) from None
        if r < 0 or c < 0:
            raise LsrInputError(f"negative block index ({r}, {c})", p, where)
        rows, cols = max(rows, r + 1), max(cols, c + 1)
        if rows * cols > MAX_GRID_BLOCKS:
            raise LsrInputError(
                f"block ({r}, {c}) makes a grid of {rows:,} × {cols:,} blocks, more than the "
                f"{MAX_GRID_BLOCKS:,} (10,000 × 10,000) a slide can have: row and col are "
                "block indices (0, 1, 2, ...), not pixel coordinates",
                p,
                where,
            )
        if (r, c) in cells:
            raise LsrInputError(f"block ({r}, {c}) appears twice", p, where)
        if is_z:
            try:
                v = float(int(raw)) if raw else -1.0
            except ValueError:
                raise LsrInputError(f"z must be an integer bin, got {raw!r}", p, where) from None
            if not -1 <= v < N_BINS:
                raise LsrInputError(f"z must be in -1..{N_BINS - 1}, got {raw}", p, where)
        else:
            try:
                v = float(raw) if raw and raw.lower() != "nan" else math.nan
            except ValueError:
                raise LsrInputError(f"prob must be a number, got {raw!r}", p, where) from None
            if not math.isnan(v) and not 0 <= v <= 1:
                raise LsrInputError(
                    f"prob must be a fraction in [0, 1] (not percent), got {raw}", p, where
                )
        cells[(r, c)] = v
    if not cells:
        raise LsrInputError("no blocks in the file", p)
    if is_z:
        z = np.full((rows, cols), -1, dtype=np.int16)
        for (r, c), v in cells.items():
            z[r, c] = int(v)
        return BlockGrid.from_z(z, block_px, origin)
    probs = np.full((rows, cols), np.nan, dtype=np.float32)
    for (r, c), v in cells.items():
        probs[r, c] = v
    return BlockGrid(probs, block_px, origin)


def save_grid(grid: BlockGrid, path: PathType) -> None:
    """Write ``grid`` atomically as .npy, .csv or .tif (bins when the grid holds ready z)."""
    p = Path(path)
    suffix = p.suffix.lower()
    ready_z = grid.z_explicit is not None
    data = grid.z.astype(np.int16) if ready_z else grid.probs.astype(np.float32)
    if suffix == ".npy":
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.save(fh, data)
    elif suffix == ".csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["row", "col", "z" if ready_z else "prob"])
        for (r, c), v in np.ndenumerate(data):
            if ready_z:
                writer.writerow([r, c, int(v)])
            else:
                writer.writerow([r, c, "" if np.isnan(v) else repr(float(v))])
        atomic_write_text(p, out.getvalue())
    elif suffix in (".tif", ".tiff"):
        import tifffile

        with atomic_path(p) as tmp:
            tifffile.imwrite(tmp, data, photometric="minisblack", compression="zlib")
    else:
        raise LsrInputError("unknown grid format; use .npy, .csv or .tif", p)


# --- geometry sidecar ----------------------------------------------------------------------
#: A grid file carries no geometry; ``<grid>.json`` beside it does (the Annotator and
#: ``lsr synth`` write it): ``{"block_px": 240, "working_mpp": 4.17, "origin": [0, 0]}``.
#: Without one, the paper's 240-px blocks at 4.17 µm/px are assumed.
DEFAULT_BLOCK_PX = 240
#: Two pixel sizes within 1 % are the same resolution (a 240-px block moves < 2.4 px).
_MPP_RTOL = 0.01


def grid_sidecar(path: PathType) -> Path:
    """``slide_grid.npy`` -> ``slide_grid.json`` (the grid's geometry)."""
    return Path(path).with_suffix(".json")


def grid_geometry(path: PathType) -> dict:
    """``{"block_px", "working_mpp", "origin", "sidecar"}`` of the grid at ``path``: from
    its sidecar JSON, else the paper's 240 px at 4.17 µm/px (``sidecar`` False).

    A JSON beside the grid without ``block_px`` (a GeoJSON or a count table named like the
    grid) is someone else's file, not a sidecar: it is ignored here and never replaced by
    :func:`write_grid_sidecar`.
    """
    from lsr.slide import WORKING_MPP

    geo: dict = {"block_px": DEFAULT_BLOCK_PX, "working_mpp": WORKING_MPP, "origin": [0, 0]}
    side = grid_sidecar(path)
    data = _sidecar_json(side)
    if data is not None:
        geo.update(_parse_sidecar(data, side))
    geo["sidecar"] = data is not None
    return geo


def _sidecar_json(side: Path) -> dict | None:
    """The JSON object in ``side`` when it is a grid sidecar (has ``block_px``), else None."""
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LsrInputError(f"malformed grid sidecar (not readable JSON: {err})", side) from None
    return data if isinstance(data, dict) and "block_px" in data else None


def _parse_sidecar(data: dict, side: Path) -> dict:
    """Check the sidecar's values; one error naming the file and the bad value."""
    from lsr.slide import check_mpp

    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    block_px = data["block_px"]
    if not whole(block_px) or block_px <= 0:
        raise LsrInputError(
            f"malformed grid sidecar: block_px must be a positive whole number of working "
            f"px, got {block_px!r}",
            side,
        )
    geo: dict = {"block_px": block_px}
    if "working_mpp" in data:
        geo["working_mpp"] = check_mpp(
            data["working_mpp"], side, name="malformed grid sidecar: working_mpp", ceiling=False
        )
    if "origin" in data:
        origin = data["origin"]
        if not (isinstance(origin, list) and len(origin) == 2 and all(map(whole, origin))):
            raise LsrInputError(
                f"malformed grid sidecar: origin must be [y, x] in whole working px, got "
                f"{origin!r}",
                side,
            )
        geo["origin"] = [int(origin[0]), int(origin[1])]
    return geo


def write_grid_sidecar(
    grid_path: PathType,
    block_px: int,
    working_mpp: float,
    origin: tuple[int, int] = (0, 0),
    extra: dict | None = None,
) -> Path:
    """Write the sidecar of the grid at ``grid_path`` (atomic); returns its path.

    ``extra``: more keys to record (readers ignore them), e.g. which tool saved the grid, so
    that the tool can later tell its own grid from someone else's before replacing it.
    Refuses (before writing anything) to replace a file there that is not a sidecar: see
    :func:`check_sidecar_replaceable`.
    """
    side = check_sidecar_replaceable(grid_path)
    geo = {"block_px": int(block_px), "working_mpp": float(working_mpp), "origin": list(origin)}
    geo = {**geo, **{k: v for k, v in (extra or {}).items() if k not in geo}}
    atomic_write_text(side, json.dumps(geo, indent=1) + "\n")
    return side


def check_sidecar_replaceable(grid_path: PathType) -> Path:
    """The sidecar path of ``grid_path``; LsrInputError when a file of someone else's (no
    ``block_px``, or not JSON) is there, which saving the grid would destroy. Call it before
    writing the grid itself, so a refused save leaves no grid without its sidecar."""
    side = grid_sidecar(grid_path)
    try:
        ours = not side.exists() or _sidecar_json(side) is not None
    except LsrInputError:
        ours = False
    if not ours:
        raise LsrInputError(
            f"a file that is not a grid sidecar (no block_px) is where the sidecar of "
            f"{Path(grid_path).name} goes; not replaced: save the grid under another name, "
            "or move that file",
            side,
        )
    return side


def sidecar_geometry(grids: list[PathType]) -> dict:
    """The ``block_px`` and ``working_mpp`` that the sidecars of ``grids`` agree on, with
    ``"from"``: the first sidecar's path; ``{}`` when none has a sidecar. Two sidecars that
    disagree are an error naming both: one run reads every slide at one block size."""
    first: tuple[Path, dict] | None = None
    for g in grids:
        geo = grid_geometry(g)
        if not geo["sidecar"]:
            continue
        if first is None:
            first = (grid_sidecar(g), geo)
        elif geo["block_px"] != first[1]["block_px"] or not _same_mpp(
            geo["working_mpp"], first[1]["working_mpp"]
        ):
            raise LsrInputError(
                f"says {_geometry_text(geo)}, but {first[0]} says {_geometry_text(first[1])}: "
                "one run reads every grid at one block size; fix the sidecars",
                grid_sidecar(g),
            )
    if first is None:
        return {}
    return {"block_px": first[1]["block_px"], "working_mpp": first[1]["working_mpp"],
            "from": first[0]}  # fmt: skip


def check_sidecar(path: PathType, block_px: int, working_mpp: float) -> None:
    """Refuse to read the grid at ``path`` with a geometry its sidecar contradicts.

    Why: a grid painted at 120-px blocks and read at 240 still loads when the slide has
    room, but every label lands on the wrong tissue. Training reads grids from the slide's
    corner, so a sidecar origin other than (0, 0) is refused too. No sidecar: nothing to check.
    """
    geo = grid_geometry(path)
    if not geo["sidecar"]:
        return
    if geo["block_px"] != block_px or not _same_mpp(geo["working_mpp"], working_mpp):
        raise LsrInputError(
            f"the grid's blocks are {_geometry_text(geo)}, and this run reads "
            f"{block_px}-px blocks at {working_mpp:g} µm/px: read it at {geo['block_px']} px "
            f"and {geo['working_mpp']:g} µm/px (lsr train: --block-px {geo['block_px']} "
            f"--working-mpp {geo['working_mpp']:g}; the Trainer: Block px and µm / px under "
            "Advanced), or fix the sidecar",
            grid_sidecar(path),
        )
    if any(geo["origin"]):
        raise LsrInputError(
            f"origin {geo['origin']}: training reads grids from the slide's top-left corner; "
            "crop the slide to the grid, or pad the grid to the corner",
            grid_sidecar(path),
        )


def _same_mpp(a: float, b: float) -> bool:
    return abs(a - b) <= _MPP_RTOL * max(a, b)


def _geometry_text(geo: dict) -> str:
    return f"{geo['block_px']} px at {geo['working_mpp']:g} µm/px"
