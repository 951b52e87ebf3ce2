"""An expert's count-table annotation session: which blocks to look at, what was said.

The expert builds the count table p(c | z) by estimating the cancer percentage of a few
blocks per low-resolution label ``z`` (paper: 10-12). This module holds everything about
that work that does not need a screen, so the napari annotator stays thin and the logic is
tested without Qt:

- :func:`sample_blocks`: blocks stratified by ``z`` (``per_bin`` per bin, seeded), walked in
  a shuffled order so that consecutive blocks do not share a bin (anti-anchoring);
- :class:`AnnotationSession`: the walk (current block, back, next unfinished block or bin),
  the estimates log (one :class:`~lsr.counttable.Estimate` per block; a skipped block keeps
  its reason), the live count table and its warnings, and the autosave JSON;
- :func:`open_session`: resume from an autosave, or start anew; a corrupt autosave is moved
  aside (never overwritten) and reported; another expert's (or slide's) autosave is refused;
- :func:`autosave_path` / :func:`find_autosave`: one autosave file per expert and slide;
- :func:`merge_sessions`: several experts' sessions pooled into one table, each estimate
  keeping its expert.

Units: percentages 0-100 here (they are what the expert types and what
:class:`~lsr.counttable.Estimate` stores); the count table holds fractions. Blocks are
(row, col) indices of the low-resolution grid.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

import numpy as np

from lsr.atomic import atomic_write_text
from lsr.counttable import PAPER_EDGES, CountTable, Estimate, check_edges, same_edges
from lsr.errors import LsrInputError, check_version
from lsr.grid import grid_fits

SESSION_FORMAT = "napari-lsr annotation session"
SESSION_VERSION = 1
#: Reasons offered for skipping a block (any non-empty text is accepted).
#: The flag of a bin the expert has not estimated yet (paper Table 1 stands in for it).
NO_ESTIMATE_YET = "no estimate yet"
SKIP_REASONS: tuple[str, ...] = ("artefact", "unsure")
#: Bins with fewer estimates than this are highlighted (the paper used 10-12 per bin).
MIN_ESTIMATES = 10
#: Bins whose estimates spread more than this (sample std, percentage points) are highlighted.
MAX_STD_PERCENT = 10.0
#: File name ending of autosaves: ``<slide>.<expert>.lsr-estimates.json``.
AUTOSAVE_SUFFIX = ".lsr-estimates.json"

PathType = str | PathLike[str]


class SessionVersionError(LsrInputError):
    """An autosave of a session version this code does not read (a newer napari-lsr's).

    Its own type because such a file is not corrupt: :func:`open_session` must leave it
    where it is (the newer napari-lsr resumes it), not move it aside as it does corrupt ones.
    """


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SampledBlock:
    """One block to estimate: grid indices (row, col) and its label ``z``."""

    row: int
    col: int
    z: int

    @property
    def key(self) -> str:
        """Stable name used in estimates and files, e.g. ``'r12c7'``."""
        return f"r{self.row}c{self.col}"


def sample_blocks(
    z: np.ndarray,
    per_bin: int = 12,
    seed: int = 0,
    eligible: np.ndarray | None = None,
    n_bins: int = len(PAPER_EDGES) - 1,
) -> list[SampledBlock]:
    """Blocks stratified by label: up to ``per_bin`` of each bin ``0..n_bins-1``.

    ``z``: (rows, cols) int bins, negative = no label (never sampled). ``eligible``:
    (rows, cols) bool, e.g. "mostly tissue"; None = all. Within a bin blocks are drawn
    without replacement; a bin with fewer blocks gives all it has. The returned walk order
    is shuffled across bins (same ``seed`` -> same blocks in the same order).
    """
    zs = np.asarray(z)
    if zs.ndim != 2:
        raise LsrInputError(f"z must be a (rows, cols) grid, got shape {zs.shape}")
    if per_bin < 1:
        raise LsrInputError(f"blocks per bin must be at least 1, got {per_bin}")
    ok = np.ones(zs.shape, bool) if eligible is None else np.asarray(eligible, bool)
    if ok.shape != zs.shape:
        raise LsrInputError(f"eligible mask {ok.shape} does not match the grid {zs.shape}")
    rng = np.random.default_rng(seed)
    chosen: list[SampledBlock] = []
    for b in range(n_bins):
        cand = np.argwhere((zs == b) & ok)
        if len(cand) == 0:
            continue
        pick = rng.choice(len(cand), size=min(per_bin, len(cand)), replace=False)
        chosen += [SampledBlock(int(cand[i, 0]), int(cand[i, 1]), b) for i in sorted(pick)]
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def _safe(s: str) -> str:
    """``s`` reduced to characters every file system takes."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._") or "unnamed"


def _distinct_part(name: str) -> str:
    """A slide's or an expert's part of the autosave name, distinct per distinct name.

    Why: "Müller" and "Møller" (or "Ann B" and "Ann_B", or two names in Chinese: slides
    患者甲.tif and 患者乙.tif were both ``tif``) reduce to one safe name and would share one
    autosave (the second slide was refused, its expert's session mixed). A name that is not
    safe as it is gets a short hash of the exact name; a safe name is kept as is.
    """
    safe = _safe(name)
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def autosave_path(folder: PathType, slide_name: str, expert: str) -> Path:
    """``folder/<slide>.<expert>.lsr-estimates.json``: names reduced to safe characters, a
    name that changes in that reduction followed by a hash of it (see
    :func:`_distinct_part`)."""
    return Path(folder) / f"{_distinct_part(slide_name)}.{_distinct_part(expert)}{AUTOSAVE_SUFFIX}"


def find_autosave(folder: PathType, slide_name: str, expert: str) -> Path:
    """The autosave to resume or start: :func:`autosave_path`, or a name it had in earlier
    versions (no hash for the expert, or none for the slide), when only that one exists
    and holds this expert's session of this slide.

    Why: an autosave made before names got their hash must keep resuming, but one holding
    another expert's (or slide's) session under the shared name must never be taken for
    this one's.
    """
    path = autosave_path(folder, slide_name, expert)
    if path.exists():
        return path
    slide, names = _safe(slide_name), (_distinct_part(expert), _safe(expert))
    for old in (Path(folder) / f"{slide}.{e}{AUTOSAVE_SUFFIX}" for e in names):
        if old == path or not old.is_file():
            continue
        try:
            session = AnnotationSession.load(old)
        except LsrInputError:
            continue  # not provably this expert's: left alone
        if session.expert == expert and session.slide in (slide_name, ""):
            return old
    return path


def flag_bins(
    table: CountTable, min_n: int = MIN_ESTIMATES, max_std_percent: float = MAX_STD_PERCENT
) -> dict[int, str]:
    """Reasons to look again at bins of a live table: too few or too spread estimates.

    Adds to (and returns) ``table.flagged``; bins without any estimate read "no estimate".
    """
    n = table.n if table.n is not None else np.zeros(table.n_bins, int)
    for b in range(table.n_bins):
        nb = int(n[b])
        std = 100.0 * float(table.rho[b, 0])
        if nb == 0:
            table.flagged[b] = NO_ESTIMATE_YET
        elif nb < min_n:
            table.flagged[b] = f"only {nb} of {min_n} estimates"
        elif std > max_std_percent:
            table.flagged[b] = (
                f"estimates spread widely (std {std:.1f} > {max_std_percent:g} points): "
                "look again or add blocks"
            )
    return table.flagged


@dataclass
class AnnotationSession:
    """One expert's walk through the sampled blocks of one slide, and what they said.

    ``results`` maps a block index (into ``blocks``) to its latest :class:`Estimate`
    (``percent_cancer`` 0-100, or ``skipped`` = the reason). ``grid`` records the geometry
    the blocks refer to (``shape`` (rows, cols), ``block_um``, ``origin_um`` (y, x)) so
    that a resume on a different grid is refused.
    """

    expert: str
    slide: str
    blocks: list[SampledBlock]
    per_bin: int = 12
    seed: int = 0
    tissue_only: bool = True
    grid: dict = field(default_factory=dict)
    edges: tuple[float, ...] = PAPER_EDGES
    results: dict[int, Estimate] = field(default_factory=dict)
    current: int = 0
    created: str = field(default_factory=_now)
    modified: str = ""

    def __post_init__(self) -> None:
        self.edges = check_edges(self.edges)  # fractions from 0 to 1, as count tables have
        if not self.expert.strip():
            raise LsrInputError("the expert's name is empty")
        if not self.blocks:
            raise LsrInputError("no blocks to annotate (no labelled tissue block in the grid?)")
        self.current = int(min(max(self.current, 0), len(self.blocks) - 1))

    # ------------------------------------------------------------------ walking
    @property
    def block(self) -> SampledBlock:
        """The block shown now."""
        return self.blocks[self.current]

    def is_done(self, i: int) -> bool:
        """Whether block ``i`` has an estimate or a skip."""
        return i in self.results

    @property
    def n_done(self) -> int:
        return len(self.results)

    @property
    def finished(self) -> bool:
        """Every sampled block is estimated or skipped."""
        return self.n_done == len(self.blocks)

    def next_unfinished(self, start: int | None = None) -> int | None:
        """Index of the first undone block after ``start`` (default: current), cyclically."""
        s = self.current if start is None else start
        n = len(self.blocks)
        for k in range(1, n + 1):
            i = (s + k) % n
            if not self.is_done(i):
                return i
        return None

    def go(self, i: int) -> None:
        """Show block ``i`` (clamped to the list)."""
        self.current = int(min(max(i, 0), len(self.blocks) - 1))

    def back(self) -> None:
        """Show the previous block in the walk (to correct it)."""
        self.go(self.current - 1)

    def forward(self) -> None:
        """Show the next block in the walk without recording anything."""
        self.go(self.current + 1)

    def next_unfinished_bin(self) -> int | None:
        """Jump to an undone block of the next bin (after the current block's) with one.

        Returns the new index, or None when every block is done (nothing moves).
        """
        zb = self.block.z
        n_bins = len(self.edges) - 1
        undone_bins = {self.blocks[i].z for i in range(len(self.blocks)) if not self.is_done(i)}
        for k in range(1, n_bins + 1):
            b = (zb + k) % n_bins
            if b in undone_bins:
                i = next(
                    i for i, blk in enumerate(self.blocks) if blk.z == b and not self.is_done(i)
                )
                self.go(i)
                return i
        return None

    # ------------------------------------------------------------------ recording
    def _estimate(self, percent: float | None, skipped: str) -> Estimate:
        blk = self.block
        return Estimate(
            z=blk.z,
            percent_cancer=percent,
            expert=self.expert,
            slide=self.slide,
            block=blk.key,
            time=_now(),
            skipped=skipped,
        )

    def record(self, percent: float) -> Estimate:
        """Store the cancer percentage (0-100) of the current block; move to the next undone."""
        p = float(percent)
        if not np.isfinite(p) or not 0.0 <= p <= 100.0:
            raise LsrInputError(f"a cancer percentage must lie in 0-100, got {percent!r}")
        est = self._estimate(p, "")
        self._store(est)
        return est

    def skip(self, reason: str) -> Estimate:
        """Mark the current block skipped (kept in the log, not counted) with ``reason``."""
        if not reason.strip():
            raise LsrInputError("a skipped block needs a reason (e.g. artefact, unsure)")
        est = self._estimate(None, reason.strip())
        self._store(est)
        return est

    def _store(self, est: Estimate) -> None:
        self.results[self.current] = est
        self.modified = est.time
        nxt = self.next_unfinished()
        if nxt is not None:
            self.current = nxt

    # ------------------------------------------------------------------ tables
    def estimates(self) -> list[Estimate]:
        """The log: latest estimate (or skip) per block, in walk order."""
        return [self.results[i] for i in sorted(self.results)]

    def counts(self) -> np.ndarray:
        """(Z,) number of blocks estimated per bin (skips not counted)."""
        n = np.zeros(len(self.edges) - 1, int)
        for e in self.results.values():
            if not e.skipped:
                n[e.z] += 1
        return n

    def sampled_per_bin(self) -> np.ndarray:
        """(Z,) number of sampled blocks per bin (< per_bin where the grid has fewer)."""
        return np.bincount([b.z for b in self.blocks], minlength=len(self.edges) - 1)

    def table(self, fallback: CountTable | None = None) -> CountTable:
        """The live count table with :func:`flag_bins` warnings.

        Bins without an estimate are filled from ``fallback`` (default paper Table 1) so
        that a partial table can be shown; they are flagged "no estimate yet" and ``n`` = 0.
        """
        return table_from_estimates(self.estimates(), self.edges, fallback)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {
            "format": SESSION_FORMAT,
            "version": SESSION_VERSION,
            "expert": self.expert,
            "slide": self.slide,
            "per_bin": self.per_bin,
            "seed": self.seed,
            "tissue_only": self.tissue_only,
            "grid": self.grid,
            "edges": list(self.edges),
            "blocks": [[b.row, b.col, b.z] for b in self.blocks],
            "current": self.current,
            "results": {str(i): asdict(e) for i, e in sorted(self.results.items())},
            "created": self.created,
            "modified": self.modified,
        }

    @classmethod
    def from_dict(cls, data: object, path: PathType | None = None) -> AnnotationSession:
        """Inverse of :meth:`to_dict`; anything malformed raises LsrInputError naming ``path``."""
        if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
            raise LsrInputError(
                f'not an annotation session (no "format": "{SESSION_FORMAT}")', path
            )
        check_version(data, SESSION_VERSION, "annotation session", path, SessionVersionError)
        try:
            edges = check_edges(data["edges"])
            blocks = [SampledBlock(int(r), int(c), int(z)) for r, c, z in data["blocks"]]
            n_bins = len(edges) - 1
            if any(not 0 <= b.z < n_bins for b in blocks):
                raise LsrInputError(f"a block has a bin outside 0..{n_bins - 1}", path)
            results = {}
            for k, e in dict(data.get("results") or {}).items():
                i = int(k)
                if not 0 <= i < len(blocks):
                    raise LsrInputError(f"estimate for block {i}, which is not sampled", path)
                est = Estimate(**e)
                if est.block != blocks[i].key or est.z != blocks[i].z:
                    raise LsrInputError(f"estimate {i} does not match its block", path)
                pc = est.percent_cancer
                if not est.skipped and (pc is None or not 0 <= float(pc) <= 100):
                    raise LsrInputError(f"estimate {i}: percentage {pc!r} not in 0-100", path)
                results[i] = est
            return cls(
                expert=str(data["expert"]),
                slide=str(data["slide"]),
                blocks=blocks,
                per_bin=int(data["per_bin"]),
                seed=int(data["seed"]),
                tissue_only=bool(data["tissue_only"]),
                grid=dict(data.get("grid") or {}),
                edges=edges,
                results=results,
                current=int(data.get("current", 0)),
                created=str(data.get("created", "")),
                modified=str(data.get("modified", "")),
            )
        except LsrInputError as err:
            raise LsrInputError(err.problem, path) from None
        except (KeyError, TypeError, ValueError) as err:
            raise LsrInputError(f"malformed annotation session ({err!r})", path) from None

    def save(self, path: PathType) -> None:
        """Write the autosave JSON atomically (a crash leaves the previous file)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: PathType) -> AnnotationSession:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LsrInputError("file not found", p) from None
        except (OSError, UnicodeDecodeError) as err:
            raise LsrInputError(f"cannot read the autosave ({err})", p) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LsrInputError(
                f"corrupt autosave (invalid JSON: {err.msg})", p, f"line {err.lineno}"
            ) from None
        return cls.from_dict(data, p)


def table_from_estimates(
    estimates: Sequence[Estimate],
    edges: Sequence[float] = PAPER_EDGES,
    fallback: CountTable | None = None,
) -> CountTable:
    """A (possibly partial) table from estimates, flagged by :func:`flag_bins`.

    Without ``fallback``, paper Table 1 fills the bins without an estimate, when the edges
    are the paper's; with other edges such bins are an error (LsrInputError) saying so.
    """
    fb = fallback
    if fb is None and same_edges(edges, PAPER_EDGES):
        fb = CountTable.paper_table1()
    elif fb is None:
        counted = {e.z for e in estimates if e.percent_cancer is not None and not e.skipped}
        if missing := [b for b in range(len(edges) - 1) if b not in counted]:
            raise LsrInputError(
                f"bins {missing} have no estimate yet, and paper Table 1 cannot stand in for "
                f"them: its bins are not these ({', '.join(f'{e:g}' for e in edges)})"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flags are shown in the table instead
        table = CountTable.from_estimate_list(list(estimates), edges=tuple(edges), fallback=fb)
    table.flagged = {}
    flag_bins(table)
    return table


def quarantine(path: PathType) -> Path:
    """Move a bad file aside as ``<name>.corrupt-<UTC time>[-k]<suffix>``; return the new path."""
    p = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    base = p.name[: -len(p.suffix)] if p.suffix else p.name
    for k in range(1000):
        extra = f"-{k}" if k else ""
        dest = p.with_name(f"{base}.corrupt-{stamp}{extra}{p.suffix}")
        if not dest.exists():
            p.rename(dest)
            return dest
    raise LsrInputError("cannot move the corrupt file aside (too many copies)", p)


def open_session(
    path: PathType,
    start: Callable[[], AnnotationSession],
    grid: dict | None = None,
    expert: str | None = None,
    slide: str | None = None,
) -> tuple[AnnotationSession, str]:
    """Resume the session autosaved at ``path``, or ``start()`` a new one.

    Returns (session, message for the user; empty when nothing noteworthy happened).
    A corrupt autosave is moved aside with :func:`quarantine` and a new session started.
    An autosave made on a different grid (``grid`` differs in shape or block size), by
    another ``expert`` or of another ``slide`` (None: not checked) raises LsrInputError and
    leaves the file untouched: resuming it would record this expert's estimates under
    someone else's name, or mix two slides.
    """
    p = Path(path)
    if not p.exists():
        return start(), ""
    try:
        session = AnnotationSession.load(p)
    except SessionVersionError as err:
        raise LsrInputError(
            f"{err.problem}; not resumed and left as it is: open it with that napari-lsr, "
            "or choose another autosave folder",
            p,
        ) from None
    except LsrInputError as err:
        moved = quarantine(p)
        return start(), f"{err}. The file was kept as {moved.name}; starting a new session."
    for what, mine, theirs in (("expert", expert, session.expert), ("slide", slide, session.slide)):
        if mine is not None and mine != theirs:
            way_out = "choose another autosave folder"
            if what == "expert" and mine.casefold() == str(theirs).casefold():
                way_out = f"type the name as {theirs!r} to resume it, or {way_out}"
            raise LsrInputError(
                f"this autosave holds the session of {what} {theirs!r}, not of {mine!r}; "
                f"not resumed and left as it is: {way_out}",
                p,
            )
    if grid:
        for key in ("shape", "block_um"):
            old, new = session.grid.get(key), grid.get(key)
            if old is not None and new is not None and not np.allclose(old, new):
                raise LsrInputError(
                    f"this autosave was made on a grid with {key} {old}, the chosen grid has "
                    f"{new}; choose the same grid, another expert name or another folder",
                    p,
                )
    n = session.n_done
    return session, f"Resumed {session.expert}'s session: {n} of {len(session.blocks)} done."


def merge_sessions(
    sessions: Sequence[AnnotationSession], fallback: CountTable | None = None
) -> CountTable:
    """Pool the estimates of several experts (each estimate keeps its expert and slide)."""
    if not sessions:
        raise LsrInputError("nothing to merge")
    if len({tuple(s.edges) for s in sessions}) != 1:
        raise LsrInputError("the sessions use different bin edges")
    estimates = [e for s in sessions for e in s.estimates()]
    table = table_from_estimates(estimates, sessions[0].edges, fallback)
    table.provenance["merged_experts"] = sorted({s.expert for s in sessions})
    return table


def check_grid_fits(
    grid_shape: tuple[int, int],
    block_um: float,
    origin_um: tuple[float, float],
    slide_um: tuple[float, float],
    path: PathType | None = None,
) -> None:
    """Raise LsrInputError unless a grid of ``grid_shape`` blocks tiles the slide.

    Physical units (µm): ``block_um`` block side, ``origin_um`` (y, x) of block (0, 0)'s
    top-left corner, ``slide_um`` (H, W) slide extent. Like
    :meth:`lsr.grid.BlockGrid.check_fits`: along each axis the grid stops at the last whole
    block or includes the last partial one (0.5 % slack for rounded pixel sizes).
    """
    if not block_um > 0:
        raise LsrInputError(f"the block size must be positive, got {block_um} µm", path)
    ok, expected = grid_fits(grid_shape, block_um, origin_um, slide_um, slack=0.005)
    if not ok:
        raise LsrInputError(
            f"the grid of {grid_shape[0]}x{grid_shape[1]} blocks of {block_um:g} µm does not fit "
            f"the slide of {slide_um[0]:g}x{slide_um[1]:g} µm, which needs {expected[0]} x "
            f"{expected[1]} blocks; check the grid's block size and pixel size",
            path,
        )
