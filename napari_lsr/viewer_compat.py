"""Camera and canvas size across napari versions (the widgets support napari >= 0.5)."""

from __future__ import annotations

import warnings
from typing import Any


def camera(viewer: Any) -> Any:
    """The 2-D camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def canvas_size(viewer: Any) -> tuple[int, int]:
    """(h, w) of the canvas in screen px: ``viewer.canvas.size`` from napari 0.9, before it
    the private ``viewer._canvas_size``; (600, 800) while the canvas has no size yet."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            size = getattr(viewer, "_canvas_size", None)
    return tuple(size) if size and min(size) > 0 else (600, 800)
