"""Benchmark of tiled whole-slide inference (outside CI): memory, throughput, MONAI baselines.

Generates a pyramidal JPEG slide of ``--size`` × ``--size`` level-0 px at ~40X (level-0
µm/px = WORKING_MPP / 16 ≈ 0.26, so pyramid level 4 is exactly the working resolution and
MONAI's level-based reader sees the same pixels), then, each in its own subprocess (so
that peak RSS is measured per method with ``resource.getrusage``):

- ``ours``: :func:`lsr.infer.predict_slide` on the whole slide (every tile, no tissue
  skipping, so that all methods compute the same pixels), with ``--tile`` (default
  ``auto``: the largest balanced tile whose activations fit ``--tile-memory-mib``);
- ``forward`` (in the same process as ``ours``, right after it): the network's pure forward
  time on the same number of working pixels (core tiles without halo, no reads, no
  writes): the ideal to compare against; also the plain forward of a tile with its halo and
  :func:`lsr.infer.core_forward` on it (decoder on the core only: what ``ours`` runs);
- ``monai_swi``: MONAI ``sliding_window_inference`` on a region that fits in memory
  (240-px windows with 25 % overlap as measured in the issue, and large windows with the
  same halo as ours), against ours on the same region;
- ``monai_wsi``: MONAI ``PatchInferer`` + ``WSISlidingWindowSplitter`` + ``ZarrAvgMerger``
  on the whole slide with the same patch size and overlap as ours (its tifffile backend
  decodes the whole level for every patch and OpenSlide/cuCIM are not installed, so its
  reader is a ``TiffFileWSIReader`` whose ``_get_patch`` reads tiles through lsr.slide);
- ``ours_again``: ``ours`` once more, after MONAI (a second sample of the machine's noise).

The network is a randomly initialised :class:`lsr.model.UNet` (``--width``, ``--depth``,
``--norm``; default the shipped width 16, depth 4, LayerNorm, which is local so outputs can
be compared exactly). ``--parts`` runs only some of the children (e.g. one per idle window
on a shared machine); results are merged into the run's entry of the output JSON, keyed by
slide size, network, tile and batch, so quick and full runs and other networks coexist.

Usage::

    python benchmarks/bench_infer.py --size 20000            # quick (working 1250² px)
    python benchmarks/bench_infer.py                          # the issue's 50 000² px
    python benchmarks/bench_infer.py --parts ours            # then monai_wsi, ... later
    python benchmarks/bench_infer.py --width 8 --depth 3 --parts ours   # the demo's network
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


def context(load0: tuple[float, float, float]) -> dict:
    """When and under which load a child ran (load averages at its start and end)."""
    import torch

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch_threads": torch.get_num_threads(),
            "loadavg_start": list(load0), "loadavg_end": list(os.getloadavg())}  # fmt: skip


def run_ours(model, p: dict, timings: dict) -> tuple[float, float]:
    """(wall s, CPU s) of predict_slide on the whole slide, writing into ``out_npy``."""
    from lsr.infer import predict_slide
    from lsr.slide import open_slide

    with open_slide(p["slide"]) as slide:
        t0, c0 = time.perf_counter(), time.process_time()
        predict_slide(
            model, slide, working_mpp=p["working_mpp"], tile=p["tile_arg"],
            tile_memory_mib=p["tile_memory_mib"], batch_size=p["batch_size"], out=p["out_npy"],
            timings=timings,
        )  # fmt: skip
        return time.perf_counter() - t0, time.process_time() - c0


def child_ours(p: dict) -> dict:
    """predict_slide (first call in a fresh process: its peak RSS is the one reported), the
    forward passes (same process, right after), then predict_slide again (warm)."""
    from lsr.slide import open_slide

    model = build_model(p)
    load0 = os.getloadavg()
    with open_slide(p["slide"]) as slide:
        shape = slide.working_shape(p["working_mpp"])
    timings: dict = {}
    dt, cpu = run_ours(model, p, timings)
    rss = peak_rss_mib()
    if int(timings["tile_px"]) != p["tile"]:
        raise SystemExit(f"predict_slide chose tile {timings['tile_px']}, expected {p['tile']}")
    # the pure forward, measured in the same process right after (the machine may be shared)
    fw = child_forward({**p, "shape": shape}, model)
    dt2, cpu2 = run_ours(model, p, {})
    return {"seconds": dt, "cpu_seconds": cpu, "seconds_second_call": dt2,
            "cpu_seconds_second_call": cpu2, "shape": shape, "timings": timings,
            "peak_rss_mib": rss, "forward": fw, **context(load0)}  # fmt: skip


def child_forward(p: dict, model) -> dict:
    """Forward passes on random tiles, measured round-robin (so drifts of the machine's speed
    hit all kinds alike): the pure forward of a core tile, the plain forward of a tile with
    its halo and :func:`lsr.infer.core_forward` on it (what predict_slide runs)."""
    import torch

    from lsr.infer import core_forward, model_halo, model_multiple
    from lsr.tiling import tile_grid

    h, w = p["shape"]
    grid = tile_grid((h, w), p["tile"], model_halo(model), model_multiple(model))
    kinds = {
        "core": ((grid.tile_h, grid.tile_w), model),
        "with_halo": (grid.read_shape, model),
        "with_halo_core_only": (grid.read_shape, core_forward(model, grid.halo, grid.read_shape)),
    }
    kinds = {k: v for k, v in kinds.items() if v[1] is not None}
    # the same memory layout as predict_slide's input (channels-last view of HWC tiles)
    xs = {
        k: torch.randn(p["batch_size"], *shp, 3).permute(0, 3, 1, 2)
        for k, (shp, _) in kinds.items()
    }
    times: dict = {k: [] for k in kinds}
    cpus: dict = {k: [] for k in kinds}
    with torch.inference_mode():
        for k, (_, net) in kinds.items():
            net(xs[k])  # warm-up
        for _ in range(p["repeats"]):
            for k, (_, net) in kinds.items():
                t0, c0 = time.perf_counter(), time.process_time()
                net(xs[k])
                times[k].append(time.perf_counter() - t0)
                cpus[k].append(time.process_time() - c0)
    out: dict = {}
    for k, ((th, tw), _) in kinds.items():
        px = p["batch_size"] * th * tw  # input px of one call
        out[k] = {"tile": [th, tw], "median_s": float(np.median(times[k])), "times_s": times[k],
                  "s_per_px": float(np.median(times[k])) / px,
                  "cpu_s_per_px": float(np.median(cpus[k])) / px}  # fmt: skip
    n_read = len(grid) * np.prod(grid.read_shape)  # input px of the whole grid
    out["pure_forward_s"] = out["core"]["s_per_px"] * h * w
    out["halo_forward_s"] = out["with_halo"]["s_per_px"] * n_read
    out["pure_forward_cpu_s"] = out["core"]["cpu_s_per_px"] * h * w
    out["halo_forward_cpu_s"] = out["with_halo"]["cpu_s_per_px"] * n_read
    if "with_halo_core_only" in out:
        out["core_only_forward_s"] = out["with_halo_core_only"]["s_per_px"] * n_read
        # paired per round: the core-only tile against the pure core tile measured next to it
        ratios = [c / q for c, q in zip(times["with_halo_core_only"], times["core"], strict=True)]
        out["core_only_to_pure_per_tile_paired"] = float(np.median(ratios))
    out["tiles"] = len(grid)
    out["overhead_px"] = grid.overhead
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def child_monai_swi(p: dict) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from lsr.infer import Normalise, model_halo, predict_array, predict_slide, resolve_tile
    from lsr.model import INPUT_MEAN, INPUT_STD
    from lsr.slide import ArraySlide, open_slide
    from lsr.tiling import round_up, tile_grid

    load0 = os.getloadavg()
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
        tile=p["tile_arg"], tile_memory_mib=p["tile_memory_mib"],
        batch_size=p["batch_size"],
    )  # fmt: skip
    res["ours_s"] = time.perf_counter() - t0
    res["ours_max_abs_diff_vs_one_shot"] = float(np.abs(ours - exact).max())
    tile = resolve_tile(model, (r, r), p["tile_arg"], batch_size=p["batch_size"],
                        memory_mib=p["tile_memory_mib"])  # fmt: skip
    grid = tile_grid((r, r), tile, halo, model.multiple)
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
    return {**res, **context(load0)}


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

    load0 = os.getloadavg()
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
    # max |difference| over the slide, and over its interior (further than the halo from the
    # slide's edge, where MONAI's patches see no context and ours see white)
    diff = inner = total = 0.0
    over = {1e-3: 0, 1e-2: 0}
    for yy in range(0, shape[0], 512):
        d = np.abs(np.asarray(out[0, 0, yy : yy + 512, : shape[1]]) - ours[yy : yy + 512])
        diff, total = max(diff, float(d.max())), total + float(d.sum(dtype=np.float64))
        for tol in over:
            over[tol] += int((d > tol).sum())
        rows = slice(max(halo - yy, 0), max(min(shape[0] - halo - yy, d.shape[0]), 0))
        if d[rows, halo : shape[1] - halo].size:
            inner = max(inner, float(d[rows, halo : shape[1] - halo].max()))
    n = shape[0] * shape[1]
    return {"seconds": dt, "patch": list(patch), "overlap_px": 2 * halo, "level": level,
            "page": page, "max_abs_diff_vs_ours": diff, "max_abs_diff_interior": inner,
            "mean_abs_diff_vs_ours": total / n,
            "share_px_diff_over_1e-3": over[1e-3] / n, "share_px_diff_over_1e-2": over[1e-2] / n,
            "peak_rss_mib": peak_rss_mib(), **context(load0)}  # fmt: skip


CHILDREN = {
    "ours": child_ours,
    "monai_swi": child_monai_swi,
    "monai_wsi": child_monai_wsi,
}
PARTS = ("ours", "monai_swi", "monai_wsi", "ours_again")


def busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have been busy (from /proc/stat; Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    jiffies = [int(v) for v in fields]
    busy = sum(jiffies) - jiffies[3] - (jiffies[4] if len(jiffies) > 4 else 0)  # - idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def run_child(mode: str, params: dict, threads: int) -> dict:
    """Run one method in a subprocess; also record how busy the rest of the machine was."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", mode, "--params", json.dumps(params)]
    print(f"running {mode} ...", file=sys.stderr, flush=True)
    ru0, busy0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s(), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    ru1, busy1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s(), time.time() - t0
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    others = busy1 - busy0 - own
    out["machine_during_run"] = {
        "wall_s": wall, "child_cpu_s": own, "other_processes_cpu_s": others,
        "other_processes_share": others / (wall * (os.cpu_count() or 1)),
    }  # fmt: skip
    return out


def resolve(args: argparse.Namespace, slide: Path) -> tuple[int, list[int]]:
    """(tile that ``--tile`` means for this slide and network, working shape)."""
    from lsr.infer import resolve_tile
    from lsr.slide import WORKING_MPP, open_slide

    model = build_model({"width": args.width, "depth": args.depth, "norm": args.norm})
    with open_slide(slide) as s:
        shape = list(s.working_shape(WORKING_MPP))
    tile = resolve_tile(
        model, tuple(shape), args.tile, batch_size=args.batch_size, device="cpu",
        memory_mib=args.tile_memory_mib,
    )  # fmt: skip
    return tile, shape


#: A run during which other processes used more than this share of the CPUs is "loaded".
QUIET_SHARE = 0.05


def quiet(res: dict) -> bool:
    share = res.get("machine_during_run", {}).get("other_processes_share", 1.0)
    return "error" not in res and share < QUIET_SHARE


def pick(history: list[dict], part: str) -> dict:
    """The latest run of ``part`` on a quiet machine, else the latest run."""
    runs = [{k: v for k, v in r.items() if k != "part"} for r in history if r["part"] == part]
    calm = [r for r in runs if quiet(r)]
    return (calm or runs)[-1]


def ours_line(r: dict) -> dict:
    """One predict_slide run in a line: its ratios to the forward measured right after it."""
    fw = r.get("forward", {})
    if "seconds" not in r or "pure_forward_s" not in fw:
        return {"date": r.get("date"), "error": r.get("error", "incomplete")}
    return {
        "date": r["date"], "part": r["part"], "seconds": r["seconds"],
        "ratio_to_pure_forward": r["seconds"] / fw["pure_forward_s"],
        "ratio_cpu_to_pure_forward": r["cpu_seconds"] / fw["pure_forward_cpu_s"],
        "core_only_to_pure_per_tile_paired": fw.get("core_only_to_pure_per_tile_paired"),
        "other_processes_share": r["machine_during_run"]["other_processes_share"],
        "quiet": quiet(r), "peak_rss_mib": r["peak_rss_mib"],
    }  # fmt: skip


def summarise(results: dict, shape: list[int]) -> dict:
    """Throughput, RSS and the ratios the issue names, from whichever parts have run."""
    mpx = shape[0] * shape[1] / 1e6
    summary: dict = {"working_mpx": mpx}
    ours = results.get("ours", {})
    if "seconds" in ours:
        summary["ours_seconds"] = ours["seconds"]
        summary["ours_mpx_per_s"] = mpx / ours["seconds"]
        summary["ours_peak_rss_mib"] = ours["peak_rss_mib"]
        summary["tile_px"] = ours["timings"]["tile_px"]
        summary["tiles"] = ours["timings"]["tiles_total"]
        summary["read_px"] = [
            ours["timings"]["core_h_px"] + 2 * ours["timings"]["halo_px"],
            ours["timings"]["core_w_px"] + 2 * ours["timings"]["halo_px"],
        ]
        summary["overhead_px"] = ours["timings"]["overhead"]
        summary["read_wait_s"] = ours["timings"]["read_wait_s"]
        summary["write_s"] = ours["timings"]["write_s"]
    fw = ours.get("forward", {})
    if "pure_forward_s" in fw and "seconds" in ours:
        summary["pure_forward_s"] = fw["pure_forward_s"]
        summary["pure_forward_mpx_per_s"] = mpx / fw["pure_forward_s"]
        summary["ratio_ours_to_pure_forward"] = ours["seconds"] / fw["pure_forward_s"]
        summary["ratio_halo_forward_to_pure_forward"] = fw["halo_forward_s"] / fw["pure_forward_s"]
        summary["ratio_ours_to_halo_forward"] = ours["seconds"] / fw["halo_forward_s"]
        summary["core_only"] = bool(ours["timings"].get("core_only", 0))
        if "core_only_forward_s" in fw:
            summary["ratio_core_only_forward_to_pure_forward"] = (
                fw["core_only_forward_s"] / fw["pure_forward_s"]
            )
        if "core_only_to_pure_per_tile_paired" in fw:
            t = ours["timings"]
            tiles_px = fw["tiles"] * t["core_h_px"] * t["core_w_px"]
            summary["ratio_core_only_forward_to_pure_forward_paired"] = (
                fw["core_only_to_pure_per_tile_paired"] * tiles_px / (shape[0] * shape[1])
            )
    if "cpu_seconds" in ours and "pure_forward_cpu_s" in fw:  # older results lack these
        summary["ratio_cpu_ours_to_pure_forward"] = ours["cpu_seconds"] / fw["pure_forward_cpu_s"]
        if "seconds_second_call" in ours:
            summary["ratio_ours_second_call_to_pure_forward"] = (
                ours["seconds_second_call"] / fw["pure_forward_s"]
            )
        summary["other_processes_share"] = ours["machine_during_run"]["other_processes_share"]
    again = results.get("ours_again", {})
    if "seconds" in again and "pure_forward_s" in again.get("forward", {}):
        summary["ours_again_seconds"] = again["seconds"]
        summary["ratio_ours_again_to_pure_forward"] = (
            again["seconds"] / again["forward"]["pure_forward_s"]
        )
    if "cpu_seconds" in again and "pure_forward_cpu_s" in again.get("forward", {}):
        summary["ratio_cpu_ours_again_to_pure_forward"] = (
            again["cpu_seconds"] / again["forward"]["pure_forward_cpu_s"]
        )
    wsi = results.get("monai_wsi", {})
    if "seconds" in wsi and "seconds" in ours:
        best = min(ours["seconds"], again.get("seconds", ours["seconds"]))
        summary["monai_wsi_seconds"] = wsi["seconds"]
        summary["ratio_monai_wsi_to_ours"] = wsi["seconds"] / best
        summary["monai_wsi_max_abs_diff"] = wsi["max_abs_diff_vs_ours"]
        summary["monai_wsi_max_abs_diff_interior"] = wsi.get("max_abs_diff_interior")
        summary["monai_wsi_mean_abs_diff"] = wsi.get("mean_abs_diff_vs_ours")
        summary["monai_wsi_share_px_diff_over_1e-3"] = wsi.get("share_px_diff_over_1e-3")
        summary["monai_wsi_peak_rss_mib"] = wsi["peak_rss_mib"]
        summary["monai_wsi_other_processes_share"] = wsi.get("machine_during_run", {}).get(
            "other_processes_share"
        )
    swi = results.get("monai_swi", {})
    if "ours_s" in swi:
        summary["swi_ours_max_abs_diff_vs_one_shot"] = swi["ours_max_abs_diff_vs_one_shot"]
        for name in ("roi240_overlap0.25", "roi_as_ours"):
            if name in swi:
                summary[f"ratio_monai_swi_{name}_to_ours"] = swi[name]["seconds"] / swi["ours_s"]
                summary[f"monai_swi_{name}_max_abs_diff"] = swi[name]["max_abs_diff_interior"]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=50000, help="level-0 side in px (40X)")
    ap.add_argument("--tile", default="auto", help="tile core side (working px) or 'auto'")
    ap.add_argument(
        "--tile-memory-mib",
        type=float,
        default=None,
        help="activation budget of --tile auto (default: lsr's, 1024 on CPU)",
    )
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument(
        "--norm",
        default="layer",
        choices=["layer", "batch", "none"],
        help="the network's normalisation (local ones only: outputs are compared)",
    )
    ap.add_argument("--region", type=int, default=768, help="region side for monai_swi")
    ap.add_argument("--repeats", type=int, default=5, help="forward passes per kind")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
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

    from lsr.predict import parse_tile
    from lsr.slide import WORKING_MPP

    args.tile = parse_tile(args.tile)
    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"synthetic-{args.size}.tif"
    mpp0 = make_slide(slide, args.size)
    tile, shape = resolve(args, slide)
    key = (
        f"size{args.size}_w{args.width}_d{args.depth}_{args.norm}_tile-{args.tile}"
        f"_mem{args.tile_memory_mib or 'default'}_b{args.batch_size}_t{args.threads}"
    )
    params = {
        "slide": str(slide), "working_mpp": WORKING_MPP, "tile": tile, "tile_arg": args.tile,
        "tile_memory_mib": args.tile_memory_mib, "batch_size": args.batch_size,
        "width": args.width, "depth": args.depth, "norm": args.norm, "region": args.region,
        "repeats": args.repeats, "threads": args.threads, "work": str(args.work),
        "out_npy": str(args.work / f"ours-{key}.npy"), "shape": shape,
    }  # fmt: skip
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if doc.get("benchmark") != "bench_infer" or "runs" not in doc:
        doc = {"benchmark": "bench_infer", "runs": {}}  # the older single-run layout
    doc["targets"] = {"peak_rss_mib": 2048, "ratio_ours_to_pure_forward": 1.3,
                      "ratio_monai_wsi_to_ours": 1.0}  # fmt: skip
    kept = {k: v for k, v in params.items() if k not in ("slide", "work", "out_npy")}
    run = doc["runs"].setdefault(key, {"results": {}})
    if run.get("params", kept) != kept:
        run["results"] = {}  # other parameters under the same key: start over
    run["params"] = kept
    run["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "torch_threads": args.threads, "device": "cpu"}  # fmt: skip
    run["slide"] = {"size_level0": args.size, "mpp_level0": mpp0, "working_mpp": WORKING_MPP,
                    "working_shape": shape}  # fmt: skip
    results, history = run["results"], run.setdefault("history", [])
    needs_ours = {"monai_wsi"} & set(args.parts) and not Path(params["out_npy"]).is_file()
    for part in PARTS:
        if part in args.parts or (part == "ours" and needs_ours):
            res = run_child("ours" if part == "ours_again" else part, params, args.threads)
            history.append({"part": part, **res})
            results[part] = pick(history, part)
    run["summary"] = summarise(results, shape)
    run["summary"]["ours_runs"] = [ours_line(r) for r in history if r["part"].startswith("ours")]
    run["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(json.dumps({key: run["summary"]}, indent=1))


if __name__ == "__main__":
    main()
