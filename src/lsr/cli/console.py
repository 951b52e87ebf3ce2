"""Terminal output of the ``lsr`` commands that survives its reader going away."""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console


def silence_stream(stream: object) -> None:
    """Point ``stream`` (sys.stdout or sys.stderr) at /dev/null, so later writes (warnings,
    Python's flush at exit) do not meet the closed pipe again."""
    if stream is sys.stderr or stream is sys.stdout:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())  # type: ignore[attr-defined]


class QuietOnBrokenPipe(Console):
    """A console that goes quiet when its reader goes away (``lsr train 2>&1 | head``, a
    closed log viewer) instead of ending the process.

    Why: rich's default raises ``SystemExit(1)`` from whatever print met the broken pipe;
    inside a training callback that failed the run mid-way ("SystemExit: 1" in run.json, the
    remaining steps lost) for the sake of a progress line. The run goes on; its outcome is in
    ``run.json`` and its checkpoints. The process's stderr then points at /dev/null, so the
    warnings and Python's exit-time flush do not meet the pipe again.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stream(self.file)


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it), so
#: scripts never take a stopped command for a finished one.
EXIT_INTERRUPTED = 130


def interrupted(what_is_left: str) -> SystemExit:
    """Print one line on stderr saying what a Ctrl-C left on disk and how to go on; return
    the exit to raise (``raise interrupted(...) from None``)."""
    QuietOnBrokenPipe(stderr=True).print(
        f"[yellow]interrupted[/yellow]: {what_is_left}", highlight=False
    )
    return SystemExit(EXIT_INTERRUPTED)
