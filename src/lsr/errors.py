"""Errors raised for bad user input.

One exception type so the CLI and the plugin can show a single clear message (naming the
problem and the file) instead of a traceback.
"""

from __future__ import annotations

from os import PathLike


class LsrInputError(ValueError):
    """Bad input from the user: a malformed file, wrong sizes, NaN, an empty bin, ...

    ``str(err)`` is a complete message for a person: it names the file (when there is
    one), the place in it (row, key, ...) and the problem.
    """

    def __init__(self, problem: str, path: str | PathLike[str] | None = None, where: str = ""):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.where = where
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}")
        if where:
            parts.append(where)
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)
