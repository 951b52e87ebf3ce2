"""Atomic file writes: nothing the user made is ever left half-written.

Everything the project saves (tables, annotations, checkpoints, exports) goes through
:func:`atomic_path`: the data is written to a temporary file in the same folder, flushed
to disk and renamed over the target in one step, so a crash leaves either the old file or
the new one, never a truncated mix. The temporary files and folders that become the user's
are created as a plain ``open``/``mkdir`` creates them (mode 0o666/0o777, so the kernel
applies the umask, a setgid folder's group and default ACLs), not with :mod:`tempfile`'s
owner-only 0o600/0o700; an overwritten file keeps its own mode. So exports and models stay
readable by whoever could read the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path


def _unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], object]) -> Path:
    """``create(path)`` on a fresh random name in ``parent`` (retried if it exists)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {parent}")  # pragma: no cover


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def make_temp_dir(prefix: str, parent: str | os.PathLike[str]) -> Path:
    """A new uniquely named folder in ``parent``, made as ``mkdir`` makes one (umask, setgid
    group, default ACLs apply), to be filled and renamed into place."""
    return _unique(Path(parent), prefix, "", lambda p: os.mkdir(p, 0o777))


#: A temporary name of :func:`atomic_path` (``.<stem>.tmp-<hex><suffix>``) or of a
#: :func:`make_temp_dir` folder named that way (``.<name>.tmp-<hex>``).
_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.tmp-[0-9a-f]{12}(?P<suffix>\.[A-Za-z0-9]+)?")


def temp_target(name: str) -> str | None:
    """The name a temporary file or folder ``name`` was to become (``.a.tmp-<hex>.tif`` →
    ``a.tif``), or None when ``name`` is not one of ours."""
    m = _TEMP_NAME.fullmatch(name)
    return None if m is None else m["stem"] + (m["suffix"] or "")


def remove_leftover_temps(
    folder: str | os.PathLike[str],
    targets: Callable[[str], bool],
    *,
    min_age_s: float = 0.0,
    staging_prefixes: tuple[str, ...] = (),
) -> list[Path]:
    """Delete the temporary files and folders a killed write left in ``folder``: those whose
    target name ``targets`` accepts, and folders starting with one of ``staging_prefixes``;
    only when unchanged for ``min_age_s`` seconds (another process may still be writing).
    Why: SIGKILL, a power cut or the OOM killer skip the clean-up, and such files can be as
    large as a slide's probability map. Returns what was deleted."""
    import shutil
    import time

    root = Path(folder)
    if not root.is_dir():
        return []
    now, removed = time.time(), []
    for entry in root.iterdir():
        target = temp_target(entry.name)
        staging = bool(staging_prefixes) and entry.name.startswith(staging_prefixes)
        staging = staging and entry.is_dir()
        if not (staging or (target is not None and targets(target))):
            continue
        try:
            if min_age_s > 0 and now - _last_change(entry) < min_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def _last_change(path: Path) -> float:
    """Newest modification time (s) of ``path`` and, for a folder, of everything in it: a
    folder's own time does not change while a file in it is written."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file keeps the target's suffix (``suffix`` overrides), so libraries that
    pick a format from the file name (tifffile, safetensors, ...) behave as for the target.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    if target.is_dir():  # (else the rename fails naming the temporary file)
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    ext = target.suffix if suffix is None else suffix
    tmp = _unique(target.parent, f".{target.stem}.tmp-", ext, _create_file)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):  # an overwritten file keeps its mode,
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))  # set after the writing
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
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


def check_replaceable(
    path: str | os.PathLike[str], ours: Callable[[Path], bool], what: str, option: str
) -> None:
    """Refuse a target that exists and is not a file of the kind about to be written there.

    Why: writing is atomic, but a wrong name (the slide, its grid's sidecar, notes) would still
    replace the user's file with ours. ``ours(path)`` says whether the existing file is
    ``what`` (replacing an older one is normal); any exception in it counts as "not ours".
    """
    from lsr.errors import LsrInputError

    p = Path(path)
    if p.is_dir():
        raise LsrInputError(f"is a folder; {option} needs a file name", p)
    if not p.exists():
        return
    try:
        is_ours = bool(ours(p))
    except Exception:
        is_ours = False
    if not is_ours:
        raise LsrInputError(
            f"exists and is not {what}; refusing to overwrite it: choose another {option}, "
            "or move the file away",
            p,
        )
