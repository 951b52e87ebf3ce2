"""The count table p(c_l | z): what fraction of a block is of class l, given its label z.

For every low-resolution label ``z`` (the bin of a patch classifier's cancer probability)
and every high-resolution class ``l``, the table holds a Gaussian ``N(eta, rho^2)`` of the
*fraction* of the block's pixels that are of class ``l``. An expert builds it by
estimating the cancer percentage of 10-12 sampled blocks per bin: ``eta`` is the mean and
``rho`` the sample standard deviation of those estimates (non-cancer = 100 - cancer).

Units: everything in this module's arrays is a fraction in [0, 1]; percent appears only in
the CSV written for people and in :meth:`CountTable.format_rows`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from lsr.atomic import atomic_path, atomic_write_text
from lsr.csvfile import check_field_count, csv_reader, read_text, require_columns
from lsr.errors import LsrInputError, check_version

#: The paper's bin edges, as fractions: 0-20, 20-30, ..., 90-95, 95-100 percent.
PAPER_EDGES: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
#: Default high-resolution classes; the first is the one the expert estimates.
DEFAULT_CLASSES: tuple[str, ...] = ("cancer", "non-cancer")
#: Smallest usable standard deviation (fraction): a Gaussian with rho = 0 has no density.
RHO_FLOOR = 1e-3
#: How far (fraction) the top bin's cancer mean may lie below a lower bin's before
#: :meth:`CountTable.top_bin_problem` reports it. In the training study every table whose top
#: bin was more than 20 points below a lower bin (4 of 95 tables) gave an intra-instance network
#: below the blocky model; drops in middle bins (38 runs) did no such harm (docs/results.md).
TOP_BIN_MAX_DROP = 0.20
#: Paper Table 1: cancer percentage per bin, (mean, std).
PAPER_TABLE1_PERCENT: tuple[tuple[float, float], ...] = (
    (0.0, 0.1), (1.0, 0.4), (2.0, 0.4), (5.0, 0.8), (6.0, 1.0),
    (8.0, 1.0), (10.0, 1.0), (10.0, 1.0), (20.0, 2.0), (70.0, 5.0),
)  # fmt: skip

JSON_FORMAT = "napari-lsr count table"
JSON_VERSION = 1
#: How far (fraction) a bin's class means may sum from 1 in a table file: the classes share
#: each block, so their fractions add up to 100 %; 0.5 points allows hand-rounded CSVs
#: (33.3 + 66.6) and catches a row like cancer 50 %, non-cancer 20 %.
CLASS_SUM_TOLERANCE = 0.005
#: How far (fraction) the first and last bin edges may lie from 0 and 1: float rounding in
#: a hand-written or converted table, never a real bin.
EDGE_TOLERANCE = 1e-6

PathType = str | PathLike[str]


@dataclass(frozen=True)
class Estimate:
    """One expert estimate of one block: ``percent_cancer`` in 0-100 (None when skipped)."""

    z: int
    percent_cancer: float | None
    expert: str = ""
    slide: str = ""
    block: str = ""
    time: str = ""
    skipped: str = ""  # reason when the expert skipped the block (artefact, unsure, ...)


def bin_probabilities(p: np.ndarray | float, edges: Sequence[float] = PAPER_EDGES) -> np.ndarray:
    """Map classifier cancer probabilities (0-1) to bins ``z`` in ``0 .. len(edges) - 2``.

    Bins are closed on the left and open on the right, except the last, which also holds
    ``p == 1``. NaN or values outside [0, 1] raise :class:`LsrInputError`.
    """
    arr = np.asarray(p, dtype=np.float64)
    if np.isnan(arr).any():
        raise LsrInputError(f"{int(np.isnan(arr).sum())} probabilities are NaN")
    lo, hi = float(edges[0]), float(edges[-1])
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        first = arr[bad].flat[0]
        raise LsrInputError(
            f"{int(bad.sum())} probabilities lie outside [{lo:g}, {hi:g}] (e.g. {first:g}); "
            "probabilities are fractions, not percent"
        )
    z = np.searchsorted(np.asarray(edges, dtype=np.float64), arr, side="right") - 1
    return np.minimum(z, len(edges) - 2).astype(np.int64)


def _edge_list(edges: Sequence[float]) -> str:
    return "[" + ", ".join(f"{e:g}" for e in edges) + "]"


def check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """``edges`` as floats, the ends set to exactly 0 and 1; LsrInputError unless they are
    fractions increasing strictly from 0 to 1.

    Why: the bins must cover every classifier probability. Edges in percent put every block
    in bin 0, and edges from 0.05 leave blocks below it without a label, which a later
    step then blames on the grid file.
    """
    try:
        out = [float(e) for e in edges]
    except (TypeError, ValueError):
        raise LsrInputError(f"bin edges must be numbers, got {list(edges)!r}") from None
    if len(out) < 2 or not all(math.isfinite(e) for e in out):
        raise LsrInputError(f"bin edges must be at least two finite numbers, got {out}")
    if max(out) > 1 + EDGE_TOLERANCE and max(out) <= 100 + EDGE_TOLERANCE:
        raise LsrInputError(
            f"bin edges must be fractions, not percent (0 to 1, not 0 to 100), got "
            f"{_edge_list(out)}; divide them by 100"
        )
    if not np.all(np.diff(out) > 0):
        raise LsrInputError(f"bin edges must increase strictly, got {_edge_list(out)}")
    if abs(out[0]) > EDGE_TOLERANCE or abs(out[-1] - 1) > EDGE_TOLERANCE:
        raise LsrInputError(
            f"bin edges must start at 0 and end at 1 (fractions), got {_edge_list(out)}: "
            "the bins must cover every probability"
        )
    out[0], out[-1] = 0.0, 1.0
    return tuple(out)


def same_edges(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two edge lists are the same bins (within :data:`EDGE_TOLERANCE`)."""
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=0, atol=EDGE_TOLERANCE))


def _percent(x: float) -> str:
    return f"{100.0 * x:.1f}"


def _edge_label(lo: float, hi: float) -> str:
    return f"{100 * lo:g}–{100 * hi:g}"


#: Class names taken for cancer, in any case (QuPath's class is "Tumor").
CANCER_NAMES = ("cancer", "tumor", "tumour")


def cancer_index(class_names: Sequence[str]) -> int:
    """Index of the cancer class among ``class_names`` (0 when none is named so): a table
    (JSON) or a network may list non-cancer first, and its cancer column is then not 0."""
    for i, name in enumerate(class_names):
        if str(name).strip().lower() in CANCER_NAMES:
            return i
    return 0


@dataclass
class CountTable:
    """Count table p(c_l | z) with ``eta`` and ``rho`` of shape (Z, L), as fractions.

    ``n`` (Z,) and ``estimates`` are set for tables built from an expert's estimates;
    ``flagged`` maps a bin to the reason it is unreliable (too few estimates, std 0, filled
    from a fallback table).
    """

    eta: np.ndarray
    rho: np.ndarray
    edges: tuple[float, ...] = PAPER_EDGES
    class_names: tuple[str, ...] = DEFAULT_CLASSES
    n: np.ndarray | None = None
    estimates: list[Estimate] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    flagged: dict[int, str] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        self.eta = np.asarray(self.eta, dtype=np.float64)
        self.rho = np.asarray(self.rho, dtype=np.float64)
        self.edges = check_edges(self.edges)
        self.class_names = tuple(self.class_names)
        z, n_classes = self.n_bins, len(self.class_names)
        if self.eta.shape != (z, n_classes) or self.rho.shape != (z, n_classes):
            raise LsrInputError(
                f"eta and rho must have shape (bins, classes) = ({z}, {n_classes}), "
                f"got {self.eta.shape} and {self.rho.shape}"
            )
        if not (np.isfinite(self.eta).all() and np.isfinite(self.rho).all()):
            raise LsrInputError("eta and rho must be finite (no NaN or infinity)")
        if (self.eta < 0).any() or (self.eta > 1).any():
            raise LsrInputError("eta must be fractions in [0, 1]")
        if (self.rho < 0).any() or (self.rho > 1).any():
            raise LsrInputError("rho must be fractions in [0, 1]")
        if self.n is not None:  # whole counts: int64 would cut 2.7 to 2 without a word
            n = np.asarray(self.n, dtype=np.float64)
            if n.shape != (z,) or not np.isfinite(n).all() or (n < 0).any() or (n % 1).any():
                raise LsrInputError(
                    f"n (estimates per bin) must be {z} whole counts ≥ 0, got {n.tolist()}"
                )
            self.n = n.astype(np.int64)
        self._flag_degenerate_bins()

    def _flag_degenerate_bins(self) -> None:
        """Flag bins that a loaded table cannot support well (std 0, < 2 estimates)."""
        for b in range(self.n_bins):
            if b in self.flagged:
                continue
            if self.n is not None and self.n[b] < 2:
                self.flagged[b] = f"only {int(self.n[b])} estimate(s)"
            elif (self.rho[b] == 0).any():
                self.flagged[b] = f"std 0: floored at {100 * RHO_FLOOR:g}% for training"

    # ------------------------------------------------------------------ construction
    @property
    def n_bins(self) -> int:
        """Number of low-resolution labels Z."""
        return len(self.edges) - 1

    @classmethod
    def paper_table1(cls) -> CountTable:
        """Paper Table 1 exactly (cancer mean ± std per bin; non-cancer = 100 - cancer)."""
        cancer = np.array(PAPER_TABLE1_PERCENT) / 100.0
        eta = np.stack([cancer[:, 0], 1.0 - cancer[:, 0]], axis=1)
        rho = np.stack([cancer[:, 1], cancer[:, 1]], axis=1)
        return cls(eta=eta, rho=rho, name="paper-table1", provenance={"source": "paper Table 1"})

    @classmethod
    def from_estimates(
        cls,
        z: Sequence[int] | np.ndarray,
        percent_cancer: Sequence[float] | np.ndarray,
        *,
        edges: Sequence[float] = PAPER_EDGES,
        class_names: Sequence[str] = DEFAULT_CLASSES,
        fallback: CountTable | None = None,
        experts: Sequence[str] | None = None,
        slides: Sequence[str] | None = None,
        blocks: Sequence[str] | None = None,
        provenance: dict | None = None,
    ) -> CountTable:
        """Build a two-class table from an expert's block estimates.

        ``z`` (N,) integer bins; ``percent_cancer`` (N,) in 0-100. Per bin: eta = mean,
        rho = sample standard deviation (ddof = 1) of the estimates. Bins with fewer than
        two estimates or a std of 0 are flagged (warning; see :attr:`flagged`) and their rho
        floored at :data:`RHO_FLOOR`. A bin without any estimate is an error unless
        ``fallback`` (a table with the same edges) is given to fill it.
        """
        zs = np.asarray(z)
        pc = np.asarray(percent_cancer, dtype=np.float64)
        if zs.ndim != 1 or pc.shape != zs.shape:
            raise LsrInputError(
                f"z and percent_cancer must be 1-D of equal length, got {zs.shape} and {pc.shape}"
            )
        if len(class_names) != 2:
            raise LsrInputError("estimates give cancer vs non-cancer: exactly two classes")
        edges = check_edges(edges)
        n_bins = len(edges) - 1
        if zs.size and (not np.issubdtype(zs.dtype, np.integer)):
            if not np.all(np.isfinite(zs.astype(np.float64))) or np.any(zs != np.round(zs)):
                raise LsrInputError("z must be integer bin indices")
            zs = zs.astype(np.int64)
        zs = zs.astype(np.int64)
        if ((zs < 0) | (zs >= n_bins)).any():
            raise LsrInputError(f"z must lie in 0..{n_bins - 1}, got {sorted(set(zs.tolist()))}")

        def _which(bad: np.ndarray) -> str:
            """The first few bad estimates: value, bin and (when known) slide and block."""
            idx = np.flatnonzero(bad)
            parts = []
            for i in idx[:3]:
                where = [f"z {int(zs[i])}"]
                if slides is not None and slides[i]:
                    where.append(f"slide {slides[i]}")
                if blocks is not None and blocks[i]:
                    where.append(f"block {blocks[i]}")
                parts.append(f"{pc[i]:g} ({', '.join(where)})")
            return ", ".join(parts) + (", ..." if idx.size > 3 else "")

        nan = np.isnan(pc)
        if nan.any():
            n = int(nan.sum())
            raise LsrInputError(f"{n} estimate{' is' if n == 1 else 's are'} NaN: {_which(nan)}")
        out = (pc < 0) | (pc > 100)
        if out.any():
            raise LsrInputError(f"cancer percentages must lie in 0-100, got {_which(out)}")
        if pc.size and pc.max() <= 1 and ((pc > 0) & (pc < 1)).any():
            raise LsrInputError(
                f"all {pc.size} estimates lie in 0-1 (largest {pc.max():g}): these look like "
                "fractions, but percent_cancer is in percent (0-100); multiply them by 100"
            )
        if fallback is not None and not same_edges(fallback.edges, edges):
            raise LsrInputError(
                f"the fallback table's bin edges {_edge_list(fallback.edges)} differ from the "
                f"estimates' {_edge_list(edges)}: it can only fill bins it has"
            )

        eta = np.zeros((n_bins, 2))
        rho = np.zeros((n_bins, 2))
        counts = np.bincount(zs, minlength=n_bins)
        flagged: dict[int, str] = {}
        missing = [b for b in range(n_bins) if counts[b] == 0]
        if missing and fallback is None:
            example = (
                " (lsr table from-estimates --fallback paper-table1; Python: "
                "fallback=CountTable.paper_table1())"
                if same_edges(edges, PAPER_EDGES)
                else f" with the same bin edges {_edge_list(edges)}"
            )
            raise LsrInputError(
                f"bins {missing} have no estimate; estimate at least two blocks in each, "
                f"or pass a fallback table to fill them{example}"
            )
        for b in range(n_bins):
            vals = pc[zs == b] / 100.0
            if vals.size == 0:
                eta[b], rho[b] = fallback.eta[b], fallback.rho[b]  # type: ignore[union-attr]
                flagged[b] = "no estimate: filled from the fallback table"
                continue
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if vals.size >= 2 else 0.0
            if vals.size < 2:
                flagged[b] = f"only {vals.size} estimate: std unknown, floored"
            elif std == 0.0:
                flagged[b] = f"all {vals.size} estimates equal: std 0, floored"
            std = max(std, RHO_FLOOR)
            eta[b] = (mean, 1.0 - mean)
            rho[b] = (std, std)
        if flagged:
            warnings.warn(
                "count table: unreliable bins: "
                + "; ".join(
                    f"bin {b} ({_edge_label(edges[b], edges[b + 1])}%): {why}"
                    for b, why in flagged.items()
                ),
                stacklevel=2,
            )
        n_est = len(zs)

        def _col(values: Sequence[str] | None) -> list[str]:
            if values is None:
                return [""] * n_est
            if len(values) != n_est:
                raise LsrInputError("experts/slides/blocks must have one entry per estimate")
            return [str(v) for v in values]

        estimates = [
            Estimate(int(zi), float(p), e, s, k)
            for zi, p, e, s, k in zip(
                zs, pc, _col(experts), _col(slides), _col(blocks), strict=True
            )
        ]
        prov = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "experts": sorted({e.expert for e in estimates if e.expert}),
            "slides": sorted({e.slide for e in estimates if e.slide}),
        }
        prov.update(provenance or {})
        return cls(
            eta=eta,
            rho=rho,
            edges=tuple(edges),
            class_names=tuple(class_names),
            n=counts,
            estimates=estimates,
            provenance=prov,
            flagged=flagged,
        )

    @classmethod
    def from_estimate_list(cls, estimates: Iterable[Estimate], **kwargs: object) -> CountTable:
        """Build a table from :class:`Estimate` records (skipped ones are kept, not counted)."""
        est = list(estimates)
        used = [e for e in est if e.percent_cancer is not None and not e.skipped]
        table = cls.from_estimates(
            [e.z for e in used],
            [float(e.percent_cancer) for e in used],  # type: ignore[arg-type]
            experts=[e.expert for e in used],
            slides=[e.slide for e in used],
            blocks=[e.block for e in used],
            **kwargs,  # type: ignore[arg-type]
        )
        table.estimates = est
        return table

    @classmethod
    def merge(cls, tables: Sequence[CountTable], **kwargs: object) -> CountTable:
        """Pool the raw estimates of several experts' tables (each estimate keeps its expert)."""
        if not tables:
            raise LsrInputError("nothing to merge")
        if any(not t.estimates for t in tables):
            raise LsrInputError("only tables built from estimates can be merged")
        if len({t.edges for t in tables}) != 1:
            raise LsrInputError("tables to merge have different bin edges")
        kwargs.setdefault("edges", tables[0].edges)
        return cls.from_estimate_list([e for t in tables for e in t.estimates], **kwargs)

    # ------------------------------------------------------------------ use
    def lookup(self, z: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Targets for blocks with labels ``z`` (B,): ``eta`` and ``rho`` of shape (B, L)."""
        zs = np.asarray(z, dtype=np.int64)
        if ((zs < 0) | (zs >= self.n_bins)).any():
            raise LsrInputError(f"labels z must lie in 0..{self.n_bins - 1}")
        return self.eta[zs], self.rho[zs]

    @property
    def cancer(self) -> int:
        """Column of the cancer class in ``eta``/``rho`` (:func:`cancer_index`)."""
        return cancer_index(self.class_names)

    def top_bin_problem(self, max_drop: float = TOP_BIN_MAX_DROP) -> str | None:
        """Why the top bin contradicts the classifier's order, or None.

        The bins are ordered by the classifier's cancer probability, so its most confident
        bin should hold the most cancer. When the top bin's cancer mean is more
        than ``max_drop`` (fraction) below a lower bin's, the expert's sample of it is most
        likely unrepresentative, and intra-instance learns to under-call cancer. For a table
        with estimate counts ``n``, only bins with two estimates or more take part (a bin
        filled from a fallback table has none).
        """
        cancer = self.eta[:, self.cancer]
        known = np.ones(self.n_bins, bool) if self.n is None else np.asarray(self.n) >= 2
        lower = np.flatnonzero(known[:-1])
        if self.n_bins < 2 or not known[-1] or lower.size == 0:
            return None
        low = int(lower[np.argmax(cancer[lower])])
        drop = float(cancer[low] - cancer[-1])
        if drop <= max_drop + 1e-9:  # exactly max_drop (in float) is not reported
            return None
        labels = self.bin_labels()
        return (
            f"blocks of the classifier's top bin ({labels[-1]}%) average "
            f"{_percent(cancer[-1])}% cancer in this table, {100 * drop:.0f} points below bin "
            f"{labels[low]}% ({_percent(cancer[low])}%); the classifier's most confident "
            "blocks should hold the most cancer, so the top bin's estimates are probably "
            "unrepresentative: estimate more of its blocks (intra-instance under-calls cancer "
            "with such a table)"
        )

    def bin_problems(self) -> dict[int, str]:
        """What to show against each bin: the :attr:`flagged` reasons, and for the top bin
        also its :meth:`top_bin_problem`."""
        out = dict(self.flagged)
        if top := self.top_bin_problem():
            last = self.n_bins - 1
            out[last] = f"{out[last]}; {top}" if last in out else top
        return out

    def bin_labels(self) -> list[str]:
        """Human labels of the bins in percent, e.g. ``'0–20'``."""
        return [_edge_label(a, b) for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)]

    def format_rows(self) -> list[list[str]]:
        """Rows as paper Table 1 shows them: bin, per class 'mean ± std' (percent), n.

        A bin with a single estimate shows its std as '–': it has none (the value kept for
        training is a floor, which would read as a measured 0.1 %)."""
        rows = []
        for b, label in enumerate(self.bin_labels()):
            one = self.n is not None and int(self.n[b]) == 1
            row = [label]
            row += [
                f"{_percent(self.eta[b, c])} ± {'–' if one else _percent(self.rho[b, c])}"
                for c in range(len(self.class_names))
            ]
            row.append("" if self.n is None else str(int(self.n[b])))
            rows.append(row)
        return rows

    def header(self) -> list[str]:
        """Column titles matching :meth:`format_rows`."""
        return ["bin (%)", *[f"{c} (%)" for c in self.class_names], "n"]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """Machine-readable form (fractions), with raw estimates and provenance."""
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "name": self.name,
            "edges": list(self.edges),
            "class_names": list(self.class_names),
            "eta": self.eta.tolist(),
            "rho": self.rho.tolist(),
            "n": None if self.n is None else self.n.tolist(),
            "flagged": {str(k): v for k, v in self.flagged.items()},
            "estimates": [asdict(e) for e in self.estimates],
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict, path: PathType | None = None) -> CountTable:
        """Inverse of :meth:`to_dict`; malformed content raises naming ``path``."""
        if not isinstance(data, dict):
            raise LsrInputError("expected a JSON object", path)
        if data.get("format") != JSON_FORMAT:
            raise LsrInputError(f'not a count table (missing "format": "{JSON_FORMAT}")', path)
        check_version(data, JSON_VERSION, "count table", path)
        for key in ("edges", "class_names", "eta", "rho"):
            if key not in data:
                raise LsrInputError(f"missing key '{key}'", path)
        for key in ("eta", "rho", "edges", "n"):  # numbers, not "0.02" or true
            if key in data and data[key] is not None and (bad := _non_number(data[key])):
                raise LsrInputError(f"'{key}' holds {bad}: numbers expected", path)
        names = data["class_names"]
        if not isinstance(names, list) or not all(isinstance(c, str) and c for c in names):
            raise LsrInputError(f"'class_names' must be a list of names, got {names!r}", path)
        if not isinstance(data.get("flagged") or {}, dict):
            raise LsrInputError('\'flagged\' must map bins to reasons ({"3": "why"})', path)
        try:
            eta = np.asarray(data["eta"], dtype=np.float64)
            rho = np.asarray(data["rho"], dtype=np.float64)
            edges = tuple(float(e) for e in data["edges"])
        except (TypeError, ValueError) as err:
            raise LsrInputError(f"non-numeric eta/rho/edges ({err})", path) from None
        try:  # before the shape checks: percent edges are the problem, not the bin count
            edges = check_edges(edges)
        except LsrInputError as err:
            raise LsrInputError(err.problem, path) from None
        if eta.ndim != 2 or rho.shape != eta.shape:
            raise LsrInputError(
                f"eta and rho must be (bins, classes), got {eta.shape}, {rho.shape}", path
            )
        if eta.shape[0] != len(edges) - 1:
            raise LsrInputError(
                f"wrong number of bins: {eta.shape[0]} rows for {len(edges) - 1} bins", path
            )
        for b in range(eta.shape[0]):
            where = f"bin {b}"
            if not (np.isfinite(eta[b]).all() and np.isfinite(rho[b]).all()):
                raise LsrInputError("non-finite eta or rho", path, where)
            if (eta[b] < 0).any() or (eta[b] > 1).any():
                raise LsrInputError("mean outside [0, 1] (fractions expected)", path, where)
            if (rho[b] < 0).any():
                raise LsrInputError("negative std", path, where)
            if eta.shape[1] > 1 and abs(eta[b].sum() - 1) > CLASS_SUM_TOLERANCE:
                raise LsrInputError(
                    f"class means {eta[b].tolist()} sum to {eta[b].sum():g}, not 1: the "
                    "classes share each block, so their fractions must add up to 1",
                    path,
                    where,
                )
        try:
            estimates = [Estimate(**e) for e in data.get("estimates") or []]
        except TypeError as err:
            raise LsrInputError(f"malformed estimate ({err})", path) from None
        try:
            return cls(
                eta=eta,
                rho=rho,
                edges=edges,
                class_names=tuple(data["class_names"]),
                n=None if data.get("n") is None else np.asarray(data["n"]),
                estimates=estimates,
                provenance=dict(data.get("provenance") or {}),
                flagged={int(k): str(v) for k, v in (data.get("flagged") or {}).items()},
                name=str(data.get("name") or ""),
            )
        except LsrInputError as err:
            raise LsrInputError(err.problem, path) from None
        except (TypeError, ValueError) as err:  # e.g. a flagged bin "x"
            raise LsrInputError(f"malformed count table ({err})", path) from None

    def to_json(self, path: PathType) -> None:
        """Write the machine-readable JSON (atomic)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: PathType) -> CountTable:
        """Read a table written by :meth:`to_json`."""
        text = read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LsrInputError(f"invalid JSON: {err.msg}", path, f"line {err.lineno}") from None
        return cls.from_dict(data, path)

    def csv_columns(self) -> list[str]:
        """CSV header: bin, low, high (percent), per class mean and std (percent), n."""
        cols = ["bin", "low", "high"]
        for c in self.class_names:
            cols += [f"{c}_mean", f"{c}_std"]
        return [*cols, "n"]

    def to_csv(self, path: PathType) -> None:
        """Write the people-readable CSV (percent, one row per bin, like Table 1; atomic)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_columns())
        for b in range(self.n_bins):
            row: list[object] = [b, f"{100 * self.edges[b]:g}", f"{100 * self.edges[b + 1]:g}"]
            for c in range(len(self.class_names)):
                row += [f"{100 * self.eta[b, c]:.6g}", f"{100 * self.rho[b, c]:.6g}"]
            row.append("" if self.n is None else int(self.n[b]))
            writer.writerow(row)
        atomic_write_text(path, buf.getvalue())

    @classmethod
    def from_csv(cls, path: PathType, *, edges: Sequence[float] | None = None) -> CountTable:
        """Read a CSV written by :meth:`to_csv` (or by hand in the same layout).

        Columns ``bin``, ``<class>_mean`` and ``<class>_std`` (percent) are required for
        every class (default ``cancer`` and ``non-cancer``; a file with only the cancer
        columns gets non-cancer = 100 - cancer); ``low``/``high`` (percent) give the bin
        edges, else ``edges`` or the paper's. Every problem raises naming the file and row.
        """
        reader, header = csv_reader(path)
        require_columns(header, ["bin"], path)
        classes = [h[: -len("_mean")] for h in header if h.endswith("_mean")]
        if "cancer" not in classes:  # (a non-cancer column alone made a one-class table)
            require_columns(header, ["cancer_mean"], path)
        classes = ["cancer", *(c for c in classes if c != "cancer")]  # class 0 is cancer
        require_columns(header, [f"{c}_std" for c in classes], path)
        has_edges = "low" in header and "high" in header
        rows: dict[int, dict[str, float]] = {}
        for i, raw in enumerate(reader, start=2):  # line 1 is the header
            where = f"row {i}"
            check_row_fields(raw, header, path, where)
            if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
                continue
            rec: dict[str, float] = {}
            for key in ["bin", *(["low", "high"] if has_edges else [])] + [
                f"{c}_{s}" for c in classes for s in ("mean", "std")
            ]:
                val = (raw.get(key) or "").strip()
                try:
                    rec[key] = float(val)
                except ValueError:
                    raise LsrInputError(
                        f"column '{key}' is not a number: {val!r}", path, where
                    ) from None
                if not math.isfinite(rec[key]):
                    raise LsrInputError(f"column '{key}' is not finite", path, where)
            n_val = (raw.get("n") or "").strip()
            if n_val:
                try:
                    rec["n"] = int(n_val)
                except ValueError:
                    raise LsrInputError(
                        f"column 'n' is not an integer: {n_val!r}", path, where
                    ) from None
            b = rec["bin"]
            if b != int(b) or b < 0:
                raise LsrInputError(f"bin must be a non-negative integer, got {b:g}", path, where)
            b = int(b)
            if b in rows:
                raise LsrInputError(f"bin {b} appears twice", path, where)
            for c in classes:
                m, s = rec[f"{c}_mean"], rec[f"{c}_std"]
                if not 0 <= m <= 100:
                    raise LsrInputError(f"{c}_mean {m:g} is outside 0-100 (percent)", path, where)
                if s < 0:
                    raise LsrInputError(f"{c}_std {s:g} is negative", path, where)
            total = sum(rec[f"{c}_mean"] for c in classes)
            if len(classes) > 1 and abs(total - 100) > 100 * CLASS_SUM_TOLERANCE:
                means = ", ".join(f"{c}_mean {rec[c + '_mean']:g}" for c in classes)
                raise LsrInputError(
                    f"bin {b}: class means sum to {total:g}%, not 100% ({means}); the classes "
                    "share each block, so their percentages must add up to 100",
                    path,
                    where,
                )
            rec["_line"] = i
            rows[b] = rec
        if not rows:
            raise LsrInputError("no rows", path)
        n_bins = len(rows)
        if sorted(rows) != list(range(n_bins)):
            raise LsrInputError(f"bins must be numbered 0..{n_bins - 1}, got {sorted(rows)}", path)
        if has_edges:
            file_edges = [rows[0]["low"] / 100] + [rows[b]["high"] / 100 for b in range(n_bins)]
            for b in range(1, n_bins):
                if rows[b]["low"] != rows[b - 1]["high"]:
                    raise LsrInputError(
                        "bin edges are not contiguous (low != previous high)",
                        path,
                        f"row {int(rows[b]['_line'])}",
                    )
            if file_edges[0] != 0.0 or file_edges[-1] != 1.0:
                raise LsrInputError(
                    f"wrong number of bins: the {n_bins} bins cover "
                    f"{100 * file_edges[0]:g}-{100 * file_edges[-1]:g}%, not 0-100%",
                    path,
                )
            if edges is not None and not np.allclose(file_edges, edges):
                raise LsrInputError(
                    f"bin edges {file_edges} differ from the expected {list(edges)}", path
                )
            use_edges = tuple(file_edges)
        else:
            use_edges = tuple(edges) if edges is not None else PAPER_EDGES
        if n_bins != len(use_edges) - 1:
            raise LsrInputError(
                f"wrong number of bins: {n_bins} rows, expected {len(use_edges) - 1}", path
            )
        class_names = list(classes)
        if class_names == ["cancer"]:
            class_names = ["cancer", "non-cancer"]
        eta = np.zeros((n_bins, len(class_names)))
        rho = np.zeros_like(eta)
        for b in range(n_bins):
            for j, c in enumerate(class_names):
                if c in classes:
                    eta[b, j] = rows[b][f"{c}_mean"] / 100
                    rho[b, j] = rows[b][f"{c}_std"] / 100
                else:  # complement of the single given class
                    eta[b, j] = 1 - rows[b][f"{classes[0]}_mean"] / 100
                    rho[b, j] = rows[b][f"{classes[0]}_std"] / 100
        n = (
            np.array([rows[b]["n"] for b in range(n_bins)])
            if all("n" in rows[b] for b in range(n_bins))
            else None
        )
        try:
            return cls(
                eta=eta,
                rho=rho,
                edges=use_edges,
                class_names=tuple(class_names),
                n=n,
                name=Path(path).stem,
            )
        except LsrInputError as err:
            raise LsrInputError(err.problem, path) from None

    @classmethod
    def load(cls, source: PathType) -> CountTable:
        """Load ``paper-table1`` (preset name), a ``.json`` or a ``.csv`` table."""
        if str(source) in ("paper", "paper-table1"):
            return cls.paper_table1()
        p = Path(source)
        if not p.exists():  # before the suffix: 'nope' is a missing file, not a format
            hint = "" if p.suffix else " (the preset is called 'paper-table1')"
            raise LsrInputError(f"file not found{hint}", p)
        if p.is_dir():
            raise LsrInputError("is a folder (a count table .json or .csv was expected)", p)
        if p.suffix.lower() == ".json":
            return cls.from_json(p)
        if p.suffix.lower() in (".csv", ".txt"):
            return cls.from_csv(p)
        raise LsrInputError("unknown count-table format (expected .json or .csv)", p)

    def save(self, path: PathType) -> None:
        """Write ``.json`` or ``.csv`` by suffix (atomic), read back before it takes the name.

        Why the read-back: the reader checks more than the constructor (class sums, the CSV's
        columns); a table it would refuse must never replace a good file under the name.
        """
        suffix = Path(path).suffix.lower()
        if suffix not in (".json", ".csv"):
            raise LsrInputError("count tables are saved as .json or .csv", path)
        with atomic_path(path) as tmp:
            (self.to_json if suffix == ".json" else self.to_csv)(tmp)
            try:
                CountTable.load(tmp)
            except LsrInputError as err:
                raise LsrInputError(
                    f"not saved: the table would not read back ({err.problem})", path, err.where
                ) from None


def check_row_fields(row: dict, header: Sequence[str], path: PathType, where: str) -> None:
    """Raise when a :class:`csv.DictReader` row holds more values than its header has
    columns (it files the surplus under the key None): :func:`lsr.csvfile.check_field_count`."""
    values = [row.get(h) for h in header] + list(row.get(None) or [])
    check_field_count(values, header, path, where)


def _non_number(value: Any) -> str:
    """'' when ``value`` is a number or nested lists of them, else the first offender's repr
    (booleans count as offenders: JSON ``true`` would silently read as 1)."""
    if isinstance(value, list):
        return next((bad for v in value if (bad := _non_number(v))), "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    return ""
