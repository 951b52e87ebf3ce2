"""Synthetic H&E breast tissue with pixel ground truth, rendered window by window.

A :class:`TissuePlan` holds everything decided once per slide (seeds, thresholds, stain
variation); :func:`render` turns any window of it into RGB and ground truth. Global
structure (tissue outline, tumour regions) comes from low-frequency fields, texture from
per-cell seeded noise (:mod:`lsr.synthetic_fields`), so windows tile seamlessly.

Tissue model (working resolution, sizes in µm in the config):
* stroma: eosin (pink) collagen with wavy fibre bundles, sparse small fibroblast nuclei;
* fat: lobules of white adipocytes with thin pink membranes (Worley cells);
* normal lobules: small purple acini around white lumina (benign look-alike);
* look-alikes: lymphocyte aggregates (dense, small, dark nuclei), dense cellular stroma,
  crush artefact (smeared hematoxylin, mostly near tissue edges);
* tumour (ground truth): regions with irregular edges and detached nests, infiltrating
  cords and single-file strands beyond the edge; inside, nests of large dark crowded nuclei
  with amphophilic cytoplasm, separated by desmoplastic stroma; some regions sparse.
* stain: Beer-Lambert ``RGB = background * exp(-(H h_vec + E e_vec))`` with per-slide stain
  intensity and vector jitter, section thickness variation and pixel noise.
Ground truth = tumour region ∪ cords ∪ single files (a pathologist's region annotation: the
desmoplastic stroma between nests of a tumour region counts as cancer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from lsr.synthetic_config import SyntheticConfig
from lsr.synthetic_fields import Fields, worley

# field layers (any distinct integers)
L_TISSUE, L_BED, L_EDGE, L_EDGE2, L_NEST, L_CORD, L_CBRK, L_SF, L_SFBRK = range(1, 10)
L_SPARSE, L_CELL, L_FAT, L_ADIPO, L_LYMPH, L_LOB, L_ACINI, L_CRUSH = range(10, 18)
L_WARP, L_FBRK, L_DENS, L_THICK, L_U_NUC, L_U_DARK, L_U_NOISE, L_STREAK = range(18, 26)

_HALO = 4  # px of context for the nuclear blur


@dataclass
class TissuePlan:
    """Per-slide decisions: canvas, seeds, thresholds, stain. Cheap to build, small."""

    seed: int
    height: int
    width: int
    is_patch: bool
    tissue_thr: float
    tumour_thr: float
    tumour_target: float
    fibre_angle: float
    stain_od: np.ndarray  # (2, 3): rows H and E OD vectors, scaled by the slide intensity

    @property
    def fields(self) -> Fields:
        return Fields(self.seed)


def _scaled(cfg: SyntheticConfig) -> dict[str, float]:
    """Config lengths in working px."""
    px = cfg.um_to_px
    return {
        "tissue_edge": px(cfg.slide.edge_scale_um) / 2,
        "region": px(cfg.tumour.region_scale_um) / 2,
        "edge": px(cfg.tumour.edge_scale_um) / 2,
    }


def _tissue_field(
    cfg: SyntheticConfig, f: Fields, plan_hw, y0, x0, h, w, s, stride: int = 1
) -> np.ndarray:
    """Larger inside the tissue: an ellipse with a wiggly outline (float32 (h, w))."""
    H, W = plan_hw
    ys = (y0 + stride * np.arange(h, dtype=np.float32) - H / 2) / (H / 2)
    xs = (x0 + stride * np.arange(w, dtype=np.float32) - W / 2) / (W / 2)
    r2 = ys[:, None] ** 2 + xs[None, :] ** 2
    rough = cfg.slide.edge_roughness
    if rough == 0 or s["tissue_edge"] < stride / 2:
        return 1.0 - r2
    return (1.0 - r2) + rough * f.smooth(L_TISSUE, s["tissue_edge"], y0, x0, h, w, stride)


def _bed_field(cfg: SyntheticConfig, f: Fields, y0, x0, h, w, s, stride: int = 1) -> np.ndarray:
    """Tumour-bed field: regions where it exceeds the slide's threshold are tumour."""
    a = cfg.tumour.edge_amplitude
    b = f.smooth(L_BED, s["region"], y0, x0, h, w, stride)
    # on a coarse planning grid (stride > 1) fields much finer than the grid are left out:
    # they barely move the quantiles, and their lattice would cost as much as the slide
    if a > 0 and s["edge"] >= stride / 2:
        b += a * f.smooth(L_EDGE, s["edge"], y0, x0, h, w, stride)
    if a > 0 and s["edge"] / 3 >= stride / 2:
        b += 0.45 * a * f.smooth(L_EDGE2, s["edge"] / 3, y0, x0, h, w, stride)
    return b


def make_plan(
    cfg: SyntheticConfig,
    seed: int,
    height: int,
    width: int,
    *,
    is_patch: bool = False,
) -> TissuePlan:
    """Decide a slide's thresholds (tissue share, tumour share) and stain from ``seed``.

    Thresholds are quantiles of the fields evaluated on a coarse grid of the whole canvas
    (at most ~1000² samples, so this stays cheap for any slide size).
    """
    rng = np.random.default_rng([seed, 99])
    f = Fields(seed)
    s = _scaled(cfg)
    step = max(4, int(np.ceil(max(height, width) / 1000)))
    gh, gw = -(-height // step), -(-width // step)
    lo, hi = cfg.slide.patch_tumour_fraction if is_patch else cfg.tumour.fraction
    target = float(rng.uniform(lo, hi))

    def coarse(fn) -> np.ndarray:
        """A field on the coarse grid, evaluated in bands of rows (bounded memory)."""
        out = np.empty((gh, gw), np.float32)
        for r in range(0, gh, 64):
            out[r : r + 64] = fn(r * step, 0, min(64, gh - r), gw, step)
        return out

    if is_patch:
        tissue_thr = -np.inf
        tissue = np.ones((gh, gw), bool)
    else:
        tf = coarse(
            lambda y, x, h, w, st: _tissue_field(cfg, f, (height, width), y, x, h, w, s, st)
        )
        tissue_thr = float(np.quantile(tf, 1.0 - cfg.slide.tissue_fill))
        tissue = tf > tissue_thr
    bed = coarse(lambda y, x, h, w, st: _bed_field(cfg, f, y, x, h, w, s, st))
    tumour_thr = float(np.quantile(bed[tissue], 1.0 - target)) if target > 0 else np.inf

    st = cfg.stain
    vecs = np.array([st.hematoxylin_vector, st.eosin_vector], dtype=np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    jitter = np.deg2rad(st.vector_jitter_deg)
    vecs = np.abs(vecs + rng.normal(0, jitter, size=vecs.shape))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    scale = np.exp(rng.normal(0, [st.hematoxylin_scale_sd, st.eosin_scale_sd]))
    return TissuePlan(
        seed=int(seed),
        height=int(height),
        width=int(width),
        is_patch=is_patch,
        tissue_thr=tissue_thr,
        tumour_thr=tumour_thr,
        tumour_target=target,
        fibre_angle=float(rng.uniform(0, np.pi)),
        stain_od=(vecs * scale[:, None]).astype(np.float32),
    )


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Row and column range (ya, yb, xa, xb) holding all True pixels, or None."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _blobs(
    f: Fields, layer: int, cell_px: float, prob: float, radius_px: float, y0, x0, h, w
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Soft discs (1 inside, 0 outside) of a sparse point process: float32 (h, w) and the
    window-relative boxes (ya, yb, xa, xb) of the discs that touch the window."""
    py, px, attrs = f.points(layer, cell_px, y0, x0, h, w, n_attrs=2)
    keep = attrs[:, 0] < prob
    out = np.zeros((h, w), dtype=np.float32)
    boxes = []
    for y, x, a in zip(py[keep], px[keep], attrs[keep, 1], strict=True):
        r = radius_px * (0.6 + 0.8 * a)
        ya, yb = max(int(y - 1.5 * r) - y0, 0), min(int(y + 1.5 * r) + 2 - y0, h)
        xa, xb = max(int(x - 1.5 * r) - x0, 0), min(int(x + 1.5 * r) + 2 - x0, w)
        if ya >= yb or xa >= xb:
            continue
        ys = np.arange(y0 + ya, y0 + yb, dtype=np.float32)[:, None]
        xs = np.arange(x0 + xa, x0 + xb, dtype=np.float32)[None, :]
        d = np.sqrt((ys - y) ** 2 + (xs - x) ** 2) / r
        sub = out[ya:yb, xa:xb]
        np.maximum(sub, np.clip((1.0 - d) / 0.15 + 0.5, 0, 1), out=sub)
        boxes.append((ya, yb, xa, xb))
    return out, boxes


def render(
    cfg: SyntheticConfig, plan: TissuePlan, y0: int, x0: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (h, w, 3) and ground truth bool (h, w) for the window at (y0, x0).

    Pixels outside the canvas are rendered too (the fields are defined everywhere); the
    result does not depend on how a slide is cut into windows.
    """
    Y0, X0, Hh, Ww = y0 - _HALO, x0 - _HALO, h + 2 * _HALO, w + 2 * _HALO
    f = plan.fields
    s = _scaled(cfg)
    px = cfg.um_to_px
    tu, so, la = cfg.tumour, cfg.stroma, cfg.lookalike
    win = (Y0, X0, Hh, Ww)

    # ---- global structure
    if plan.is_patch:
        tissue = np.ones((Hh, Ww), bool)
        edge_prox = np.zeros((Hh, Ww), np.float32)
    else:
        tf = _tissue_field(cfg, f, (plan.height, plan.width), *win, s)
        tissue = tf > plan.tissue_thr
        edge_prox = np.clip(1.0 - (tf - plan.tissue_thr) / 0.15, 0, 1)  # 1 at the edge
    bed = _bed_field(cfg, f, *win, s)
    region = (bed > plan.tumour_thr) & tissue
    # infiltration reach beyond the edge, in field units (~ gradient of the bed field)
    reach = px(tu.infiltration_depth_um) / (1.2 * s["region"])
    zone_c = bed > plan.tumour_thr - reach * tu.cords
    zone_s = bed > plan.tumour_thr - reach * tu.single_file
    cords = np.zeros((Hh, Ww), bool)
    if tu.cords > 0 and zone_c.any():
        sc = px(tu.cord_scale_um) / 2
        hw_units = 0.45 * px(tu.cord_width_um) / sc
        cords = (np.abs(f.smooth(L_CORD, sc, *win)) < hw_units) & zone_c
        cords &= f.smooth(L_CBRK, sc * 0.7, *win) > -0.2
    files = np.zeros((Hh, Ww), bool)
    if tu.single_file > 0 and zone_s.any():
        ss = px(tu.single_file_scale_um) / 2
        hw_units = 0.45 * max(px(11.0), 0.6) / ss
        files = (np.abs(f.smooth(L_SF, ss, *win)) < hw_units) & zone_s
        files &= f.smooth(L_SFBRK, ss * 0.4, *win) > 0.0
    gt = (region | cords | files) & tissue

    # ---- tumour cellularity
    nest = f.smooth(L_NEST, px(tu.nest_scale_um) / 2, *win)
    c = tu.nest_contrast
    occ = _sigmoid(4.0 * c * (nest + 0.3) + 3.0 * (1.0 - min(c, 1.0)))
    sparse_thr = float(ndtri(1.0 - tu.sparse_share)) if 0 < tu.sparse_share < 1 else np.inf
    if tu.sparse_share >= 1:
        sparse_thr = -np.inf
    sparse = f.smooth(L_SPARSE, s["region"] / 2, *win) > sparse_thr
    dens_mul = np.where(sparse, np.float32(tu.sparse_density), np.float32(1.0))
    epi = np.where(region, occ * dens_mul, 0.0).astype(np.float32)
    epi = np.maximum(epi, 0.8 * cords)
    epi = np.maximum(epi, 0.7 * files)  # single file: one row of cells
    epi *= tissue

    # ---- non-cancer compartments
    free = tissue & ~gt
    fat_thr = float(ndtri(1.0 - so.fat_share)) if 0 < so.fat_share < 1 else np.inf
    fat_zone = (f.smooth(L_FAT, px(so.fat_scale_um) / 2, *win) > fat_thr) & free
    fat_zone &= bed < plan.tumour_thr - 0.15
    fat_px = np.zeros((Hh, Ww), np.float32)
    membrane = np.zeros((Hh, Ww), np.float32)
    if (bb := _bbox(fat_zone)) is not None:
        ya, yb, xa, xb = bb
        f1, f2 = worley(f, L_ADIPO, px(so.adipocyte_um), Y0 + ya, X0 + xa, yb - ya, xb - xa)
        wall = np.clip(1.0 - (f2 - f1) / 1.4, 0, 1)
        fz = fat_zone[ya:yb, xa:xb]
        fat_px[ya:yb, xa:xb] = fz * (1.0 - wall)
        membrane[ya:yb, xa:xb] = fz * wall
    cell_thr = (
        float(ndtri(1.0 - la.cellular_stroma_share)) if la.cellular_stroma_share > 0 else np.inf
    )
    cellular = (f.smooth(L_CELL, px(500.0) / 2, *win) > cell_thr) & free
    cell_area = (px(10_000.0)) ** 2  # px per cm²
    lymph_cell = px(2500.0)
    lymph, _ = _blobs(
        f, L_LYMPH, lymph_cell, la.lymphoid_per_cm2 * lymph_cell**2 / cell_area,
        px(la.lymphoid_radius_um), *win,
    )  # fmt: skip
    lymph *= free
    lob_cell = px(1800.0)
    lobule, lob_boxes = _blobs(
        f, L_LOB, lob_cell, so.lobules_per_cm2 * lob_cell**2 / cell_area,
        px(so.lobule_radius_um), *win,
    )  # fmt: skip
    lobule *= free * (1.0 - lymph)
    acinus_epi = np.zeros((Hh, Ww), np.float32)
    lumen = np.zeros((Hh, Ww), np.float32)
    for ya, yb, xa, xb in lob_boxes:
        a_cell = px(70.0)
        a1, _ = worley(f, L_ACINI, a_cell, Y0 + ya, X0 + xa, yb - ya, xb - xa)
        rel = a1 / a_cell
        lob = lobule[ya:yb, xa:xb]
        lum = lob * np.clip((0.18 - rel) / 0.06, 0, 1)
        np.maximum(lumen[ya:yb, xa:xb], lum, out=lumen[ya:yb, xa:xb])
        epi_a = lob * np.clip((0.42 - rel) / 0.08, 0, 1) * (1 - lum)
        np.maximum(acinus_epi[ya:yb, xa:xb], epi_a, out=acinus_epi[ya:yb, xa:xb])
    # crush: mostly within ~0.3 mm of the tissue edge, where handling squeezes the tissue
    crush_thr = float(ndtri(1.0 - la.crush_share / 2)) if la.crush_share > 0 else np.inf
    crush_f = f.smooth(L_CRUSH, px(300.0) / 2, *win) + 1.5 * edge_prox
    crush = np.clip((crush_f - crush_thr) / 0.3, 0, 1) * tissue

    # ---- nuclei: expected OD·area per pixel, sampled with one uniform per pixel
    area = cfg.per_mm2_to_per_px
    r_t, r_s, r_l = px(tu.nuclear_radius_um), px(so.nuclear_radius_um), px(la.lymphocyte_radius_um)
    lam_t = area(tu.nuclear_density_per_mm2) * (epi + 0.6 * acinus_epi)
    stroma_share = tissue * (1.0 - epi) * (1.0 - fat_px) * (1.0 - lymph) * (1.0 - lumen)
    s_mul = 1.0 + (la.cellular_stroma_factor - 1.0) * cellular
    lam_s = area(so.nuclear_density_per_mm2) * stroma_share * s_mul
    lam_l = area(la.lymphocyte_density_per_mm2) * lymph
    w_t = tu.nuclear_od * np.pi * r_t**2
    w_s = so.nuclear_od * np.pi * r_s**2 * np.where(cellular, 1.3, 1.0)
    w_l = la.lymphocyte_od * np.pi * r_l**2
    w_a = 0.8 * so.nuclear_od * np.pi * r_t**2  # benign acinar nuclei: paler than tumour
    lam_a = area(tu.nuclear_density_per_mm2) * 0.6 * acinus_epi
    lam_t = lam_t - lam_a
    lam = lam_t + lam_s + lam_l + lam_a
    wsum = lam_t * w_t + lam_s * w_s + lam_l * w_l + lam_a * w_a
    u = f.white(L_U_NUC, Y0, X0, Hh, Ww)
    count = np.floor(lam + u)
    mean_w = np.divide(wsum, lam, out=np.zeros_like(wsum), where=lam > 1e-9)
    dark = 0.65 + 0.7 * f.white(L_U_DARK, Y0, X0, Hh, Ww)
    amount = (count * mean_w * dark).astype(np.float32)
    sigma = max(0.7, 0.6 * r_t)
    hnuc = ndimage.gaussian_filter(amount, sigma, truncate=3.0) / np.float32(np.pi * sigma**2)
    hnuc = 2.2 * (1.0 - np.exp(-hnuc / 2.2))  # optical saturation of dense chromatin

    # ---- collagen fibres: stripes along the level sets of a warped linear potential
    lam_f = px(so.fibre_wavelength_um)
    ys = np.arange(Y0, Y0 + Hh, dtype=np.float32)[:, None]
    xs = np.arange(X0, X0 + Ww, dtype=np.float32)[None, :]
    pot = xs * np.cos(plan.fibre_angle) + ys * np.sin(plan.fibre_angle)
    pot = pot + lam_f * 3.0 * f.smooth(L_WARP, px(400.0) / 2, *win)
    fib = 0.5 + 0.5 * np.sin(2 * np.pi * pot / lam_f)
    # break the bundles into short, wavy fibre segments
    fib *= np.clip(0.35 + 0.8 * f.smooth(L_FBRK, max(px(25.0), 1.2), *win), 0, 1.0)
    cfc = so.fibre_contrast
    collagen = so.eosin_od * (1.0 - cfc * 0.6 + cfc * 0.9 * fib)
    collagen *= 0.85 + 0.2 * f.smooth(L_DENS, px(500.0) / 2, *win)

    # ---- stain concentrations
    E = (
        collagen * stroma_share * (1.0 - 0.3 * lobule)
        + epi * tu.cytoplasm_eosin_od
        + acinus_epi * tu.cytoplasm_eosin_od * 0.8
        + membrane * so.eosin_od * 0.9
        + lymph * 0.12
    )
    E = E * tissue
    Hc = hnuc + tissue * (epi * tu.cytoplasm_hematoxylin_od + lymph * 0.15 + 0.015 * stroma_share)
    if crush.any():
        streak = np.clip(0.5 + 0.5 * f.smooth(L_STREAK, max(px(20.0), 1.2), *win), 0, 1)
        Hc = Hc + crush * la.crush_od * (0.5 + 0.5 * streak)
        E = E * (1.0 - 0.4 * crush)
    thick = 1.0 + cfg.stain.thickness_variation * f.smooth(L_THICK, px(2000.0) / 2, *win)
    Hc = Hc * thick
    E = E * thick
    noise = cfg.stain.pixel_noise_od * (f.white(L_U_NOISE, Y0, X0, Hh, Ww) - 0.5) * 3.46
    od_h, od_e = plan.stain_od
    sl = (slice(_HALO, _HALO + h), slice(_HALO, _HALO + w))
    Hc, E, noise, tis = Hc[sl], E[sl], noise[sl], tissue[sl]
    bg = np.asarray(cfg.stain.background_rgb, dtype=np.float32)
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    for ch in range(3):
        od = Hc * od_h[ch] + E * od_e[ch] + noise * (0.3 + 0.7 * tis)
        v = bg[ch] * np.exp(-od)
        np.clip(v, 0, 255, out=v)
        rgb[..., ch] = v.astype(np.uint8)
    return rgb, gt[sl]
