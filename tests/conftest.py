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


@pytest.fixture(autouse=True)
def _no_training_left_behind(monkeypatch):
    """Every training process a test launched ends with the test, pass or fail (a failed
    assertion before a test's own cancel left one using a core for the rest of the run)."""
    import subprocess

    from lsr import training_process as tp

    launched: list[tp.TrainingJob] = []
    real = tp.launch

    def recording(*args, **kwargs):
        job = real(*args, **kwargs)
        launched.append(job)
        return job

    monkeypatch.setattr(tp, "launch", recording)
    yield
    for job in launched:
        if job.alive:
            job.cancel()
    for job in launched:
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.process.kill()
            job.process.wait()
