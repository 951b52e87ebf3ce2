"""A simulated expert who builds the count table the way a pathologist does in the annotator.

For every bin ``z`` the expert looks at 10–12 randomly sampled blocks and says what percent
of each is cancer: ``estimate = round(true + bias + noise)`` with absolute and relative
Gaussian noise, rounded to 5 % (1 % below 5 %), clipped to 0–100 %. The table is then
:meth:`lsr.counttable.CountTable.from_estimates` of those numbers — the same code path as a
real expert's. :func:`true_table` gives the exact p(c|z) of all blocks for comparison.
"""

from __future__ import annotations

import numpy as np

from lsr.counttable import PAPER_EDGES, CountTable
from lsr.synthetic_config import ExpertConfig

N_BINS = len(PAPER_EDGES) - 1


def human_estimates(
    true_fraction: np.ndarray, ec: ExpertConfig, rng: np.random.Generator
) -> np.ndarray:
    """Estimates (fractions, same shape) of true cancer fractions, with human-like error."""
    t = np.asarray(true_fraction, dtype=np.float64)
    est = (
        t
        + ec.bias
        + rng.normal(0, ec.noise_sd, t.shape)
        + t * rng.normal(0, ec.relative_noise_sd, t.shape)
    )
    est = np.clip(est, 0.0, 1.0)
    coarse = np.round(est / ec.rounding) * ec.rounding if ec.rounding > 0 else est
    fine = np.round(est / ec.fine_rounding) * ec.fine_rounding if ec.fine_rounding > 0 else est
    return np.clip(np.where(est < ec.fine_below, fine, coarse), 0.0, 1.0)


def sample_blocks(z: np.ndarray, ec: ExpertConfig, rng: np.random.Generator) -> np.ndarray:
    """Indices into ``z`` (N,) of the blocks the expert looks at: 10–12 per bin (all if fewer)."""
    lo, hi = ec.blocks_per_bin
    picked = []
    for b in range(N_BINS):
        idx = np.flatnonzero(z == b)
        n = min(idx.size, int(rng.integers(lo, hi + 1)))
        if n:
            picked.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def expert_table(
    z: np.ndarray,
    true_fraction: np.ndarray,
    ec: ExpertConfig,
    seed: int,
    block_ids: list[str] | None = None,
) -> CountTable:
    """Count table from the simulated expert's estimates of sampled blocks.

    ``z`` (N,) bins and ``true_fraction`` (N,) of all candidate blocks (tissue blocks of the
    training slides). Bins without any block are filled from paper Table 1 and flagged.
    """
    rng = np.random.default_rng([seed, 57])
    z = np.asarray(z, dtype=np.int64)
    idx = sample_blocks(z, ec, rng)
    est = human_estimates(np.asarray(true_fraction)[idx], ec, rng)
    return CountTable.from_estimates(
        z[idx],
        100.0 * est,
        fallback=CountTable.paper_table1(),
        experts=["simulated"] * idx.size,
        blocks=None if block_ids is None else [block_ids[i] for i in idx],
        provenance={"source": "lsr.synthetic simulated expert", "seed": int(seed)},
    )


def true_table(z: np.ndarray, true_fraction: np.ndarray) -> CountTable:
    """The exact p(c|z): mean and std (ddof 0) of the true cancer fraction of all blocks per bin.

    Bins without blocks take paper Table 1's values and are flagged.
    """
    z = np.asarray(z, dtype=np.int64)
    t = np.asarray(true_fraction, dtype=np.float64)
    paper = CountTable.paper_table1()
    eta, rho = paper.eta.copy(), paper.rho.copy()
    n = np.bincount(z, minlength=N_BINS)[:N_BINS]
    flagged = {}
    for b in range(N_BINS):
        v = t[z == b]
        if v.size == 0:
            flagged[b] = "no block in this bin: paper Table 1 values"
            continue
        eta[b] = (v.mean(), 1.0 - v.mean())
        rho[b] = max(v.std(), 1e-3)
    return CountTable(
        eta, rho, n=n, flagged=flagged, name="true p(c|z)",
        provenance={"source": "lsr.synthetic ground truth"},
    )  # fmt: skip


def table_error(estimated: CountTable, truth: CountTable) -> dict:
    """How far the expert's table is from the true one (cancer class, fractions).

    Bins flagged in either table are left out. Returns ``eta_mae``, ``eta_max``, ``rho_mae``,
    ``n_bins`` and per-bin ``eta_error`` (estimated - true; None where left out).
    """
    per_bin: list[float | None] = []
    d_eta, d_rho = [], []
    for b in range(min(estimated.n_bins, truth.n_bins)):
        if b in truth.flagged or "fallback" in estimated.flagged.get(b, ""):
            per_bin.append(None)
            continue
        e = float(estimated.eta[b, 0] - truth.eta[b, 0])
        per_bin.append(e)
        d_eta.append(abs(e))
        d_rho.append(abs(float(estimated.rho[b, 0] - truth.rho[b, 0])))
    return {
        "eta_mae": float(np.mean(d_eta)) if d_eta else None,
        "eta_max": float(np.max(d_eta)) if d_eta else None,
        "rho_mae": float(np.mean(d_rho)) if d_rho else None,
        "n_bins": len(d_eta),
        "eta_error": per_bin,
    }
