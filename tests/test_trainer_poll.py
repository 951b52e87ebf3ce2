"""Progress reading off the GUI thread: chunked reads, the poller thread, the napari bar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lsr import training_process as tp

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: never a live process


def make_run(folder: Path, pid: int, steps: int = 100) -> Path:
    """A run folder as the trainer leaves it, without a training process of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tp.CONFIG).write_text(json.dumps({"loss": "intra", "distance": "kl", "steps": steps}))
    (folder / tp.PROCESS).write_text(json.dumps({"pid": pid}))
    return folder


def step_line(step: int) -> str:
    return json.dumps({"event": "step", "step": step, "loss": 1.0 / step, "eta_s": 1.0}) + "\n"


def write(run: Path, text: str) -> None:
    with open(run / tp.EVENTS, "a") as fh:
        fh.write(text)


def test_chunked_reads_keep_order_and_decide_death_only_at_the_end(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", DEAD_PID)  # the process is gone: the file is all there is
    write(run, json.dumps({"event": "start", "start_step": 0, "total_steps": 50}) + "\n")
    write(run, "".join(step_line(i) for i in range(1, 51)))
    mon = tp.RunMonitor(run)
    batches = []
    while True:
        batch = mon.read(max_bytes=300)
        batches.append(batch)
        mon.apply(batch)
        if not batch.more:
            break
        assert batch.alive  # a truncated read is never the last word
        assert mon.state.status == "running"
    assert len(batches) > 5
    steps = [e["step"] for b in batches for e in b.events if e["event"] == "step"]
    assert steps == list(range(1, 51))
    assert mon.state.losses == pytest.approx([1.0 / i for i in range(1, 51)])
    assert mon.state.status == "died"  # no end event and no process: decided after the last read


def test_replaced_progress_file_starts_the_state_over(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", os.getpid())
    write(run, json.dumps({"event": "start", "start_step": 0, "total_steps": 9}) + "\n")
    write(run, step_line(1) + step_line(2))
    mon = tp.RunMonitor(run)
    mon.poll()
    assert mon.state.losses == pytest.approx([1.0, 0.5])
    (run / tp.EVENTS).write_text(step_line(1))  # shorter: a new file
    batch = mon.read()
    assert batch.restart and [e["step"] for e in batch.events] == [1]
    mon.apply(batch)
    assert mon.state.losses == pytest.approx([1.0]) and mon.state.total_steps == 9


@pytest.fixture
def poller_of(qtbot):
    made = []

    def make(monitors, **kw):
        from napari_lsr.trainer import ProgressPoller

        poller = ProgressPoller(monitors, period_s=0.02, **kw)
        got: list = []
        poller.delivered.connect(lambda m, batch: got.append((m, batch)))
        poller.start()
        made.append(poller)
        return poller, got

    yield make
    for poller in made:
        poller.stop(wait_s=2.0)
        assert not poller.active


def test_poller_delivers_events_in_order_across_a_partial_line(qtbot, poller_of, tmp_path) -> None:
    run = make_run(tmp_path / "r", os.getpid())  # "alive": this test process
    mon = tp.RunMonitor(run)
    _poller, got = poller_of([mon])
    write(run, json.dumps({"event": "start", "start_step": 0, "total_steps": 3}) + "\n")
    write(run, step_line(1) + step_line(2)[:17])  # the last line is half written
    qtbot.waitUntil(lambda: sum(len(b.events) for _, b in got) == 2, timeout=5000)
    qtbot.wait(100)  # the half line is not delivered, however often the thread reads
    assert [e["event"] for _, b in got for e in b.events] == ["start", "step"]
    write(run, step_line(2)[17:] + step_line(3))
    qtbot.waitUntil(lambda: sum(len(b.events) for _, b in got) == 4, timeout=5000)
    events = [e for m, b in got for e in mon.apply(b)]
    assert all(m is mon for m, _ in got)
    assert [e.get("step") for e in events] == [None, 1, 2, 3]
    assert mon.state.losses == pytest.approx([1.0, 0.5, 1 / 3]) and mon.state.step == 3


def test_poller_hands_over_a_backlog_in_chunks(qtbot, poller_of, tmp_path) -> None:
    run = make_run(tmp_path / "r", os.getpid())
    write(run, "".join(step_line(i) for i in range(1, 2001)))
    mon = tp.RunMonitor(run)
    _poller, got = poller_of([mon], chunk_bytes=4096)
    qtbot.waitUntil(lambda: sum(len(b.events) for _, b in got) == 2000, timeout=10000)
    assert len(got) > 10 and all(len(b.events) <= 4096 // 60 for _, b in got)
    for _, batch in got:
        mon.apply(batch)
    assert mon.state.step == 2000 and len(mon.state.losses) == 2000


def test_poller_reports_a_dead_process_once(qtbot, poller_of, tmp_path) -> None:
    run = make_run(tmp_path / "r", DEAD_PID)
    write(run, json.dumps({"event": "start", "start_step": 0, "total_steps": 9}) + "\n")
    mon = tp.RunMonitor(run)
    _poller, got = poller_of([mon])
    qtbot.waitUntil(lambda: len(got) >= 1, timeout=5000)
    qtbot.wait(150)  # several more reads: nothing new, nothing sent
    assert len(got) == 1 and not got[0][1].alive
    mon.apply(got[0][1])
    assert mon.state.status == "died"


def test_a_stopped_poller_deletes_itself_after_its_thread(qtbot, poller_of, tmp_path) -> None:
    """Widgets stop and drop their pollers: the Qt object must go, but only once its thread
    has left ``emit`` (deleting it earlier could free the sender mid-emit)."""
    run = make_run(tmp_path / "r", os.getpid())
    poller, got = poller_of([tp.RunMonitor(run)])
    gone: list[bool] = []
    poller.destroyed.connect(lambda *_: gone.append(True))
    write(run, step_line(1))
    qtbot.waitUntil(lambda: len(got) == 1, timeout=5000)
    qtbot.wait(100)
    assert not gone and poller.active  # running pollers stay
    thread = poller._thread
    poller.stop()
    qtbot.waitUntil(lambda: bool(gone), timeout=5000)
    thread.join(2.0)
    assert not thread.is_alive()


def test_napari_progress_bar_only_while_the_dock_is_hidden(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    pytest.importorskip("napari")
    from napari_lsr.trainer import TrainerWidget

    viewer = make_napari_viewer(show=True)
    widget = TrainerWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Trainer")
    run = make_run(tmp_path / "r", os.getpid())
    write(run, json.dumps({"event": "start", "start_step": 0, "total_steps": 9}) + "\n")
    write(run, step_line(1))
    mon = tp.RunMonitor(run)
    mon.poll()
    qtbot.waitUntil(widget.isVisible, timeout=5000)
    widget._update_pbar(mon, "intra: loss 1")
    assert widget._pbar is None
    dock.hide()
    widget._update_pbar(mon, "intra: loss 1")
    assert widget._pbar is not None and widget._pbar.n == 1
    dock.show()
    widget._update_pbar(mon, "intra: loss 1")
    assert widget._pbar is None


@pytest.mark.parametrize("moment", ["update", "create"])
def test_window_closed_inside_a_napari_progress_call_detaches_cleanly(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, moment
) -> None:
    """napari's progress processes events: the window's Close (→ detach) can run inside the
    widget's own progress call; the bar is then closed, not touched again and not leaked."""
    pytest.importorskip("napari")
    from napari.utils import progress
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication

    from napari_lsr.trainer import TrainerWidget

    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: "detach")
    viewer = make_napari_viewer()  # hidden dock: napari's bar is used
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    run = make_run(tmp_path / "r", os.getpid())
    write(run, json.dumps({"event": "start", "start_step": 0, "total_steps": 9}) + "\n")
    write(run, step_line(1))
    mon = tp.RunMonitor(run)
    mon.poll()
    job = tp.TrainingJob([run], None, os.getpid())
    w.job, w.monitors = job, [mon]
    w._guard_close()
    before = set(progress._all_instances)
    if moment == "update":
        w._update_pbar(mon, "first")  # the bar exists; the next call updates it
        assert w._pbar is not None
        write(run, step_line(2))
        mon.poll()
    QApplication.postEvent(w.window(), QCloseEvent())  # the user closes napari meanwhile
    w._update_pbar(mon, "second")  # → napari processes events → eventFilter → detach()
    assert w._pbar is None and w._guarded is None and not w.timer.isActive()
    assert set(progress._all_instances) == before  # no bar left open in napari's list
