"""Sample data: a synthetic H&E slide, its low-resolution grid and its ground truth.

Generated with :mod:`lsr.synthetic` on first use (about half a minute on two cores) and
cached in the user cache folder (``platformdirs.user_cache_dir("napari-lsr")``); nothing is
downloaded. Later uses read the cached files. The cache folder is written under a temporary
name and renamed when complete, so an interrupted first use leaves no half-written sample.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

SAMPLE_VERSION = 1
SAMPLE_SEED = 0
SAMPLE_SIZE_PX = 2400  # working px per side (20 x 20 blocks of 120 px at 8.33 µm/px)
NAME = "synthetic_slide"


def cache_root() -> Path:
    """Where samples are cached (``LSR_SAMPLE_CACHE`` overrides, e.g. in tests)."""
    env = os.environ.get("LSR_SAMPLE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-lsr"))


def sample_folder(size_px: int = SAMPLE_SIZE_PX, seed: int = SAMPLE_SEED) -> Path:
    """The folder holding the sample (generated now if it is not cached yet).

    Files: ``synthetic_slide.tif`` (pyramidal RGB with its pixel size),
    ``synthetic_slide_gt.tif`` (cancer mask), ``synthetic_slide_grid.npy`` (classifier
    probability per block) with its sidecar ``synthetic_slide_grid.json`` (block geometry).
    """
    from lsr.synthetic import SyntheticConfig, write_slide

    folder = cache_root() / f"sample-v{SAMPLE_VERSION}-{size_px}px-seed{seed}"
    if (folder / "sample.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = SyntheticConfig()
    tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=folder.parent))
    try:
        record, _blocks = write_slide(cfg, seed, tmp, NAME, size_px, size_px)
        geometry = {
            "block_px": cfg.scale.block_px,
            "working_mpp": cfg.scale.working_mpp,
            "origin": [0, 0],
            "slide": record["image"],
        }
        (tmp / f"{NAME}_grid.json").write_text(json.dumps(geometry, indent=1) + "\n")
        (tmp / "sample.json").write_text(json.dumps(record, indent=1) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use theirs
            if not (folder / "sample.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def synthetic_sample() -> list[tuple]:
    """Layers of the sample: slide, ground truth, grid probabilities and bins z."""
    from napari_lsr._reader import grid_layer_data, slide_layer_data

    folder = sample_folder()
    slide = slide_layer_data(folder / f"{NAME}.tif")
    gt_data, gt_kwargs, gt_type = slide_layer_data(folder / f"{NAME}_gt.tif")
    gt_kwargs = {**gt_kwargs, "name": "ground truth (cancer)", "visible": False}
    return [slide, (gt_data, gt_kwargs, gt_type), *grid_layer_data(folder / f"{NAME}_grid.npy")]
