"""Reading user ``.npy`` files with a message a user can act on.

Why: ``np.load(allow_pickle=False)`` on a file that is not a ``.npy`` at all (a CSV or text
saved under a ``.npy`` name) answers "Cannot load file containing pickled data when
allow_pickle=False", which sends the user hunting for a pickle. Pickles are never loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lsr.errors import LsrInputError

_MAGIC = b"\x93NUMPY"


def read_npy(path: str | os.PathLike[str], mmap: bool = False) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (memory-mapped when ``mmap``).

    Raises :class:`LsrInputError` naming the file when it is not a ``.npy`` file (saying
    what it starts with), holds Python objects, or is truncated.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(_MAGIC))
    except OSError as err:
        raise LsrInputError(f"cannot read: {err.strerror or err}", p) from None
    if head != _MAGIC:
        shown = head.decode("utf-8", "replace") if head else "nothing (an empty file)"
        raise LsrInputError(
            f"not a NumPy .npy file (it starts with {shown!r}, not NumPy's header): write "
            "it with numpy.save, or give a CSV or TIFF its own suffix",
            p,
        )
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise LsrInputError(
                "holds Python objects (a pickled object array), which lsr never loads: save a "
                "numeric array",
                p,
            ) from None
        raise LsrInputError(f"damaged .npy file ({err})", p) from None
    except (OSError, EOFError) as err:
        raise LsrInputError(f"damaged or truncated .npy file ({err})", p) from None


def is_single_channel(path: str | os.PathLike[str]) -> bool:
    """True when the file (.npy, TIFF, PNG …) holds a one-channel image (a mask, labels),
    read from its header only: an RGB(A) picture is never ground truth, nor a file a labels
    writer may replace. False for anything unreadable."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            from lsr.slide import quiet_tifffile

            with quiet_tifffile(), tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape
        else:
            from PIL import Image

            with Image.open(path) as im:
                return im.mode in ("1", "L", "I", "I;16", "F", "P")
    except Exception:
        return False
    squeezed = [d for d in shape if d != 1]
    return len(squeezed) == 2
