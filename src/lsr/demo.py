"""``lsr demo``: the whole method end to end on synthetic slides (paper Table 2 and Fig. 4).

One call generates a training set and a held-out test set (:mod:`lsr.synthetic`), builds the
count table with the simulated expert, trains the intra, inter and intra+inter networks,
predicts the test patches, scores them against the low-resolution model with the masked
metrics of :mod:`lsr.metrics`, and writes to one folder:

``results.json``, ``results.md`` (Table 2 layout beside the paper's numbers), ``fig4.png``,
``fig3.png``, ``table1.md`` (the expert's table beside the true p(c|z)), ``calibration.md``
and a QuPath GeoJSON per test patch with every boundary.

Every stage leaves its output on disk (data, training runs with checkpoints), so a demo
interrupted by a crash or Ctrl-C continues where it stopped when run again.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from lsr import __version__
from lsr.atomic import atomic_write_text
from lsr.errors import LsrInputError
from lsr.geojson import DEFAULT_NAMES as ROW_NAMES
from lsr.metrics import METRICS, PAPER_TABLE2
from lsr.metrics import TABLE2_ROWS as ROWS
from lsr.training_process import has_checkpoint, read_json_object

#: Shipped configs (source checkout): configs/demo/*.toml beside configs/synthetic/.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class DemoConfig:
    """What the demo runs. ``train`` holds :class:`lsr.train.TrainConfig` overrides shared by
    every loss, ``per_loss[loss]`` overrides for one loss (e.g. its learning rate)."""

    synthetic: str = "default"  # shipped synthetic config name or a path
    n_train_slides: int | None = None  # None: the synthetic config's n_slides
    n_test_patches: int | None = None  # None: the synthetic config's n_test_patches
    slide_px: int | None = None  # None: the synthetic config's training-slide size (square)
    losses: tuple[str, ...] = ("intra", "inter", "intra_inter")
    train: dict[str, Any] = field(default_factory=dict)
    per_loss: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_fig4: int = 6  # test patches drawn in fig4.png

    @classmethod
    def load(cls, path: str | PathLike[str] | None, quick: bool = False) -> DemoConfig:
        """Read a TOML demo config (default: the shipped one; ``quick``: its quick variant)."""
        if path is None:
            path = CONFIG_DIR / "demo" / ("quick.toml" if quick else "default.toml")
        p = Path(path)
        if not p.exists():
            raise LsrInputError("demo config not found", p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise LsrInputError(f"cannot parse the demo config ({err})", p) from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LsrInputError(f"unknown demo config keys: {', '.join(unknown)}", p)
        if "losses" in data:
            if not isinstance(data["losses"], list):  # (a string became its letters)
                raise LsrInputError(
                    f'losses must be a list of names, e.g. ["intra"], got {data["losses"]!r}', p
                )
            data["losses"] = tuple(data["losses"])
        cfg = cls(**data)
        cfg.check(p)
        synth = Path(cfg.synthetic)
        if synth.suffix and not synth.is_absolute():  # a path relative to the config file
            cfg.synthetic = str((p.parent / synth).resolve())
        return cfg

    def check(self, path: Path | None = None) -> None:
        """Raise :class:`LsrInputError` naming the first bad setting, before any slide is
        made or network trained (a typo in the last loss must not cost the first ones)."""
        from lsr.train import LOSSES, TrainConfig

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for key in ("n_train_slides", "n_test_patches", "slide_px"):
            v = getattr(self, key)
            if v is not None and not (is_int(v) and v >= 1):
                raise LsrInputError(f"{key} must be a whole number ≥ 1, got {v!r}", path)
        if not (is_int(self.n_fig4) and self.n_fig4 >= 0):
            raise LsrInputError(f"n_fig4 must be a whole number ≥ 0, got {self.n_fig4!r}", path)
        unknown = [loss for loss in self.losses if loss not in LOSSES]
        if not self.losses or unknown or len(set(self.losses)) != len(self.losses):
            raise LsrInputError(
                f"losses must be distinct names among {', '.join(LOSSES)}, got {list(self.losses)}",
                path,
            )
        extra = sorted(set(self.per_loss) - set(self.losses))
        if extra:
            raise LsrInputError(f"per_loss names losses the demo does not train: {extra}", path)
        for i, loss in enumerate(self.losses):
            init = self.per_loss.get(loss, {}).get("init_from", self.train.get("init_from"))
            if init is not None and init not in self.losses[:i]:
                raise LsrInputError(
                    f"init_from of {loss} must name a loss trained before it "
                    f"({', '.join(self.losses[:i]) or 'none is'}), got {init!r}",
                    path,
                )
            try:
                TrainConfig.from_dict(
                    {**self.train, **self.per_loss.get(loss, {}), "loss": loss}, path=path
                ).resolved().validate()
            except LsrInputError as err:
                raise LsrInputError(f"{err.problem} (training {loss})", path) from None


Progress = Callable[[str], None]


def _print(msg: str) -> None:
    """Progress on stdout; a reader gone away (``lsr demo | head``) silences it instead of
    ending a run of minutes to hours: its outputs are in the folder."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        from lsr.cli.console import silence_stream

        silence_stream(sys.stdout)


# ---------------------------------------------------------------------------- out folder
#: Marks a folder as lsr demo's own: a rerun continues there and replaces its results.
MARKER = "lsr-demo.json"
MARK = {"format": "napari-lsr demo", "version": 1}
#: What lsr demo writes at the top of its folder.
OUTPUTS = ("data", "runs", "results.json", "results.md", "table1.md", "calibration.md",
           "fig4.png", "fig3.png", "geojson")  # fmt: skip


def _listed(out: Path) -> set[str]:
    """Names in ``out`` but hidden ones (.DS_Store, .ipynb_checkpoints: never the user's
    results, and the demo never writes such names)."""
    return {p.name for p in out.iterdir() if not p.name.startswith(".")}


def _earlier_demo(out: Path, also: Sequence[str]) -> bool:
    """Whether ``out`` is the folder of a demo that predates :data:`MARKER`: only names lsr
    demo writes (and ``also``), with a demo's results.json or, interrupted before results,
    its data folder."""
    names = _listed(out)
    if not names <= {*OUTPUTS, *also}:
        return False
    if "results.json" in names:
        done = read_json_object(out / "results.json") or {}
        return {"rows", "seeds", "config"} <= done.keys()
    return (out / "data").is_dir() or names <= set(also)


def claim_out_dir(out: Path, also: Sequence[str] = ()) -> None:
    """Make ``out`` the demo's folder, or refuse one holding what lsr demo did not write.

    Why: a rerun continues in its folder and replaces results.md, table1.md, fig4.png … by
    name; a folder chosen by mistake must not lose the user's files of those names. A new or
    empty folder, or one an earlier demo wrote, is marked with :data:`MARKER`. ``also``:
    names a caller (the study) writes there itself.
    """
    if out.exists() and not out.is_dir():
        raise LsrInputError("--out is a file, not a folder", out)
    if (read_json_object(out / MARKER) or {}).get("format") == MARK["format"]:
        return
    held = _listed(out) if out.is_dir() else set()
    if held and not _earlier_demo(out, also):
        foreign = sorted(held - {*OUTPUTS, *also}) or sorted(held)  # else: no demo results.json
        shown = ", ".join(foreign[:4]) + (", …" if len(foreign) > 4 else "")
        raise LsrInputError(
            f"holds files lsr demo did not write ({shown}); lsr demo replaces its results "
            "there by name, so choose a new or empty --out",
            out,
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps(MARK) + "\n")


# ---------------------------------------------------------------------------- stages
def make_data(cfg: DemoConfig, seed: int, out: Path, say: Progress) -> dict:
    """Generate (or reuse) the training and test sets of one seed; returns the manifest."""
    from lsr import synthetic

    data_dir = out / "data" / f"seed{seed}"
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists():
        manifest = read_json_object(manifest_path) or {}
        if not {"train", "test", "tables"} <= manifest.keys():
            raise LsrInputError(
                f"seed {seed}'s data set cannot be read (damaged?): delete {data_dir} and run "
                "lsr demo again to generate it anew",
                manifest_path,
            )
        say(f"[seed {seed}] data: reusing {data_dir}")
        return manifest
    say(f"[seed {seed}] data: generating synthetic slides in {data_dir}")
    scfg = synthetic.load_config(_synthetic_path(cfg.synthetic))
    if cfg.n_train_slides is not None:
        scfg.slide.n_slides = cfg.n_train_slides
    if cfg.n_test_patches is not None:
        scfg.slide.n_test_patches = cfg.n_test_patches
    if cfg.slide_px is not None:
        scfg.slide.width_px = scfg.slide.height_px = cfg.slide_px
    try:  # an unfinished set of ours is replaced; a folder of other files never is
        synthetic.check_out_dir(data_dir, overwrite=True)
    except LsrInputError as err:  # (synth's advice names a flag lsr demo does not have)
        raise LsrInputError(
            f"{err.problem.split('; in the way')[0]}: lsr demo keeps seed {seed}'s data here; "
            "if it is an earlier demo's that was interrupted, delete the folder and run lsr "
            "demo again, else choose another --out",
            data_dir,
        ) from None
    t0 = time.perf_counter()
    manifest = synthetic.generate_dataset(scfg, seed=seed, out_dir=data_dir, overwrite=True)
    err = manifest["tables"]["expert_error"]
    say(
        f"[seed {seed}] data: {len(manifest['train'])} training slides, "
        f"{len(manifest['test'])} test patches in {time.perf_counter() - t0:.0f} s; "
        f"classifier block DICE {manifest['classifier']['block_dice_train']:.3f}; "
        f"expert table error {_fmt_error(err)}"
    )
    return manifest


def _fmt_error(err: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in err.items() if isinstance(v, (int, float)))


def _synthetic_path(name: str) -> Path:
    from lsr.synthetic_config import shipped_config

    p = Path(name)
    if p.suffix:
        return p
    shipped = shipped_config(name)
    if shipped is None:
        raise LsrInputError(f"no shipped synthetic config named '{name}'")
    return shipped


def train_loss(
    cfg: DemoConfig, loss: str, seed: int, manifest: dict, out: Path, say: Progress
) -> Path:
    """Train (or resume, or reuse) one network; returns its run folder."""
    from lsr.train import DataPair, TrainConfig, train

    run_dir = out / "runs" / f"seed{seed}" / loss
    run_json = run_dir / "run.json"
    done = read_json_object(run_json) or {}  # damaged: resumed from the run's checkpoint
    if done.get("status") == "completed":
        say(f"[seed {seed}] {loss}: reusing {run_dir}")
        return run_dir
    data_dir = _root(out, seed) / "train"
    overrides = {**cfg.train, **cfg.per_loss.get(loss, {})}
    if "init_from" in overrides:  # the name of a loss trained before: its run of this seed
        overrides["init_from"] = str(out / "runs" / f"seed{seed}" / overrides["init_from"])
    tcfg = TrainConfig(
        data=[DataPair(str(data_dir / s["image"]), str(data_dir / s["grid"]))
              for s in manifest["train"]],
        table=str(_root(out, seed) / manifest["tables"]["expert"]),
        block_px=int(manifest["block_px"]),
        working_mpp=float(manifest["working_mpp"]),
        loss=loss,
        seed=seed,
        out_dir=str(run_dir),
        **overrides,
    )  # fmt: skip
    if has_checkpoint(run_dir):
        tcfg.resume = str(run_dir)
    elif run_json.exists():  # an attempt that stopped before its first checkpoint: start again
        tcfg.overwrite = True
    t0 = time.perf_counter()
    last = [0.0]

    class _Say:
        def on_start(self, event: Any) -> None:
            say(f"[seed {seed}] {loss}: training on {event.device}, {tcfg.steps} steps")

        def on_step(self, event: Any) -> None:
            now = time.perf_counter()
            if now - last[0] > 30 or event.step == tcfg.steps:
                last[0] = now
                say(f"[seed {seed}] {loss}: step {event.step}/{tcfg.steps} loss {event.loss:.4g}")

    result = train(tcfg, callbacks=[_Say()])
    say(f"[seed {seed}] {loss}: {result.status} in {time.perf_counter() - t0:.0f} s")
    if not result.ok:
        say(f"[seed {seed}] {loss}: WARNING {result.failure}")
    return run_dir


def predict_patch(model: Any, rgb: np.ndarray) -> np.ndarray:
    """Cancer probability (H, W) float32 of one in-memory test patch (tiled inference)."""
    from lsr.infer import predict_array

    return predict_array(model, rgb)


def evaluate_seed(
    cfg: DemoConfig, seed: int, manifest: dict, runs: dict[str, Path], out: Path, say: Progress
) -> dict:
    """Predict the test patches with every network and score all rows against ground truth."""
    from lsr import model as lsr_model
    from lsr.baseline import low_res_mask
    from lsr.metrics import calibration_table, pooled_scores

    data_dir = _root(out, seed) / "test"
    block_px = int(manifest["block_px"])
    band = float(manifest.get("band_px") or block_px)
    patches = [_load_patch(data_dir, p, block_px) for p in manifest["test"]]
    gts = [p["gt"] for p in patches]
    masks: dict[str, list[np.ndarray]] = {
        "low_res": [low_res_mask(p["probs"], block_px, p["gt"].shape) for p in patches]
    }
    probs: dict[str, list[np.ndarray]] = {}
    for loss, run_dir in runs.items():
        net, _meta = lsr_model.load(run_dir)
        probs[loss] = [predict_patch(net, p["rgb"]) for p in patches]
        masks[loss] = [pm >= 0.5 for pm in probs[loss]]
    rows = {name: pooled_scores(masks[name], gts, band=band) for name in masks}
    z_grids = [p["z"] for p in patches]
    calib = {loss: calibration_table(probs[loss], z_grids, block_px) for loss in probs}
    calib["ground_truth"] = calibration_table([g.astype(np.float32) for g in gts], z_grids,
                                              block_px)  # fmt: skip
    summary = ", ".join(f"{k} {rows[k]['masked_iou']:.3f}" for k in rows)
    say(f"[seed {seed}] masked IoU: {summary}")
    return {"rows": rows, "calibration": calib, "patches": patches, "masks": masks}


def _root(out: Path, seed: int) -> Path:
    return out / "data" / f"seed{seed}"


def _load_patch(data_dir: Path, entry: dict, block_px: int) -> dict:
    from lsr.grid import load_grid
    from lsr.slide import open_slide

    with open_slide(data_dir / entry["image"]) as s:
        h, w = s.shape
        rgb = s.read_level(0, 0, 0, h, w)
    with open_slide(data_dir / entry["ground_truth"]) as g:
        gt = g.read_level(0, 0, 0, h, w)
    gt = np.asarray(gt)
    if gt.ndim == 3:
        gt = gt[..., 0]
    grid = load_grid(data_dir / entry["grid"], block_px=block_px)
    return {"name": entry["name"], "rgb": rgb, "gt": gt > 0, "probs": grid.probs, "z": grid.z}


# ---------------------------------------------------------------------------- outputs
def _versions() -> dict[str, str]:
    import torch

    return {"napari-lsr": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}  # fmt: skip


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Mean ± std over seeds of each row's pooled scores, and paired differences."""
    seeds = sorted(per_seed)
    rows: dict[str, dict] = {}
    names = [r for r in ROWS if all(r in per_seed[s]["rows"] for s in seeds)]
    for name in names:
        row: dict[str, Any] = {}
        for m in METRICS:
            vals = np.array([per_seed[s]["rows"][name][m] for s in seeds], dtype=float)
            row[m] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            row[f"{m}_per_seed"] = vals.tolist()
        rows[name] = row
    pairs = [(a, b) for a, b in [("intra", "low_res"), ("inter", "low_res"),
                                 ("intra_inter", "low_res"), ("intra_inter", "intra"),
                                 ("intra_inter", "inter"), ("intra_plus_inter", "low_res"),
                                 ("intra_plus_inter", "intra"),
                                 ("intra_plus_inter", "intra_inter")]
             if a in rows and b in rows]  # fmt: skip
    diffs = {}
    for a, b in pairs:
        d = np.array(rows[a]["masked_iou_per_seed"]) - np.array(rows[b]["masked_iou_per_seed"])
        # one seed has no standard error: None (JSON null; NaN is not JSON, jq refuses it)
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        diffs[f"{a} - {b}"] = {"masked_iou_diff": float(d.mean()), "paired_se": se,
                               "per_seed": d.tolist()}  # fmt: skip
    return {"rows": rows, "paired_differences": diffs}


def results_markdown(result: dict) -> str:
    """Table 2 layout: our masked IoU/DICE (mean ± std over seeds) beside the paper's."""
    rows = result["rows"]
    n = len(result["seeds"])
    lines = [
        f"# Results: masked IoU / DICE (Table 2 layout), {n} seed(s)",
        "",
        f"Synthetic config `{result['config']['synthetic']}`, band {result['band_px']:g} px "
        f"(one block), {result['n_test_patches']} test patches per seed.",
        "",
        "| method | masked IoU | masked DICE | IoU | DICE | paper masked IoU | paper masked DICE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        if name not in rows:
            continue
        r = rows[name]

        def fmt(m: str, r: dict = r) -> str:
            return f"{r[m]:.4f}" + (f" ± {r[m + '_std']:.4f}" if n > 1 else "")

        paper = PAPER_TABLE2.get(name)
        p_iou, p_dice = (f"{paper[0]:.4f}", f"{paper[1]:.4f}") if paper else ("–", "–")
        cells = [fmt(m) for m in METRICS]
        lines.append(f"| {ROW_NAMES[name]} | {' | '.join(cells)} | {p_iou} | {p_dice} |")
    if result.get("paired_differences"):
        lines += ["", "Paired differences of masked IoU (mean over seeds, paired standard error):",
                  "", "| difference | mean | paired SE |", "|---|---|---|"]  # fmt: skip
        for k, d in result["paired_differences"].items():
            se = "–" if d["paired_se"] is None else f"{d['paired_se']:.4f}"
            lines.append(f"| {k} | {d['masked_iou_diff']:+.4f} | {se} |")
        if n < 2:
            lines += ["", "One seed has no standard error: `lsr demo --seeds 5` gives one."]
    lines.append("")
    return "\n".join(lines)


def table1_markdown(manifest: dict, root: Path) -> str:
    """The simulated expert's count table beside the true p(c|z) of the training slides."""
    from lsr.counttable import CountTable

    expert = CountTable.load(root / manifest["tables"]["expert"])
    true = CountTable.load(root / manifest["tables"]["true"])
    lines = ["# Count table: simulated expert vs true p(c|z)", "",
             "Cancer percentage per bin, mean ± std.", "",
             "| bin (%) | expert | n | true (all blocks) | n |",
             "|---|---|---|---|---|"]  # fmt: skip
    for b, label in enumerate(expert.bin_labels()):
        e = f"{100 * expert.eta[b, 0]:.1f} ± {100 * expert.rho[b, 0]:.1f}"
        t = f"{100 * true.eta[b, 0]:.1f} ± {100 * true.rho[b, 0]:.1f}"
        ne = "" if expert.n is None else int(expert.n[b])
        nt = "" if true.n is None else int(true.n[b])
        lines.append(f"| {label} | {e} | {ne} | {t} | {nt} |")
    err = np.abs(expert.eta[:, 0] - true.eta[:, 0])
    lines += ["", f"Mean absolute error of the expert's means: {100 * err.mean():.2f} "
              f"percentage points (max {100 * err.max():.2f}).", ""]  # fmt: skip
    return "\n".join(lines)


def calibration_markdown(calib: dict, manifest: dict, root: Path) -> str:
    """Per bin: predicted cancer fraction of held-out blocks vs the count table."""
    from lsr.counttable import CountTable
    from lsr.metrics import calibration_error

    table = CountTable.load(root / manifest["tables"]["expert"])
    names = [k for k in ("ground_truth", *ROWS[1:]) if k in calib]
    head = " | ".join(["bin (%)", "table η ± ρ", *names])
    lines = ["# Calibration: predicted cancer fraction per z on held-out blocks (%)", "",
             f"| {head} |", "|" + "---|" * (len(names) + 2)]  # fmt: skip
    for b, label in enumerate(table.bin_labels()):
        cells = [label, f"{100 * table.eta[b, 0]:.1f} ± {100 * table.rho[b, 0]:.1f}"]
        for k in names:
            row = calib[k][b]
            cells.append(
                "–"
                if row["mean"] is None
                else f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} (n={row['n']})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    errors = {k: calibration_error(calib[k], table.eta[:, 0]) for k in names if k != "ground_truth"}
    text = ", ".join(f"{k} {100 * e:.1f}" for k, e in errors.items() if e is not None)
    if text:
        lines += ["", f"Block-weighted distance from the table (points): {text}."]
    lines.append("")
    return "\n".join(lines)


def write_outputs(
    cfg: DemoConfig, out: Path, seeds: Sequence[int], per_seed: dict[int, dict],
    manifests: dict[int, dict],
) -> dict:  # fmt: skip
    """Write results.json/.md, fig4.png, fig3.png, table1.md, calibration.md and GeoJSON."""
    from lsr import figures
    from lsr.geojson import export_geojson, mask_to_polygons

    first = seeds[0]
    manifest = manifests[first]
    ev = per_seed[first]
    block_px = int(manifest["block_px"])
    band = float(manifest.get("band_px") or block_px)
    px_per_mm = 1000.0 / float(manifest["working_mpp"])
    agg = aggregate({s: per_seed[s] for s in seeds})
    result = {
        "rows": agg["rows"],
        "paired_differences": agg["paired_differences"],
        "per_seed": {str(s): {k: {m: v[m] for m in METRICS} for k, v in per_seed[s]["rows"].items()}
                     for s in seeds},
        "calibration": ev["calibration"],
        "config": dataclasses.asdict(cfg),
        "seed": first,
        "seeds": list(seeds),
        "band_px": band,
        "block_px": block_px,
        "working_mpp": float(manifest["working_mpp"]),
        "n_test_patches": len(ev["patches"]),
        "classifier": manifest.get("classifier"),
        "expert_table_error": manifest["tables"].get("expert_error"),
        "versions": _versions(),
    }  # fmt: skip
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(result))
    root = _root(out, first)
    atomic_write_text(out / "table1.md", table1_markdown(manifest, root))
    atomic_write_text(
        out / "calibration.md", calibration_markdown(ev["calibration"], manifest, root)
    )

    patches, masks = ev["patches"], ev["masks"]
    # The patches with the most boundary first: they show the differences best.
    order = sorted(
        range(len(patches)),
        key=lambda i: -ev["rows"]["low_res"]["per_patch"][i].get("band_pixels", 0),
    )
    shown = order[: cfg.n_fig4]  # fmt: skip
    figures.fig4(
        out / "fig4.png",
        [(patches[i]["rgb"], {**{k: masks[k][i] for k in masks},
                              "ground_truth": patches[i]["gt"]}) for i in shown],
        px_per_mm=px_per_mm,
        titles=[patches[i]["name"] for i in shown],
    )  # fmt: skip
    figures.fig3(out / "fig3.png", patches[order[0]]["rgb"], patches[order[0]]["gt"],
                 band=band, px_per_mm=px_per_mm)  # fmt: skip
    geo_dir = out / "geojson"
    empty: dict[str, list[str]] = {}  # boundary → patches where it is empty (one line, not N)
    for i, p in enumerate(patches):
        # Test patches are stored at working resolution: level-0 pixels = working pixels.
        geoms = {k: mask_to_polygons(masks[k][i]) for k in masks}
        geoms["ground_truth"] = mask_to_polygons(p["gt"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # said once below
            left_out = export_geojson(geo_dir / f"{p['name']}.geojson", geoms)
        for k in left_out:
            empty.setdefault(k, []).append(p["name"])
    if empty:
        warnings.warn(
            f"{geo_dir}: empty boundaries, not exported: "
            + "; ".join(f"{k} in {len(v)} of {len(patches)} patches" for k, v in empty.items()),
            stacklevel=2,
        )
    return result


# ---------------------------------------------------------------------------- driver
def run_demo(
    out: str | PathLike[str],
    *,
    config: DemoConfig | None = None,
    seeds: Sequence[int] = (0,),
    quick: bool = False,
    say: Progress = _print,
) -> dict:
    """Run the demo into ``out`` and return the results dict (also in results.json)."""
    cfg = config or DemoConfig.load(None, quick=quick)
    if not seeds:
        raise LsrInputError("no seeds to run (--seeds must be ≥ 1)")
    cfg.check()
    out = Path(out)
    claim_out_dir(out)
    t0 = time.perf_counter()
    per_seed, manifests = {}, {}
    for seed in seeds:
        manifests[seed] = make_data(cfg, seed, out, say)
        runs = {loss: train_loss(cfg, loss, seed, manifests[seed], out, say)
                for loss in cfg.losses}  # fmt: skip
        per_seed[seed] = evaluate_seed(cfg, seed, manifests[seed], runs, out, say)
    result = write_outputs(cfg, out, list(seeds), per_seed, manifests)
    result["elapsed_s"] = time.perf_counter() - t0
    return result
