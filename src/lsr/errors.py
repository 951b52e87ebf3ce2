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

    def __init__(
        self, problem: str, path: str | PathLike[str] | None = None, where: str | None = ""
    ):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.where = where or ""
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}")
        if where:
            parts.append(where)
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


def check_version(
    data: dict,
    version: int,
    what: str,
    path: str | PathLike[str] | None,
    error: type[LsrInputError] = LsrInputError,
) -> None:
    """Refuse a JSON file whose ``version`` (default: ``version``) is not the one this code
    reads, saying a newer napari-lsr may have written it; ``what`` names the kind of file."""
    found = data.get("version", version)
    if type(found) is not int or found != version:
        raise error(
            f"{what} version {found!r} is not one this napari-lsr reads (version {version}); "
            "a newer napari-lsr wrote it?",
            path,
        )


def os_problem(err: OSError, path: str | PathLike[str] | None = None) -> str:
    """One line for an OSError on a path the user gave (an output that is a file, a folder
    or not writable): where (``err.filename``, else ``path``) and what is wrong, in words."""
    what = {
        FileExistsError: "a file is in the way (a folder was expected)",
        NotADirectoryError: "a file is in the way (a folder was expected)",
        IsADirectoryError: "is a folder (a file was expected)",
        PermissionError: "permission denied (not writable?)",
    }.get(type(err), err.strerror or str(err))
    where = err.filename if err.filename is not None else path
    return f"{where}: {what}" if where is not None else what
