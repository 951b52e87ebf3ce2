"""The study curve's helpers (benchmarks/study_curve.py): checkpoint look-up and the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "study_curve", ROOT / "benchmarks" / "study_curve.py"
)
assert _spec is not None and _spec.loader is not None
curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curve)


def test_checkpoint_dir_finds_the_step_and_names_what_is_kept(tmp_path: Path) -> None:
    for step in (100, 200):
        (tmp_path / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    assert curve.checkpoint_dir(tmp_path, 200).name == "step-000200"
    with pytest.raises(FileNotFoundError, match="kept: step-000100, step-000200"):
        curve.checkpoint_dir(tmp_path, 300)


def test_table_means_each_column_over_the_seeds_that_have_it() -> None:
    per_seed = {
        1: {"low_res": 0.4, "300": 0.5, "600": 0.7, "results": 0.7},
        0: {"low_res": 0.2, "300": 0.3, "600": 0.5},
    }
    lines = curve.table(per_seed, [300, 600]).splitlines()
    assert lines[2].startswith("| 0 | 0.200 | 0.300 | 0.500 | – |")  # seeds in order
    assert lines[3] == "| 1 | 0.400 | 0.500 | 0.700 | 0.700 |"
    assert lines[4] == "| mean | 0.300 | 0.400 | 0.600 | 0.700 |"
