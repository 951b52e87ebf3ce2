"""Shared test set-up: GUI tests need napari's fixtures; the engine tests do not."""

from __future__ import annotations

import os

# A real X server (pytest-xvfb) with the xcb platform: offscreen crashes with image layers.
os.environ.setdefault("QT_QPA_PLATFORM", "xcb")

import pytest


@pytest.fixture(autouse=True)
def _own_user_data_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Every test its own user data folder (platformdirs reads XDG_DATA_HOME at each call):
    a Trainer opened by a test starts in the default models folder and watches a run still
    training there, and a test that closes its viewer with "stop" would stop it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
