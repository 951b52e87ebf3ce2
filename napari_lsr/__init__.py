"""napari-lsr: the napari plugin. Thin: every computation lives in :mod:`lsr`."""

from lsr import __version__

__all__ = ["__version__"]
