"""Background training through files: queue, cancel/resume, failures, crash, model list."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from lsr import training_process as tp
from lsr.errors import LsrInputError

BLOCK = 16
MPP = 4.17


def make_data(folder: Path, n: int = 2, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` random 64×64 RGB slides with 4×4 bin grids (``S.tif`` + ``S_grid.npy``)."""
    from lsr.grid import BlockGrid, save_grid
    from lsr.slide import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        write_pyramidal_tiff(folder / f"s{i}.tif", img, mpp=MPP, tile=64, compression="zlib")
        z = rng.integers(0, 10, (4, 4)).astype(np.int16)
        save_grid(BlockGrid.from_z(z, BLOCK), folder / f"s{i}_grid.npy")
    return tp.find_pairs(folder)


def tiny(pairs: list[tuple[str, str]], **kw: object):
    from lsr.train import DataPair, TrainConfig

    base = dict(
        data=[DataPair(s, g) for s, g in pairs],
        block_px=BLOCK,
        working_mpp=MPP,
        width=4,
        depth=2,
        steps=6,
        checkpoint_every=1000,
        device="cpu",
        group_size=4,
        batch_size=8,
        augment=False,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def wait(monitors: list[tp.RunMonitor], until=None, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for m in monitors:
            m.poll()
        if until is not None and until():
            return
        if until is None and not any(m.state.active for m in monitors):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {[(m.state.status, m.state.step) for m in monitors]}")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    return make_data(tmp_path_factory.mktemp("data"))


def test_find_pairs_by_name(tmp_path: Path) -> None:
    pairs = make_data(tmp_path, n=2)
    assert [Path(s).name for s, _ in pairs] == ["s0.tif", "s1.tif"]
    assert [Path(g).name for _, g in pairs] == ["s0_grid.npy", "s1_grid.npy"]
    (tmp_path / "lonely.tif").write_bytes(b"")  # no grid: not a pair
    (tmp_path / "s0_gt.tif").write_bytes(b"")  # ground truth: not a slide
    (tmp_path / "s2.tiff").write_bytes(b"")
    (tmp_path / "s2.grid.csv").write_text("row,col,z\n")
    names = [(Path(s).name, Path(g).name) for s, g in tp.find_pairs(tmp_path)]
    assert names == [
        ("s0.tif", "s0_grid.npy"),
        ("s1.tif", "s1_grid.npy"),
        ("s2.tiff", "s2.grid.csv"),
    ]
    assert tp.grid_beside(tmp_path / "lonely.tif") is None
    # OME-TIFFs: the name is the file's without ".ome.tif(f)" (either case), and an OME
    # ground truth with a grid of its own is still not a slide
    (tmp_path / "s3.OME.TIFF").write_bytes(b"")
    (tmp_path / "s3_grid.npy").write_bytes(b"")
    (tmp_path / "s3_gt.ome.tif").write_bytes(b"")
    (tmp_path / "s3_gt_grid.npy").write_bytes(b"")
    names = [(Path(s).name, Path(g).name) for s, g in tp.find_pairs(tmp_path)]
    assert names[-1] == ("s3.OME.TIFF", "s3_grid.npy") and len(names) == 4
    with pytest.raises(LsrInputError, match="no slide with a grid"):
        tp.find_pairs(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_check_data_rejects_grid_that_does_not_fit(pairs, tmp_path: Path) -> None:
    from lsr.grid import BlockGrid, save_grid

    assert tp.check_data(pairs, BLOCK, MPP) == [(64, 64), (64, 64)]
    save_grid(BlockGrid.from_z(np.zeros((6, 6), np.int16), BLOCK), tmp_path / "big.npy")
    with pytest.raises(LsrInputError, match="does not match the slide") as err:
        tp.check_data([(pairs[0][0], str(tmp_path / "big.npy"))], BLOCK, MPP)
    assert "big.npy" in str(err.value)


def test_queue_runs_in_order_to_completion_and_lists_models(
    pairs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    runs = [
        tp.prepare_run(tiny(pairs, loss="intra", steps=5), out, name="a-intra"),
        tp.prepare_run(tiny(pairs, loss="inter", steps=4), out, name="b-inter"),
    ]
    job = tp.launch(runs)
    monitors = [tp.RunMonitor(r, job) for r in runs]
    seen_running_b_while_a_active = False

    def check() -> bool:
        nonlocal seen_running_b_while_a_active
        a, b = (m.state for m in monitors)
        if a.active and b.status == "running":
            seen_running_b_while_a_active = True
        return not a.active and not b.active

    wait(monitors[::-1], until=check)  # b read before a: a's state never older than b's
    job.wait(30)
    a, b = (m.state for m in monitors)
    assert not seen_running_b_while_a_active  # one after another, not at once
    assert (a.status, a.step, len(a.losses)) == ("completed", 5, 5), a.message
    assert (b.status, b.step, len(b.losses)) == ("completed", 4, 4), b.message
    assert a.device.startswith("CPU") and a.n_blocks == 32
    assert (a.blocks_per_step, b.blocks_per_step) == (8, 6 * 4)  # intra's batch; 6 groups × 4
    summary = json.loads((runs[0] / "run.json").read_text())
    assert summary["losses"] == pytest.approx(a.losses)  # the log says what the trainer did
    # a fresh reader (another napari session) sees the same
    again = tp.read_run(runs[1])
    assert (again.status, again.losses) == ("completed", b.losses)
    assert not tp.attach(runs[0]).alive
    models = tp.list_models(out)
    monkeypatch.setenv("HOME", str(out.parent))  # "~/models", as the docs write it, found none
    assert tp.list_models("~/" + out.name) == models and models
    assert {m.name for m in models} == {"a-intra", "b-inter"}
    by = {m.name: m for m in models}
    assert (by["a-intra"].loss, by["a-intra"].distance, by["a-intra"].steps) == (
        "intra",
        "gaussian-nll",
        5,
    )
    assert by["b-inter"].final_loss == pytest.approx(b.losses[-1])
    assert Path(by["a-intra"].checkpoint, "model.safetensors").is_file()
    from lsr.model import load

    net = load(by["a-intra"].checkpoint)
    assert net is not None


def test_cancel_stops_within_a_step_and_resume_continues(pairs, tmp_path: Path) -> None:
    run = tp.prepare_run(tiny(pairs, loss="intra", steps=5000), tmp_path, name="r")
    job = tp.launch([run])
    mon = tp.RunMonitor(run, job)
    wait([mon], until=lambda: mon.state.step >= 3)
    asked_at = mon.state.step
    job.cancel()
    wait([mon])
    job.wait(30)
    s = mon.state
    assert s.status == "cancelled", s.message
    assert asked_at <= s.step < 5000
    assert json.loads((run / "latest.json").read_text())["step"] == s.step  # checkpoint kept
    first = list(s.losses)
    assert len(first) == s.step

    tp.prepare_resume(run, steps=s.step + 3)
    assert not (run / tp.STOP).exists()
    job2 = tp.launch([run])
    mon2 = tp.RunMonitor(run, job2)
    wait([mon2])
    s2 = mon2.state
    assert s2.status == "completed", s2.message
    assert (s2.start_step, s2.step) == (s.step, s.step + 3)
    assert s2.losses[: s.step] == first and len(s2.losses) == s.step + 3
    summary = json.loads((run / "run.json").read_text())
    assert summary["losses"] == pytest.approx(s2.losses)


def test_cancel_while_the_slides_are_read_stops_before_the_first_step(
    pairs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel pressed after launch but before step 1: the run ends at step 0, resumable."""
    run = tp.prepare_run(tiny(pairs, loss="intra", steps=5000), tmp_path, name="r")
    checked = tp.check_data

    def check_then_cancel(*args: object) -> None:
        checked(*args)
        tp.request_stop([run])  # what the Trainer's Cancel does

    monkeypatch.setattr(tp, "check_data", check_then_cancel)
    assert tp.run_one(run) == "cancelled"
    mon = tp.RunMonitor(run)
    mon.poll()
    assert (mon.state.status, mon.state.step) == ("cancelled", 0)
    assert not (run / "checkpoints").exists() and not (run / "run.json").exists()

    monkeypatch.setattr(tp, "check_data", checked)
    cfg = tiny(pairs, loss="intra", steps=2)
    tp.prepare_resume(run, steps=cfg.steps)
    assert tp.run_one(run) == "completed"
    assert json.loads((run / "run.json").read_text())["step"] == 2


def test_resume_of_a_run_that_failed_before_any_checkpoint_starts_over(
    pairs, tmp_path: Path
) -> None:
    run = tp.prepare_run(tiny(pairs, loss="intra", steps=2), tmp_path, name="r")
    # what a run that crashed in its first step leaves: run.json, no checkpoint
    (run / "run.json").write_text('{"status": "failed", "step": 0}\n')
    tp.prepare_resume(run)
    cfg = tp.read_config(run)
    assert cfg["resume"] is None and "overwrite" not in cfg
    assert not (run / "run.json").exists()  # all the failed start left: gone
    job = tp.launch([run])
    mon = tp.RunMonitor(run, job)
    wait([mon])
    assert mon.state.status == "completed", mon.state.message
    assert json.loads((run / "run.json").read_text())["step"] == 2


def test_bad_grid_fails_with_reason_and_log(pairs, tmp_path: Path) -> None:
    from lsr.grid import BlockGrid, save_grid

    save_grid(BlockGrid.from_z(np.zeros((9, 9), np.int16), BLOCK), tmp_path / "bad_grid.npy")
    cfg = tiny([(pairs[0][0], str(tmp_path / "bad_grid.npy"))], loss="intra")
    run = tp.prepare_run(cfg, tmp_path / "out")
    job = tp.launch([run])
    mon = tp.RunMonitor(run, job)
    wait([mon], timeout=60)
    assert mon.state.status == "failed"
    assert "does not match the slide" in mon.state.message
    assert "bad_grid.npy" in mon.state.message
    assert "Traceback" in mon.state.log_path.read_text()
    assert job.wait(30) == 1
    assert tp.list_models(tmp_path / "out") == []


def test_killed_process_is_reported_as_died(pairs, tmp_path: Path) -> None:
    run = tp.prepare_run(tiny(pairs, steps=5000), tmp_path)
    job = tp.launch([run])
    mon = tp.RunMonitor(run, job)
    wait([mon], until=lambda: mon.state.status == "running")
    os.kill(job.pid, signal.SIGKILL)
    wait([mon], timeout=30)
    assert mon.state.status == "died"
    assert "SIGKILL" in mon.state.message and str(run / tp.LOG) in mon.state.message
    # re-attached from nothing but the folder: the process is gone, the run did not end
    later = tp.RunMonitor(run)
    later.poll()
    assert later.state.status == "died"


def test_event_reader_keeps_partial_lines(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / tp.CONFIG).write_text(json.dumps({"loss": "intra", "distance": "kl", "steps": 3}))
    (run / tp.PROCESS).write_text(json.dumps({"pid": os.getpid()}))  # "alive"
    mon = tp.RunMonitor(run)
    with open(run / tp.EVENTS, "w") as fh:
        fh.write(json.dumps({"event": "start", "start_step": 0, "total_steps": 3}) + "\n")
        fh.write('{"event": "step", "step": 1, "lo')
    assert [e["event"] for e in mon.poll()] == ["start"]
    with open(run / tp.EVENTS, "a") as fh:
        fh.write('ss": 0.5}\n')
        fh.write(json.dumps({"event": "step", "step": 2, "loss": 0.25}) + "\n")
    assert [e["step"] for e in mon.poll()] == [1, 2]
    assert mon.state.losses == [0.5, 0.25] and mon.state.status == "running"
    assert mon.poll() == []


def test_an_output_folder_that_is_a_file_is_named_and_unreadable_runs_are_reported(
    pairs, tmp_path: Path
) -> None:
    """'[Errno 17] File exists' said nothing; a run whose checkpoint cannot be read left
    the model lists without a word."""
    blocker = tmp_path / "f"
    blocker.write_text("mine\n")
    with pytest.raises(LsrInputError, match="a file is in the way") as info:
        tp.prepare_run(tiny(pairs, loss="intra"), blocker)
    assert str(info.value.path) == str(blocker) and blocker.read_text() == "mine\n"
    run = tp.prepare_run(tiny(pairs, loss="intra", steps=1), tmp_path / "out")
    job = tp.launch([run])
    wait([tp.RunMonitor(run, job)])
    assert job.wait(30) == 0 and len(tp.list_models(tmp_path / "out")) == 1
    (run / "latest.json").write_text("{trunc")
    problems: list[str] = []
    assert tp.list_models(tmp_path / "out", problems=problems) == []
    assert len(problems) == 1 and "latest.json" in problems[0] and "malformed" in problems[0]
