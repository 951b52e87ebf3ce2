"""The Trainer dock widget in a real viewer: background training, cancel/resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lsr import training_process as tp
from lsr.errors import LsrInputError

napari = pytest.importorskip("napari")

BLOCK = 16
MPP = 4.17
TIMEOUT_MS = 120_000


def make_data(folder: Path, n: int = 2) -> list[tuple[str, str]]:
    """``n`` random 64×64 RGB slides ``sI.tif`` with 4×4 bin grids ``sI_grid.npy``."""
    from lsr.grid import BlockGrid, save_grid
    from lsr.slide import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        write_pyramidal_tiff(folder / f"s{i}.tif", img, mpp=MPP, tile=64, compression="zlib")
        z = rng.integers(0, 10, (4, 4)).astype(np.int16)
        save_grid(BlockGrid.from_z(z, BLOCK), folder / f"s{i}_grid.npy")
    return tp.find_pairs(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    make_data(folder)
    return folder


def open_trainer(viewer, out: Path):
    """A Trainer docked in ``viewer`` as napari's menu opens it, set up for tiny runs."""
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    w.out_dir.setText(str(out))
    w.refresh_models()  # (setText does not: else the list shows the user's default folder)
    w.block_px.setValue(BLOCK)
    w.working_mpp.setValue(MPP)
    w.width_spin.setValue(4)
    w.depth_spin.setValue(2)
    w.group_size.setText("4")
    w.batch_size.setText("8")
    w.augment.setChecked(False)
    w.checkpoint_every.setValue(1000)
    w.device.setCurrentText("cpu")
    return w


@pytest.fixture
def widget(make_napari_viewer, tmp_path, monkeypatch):
    from napari_lsr.trainer import TrainerWidget

    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: "stop")
    viewer = make_napari_viewer()
    w = open_trainer(viewer, tmp_path / "models")
    yield w
    if w.job is not None and w.job.alive:  # never leave a process behind
        w.job.cancel()
        w.job.wait(60)
    w.detach()


def notices(severity: str = "ERROR") -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    level = getattr(NotificationSeverity, severity)
    return [str(n.message) for n in notification_manager.records if n.severity == level]


def errors() -> list[str]:
    return notices("ERROR")


def test_train_queue_from_layers_to_completion_and_model_list(widget, data, qtbot) -> None:
    viewer = widget.viewer
    for i in range(2):
        viewer.open(str(data / f"s{i}.tif"), plugin="napari-lsr")
        viewer.open(str(data / f"s{i}_grid.npy"), plugin="napari-lsr")
    widget.use_layers()
    assert [(Path(s).name, Path(g).name) for s, g in widget.pairs] == [
        ("s0.tif", "s0_grid.npy"),
        ("s1.tif", "s1_grid.npy"),
    ]
    widget.loss_checks["intra"].setChecked(True)  # queue: intra+inter, then intra
    widget.steps.setValue(6)
    qtbot.mouseClick(widget.train_button, qtbot_button())
    assert widget.running and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    states = [m.state for m in widget.monitors]
    assert [(s.loss, s.status, s.step) for s in states] == [
        ("intra", "completed", 6),
        ("intra_inter", "completed", 6),
    ] or [(s.loss, s.status, s.step) for s in states] == [
        ("intra_inter", "completed", 6),
        ("intra", "completed", 6),
    ], [s.message for s in states]
    assert widget.plot.losses == pytest.approx(states[-1].losses) and len(states[-1].losses) == 6
    assert widget.progress_bar.value() == 6
    # the model list shows both results, as list_models reads them (right after the display)
    qtbot.waitUntil(lambda: widget.models_view.rowCount() == 2, timeout=5000)
    names = {widget.models_view.item(r, 0).text() for r in range(2)}
    assert names == {s.run_dir.name for s in states}
    row = [widget.models_view.item(0, c).text() for c in range(6)]
    model = next(m for m in widget.models if m.name == row[0])
    assert row[3] == "6" and row[2] == "gaussian-nll"
    assert row[5] == f"{model.final_loss:.4g}"
    summary = json.loads(Path(model.run_dir, "run.json").read_text())
    assert model.final_loss == pytest.approx(summary["losses"][-1])
    # the name column fills what the others leave, and keeps a readable width in a narrow
    # dock (stretched, it shrank to "i…2" beside the Annotator)
    from napari_lsr.trainer import MIN_NAME_PX

    view, header = widget.models_view, widget.models_view.horizontalHeader()
    for width in (260, 1200):
        view.setFixedWidth(width)
        qtbot.waitUntil(lambda w=width: view.width() == w, timeout=2000)
        others = sum(header.sectionSize(c) for c in range(1, 6))
        want = max(MIN_NAME_PX, view.viewport().width() - others)
        qtbot.waitUntil(lambda w=want: header.sectionSize(0) == w, timeout=2000)
    assert header.sectionSize(0) > MIN_NAME_PX  # wide: the name takes the rest


def test_run_that_ends_while_the_display_updates_is_shown_ended(
    widget, data, qtbot, monkeypatch
) -> None:
    """napari's progress bar processes events: a run's end delivered inside a display update
    (a re-entered refresh) must still reach the panel at once, not wait for a timer tick."""
    from qtpy.QtWidgets import QApplication

    from napari_lsr.trainer import TrainerWidget

    update_pbar = TrainerWidget._update_pbar
    pumped: list[int] = []

    def end_inside(self, m, desc):  # the first update of a started run: it ends in there
        update_pbar(self, m, desc)
        if not pumped and m.state.step >= 1:
            pumped.append(m.state.step)
            self.job.cancel()
            qtbot.waitUntil(
                lambda: (QApplication.processEvents(), not m.state.active)[1], timeout=TIMEOUT_MS
            )

    monkeypatch.setattr(TrainerWidget, "_update_pbar", end_inside)
    widget.add_folder(data)
    widget.loss_checks["intra_inter"].setChecked(False)
    widget.loss_checks["intra"].setChecked(True)
    widget.steps.setValue(100_000)
    assert widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    s = widget.current().state
    assert pumped and s.status == "cancelled" and s.step >= pumped[0], s.message
    assert widget.progress_bar.value() == s.step and "cancelled" in widget.status.text()
    assert not widget.timer.isActive() and widget.train_button.isEnabled()


def qtbot_button():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


def test_cancel_then_resume_continues_from_checkpoint(widget, data, qtbot) -> None:
    widget.add_folder(data)
    widget.loss_checks["intra_inter"].setChecked(False)
    widget.loss_checks["intra"].setChecked(True)
    widget.steps.setValue(100_000)
    assert widget.train()
    qtbot.waitUntil(lambda: widget.current().state.step >= 2, timeout=TIMEOUT_MS)
    assert widget.cancel_button.isEnabled()
    qtbot.mouseClick(widget.cancel_button, qtbot_button())
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    s = widget.current().state
    assert s.status == "cancelled" and 2 <= s.step < 100_000
    run = s.run_dir
    assert json.loads((run / "latest.json").read_text())["step"] == s.step
    assert widget.resume_button.isEnabled()
    first = list(s.losses)
    assert widget.resume(steps=s.step + 3)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    s2 = widget.current().state
    assert s2.run_dir == run and s2.status == "completed", s2.message
    assert (s2.start_step, s2.step) == (s.step, s.step + 3)
    assert s2.losses[: s.step] == first
    assert s2.resumes == [s.step]  # shown as a marker on the loss curve


def test_failing_run_reports_error_and_viewer_stays_usable(widget, data, tmp_path, qtbot) -> None:
    from lsr.grid import BlockGrid, save_grid

    save_grid(BlockGrid.from_z(np.zeros((9, 9), np.int16), BLOCK), tmp_path / "wrong_grid.npy")
    widget.set_pairs([(str(data / "s0.tif"), str(tmp_path / "wrong_grid.npy"))])
    before = len(errors())
    assert widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(errors()) > before, timeout=5000)  # reported right after
    new = errors()[before:]
    assert len(new) == 1
    assert "does not match the slide" in new[0] and "wrong_grid.npy" in new[0]
    assert str(widget.current().state.log_path) in new[0]
    assert widget.current().state.status == "failed"
    assert widget.train_button.isEnabled()
    layer = widget.viewer.add_image(np.zeros((8, 8)))  # the viewer is fine
    qtbot.wait(50)
    assert layer in widget.viewer.layers
    assert widget.models_view.rowCount() == 0


def test_doubtful_table_warns_when_chosen_and_when_the_run_ends(
    widget, data, tmp_path, qtbot
) -> None:
    from lsr.counttable import CountTable

    table = CountTable.paper_table1()
    table.eta[8] = (0.95, 0.05)  # bin 90-95 % at 95 % cancer, the top bin at 70 %: 25 points
    table.save(tmp_path / "doubtful.json")
    before = len(notices("WARNING"))
    assert widget.set_table_file(tmp_path / "doubtful.json")  # still usable for training
    new = notices("WARNING")[before:]
    assert len(new) == 1 and "doubtful.json" in new[0] and "25 points below bin 90–95%" in new[0]
    widget.add_folder(data)
    widget.steps.setValue(2)
    before = len(notices("WARNING"))
    assert widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(notices("WARNING")) > before, timeout=5000)
    state = widget.current().state
    assert state.status == "completed" and any("top bin" in w for w in state.warnings)
    end = notices("WARNING")[before:]
    assert len(end) == 1 and "warning(s) during training" in end[0] and "top bin" in end[0]
    assert str(state.log_path) in end[0]
    assert widget.status.text().startswith("Training finished")  # the outcome stays visible


def test_close_asks_detach_then_reattach_and_stop(widget, data, qtbot, monkeypatch) -> None:
    from qtpy.QtCore import QEvent
    from qtpy.QtGui import QCloseEvent

    from napari_lsr.trainer import TrainerWidget

    widget.add_folder(data)
    widget.steps.setValue(100_000)
    assert widget.train()
    qtbot.waitUntil(lambda: widget.current().state.step >= 1, timeout=TIMEOUT_MS)
    window = widget.window()  # the main window the widget is docked in
    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: "cancel")
    event = QCloseEvent()
    assert widget.eventFilter(window, event) is True and not event.isAccepted()
    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: "detach")
    assert widget.eventFilter(window, QCloseEvent()) is False  # napari may close
    assert not widget.timer.isActive()
    job, run = widget.job, widget.current().run_dir
    step = widget.current().state.step
    qtbot.wait(1000)
    assert job.alive  # training goes on without the widget
    # a new session re-attaches to the folder: history and live progress
    other = TrainerWidget(widget.viewer)
    widget.viewer.window.add_dock_widget(other, name="Trainer 2")
    assert other.attach(run)
    assert other.running and other.current().state.step >= step
    assert other.plot.losses[:step] == widget.current().state.losses[:step]
    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: "stop")
    other.eventFilter(other.window(), QCloseEvent())
    qtbot.waitUntil(lambda: not job.alive, timeout=TIMEOUT_MS)
    final = tp.read_run(run)
    assert final.status == "cancelled" and final.checkpoint
    assert QEvent.Close == QCloseEvent().type()


def _close_dock(widget, qtbot) -> None:
    """The dock's ✕ (napari takes the widget out of its dock and keeps it)."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parentWidget()
    while not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    dock.destroyOnClose()
    qtbot.waitUntil(lambda: widget.parent() is None, timeout=5000)


def test_a_trainer_opened_again_takes_over_the_run_its_closed_dock_left_running(
    widget, data, qtbot
) -> None:
    """Closing the Trainer's dock during training, then opening the Trainer again: the new
    one watches the run (it said "Ready." and offered Train), and only it reports the end."""
    widget.add_folder(data)
    widget.steps.setValue(100_000)
    assert widget.train()
    qtbot.waitUntil(lambda: widget.current().state.step >= 1, timeout=TIMEOUT_MS)
    job, run, folder = widget.job, widget.current().run_dir, widget.out_dir.text()
    old_ends: list[tuple[str, str]] = []
    widget.run_finished.connect(lambda *a: old_ends.append(a))
    _close_dock(widget, qtbot)
    from napari_lsr.trainer import _CLOSED_WATCHING

    assert widget in _CLOSED_WATCHING and widget.timer.isActive()  # it still watches
    assert any("goes on in the background" in m for m in notices("INFO"))
    assert job.alive
    _dock, again = widget.viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    assert again is not widget and again.out_dir.text() != folder  # (the default folder)
    new_ends: list[tuple[str, str]] = []
    again.run_finished.connect(lambda *a: new_ends.append(a))
    qtbot.waitUntil(lambda: again.running, timeout=10_000)
    assert again.job is job and again.out_dir.text() == folder
    assert again.current().run_dir == run and again.status.text() != "Ready."
    assert again.cancel_button.isEnabled() and not again.train_button.isEnabled()
    assert not widget.timer.isActive() and widget._poller is None  # taken over
    assert widget.job is None  # and never taken over again:
    _close_dock(again, qtbot)
    _dock, third = widget.viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    third_ends: list[tuple[str, str]] = []
    third.run_finished.connect(lambda *a: third_ends.append(a))
    qtbot.waitUntil(lambda: third.running, timeout=10_000)
    assert third.job is job and again.job is None and not again.timer.isActive()
    third.cancel()
    qtbot.waitUntil(lambda: bool(third_ends), timeout=TIMEOUT_MS)
    qtbot.wait(300)
    assert third_ends == [(str(run), "cancelled")] and new_ends == old_ends == []
    job.wait(60)
    assert not job.alive


def test_a_closed_trainer_still_reports_its_run_and_another_viewer_leaves_it_alone(
    make_napari_viewer, data, tmp_path, qtbot
) -> None:
    """With no Trainer opened again, the closed one reports the run's end, though nothing
    but lsr holds it (napari keeps no reference to a widget whose dock it closed: the next
    garbage collection took it, and the failure report, away); a Trainer of another viewer,
    in the same folder, does not watch (and report) the run a second time."""
    import gc
    import weakref

    viewer = make_napari_viewer()
    w = open_trainer(viewer, tmp_path / "models")
    w.add_folder(data)
    w.steps.setValue(100_000)
    assert w.train()
    qtbot.waitUntil(lambda t=w: t.current().state.step >= 1, timeout=TIMEOUT_MS)
    job, run, folder = w.job, w.current().run_dir, w.out_dir.text()
    ends: list[tuple[str, str]] = []
    w.run_finished.connect(lambda *a: ends.append(a))
    _close_dock(w, qtbot)
    closed = weakref.ref(w)
    del w
    gc.collect()
    assert closed() is not None  # still watching
    other_viewer = make_napari_viewer()
    other = open_trainer(other_viewer, Path(folder))
    assert not other.attach_running() and other.job is None
    before = len(notices("INFO"))
    try:
        job.cancel()
        qtbot.waitUntil(lambda: bool(ends), timeout=TIMEOUT_MS)
        qtbot.wait(300)
        assert ends == [(str(run), "cancelled")]
        assert sum("Training cancelled" in m for m in notices("INFO")[before:]) == 1
    finally:
        job.cancel()
        job.wait(60)
    gc.collect()
    assert other.job is None


def test_a_closed_trainer_docked_again_guards_the_main_window(widget, data, qtbot) -> None:
    """Docked again by a script, the closed Trainer moved its watch of napari's close to its
    new dock (not yet in the main window when the widget moved in): napari closed without
    asking, the run went on unwatched."""
    from qtpy.QtWidgets import QMainWindow

    from napari_lsr import trainer

    widget.add_folder(data)
    widget.steps.setValue(100_000)
    assert widget.train()
    qtbot.waitUntil(lambda: widget.current().state.step >= 1, timeout=TIMEOUT_MS)
    _close_dock(widget, qtbot)
    assert widget in trainer._CLOSED_WATCHING  # (still guarding napari's window)
    widget.viewer.window.add_dock_widget(widget, name="Trainer again")
    qtbot.wait(100)
    assert isinstance(widget._guarded, QMainWindow) and widget not in trainer._CLOSED_WATCHING


def test_running_runs_finds_jobs_nobody_watches_once(tmp_path, monkeypatch) -> None:
    """One folder per live training process (a job trains several runs), not: a run that
    ended, a pid that is no training process (reused after a reboot), a job whose launcher
    (another napari) still lives, a damaged or dead pid."""
    import os
    import subprocess
    import sys

    def fake_training() -> subprocess.Popen:  # its command line names lsr.training_process
        return subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "lsr.training_process"]
        )

    def run(name: str, pid: object, **more: object) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / tp.PROCESS).write_text(json.dumps({"pid": pid, **more}))
        return folder

    job, elsewhere, launcher = fake_training(), fake_training(), fake_training()
    try:
        mine = run("a", job.pid, launcher=2**22 + 7)  # its napari is gone
        run("b", job.pid)  # a second run of the same job
        ended = run("c-ended", fake_training_pid := elsewhere.pid)
        (ended / tp.RUN_JSON).write_text(json.dumps({"status": "completed"}))
        resumed = run("f-resumed", job.pid)  # last attempt's "cancelled", older than the launch
        (resumed / tp.RUN_JSON).write_text(json.dumps({"status": "cancelled"}))
        os.utime(resumed / tp.RUN_JSON, (1e9, 1e9))
        run("d-watched", fake_training_pid, launcher=launcher.pid)
        run("e-not-ours", os.getpid())  # alive, but this is pytest
        run("gone", 2**22 + 12345)  # above Linux's pid_max: no such process
        run("junk", "twelve")
        (tmp_path / "not-launched").mkdir()
        found = tp.running_runs(tmp_path)
        assert len(found) == 1 and found[0] in (mine, tmp_path / "b", resumed)
        os.utime(ended / tp.RUN_JSON)  # (it ended after the launch: skipped)
        (mine / tp.PROCESS).unlink()
        (tmp_path / "b" / tp.PROCESS).unlink()
        assert tp.running_runs(tmp_path) == [resumed]  # found through the resumed run alone
        assert tp.running_runs(tmp_path / "missing") == []
        # without /proc (macOS, Windows) the command line comes from psutil: still only
        # training processes count
        monkeypatch.setattr(tp, "_PROC", tmp_path / "no-proc")
        assert tp.is_training_process(job.pid) and not tp.is_training_process(os.getpid())
        assert tp.running_runs(tmp_path) == [resumed]
    finally:
        for proc in (job, elsewhere, launcher):
            proc.kill()
            proc.wait()


def test_ground_truth_labels_layer_is_not_a_training_slide(data: Path) -> None:
    """A slide, its grid and its ground-truth mask opened together pair without complaint."""
    from napari.layers import Image, Labels

    from napari_lsr.trainer import pairs_from_layers

    slide, grid = str(data / "s0.tif"), str(data / "s0_grid.npy")
    rgb = Image(np.zeros((8, 8, 3), np.uint8), rgb=True, metadata={"lsr_slide": {"path": slide}})
    gt_meta = {"lsr_slide": {"path": str(data / "s0_gt.tif")}}
    gt = Labels(np.zeros((8, 8), np.uint8), metadata=gt_meta)
    pairs, problems, _geo = pairs_from_layers([rgb, gt])
    assert pairs == [(slide, grid)] and problems == []


def test_grid_layers_from_another_folder_pair_with_their_slides(data: Path, tmp_path) -> None:
    """Slides in one folder, their grids opened from another: the grid layers named like the
    slides were ignored ("no grid layer or grid file named like it")."""
    import shutil

    from napari.layers import Image, Labels

    from napari_lsr.trainer import pairs_from_layers

    (tmp_path / "slides").mkdir()
    (tmp_path / "grids").mkdir()
    (tmp_path / "old").mkdir()
    slides, grids = [], []
    for i, grid_name in enumerate(["s0_grid.npy", "s1.grid.npy"]):
        slides.append(str(shutil.copy(data / f"s{i}.tif", tmp_path / "slides")))
        grids.append(str(shutil.copy(data / f"s{i}_grid.npy", tmp_path / "grids" / grid_name)))

    def slide_layer(path: str) -> Image:
        return Image(
            np.zeros((8, 8, 3), np.uint8), rgb=True, metadata={"lsr_slide": {"path": path}}
        )

    def grid_layer(path: str) -> Labels:
        return Labels(np.zeros((2, 2), np.uint8), metadata={"lsr_grid": {"path": path}})

    layers = [
        slide_layer(slides[0]),
        grid_layer(grids[1]),
        slide_layer(slides[1]),
        grid_layer(grids[0]),
    ]
    pairs, problems, _geo = pairs_from_layers(layers)
    assert pairs == list(zip(slides, grids, strict=True)) and problems == []
    # two grid layers named like s0, neither beside it: which one is not guessed
    other = str(shutil.copy(data / "s0_grid.npy", tmp_path / "old" / "s0_grid.npy"))
    pairs, problems, _geo = pairs_from_layers([*layers, grid_layer(other)])
    assert pairs == [(slides[1], grids[1])]
    assert len(problems) == 1 and "s0.tif: 2 grid layers named like it" in problems[0]


def test_placeholders_show_the_ticked_losses_defaults(widget, monkeypatch):
    import lsr.train

    defaults = {k: dict(v) for k, v in lsr.train.DEFAULTS.items()}
    defaults["inter"].update(group_size=5, lr=1e-3)
    defaults["intra_inter"].update(group_size=7, lr=2e-3)
    monkeypatch.setattr(lsr.train, "DEFAULTS", defaults)
    for loss, box in widget.loss_checks.items():
        box.setChecked(loss in ("inter", "intra_inter"))
    widget._update_placeholders()
    assert widget.group_size.placeholderText() == "default: 5 / 7"
    assert widget.lr.placeholderText() == "default: 0.001 / 0.002"
    # intra's batch size is shown although intra is not ticked: the field's only user
    assert widget.batch_size.placeholderText() == f"default: {defaults['intra']['batch_size']:g}"
    for loss, box in widget.loss_checks.items():
        box.setChecked(loss == "intra_inter")
    widget._update_placeholders()
    assert widget.group_size.placeholderText() == "default: 7"
    assert widget.groups_per_batch.placeholderText() == (
        f"default: {defaults['intra_inter']['groups_per_batch']:g}"
    )


def test_missing_table_file_or_closed_table_dock_refuses_to_train(
    widget, data, tmp_path, qtbot
) -> None:
    """The chosen count table is gone: an error, no run; never paper Table 1 in its place."""
    from lsr.counttable import CountTable
    from napari_lsr.counttable_widget import CountTableWidget

    widget.add_folder(data)
    widget.steps.setValue(2)
    CountTable.paper_table1().save(tmp_path / "expert.json")
    assert widget.set_table_file(tmp_path / "expert.json")
    (tmp_path / "expert.json").unlink()
    before = len(errors())
    qtbot.mouseClick(widget.train_button, qtbot_button())
    new = errors()[before:]
    assert len(new) == 1 and "count table file not found" in new[0], new
    assert widget.job is None and not (tmp_path / "models").exists()

    dock = widget.viewer.window.add_dock_widget(CountTableWidget(widget.viewer), name="Expert")
    widget.table_combo.showPopup()  # a dock opened after the Trainer: listed when opened
    widget.table_combo.hidePopup()
    widget.table_combo.setCurrentText("Count table widget: Expert")
    assert widget.table_combo.currentText() == "Count table widget: Expert"
    widget.viewer.window.remove_dock_widget(dock)
    before = len(errors())
    qtbot.mouseClick(widget.train_button, qtbot_button())
    new = errors()[before:]
    assert len(new) == 1 and "'Expert' is closed" in new[0], new
    assert widget.job is None and not (tmp_path / "models").exists()


def test_annotator_table_listed_and_layers_status_recovers(widget, data, qtbot) -> None:
    """The annotator's live table is a choice; a good "From layers" clears an old red error."""
    viewer = widget.viewer
    qtbot.mouseClick(widget.layers_button, qtbot_button())  # nothing opened yet: an error
    assert "no slide layer" in widget.status.text() and widget.status.styleSheet()
    viewer.open(str(data / "s0.tif"), plugin="napari-lsr")
    viewer.open(str(data / "s0_grid.npy"), plugin="napari-lsr")
    qtbot.mouseClick(widget.layers_button, qtbot_button())
    assert len(widget.pairs) == 1
    assert widget.status.text() == "1 slide(s) with grids from the layers"
    assert widget.status.styleSheet() == ""

    _dock, ann = viewer.window.add_plugin_dock_widget("napari-lsr", "Count-table annotator")
    widget.table_combo.showPopup()
    widget.table_combo.hidePopup()
    names = [widget.table_combo.itemText(i) for i in range(widget.table_combo.count())]
    choice = next(n for n in names if "annotator" in n)
    widget.table_combo.setCurrentText(choice)
    assert widget.current_table() == ("paper", ann.table)


def test_a_fresh_trainer_starts_from_lsr_trains_defaults(make_napari_viewer, data, monkeypatch):
    """The GUI and `lsr train` use one set of defaults (issue 6: "the chosen defaults are
    what the CLI and the GUI use"): a fresh widget's config equals TrainConfig's, field by
    field, and follows a change of them."""
    import dataclasses

    import lsr.train
    from lsr.train import TrainConfig
    from napari_lsr.trainer import TrainerWidget

    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: "stop")
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lsr", "Trainer")
    w.set_pairs(tp.find_pairs(data))
    (cfg,) = w.configs()
    shipped = TrainConfig()
    skip = {"data", "table", "out_dir"}  # chosen by the user in the widget
    for f in dataclasses.fields(TrainConfig):
        if f.name not in skip:
            assert getattr(cfg, f.name) == getattr(shipped, f.name), f.name
    w.detach()

    changed = {"steps": 123, "width": 6, "depth": 2, "block_px": 96, "checkpoint_every": 7}
    monkeypatch.setattr(
        lsr.train, "TrainConfig", dataclasses.make_dataclass(
            "Changed", [(k, int, dataclasses.field(default=v)) for k, v in changed.items()],
            bases=(TrainConfig,),
        ),
    )  # fmt: skip
    w2 = TrainerWidget(viewer)
    got = {"steps": w2.steps.value(), "width": w2.width_spin.value(),
           "depth": w2.depth_spin.value(), "block_px": w2.block_px.value(),
           "checkpoint_every": w2.checkpoint_every.value()}  # fmt: skip
    assert got == changed
    w2.detach()


def test_a_table_with_fewer_bins_than_the_grids_is_refused_before_a_run_starts(
    widget, data, tmp_path
) -> None:
    """A 5-bin table for grids of ready bins 0-9 failed only in the training process, once
    the slides were read, and left a failed run folder with Resume enabled."""
    from lsr.counttable import CountTable

    edges = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    eta = np.array([[0.05, 0.95], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]])
    CountTable(eta, np.full_like(eta, 0.05), edges).save(tmp_path / "five.json")
    assert widget.set_table_file(tmp_path / "five.json")
    widget.add_folder(data)
    with pytest.raises(LsrInputError, match=r"_grid\.npy: the grid's ready bins go up to 9"):
        widget.configs()
    assert not widget.train() and not list((tmp_path / "models").glob("*"))


@pytest.mark.parametrize("text", ["inf", "1e400", "abc"])
def test_a_number_field_that_is_no_whole_number_is_named_not_raised(widget, data, text) -> None:
    """'inf' in Batch raised OverflowError through napari; the status stayed "Ready."."""
    widget.set_pairs(tp.find_pairs(data))
    widget.batch_size.setText(text)
    with pytest.raises(LsrInputError, match=f"'{text}' is not a number"):
        widget.configs()  # what Train calls, and says as "Cannot start training: …"
    widget.batch_size.setText("")


def test_a_folder_sets_block_size_from_its_sidecars_and_refuses_two_that_disagree(
    widget, tmp_path
) -> None:
    from lsr.grid import write_grid_sidecar

    pairs = make_data(tmp_path / "painted")
    for _, g in pairs:
        write_grid_sidecar(g, 2 * BLOCK, 2 * MPP)
    widget.block_px.setValue(240)
    widget.add_folder(tmp_path / "painted")
    assert widget.block_px.value() == 2 * BLOCK
    assert widget.working_mpp.value() == pytest.approx(2 * MPP)
    assert len(widget._pairs) == 2

    write_grid_sidecar(pairs[1][1], BLOCK, MPP)  # now the two grids disagree
    widget.set_pairs([])
    widget.add_folder(tmp_path / "painted")
    assert widget._pairs == [] and widget.status.styleSheet()  # nothing taken, in red
    assert "s1_grid.json" in widget.status.text() and "s0_grid.json" in widget.status.text()


def test_start_from_takes_the_models_network_and_goes_into_the_configs(
    widget, data, tmp_path, qtbot
) -> None:
    from lsr.checkpoint import write_checkpoint
    from lsr.model import UNet

    net = UNet(2, 6, 3)
    model = tmp_path / "intra-run"
    write_checkpoint(
        model, 40, model_state=net.state_dict(), trainer_state={},
        optimizer_state={"state": {}, "param_groups": []},
        metadata={"model": net.config(), "loss": "intra"},
    )  # fmt: skip
    widget.add_folder(data)
    assert widget.configs()[0].init_from is None  # empty: the table's prior
    assert widget.set_init_from(model)
    assert (widget.width_spin.value(), widget.depth_spin.value()) == (6, 3)
    assert "step 40" in widget.status.text() and "intra" in widget.status.text()
    assert all(c.init_from == str(model.resolve()) for c in widget.configs())
    widget.loss_checks["intra_inter"].setChecked(False)
    widget.loss_checks["intra"].setChecked(True)
    widget.steps.setValue(2)
    assert widget.train()  # the training process starts from those weights
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    state = widget.current().state
    assert state.status == "completed", state.message
    from lsr.checkpoint import read_checkpoint

    meta = read_checkpoint(state.run_dir).metadata
    assert meta["init_from"]["path"] == str(model.resolve() / "checkpoints" / "step-000040")
    assert not widget.set_init_from(tmp_path / "nothing-here")
    assert "Start from" in widget.status.text() and "nothing-here" in widget.status.text()
    assert widget.status.styleSheet()  # red
    with pytest.raises(LsrInputError, match="nothing-here"):
        widget.configs()  # Train says so before anything starts


def test_start_from_brings_the_models_norm_and_refuses_other_classes(widget, data, tmp_path):
    """The Trainer has no field for the network's normalisation: a model trained with
    another one (lsr train --norm) still fits. One of another number of classes than the
    count table is refused at Train, naming the model, before any process starts."""
    from lsr.checkpoint import write_checkpoint
    from lsr.model import UNet

    def model(name: str, net: UNet) -> Path:
        write_checkpoint(
            tmp_path / name, 1, model_state=net.state_dict(), trainer_state={},
            optimizer_state={"state": {}, "param_groups": []},
            metadata={"model": net.config(), "loss": "intra"},
        )  # fmt: skip
        return tmp_path / name

    widget.add_folder(data)
    assert widget.set_init_from(model("group-norm", UNet(2, 4, 2, "group")))
    assert {c.norm for c in widget.configs()} == {"group"}
    widget.set_init_from("")
    assert {c.norm for c in widget.configs()} == {"layer"}  # the default again
    assert widget.set_init_from(model("three-classes", UNet(3, 4, 2)))
    with pytest.raises(LsrInputError, match="has 3 classes, the count table 2") as err:
        widget.configs()
    assert "three-classes" in str(err.value)


def test_running_status_says_how_often_a_block_is_seen() -> None:
    from lsr import training_process as tp
    from napari_lsr.trainer import _data_line

    state = tp.RunState(Path("r"), "r", total_steps=10, n_blocks=1000, blocks_per_step=8)
    line = _data_line(state)
    assert line.startswith("<br>1000 labelled blocks · 10 steps × 8 blocks")
    assert "about 0.08 times" in line and "less than once" in line
    assert _data_line(tp.RunState(Path("r"), "r", total_steps=10)) == ""  # not started yet


def test_a_table_with_std_0_warns_when_chosen_and_unreadable_runs_are_named(
    widget, tmp_path
) -> None:
    """A ρ = 0 table was only mentioned when the run ended (hours later on a real run); a run
    whose checkpoint cannot be read left the model list without a word."""
    from lsr.counttable import CountTable

    table = CountTable.paper_table1()
    table.rho[:] = 0.0
    table.save(tmp_path / "rho0.json")
    before = len(notices("WARNING"))
    assert widget.set_table_file(tmp_path / "rho0.json")
    new = notices("WARNING")[before:]
    assert len(new) == 1 and "rho0.json" in new[0]
    assert "bins 0–20%, 20–30%" in new[0] and new[0].count("std 0: floored") == 1
    run = Path(widget.out_dir.text()) / "broken"
    run.mkdir(parents=True)
    (run / "latest.json").write_text("{trunc")
    before = len(notices("WARNING"))
    assert widget.refresh_models() == []
    widget.refresh_models()  # the same problem again: not warned twice
    new = notices("WARNING")[before:]
    assert len(new) == 1 and "1 run(s) left out" in new[0] and "latest.json" in new[0]


def test_closing_after_the_process_ended_asks_nothing(widget, data, monkeypatch) -> None:
    """A run that ended since the last poll still looked running: closing napari asked
    "A model is still training. Stop it?" about a finished process (and a scripted close
    hung on the modal box)."""
    from qtpy.QtGui import QCloseEvent

    from napari_lsr.trainer import TrainerWidget

    asked: list[bool] = []
    monkeypatch.setattr(TrainerWidget, "ask_close_choice", lambda self: asked.append(True))
    widget.add_folder(data)
    widget.steps.setValue(1)
    assert widget.train()
    assert widget.job.wait(120) == 0  # ended; no event processed, so no poll read it yet
    assert widget.running  # the widget's last known state
    assert widget.eventFilter(widget.window(), QCloseEvent()) is False and not asked


def test_the_widgets_distances_are_the_engines() -> None:
    """The Trainer keeps its own copy (importing lsr.losses would load torch with the dock);
    a distance added to or renamed in the engine must reach the widget's list."""
    from lsr.losses import DISTANCES
    from napari_lsr.trainer import DISTANCES as WIDGET_DISTANCES

    assert tuple(WIDGET_DISTANCES) == tuple(DISTANCES)
