"""Tests for lsr.losses against an independent NumPy implementation, finite differences and
hypothesis properties (METHOD.md is the spec)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.errors import LsrInputError
from lsr.losses import (
    DISTANCES,
    KL_S2_EPS,
    RHO_MIN,
    LossWarning,
    block_stats,
    distance,
    group_stats,
    inter_instance_loss,
    intra_instance_loss,
    intra_inter_instance_loss,
    intra_plus_inter_loss,
)

LOSSES = ("intra", "inter", "intra+inter", "sum")
HSET = settings(max_examples=25, deadline=None)

# ---------------------------------------------------------------------------------------------
# Independent NumPy reference (float64, loops, METHOD.md formulas written out literally)


def np_distance(name, mu, s2, eta, rho):
    d = eta - mu
    if name == "gaussian-nll":
        return d**2 / (2 * (s2 + rho**2)) + 0.5 * np.log(2 * np.pi * (s2 + rho**2))
    if name == "lsr-interval":
        return max(abs(d) - rho, 0.0) ** 2 / (s2 + rho**2 + 1e-6) + np.log(s2 + 0.03)
    if name == "paper-printed":
        return 0.5 * s2 * d**2 / (rho**2 + s2) ** 2 + 0.5 * np.log(s2 + 0.03)
    if name == "kl":
        s2 = max(s2, KL_S2_EPS)
        return np.log(rho / np.sqrt(s2)) + (s2 + d**2) / (2 * rho**2) - 0.5
    raise AssertionError(name)


def np_loss(kind, probs, eta, rho, group, dist, norm="n2", floor=RHO_MIN):
    if kind == "sum":  # intra's per-block term plus the inter term, each averaged on its own
        intra = np_loss("intra", probs, eta, rho, group, dist, norm, floor)
        return intra + np_loss("inter", probs, eta, rho, group, dist, norm, floor)
    probs = np.asarray(probs, dtype=np.float64)
    b, n_cls, h, w = probs.shape
    n = h * w
    rho = np.maximum(np.asarray(rho, dtype=np.float64), floor)
    eta = np.asarray(eta, dtype=np.float64)
    mu = np.zeros((b, n_cls))
    v = np.zeros((b, n_cls))
    for k in range(b):
        for c in range(n_cls):
            p = probs[k, c].ravel()
            mu[k, c] = p.sum() / n
            v[k, c] = (p * (1 - p)).sum() / (n * n if norm == "n2" else n)
    values = []
    if kind == "intra":
        for k in range(b):
            for c in range(n_cls):
                values.append(np_distance(dist, mu[k, c], v[k, c], eta[k, c], rho[k, c]))
        return float(np.mean(values))
    for gid in np.unique(group):
        members = [k for k in range(b) if group[k] == gid]
        for c in range(n_cls):
            m = np.array([mu[k, c] for k in members])
            mu_g = m.mean()
            if kind == "inter":
                s2 = np.mean((m - mu_g) ** 2)
            else:  # paper Eq. 11, literally
                s2 = np.mean([v[k, c] for k in members]) + np.mean(m**2) - mu_g**2
            k0 = members[0]
            values.append(np_distance(dist, mu_g, s2, eta[k0, c], rho[k0, c]))
    return float(np.mean(values))


def run_loss(kind, probs, eta, rho, group, dist, norm="n2", **kw):
    if kind == "intra":
        return intra_instance_loss(probs, eta, rho, distance=dist, variance_norm=norm, **kw)
    if kind == "inter":
        return inter_instance_loss(probs, eta, rho, group, distance=dist, **kw)
    if kind == "sum":
        return intra_plus_inter_loss(
            probs, eta, rho, group, distance=dist, variance_norm=norm, **kw
        )
    return intra_inter_instance_loss(
        probs, eta, rho, group, distance=dist, variance_norm=norm, **kw
    )


def make_batch(rng, group, n_cls=2, h=4, w=3, extremes=True):
    """Random softmax probabilities and per-group (eta, rho) tables as NumPy float64."""
    group = np.asarray(group)
    b = len(group)
    logits = rng.normal(0, 2, size=(b, n_cls, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if extremes:  # some pixels exactly 0 / 1
        probs[0, :, 0, 0] = 0.0
        probs[0, 0, 0, 0] = 1.0
    ids = np.unique(group)
    eta_g = rng.dirichlet(np.ones(n_cls), size=len(ids))
    rho_g = rng.uniform(0.005, 0.2, size=(len(ids), n_cls))
    pos = np.searchsorted(ids, group)
    return probs, eta_g[pos], rho_g[pos]


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LossWarning)
        return fn(*args, **kw)


GROUP = np.array([7, -2, 7, 3, -2, 3, 7])  # arbitrary, non-contiguous ids


# ---------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("norm", ["n2", "n"])
def test_block_stats_match_numpy(norm):
    rng = np.random.default_rng(1)
    probs, _, _ = make_batch(rng, GROUP, n_cls=3, h=5, w=2)
    mu, v = block_stats(torch.from_numpy(probs), norm)
    n = 10
    bern = (probs * (1 - probs)).reshape(len(GROUP), 3, -1).sum(-1)
    np.testing.assert_allclose(mu.numpy(), probs.reshape(len(GROUP), 3, -1).mean(-1), rtol=1e-12)
    np.testing.assert_allclose(v.numpy(), bern / (n * n if norm == "n2" else n), rtol=1e-12)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dist", DISTANCES)
@pytest.mark.parametrize("norm", ["n2", "n"])
def test_loss_values_match_numpy(kind, dist, norm):
    if kind == "inter" and norm == "n":
        pytest.skip("the inter loss has no sampling variance")
    rng = np.random.default_rng(abs(hash((kind, dist, norm))) % 2**32)
    probs, eta, rho = make_batch(rng, GROUP, n_cls=3)
    got = quiet(run_loss, kind, torch.from_numpy(probs), eta, rho, GROUP, dist, norm)
    assert got.dtype == torch.float64 and got.ndim == 0
    want = np_loss(kind, probs, eta, rho, GROUP, dist, norm)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dist", DISTANCES)
def test_float32_close_to_float64(kind, dist):
    rng = np.random.default_rng(3)
    probs, eta, rho = make_batch(rng, GROUP, h=16, w=16)
    got = quiet(run_loss, kind, torch.from_numpy(probs).float(), eta, rho, GROUP, dist)
    assert got.dtype == torch.float32
    want = np_loss(kind, probs, eta, rho, GROUP, dist)
    assert got.item() == pytest.approx(want, rel=2e-4, abs=2e-4)


def test_half_precision_input_is_computed_in_float32():
    """n² = 57 600² overflows float16; the stats must still be right for a 240×240 block."""
    rng = np.random.default_rng(4)
    p = rng.uniform(0.2, 0.8, size=(2, 1, 240, 240))
    probs = np.concatenate([p, 1 - p], axis=1)
    mu, v = block_stats(torch.from_numpy(probs).half())
    assert mu.dtype == torch.float32
    want_v = (probs * (1 - probs)).reshape(2, 2, -1).sum(-1) / 57600**2
    np.testing.assert_allclose(v.numpy(), want_v, rtol=1e-2)


def test_distance_function_matches_numpy_elementwise():
    rng = np.random.default_rng(5)
    mu, eta = rng.uniform(0, 1, (2, 50))
    s2 = rng.uniform(0, 0.05, 50)
    rho = rng.uniform(1e-3, 0.2, 50)
    for name in DISTANCES:
        got = distance(name, *(torch.from_numpy(x) for x in (mu, s2, eta, rho)))
        assert got.shape == (50,)
        want = [np_distance(name, *args) for args in zip(mu, s2, eta, rho, strict=True)]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dist", DISTANCES)
def test_gradients_match_finite_differences(kind, dist):
    rng = np.random.default_rng(6)
    group = np.array([0, 1, 0, 1])
    _, eta, rho = make_batch(rng, group)
    logits = torch.tensor(rng.normal(0, 1, size=(4, 2, 2, 3)), requires_grad=True)

    def f(z):
        return quiet(run_loss, kind, torch.softmax(z, 1), eta, rho, group, dist)

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dist", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probabilities_exactly_zero_and_one_give_finite_values_and_grads(kind, dist, dtype):
    # Every pixel 0 or 1, and two identical blocks per group: s² = 0 and v = 0 everywhere.
    cancer = torch.zeros(4, 1, 4, 4, dtype=dtype)
    cancer[:, :, :2] = 1.0
    probs = torch.cat([cancer, 1 - cancer], 1).requires_grad_()
    eta = [[0.5, 0.5], [0.5, 0.5], [0.02, 0.98], [0.02, 0.98]]
    rho = [[0.1, 0.1]] * 2 + [[0.0, 0.0]] * 2
    loss = quiet(run_loss, kind, probs, eta, rho, [0, 0, 1, 1], dist)
    (grad,) = torch.autograd.grad(loss, probs)
    assert loss.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# ρ floor and warnings


@pytest.mark.parametrize("kind", LOSSES)
def test_rho_zero_warns_once_and_is_floored(kind):
    rng = np.random.default_rng(7)
    probs, eta, rho = make_batch(rng, GROUP)
    rho[GROUP == 3] = 0.0
    with pytest.warns(LossWarning, match=r"ρ below 0\.001") as record:
        got = run_loss(kind, torch.from_numpy(probs), eta, rho, GROUP, "gaussian-nll")
    assert len([w for w in record if "ρ below" in str(w.message)]) == 1
    assert "(3, 0)" in str(record[0].message)  # block 3 is in group 3: names the entry
    assert torch.isfinite(got)
    want = np_loss(kind, probs, eta, np.maximum(rho, RHO_MIN), GROUP, "gaussian-nll")
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_higher_rho_floor_raises_small_rho_silently():
    rng = np.random.default_rng(8)
    probs, eta, _ = make_batch(rng, GROUP)
    rho = np.full_like(eta, 0.004)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = intra_inter_instance_loss(torch.from_numpy(probs), eta, rho, GROUP, rho_floor=0.02)
    want = np_loss("intra+inter", probs, eta, rho, GROUP, "gaussian-nll", floor=0.02)
    assert got.item() == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="rho_floor"):
        intra_instance_loss(torch.from_numpy(probs), eta, rho, rho_floor=0.0)


def test_kl_warns_in_losses_with_a_per_block_term_only():
    rng = np.random.default_rng(9)
    probs, eta, rho = make_batch(rng, GROUP)
    probs = torch.from_numpy(probs)
    with pytest.warns(LossWarning, match="kl"):
        intra_instance_loss(probs, eta, rho, distance="kl")
    with pytest.warns(LossWarning, match="kl"):
        intra_plus_inter_loss(probs, eta, rho, GROUP, distance="kl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inter_instance_loss(probs, eta, rho, GROUP, distance="kl")
        intra_inter_instance_loss(probs, eta, rho, GROUP, distance="kl")


# ---------------------------------------------------------------------------------------------
# Errors


def test_group_of_one_block_is_rejected():
    rng = np.random.default_rng(10)
    probs, eta, rho = make_batch(rng, [0, 0, 5])
    for fn in (inter_instance_loss, intra_inter_instance_loss):
        with pytest.raises(ValueError, match=r"group\(s\) \[5\].*fewer than 2"):
            fn(torch.from_numpy(probs), eta, rho, [0, 0, 5])


@pytest.mark.parametrize("which", ["eta", "rho"])
def test_table_values_must_agree_within_a_group(which):
    rng = np.random.default_rng(11)
    probs, eta, rho = make_batch(rng, GROUP)
    table = {"eta": eta, "rho": rho}
    table[which][2, 0] += 0.01  # block 2 is in group 7 with blocks 0 and 6
    with pytest.raises(ValueError, match=f"{which} differs.*blocks \\[.*2"):
        inter_instance_loss(torch.from_numpy(probs), eta, rho, GROUP)


def test_unknown_names_list_the_valid_ones():
    probs = torch.full((2, 2, 2, 2), 0.5)
    eta = rho = [[0.5, 0.5]] * 2
    with pytest.raises(LsrInputError, match="'gaussian-nll', 'lsr-interval', 'paper-printed'"):
        intra_instance_loss(probs, eta, rho, distance="gauss")
    with pytest.raises(ValueError, match="'n2', 'n'"):
        intra_inter_instance_loss(probs, eta, rho, [0, 0], variance_norm="n^2")
    with pytest.raises(ValueError, match="valid choices"):
        distance("l2", *(torch.zeros(1),) * 4)


@pytest.mark.parametrize("where", ["probs", "eta", "rho"])
def test_nan_is_rejected(where):
    probs = torch.full((2, 2, 2, 2), 0.5)
    eta = torch.full((2, 2), 0.5)
    rho = torch.full((2, 2), 0.1)
    {"probs": probs, "eta": eta, "rho": rho}[where].view(-1)[3] = float("nan")
    for kind in LOSSES:
        with pytest.raises(ValueError, match=f"{where}.*NaN"):
            run_loss(kind, probs, eta, rho, [1, 1], "gaussian-nll")


def test_bad_shapes_and_group_ids_are_rejected():
    probs = torch.full((2, 2, 2, 2), 0.5)
    eta = rho = torch.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r"\(B, L, H, W\)"):
        intra_instance_loss(probs[0], eta, rho)
    with pytest.raises(ValueError, match="eta must have shape"):
        intra_instance_loss(probs, eta[:1], rho)
    with pytest.raises(ValueError, match="group must have shape"):
        inter_instance_loss(probs, eta, rho, [0, 0, 0])
    with pytest.raises(ValueError, match="integers"):
        inter_instance_loss(probs, eta, rho, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"rho.*>= 0"):
        intra_instance_loss(probs, eta, -rho)


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def batches(draw, min_groups=1):
    """(probs, eta, rho, group) with 1–3 groups of 2–4 blocks, small blocks, numpy float64."""
    sizes = draw(st.lists(st.integers(2, 4), min_size=min_groups, max_size=3))
    ids = draw(st.lists(st.integers(-50, 50), min_size=len(sizes), max_size=3, unique=True))
    group = np.repeat(ids[: len(sizes)], sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    group = rng.permutation(group)
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    probs, eta, rho = make_batch(rng, group, h=h, w=w, extremes=draw(st.booleans()))
    rho = rho * draw(st.sampled_from([0.0, 0.01, 1.0]))  # include ρ = 0 and tiny ρ
    return probs, eta, rho, group


@HSET
@given(batch=batches(), kind=st.sampled_from(LOSSES), norm=st.sampled_from(["n2", "n"]))
def test_gaussian_nll_is_bounded_below(batch, kind, norm):
    """D ≥ ½ log(2π(s² + ρ²)) ≥ ½ log(2π ρ_floor²): the d² term and s² are never negative."""
    probs, eta, rho, group = batch
    loss = quiet(run_loss, kind, torch.from_numpy(probs), eta, rho, group, "gaussian-nll", norm)
    terms = 2 if kind == "sum" else 1  # the sum adds two such means
    assert loss.item() >= terms * 0.5 * math.log(2 * math.pi * RHO_MIN**2) - 1e-12
    # tighter: the mean of ½ log(2π ρ²) over the (floored) table entries that are used
    bound = np.mean(0.5 * np.log(2 * np.pi * np.maximum(rho, RHO_MIN) ** 2))
    if kind == "intra":
        assert loss.item() >= bound - 1e-12


@HSET
@given(
    batch=batches(),
    shift=st.floats(-0.3, 0.3).filter(lambda x: abs(x) > 1e-4),
    dist=st.sampled_from(DISTANCES),
)
def test_minimum_over_the_mean_is_at_eta(batch, shift, dist):
    """Blockwise-constant probabilities: adding δ to every block keeps s² and moves μ_G by δ."""
    _, eta, rho, group = batch
    rng = np.random.default_rng(abs(int(1e6 * shift)))
    rho = np.maximum(rho, 0.01)
    # per-block fraction of class 0 centred on η with a small spread; class 1 = 1 − class 0
    eta0 = np.clip(eta[:, 0], 0.35, 0.65)
    eta = np.stack([eta0, 1 - eta0], 1)
    dev = rng.uniform(-0.02, 0.02, size=len(group))
    for gid in np.unique(group):  # zero mean deviation within each group: μ_G = η exactly
        dev[group == gid] -= dev[group == gid].mean()

    def loss_at(delta):
        p0 = (eta0 + dev + delta)[:, None, None, None] * np.ones((1, 1, 2, 2))
        probs = torch.from_numpy(np.concatenate([p0, 1 - p0], 1))
        return inter_instance_loss(probs, eta, rho, group, distance=dist).item()

    at_eta, away = loss_at(0.0), loss_at(shift)
    if dist in ("gaussian-nll", "kl"):  # strict minimum
        assert away > at_eta
    else:  # lsr-interval is flat inside η ± ρ; paper-printed is flat when s² = 0
        assert away >= at_eta - 1e-12


@HSET
@given(
    mu=st.floats(0, 1),
    eta=st.floats(0, 1),
    s2=st.floats(0, 0.25),
    rho=st.floats(RHO_MIN, 0.3),
    dist=st.sampled_from(DISTANCES),
)
def test_distance_is_minimal_at_mu_equals_eta(mu, eta, s2, rho, dist):
    t = torch.tensor
    at = distance(dist, t(eta, dtype=torch.float64), t(s2), t(eta), t(rho)).item()
    away = distance(dist, t(mu, dtype=torch.float64), t(s2), t(eta), t(rho)).item()
    assert away >= at - 1e-12


@HSET
@given(batch=batches(), kind=st.sampled_from(LOSSES), dist=st.sampled_from(DISTANCES))
def test_permutation_invariance(batch, kind, dist):
    """Reordering blocks, relabelling groups and shuffling pixels in a block changes nothing."""
    probs, eta, rho, group = batch
    rng = np.random.default_rng(len(group))
    perm = rng.permutation(len(group))
    pix = rng.permutation(probs.shape[2] * probs.shape[3])
    shuffled = probs.reshape(*probs.shape[:2], -1)[..., pix].reshape(probs.shape)[perm]
    new_ids = {g: 1000 - 3 * i for i, g in enumerate(np.unique(group))}
    group2 = np.array([new_ids[g] for g in group[perm]])
    a = quiet(run_loss, kind, torch.from_numpy(probs), eta, rho, group, dist)
    b = quiet(run_loss, kind, torch.from_numpy(shuffled), eta[perm], rho[perm], group2, dist)
    assert b.item() == pytest.approx(a.item(), rel=1e-9, abs=1e-12)


@HSET
@given(batch=batches(), norm=st.sampled_from(["n2", "n"]))
def test_intra_inter_spread_is_at_least_the_inter_spread(batch, norm):
    probs, _, _, group = batch
    probs = torch.from_numpy(probs)
    mu_a, s2_inter, index = group_stats(probs, group, variance_norm=norm)
    mu_b, s2_both, _ = group_stats(probs, group, variance_norm=norm, intra=True)
    assert torch.equal(mu_a, mu_b)
    assert (s2_inter >= 0).all()
    assert (s2_both >= s2_inter).all()
    # and the difference is exactly the mean sampling variance of the group (Eq. 11)
    _, v = block_stats(probs, norm)
    for g in range(mu_a.shape[0]):
        torch.testing.assert_close(s2_both[g] - s2_inter[g], v[index == g].mean(0))


# ---------------------------------------------------------------------------------------------
# Why paper-printed is for reproduction only


def two_class(logits):
    """softmax over logits (l, 0), written as a sigmoid (softmax over dim 1 is slow on a busy
    CPU for tiny tensors)."""
    p = torch.sigmoid(logits)
    return torch.cat([p, 1 - p], 1)


def test_paper_printed_collapses_where_gaussian_nll_finds_eta():
    """Gradient descent on logits: paper-printed drives the group spread to 0 with the mean
    left far from η (its minimum, ½ log 0.03, does not depend on η); gaussian-nll moves the
    mean to η."""
    n_blocks, eta0, rho0 = 6, 0.1, 0.1
    eta = torch.tensor([[eta0, 1 - eta0]] * n_blocks, dtype=torch.float64)
    rho = torch.full((n_blocks, 2), rho0, dtype=torch.float64)
    group = torch.zeros(n_blocks, dtype=torch.long)
    end = {}
    for dist in ("paper-printed", "gaussian-nll"):
        gen = torch.Generator().manual_seed(0)
        logits = 0.01 * torch.randn(n_blocks, 1, 2, 2, generator=gen, dtype=torch.float64)
        logits.requires_grad_()
        for _ in range(400):
            probs = two_class(logits)
            loss = inter_instance_loss(probs, eta, rho, group, distance=dist)
            (grad,) = torch.autograd.grad(loss, logits)
            with torch.no_grad():
                logits -= 0.2 * grad
        probs = two_class(logits)
        mu_g, s2_g, _ = group_stats(probs.detach(), group)
        end[dist] = (mu_g[0, 0].item(), s2_g[0, 0].item(), loss.item())
    mu_pp, s2_pp, loss_pp = end["paper-printed"]
    assert s2_pp < 1e-12
    assert abs(mu_pp - eta0) > 0.3  # started at 0.5 and stayed there
    assert loss_pp == pytest.approx(0.5 * math.log(0.03), abs=1e-9)  # its global minimum
    mu_nll, _, _ = end["gaussian-nll"]
    assert abs(mu_nll - eta0) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", LOSSES)
def test_cuda_matches_cpu(kind):
    rng = np.random.default_rng(12)
    probs, eta, rho = make_batch(rng, GROUP)
    cpu = run_loss(kind, torch.from_numpy(probs), eta, rho, GROUP, "gaussian-nll")
    gpu = run_loss(
        kind, torch.from_numpy(probs).cuda(), eta, rho, torch.tensor(GROUP).cuda(), "gaussian-nll"
    )
    assert gpu.device.type == "cuda"
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-10)
