"""Camera and canvas size across napari versions (the widgets support napari >= 0.5), and
background workers that napari frees."""

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


def make_worker(func: Any, *args: Any, **kwargs: Any) -> Any:
    """A napari ``FunctionWorker`` running ``func(*args, **kwargs)``, not started; errors go
    to its ``errored`` signal only.

    Not ``napari.qt.threading.create_worker``: it registers every worker in the window's
    task list with ``worker.quit`` as cancel callback and never removes it (napari 0.9), so
    each worker, its function's closure and what that holds (a comparison's slide-sized
    masks, a slide layer the user deleted) lived as long as the window. superqt's
    ``create_worker`` (which napari's wraps) with napari's worker class keeps napari's
    warning notifications.
    """
    from napari.qt.threading import FunctionWorker
    from superqt.utils import create_worker

    return create_worker(
        func, *args, _start_thread=False, _worker_class=FunctionWorker, _ignore_errors=True,
        **kwargs,
    )  # fmt: skip
