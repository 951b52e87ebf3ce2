"""``lsr demo``: the whole pipeline on synthetic slides (see :mod:`lsr.demo`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markdown import Markdown

from lsr.cli.console import QuietOnBrokenPipe, interrupted


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="output folder"),
    config: Path | None = typer.Option(None, "--config", help="demo config (TOML)"),
    seeds: int = typer.Option(1, "--seeds", help="number of seeds (--seed .. --seed + N - 1)"),
    seed: int = typer.Option(0, "--seed", min=0, help="first seed"),
    quick: bool = typer.Option(False, "--quick", help="tiny run (minutes): checks the pipeline"),
) -> None:
    """Generate data, build the count table, train intra/inter/intra+inter, evaluate (Table 2)."""
    from lsr.demo import DemoConfig, run_demo

    cfg = DemoConfig.load(config, quick=quick)
    try:
        result = run_demo(out, config=cfg, seeds=list(range(seed, seed + seeds)), quick=quick)
    except KeyboardInterrupt:
        raise interrupted(
            f"the finished stages are kept in {out}; run the same command again to continue "
            "where it stopped"
        ) from None
    console = QuietOnBrokenPipe()
    console.print(Markdown((out / "results.md").read_text()))
    console.print(f"\nfinished in {result['elapsed_s'] / 60:.1f} min; files in {out.resolve()}:")
    for name in ("results.json", "results.md", "fig4.png", "fig3.png", "table1.md",
                 "calibration.md", "geojson/"):  # fmt: skip
        console.print(f"  {out / name}")
