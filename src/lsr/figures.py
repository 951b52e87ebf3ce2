"""Figures like the paper's: boundaries on H&E (Fig. 4), the evaluation band (Fig. 3).

Matplotlib with the Agg backend only (no display, no Qt). Colours come from
:data:`lsr.geojson.FIG4_COLOURS` so that figures, the viewer and the QuPath export agree:
green low-resolution model, red ground truth, blue intra+inter, cyan intra.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from os import PathLike

import numpy as np

from lsr.atomic import atomic_path
from lsr.geojson import FIG4_COLOURS
from lsr.metrics import boundary_band

#: Legend text of each boundary, in drawing order (ground truth last, on top).
LABELS = {
    "low_res": "low-resolution model",
    "intra": "intra-instance",
    "inter": "inter-instance",
    "intra_inter": "intra+inter-instance",
    "intra_plus_inter": "intra + inter (sum)",
    "ground_truth": "ground truth",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def colour(name: str) -> tuple[float, float, float]:
    """Matplotlib colour (0-1 RGB) of a boundary; unknown names get a neutral grey."""
    r, g, b = FIG4_COLOURS.get(name, (200, 200, 200))
    return (r / 255, g / 255, b / 255)


#: Footnote font: 9 pt, about 0.075 in per character; 0.18 in per line.
NOTE_IN_PER_CHAR, NOTE_IN_PER_LINE = 0.075, 0.18


def missing_boundaries(labelled: Mapping[str, Sequence[np.ndarray]], width_in: float) -> list[str]:
    """Lines of a footnote naming the boundaries no panel can show: a boolean (H, W) cancer
    mask that is all cancer (or none) in every panel, e.g. a failed run's all-cancer map, has
    no 0.5 contour, and the reader is told why instead of looking for its line. ``labelled``:
    legend label → that boundary's masks, one per panel; ``width_in``: figure width (inches)
    the lines must fit. [] when every boundary has a line somewhere."""
    parts = []
    for label, masks in labelled.items():
        if masks and all(np.all(m) for m in masks):
            parts.append(f"{label}: all cancer")
        elif masks and not any(np.any(m) for m in masks):
            parts.append(f"{label}: no cancer")
    if not parts:
        return []
    text = "No boundary to draw (same class everywhere shown): " + "; ".join(parts) + "."
    return textwrap.wrap(
        text, width=max(30, int(width_in / NOTE_IN_PER_CHAR)), break_on_hyphens=False
    )


def footnote(fig, lines: Sequence[str], height_in: float) -> None:
    """Write ``lines`` centred at the bottom of ``fig`` (``note_height(lines)`` inches)."""
    if lines:
        fig.text(0.5, 0.04 / height_in, "\n".join(lines), ha="center", va="bottom",
                 fontsize=9, color="0.2")  # fmt: skip


def note_height(lines: Sequence[str]) -> float:
    """Inches a footnote of ``lines`` needs (0 for none)."""
    return NOTE_IN_PER_LINE * len(lines) + 0.08 if lines else 0.0


def _scale_bar(ax, width_px: int, px_per_mm: float) -> None:
    """A 1 mm (or 0.5 mm on small patches) black-and-white bar, bottom left."""
    mm = 1.0 if width_px >= 3 * px_per_mm else 0.5
    length = mm * px_per_mm
    h = ax.get_ylim()[0]
    y = h - 0.05 * h
    x0 = 0.04 * width_px
    ax.plot([x0, x0 + length], [y, y], color="black", linewidth=5, solid_capstyle="butt")
    ax.plot([x0, x0 + length], [y, y], color="white", linewidth=2.5, solid_capstyle="butt")
    ax.text(x0 + length / 2, y - 0.02 * h, f"{mm:g} mm", ha="center", va="bottom",
            color="black", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "linewidth": 0})  # fmt: skip


def draw_boundaries(
    ax,
    rgb: np.ndarray,
    masks: Mapping[str, np.ndarray],
    linewidth=1.6,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
) -> None:
    """Show ``rgb`` (H, W, 3) uint8 with the 0.5-contour of each boolean (H, W) mask.

    ``colours``: optional 0-255 RGB per name for boundaries beyond :data:`FIG4_COLOURS`.
    """
    ax.imshow(rgb, interpolation="nearest")
    order = [k for k in LABELS if k in masks] + [k for k in masks if k not in LABELS]
    for name in order:
        m = np.asarray(masks[name], dtype=np.float32)
        if m.min() == m.max():
            continue  # no boundary inside this patch
        rgb_c = colour(name)
        if colours and name in colours:
            rgb_c = tuple(v / 255 for v in colours[name])
        ax.contour(m, levels=[0.5], colors=[rgb_c], linewidths=linewidth)
    ax.set_xticks([])
    ax.set_yticks([])


def fig4(
    path: str | PathLike[str],
    patches: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]],
    *,
    px_per_mm: float,
    titles: Sequence[str] | None = None,
    ncols: int = 3,
) -> None:
    """Write a Fig. 4-like PNG: several patches, each with its boundaries and a scale bar.

    ``patches``: list of (rgb (H, W, 3) uint8, {boundary name: bool (H, W)}); names as in
    :data:`LABELS`. One legend for the whole figure. Written atomically.
    """
    plt = _pyplot()
    n = len(patches)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    names: list[str] = []
    for _, masks in patches:
        names += [k for k in masks if k not in names]
    names = [k for k in LABELS if k in names] + [k for k in names if k not in LABELS]
    width_in, panels_in = 4.0 * ncols, 4.0 * nrows + 0.6
    note = missing_boundaries(
        {LABELS.get(k, k): [m[k] for _, m in patches if k in m] for k in names}, width_in
    )
    note_in, rows = note_height(note), _legend_rows(names, width_in)
    height_in = panels_in + note_in + 0.3 * (rows - 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in, height_in), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        rgb, masks = patches[i]
        draw_boundaries(ax, rgb, masks)
        _scale_bar(ax, rgb.shape[1], px_per_mm)
        if titles:
            ax.set_title(titles[i], fontsize=9)
    footnote(fig, note, height_in)
    _legend(fig, names, rows, bottom=note_in / height_in)
    legend_in = (0.06 if nrows == 1 else 0.04) * panels_in * rows
    fig.tight_layout(rect=(0, (legend_in + note_in) / height_in, 1, 1))
    _save(fig, path)
    plt.close(fig)


def _legend_rows(names: Sequence[str], width_in: float) -> int:
    """Rows the legend needs to fit ``width_in``: one entry is about 0.75 in of line and
    padding plus 0.085 in per character at 10 pt."""
    need = sum(0.75 + 0.085 * len(LABELS.get(k, k)) for k in names)
    return 1 if need <= width_in else 2


def _legend(fig, names: Sequence[str], rows: int, bottom: float = 0.0) -> None:
    """The Fig. 4 legend in ``rows`` rows, centred above ``bottom`` (figure fraction)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=colour(k), linewidth=2.5) for k in names]
    fig.legend(handles, [LABELS.get(k, k) for k in names], loc="lower center",
               bbox_to_anchor=(0.5, bottom), ncol=int(np.ceil(len(names) / rows)),
               frameon=False, fontsize=10)  # fmt: skip


def fig3(
    path: str | PathLike[str],
    rgb: np.ndarray,
    gt: np.ndarray,
    *,
    band: float,
    px_per_mm: float,
) -> None:
    """Write a Fig. 3-like PNG: the ground-truth boundary and, in green, the band of
    pixels within ``band`` px of it where masked IoU/DICE are computed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.9))
    draw_boundaries(axes[0], rgb, {"ground_truth": gt})
    axes[0].set_title("ground truth (red)", fontsize=10)
    m = boundary_band(gt, band)
    shown = np.zeros((*gt.shape, 3), dtype=np.uint8)
    shown[m] = (60, 180, 75)
    shown[~m] = (235, 235, 235)
    draw_boundaries(axes[1], shown, {"ground_truth": gt})
    axes[1].set_title(f"evaluation band: within {band:g} px ({band / px_per_mm:.2g} mm)",
                      fontsize=10)  # fmt: skip
    for ax in axes:
        _scale_bar(ax, rgb.shape[1], px_per_mm)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


#: Start of the "Software" text of every PNG saved here (matplotlib's own is "Matplotlib ..."),
#: so an export can tell a figure of lsr's from the user's before replacing it.
PNG_SOFTWARE = "napari-lsr"


def _save(fig, path: str | PathLike[str]) -> None:
    from lsr import __version__

    with atomic_path(path) as tmp:
        meta = {"Software": f"{PNG_SOFTWARE} {__version__}"}
        fig.savefig(tmp, dpi=110, format="png", metadata=meta)
