"""Sample data: a synthetic H&E slide, its low-resolution grid and its ground truth.

The sample is made by :mod:`lsr.synthetic` and shipped with the plugin (``sample/``, about
3 MB), so opening it only reads files: generating it takes half a minute on two cores, far
more than napari's event loop may block (sample functions run on the main thread). Nothing is
downloaded. ``make sample`` (``python -m napari_lsr._sample_data``) regenerates the shipped
files when the generator changes; ``tests/test_reader.py`` fails while the shipped sample was
made with other generator defaults than the current ones. Other sizes or seeds, or an install
without the shipped files, are generated once and cached in the user cache folder
(``platformdirs.user_cache_dir("napari-lsr")``; ``LSR_SAMPLE_CACHE`` overrides). Every folder
is written under a temporary name and renamed when complete, so an interrupted run leaves no
half-written sample.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

SAMPLE_VERSION = 1
SAMPLE_SEED = 0
SAMPLE_SIZE_PX = 2400  # working px per side (20 x 20 blocks of 120 px at 8.33 µm/px)
NAME = "synthetic_slide"
SHIPPED = Path(__file__).parent / "sample"
FILES = (
    "sample.json",
    f"{NAME}.tif",
    f"{NAME}_gt.tif",
    f"{NAME}_grid.npy",
    f"{NAME}_grid.json",
)


def cache_root() -> Path:
    """Where samples other than the shipped one are cached (``LSR_SAMPLE_CACHE`` overrides)."""
    env = os.environ.get("LSR_SAMPLE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-lsr"))


def generator_fingerprint() -> str:
    """SHA-256 of the synthetic generator's default config (what the sample was made with)."""
    from lsr.synthetic import SyntheticConfig

    text = json.dumps(SyntheticConfig().to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds every file of a sample."""
    return all((folder / name).is_file() for name in FILES)


def build_sample(folder: Path, size_px: int = SAMPLE_SIZE_PX, seed: int = SAMPLE_SEED) -> Path:
    """Generate a sample into ``folder`` (replaced if it exists) and return it.

    Files: ``synthetic_slide.tif`` (pyramidal RGB with its pixel size),
    ``synthetic_slide_gt.tif`` (cancer mask), ``synthetic_slide_grid.npy`` (classifier
    probability per block, shape (size_px / block_px,) * 2) with its sidecar
    ``synthetic_slide_grid.json`` (block geometry) and ``sample.json`` (what made it).
    """
    from lsr import __version__
    from lsr.atomic import make_temp_dir
    from lsr.synthetic import SyntheticConfig, write_slide

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = SyntheticConfig()
    tmp = make_temp_dir(".sample-", folder.parent)
    old = folder.with_name(f".{folder.name}-old")
    try:
        record, _blocks = write_slide(cfg, seed, tmp, NAME, size_px, size_px)
        geometry = {
            "block_px": cfg.scale.block_px,
            "working_mpp": cfg.scale.working_mpp,
            "origin": [0, 0],
            "slide": record["image"],
        }
        record = {
            **record,
            "sample_version": SAMPLE_VERSION,
            "size_px": size_px,
            "lsr_version": __version__,
            "generator_sha256": generator_fingerprint(),
        }
        (tmp / f"{NAME}_grid.json").write_text(json.dumps(geometry, indent=1) + "\n")
        (tmp / "sample.json").write_text(json.dumps(record, indent=1) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)  # shipped and cached files are readable whatever the umask
        tmp.chmod(0o755)
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use theirs
            if not is_complete(folder):
                if old.exists() and not folder.exists():
                    old.rename(folder)  # put the previous sample back
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def sample_folder(size_px: int = SAMPLE_SIZE_PX, seed: int = SAMPLE_SEED) -> Path:
    """The folder holding the sample: the shipped one, else a cached one (generated if new)."""
    if (size_px, seed) == (SAMPLE_SIZE_PX, SAMPLE_SEED) and is_complete(SHIPPED):
        return SHIPPED
    folder = cache_root() / f"sample-v{SAMPLE_VERSION}-{size_px}px-seed{seed}"
    if is_complete(folder):
        return folder
    return build_sample(folder, size_px, seed)


def is_shipped(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies in the shipped sample folder (part of the install: read-only)."""
    try:
        return Path(path).resolve().is_relative_to(SHIPPED.resolve())
    except (OSError, ValueError):
        return False


def synthetic_sample() -> list[tuple]:
    """Layers of the sample: slide, ground truth, grid probabilities and bins z."""
    from napari_lsr._reader import grid_layer_data, slide_layer_data

    folder = sample_folder()
    slide = slide_layer_data(folder / f"{NAME}.tif")
    gt_data, gt_kwargs, gt_type = slide_layer_data(folder / f"{NAME}_gt.tif")
    gt_kwargs = {**gt_kwargs, "name": "ground truth (cancer)", "visible": False}
    return [slide, (gt_data, gt_kwargs, gt_type), *grid_layer_data(folder / f"{NAME}_grid.npy")]


if __name__ == "__main__":  # make sample
    print(f"wrote {build_sample(SHIPPED)}")
