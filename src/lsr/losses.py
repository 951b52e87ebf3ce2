"""Label-super-resolution losses: match predicted class fractions to the count table.

The network gives, per pixel, a probability ``p_i`` for each class ``l``. A block of
``n = H * W`` working-resolution pixels then has a predicted class *fraction* with

- mean      ``μ_k = (1/n) Σ_i p_i``
- variance  ``v_k = (1/n²) Σ_i p_i (1 − p_i)``  (``variance_norm="n2"``, default) or
  ``(1/n) Σ_i p_i (1 − p_i)`` (``"n"``, the paper as printed),

and the count table says the fraction of class ``l`` in a block with label ``z`` is
``N(η, ρ²)``. Each loss compares a predicted Gaussian ``N(μ, s²)`` with ``N(η, ρ²)`` with a
distance ``D`` (see :data:`DISTANCES`), then averages over classes and over blocks (intra)
or groups of blocks sharing ``z`` (inter, intra+inter); the sum loss (not the paper's) adds
a per-block mean and a per-group mean. The maths is fixed by the project's design note
(summarised in ``docs/method.md``); ``docs/losses.md`` explains each choice.

All fractions are in [0, 1]. Code is device- and dtype-agnostic: everything follows the
device of ``probs``; half-precision inputs are upcast to float32 (``n²`` overflows float16).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from lsr.errors import LsrInputError

__all__ = [
    "DEFAULT_DISTANCE",
    "DEFAULT_VARIANCE_NORM",
    "DISTANCES",
    "KL_S2_EPS",
    "RHO_MIN",
    "VARIANCE_NORMS",
    "LossWarning",
    "block_stats",
    "distance",
    "floor_rho",
    "group_stats",
    "inter_instance_loss",
    "intra_instance_loss",
    "intra_inter_instance_loss",
    "intra_plus_inter_loss",
]

DISTANCES: tuple[str, ...] = ("gaussian-nll", "lsr-interval", "paper-printed", "kl")
"""Names accepted by every loss's ``distance`` argument (first one is the default)."""
DEFAULT_DISTANCE = "gaussian-nll"

VARIANCE_NORMS: tuple[str, ...] = ("n2", "n")
"""``n2``: divide Σ p(1−p) by n² (reference codes, default); ``n``: by n (paper as printed)."""
DEFAULT_VARIANCE_NORM = "n2"

RHO_MIN = 1e-3
"""The design note's floor for ρ (a fraction; docs/method.md). Table entries below it
trigger a warning."""

KL_S2_EPS = 1e-12
"""Floor for s² inside the ``kl`` distance (``log(ρ/s)`` is infinite at s = 0).

Far below any spread that matters (ρ ≥ 1e-3 means ρ² ≥ 1e-6). Per-block sampling variances
are small but well above it: with ``n2`` a block of n = 240² px has v = Σ p(1−p) / n² ≤
0.25/n ≈ 4.3e-6 (about 4 × 10⁶ times the floor), yet below most of Table 1's ρ² (up to
2.5e-3), so ``log(ρ/s)`` is large for single blocks, one reason ``kl`` is meant for the
inter losses.
"""

# Constants of the reference forms (docs/method.md); part of the definitions, not tunables.
_LSR_INTERVAL_EPS = 1e-6
_LOG_BOUND = 0.03
_HALF_LOG_2PI = 0.5 * float(torch.log(torch.tensor(2.0 * torch.pi, dtype=torch.float64)))


class LossWarning(UserWarning):
    """A loss input that works but is probably not what the user meant (ρ = 0, kl in intra)."""


def _warn(message: str) -> None:
    """Warn once, attributed to the first caller outside this module (trainer, test, ...)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, LossWarning, stacklevel=level)


# ---------------------------------------------------------------------------------------------
# Distances


def _check_choice(value: str, valid: Sequence[str], what: str) -> None:
    if value not in valid:
        raise LsrInputError(
            f"unknown {what} {value!r}; valid choices are: {', '.join(map(repr, valid))}"
        )


def distance(name: str, mu: Tensor, s2: Tensor, eta: Tensor, rho: Tensor) -> Tensor:
    """Elementwise distance ``D`` between ``N(mu, s2)`` (predicted) and ``N(eta, rho²)`` (table).

    All arguments broadcast together; fractions in [0, 1], ``s2`` a variance of a fraction.
    ``rho`` must already be floored (see :func:`floor_rho`): with ρ = 0 and s² = 0 the
    ``gaussian-nll`` form is infinite.

    - ``gaussian-nll``: ``d²/(2(s²+ρ²)) + ½ log(2π(s²+ρ²))`` (default)
    - ``lsr-interval``: ``relu(|d|−ρ)²/(s²+ρ²+1e-6) + log(s²+0.03)``
    - ``paper-printed``: ``½ s² d²/(ρ²+s²)² + ½ log(s²+0.03)`` (can collapse; reproduction only)
    - ``kl``: ``KL(N(μ,s²) ‖ N(η,ρ²)) = log(ρ/s) + (s²+d²)/(2ρ²) − ½`` with s² ≥ KL_S2_EPS

    where ``d = eta − mu``.
    """
    _check_choice(name, DISTANCES, "distance")
    d = eta - mu
    rho2 = rho * rho
    if name == "gaussian-nll":
        total = s2 + rho2
        return d * d / (2.0 * total) + 0.5 * torch.log(total) + _HALF_LOG_2PI
    if name == "lsr-interval":
        gap = F.relu(d.abs() - rho)
        return gap * gap / (s2 + rho2 + _LSR_INTERVAL_EPS) + torch.log(s2 + _LOG_BOUND)
    if name == "paper-printed":
        total = s2 + rho2
        return 0.5 * s2 * d * d / (total * total) + 0.5 * torch.log(s2 + _LOG_BOUND)
    # kl
    s2f = s2.clamp_min(KL_S2_EPS)
    return torch.log(rho) - 0.5 * torch.log(s2f) + (s2f + d * d) / (2.0 * rho2) - 0.5


# ---------------------------------------------------------------------------------------------
# Inputs


def _compute_dtype(probs: Tensor) -> torch.dtype:
    # float16/bfloat16 cannot hold n² (57 600² for a 240×240 block) nor sum 57 600 pixels well.
    return torch.promote_types(probs.dtype, torch.float32)


def _check_probs(probs: Tensor) -> Tensor:
    if not isinstance(probs, Tensor):
        raise LsrInputError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim != 4:
        raise LsrInputError(
            f"probs must have shape (B, L, H, W) (blocks, classes, rows, cols), "
            f"got shape {tuple(probs.shape)}"
        )
    if not probs.is_floating_point():
        raise LsrInputError(f"probs must be floating point, got {probs.dtype}")
    b, l_, h, w = probs.shape
    if b == 0 or l_ == 0 or h == 0 or w == 0:
        raise LsrInputError(f"probs must not be empty, got shape {tuple(probs.shape)}")
    return probs.to(_compute_dtype(probs))


def _as_table_tensor(x: Any, name: str, like: Tensor, shape: tuple[int, int]) -> Tensor:
    t = torch.as_tensor(x)
    if t.shape != shape:
        raise LsrInputError(
            f"{name} must have shape (B, L) = {shape} to match probs, got {tuple(t.shape)}"
        )
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise LsrInputError(f"{name} must be numeric, got {t.dtype}")
    t = t.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t))[:5].tolist()
        raise LsrInputError(f"{name} contains NaN or infinite values at (block, class) {bad}")
    return t


def floor_rho(rho: Tensor, rho_floor: float = RHO_MIN) -> Tensor:
    """Raise every ρ below ``rho_floor`` to it; warn (once) if any entry is below RHO_MIN.

    A table with ρ = 0 (e.g. the 0–20 % bin measured as exactly 0 %) would make the
    Gaussian forms infinite. ``rho_floor`` may be set higher than METHOD's 1e-3 for training
    stability (the ``gaussian-nll`` gradient scales as 1/ρ²); raising values silently is then
    intended, so the warning is only about table entries below RHO_MIN.
    Shape: any; the warning names entries by index into ``rho``.
    """
    rho_floor = float(rho_floor)
    if not (rho_floor > 0.0 and rho_floor < float("inf")):
        raise LsrInputError(f"rho_floor must be a positive finite fraction, got {rho_floor}")
    if bool((rho < 0).any()):
        bad = torch.nonzero(rho < 0)[:5].tolist()
        raise LsrInputError(f"rho (a standard deviation) must be >= 0; negative at {bad}")
    tiny = rho < RHO_MIN
    if bool(tiny.any()):
        idx = torch.nonzero(tiny)
        shown = ", ".join(f"{tuple(i)}: {float(rho[tuple(i)]):.3g}" for i in idx[:8].tolist())
        more = f" and {len(idx) - 8} more" if len(idx) > 8 else ""
        _warn(
            f"count-table ρ below {RHO_MIN} at (block, class) {shown}{more}; "
            f"using ρ = max(ρ, {rho_floor:g}) there so the loss stays finite"
        )
    return rho.clamp_min(rho_floor)


# ---------------------------------------------------------------------------------------------
# Statistics


def block_stats(probs: Tensor, variance_norm: str = DEFAULT_VARIANCE_NORM) -> tuple[Tensor, Tensor]:
    """Per-block mean ``μ`` and sampling variance ``v`` of each class fraction.

    ``probs``: (B, L, H, W) class probabilities at working resolution. Returns ``(mu, v)``,
    both (B, L): ``μ = mean p`` and ``v = Σ p(1−p) / n²`` (``"n2"``) or ``/ n`` (``"n"``),
    ``n = H·W``. Float16/bfloat16 inputs are computed in float32.
    """
    _check_choice(variance_norm, VARIANCE_NORMS, "variance_norm")
    mu, v = _block_stats(probs, variance_norm, need_v=True)
    assert v is not None
    return mu, v


def _block_stats(probs: Tensor, variance_norm: str, need_v: bool) -> tuple[Tensor, Tensor | None]:
    probs = _check_probs(probs)
    n = probs.shape[-1] * probs.shape[-2]
    mu = probs.mean(dim=(-2, -1))
    if not need_v:
        return mu, None
    # p(1 − p) rather than p − p²: exact near p = 1, where p − p² cancels.
    bern = (probs * (1.0 - probs)).sum(dim=(-2, -1))
    v = bern / (n * n) if variance_norm == "n2" else bern / n
    return mu, v


def _group_index(group: Any, b: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Map arbitrary integer group ids (B,) to 0..G-1; returns (index (B,), counts (G,))."""
    g = torch.as_tensor(group)
    if g.shape != (b,):
        raise LsrInputError(f"group must have shape (B,) = ({b},), got {tuple(g.shape)}")
    if g.is_floating_point() or g.is_complex() or g.dtype == torch.bool:
        raise LsrInputError(f"group ids must be integers, got {g.dtype}")
    ids, index, counts = torch.unique(g.to(device), return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        ids = ids[counts < 2].tolist()
        raise LsrInputError(
            f"group(s) {ids} have fewer than 2 blocks; an inter-instance loss needs at least 2 "
            "blocks of the same label per group (a single block has no spread)"
        )
    return index, counts


def _group_mean(x: Tensor, index: Tensor, counts: Tensor) -> Tensor:
    """Mean of rows of ``x`` (B, L) within each group -> (G, L)."""
    out = x.new_zeros((counts.shape[0], x.shape[1]))
    out = out.index_add(0, index, x)
    return out / counts.to(x.dtype).unsqueeze(1)


def group_stats(
    probs: Tensor,
    group: Any,
    *,
    variance_norm: str = DEFAULT_VARIANCE_NORM,
    intra: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Group mean ``μ_G`` and spread ``s²_G`` of the predicted fractions, per class.

    ``probs`` (B, L, H, W); ``group`` (B,) integer ids (any values, any order). Returns
    ``(mu_g (G, L), s2_g (G, L), index (B,))`` where groups are ordered by sorted id and
    ``index[k]`` is block k's group row. ``s²_G = mean_k (μ_k − μ_G)²`` (inter) plus
    ``mean_k v_k`` when ``intra`` (intra+inter, paper Eq. 11; ``mean μ² − μ_G²`` is computed
    as the mean squared deviation, which is equal and never negative in floating point).
    """
    mu, v = block_stats(probs, variance_norm)
    index, counts = _group_index(group, mu.shape[0], mu.device)
    return _group_moments(mu, v, index, counts, intra)


def _group_moments(
    mu: Tensor, v: Tensor | None, index: Tensor, counts: Tensor, intra: bool
) -> tuple[Tensor, Tensor, Tensor]:
    mu_g = _group_mean(mu, index, counts)
    dev = mu - mu_g.index_select(0, index)
    s2_g = _group_mean(dev * dev, index, counts)
    if intra:
        assert v is not None
        s2_g = s2_g + _group_mean(v, index, counts)
    return mu_g, s2_g, index


def _group_table(x: Tensor, name: str, index: Tensor, counts: Tensor) -> Tensor:
    """Per-group table value (G, L); all blocks of a group must agree."""
    x_g = _group_mean(x, index, counts)
    same = torch.isclose(x, x_g.index_select(0, index), rtol=1e-5, atol=1e-7)
    if not bool(same.all()):
        bad = sorted({int(i) for i in torch.nonzero(~same)[:, 0].tolist()})[:8]
        raise LsrInputError(
            f"{name} differs between blocks of the same group (blocks {bad}); a group must "
            "hold blocks of one low-resolution label z"
        )
    return x_g


# ---------------------------------------------------------------------------------------------
# Losses


def _prepare(
    probs: Tensor,
    eta: Any,
    rho: Any,
    distance_name: str,
    variance_norm: str,
    rho_floor: float,
    need_v: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    _check_choice(distance_name, DISTANCES, "distance")
    _check_choice(variance_norm, VARIANCE_NORMS, "variance_norm")
    mu, v = _block_stats(probs, variance_norm, need_v)
    shape = (mu.shape[0], mu.shape[1])
    eta_t = _as_table_tensor(eta, "eta", mu, shape)
    rho_t = _as_table_tensor(rho, "rho", mu, shape)
    # NaN/inf anywhere in probs reaches the block sums: checking (B, L) is as strict and cheap.
    finite = torch.isfinite(mu) if v is None else torch.isfinite(mu) & torch.isfinite(v)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite)[:5].tolist()
        raise LsrInputError(f"probs contain NaN or infinite values in (block, class) {bad}")
    rho_t = floor_rho(rho_t, rho_floor)
    return mu, v, eta_t, rho_t


def intra_instance_loss(
    probs: Tensor,
    eta: Any,
    rho: Any,
    *,
    distance: str = DEFAULT_DISTANCE,
    variance_norm: str = DEFAULT_VARIANCE_NORM,
    rho_floor: float = RHO_MIN,
) -> Tensor:
    """Intra-instance (original LSR) loss: each block's own ``N(μ_k, v_k)`` vs ``N(η, ρ²)``.

    ``probs`` (B, L, H, W) softmax probabilities at working resolution; ``eta``, ``rho``
    (B, L) table mean and std (fractions) for each block's label. Returns a scalar: the mean
    of ``D`` over blocks and classes. ``kl`` is allowed but warns: it compares ρ (a spread
    *across* blocks) with a per-block sampling variance and pushes pixels towards 0.5.
    """
    mu, v, eta_t, rho_t = _prepare(probs, eta, rho, distance, variance_norm, rho_floor)
    assert v is not None
    _warn_kl_per_block(distance)
    return _distance(distance, mu, v, eta_t, rho_t).mean()


def _warn_kl_per_block(distance_name: str) -> None:
    if distance_name == "kl":
        _warn(
            "distance 'kl' in a per-block term (the intra-instance loss, or the intra part of "
            "the sum loss) compares ρ (spread across blocks) with the per-block sampling "
            "variance and pushes pixels towards 0.5; it is meant for the inter losses"
        )


def _grouped_loss(
    probs: Tensor,
    eta: Any,
    rho: Any,
    group: Any,
    distance_name: str,
    variance_norm: str,
    rho_floor: float,
    intra: bool,
) -> Tensor:
    mu, v, eta_t, rho_t = _prepare(
        probs, eta, rho, distance_name, variance_norm, rho_floor, need_v=intra
    )
    return _group_term(mu, v if intra else None, eta_t, rho_t, group, distance_name)


def _group_term(
    mu: Tensor, v: Tensor | None, eta_t: Tensor, rho_t: Tensor, group: Any, distance_name: str
) -> Tensor:
    """Mean over groups and classes of ``D(μ_G, s²_G)``; ``v`` given: Eq. 11's spread."""
    index, counts = _group_index(group, mu.shape[0], mu.device)
    eta_g = _group_table(eta_t, "eta", index, counts)
    rho_g = _group_table(rho_t, "rho", index, counts)
    mu_g, s2_g, _ = _group_moments(mu, v, index, counts, intra=v is not None)
    return _distance(distance_name, mu_g, s2_g, eta_g, rho_g).mean()


def inter_instance_loss(
    probs: Tensor,
    eta: Any,
    rho: Any,
    group: Any,
    *,
    distance: str = DEFAULT_DISTANCE,
    rho_floor: float = RHO_MIN,
) -> Tensor:
    """Inter-instance loss: the spread of block means across a group vs ``N(η, ρ²)``.

    ``probs`` (B, L, H, W); ``eta``, ``rho`` (B, L), equal within a group; ``group`` (B,)
    integer ids, each group with ≥ 2 blocks. Per group ``μ_G = mean_k μ_k`` and
    ``s²_G = mean_k (μ_k − μ_G)²``; returns the mean of ``D(μ_G, s²_G; η, ρ)`` over groups
    and classes.
    """
    return _grouped_loss(
        probs, eta, rho, group, distance, DEFAULT_VARIANCE_NORM, rho_floor, intra=False
    )


def intra_inter_instance_loss(
    probs: Tensor,
    eta: Any,
    rho: Any,
    group: Any,
    *,
    distance: str = DEFAULT_DISTANCE,
    variance_norm: str = DEFAULT_VARIANCE_NORM,
    rho_floor: float = RHO_MIN,
) -> Tensor:
    """Intra+inter-instance loss (paper Eq. 11): as the inter loss, plus sampling variance.

    ``s²_G = mean_k v_k + mean_k μ_k² − μ_G²``; shapes as :func:`inter_instance_loss`.
    """
    return _grouped_loss(probs, eta, rho, group, distance, variance_norm, rho_floor, intra=True)


def intra_plus_inter_loss(
    probs: Tensor,
    eta: Any,
    rho: Any,
    group: Any,
    *,
    distance: str = DEFAULT_DISTANCE,
    variance_norm: str = DEFAULT_VARIANCE_NORM,
    rho_floor: float = RHO_MIN,
) -> Tensor:
    """Intra-instance loss plus inter-instance loss on the same grouped batch (not the paper's).

    ``D(μ_k, v_k)`` averaged over blocks plus ``D(μ_G, s²_G)`` averaged over groups
    (``s²_G = mean_k (μ_k − μ_G)²``, no sampling variance). Paper Eq. 11 replaces the
    per-block term by the group spread; this sum keeps it, so each block still has to meet
    the table on its own (which is what makes intra's pixels confident, with
    ``variance_norm="n"``) while the group term compares blocks of one bin. Shapes as
    :func:`inter_instance_loss`; returns a scalar.
    """
    mu, v, eta_t, rho_t = _prepare(probs, eta, rho, distance, variance_norm, rho_floor)
    assert v is not None
    _warn_kl_per_block(distance)
    per_block = _distance(distance, mu, v, eta_t, rho_t).mean()
    return per_block + _group_term(mu, None, eta_t, rho_t, group, distance)


# The losses take a keyword named ``distance``, which shadows the function inside them.
_distance = distance
