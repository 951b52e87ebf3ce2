"""Configuration of the synthetic H&E benchmark: a dataclass tree with documented defaults.

Every property of the generated slides, of the simulated classifier and of the simulated
expert is a field here. Physical sizes are in micrometres (``_um``), densities in nuclei per
mm² (``_per_mm2``) or objects per cm² (``_per_cm2``), optical densities in natural-log OD
units (``_od``), fractions in [0, 1]. Pixel sizes (``_px``) are working-resolution pixels.
Files are TOML (``tomllib``) or JSON with the same nesting; an unknown key is an error that
names the key and the file. ``docs/synthetic.md`` lists every key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import tomllib

from lsr.errors import LsrInputError

#: ``format`` of the manifest (and of the unfinished marker) that
#: :func:`lsr.synthetic.generate_dataset` writes; ``lsr evaluate`` looks for it too (here, in
#: a module without NumPy or dask, so the CLI can read it cheaply).
MANIFEST_FORMAT = "napari-lsr synthetic benchmark"
MANIFEST = "manifest.json"


@dataclass
class ScaleConfig:
    """Working resolution. ``block_px * working_mpp`` ≈ 1000 µm (one block ≈ 1 mm)."""

    working_mpp: float = 8.33  # µm per working-resolution pixel (paper: 4.17)
    block_px: int = 120  # block side, working px (paper: 240)
    band_px: int = 0  # masked-metric band, working px; 0 = one block (block_px)


@dataclass
class SlideConfig:
    """Training slides and held-out test patches."""

    n_slides: int = 30  # training slides per data set
    width_px: int = 1200  # slide width, working px (rounded up to whole blocks)
    height_px: int = 1200  # slide height, working px (rounded up to whole blocks)
    tile_px: int = 512  # generation and TIFF tile size, px (memory per tile is bounded)
    tissue_fill: float = 0.8  # fraction of the slide canvas covered by tissue (approx.)
    edge_roughness: float = 0.25  # irregularity of the tissue outline (0 = smooth ellipse)
    edge_scale_um: float = 1500.0  # length scale of the tissue-outline wiggles
    n_test_patches: int = 10  # held-out test patches per data set
    patch_px: int = 600  # test patch side, working px (paper: 1200 at 240-px blocks)
    patch_tumour_fraction: tuple[float, float] = (0.25, 0.6)  # tumour share per test patch
    compression: str = "jpeg"  # slide TIFF compression: jpeg | zlib | none


@dataclass
class TumourConfig:
    """Invasive carcinoma: where it is (ground truth) and how it looks."""

    fraction: tuple[float, float] = (0.15, 0.5)  # share of tissue that is cancer, per slide
    region_scale_um: float = 2200.0  # size of tumour regions (low-frequency field)
    edge_scale_um: float = 300.0  # scale of boundary irregularity (lobes, detached nests)
    edge_amplitude: float = 0.3  # strength of boundary irregularity (field std units)
    nest_scale_um: float = 110.0  # size of tumour-cell nests inside a region
    nest_contrast: float = 1.0  # 0 = solid sheets; larger = nests separated by stroma
    cords: float = 0.5  # amount of infiltrating cords beyond the main edge (0..1)
    cord_scale_um: float = 350.0  # spacing of cords
    cord_width_um: float = 22.0  # cord width
    single_file: float = 0.3  # amount of single-file strands beyond the edge (0..1)
    single_file_scale_um: float = 250.0  # spacing of single-file strands
    infiltration_depth_um: float = 500.0  # how far cords / files reach past the edge
    sparse_share: float = 0.25  # share of tumour area with sparse cellularity
    sparse_density: float = 0.3  # cellularity factor in sparse tumour
    nuclear_density_per_mm2: float = 10000.0  # tumour nuclei in solid tumour
    nuclear_radius_um: float = 4.5  # tumour nuclear radius (larger than stroma)
    nuclear_od: float = 1.4  # hematoxylin OD of a tumour nucleus (darker)
    cytoplasm_hematoxylin_od: float = 0.12  # amphophilic cytoplasm, H part
    cytoplasm_eosin_od: float = 0.35  # cytoplasm, E part


@dataclass
class StromaConfig:
    """Non-cancer breast tissue: stroma, fat, normal lobules."""

    nuclear_density_per_mm2: float = 800.0  # fibroblasts etc.
    nuclear_radius_um: float = 3.0  # fibroblast nuclear radius
    nuclear_od: float = 0.85  # hematoxylin OD of a fibroblast nucleus
    eosin_od: float = 0.55  # collagen eosin OD
    fibre_wavelength_um: float = 35.0  # spacing of collagen fibre bundles
    fibre_contrast: float = 0.5  # 0 = flat pink, 1 = strong fibre texture
    fat_share: float = 0.2  # share of non-tumour tissue that is fat
    fat_scale_um: float = 1200.0  # size of fat lobules
    adipocyte_um: float = 85.0  # adipocyte diameter
    lobules_per_cm2: float = 25.0  # normal lobules / ducts (purple, benign)
    lobule_radius_um: float = 260.0  # lobule radius


@dataclass
class LookalikeConfig:
    """Non-cancer tissue that fools a classifier (and networks)."""

    lymphoid_per_cm2: float = 14.0  # lymphocyte aggregates
    lymphoid_radius_um: float = 250.0  # aggregate radius
    lymphocyte_density_per_mm2: float = 22000.0  # nuclei inside an aggregate
    lymphocyte_radius_um: float = 3.2  # small round nuclei
    lymphocyte_od: float = 2.0  # dark, small, round
    cellular_stroma_share: float = 0.2  # share of stroma that is dense and cellular
    cellular_stroma_factor: float = 5.0  # nuclear density multiplier there
    crush_share: float = 0.06  # share of tissue with crush artefact (near edges mostly)
    crush_od: float = 0.9  # smeared hematoxylin OD


@dataclass
class StainConfig:
    """Beer-Lambert stain model: RGB = background * exp(-(H * h_vec + E * e_vec))."""

    hematoxylin_vector: tuple[float, float, float] = (0.5626, 0.7201, 0.4062)  # Macenko ref.
    eosin_vector: tuple[float, float, float] = (0.2159, 0.8012, 0.5581)  # Macenko ref.
    background_rgb: tuple[float, float, float] = (243.0, 241.0, 245.0)  # glass, 0-255
    hematoxylin_scale_sd: float = 0.15  # between-slide log-normal sd of H intensity
    eosin_scale_sd: float = 0.15  # between-slide log-normal sd of E intensity
    vector_jitter_deg: float = 4.0  # between-slide rotation of stain vectors
    pixel_noise_od: float = 0.04  # per-pixel OD noise (scanner, section thickness)
    thickness_variation: float = 0.12  # low-frequency section thickness variation


@dataclass
class ClassifierConfig:
    """Simulated patch classifier: a logistic function of image features over a context.

    Features (from the image, colour deconvolution at ``downsample``): mean hematoxylin OD
    of tissue, share of nuclei-dense pixels, mean eosin OD of tissue, tissue share; each
    averaged over a window ``context_blocks`` blocks wide centred on the block.
    """

    downsample: int = 4  # working px per classifier px (must divide block_px)
    context_blocks: float = 2.75  # context window width, in blocks (calibrated)
    dense_hematoxylin_od: float = 0.2  # a classifier px is "nuclei-dense" above this H OD
    weights: tuple[float, float, float, float] = (-0.665, 21.757, 31.592, 11.03)  # h,dense,e,tissue
    bias: float = -23.317  # weights, bias, noise: calibrate_classifier()
    logit_noise_sd: float = 1.0  # per-block noise on the logit (classifier instability)
    block_truth_fraction: float = 0.5  # a block is "cancer" when >= this share is cancer


@dataclass
class ExpertConfig:
    """Simulated expert who estimates the cancer percentage of sampled blocks."""

    blocks_per_bin: tuple[int, int] = (10, 12)  # sampled blocks per bin (min, max)
    bias: float = 0.02  # added to every estimate (fraction)
    noise_sd: float = 0.05  # absolute estimation noise (fraction)
    relative_noise_sd: float = 0.15  # noise proportional to the true fraction
    rounding: float = 0.05  # estimates rounded to this step ...
    fine_below: float = 0.05  # ... except below this, where ...
    fine_rounding: float = 0.01  # ... they are rounded to this finer step
    min_tissue: float = 0.5  # blocks with less tissue than this are not estimated


@dataclass
class SyntheticConfig:
    """The whole benchmark: scale, slides, tissue, classifier, expert."""

    name: str = "default"
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    slide: SlideConfig = field(default_factory=SlideConfig)
    tumour: TumourConfig = field(default_factory=TumourConfig)
    stroma: StromaConfig = field(default_factory=StromaConfig)
    lookalike: LookalikeConfig = field(default_factory=LookalikeConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)

    # ------------------------------------------------------------------ derived
    @property
    def band_px(self) -> int:
        """Masked-metric band in working px (one block unless set)."""
        return self.scale.band_px or self.scale.block_px

    def um_to_px(self, um: float) -> float:
        """Convert micrometres to working-resolution pixels."""
        return um / self.scale.working_mpp

    def per_mm2_to_per_px(self, density: float) -> float:
        """Convert a density per mm² to a density per working pixel."""
        return density * (self.scale.working_mpp / 1000.0) ** 2

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists): what manifests and JSON files store."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def validate(self, path: str | PathLike[str] | None = None) -> SyntheticConfig:
        """Check ranges; raise :class:`LsrInputError` naming the key. Returns self."""

        def bad(key: str, why: str) -> None:
            raise LsrInputError(why, path=path, where=f"key '{key}'")

        s = self.scale
        if not (s.working_mpp > 0 and math.isfinite(s.working_mpp)):
            bad("scale.working_mpp", "must be a positive number of µm per pixel")
        if s.block_px < 8:
            bad("scale.block_px", "must be at least 8 pixels")
        if s.band_px < 0:
            bad("scale.band_px", "must be >= 0 (0 = one block)")
        if self.classifier.downsample < 1 or s.block_px % self.classifier.downsample:
            bad("classifier.downsample", f"must be >= 1 and divide block_px ({s.block_px})")
        if self.slide.n_slides < 1:
            bad(
                "slide.n_slides",
                "need at least 1 training slide (the expert's table is built from them), "
                f"got {self.slide.n_slides}",
            )
        if self.slide.n_test_patches < 0:
            bad("slide.n_test_patches", f"must be >= 0, got {self.slide.n_test_patches}")
        if self.slide.tile_px < 64:
            bad("slide.tile_px", "must be at least 64 pixels")
        if self.slide.width_px < s.block_px or self.slide.height_px < s.block_px:
            bad("slide.width_px", "slides must be at least one block wide and high")
        if self.slide.patch_px < s.block_px:
            bad("slide.patch_px", "test patches must be at least one block wide")
        if self.slide.compression not in ("jpeg", "zlib", "none"):
            bad("slide.compression", "must be one of jpeg, zlib, none")
        for key, (lo, hi) in {
            "tumour.fraction": self.tumour.fraction,
            "slide.patch_tumour_fraction": self.slide.patch_tumour_fraction,
        }.items():
            if not (0 <= lo <= hi < 1):
                bad(key, f"must be [low, high] with 0 <= low <= high < 1, got {[lo, hi]}")
        lo, hi = self.expert.blocks_per_bin
        if not (1 <= lo <= hi):
            bad("expert.blocks_per_bin", f"must be [min, max] with 1 <= min <= max, got {[lo, hi]}")
        if not (0 < self.slide.tissue_fill <= 1):
            bad("slide.tissue_fill", "must be in (0, 1]")
        if not (0 < self.classifier.block_truth_fraction <= 1):
            bad("classifier.block_truth_fraction", "must be in (0, 1]")
        if self.expert.rounding < 0 or self.expert.fine_rounding < 0:
            bad("expert.rounding", "rounding steps must be >= 0")
        return self


def _convert(value: Any, hint: Any, key: str, path: Any) -> Any:
    """Check one value against its type hint (int, float, str, fixed tuples)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise LsrInputError(
                f"must be a list of {len(args)} values, got {value!r}",
                path=path,
                where=f"key '{key}'",
            )
        return tuple(_convert(v, a, key, path) for v, a in zip(value, args, strict=True))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LsrInputError(f"must be a number, got {value!r}", path=path, where=f"key '{key}'")
        if not math.isfinite(value):
            raise LsrInputError("must be finite", path=path, where=f"key '{key}'")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise LsrInputError(
                f"must be an integer, got {value!r}", path=path, where=f"key '{key}'"
            )
        return int(value)
    if hint is str:
        if not isinstance(value, str):
            raise LsrInputError(f"must be a string, got {value!r}", path=path, where=f"key '{key}'")
        return value
    raise TypeError(f"unsupported config type {hint}")  # programming error


def _build(cls: type, data: dict, prefix: str, path: Any) -> Any:
    if not isinstance(data, dict):
        raise LsrInputError("must be a table of keys", path=path, where=f"key '{prefix[:-1]}'")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise LsrInputError(
                f"unknown key (known: {', '.join(sorted(known))})",
                path=path,
                where=f"key '{prefix}{key}'",
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", path)
        else:
            kwargs[key] = _convert(value, hint, f"{prefix}{key}", path)
    return cls(**kwargs)


def config_from_dict(data: dict, path: str | PathLike[str] | None = None) -> SyntheticConfig:
    """Build and validate a config from a nested dict (missing keys take their defaults)."""
    return _build(SyntheticConfig, data, "", path).validate(path)


def load_config(path: str | PathLike[str] | None) -> SyntheticConfig:
    """Read a TOML (``.toml``) or JSON (``.json``) config; None gives the defaults.

    A name without a folder that is not a file (``"default"``, ``"paper_scale"``) is looked
    up in the shipped ``configs/synthetic/`` folder.
    """
    if path is None:
        return SyntheticConfig().validate()
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and (shipped := shipped_config(p.stem)):
        p = shipped
    if p.is_dir():  # `lsr synth .` for `lsr synth -o .`: the output goes after -o
        raise LsrInputError(
            "is a folder, not a config: the config is a .toml/.json file or a shipped name "
            f"({', '.join(shipped_names())}); the output folder goes after -o",
            path=p,
        )
    if not p.is_file():
        raise LsrInputError("config file not found", path=p)
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise LsrInputError(f"not valid {kind}: {err}", path=p) from None
    if isinstance(data, dict) and "config" in data and "seed" in data:
        data = data["config"]  # a manifest written by `lsr synth`
    return config_from_dict(data, p)


#: Where the shipped configs lie (a source checkout).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "configs" / "synthetic"


def shipped_config(name: str) -> Path | None:
    """Path of a config shipped in ``configs/synthetic/<name>.toml`` (source checkout)."""
    cand = SHIPPED_DIR / f"{name}.toml"
    return cand if cand.is_file() else None


def shipped_names() -> list[str]:
    """Names of the shipped configs (``default``, ``paper_scale``, …), sorted."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))
