"""Synthetic H&E benchmark: slides, ground truth, classifier grids, count tables.

The public API the demo, the tests and ``lsr synth`` use:

* :func:`generate_slide` — one slide (or test patch) in memory: RGB, ground truth, block
  probabilities of the simulated classifier, true cancer fraction per block;
* :func:`generate_patch` — ``(rgb, gt, block_probs)`` of a test patch;
* :func:`slide_arrays` — lazy dask arrays of a slide of any size (bounded memory);
* :func:`write_slide` — a slide straight to a pyramidal TIFF + ground truth + grid, tile by
  tile (for slides too large for memory);
* :func:`generate_dataset` — a whole benchmark folder with a manifest (``lsr synth``);
* :func:`calibrate_classifier` — fit the classifier's weights and noise to a target DICE.

All sizes are working-resolution pixels; block ``(r, c)`` covers
``[r*block_px, (r+1)*block_px) × [c*block_px, (c+1)*block_px)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lsr.atomic import atomic_write_text, temp_target
from lsr.counttable import bin_probabilities
from lsr.errors import LsrInputError
from lsr.slide import PYRAMID_STAGE_PREFIX
from lsr.synthetic_classifier import (
    block_dice,
    block_features,
    cell_sums,
    cells_per_block,
    classify,
    fit_weights,
)
from lsr.synthetic_config import MANIFEST, MANIFEST_FORMAT, SyntheticConfig, load_config
from lsr.synthetic_expert import expert_table, table_error, true_table
from lsr.synthetic_tissue import TissuePlan, make_plan, render

__all__ = [
    "SyntheticConfig",
    "SyntheticSlide",
    "calibrate_classifier",
    "generate_dataset",
    "generate_patch",
    "generate_slide",
    "load_config",
    "slide_arrays",
    "write_slide",
]

#: A block with less tissue than this gets no classifier label (NaN, like background).
MIN_LABEL_TISSUE = 0.2

#: Written first and removed after the manifest: a folder holding it is a data set whose
#: writing was interrupted (or is still going on).
UNFINISHED = "synth_unfinished.json"
#: Names of the files lsr synth writes, at the top of the folder and in ``train/``, ``test/``.
#: Only these (and the atomic writers' temporary files of them) are ever deleted.
_OURS = {
    "": re.compile(r"manifest\.json|synth_unfinished\.json|table_(expert|true)\.(json|csv)"),
    "train": re.compile(r"slide_\d{3,}(\.tif|_gt\.tif|_grid\.npy|_grid\.json)"),
    "test": re.compile(r"patch_\d{3,}(\.tif|_gt\.tif|_grid\.npy|_grid\.json)"),
}


#: Files the operating system's file browser leaves in any folder: not "in the way".
_OS_CLUTTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass
class SyntheticSlide:
    """One generated slide or patch, in memory (working resolution).

    ``rgb`` (H, W, 3) uint8; ``gt`` (H, W) bool cancer; ``probs`` (rows, cols) classifier
    cancer probability (NaN = block with too little tissue); ``cancer_fraction`` and
    ``tissue_fraction`` (rows, cols) true shares per block; ``features`` (4, rows, cols).
    """

    seed: int
    rgb: np.ndarray
    gt: np.ndarray
    probs: np.ndarray
    cancer_fraction: np.ndarray
    tissue_fraction: np.ndarray
    features: np.ndarray
    plan: TissuePlan
    cells: np.ndarray  # (4, ny, nx) classifier cell sums (lsr.synthetic_classifier.cell_sums)

    @property
    def z(self) -> np.ndarray:
        """(rows, cols) bins 0..9, -1 where unlabelled."""
        z = np.full(self.probs.shape, -1, np.int64)
        ok = np.isfinite(self.probs)
        z[ok] = bin_probabilities(self.probs[ok])
        return z


def _whole_blocks(n: int, block: int) -> int:
    return max(block, -(-n // block) * block)


def _block_sums(a: np.ndarray, block: int) -> np.ndarray:
    h, w = a.shape[0] // block, a.shape[1] // block
    return (
        a[: h * block, : w * block].reshape(h, block, w, block).sum(axis=(1, 3), dtype=np.float64)
    )


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue = not near-white (what the classifier and the expert see as tissue)."""
    return rgb.mean(axis=2, dtype=np.float32) < 215.0


def _finish(
    cfg: SyntheticConfig,
    seed: int,
    plan: TissuePlan,
    low: np.ndarray,
    cancer: np.ndarray,
    tissue: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    feats = block_features(low, cfg)
    probs = classify(feats, cfg.classifier, seed)
    probs = np.where(tissue >= MIN_LABEL_TISSUE, probs, np.nan).astype(np.float32)
    return feats, probs


def generate_slide(
    cfg: SyntheticConfig,
    seed: int,
    height: int | None = None,
    width: int | None = None,
    *,
    is_patch: bool = False,
) -> SyntheticSlide:
    """Generate a slide (or a test patch, ``is_patch``: all tissue, a boundary inside) in memory.

    Sizes default to the config's slide (or patch) size and are rounded up to whole blocks.
    Deterministic for ``seed``.
    """
    b = cfg.scale.block_px
    if height is None:
        height = cfg.slide.patch_px if is_patch else cfg.slide.height_px
    if width is None:
        width = cfg.slide.patch_px if is_patch else cfg.slide.width_px
    height, width = _whole_blocks(height, b), _whole_blocks(width, b)
    plan = make_plan(cfg, seed, height, width, is_patch=is_patch)
    rgb, gt = render(cfg, plan, 0, 0, height, width)
    tissue = _tissue_mask(rgb)
    n = float(b * b)
    cancer = _block_sums(gt, b) / n
    tis = _block_sums(tissue, b) / n
    cells = cell_sums(rgb, cfg)
    feats, probs = _finish(cfg, seed, plan, cells, cancer, tis)
    return SyntheticSlide(seed, rgb, gt, probs, cancer, tis, feats, plan, cells)


def generate_patch(
    cfg: SyntheticConfig, seed: int, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A test patch: ``(rgb (H, W, 3) uint8, gt (H, W) bool, block_probs (rows, cols))``.

    Default size ``cfg.slide.patch_px`` (600 at 120-px blocks = 5×5 blocks; 1200 at paper
    scale); the tumour covers a share drawn from ``slide.patch_tumour_fraction``.
    """
    s = generate_slide(cfg, seed, size, size, is_patch=True)
    return s.rgb, s.gt, s.probs


def _tile_origins(n: int, tile: int) -> list[int]:
    return list(range(0, n, tile))


def slide_arrays(cfg: SyntheticConfig, seed: int, height: int, width: int):
    """Lazy dask arrays ``(rgb (H, W, 3) uint8, gt (H, W) bool)`` of a slide, chunked by tile.

    Each chunk is rendered on demand from the plan, so a slide of any size is generated in
    memory bounded by a few tiles. Sizes are rounded up to whole blocks.
    """
    import dask.array as da

    b = cfg.scale.block_px
    height, width = _whole_blocks(height, b), _whole_blocks(width, b)
    plan = make_plan(cfg, seed, height, width)
    tile = max(b, (cfg.slide.tile_px // b) * b)
    chunks = (tuple(min(tile, height - y) for y in _tile_origins(height, tile)),
              tuple(min(tile, width - x) for x in _tile_origins(width, tile)))  # fmt: skip

    def rgb_block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
        return render(cfg, plan, y0, x0, y1 - y0, x1 - x0)[0]

    def gt_block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
        return render(cfg, plan, y0, x0, y1 - y0, x1 - x0)[1]

    rgb = da.map_blocks(
        rgb_block, dtype=np.uint8, chunks=(*chunks, (3,)), meta=np.empty((0, 0, 0), np.uint8)
    )
    gt = da.map_blocks(gt_block, dtype=bool, chunks=chunks, meta=np.empty((0, 0), bool))
    return rgb, gt


def write_slide(
    cfg: SyntheticConfig,
    seed: int,
    out_dir: str | os.PathLike[str],
    name: str,
    height: int | None = None,
    width: int | None = None,
    *,
    is_patch: bool = False,
    in_memory_limit_px: int = 16_000_000,
) -> tuple[dict, dict]:
    """Write a slide as ``<name>.tif`` (pyramidal RGB), ``<name>_gt.tif`` and ``<name>_grid.npy``.

    Slides up to ``in_memory_limit_px`` pixels are rendered in one piece; larger ones tile by
    tile (rendered twice: once for the TIFFs, once for the classifier), in bounded memory.
    Returns (file record for the manifest, block data: z, cancer and tissue fractions, probs).
    """
    from lsr.grid import BlockGrid, save_grid, write_grid_sidecar
    from lsr.slide import write_pyramidal_tiff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b, mpp = cfg.scale.block_px, cfg.scale.working_mpp
    comp = None if cfg.slide.compression == "none" else cfg.slide.compression
    if height is None:
        height = cfg.slide.patch_px if is_patch else cfg.slide.height_px
    if width is None:
        width = cfg.slide.patch_px if is_patch else cfg.slide.width_px
    height, width = _whole_blocks(height, b), _whole_blocks(width, b)
    tile_tiff = 256
    if height * width <= in_memory_limit_px or is_patch:
        s = generate_slide(cfg, seed, height, width, is_patch=is_patch)
        write_pyramidal_tiff(
            out / f"{name}.tif", s.rgb, mpp=mpp, tile=tile_tiff, compression=comp or "none"
        )
        write_pyramidal_tiff(
            out / f"{name}_gt.tif", s.gt, mpp=mpp, tile=tile_tiff, compression="zlib"
        )
        probs, cancer, tis, plan = s.probs, s.cancer_fraction, s.tissue_fraction, s.plan
    else:
        plan, probs, cancer, tis = _write_tiled(cfg, seed, out, name, height, width, tile_tiff)
    save_grid(BlockGrid(probs, b), out / f"{name}_grid.npy")
    write_grid_sidecar(out / f"{name}_grid.npy", b, mpp)
    z = np.full(probs.shape, -1, np.int64)
    ok = np.isfinite(probs)
    z[ok] = bin_probabilities(probs[ok])
    record = {
        "name": name,
        "seed": int(seed),
        "image": f"{name}.tif",
        "ground_truth": f"{name}_gt.tif",
        "grid": f"{name}_grid.npy",
        "shape": [int(height), int(width)],
        "blocks": [int(probs.shape[0]), int(probs.shape[1])],
        "cancer_share": float(cancer.mean()),
        "tumour_target": plan.tumour_target,
        "block_dice": block_dice(probs[ok], cancer[ok], cfg.classifier.block_truth_fraction),
    }
    return record, {"z": z, "cancer": cancer, "tissue": tis, "probs": probs}


def _write_tiled(
    cfg: SyntheticConfig, seed: int, out: Path, name: str, height: int, width: int, tile_tiff: int
) -> tuple[TissuePlan, np.ndarray, np.ndarray, np.ndarray]:
    """Write a large slide in one rendering pass over its tiles, in bounded memory.

    While the RGB pyramid is written (the writer pulls dask chunks band by band), each
    rendered tile leaves behind its ground truth bit-packed (1/24 of the RGB bytes), its
    classifier view (1/16) and its per-block sums; the ground-truth TIFF and the classifier
    are then built from those. Returns (plan, probs, cancer fraction, tissue fraction).
    """
    import dask.array as da

    from lsr.slide import write_pyramidal_tiff

    b, mpp = cfg.scale.block_px, cfg.scale.working_mpp
    comp = "none" if cfg.slide.compression == "none" else cfg.slide.compression
    plan = make_plan(cfg, seed, height, width)
    tile = max(b, (cfg.slide.tile_px // b) * b)
    # a TIFF tile that divides the chunk, so the writer's bands never recompute chunks
    tile_tiff = next((t for t in range(512, 15, -16) if tile % t == 0), tile_tiff)
    chunks = (tuple(min(tile, height - y) for y in _tile_origins(height, tile)),
              tuple(min(tile, width - x) for x in _tile_origins(width, tile)))  # fmt: skip
    cpx = b // cells_per_block(cfg)  # working px per classifier cell
    cells = np.zeros((4, height // cpx, width // cpx))
    cancer = np.zeros((height // b, width // b))
    tis = np.zeros_like(cancer)
    gt_bits: dict[tuple[int, int], np.ndarray] = {}

    def rgb_block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
        trgb, tgt = render(cfg, plan, y0, x0, y1 - y0, x1 - x0)
        gt_bits[(y0, x0)] = np.packbits(tgt)
        cells[:, y0 // cpx : y1 // cpx, x0 // cpx : x1 // cpx] = cell_sums(trgb, cfg)
        cancer[y0 // b : y1 // b, x0 // b : x1 // b] = _block_sums(tgt, b) / (b * b)
        tis[y0 // b : y1 // b, x0 // b : x1 // b] = _block_sums(_tissue_mask(trgb), b) / (b * b)
        return trgb

    def gt_block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][:2]
        n = (y1 - y0) * (x1 - x0)
        return np.unpackbits(gt_bits[(y0, x0)], count=n).reshape(y1 - y0, x1 - x0).astype(bool)

    rgb = da.map_blocks(
        rgb_block, dtype=np.uint8, chunks=(*chunks, (3,)), meta=np.empty((0, 0, 0), np.uint8)
    )
    write_pyramidal_tiff(out / f"{name}.tif", rgb, mpp=mpp, tile=tile_tiff, compression=comp)
    gt = da.map_blocks(gt_block, dtype=bool, chunks=chunks, meta=np.empty((0, 0), bool))
    write_pyramidal_tiff(out / f"{name}_gt.tif", gt, mpp=mpp, tile=tile_tiff, compression="zlib")
    _, probs = _finish(cfg, seed, plan, cells, cancer, tis)
    return plan, probs, cancer, tis


def _synth_json(path: Path, unfinished: bool) -> bool:
    """Whether ``path`` is a manifest (or, ``unfinished``, the marker) lsr synth wrote."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("format") == MANIFEST_FORMAT
        and bool(data.get("unfinished")) == unfinished
    )


def dataset_state(out_dir: str | os.PathLike[str]) -> str | None:
    """``"unfinished"`` or ``"complete"`` when ``out_dir`` holds a data set lsr synth wrote
    (recognised by its marker or its manifest), else None."""
    out = Path(out_dir)
    if _synth_json(out / UNFINISHED, unfinished=True):
        return "unfinished"
    if _synth_json(out / MANIFEST, unfinished=False):
        return "complete"
    return None


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool = False) -> str | None:
    """Refuse an output folder :func:`generate_dataset` may not write to; returns
    :func:`dataset_state` (None: new or empty).

    Why: the data set's file names (``table_expert.csv``, ``train/slide_000.tif``) could be
    the user's, and a rerun into an earlier data set would leave its extra slides behind, so
    only a missing or empty folder, or an earlier data set with ``overwrite``, is written to.
    """
    out = Path(out_dir)
    if not out.exists():
        return None
    if not out.is_dir():
        raise LsrInputError("is a file, not a folder; the output must be a folder", out)
    entries = sorted(p.name for p in out.iterdir() if p.name not in _OS_CLUTTER)
    if not entries:
        return None
    state = dataset_state(out)
    if state is None:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} in all)" * (len(entries) > 5))
        raise LsrInputError(
            f"is not empty and holds no lsr synth data set (no manifest.json of lsr synth); "
            f"in the way: {shown}. Choose a new or empty output folder"
            + (" (--overwrite replaces only a data set of lsr synth)" if overwrite else ""),
            out,
        )
    if not overwrite:
        what = {
            "complete": "an lsr synth data set",
            "unfinished": f"an unfinished lsr synth data set ({UNFINISHED}: interrupted)",
        }
        raise LsrInputError(
            f"holds {what[state]}; replace it with --overwrite or choose another output folder",
            out,
        )
    return state


def _is_ours(name: str, kind: str) -> bool:
    """``name`` is a file lsr synth writes in ``kind`` ("", "train", "test"), or a temporary
    file of one left by a killed atomic write (``.<stem>.tmp-<hex><suffix>``)."""
    return bool(_OURS[kind].fullmatch(temp_target(name) or name))


def _remove_dataset(out: Path) -> None:
    """Delete the files of the data set in ``out``, the manifest first (so a crash half-way
    leaves no manifest beside a partial set); files lsr synth did not write are kept."""
    (out / MANIFEST).unlink(missing_ok=True)
    for kind in ("train", "test", ""):
        folder = out / kind
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.name != UNFINISHED and _is_ours(f.name, kind) and not f.is_dir():
                f.unlink()
            elif kind and f.is_dir() and f.name.startswith(PYRAMID_STAGE_PREFIX):
                shutil.rmtree(f, ignore_errors=True)  # a killed TIFF write's staging folder
        if kind:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing of anyone else's is deleted


def _derive_seed(seed: int, kind: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, kind, i]).generate_state(1)[0])


def _exit_with_parent(parent: int, poll_s: float = 0.25) -> None:
    """A pool worker's initializer: end the worker when ``parent`` (the pool's process,
    which passes its id) has died. POSIX only (Windows' ``os.kill`` would end it).

    Why: killed by SIGTERM or SIGKILL (``kill``, a scheduler's time limit, the OOM killer),
    the main process leaves its ProcessPoolExecutor workers to init; they went on writing
    slides into the folder, then waited for work forever, holding their memory. A daemon
    thread looks every ``poll_s`` seconds (by the id: under the forkserver start method the
    worker's parent is the fork server, not the pool's process).
    """
    import threading
    import time

    if os.name != "posix":
        return

    def alive() -> bool:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # (alive, someone else's: the id was reused)
            return True
        return True

    def watch() -> None:
        while alive():
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="lsr-exit-with-parent", daemon=True).start()


def _write_job(args: tuple) -> tuple[dict, dict]:
    cfg, seed, out_dir, name, is_patch = args
    return write_slide(cfg, seed, out_dir, name, is_patch=is_patch)


def generate_dataset(
    cfg: SyntheticConfig,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    n_slides: int | None = None,
    n_test_patches: int | None = None,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a benchmark: training slides, test patches, expert and true tables, manifest.

    Layout of ``out_dir``: ``train/slide_NNN{.tif,_gt.tif,_grid.npy}``,
    ``test/patch_NNN{...}``, ``table_expert.{json,csv}``, ``table_true.{json,csv}``,
    ``manifest.json``. The expert samples blocks of the training slides only. ``workers``
    processes generate slides in parallel (default: all CPUs, at most 4). ``progress(stage,
    done, total)`` is called after each slide. Returns the manifest dict.

    ``out_dir`` must be missing, empty or (with ``overwrite``) hold an earlier data set of
    lsr synth, whose files are deleted first (files it did not write are kept); see
    :func:`check_out_dir`. ``synth_unfinished.json`` is written first and removed after the
    manifest, which is written last: a folder with the marker or without a manifest is not
    a finished data set.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    n_slides = cfg.slide.n_slides if n_slides is None else int(n_slides)
    n_test = cfg.slide.n_test_patches if n_test_patches is None else int(n_test_patches)
    if n_slides < 1 or n_test < 0:
        raise LsrInputError(
            f"need at least 1 training slide (the expert's table is built from them) and "
            f"0 or more test patches, got n_slides={n_slides} and n_test_patches={n_test}"
        )
    state = check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    marker = {"format": MANIFEST_FORMAT, "unfinished": True, "seed": int(seed),
              "note": "lsr synth is writing this data set or was interrupted; its files are "
                      "incomplete: rerun lsr synth with --overwrite"}  # fmt: skip
    atomic_write_text(out / UNFINISHED, json.dumps(marker, indent=2) + "\n")
    if state is not None:
        _remove_dataset(out)
    jobs = [
        (cfg, _derive_seed(seed, 1, i), out / "train", f"slide_{i:03d}", False)
        for i in range(n_slides)
    ]
    jobs += [
        (cfg, _derive_seed(seed, 2, i), out / "test", f"patch_{i:03d}", True) for i in range(n_test)
    ]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    results: list[tuple[dict, dict]] = []
    if workers == 1:
        for i, job in enumerate(jobs):
            results.append(_write_job(job))
            if progress:
                progress("slides", i + 1, len(jobs))
    else:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            for i, res in enumerate(pool.map(_write_job, jobs)):
                results.append(res)
                if progress:
                    progress("slides", i + 1, len(jobs))
    train, test = results[:n_slides], results[n_slides:]

    def pooled(res: list[tuple[dict, dict]]) -> dict[str, np.ndarray]:
        keys = ("z", "cancer", "tissue", "probs")
        if not res:
            return {k: np.zeros(0) for k in keys}
        return {k: np.concatenate([r[1][k].ravel() for r in res]) for k in keys}

    tr = pooled(train)
    ok = (tr["z"] >= 0) & (tr["tissue"] >= cfg.expert.min_tissue)
    ids = [
        f"{rec['name']}:{r},{c}" for rec, data in train for (r, c) in np.ndindex(data["z"].shape)
    ]
    ids = [i for i, keep in zip(ids, ok, strict=True) if keep]
    expert = expert_table(tr["z"][ok], tr["cancer"][ok], cfg.expert, seed, block_ids=ids)
    truth = true_table(tr["z"][ok], tr["cancer"][ok])
    expert.to_json(out / "table_expert.json")
    expert.to_csv(out / "table_expert.csv")
    truth.to_json(out / "table_true.json")
    truth.to_csv(out / "table_true.csv")
    lab = tr["z"] >= 0
    te = pooled(test)
    te_lab = te["z"] >= 0
    thr = cfg.classifier.block_truth_fraction
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "seed": int(seed),
        "config": cfg.to_dict(),
        "working_mpp": cfg.scale.working_mpp,
        "block_px": cfg.scale.block_px,
        "band_px": cfg.band_px,
        "train": [r[0] for r in train],
        "test": [r[0] for r in test],
        "classifier": {
            "block_dice_train": block_dice(tr["probs"][lab], tr["cancer"][lab], thr)
            if n_slides
            else None,
            "block_dice_test": block_dice(te["probs"][te_lab], te["cancer"][te_lab], thr)
            if n_test
            else None,
            "block_truth_fraction": thr,
            "n_blocks_train": int(lab.sum()),
        },
        "tables": {
            "expert": "table_expert.json",
            "true": "table_true.json",
            "expert_error": table_error(expert, truth),
            "n_estimates": int(expert.n.sum()) if expert.n is not None else None,
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    (out / UNFINISHED).unlink()
    return manifest


def calibrate_classifier(
    cfg: SyntheticConfig,
    seeds: list[int] | range = range(12),
    target_dice: float = 0.73,
    overconfidence: float = 2.0,
    context_range: tuple[float, float] = (1.0, 4.0),
) -> tuple[SyntheticConfig, dict]:
    """Choose the classifier's context width and fit its weights to a target block DICE.

    For a context width (blocks), the weights are the maximum-likelihood logistic fit of
    block truth on the image features of the slides of ``seeds``, multiplied by
    ``overconfidence`` (deep classifiers are over-confident: probabilities pile up near 0
    and 1, which also fills the top bins as in the paper); the config's ``logit_noise_sd`` is
    kept. A wider context blurs the classifier's view, so the DICE falls: the width is found
    by bisection in ``context_range`` so that the block-level DICE (averaged over noise
    draws) is ``target_dice``. The errors therefore come from the image — look-alikes,
    sparse tumour, context — not from noise. Returns the new config and a report dict; the
    default config's numbers came from here.
    """
    lows, fracs, oks = [], [], []
    for s in seeds:
        sl = generate_slide(cfg, int(s))
        lows.append(sl.cells)
        oks.append(sl.tissue_fraction >= MIN_LABEL_TISSUE)
        fracs.append(sl.cancer_fraction[oks[-1]])
    c = np.concatenate(fracs)
    truth = c >= cfg.classifier.block_truth_fraction

    def fit(context: float) -> tuple[SyntheticConfig, float, float, np.ndarray]:
        cc = replace(cfg.classifier, context_blocks=float(context))
        trial = replace(cfg, classifier=cc)
        f = np.concatenate(
            [block_features(lo, trial)[:, ok] for lo, ok in zip(lows, oks, strict=True)], axis=1
        )
        w, b0 = fit_weights(f, truth)
        cc = replace(
            cc, weights=tuple(float(v) * overconfidence for v in w), bias=b0 * overconfidence
        )
        dice = [block_dice(classify(f, cc, 1000 + k), c, cc.block_truth_fraction) for k in range(8)]
        return replace(cfg, classifier=cc), float(np.mean(dice)), b0, f

    lo, hi = context_range
    best, d_lo, _, _ = fit(lo)
    if d_lo > target_dice:
        for _ in range(10):
            mid = 0.5 * (lo + hi)
            _, d, _, _ = fit(mid)
            if d > target_dice:
                lo = mid
            else:
                hi = mid
        best, _, _, _ = fit(round(0.5 * (lo + hi), 3))
    cc = best.classifier
    cc = replace(cc, weights=tuple(round(v, 3) for v in cc.weights), bias=round(cc.bias, 3))
    new = replace(cfg, classifier=cc)
    _, dice, _, _ = fit(cc.context_blocks)
    report = {
        "context_blocks": cc.context_blocks,
        "weights": list(cc.weights),
        "bias": cc.bias,
        "logit_noise_sd": cc.logit_noise_sd,
        "dice": dice,
        "dice_at_narrowest_context": d_lo,
        "n_blocks": int(c.size),
        "positive_share": float(truth.mean()),
    }
    return new, report
