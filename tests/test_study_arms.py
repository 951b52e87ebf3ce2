"""The training study's arms (configs/study/arms.toml, benchmarks/study.py) stay runnable.

An arm that no longer resolves to a valid training config, names a synthetic config that does
not ship, or reuses another arm's runs under different settings would only fail hours into
a study run; these checks catch that in seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.demo import DemoConfig
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


#: TrainConfig fields that are not training choices of the study: the data and where it goes,
#: the hardware, book-keeping, the failure rules (``study.py audit`` re-applies today's), and
#: the per-loss settings every arm states itself (checked above).
NOT_PINNED = {
    "data", "table", "block_px", "working_mpp", "loss", "seed", "out_dir", "resume", "overwrite",
    "device", "amp", "num_workers", "cache_mb", "checkpoint_every", "keep_checkpoints",
    "collapse_window", "collapse_std", "mask_ratio",
    "lr", "variance_norm", "batch_size", "groups_per_batch", "group_size",
    "init_from",  # a path (TOML has no null): checked below to come from the arm alone
}  # fmt: skip


def test_pinned_settings_are_the_shipped_defaults() -> None:
    # the study's evidence backs the shipped defaults only while they are what it measured;
    # changing a default means new study arms (docs/results.md), then this table
    shipped = TrainConfig()
    demo = DemoConfig.load(None).train
    for key, value in study.load_pinned().items():
        default = demo.get(key, getattr(shipped, key))
        if key == "grad_clip":
            default = default or 0.0  # None: no clipping
        assert default == value, (key, default, value)


@pytest.mark.parametrize("name", sorted(ARMS))
def test_arms_do_not_depend_on_the_demo_or_train_defaults(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every training choice is explicit (pinned or the arm's own), so TrainConfig's defaults
    # never enter; a new TrainConfig setting must be pinned or named in NOT_PINNED
    cfg = study.demo_config(ARMS[name])
    choices = {f.name for f in dataclasses.fields(TrainConfig)} - NOT_PINNED
    before = {loss: study._overrides(cfg, loss) for loss in cfg.losses}
    for loss, over in before.items():
        assert choices <= set(over), (loss, sorted(choices - set(over)))
        # where a network starts is the arm's own statement, never the demo config's
        own = ARMS[name].get("per_loss", {}).get(loss, {})
        assert over.get("init_from") == own.get("init_from"), (loss, over.get("init_from"))
    # and another demo budget in configs/demo/default.toml does not move an arm either
    load = DemoConfig.load

    def other_demo(path: object = None, quick: bool = False) -> DemoConfig:
        demo = load(path, quick)
        demo.train = {**demo.train, "steps": 7, "width": 4, "depth": 2, "augment": False}
        return demo

    monkeypatch.setattr(DemoConfig, "load", staticmethod(other_demo))
    cfg = study.demo_config(ARMS[name])
    assert {loss: study._overrides(cfg, loss) for loss in cfg.losses} == before


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


def test_extended_runs_come_from_shorter_runs_with_otherwise_identical_settings(
    tmp_path: Path,
) -> None:
    pairs = [(name, loss, other) for name, arm in ARMS.items()
             for loss, other in arm.get("extend", {}).items()]  # fmt: skip
    assert pairs  # the file does use extend
    for name, loss, other in pairs:
        mine = study._overrides(study.demo_config(ARMS[name]), loss)
        theirs = study._overrides(study.demo_config(ARMS[other]), loss)
        assert theirs["steps"] < mine["steps"] and {**theirs, "steps": mine["steps"]} == mine
        assert mine["lr_schedule"] == "constant", (name, loss)
    # the copy loses its run.json, so lsr.demo resumes it instead of reusing it as finished
    name, loss, other = pairs[0]
    seed = ARMS[name]["seeds"][0]
    src = study._job_dir(tmp_path, other, seed) / "runs" / f"seed{seed}" / loss
    (src / "checkpoints").mkdir(parents=True)
    (src / "latest.json").write_text("{}")
    steps = study._overrides(study.demo_config(ARMS[other]), loss)["steps"]
    (src / "run.json").write_text(json.dumps({"status": "completed", "step": steps}))
    job = study._job_dir(tmp_path, name, seed)
    study._extend_runs(tmp_path, ARMS[name], study.demo_config(ARMS[name]), seed, job)
    dst = job / "runs" / f"seed{seed}" / loss
    assert (dst / "latest.json").exists() and not (dst / "run.json").exists()
    # settings that differ beyond the length are refused
    bad = {**ARMS[name], "train": {**ARMS[name]["train"], "width": 16}}
    with pytest.raises(ValueError, match="beyond fewer steps"):
        study._extend_runs(tmp_path / "x", bad, study.demo_config(bad), seed, tmp_path / "y")


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
