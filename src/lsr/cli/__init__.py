"""The ``lsr`` command line: one typer app, one sub-module per command group."""

from __future__ import annotations

import sys
import warnings

import typer

from lsr.errors import LsrInputError, os_problem

app = typer.Typer(
    name="lsr",
    help="Label super-resolution: train cancer segmentation from low-resolution labels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the commands (imported here so ``import lsr.cli`` stays cheap)."""
    from lsr.cli import demo as demo_cli
    from lsr.cli import evaluate as evaluate_cli
    from lsr.cli import predict as predict_cli
    from lsr.cli import synth as synth_cli
    from lsr.cli import table
    from lsr.cli import train as train_cli

    app.command("demo")(demo_cli.demo)
    app.command("synth")(synth_cli.synth)
    app.add_typer(table.app, name="table")
    app.command("train")(train_cli.train)
    app.command("predict")(predict_cli.predict)
    app.command("evaluate")(evaluate_cli.evaluate)


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object) -> str:
    """Warnings as ``warning: <message>``: the user needs the message, not our source line."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lsr`` script: user errors print one line, not a traceback."""
    _register()
    warnings.formatwarning = _one_line_warning
    try:
        app(args=argv, prog_name="lsr")
    except LsrInputError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        _quiet_teardown()
        sys.exit(2)
    except FileNotFoundError as err:
        typer.secho(f"error: file not found: {err.filename}", fg="red", err=True)
        sys.exit(2)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        # an output path that is a file, a folder or not writable: the user's to fix
        typer.secho(f"error: {os_problem(err)}", fg="red", err=True)
        sys.exit(2)


def _quiet_teardown() -> None:
    """After the one error line, keep the exit quiet: a damaged tile that stops a read leaves
    zarr's other chunk reads pending in its event loop, and Python's shutdown reports each
    ("Task was destroyed but it is pending!", a dozen lines of asyncio) below the error."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
