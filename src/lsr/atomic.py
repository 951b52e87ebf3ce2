"""Atomic file writes: nothing the user made is ever left half-written.

Everything the project saves (tables, annotations, checkpoints, exports) goes through
:func:`atomic_path`: the data is written to a temporary file in the same folder, flushed
to disk and renamed over the target in one step, so a crash leaves either the old file or
the new one, never a truncated mix. The temporary files and folders that become the user's
files get the permissions a plain ``open``/``mkdir`` would give (0o666/0o777 less the
umask; an overwritten file keeps its own), not :mod:`tempfile`'s private 0o600/0o700, so
exports and models stay readable by whoever could read the folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask; read from /proc where possible (``os.umask`` can only swap it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """Permissions a plain ``open`` (0o666) or ``mkdir`` (0o777) gives under the umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def make_temp_dir(prefix: str, parent: str | os.PathLike[str]) -> Path:
    """A new uniquely named folder in ``parent`` with :func:`default_mode` permissions, to be
    filled and renamed into place (``tempfile.mkdtemp`` alone makes it owner-only)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, default_mode(directory=True))
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps the target's suffix (``suffix`` overrides), so libraries that
    pick a format from the file name (tifffile, safetensors, ...) behave as for the target.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.tmp-",
        suffix=target.suffix if suffix is None else suffix,
        dir=target.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            mode = stat.S_IMODE(target.stat().st_mode)  # an overwritten file keeps its mode
        except FileNotFoundError:
            mode = default_mode()
        os.chmod(tmp, mode)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
