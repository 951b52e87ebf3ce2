"""``lsr predict``: predict cancer on whole slides with a trained network, one folder per slide.

Examples::

    lsr predict slides/*.svs --model runs/intra_inter --out predictions
    lsr predict a.tif b.tif --model runs/intra --out out --workers 2         # local dask cluster
    lsr predict slides/*.svs --model m --out out --scheduler tcp://head:8786  # a cluster

Each slide gets ``OUT/<slide name>/`` with ``probability.tif``, ``mask.tif``,
``boundaries.geojson`` (QuPath, level-0 px) and ``summary.json``. Slides with a complete
summary made from the same slide file by the same weights with the same result-changing
options are skipped (re-run to resume; other ones are redone); a failing slide writes
``error.txt`` and the others go on; ``OUT/cohort.json`` lists every slide. Exit code 1 if
any slide failed. A slide folder holding files of these names that lsr predict did not
write is refused before any slide runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from lsr.cli.console import QuietOnBrokenPipe, interrupted
from lsr.slide import WORKING_MPP


def _result_line(res: Any) -> str:
    """One line per slide (with its scale: the µm/px read and the network's), then one
    line per warning of its summary."""
    if res.status == "failed":
        return f"[red]✗ {escape(res.name)}[/red]  failed: {escape(res.error)}"
    if res.status == "skipped":
        return f"[dim]- {escape(res.name)}  already done (skipped)[/dim]"
    s = res.summary or {}
    area = "" if res.cancer_area_mm2 is None else f"  cancer {res.cancer_area_mm2:.2f} mm²"
    scale = ""
    if s.get("mpp") and s.get("working_mpp"):
        scale = f"  {s['mpp']:.3g} µm/px, read at {s['working_mpp']:g} µm/px"
    lines = [f"[green]✓ {escape(res.name)}[/green]  {res.seconds:.1f} s{scale}{area}"]
    lines += [f"  [yellow]⚠ {escape(str(w))}[/yellow]" for w in s.get("warnings", ())]
    return "\n".join(lines)


def predict(
    slides: list[Path] = typer.Argument(..., help="Slide files (.svs, .tif, .ndpi, ...)."),
    model: Path = typer.Option(..., "--model", "-m", help="Training folder or checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder/slide)."),
    mpp: float | None = typer.Option(
        None,
        help="Level-0 µm/px of every slide, for files without a pixel size; it overrides "
        "the metadata of those that have one (with a warning when they differ by > 5 %).",
    ),
    working_mpp: float | None = typer.Option(
        None,
        help="µm/px the network works at (default: the one it was trained at, from the "
        f"checkpoint; {WORKING_MPP} for models that do not record it). Another value is "
        "used with a warning.",
    ),
    tile: str = typer.Option(
        "auto",
        help="Tile side in working px (a halo is added), or 'auto': as large as "
        "--tile-memory-mib of activations allows.",
    ),
    tile_memory_mib: float | None = typer.Option(
        None,
        help="Activation memory per batch for --tile auto (default: 1024 on CPU, "
        "half the free GPU memory on CUDA).",
    ),
    batch_size: int = typer.Option(1, help="Tiles per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    tissue: str = typer.Option("auto", help="'auto': skip background tiles; 'none'."),
    threshold: float = typer.Option(0.5, help="Probability threshold of the mask."),
    min_area_mm2: float = typer.Option(0.01, help="Drop boundary polygons smaller than this."),
    simplify_px: float = typer.Option(1.0, help="Boundary simplification (working px)."),
    probability_dtype: str = typer.Option("uint8", help="uint8 (0-255) or float32."),
    scheduler: str | None = typer.Option(
        None, help="'local' or a dask scheduler address (tcp://host:8786)."
    ),
    workers: int = typer.Option(1, help="Local dask workers (> 1: one slide per worker)."),
    threads: bool = typer.Option(False, help="Local dask workers as threads, not processes."),
    overwrite: bool = typer.Option(
        False,
        help="Redo every slide, also those already done by this model with these options "
        "(done by another model, threshold, ... or of a slide file changed since: always "
        "redone), and replace the outputs of another slide of the same name.",
    ),
) -> None:
    """Predict every SLIDE and write its outputs under OUT/<slide name>/."""
    from lsr.predict import PredictOptions, predict_cohort

    options = PredictOptions(
        mpp=mpp,
        working_mpp=working_mpp,
        tile=tile,
        tile_memory_mib=tile_memory_mib,
        batch_size=batch_size,
        device=device,
        tissue=tissue,
        threshold=threshold,
        min_area_mm2=min_area_mm2,
        simplify_px=simplify_px,
        probability_dtype=probability_dtype,
    )
    console = QuietOnBrokenPipe(stderr=True, soft_wrap=True)  # a closed pipe: predict on
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def on_start(slide: str):
        from lsr.predict import slide_name

        task = progress.add_task(slide_name(slide), total=None)
        tasks[slide] = task

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return update

    def on_result(res: Any) -> None:
        finished.append(res)
        if res.slide in tasks:
            progress.remove_task(tasks.pop(res.slide))
        progress.console.print(_result_line(res))

    finished: list[Any] = []
    try:
        with progress, warnings.catch_warnings():
            # every slide's warnings are in its summary and printed under its line
            warnings.simplefilter("ignore", UserWarning)
            results = predict_cohort(
                [str(s) for s in slides],
                model,
                out,
                options,
                scheduler=scheduler,
                workers=workers,
                processes=not threads,
                overwrite=overwrite,
                on_result=on_result,
                on_start=on_start,
            )
    except KeyboardInterrupt:
        done = sum(r.status == "done" for r in finished)
        raise interrupted(
            f"after {done} slide(s); finished slides are kept and the one in progress is "
            "marked unfinished, so the same command resumes where it stopped"
        ) from None
    failed = [r for r in results if r.status == "failed"]
    done = sum(r.status == "done" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    console.print(
        f"{done} predicted, {skipped} skipped, {len(failed)} failed; see {out / 'cohort.json'}"
    )
    if failed:
        raise typer.Exit(1)
