"""The training study's arms (configs/study/arms.toml, benchmarks/study.py) stay runnable.

An arm that no longer resolves to a valid training config, names a synthetic config that does
not ship, or reuses another arm's runs under different settings would only fail hours into
a study run; these checks catch that in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.synthetic_config import load_config
from lsr.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _study()
ARMS = study.load_arms()


def _resolved(arm: dict, loss: str) -> TrainConfig:
    over = study._overrides(study.demo_config(arm), loss)
    over.pop("synthetic")
    return TrainConfig(loss=loss, **over).resolved()


@pytest.mark.parametrize("name", sorted(ARMS))
def test_every_arm_resolves_to_valid_training_configs(name: str) -> None:
    arm = ARMS[name]
    cfg = study.demo_config(arm)
    load_config(cfg.synthetic)  # a shipped config name, as lsr.demo resolves it
    assert cfg.losses, name
    for loss in cfg.losses:
        tc = _resolved(arm, loss)  # raises on a bad setting
        # every arm pins what the shipped defaults have changed, so it means what it meant
        assert tc.lr == arm["per_loss"][loss]["lr"], (name, loss)
        pinned = {**arm.get("train", {}), **arm["per_loss"][loss]}
        assert "variance_norm" in pinned, (name, loss)
        if loss != "intra":
            assert "groups_per_batch" in pinned and "group_size" in pinned, (name, loss)


def test_reused_runs_come_from_arms_with_identical_settings() -> None:
    pairs = [(name, loss, other) for name, arm in ARMS.items()
             for loss, others in arm.get("reuse", {}).items()
             for other in ([others] if isinstance(others, str) else others)]  # fmt: skip
    assert pairs  # the file does use reuse
    for name, loss, other in pairs:
        assert other in ARMS, (name, other)
        assert loss in study.demo_config(ARMS[other]).losses, (name, loss, other)
        mine = study._overrides(study.demo_config(ARMS[name]), loss)
        theirs = study._overrides(study.demo_config(ARMS[other]), loss)
        assert mine == theirs, (name, loss, other)


def test_parse_seeds() -> None:
    assert study._parse_seeds("0-2,5") == [0, 1, 2, 5]
    assert study._parse_seeds("3") == [3]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-1, 1), min_size=0, max_size=6), min_size=1, max_size=4))
def test_pooled_mean_and_std_match_the_concatenated_values(groups: list[list[float]]) -> None:
    cells = [{"n": len(g), "mean": float(np.mean(g)) if g else 0.0,
              "std": float(np.std(g)) if g else 0.0} for g in groups]  # fmt: skip
    n, mean, std = study._pool(cells)
    values = [v for g in groups for v in g]
    assert n == len(values)
    if not values:
        assert mean is None and std is None
    else:
        assert mean == pytest.approx(np.mean(values), abs=1e-9)
        assert std == pytest.approx(np.std(values), abs=1e-6)
