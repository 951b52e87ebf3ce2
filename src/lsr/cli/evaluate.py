"""``lsr evaluate``: masked and unmasked IoU / DICE of predicted masks against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from lsr.atomic import atomic_write_text
from lsr.errors import LsrInputError

_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its mask files (sorted by name)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in _SUFFIXES)
        elif not p.exists():
            raise LsrInputError("file not found", p)
        else:
            out.append(p)
    return out


def read_mask(path: Path) -> np.ndarray:
    """A 2-D boolean mask from .npy, .png or a (pyramidal) TIFF: nonzero / >= 0.5 is cancer.

    Float maps are probabilities (cancer where >= 0.5); integer maps are masks (nonzero).
    Only the full-resolution level of a pyramid is read.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(path, level=0) if _is_pyramid(path) else tifffile.imread(path)
        elif suffix == ".png":
            from skimage import io

            a = io.imread(path)
        else:
            raise LsrInputError(f"unknown mask format '{suffix}'; use .tif, .png or .npy", path)
    except LsrInputError:
        raise
    except Exception as err:
        raise LsrInputError(f"cannot read mask: {err}", path) from err
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., 0]
    a = np.squeeze(a)
    if a.ndim != 2:
        raise LsrInputError(f"a mask must be 2-D, got shape {a.shape}", path)
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise LsrInputError("mask contains NaN", path)
        return a >= 0.5
    return a > 0


def _is_pyramid(path: Path) -> bool:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return len(tf.series) > 0 and len(tf.series[0].levels) > 1


def _pair(preds: list[Path], gts: list[Path], by: str) -> list[tuple[Path, Path]]:
    if by == "order":
        if len(preds) != len(gts):
            raise LsrInputError(f"{len(preds)} predictions but {len(gts)} ground-truth masks")
        return list(zip(preds, gts, strict=True))

    def key(p: Path) -> str:
        stem = p.name.split(".")[0]
        for tag in ("_gt", "_mask", "_pred", "_prediction", "_prob"):
            stem = stem.removesuffix(tag)
        return stem

    gmap = {key(g): g for g in gts}
    pairs = []
    for p in preds:
        if key(p) not in gmap:
            raise LsrInputError(f"no ground truth named like '{key(p)}'", p)
        pairs.append((p, gmap[key(p)]))
    return pairs


def evaluate(
    pred: list[Path] = typer.Option(..., "--pred", "-p", help="predicted masks (files or folder)"),
    gt: list[Path] = typer.Option(..., "--gt", "-g", help="ground-truth masks (files or folder)"),
    band: int = typer.Option(240, "--band", "-b", help="band around the boundary, working px"),
    pair_by: str = typer.Option("name", "--pair-by", help="'name' (strip _gt/_pred) or 'order'"),
    json_out: Path | None = typer.Option(None, "--json", help="write the scores as JSON here"),
) -> None:
    """Masked (within BAND px of the true boundary) and unmasked IoU / DICE, paper Table 2."""
    from lsr.metrics import pooled_scores

    if pair_by not in ("name", "order"):
        raise LsrInputError(f"--pair-by must be 'name' or 'order', got {pair_by!r}")
    pairs = _pair(_expand(list(pred)), _expand(list(gt)), pair_by)
    if not pairs:
        raise LsrInputError("no masks to evaluate")
    preds, gts = [], []
    for p, g in pairs:
        pm, gm = read_mask(p), read_mask(g)
        if pm.shape != gm.shape:
            raise LsrInputError(f"shape {pm.shape} differs from ground truth {g} {gm.shape}", p)
        preds.append(pm)
        gts.append(gm)
    scores = pooled_scores(preds, gts, band=band)
    for row, (p, g) in zip(scores["per_patch"], pairs, strict=True):
        row["pred"], row["gt"] = str(p), str(g)
    table = Table(
        title=f"{len(pairs)} patches, band {band} px ({scores['n_with_boundary']} with a boundary)"
    )
    for col in ("score", "pooled", "per-patch mean ± std"):
        table.add_column(col, justify="right")

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    for key, label in (("masked_iou", "masked IoU"), ("masked_dice", "masked DICE"),
                       ("iou", "IoU"), ("dice", "DICE")):  # fmt: skip
        table.add_row(
            label, f(scores[key]), f"{f(scores[key + '_mean'])} ± {f(scores[key + '_std'])}"
        )
    Console().print(table)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(scores, indent=2))
        Console().print(f"scores written to {json_out}")
