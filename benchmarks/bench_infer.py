"""Benchmark of tiled whole-slide inference (outside CI): memory, throughput, MONAI baselines.

Generates a pyramidal JPEG slide of ``--size`` × ``--size`` level-0 px at ~40X (level-0
µm/px = WORKING_MPP / 16 ≈ 0.26, so pyramid level 4 is exactly the working resolution and
MONAI's level-based reader sees the same pixels), then, each in its own subprocess (so
that peak RSS is measured per method with ``resource.getrusage``):

- ``ours``: :func:`lsr.infer.predict_slide` on the whole slide (every tile, no tissue
  skipping, so that all methods compute the same pixels);
- ``forward`` (in the same process as ``ours``, right after it): the network's pure forward
  time on the same number of working pixels (core tiles without halo, no reads, no
  writes): the ideal to compare against;
- ``monai_swi``: MONAI ``sliding_window_inference`` on a region that fits in memory
  (240-px windows with 25 % overlap as measured in the issue, and large windows with the
  same halo as ours), against ours on the same region;
- ``monai_wsi``: MONAI ``PatchInferer`` + ``WSISlidingWindowSplitter`` + ``ZarrAvgMerger``
  on the whole slide with the same patch size and overlap as ours (its tifffile backend
  decodes the whole level for every patch and OpenSlide/cuCIM are not installed, so its
  reader is a ``TiffFileWSIReader`` whose ``_get_patch`` reads tiles through lsr.slide).

Usage::

    python benchmarks/bench_infer.py --size 20000            # quick (working 1250² px)
    python benchmarks/bench_infer.py                          # the issue's 50 000² px
Results go to ``benchmarks/results/infer.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


# --- the slide --------------------------------------------------------------------------


class SyntheticSlide:
    """Lazy (S, S, 3) uint8 H&E-like image: tissue blobs at working scale + fine texture."""

    def __init__(self, size: int, seed: int = 0):
        from scipy.ndimage import gaussian_filter

        self.shape = (size, size, 3)
        self.dtype = np.dtype(np.uint8)
        rng = np.random.default_rng(seed)
        low = max(size // 16, 1)
        field = gaussian_filter(rng.standard_normal((low, low)), sigma=max(low / 40, 1.0))
        nuclei = gaussian_filter(rng.standard_normal((low, low)), sigma=1.5)
        self.tissue = field > np.quantile(field, 0.4)
        self.dark = self.tissue & (nuclei > np.quantile(nuclei, 0.6))
        self.texture = rng.integers(-20, 21, (512, 512, 3)).astype(np.int16)

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        y0, y1, _ = rows.indices(self.shape[0])
        w = self.shape[1]
        ly = np.arange(y0, y1) // 16
        lx = np.arange(w) // 16
        t = self.tissue[np.ix_(ly, lx)]
        d = self.dark[np.ix_(ly, lx)]
        out = np.full((y1 - y0, w, 3), 245, np.int16)
        out[t] = (215, 140, 200)
        out[d] = (140, 70, 160)
        tex = self.texture[(np.arange(y0, y1) % 512)[:, None], (np.arange(w) % 512)[None, :]]
        out += np.where(t[..., None], tex, tex // 4)
        return np.clip(out, 0, 255).astype(np.uint8)


def make_slide(path: Path, size: int) -> float:
    from lsr.slide import WORKING_MPP, write_pyramidal_tiff

    mpp0 = WORKING_MPP / 16
    if not path.exists():
        t0 = time.perf_counter()
        write_pyramidal_tiff(  # svs layout: MONAI's tifffile reader wants levels as pages
            path, SyntheticSlide(size), mpp=mpp0, tile=256, jpeg_quality=85, layout="svs",
            min_size=128,
        )  # fmt: skip
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return mpp0


# --- children (one method each) ------------------------------------------------------------


def build_model(p: dict):
    import torch

    from lsr.model import UNet

    torch.manual_seed(0)
    model = UNet(2, width=p["width"], depth=p["depth"], norm=p["norm"])
    return model.eval()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_ours(p: dict) -> dict:
    from lsr.infer import predict_slide
    from lsr.slide import open_slide

    model = build_model(p)
    timings: dict = {}
    with open_slide(p["slide"]) as slide:
        shape = slide.working_shape(p["working_mpp"])
        t0 = time.perf_counter()
        predict_slide(
            model, slide, working_mpp=p["working_mpp"], tile=p["tile"],
            batch_size=p["batch_size"], out=p["out_npy"], timings=timings,
        )  # fmt: skip
        dt = time.perf_counter() - t0
    rss = peak_rss_mib()
    # the pure forward, measured in the same process right after (the machine may be shared)
    fw = child_forward({**p, "shape": shape})
    return {"seconds": dt, "shape": shape, "timings": timings, "peak_rss_mib": rss,
            "forward": fw}  # fmt: skip


def child_forward(p: dict) -> dict:
    import torch

    from lsr.infer import model_halo, model_multiple
    from lsr.tiling import tile_grid

    model = build_model(p)
    h, w = p["shape"]
    grid = tile_grid((h, w), p["tile"], model_halo(model), model_multiple(model))
    out = {}
    for name, (th, tw) in {
        "core": (grid.tile_h, grid.tile_w),
        "with_halo": grid.read_shape,
    }.items():
        # the same memory layout as predict_slide's input (channels-last view of HWC tiles)
        x = torch.randn(p["batch_size"], th, tw, 3).permute(0, 3, 1, 2)
        with torch.inference_mode():
            model(x)  # warm-up
            times = []
            for _ in range(p["repeats"]):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        per_px = float(np.median(times)) / (p["batch_size"] * th * tw)
        out[name] = {"tile": [th, tw], "median_s": float(np.median(times)), "s_per_px": per_px}
    out["pure_forward_s"] = out["core"]["s_per_px"] * h * w
    out["halo_forward_s"] = out["with_halo"]["s_per_px"] * len(grid) * np.prod(grid.read_shape)
    out["tiles"] = len(grid)
    out["overhead_px"] = grid.overhead
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def child_monai_swi(p: dict) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from lsr.infer import Normalise, model_halo, predict_array, predict_slide
    from lsr.model import INPUT_MEAN, INPUT_STD
    from lsr.slide import ArraySlide, open_slide
    from lsr.tiling import round_up, tile_grid

    model = build_model(p)
    r = p["region"]
    with open_slide(p["slide"]) as slide:
        hw, ww = slide.working_shape(p["working_mpp"])
        y, x = max((hw - r) // 2, 0), max((ww - r) // 2, 0)
        region = slide.read_working(y, x, r, r, p["working_mpp"])
    exact = predict_array(model, region)
    halo = round_up(model_halo(model), model.multiple)
    m = halo if r > 4 * halo else 0  # compare away from the region's border (MONAI pads 0)
    inner = (slice(m, r - m), slice(m, r - m))
    norm = Normalise(INPUT_MEAN, INPUT_STD)
    xin = norm(torch.from_numpy(region[None]))

    def net(t):
        return torch.softmax(model(t), dim=1)[:, :1]

    res: dict = {"region": [r, r]}
    t0 = time.perf_counter()
    ours = predict_slide(
        model, ArraySlide(region, mpp=p["working_mpp"]), working_mpp=p["working_mpp"],
        tile=p["tile"], batch_size=p["batch_size"],
    )  # fmt: skip
    res["ours_s"] = time.perf_counter() - t0
    res["ours_max_abs_diff_vs_one_shot"] = float(np.abs(ours - exact).max())
    grid = tile_grid((r, r), p["tile"], halo, model.multiple)
    configs = {
        "roi240_overlap0.25": (240, 0.25),
        "roi_as_ours": (grid.read_shape[0], 2 * halo / grid.read_shape[0]),
    }
    for name, (roi, overlap) in configs.items():
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = sliding_window_inference(
                xin, (roi, roi), p["batch_size"], net, overlap=overlap, mode="constant"
            )
            dt = time.perf_counter() - t0
        pm = out[0, 0].numpy()
        d = np.abs(pm - exact)[inner]
        res[name] = {
            "roi": roi, "overlap": overlap, "seconds": dt,
            "max_abs_diff_interior": float(d.max()), "mean_abs_diff_interior": float(d.mean()),
        }  # fmt: skip
    res["peak_rss_mib"] = peak_rss_mib()
    return res


def child_monai_wsi(p: dict) -> dict:
    import torch
    from monai.data.wsi_reader import TiffFileWSIReader
    from monai.inferers import PatchInferer, WSISlidingWindowSplitter, ZarrAvgMerger

    from lsr.infer import Normalise, model_halo
    from lsr.model import INPUT_MEAN, INPUT_STD
    from lsr.slide import open_slide
    from lsr.tiling import round_up, tile_grid

    class TiledTiffReader(TiffFileWSIReader):
        """MONAI's tifffile reader, reading only the patch's tiles (via lsr.slide)."""

        slides: ClassVar[dict] = {}

        def _get_patch(self, wsi, location, size, level, dtype, mode):
            path = wsi.filehandle.path
            s = self.slides.get(path) or self.slides.setdefault(path, open_slide(path))
            ds = self.get_downsample_ratio(wsi=wsi, level=level)
            y, x = (round(v / ds) for v in location)
            page = wsi.pages[level]  # MONAI's "level" is a page index (svs: page 1 = thumbnail)
            lsr_level = s.level_dimensions.index((page.imagewidth, page.imagelength))
            patch = s.read_level(lsr_level, y, x, size[0], size[1], 255).astype(dtype)
            return np.moveaxis(patch, -1, self.channel_dim)

    model = build_model(p)
    halo = round_up(model_halo(model), model.multiple)
    with open_slide(p["slide"]) as slide:
        shape = slide.working_shape(p["working_mpp"])
        level = slide.best_level(p["working_mpp"] / slide.mpp)
        if slide.level_dimensions[level] != (shape[1], shape[0]):
            raise SystemExit("no pyramid level at the working resolution for MONAI's reader")
        import tifffile

        with tifffile.TiffFile(p["slide"]) as tf:
            dims = [(pg.imagewidth, pg.imagelength) for pg in tf.pages]
        page = dims.index(slide.level_dimensions[level])
    grid = tile_grid(shape, p["tile"], halo, model.multiple)
    patch = grid.read_shape
    norm = Normalise(INPUT_MEAN, INPUT_STD)
    splitter = WSISlidingWindowSplitter(
        patch_size=patch, overlap=(2 * halo, 2 * halo), reader=TiledTiffReader, level=page
    )
    store = str(Path(p["work"]) / "monai.zarr")
    for suffix in ("", ".values", ".counts"):
        shutil.rmtree(store + suffix, ignore_errors=True)
    inferer = PatchInferer(
        splitter=splitter,
        merger_cls=ZarrAvgMerger,
        batch_size=p["batch_size"],
        preprocessing=lambda t: norm(t.permute(0, 2, 3, 1)),
        postprocessing=lambda t: torch.softmax(t, dim=1)[:, :1],
        store=store,  # ZarrAvgMerger's own keyword arguments (all three on disk)
        value_store=store + ".values",
        count_store=store + ".counts",
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = inferer(p["slide"], model)
    dt = time.perf_counter() - t0
    ours = np.load(p["out_npy"], mmap_mode="r")
    diff = 0.0
    for yy in range(0, shape[0], 512):
        band = np.asarray(out[0, 0, yy : yy + 512, : shape[1]])
        diff = max(diff, float(np.abs(band - ours[yy : yy + 512]).max()))
    return {"seconds": dt, "patch": list(patch), "overlap_px": 2 * halo, "level": level,
            "page": page, "max_abs_diff_vs_ours": diff, "peak_rss_mib": peak_rss_mib()}  # fmt: skip


CHILDREN = {
    "ours": child_ours,
    "monai_swi": child_monai_swi,
    "monai_wsi": child_monai_wsi,
}


def run_child(mode: str, params: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", mode, "--params", json.dumps(params)]
    print(f"running {mode} ...", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50000, help="level-0 side in px (40X)")
    ap.add_argument("--tile", type=int, default=1024, help="tile core side (working px)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--norm", default="batch", help="batch (local in eval; exact) or group")
    ap.add_argument("--region", type=int, default=768, help="region side for monai_swi")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["monai_swi", "monai_wsi"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lsr-bench-infer"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "infer.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        p = json.loads(args.params)
        torch.set_num_threads(p["threads"])
        print(json.dumps(CHILDREN[args.child](p), default=float))
        return

    from lsr.slide import WORKING_MPP

    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"synthetic-{args.size}.tif"
    mpp0 = make_slide(slide, args.size)
    params = {
        "slide": str(slide), "working_mpp": WORKING_MPP, "tile": args.tile,
        "batch_size": args.batch_size, "width": args.width, "depth": args.depth,
        "norm": args.norm, "region": args.region, "repeats": args.repeats,
        "threads": args.threads, "work": str(args.work),
        "out_npy": str(args.work / f"ours-{args.size}-{args.tile}.npy"),
    }  # fmt: skip
    results: dict = {}
    ours = run_child("ours", params, args.threads)
    results["ours"] = ours
    shape = ours.get("shape") or [round(args.size / 16)] * 2
    params["shape"] = shape
    for mode in ("monai_swi", "monai_wsi"):
        if mode not in args.skip:
            results[mode] = run_child(mode, params, args.threads)
    if "monai_wsi" not in args.skip:  # again, after MONAI: a second sample of the noise
        results["ours_again"] = run_child("ours", params, args.threads)

    mpx = shape[0] * shape[1] / 1e6
    summary: dict = {"working_mpx": mpx}
    if "seconds" in ours:
        summary["ours_mpx_per_s"] = mpx / ours["seconds"]
        summary["ours_peak_rss_mib"] = ours["peak_rss_mib"]
    fw = ours.get("forward", {})
    if "pure_forward_s" in fw and "seconds" in ours:
        summary["pure_forward_mpx_per_s"] = mpx / fw["pure_forward_s"]
        summary["ratio_ours_to_pure_forward"] = ours["seconds"] / fw["pure_forward_s"]
        summary["ratio_halo_forward_to_pure_forward"] = fw["halo_forward_s"] / fw["pure_forward_s"]
    wsi = results.get("monai_wsi", {})
    if "seconds" in wsi and "seconds" in ours:
        again = results.get("ours_again", {}).get("seconds", ours["seconds"])
        summary["ratio_monai_wsi_to_ours"] = wsi["seconds"] / min(ours["seconds"], again)
        summary["ours_seconds_both_runs"] = [ours["seconds"], again]
        summary["monai_wsi_max_abs_diff"] = wsi["max_abs_diff_vs_ours"]
        summary["monai_wsi_peak_rss_mib"] = wsi["peak_rss_mib"]
    swi = results.get("monai_swi", {})
    if "ours_s" in swi:
        for name in ("roi240_overlap0.25", "roi_as_ours"):
            if name in swi:
                summary[f"ratio_monai_swi_{name}_to_ours"] = swi[name]["seconds"] / swi["ours_s"]
    doc = {
        "benchmark": "bench_infer",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "device": "cpu",
        },
        "slide": {
            "size_level0": args.size,
            "mpp_level0": mpp0,
            "working_mpp": WORKING_MPP,
            "working_shape": shape,
        },
        "params": {k: v for k, v in params.items() if k not in ("slide", "work", "out_npy")},
        "targets": {
            "peak_rss_mib": 2048,
            "ratio_ours_to_pure_forward": 1.3,
            "ratio_monai_wsi_to_ours": 1.0,
        },
        "summary": summary,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
