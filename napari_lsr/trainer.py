"""The "Trainer" dock widget: one click trains a model in a separate process.

Everything heavy happens in the training process (:mod:`lsr.training_process`); this
widget only writes the run folders and launches the process. A worker thread
(:class:`ProgressPoller`) reads and parses the new lines of the runs' progress files every
:data:`POLL_S` seconds and hands them to the GUI thread, which folds them into the runs'
states and updates the display at most every :data:`SHOW_S` seconds (one coalesced
repaint: under software OpenGL every repaint re-composes the whole napari window). So the
viewer stays responsive, a crash of the training cannot take napari down, and a run keeps
going (detached) when napari closes.

Inputs:
- data: (slide, grid) pairs from layers opened from files (slides via their
  ``lsr_slide`` metadata or ``layer.source.path``; grids via ``lsr_grid`` metadata, or a
  grid file named like the slide beside it), or from a folder (``S.tif`` + ``S_grid.npy``);
- count table: the paper preset, the table shown in a Count table dock or in the
  annotator (its live or merged table), or a file;
- losses (several are queued and trained one after another), distance, steps; the other
  hyper-parameters in a collapsed "Advanced" section, empty = the default per loss;
- device (auto shows what it found), output folder.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from lsr import training_process as tp
from lsr.counttable import CountTable
from lsr.errors import LsrInputError
from lsr.slide import slide_name
from napari_lsr.loss_plot import LossPlot

POLL_S = 0.1  # seconds between reads of the progress files (worker thread)
CHUNK_BYTES = 256 * 1024  # at most this much progress (~1000 steps) per hand-over to the GUI
SHOW_S = 0.5  # seconds between display updates while training (ends are shown at once)
#: an ended run is reported (notification, model list) this long after its final display:
#: two short stretches of GUI-thread work instead of one long one
REPORT_MS = 50
PAPER_TABLE = "Paper Table 1"
WIDGET_TABLE = "Count table widget: "
FILE_TABLE = "File…"
LOSS_LABELS = {
    "intra": "intra",
    "inter": "inter",
    "intra_inter": "intra + inter",
    "intra_plus_inter": "intra + inter (sum)",
}
#: tooltip text beyond "Train a model with the … loss"
LOSS_NOTES = {
    "intra_inter": ": the paper's Eq. 11",
    "intra_plus_inter": ": not the paper's; intra's per-block term plus the inter term",
}
DISTANCES = ("gaussian-nll", "lsr-interval", "paper-printed", "kl")  # lsr.losses.DISTANCES
MODEL_COLUMNS = ("Name", "Loss", "Distance", "Steps", "Date", "Final loss")
#: Narrowest the model list's name column gets (px): a default run name's start and time.
MIN_NAME_PX = 120

_device_cache: dict[str, str] = {}


#: The Trainers of this process (weakly): a Trainer opened again after its dock was closed
#: during training takes the job over from the closed one, which watched and reported it
#: meanwhile, so that each run's end is reported once (see :meth:`TrainerWidget.attach_running`).
_TRAINERS: weakref.WeakSet[TrainerWidget] = weakref.WeakSet()
#: Closed Trainers still watching a run, held here: napari keeps no reference to a widget
#: whose dock it closed, and the next garbage collection took it, and the run's report, away.
_CLOSED_WATCHING: set[TrainerWidget] = set()


def _same(viewer: Any, other: Any) -> bool:
    """The same napari viewer: napari hands each widget its own proxy of it."""
    return getattr(viewer, "__wrapped__", viewer) is getattr(other, "__wrapped__", other)


def default_output_folder() -> Path:
    """Where models go unless the user picks a folder: the user data folder of napari-lsr."""
    from platformdirs import user_data_path

    return user_data_path("napari-lsr") / "models"


# ====================================================================== layers → pairs
def _layer_path(layer: Any, key: str) -> str | None:
    meta = getattr(layer, "metadata", {}) or {}
    info = meta.get(key)
    if isinstance(info, dict) and info.get("path"):
        return str(info["path"])
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path else None


def pairs_from_layers(layers: Any) -> tuple[list[tuple[str, str]], list[str], dict[str, Any]]:
    """``(pairs, problems, geometry)`` from napari layers opened from files.

    Slides: layers with ``lsr_slide`` metadata (the plugin's reader) or RGB image layers
    with a source path. Grids: layers with ``lsr_grid`` metadata. A slide is paired with the
    grid layer whose file is named like it (``S_grid.npy``, ``S.grid.csv``, ...; the one
    beside it first, else one opened from another folder), else with such a grid file
    beside it, else (one slide, one grid) with the only grid. ``geometry``
    is the ``block_px``/``working_mpp`` of the grids' sidecars when they agree.
    """
    slides, grids, geometry = [], {}, {}
    for layer in layers:
        meta = getattr(layer, "metadata", {}) or {}
        if "lsr_grid" in meta:
            path = _layer_path(layer, "lsr_grid")
            if path:
                grids[str(Path(path).resolve())] = path
                geo = meta["lsr_grid"]
                for key in ("block_px", "working_mpp"):
                    if key in geo and geo.get("sidecar", True):  # not the reader's defaults
                        geometry.setdefault(key, set()).add(geo[key])
        elif type(layer).__name__ == "Labels":
            continue  # masks and ground truth are never training slides
        elif "lsr_slide" in meta or getattr(layer, "rgb", False):
            path = _layer_path(layer, "lsr_slide")
            if path and path not in slides:
                slides.append(path)
    pairs, problems = [], []
    named: dict[str, list[str]] = {}  # grid layers by the slide name they are for
    for path in grids.values():
        named.setdefault(tp.grid_slide_name(path) or "", []).append(path)
    for slide in slides:
        beside = tp.grid_beside(slide)
        layers = named.get(slide_name(slide), [])  # opened from any folder
        grid = None
        if beside is not None and str(beside.resolve()) in grids:
            grid = grids[str(beside.resolve())]
        elif len(layers) > 1:
            problems.append(
                f"{Path(slide).name}: {len(layers)} grid layers named like it, none beside it "
                f"({', '.join(layers)}): close all but its own"
            )
            continue
        elif layers:
            grid = layers[0]
        elif beside is not None:
            grid = str(beside)
        elif len(slides) == 1 and len(grids) == 1:
            grid = next(iter(grids.values()))
        if grid is None:
            problems.append(f"{Path(slide).name}: no grid layer or grid file named like it")
        else:
            pairs.append((slide, grid))
    if not slides:
        problems.append("no slide layer opened from a file")
    geo = {k: next(iter(v)) for k, v in geometry.items() if len(v) == 1}
    return pairs, problems, geo


# ====================================================================== the widget
class _RefreshingCombo(QComboBox):
    """A combo box that refills its items (``refresh()``) each time its list opens."""

    def __init__(self, refresh: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # Qt's name
        self._refresh()
        super().showPopup()


class _DeviceProbe(QObject):
    found = Signal(str, str)


class ProgressPoller(QObject):
    """Reads runs' progress files in a worker thread; parsed batches arrive as a signal.

    Every ``period_s`` seconds the thread calls :meth:`lsr.training_process.RunMonitor.read`
    (a ``stat``, the new bytes, JSON parsing) for each monitor and emits
    ``delivered(monitor, batch)`` when it found events or the process is gone. The poller
    lives in the GUI thread, so Qt queues the signal there, in order; the receiver folds
    the batch in with ``monitor.apply(batch)``. A backlog (attaching to a long run) comes
    in chunks of ``chunk_bytes``, so the GUI thread never folds too much at once. The
    monitors must not be read elsewhere while the poller runs. To dispose of a started
    poller, :meth:`stop` it and drop it: it deletes itself once its thread has ended
    (``deleteLater`` any earlier could free it while the thread is inside ``emit``).
    """

    delivered = Signal(object, object)  # RunMonitor, ProgressBatch
    ended = Signal()  # the thread's last act

    def __init__(
        self,
        monitors: list[tp.RunMonitor],
        period_s: float = POLL_S,
        chunk_bytes: int = CHUNK_BYTES,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.monitors = list(monitors)
        self.period_s = float(period_s)
        self.chunk_bytes = int(chunk_bytes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ended.connect(self.deleteLater)  # queued: runs in the GUI thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lsr-progress", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 0.0) -> None:
        """Ask the thread to end (it does within one period); wait up to ``wait_s``."""
        self._stop.set()
        if wait_s > 0 and self._thread is not None:
            self._thread.join(wait_s)

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._poll()
        finally:
            with contextlib.suppress(RuntimeError):  # (already deleted with its parent)
                self.ended.emit()

    def _poll(self) -> None:
        alive = [True] * len(self.monitors)
        while not self._stop.is_set():
            more = False
            for i, m in enumerate(self.monitors):
                try:
                    batch = m.read(self.chunk_bytes)
                except OSError:  # e.g. the run folder was deleted: try again later
                    continue
                more |= batch.more
                if batch.events or batch.restart or batch.alive != alive[i]:
                    alive[i] = batch.alive
                    try:
                        self.delivered.emit(m, batch)
                    except RuntimeError:  # the receiver is gone
                        return
            if not more:
                self._stop.wait(self.period_s)


class TrainerWidget(QWidget):
    """Train LSR models in the background; see the module docstring.

    Public methods used by buttons and tests: :meth:`set_pairs`, :meth:`add_folder`,
    :meth:`use_layers`, :meth:`train`, :meth:`cancel`, :meth:`resume`, :meth:`attach`,
    :meth:`refresh_models`; :attr:`monitors` are the runs being watched.
    """

    run_finished = Signal(str, str)  # run folder, status

    def __init__(self, napari_viewer=None, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: tp.TrainingJob | None = None
        self.monitors: list[tp.RunMonitor] = []
        self._reported: set[tuple[str, str]] = set()
        self._to_report: list[tp.RunState] = []
        self._pbar: Any = None
        self._pbar_run: Path | None = None
        self._table_file: str | None = None
        self._pairs: list[tuple[str, str]] = []
        self.max_update_s = 0.0  # longest GUI-thread update so far (benchmarks)
        self._stale = True
        self._in_refresh = False
        self._refresh_again = False
        self._poller: ProgressPoller | None = None
        self.timer = QTimer(self)  # display updates while watching
        self.timer.setInterval(int(SHOW_S * 1000))
        self.timer.timeout.connect(self._refresh)
        self._build()
        self._probe = _DeviceProbe(self)
        self._probe.found.connect(self._device_found)
        self._probe_device("auto")
        self._update_placeholders()
        self._update_buttons()
        self._guarded: QWidget | None = None  # the main window whose closing we watch
        if self.viewer is not None:
            self.viewer.layers.events.inserted.connect(self._refresh_tables)
            self.viewer.layers.events.removed.connect(self._refresh_tables)
        self.refresh_models()
        self.installEventFilter(self)  # its dock closing: eventFilter
        _TRAINERS.add(self)
        # once napari has docked it (the close guard needs the main window)
        QTimer.singleShot(0, self.attach_running)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        # data
        self.pairs_view = QTableWidget(0, 2)
        self.pairs_view.setHorizontalHeaderLabels(["Slide", "Grid"])
        self.pairs_view.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.pairs_view.verticalHeader().setVisible(False)
        self.pairs_view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.pairs_view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.pairs_view.setMaximumHeight(110)
        self.pairs_view.setToolTip("Training data: each slide with its low-resolution grid")
        self.layers_button = QPushButton("From layers")
        self.layers_button.setToolTip(
            "Use the slide and grid layers opened from files (grids paired by file name)"
        )
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip("Add every slide S.tif with a grid S_grid.npy/.csv beside it")
        self.remove_button = QPushButton("Remove")
        data_box = QGroupBox("Data")
        data_layout = QVBoxLayout(data_box)
        data_layout.addWidget(self.pairs_view)
        row = QHBoxLayout()
        for b in (self.layers_button, self.folder_button, self.remove_button):
            row.addWidget(b)
        data_layout.addLayout(row)

        # count table, losses, distance, steps
        self.table_combo = _RefreshingCombo(self._refresh_tables)
        self.table_combo.setToolTip("Count table p(c|z) giving the targets of each bin")
        self._refresh_tables()
        self.loss_checks = {k: QCheckBox(v) for k, v in LOSS_LABELS.items()}
        for key, box in self.loss_checks.items():
            box.setToolTip(
                f"Train a model with the {LOSS_LABELS[key]} loss{LOSS_NOTES.get(key, '')} "
                "(checked ones run in turn)"
            )
        losses_row = QHBoxLayout()
        for box in self.loss_checks.values():
            losses_row.addWidget(box)
        losses_row.addStretch(1)
        self.distance = QComboBox()
        self.distance.addItems(DISTANCES)
        self.distance.setToolTip(
            "Distance between predicted and target class fractions (docs/losses.md)"
        )
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.steps.setSingleStep(100)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device_label = QLabel("detecting…")
        self.device_label.setWordWrap(True)
        device_row = QHBoxLayout()
        device_row.addWidget(self.device)
        device_row.addWidget(self.device_label, 1)
        self.out_dir = QLineEdit(str(default_output_folder()))
        self.out_dir.setToolTip("Each run gets its own folder here (checkpoints, log, run.json)")
        self.out_button = QPushButton("…")
        self.out_button.setMaximumWidth(30)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_dir, 1)
        out_row.addWidget(self.out_button)
        form = QFormLayout()
        form.addRow("Count table", self.table_combo)
        form.addRow("Loss", losses_row)
        form.addRow("Distance", self.distance)
        form.addRow("Steps", self.steps)
        form.addRow("Device", device_row)
        form.addRow("Output", out_row)

        # advanced (collapsed): empty fields = the default for the loss (lsr.train.DEFAULTS)
        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        grid = QFormLayout(adv)
        self.lr = QLineEdit()
        self.batch_size = QLineEdit()
        self.groups_per_batch = QLineEdit()
        self.group_size = QLineEdit()
        self.block_px = QSpinBox()
        self.block_px.setRange(4, 4096)
        self.working_mpp = QDoubleSpinBox()
        self.working_mpp.setDecimals(3)
        self.working_mpp.setRange(0.05, 100.0)
        self.width_spin = QSpinBox()
        self.width_spin.setRange(1, 512)
        self.depth_spin = QSpinBox()
        self.depth_spin.setRange(0, 8)
        self.variance_norm = QComboBox()
        self.variance_norm.addItems(["default", "n2", "n"])
        self.variance_norm.setToolTip(
            "Block variance of the losses: 1/n² (n2) or the paper's printed 1/n (n). "
            "default: n for intra and intra + inter (sum), n2 for intra + inter "
            "(lsr.train.DEFAULTS). The inter loss does not use it: it compares the spread "
            "of a group's block means"
        )
        self.augment = QCheckBox("augment blocks")
        self.min_tissue = QDoubleSpinBox()
        self.min_tissue.setRange(0.0, 1.0)
        self.min_tissue.setSingleStep(0.05)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.checkpoint_every = QSpinBox()
        self.checkpoint_every.setRange(1, 10_000_000)
        self.num_workers = QSpinBox()
        self.num_workers.setRange(0, 64)
        self.init_from = QLineEdit()
        self.init_from.setPlaceholderText("the count table's prior")
        self.init_from.setToolTip(
            "A trained model (run folder or checkpoint) whose weights the new runs start from "
            "instead of the count table's prior, e.g. intra + inter from an intra network; "
            "its U-Net width and depth are taken over. Empty: start from the prior."
        )
        self.init_button = QPushButton("…")
        self.init_button.setMaximumWidth(30)
        init_row = QHBoxLayout()
        init_row.addWidget(self.init_from, 1)
        init_row.addWidget(self.init_button)
        grid.addRow("Learning rate", self.lr)
        grid.addRow("Batch (intra)", self.batch_size)
        grid.addRow("Groups / batch", self.groups_per_batch)
        grid.addRow("Group size", self.group_size)
        grid.addRow("Block px", self.block_px)
        grid.addRow("µm / px", self.working_mpp)
        grid.addRow("U-Net width", self.width_spin)
        grid.addRow("U-Net depth", self.depth_spin)
        grid.addRow("Variance norm", self.variance_norm)
        grid.addRow("Min tissue", self.min_tissue)
        grid.addRow("Seed", self.seed)
        grid.addRow("Checkpoint every", self.checkpoint_every)
        grid.addRow("Loader workers", self.num_workers)
        grid.addRow("Start from", init_row)
        grid.addRow("", self.augment)
        self.advanced.addWidget(adv)
        self.advanced.collapse(animate=False)
        self._show_defaults()

        # actions
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Start training in a separate process")
        self.train_button.setStyleSheet("font-weight: bold")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current step; the checkpoint is kept")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the cancelled or failed runs from their checkpoint")
        self.attach_button = QPushButton("Attach…")
        self.attach_button.setToolTip(
            "Watch a run folder (running or finished), e.g. after a restart"
        )
        actions = QGridLayout()
        actions.addWidget(self.train_button, 0, 0, 1, 2)
        actions.addWidget(self.cancel_button, 0, 2)
        actions.addWidget(self.resume_button, 1, 0)
        actions.addWidget(self.attach_button, 1, 1, 1, 2)

        # progress
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m steps")
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.queue_label = QLabel("")
        self.queue_label.setWordWrap(True)
        self.plot = LossPlot(self)

        # models
        self._model_problems: list[str] = []  # last warned (once per set)
        self.models_view = QTableWidget(0, len(MODEL_COLUMNS))
        self.models_view.setHorizontalHeaderLabels(MODEL_COLUMNS)
        self.models_view.verticalHeader().setVisible(False)
        self.models_view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.models_view.setSelectionBehavior(QAbstractItemView.SelectRows)
        header = self.models_view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        # the name takes what the other columns leave (elided, full name as tooltip), but
        # never less than MIN_NAME_PX: in a narrow dock a stretched name shrank to "i…2"
        # for every run; then the table scrolls sideways instead
        header.setSectionResizeMode(0, QHeaderView.Interactive)
        self._models_viewport = self.models_view.viewport()
        self._models_viewport.installEventFilter(self)
        self.models_view.setTextElideMode(Qt.ElideMiddle)
        self.models_view.setWordWrap(False)
        self.models_view.setMinimumHeight(90)
        self.refresh_button = QPushButton("Refresh")
        models_box = QGroupBox("Models in the output folder")
        models_layout = QVBoxLayout(models_box)
        models_layout.addWidget(self.models_view)
        models_layout.addWidget(self.refresh_button, 0, Qt.AlignRight)

        layout = QVBoxLayout(self)
        layout.addWidget(data_box)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addLayout(actions)
        layout.addWidget(self._live_panel(), 1)
        layout.addWidget(models_box)

        self.layers_button.clicked.connect(self.use_layers)
        self.folder_button.clicked.connect(self._ask_folder)
        self.remove_button.clicked.connect(self._remove_selected)
        self.table_combo.activated.connect(self._table_chosen)
        for box in self.loss_checks.values():
            box.toggled.connect(self._update_placeholders)
        self.out_button.clicked.connect(self._ask_out_dir)
        self.init_button.clicked.connect(self._ask_init_from)
        self.init_from.editingFinished.connect(self._init_from_chosen)
        self.out_dir.editingFinished.connect(self.refresh_models)
        self.device.currentTextChanged.connect(self._probe_device)
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(lambda: self.resume())
        self.attach_button.clicked.connect(self._ask_attach)
        self.refresh_button.clicked.connect(self.refresh_models)

    def _live_panel(self) -> QWidget:
        """Progress bar, status, queue and loss curve: what changes while training, in a
        native window of its own. In a window holding napari's OpenGL canvas every repaint
        re-composes the whole window through OpenGL (~15 ms under software rendering: Xvfb,
        remote X); a native child window is flushed on its own (~1 ms)."""
        panel = QWidget()
        live = QVBoxLayout(panel)
        live.setContentsMargins(0, 0, 0, 0)
        live.addWidget(self.progress_bar)
        live.addWidget(self.status)
        live.addWidget(self.queue_label)
        live.addWidget(self.plot, 1)
        panel.setAttribute(Qt.WA_DontCreateNativeAncestors)
        panel.setAttribute(Qt.WA_NativeWindow)
        self.live_panel = panel
        return panel

    # ------------------------------------------------------------------ data
    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def set_pairs(
        self, pairs: list[tuple[str, str]], geometry: dict[str, Any] | None = None
    ) -> None:
        """Use these (slide, grid) pairs; ``geometry`` may set block_px / working_mpp."""
        self._pairs = [(str(s), str(g)) for s, g in pairs]
        self.pairs_view.setRowCount(len(self._pairs))
        for r, (slide, grid) in enumerate(self._pairs):
            for c, path in enumerate((slide, grid)):
                item = QTableWidgetItem(Path(path).name)
                item.setToolTip(path)
                self.pairs_view.setItem(r, c, item)
        geometry = geometry or {}
        if "block_px" in geometry:
            self.block_px.setValue(int(geometry["block_px"]))
        if "working_mpp" in geometry:
            self.working_mpp.setValue(float(geometry["working_mpp"]))

    def use_layers(self) -> None:
        """Pairs from the viewer's layers (see :func:`pairs_from_layers`)."""
        if self.viewer is None:
            return
        pairs, problems, geometry = pairs_from_layers(self.viewer.layers)
        if pairs:
            self.set_pairs(pairs, geometry)
        if problems:
            self._say("Layers: " + "; ".join(problems), error=not pairs)
        else:
            self._say(f"{len(pairs)} slide(s) with grids from the layers")

    def add_folder(self, folder: str | Path) -> None:
        """Add every slide/grid pair of ``folder`` (sidecar geometry of the grids is used)."""
        try:
            pairs = tp.find_pairs(folder)
        except LsrInputError as err:
            self._say(str(err), error=True)
            return
        from lsr.grid import sidecar_geometry

        try:
            geometry = sidecar_geometry([g for _, g in pairs])
        except LsrInputError as err:
            self._say(str(err), error=True)
            return
        geometry.pop("from", None)
        known = set(self._pairs)
        self.set_pairs(self._pairs + [p for p in pairs if p not in known], geometry)
        self._say(f"{len(pairs)} slide(s) with grids from {folder}")

    def _remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.pairs_view.selectedIndexes()}, reverse=True)
        pairs = list(self._pairs)
        for r in rows:
            del pairs[r]
        self.set_pairs(pairs)

    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of slides and grids")
        if folder:
            self.add_folder(folder)

    def _ask_out_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.out_dir.text())
        if folder:
            self.out_dir.setText(folder)
            self.refresh_models()

    def _ask_init_from(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Model to start from (a run folder)", self.out_dir.text()
        )
        if folder:
            self.set_init_from(folder)

    def set_init_from(self, path: str | Path) -> bool:
        """Start new runs from the model at ``path`` (empty: the prior); takes over its U-Net
        width and depth, so the two networks fit. False (and says why) when it is no model."""
        self.init_from.setText(str(path))
        return self._init_from_chosen()

    def _init_from_chosen(self) -> bool:
        from lsr.checkpoint import read_metadata

        text = self.init_from.text().strip()
        if not text:
            return True
        try:
            _, meta = read_metadata(Path(text).expanduser())
        except (LsrInputError, OSError) as err:
            self._say(f"Start from: {err}", error=True)
            return False
        net = meta["model"]
        for spin, key in ((self.width_spin, "width"), (self.depth_spin, "depth")):
            if isinstance(net.get(key), int):
                spin.setValue(net[key])
        self._say(
            f"New runs start from {Path(text).name} (step {meta['step']}, "
            f"{meta.get('loss', '?')}): U-Net width {net.get('width')}, depth {net.get('depth')}"
        )
        return True

    # ------------------------------------------------------------------ count table
    def _table_widgets(self) -> dict[str, Any]:
        found = {}
        window = getattr(self.viewer, "window", None)
        docks = getattr(window, "dock_widgets", {}) if window is not None else {}
        for name, widget in dict(docks).items():
            if widget is not self and isinstance(getattr(widget, "table", None), CountTable):
                found[name] = widget
        return found

    def _refresh_tables(self, *_args: Any) -> None:
        current = self.table_combo.currentText()
        self.table_combo.blockSignals(True)
        self.table_combo.clear()
        self.table_combo.addItem(PAPER_TABLE)
        for name in self._table_widgets():
            self.table_combo.addItem(WIDGET_TABLE + name)
        if self._table_file:
            self.table_combo.addItem(self._table_file)
        self.table_combo.addItem(FILE_TABLE)
        index = self.table_combo.findText(current)
        self.table_combo.setCurrentIndex(max(index, 0))
        self.table_combo.blockSignals(False)

    def set_table_file(self, path: str | Path) -> bool:
        """Use a count-table file (checked now: a bad file is reported, not trained on)."""
        try:
            table = CountTable.load(path)
        except (LsrInputError, OSError) as err:
            self._say(f"Could not load the count table: {err}", error=True)
            return False
        self._table_file = str(path)
        self._refresh_tables()
        self.table_combo.setCurrentText(str(path))
        if problems := table.bin_problems():  # trainable, but the expert should look again
            self._notify(f"Count table {Path(path).name}: {_bins_text(table, problems)}.",
                         warning=True)  # fmt: skip
        return True

    def _table_chosen(self, _index: int) -> None:
        if self.table_combo.currentText() == FILE_TABLE:
            path, _ = QFileDialog.getOpenFileName(
                self, "Count table", "", "Count tables (*.csv *.json)"
            )
            if not path or not self.set_table_file(path):
                self.table_combo.setCurrentIndex(0)
        else:
            self._refresh_tables()

    def current_table(self) -> tuple[str, CountTable | None]:
        """``(config value, in-memory table)``: "paper", a file path, or a widget's table.

        Raises :class:`LsrInputError` when the chosen file or dock is gone: training never
        falls back to paper Table 1 behind the user's back.
        """
        text = self.table_combo.currentText()
        if text.startswith(WIDGET_TABLE):
            name = text[len(WIDGET_TABLE) :]
            widget = self._table_widgets().get(name)
            if widget is None:
                raise LsrInputError(
                    f"the count table dock '{name}' is closed: choose another count table"
                )
            return "paper", widget.table
        if text in (PAPER_TABLE, FILE_TABLE, ""):
            return "paper", None
        if not Path(text).is_file():
            raise LsrInputError(f"count table file not found: {text}")
        return text, None

    # ------------------------------------------------------------------ settings
    def _show_defaults(self) -> None:
        """Start from :class:`lsr.train.TrainConfig`'s defaults, the ones ``lsr train`` uses
        (one place to change them; docs/results.md has the numbers behind them)."""
        from lsr.train import TrainConfig

        d = TrainConfig()
        self.loss_checks[d.loss].setChecked(True)
        self.distance.setCurrentText(d.distance)
        self.steps.setValue(d.steps)
        self.block_px.setValue(d.block_px)
        self.working_mpp.setValue(d.working_mpp)
        self.width_spin.setValue(d.width)
        self.depth_spin.setValue(d.depth)
        self.augment.setChecked(d.augment)
        self.min_tissue.setValue(d.min_tissue)
        self.seed.setValue(d.seed)
        self.checkpoint_every.setValue(d.checkpoint_every)
        self.num_workers.setValue(d.num_workers)

    def selected_losses(self) -> list[str]:
        return [k for k, box in self.loss_checks.items() if box.isChecked()]

    def _update_placeholders(self, *_args: Any) -> None:
        """Empty fields show the default they stand for (lsr.train.DEFAULTS).

        Each field shows the defaults of the ticked losses that use it (all losses that use
        it when none of those is ticked), joined with " / " where they differ.
        """
        from lsr.train import DEFAULTS

        ticked = self.selected_losses() or ["intra_inter"]

        def text(key: str) -> str:
            users = [k for k in DEFAULTS if DEFAULTS[k].get(key) is not None]
            values = {DEFAULTS[k][key] for k in (set(ticked) & set(users) or users)}
            return "default: " + " / ".join(f"{v:g}" for v in sorted(values))

        self.lr.setPlaceholderText(text("lr"))
        self.batch_size.setPlaceholderText(text("batch_size"))
        self.groups_per_batch.setPlaceholderText(text("groups_per_batch"))
        self.group_size.setPlaceholderText(text("group_size"))

    @staticmethod
    def _optional(edit: QLineEdit, kind: type) -> Any:
        text = edit.text().strip()
        if not text:
            return None
        try:
            return kind(float(text)) if kind is int else kind(text)
        except (ValueError, OverflowError):  # "inf", "1e400" for a whole number
            raise LsrInputError(f"'{text}' is not a number") from None

    def configs(self) -> list[Any]:
        """One resolved :class:`lsr.train.TrainConfig` per checked loss (raises on bad input)."""
        from lsr.train import DataPair, TrainConfig

        if not self._pairs:
            raise LsrInputError("no training data: add slides with grids (layers or a folder)")
        losses = self.selected_losses()
        if not losses:
            raise LsrInputError("choose at least one loss")
        table, in_memory = self.current_table()
        init_from, init_net = self._init_from_model(in_memory or table)
        chosen = in_memory
        if chosen is None:
            chosen = CountTable.paper_table1() if table == "paper" else CountTable.load(table)
        tp.check_grid_bins([g for _, g in self._pairs], self.block_px.value(), chosen.edges)
        out = []
        for loss in losses:
            cfg = TrainConfig(
                data=[DataPair(s, g) for s, g in self._pairs],
                table=table,
                loss=loss,
                distance=self.distance.currentText(),
                steps=self.steps.value(),
                lr=self._optional(self.lr, float),
                batch_size=self._optional(self.batch_size, int),
                groups_per_batch=self._optional(self.groups_per_batch, int),
                group_size=self._optional(self.group_size, int),
                block_px=self.block_px.value(),
                working_mpp=self.working_mpp.value(),
                width=self.width_spin.value(),
                depth=self.depth_spin.value(),
                variance_norm=None
                if self.variance_norm.currentText() == "default"
                else self.variance_norm.currentText(),
                augment=self.augment.isChecked(),
                min_tissue=self.min_tissue.value(),
                seed=self.seed.value(),
                checkpoint_every=self.checkpoint_every.value(),
                num_workers=self.num_workers.value(),
                device=self.device.currentText(),
                init_from=init_from,
                **({"norm": init_net["norm"]} if "norm" in init_net else {}),
            )
            cfg.resolved()  # validate now, in words, before anything starts
            out.append(cfg)
        return out

    def _init_from_model(self, table: str | CountTable) -> tuple[str | None, dict[str, Any]]:
        """The model to start from and its network config, or ``(None, {})``: the table's prior.

        Checked here, in words, not in the training process: a missing or foreign folder,
        and a model with another number of classes than ``table`` (a config value or a
        table). Its normalisation comes over with it (the Trainer has no field for it).
        """
        from lsr.checkpoint import read_metadata

        text = self.init_from.text().strip()
        if not text:
            return None, {}
        path = Path(text).expanduser()
        folder, meta = read_metadata(path)
        net = meta["model"]
        names = (table if isinstance(table, CountTable) else CountTable.load(table)).class_names
        if net.get("num_classes") not in (None, len(names)):
            raise LsrInputError(
                f"the model to start from has {net['num_classes']} classes, the count table "
                f"{len(names)} ({', '.join(names)}): choose a model of this table's classes",
                folder,
            )
        return str(path.resolve()), net

    # ------------------------------------------------------------------ device
    def _probe_device(self, name: str) -> None:
        if name in _device_cache:
            self._device_found(name, _device_cache[name])
            return
        self.device_label.setText("detecting…")

        def work() -> None:
            found = tp.probe_device(name)
            _device_cache[name] = found
            with contextlib.suppress(RuntimeError):  # the widget may be gone
                self._probe.found.emit(name, found)

        threading.Thread(target=work, name="lsr-device-probe", daemon=True).start()

    def _device_found(self, name: str, found: str) -> None:
        if name != self.device.currentText():
            return
        prefix = "found " if name == "auto" else ""
        self.device_label.setText(prefix + found)
        colour = "#e05050" if found.startswith("unavailable") else ""
        self.device_label.setStyleSheet(f"color: {colour}" if colour else "")

    # ------------------------------------------------------------------ actions
    def train(self) -> bool:
        """Write one run folder per checked loss and start one process training them in turn."""
        if self.running:
            self._say("Training is already running; cancel it first.", error=True)
            return False
        try:
            configs = self.configs()
            _, table = self.current_table()
            if table is not None and (empty := table_bins_without_estimate(table)):
                self._notify(
                    f"Count table: bin(s) {', '.join(map(str, empty))} have no estimate yet; "
                    "paper Table 1's values stand in for them.",
                    warning=True,
                )
            folder = Path(self.out_dir.text()).expanduser()
            runs = [tp.prepare_run(cfg, folder, table=table) for cfg in configs]
            job = tp.launch(runs)
        except (LsrInputError, OSError) as err:
            self._say(f"Cannot start training: {err}", error=True)
            return False
        self._watch(job)
        self._say(f"Training {len(runs)} model(s) in a separate process (pid {job.pid}).")
        return True

    def cancel(self) -> None:
        """Stop after the current step (the checkpoint is kept); queued runs do not start."""
        if self.job is None:
            return
        self.job.cancel()
        self._say("Stopping after the current step…")

    def resume(self, steps: int | None = None) -> bool:
        """Continue the watched runs that did not complete, from their last checkpoint.

        ``steps``: new total number of steps (``None``: each run's own).
        """
        if self.running:
            self._say("Training is still running.", error=True)
            return False
        todo = [m.run_dir for m in self.monitors if m.state.status not in ("completed",)]
        if not todo:
            self._say("Nothing to resume: attach a cancelled or failed run first.", error=True)
            return False
        try:
            runs = [tp.prepare_resume(run, steps) for run in todo]
            job = tp.launch(runs)
        except (LsrInputError, OSError) as err:
            self._say(f"Cannot resume: {err}", error=True)
            return False
        self._watch(job)
        self._say(f"Resuming {len(runs)} run(s) (pid {job.pid}).")
        return True

    def attach(self, run_dir: str | Path) -> bool:
        """Watch an existing run folder (and the rest of its job): running or finished."""
        try:
            job = tp.attach(run_dir)
        except LsrInputError as err:
            self._say(f"Cannot attach: {err}", error=True)
            return False
        self._watch(job, report_old=False)
        self.out_dir.setText(str(Path(run_dir).resolve().parent))
        self.refresh_models()
        return True

    def attach_running(self) -> bool:
        """Watch a training still running that nobody watches (a Trainer opened later
        showed "Ready." beside it). Nothing when already watching. In turn:

        - the job of a Trainer of this viewer whose dock was closed: taken over (that one
          watched and would report it; now this one does, once);
        - else the newest job in the output folder launched by a napari that is gone
          (quit or restarted during training; ``lsr.training_process.running_runs``), and
          not watched by another Trainer of this process.
        """
        if self.job is not None:
            return False
        for other in list(_CLOSED_WATCHING):
            job = other.job
            if not _same(other.viewer, self.viewer) or job is None or not job.alive:
                continue
            # its reports: those it made or queued are not made again; queued ones are ours
            self._reported |= other._reported
            self._to_report.extend(other._to_report)
            other._to_report.clear()
            other.detach()
            other.job, other.monitors = None, []  # (never taken over twice)
            self.out_dir.setText(str(job.runs[0].parent))
            self._watch(job)  # ends it had not seen yet are reported here
            if self._to_report:
                QTimer.singleShot(REPORT_MS, self._report_ended)
            self.refresh_models()
            return True
        watched = {pid for w in list(_TRAINERS) if w is not self and (pid := w.watched_pid())}
        runs = [
            r
            for r in tp.running_runs(Path(self.out_dir.text()).expanduser())
            if tp.process_pid(r) not in watched
        ]
        if not runs or not self.attach(runs[0]):
            return False
        if len(runs) > 1:
            others = ", ".join(r.name for r in runs[1:])
            self._notify(
                f"Also training in this folder: {others} (Attach… watches it once this one ends)"
            )
        return True

    def _ask_attach(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.out_dir.text())
        if folder:
            self.attach(folder)

    def watched_pid(self) -> int | None:
        """The pid of the job this Trainer watches now (None: none, or its widget is gone)."""
        with contextlib.suppress(RuntimeError):  # a Trainer whose window was deleted
            if self.job is not None and self.timer.isActive():
                return self.job.pid
        return None

    # ------------------------------------------------------------------ watching
    @property
    def running(self) -> bool:
        return self.job is not None and any(m.state.active for m in self.monitors)

    def _watch(self, job: tp.TrainingJob, report_old: bool = True) -> None:
        self._stop_poller()
        self.job = job
        self.monitors = [tp.RunMonitor(r, job) for r in job.runs]
        self._close_pbar()
        for m in self.monitors:  # what is there now (attach: the history), read here once
            m.poll()
            if not report_old and not m.state.active:  # an attached job's ends are history
                self._reported.add((str(m.run_dir), m.state.ended))
        self._poller = ProgressPoller(self.monitors, parent=self)
        self._poller.delivered.connect(self._deliver)
        self._poller.start()
        self.timer.start()
        self._update_buttons()
        self._guard_close()
        self._stale = True
        self._refresh()

    def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poller.stop()  # it deletes itself when its thread has ended
            self._poller = None

    def _guard_close(self) -> None:
        """Watch the main window's Close event (the dock's top-level window)."""
        window = self.window()
        if window is not self and window is not self._guarded:
            if self._guarded is not None:
                self._guarded.removeEventFilter(self)
            window.installEventFilter(self)
            self._guarded = window

    def current(self) -> tp.RunMonitor | None:
        """The run shown: the first one still active, else the last one watched."""
        for m in self.monitors:
            if m.state.active:
                return m
        return self.monitors[-1] if self.monitors else None

    def _deliver(self, monitor: tp.RunMonitor, batch: tp.ProgressBatch) -> None:
        """Fold a batch from the poller into its run's state (GUI thread); ends show at once."""
        if self._poller is None or not any(monitor is m for m in self.monitors):
            return  # from a poller of runs no longer watched
        t0 = time.perf_counter()
        was_active = monitor.state.active
        if monitor.apply(batch):
            self._stale = True
        self.max_update_s = max(self.max_update_s, time.perf_counter() - t0)
        if was_active and not monitor.state.active:
            self._refresh()

    def _refresh(self) -> None:
        """Report runs that ended and update the display if there is news (the timer calls
        it every :data:`SHOW_S` seconds); stops watching when no run is active."""
        if self._in_refresh:  # re-entered: napari's progress bar processes events, so a
            self._refresh_again = True  # run's end can arrive mid-refresh; show it after
            return
        self._in_refresh = True
        t0 = time.perf_counter()
        try:
            self._refresh_again = True
            while self._refresh_again:
                self._refresh_again = False
                self._refresh_once()
        finally:
            self._in_refresh = False
            self.max_update_s = max(self.max_update_s, time.perf_counter() - t0)

    def _refresh_once(self) -> None:
        """One pass of :meth:`_refresh` (repeated while a run's news arrived mid-pass)."""
        for m in self.monitors:
            state = m.state
            key = (str(m.run_dir), state.ended or state.status)
            if not state.active and key not in self._reported:
                self._reported.add(key)
                self._to_report.append(state)
                QTimer.singleShot(REPORT_MS, self._report_ended)
        running = self.running
        if self._stale or not running:
            self._stale = False
            self._show(self.current())
        if not running:
            self.timer.stop()
            self._stop_poller()
            self._close_pbar()
            self._update_buttons()
            self._unguard_close()

    def _show(self, m: tp.RunMonitor | None) -> None:
        if m is None:
            return
        s = m.state
        if self.status.styleSheet():
            self.status.setStyleSheet("")  # (re-polishes the label: only when it was red)
        # texts of one to four lines (a running run's: its step line and its data line,
        # each wrapped once in a narrow dock) get the same height: the panel keeps its
        # layout, so the loss plot is not resized (and re-rendered) when the status changes
        self.status.setMinimumHeight(4 * self.status.fontMetrics().lineSpacing())
        total = max(s.total_steps, 1)
        # QProgressBar.setValue repaints at once (one more window composition): with updates
        # off it only changes the value, and re-enabling them schedules one ordinary update
        self.progress_bar.setUpdatesEnabled(False)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(s.step, total))
        self.progress_bar.setUpdatesEnabled(True)
        name = LOSS_LABELS.get(s.loss, s.loss)
        if s.status == "running" and s.losses:
            eta = _duration(s.eta_s)
            self.status.setText(
                f"<b>{name}</b> · step {s.step}/{s.total_steps} · loss {s.losses[-1]:.4g} · "
                f"{s.blocks_per_s:.1f} blocks/s · ETA {eta} · {s.device}" + _data_line(s)
            )
            self._update_pbar(
                m, f"{name}: loss {s.losses[-1]:.4g}, {s.blocks_per_s:.1f} blocks/s, ETA {eta}"
            )
        elif s.status == "running":
            self.status.setText(f"<b>{name}</b> · starting (loading data, building the network)…")
            self._update_pbar(m, f"{name}: starting")
        elif s.status == "queued":
            self.status.setText(f"<b>{name}</b> · waiting for the training process…")
        else:
            colour = {"completed": "#60c060", "cancelled": "#e0a040"}.get(s.status, "#e05050")
            detail = f": {s.message}" if s.message else ""
            self.status.setText(
                f"<b>{name}</b> · <span style='color:{colour}'>{s.status}</span> at step "
                f"{s.step}/{s.total_steps}{detail}"
            )
        if len(self.monitors) > 1:
            parts = [
                f"{LOSS_LABELS.get(x.state.loss, x.state.loss)}: {x.state.status}"
                for x in self.monitors
            ]
            self.queue_label.setText("Queue — " + " · ".join(parts))
        else:
            self.queue_label.setText("")
        self.plot.set_losses(s.losses, s.resumes, f"{m.run_dir.name}", force=not s.active)

    def _update_pbar(self, m: tp.RunMonitor, desc: str) -> None:
        """napari's activity progress bar, only while this dock is hidden (else its own bar
        shows the same): its animated "in progress" indicator re-composes the whole window
        many times a second, half a CPU core under software OpenGL."""
        from napari.utils import progress

        if self.isVisible():
            self._close_pbar()
            return
        # napari's progress processes events in each call below: a handler run in there
        # (the window's Close → detach) may close this bar; then stop touching it
        s = m.state
        if self._pbar is None or self._pbar_run != m.run_dir:
            self._close_pbar()
            self._pbar_run = m.run_dir
            pbar = progress(total=max(s.total_steps, 1), desc=desc)
            if self._pbar_run != m.run_dir:  # closed while it was being made
                pbar.close()
                return
            self._pbar = pbar
            pbar.n = 0
        pbar = self._pbar
        if pbar.total != s.total_steps and s.total_steps:
            pbar.total = s.total_steps
        delta = s.step - pbar.n
        if delta:
            pbar.update(delta)
        if self._pbar is pbar:
            pbar.set_description(desc)

    def _close_pbar(self) -> None:
        pbar, self._pbar, self._pbar_run = self._pbar, None, None
        if pbar is not None:  # (cleared first: close() processes events)
            pbar.close()

    def _report_ended(self) -> None:
        while self._to_report:
            self._report_end(self._to_report.pop(0))
        if not self.running:  # a closed Trainer whose run ended has nothing left to say
            _CLOSED_WATCHING.discard(self)

    def _report_end(self, s: tp.RunState) -> None:
        name = f"{LOSS_LABELS.get(s.loss, s.loss)} ({s.run_dir.name})"
        if s.warnings:  # also for completed runs: a recovered collapse, a doubtful table, ...
            more = f" (+{len(s.warnings) - 2} more)" if len(s.warnings) > 2 else ""
            self._notify(  # first, so that the status line ends with the outcome below
                f"{name}: {len(s.warnings)} warning(s) during training: "
                f"{'; '.join(s.warnings[:2])}{more}. Log: {s.log_path}",
                warning=True,
            )
        if s.status == "completed":
            final = f"{s.final_loss:.4g}" if s.final_loss is not None else "-"
            self._notify(f"Training finished: {name}, {s.step} steps, final loss {final}.")
            self.refresh_models()
        elif s.status == "cancelled" and not s.checkpoint and s.step == 0:
            self._notify(f"Not started: {name} (the queue was cancelled); Resume starts it.")
        elif s.status == "cancelled":
            self._notify(
                f"Training cancelled: {name} at step {s.step}; checkpoint kept, Resume continues."
            )
        else:
            kept = f" Checkpoint kept: {s.checkpoint}." if s.checkpoint else ""
            self._notify(
                f"Training failed: {name}: {s.message or s.status}.{kept} Log: {s.log_path}",
                error=True,
            )
        self.run_finished.emit(str(s.run_dir), s.status)

    def _update_buttons(self) -> None:
        running = self.running
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        resumable = any(m.state.status in ("cancelled", "failed", "died") for m in self.monitors)
        self.resume_button.setEnabled(not running and resumable)
        self.attach_button.setEnabled(not running)

    # ------------------------------------------------------------------ model list
    def refresh_models(self) -> list[tp.ModelInfo]:
        """Fill the model list from the output folder (:func:`lsr.training_process.list_models`)."""
        problems: list[str] = []
        models = tp.list_models(Path(self.out_dir.text()).expanduser(), problems=problems)
        if problems and problems != self._model_problems:  # once per new set, not per refresh
            left_out = "; ".join(problems)
            self._notify(
                f"{len(problems)} run(s) left out of the model list: {left_out}", warning=True
            )
        self._model_problems = problems
        self.models_view.setRowCount(len(models))
        for r, m in enumerate(models):
            final = f"{m.final_loss:.4g}" if m.final_loss is not None else "-"
            values = (m.name, LOSS_LABELS.get(m.loss, m.loss), m.distance, str(m.steps),
                      m.date[:16].replace("T", " "), final)  # fmt: skip
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setToolTip(f"{m.checkpoint}\n{m.status}, {m.device}, trained {m.date}")
                if c in (3, 5):
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.models_view.setItem(r, c, item)
        self.models = models
        self._fit_name_column()
        return models

    def _fit_name_column(self) -> None:
        """The name column: the width the others leave, at least :data:`MIN_NAME_PX`."""
        header = self.models_view.horizontalHeader()
        others = sum(header.sectionSize(c) for c in range(1, len(MODEL_COLUMNS)))
        free = self.models_view.viewport().width() - others
        header.resizeSection(0, max(MIN_NAME_PX, free))

    # ------------------------------------------------------------------ closing napari
    def ask_close_choice(self) -> str:
        """Ask what to do with running training: ``"stop"``, ``"detach"`` or ``"cancel"``."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Question)
        box.setWindowTitle("Training is running")
        box.setText("A model is still training. Stop it, or let it continue in the background?")
        box.setInformativeText(
            "Stopping keeps the last checkpoint (Resume continues it). In the background it "
            "keeps writing checkpoints and its log; Attach… re-opens it later."
        )
        stop = box.addButton("Stop training", QMessageBox.DestructiveRole)
        detach = box.addButton("Keep training in background", QMessageBox.AcceptRole)
        box.addButton(QMessageBox.Cancel)
        box.setDefaultButton(detach)
        box.exec_()
        clicked = box.clickedButton()
        return "stop" if clicked is stop else "detach" if clicked is detach else "cancel"

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self._models_viewport:
            if event.type() == QEvent.Resize:
                self._fit_name_column()
            return False
        if obj is self and event.type() == QEvent.ParentChange:
            closed = self.parent() is None  # the dock's ✕: napari keeps the widget
            if closed and self.running:
                _CLOSED_WATCHING.add(self)
                self._notify(
                    "Training goes on in the background; open the Trainer again to watch it "
                    f"({self.out_dir.text()})."
                )
            elif not closed:  # docked (again)
                _CLOSED_WATCHING.discard(self)
                if self.running:  # closing napari asks about the run; once napari has
                    QTimer.singleShot(0, self._guard_close)  # put the dock in its window
            return False
        # (the process may have ended since the last poll: then nothing is left to ask about)
        alive = self.running and self.job is not None and self.job.alive
        if obj is self._guarded and event.type() == QEvent.Close and alive:
            choice = self.ask_close_choice()
            if choice == "cancel":
                event.ignore()
                return True
            if choice == "stop":
                self.cancel()
            self.detach()
        return False

    def detach(self) -> None:
        """Stop watching; the training process goes on (it is in its own session)."""
        _CLOSED_WATCHING.discard(self)
        self.timer.stop()
        self._refresh_again = False  # a refresh interrupted by this shows nothing more
        self._stop_poller()
        self._close_pbar()
        self._unguard_close()

    def _unguard_close(self) -> None:
        if self._guarded is not None:
            with contextlib.suppress(RuntimeError):  # the window may be gone already
                self._guarded.removeEventFilter(self)
            self._guarded = None

    # ------------------------------------------------------------------ messages
    def _say(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        if error:
            self._notify(message, error=True)
        elif self.status.styleSheet():
            self.status.setStyleSheet("")  # an earlier error's red does not stay

    def _notify(self, message: str, error: bool = False, warning: bool = False) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        self.status.setText(message)
        self.status.setStyleSheet("color: #e05050" if error else "")
        (show_error if error else show_warning if warning else show_info)(message)


def _bins_text(table: CountTable, problems: dict[int, str]) -> str:
    """Flagged bins grouped by reason: 'bins 0–20%, 20–30%: std 0: floored ...; bin ...'
    (ten bins of a table with ρ = 0 are one line, not ten)."""
    labels = table.bin_labels()
    by_reason: dict[str, list[str]] = {}
    for b, why in sorted(problems.items()):
        by_reason.setdefault(why, []).append(f"{labels[b]}%")
    return "; ".join(
        f"{'bin' if len(bins) == 1 else 'bins'} {', '.join(bins)}: {why}"
        for why, bins in by_reason.items()
    )


def table_bins_without_estimate(table: CountTable) -> list[int]:
    """Bins of a live (annotator) table still filled from paper Table 1."""
    from lsr.annotation import NO_ESTIMATE_YET

    return sorted(b for b, why in table.flagged.items() if why == NO_ESTIMATE_YET)


def _data_line(s: tp.RunState) -> str:
    """'<br>1234 labelled blocks · 300 steps × 30 blocks: a block is seen about 7.3 times on
    average' (the CLI prints the same): on large data the default steps see few blocks."""
    from lsr.train import blocks_seen

    seen = blocks_seen(s.total_steps, s.blocks_per_step, s.n_blocks)
    return f"<br>{s.n_blocks} labelled blocks · {seen}" if seen else ""


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {s:02d} s" if m else f"{s} s"


__all__ = ["TrainerWidget", "default_output_folder", "pairs_from_layers"]
