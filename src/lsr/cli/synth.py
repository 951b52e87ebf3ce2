"""``lsr synth``: generate the synthetic H&E benchmark (slides, ground truth, grids, tables)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from lsr.cli.console import interrupted
from lsr.counttable import CountTable


def synth(
    config: str = typer.Argument(
        "default", help="config .toml/.json, or a shipped name: default, paper_scale, ..."
    ),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="random seed: same seed, same data"),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="output folder: new or empty, or an earlier lsr synth data set (see --overwrite); "
        "a folder holding anything else is refused",
    ),
    n_slides: int | None = typer.Option(
        None, "--n-slides", min=1, help="training slides (default: the config's)"
    ),
    n_test: int | None = typer.Option(
        None, "--n-test", min=0, help="test patches (default: the config's)"
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-j", help="processes (default: all CPUs, at most 4)"
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the lsr synth data set already in --out (finished or interrupted): its "
        "files are deleted, manifest first, before the new one is written; files lsr synth "
        "did not write are kept. Without it, lsr synth refuses a folder that holds one.",
    ),
) -> None:
    """Generate training slides, test patches, the expert's and the true count table.

    Prints the simulated classifier's block-level DICE and the expert table's error.
    """
    from lsr.synthetic import generate_dataset, load_config

    cfg = load_config(config)
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=None)

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=stage)

        try:
            manifest = generate_dataset(
                cfg, seed, out, n_slides=n_slides, n_test_patches=n_test, workers=workers,
                progress=report, overwrite=overwrite,
            )  # fmt: skip
        except KeyboardInterrupt:
            from lsr.synthetic import UNFINISHED

            if (out / UNFINISHED).is_file():
                raise interrupted(
                    f"{out} holds an unfinished data set ({UNFINISHED}); run the same command "
                    "with --overwrite to generate it again"
                ) from None
            raise interrupted(f"nothing was generated in {out}") from None
    expert = CountTable.from_json(out / "table_expert.json")
    truth = CountTable.from_json(out / "table_true.json")
    tab = Table(title=f"count table: simulated expert vs truth ({cfg.name}, seed {seed})")
    for col in ("bin %", "expert cancer %", "true cancer %", "expert n", "blocks"):
        tab.add_column(col, justify="right")

    def cell(table: CountTable, b: int) -> str:
        text = f"{100 * table.eta[b, 0]:.1f} ± {100 * table.rho[b, 0]:.1f}"
        if table.n is not None and table.n[b] == 0:  # nothing measured: the fallback's values
            return f"[dim]({text} fallback)[/dim]"
        return text

    for b, label in enumerate(expert.bin_labels()):
        tab.add_row(
            label,
            cell(expert, b),
            cell(truth, b),
            str(int(expert.n[b])) if expert.n is not None else "",
            str(int(truth.n[b])) if truth.n is not None else "",
            style="yellow" if (b in expert.flagged or b in truth.flagged) else None,
        )
    console.print(tab)
    clf, err = manifest["classifier"], manifest["tables"]["expert_error"]

    def fmt(v: float | None, pct: bool = False) -> str:
        return "n/a" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:.3f}")

    console.print(
        f"classifier block DICE (block = cancer if >= "
        f"{100 * clf['block_truth_fraction']:.0f} % cancer): train {fmt(clf['block_dice_train'])}, "
        f"test {fmt(clf['block_dice_test'])}"
    )
    console.print(
        f"expert table error vs true p(c|z): mean |Δη| {fmt(err['eta_mae'], True)}, "
        f"max |Δη| {fmt(err['eta_max'], True)}, mean |Δρ| {fmt(err['rho_mae'], True)} "
        f"over {err['n_bins']} bins"
    )
    console.print(
        f"{len(manifest['train'])} slides, {len(manifest['test'])} test patches in {out} "
        f"({manifest['seconds']:.1f} s); manifest: {out / 'manifest.json'}"
    )
