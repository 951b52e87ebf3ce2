"""Shared test set-up: GUI tests need napari's fixtures; the engine tests do not."""

from __future__ import annotations

import os

# A real X server (pytest-xvfb) with the xcb platform: offscreen crashes with image layers.
os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
