"""The ``lsr`` entry point itself: warnings and OS errors reach the user as one line each."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lsr", *args], capture_output=True, text=True, timeout=120
    )


def test_warnings_are_one_line_without_our_source(tmp_path):
    est = tmp_path / "est.csv"
    rows = ["z,percent_cancer"] + [f"{z},{5 * z + k}" for z in range(9) for k in range(3)]
    est.write_text("\n".join(rows) + "\n")  # bin 9 has no estimate: a fallback warning
    out = str(tmp_path / "t.json")
    res = run("table", "from-estimates", str(est), "-o", out, "--fallback", "paper-table1")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert any(ln.startswith("warning: ") and "bin 9" in ln for ln in lines), res.stderr
    assert not any(".py:" in ln or "Warning:" in ln for ln in lines), res.stderr


def test_an_output_path_that_is_a_file_is_one_line_and_the_file_survives(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("mine\n")
    config = tmp_path / "tiny.toml"
    config.write_text('name = "tiny"\n[slide]\nn_slides = 1\nwidth_px = 240\nheight_px = 240\n'
                      "n_test_patches = 1\npatch_px = 240\n")  # fmt: skip
    res = run("synth", str(config), "-o", str(blocker / "data"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and "a file is in the way" in res.stderr
    assert blocker.read_text() == "mine\n"


def test_negative_seeds_are_a_usage_error_not_a_traceback(tmp_path):
    for args in (["synth", "-o", str(tmp_path / "s"), "--seed", "-1"],
                 ["demo", "--quick", "-o", str(tmp_path / "d"), "--seed", "-1"]):  # fmt: skip
        res = run(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "Invalid value for '--seed'" in res.stderr and "greater than" in res.stderr
        assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()
