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


PENDING_READS = """
import asyncio, atexit, gc, sys, threading, time
from lsr.cli import main
from lsr.errors import LsrInputError
import lsr.cli.table

loop = asyncio.new_event_loop()  # as zarr's I/O loop, with reads left pending
threading.Thread(target=loop.run_forever, daemon=True).start()

async def read():
    await asyncio.sleep(3600)

async def reads():
    await asyncio.gather(read(), read())

futures = []


@atexit.register
def collect():  # as shutdown frees zarr's loop; when that happens there varies from run to run
    futures.clear()
    globals().pop("loop")
    gc.collect()

def damaged(*_, **__):
    futures.append(asyncio.run_coroutine_threadsafe(reads(), loop))
    time.sleep(0.2)
    loop.call_soon_threadsafe(loop.stop)
    time.sleep(0.2)  # the loop has stopped, its tasks still pending
    raise LsrInputError("cannot read level 0 region (a damaged tile)", "slide.tif")

lsr.cli.table.CountTable.load = damaged
main(sys.argv[1:])
"""


def test_an_error_line_is_not_followed_by_asyncios_pending_task_reports():
    """A damaged tile stops a read while zarr's other chunk reads are pending: the one error
    line used to be followed by a dozen 'Task was destroyed but it is pending!' lines."""
    code = PENDING_READS
    res = subprocess.run([sys.executable, "-c", code, "table", "show", "x.json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "error: slide.tif: cannot read level 0" in res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [res.stderr.strip()]
    # the control: the same pending reads, without lsr's error path, do report
    bare = code.replace("main(sys.argv[1:])", "try:\n    damaged()\nexcept LsrInputError:\n"
                        "    sys.exit(2)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert "Task was destroyed but it is pending" in res.stderr


def _ctrl_c(monkeypatch, capsys, target: str, argv: list[str], before=None) -> str:
    """Run ``lsr ARGV`` in-process with ``target`` (module:function) raising Ctrl-C's
    KeyboardInterrupt (after ``before()``); return its stderr after checking exit 130."""
    import importlib

    import pytest

    from lsr.cli import main

    module, name = target.split(":")

    def stopped(*args, **kwargs):
        if before is not None:
            before()
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, stopped)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 130
    return " ".join(capsys.readouterr().err.split())


def test_ctrl_c_says_what_is_left_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    """lsr synth, evaluate and demo stopped on Ctrl-C with a blank line or nothing."""
    import numpy as np

    from lsr.synthetic import UNFINISHED

    out = tmp_path / "data"

    def marked() -> None:
        out.mkdir()
        (out / UNFINISHED).write_text("{}")

    err = _ctrl_c(monkeypatch, capsys, "lsr.synthetic:generate_dataset",
                  ["synth", "default", "-o", str(out)], marked)  # fmt: skip
    assert f"interrupted: {out} holds an unfinished data set" in err and "--overwrite" in err
    err = _ctrl_c(monkeypatch, capsys, "lsr.synthetic:generate_dataset",
                  ["synth", "default", "-o", str(tmp_path / "new")])  # fmt: skip
    assert "interrupted: nothing was generated" in err

    np.save(tmp_path / "a_prob.npy", np.eye(8, dtype=np.float32))
    np.save(tmp_path / "a_gt.npy", np.eye(8, dtype=np.uint8))
    err = _ctrl_c(monkeypatch, capsys, "lsr.metrics:pooled_scores",
                  ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "-g",
                   str(tmp_path / "a_gt.npy"), "--json", str(tmp_path / "s.json")])  # fmt: skip
    assert f"interrupted: nothing was written to {tmp_path / 's.json'}" in err
    assert not (tmp_path / "s.json").exists()

    err = _ctrl_c(monkeypatch, capsys, "lsr.demo:run_demo",
                  ["demo", "--quick", "--out", str(tmp_path / "demo")])  # fmt: skip
    assert "interrupted: the finished stages are kept in" in err and "run the same command" in err


def test_ctrl_c_in_lsr_predict_says_the_run_resumes(tmp_path, monkeypatch, capsys):
    import numpy as np

    from lsr.slide import write_pyramidal_tiff

    slide = tmp_path / "a.tif"
    write_pyramidal_tiff(slide, np.full((64, 64, 3), 200, np.uint8), mpp=1.0)
    err = _ctrl_c(monkeypatch, capsys, "lsr.predict:predict_cohort",
                  ["predict", str(slide), "--model", str(tmp_path / "model"), "--out",
                   str(tmp_path / "out")])  # fmt: skip
    assert "interrupted: after 0 slide(s); finished slides are kept" in err
