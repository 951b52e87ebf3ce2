"""The Compare & evaluate dock widget: boundaries like the paper's Fig. 4, scores like Table 2.

Pick a slide layer, its block grid, trained models (from a training output folder, as the
Trainer lists them, or a model path) and optional ground truth (a labels layer, a mask file
or a QuPath GeoJSON). Prediction runs tiled in a worker thread (progress, Cancel) and is
cached on disk per model and slide (:class:`lsr.compare.PredictionCache`). The widget then
draws one shapes layer per boundary in the paper's colours (green low-resolution model, red
ground truth, blue intra+inter, cyan intra; other models distinct colours) with a legend of
toggles, line width in screen pixels, probability maps as hidden image layers, the
evaluation band as an optional overlay, the Table 2 scores and the calibration table.
All maths lives in :mod:`lsr.compare` / :mod:`lsr.metrics`; this module only draws.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtGui import QBrush, QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lsr import compare as lc
from lsr.errors import LsrInputError
from lsr.metrics import PAPER_TABLE2 as PAPER
from lsr.slide import slide_name
from napari_lsr._reader import UNITS
from napari_lsr.closing import CloseWatch
from napari_lsr.layer_choice import follow_renames, follow_slide, named_after, refill
from napari_lsr.viewer_compat import camera as _camera
from napari_lsr.viewer_compat import canvas_size, make_worker

NONE = "(none)"
FILE = "file (below)"
WHOLE, VISIBLE = "whole slide", "visible region"
BOUNDARY_PREFIX = "boundary: "
PROB_PREFIX = "p(cancer): "
BAND_NAME = "evaluation band (1 block of the ground-truth boundary)"


def _error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def _info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class _Progress(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    changed = Signal(str, int, int)


def swatch(colour: tuple[int, int, int], size: int = 14) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(QColor(*colour))
    return QIcon(pix)


class CompareWidget(QWidget):
    """Dock widget: predict, draw, score and export; see the module docstring."""

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.setMinimumWidth(480)  # room for the Table 2 columns
        self.comparison: lc.Comparison | None = None
        self.scores: dict | None = None
        self.calib: list | None = None
        self.region: tuple[int, int, int, int] | None = None
        self.worker: Any = None
        self.exported: list[Path] = []
        self._undocked = False  # the dock was closed (see eventFilter)
        self._evaluate_next = False
        self._drawing: list[Any] = []  # GUI steps left of the drawing of a comparison
        self._worker_done = False
        self._band_data: np.ndarray | None = None
        self._cancel = threading.Event()
        self._watch: CloseWatch | None = None  # while a run goes on: the dock or window closing
        self._progress = _Progress()
        self._progress.changed.connect(self._on_progress)
        self._legend_checks: dict[str, QCheckBox] = {}
        self._zoom_timer = QTimer(self)
        self._zoom_timer.setSingleShot(True)
        self._zoom_timer.setInterval(60)
        self._zoom_timer.timeout.connect(self.update_line_width)
        self._build()
        self.refresh_layers()
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        # bound methods: napari's events hold them weakly (a lambda kept the closed
        # widget, its comparison's arrays and its layers' data alive)
        _camera(self.viewer).events.zoom.connect(self._zoomed)
        self.installEventFilter(self)  # its dock closing: see eventFilter

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        """The dock's ✕ takes the widget out of its dock (parent None) without deleting it,
        and Qt's connections to its lambdas keep it alive: let go of the comparison's
        slide-sized arrays then (at once, or when the job still running ends)."""
        if obj is self and event.type() == QEvent.ParentChange:
            self._undocked = self.parent() is None
            if self._undocked and self.worker is None and not self._drawing:
                self._release()
        return False

    def _release(self) -> None:
        self.comparison = self.scores = self.calib = None
        self._band_data = None

    def _zoomed(self, _event: Any = None) -> None:
        """Re-fit the outlines' width once the zoom settles (not at every wheel tick)."""
        self._zoom_timer.start()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        data = QGroupBox("Data")
        form = QFormLayout(data)
        self.slide_combo, self.grid_combo, self.gt_combo = QComboBox(), QComboBox(), QComboBox()
        self.slide_combo.currentTextChanged.connect(self._follow_slide)
        self.gt_path = QLineEdit()
        self.gt_path.setPlaceholderText("mask .tif/.png or QuPath .geojson")
        self.gt_path.textEdited.connect(lambda _t: self.gt_combo.setCurrentText(FILE))
        form.addRow("Slide", self.slide_combo)
        form.addRow("Block grid", self.grid_combo)
        form.addRow("Ground truth", self.gt_combo)
        form.addRow(
            "",
            self._with_browse(self.gt_path, "Ground truth", "*.tif *.tiff *.png *.geojson *.json"),
        )
        root.addWidget(data)

        models = QGroupBox("Models")
        mform = QVBoxLayout(models)
        self.model_folder = QLineEdit()
        self.model_folder.setPlaceholderText("training output folder (as in the Trainer)")
        self.model_folder.editingFinished.connect(self.refresh_models)
        row = QHBoxLayout()
        row.addWidget(self._with_browse(self.model_folder, "Model folder", None))
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_models)
        row.addWidget(refresh)
        mform.addLayout(row)
        self._model_problems: list[str] = []  # last warned (once per set)
        self.model_list = QListWidget()
        self.model_list.setMaximumHeight(110)
        mform.addWidget(self.model_list)
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("or a run / checkpoint folder")
        add = QPushButton("Add")
        add.clicked.connect(lambda: self.add_model(self.model_path.text()))
        row2 = QHBoxLayout()
        row2.addWidget(self._with_browse(self.model_path, "Model", None))
        row2.addWidget(add)
        mform.addLayout(row2)
        self.cache_folder = QLineEdit(str(lc.default_cache_folder()))
        self.cache_folder.setToolTip("Probability maps are cached here per model and slide")
        cform = QFormLayout()
        cform.addRow("Cache", self.cache_folder)
        mform.addLayout(cform)
        root.addWidget(models)

        run = QHBoxLayout()
        self.run_btn = QPushButton("Predict && compare")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        run.addWidget(self.run_btn)
        run.addWidget(self.cancel_btn)
        root.addLayout(run)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.progress)
        root.addWidget(self.status)

        shown = QGroupBox("Boundaries")
        sform = QVBoxLayout(shown)
        self.legend = QVBoxLayout()
        self.legend.setSpacing(1)
        sform.addLayout(self.legend)
        lw = QHBoxLayout()
        lw.addWidget(QLabel("Line width (screen px)"))
        self.line_width = QDoubleSpinBox()
        self.line_width.setRange(0.5, 20.0)
        self.line_width.setSingleStep(0.5)
        self.line_width.setValue(2.0)
        self.line_width.valueChanged.connect(self.update_line_width)
        lw.addWidget(self.line_width)
        sform.addLayout(lw)
        self.show_band = QCheckBox("Show the evaluation band (Fig. 3)")
        self.show_band.toggled.connect(self._toggle_band)
        sform.addWidget(self.show_band)
        root.addWidget(shown)

        ev = QGroupBox("Evaluate (Table 2)")
        eform = QVBoxLayout(ev)
        erow = QHBoxLayout()
        self.region_combo = QComboBox()
        self.region_combo.addItems([WHOLE, VISIBLE])
        erow.addWidget(self.region_combo)
        self.eval_btn = QPushButton("Evaluate")
        self.eval_btn.clicked.connect(self.evaluate)
        erow.addWidget(self.eval_btn)
        eform.addLayout(erow)
        self.scores_table = QTableWidget(0, 5)
        self.scores_table.setHorizontalHeaderLabels(
            ["masked IoU", "masked DICE", "IoU", "DICE", "paper (masked)"]
        )
        self.scores_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        eform.addWidget(self.scores_table)
        eform.addWidget(QLabel("Calibration: cancer % per bin z, mean ± std (blocks)"))
        self.calib_table = QTableWidget(0, 0)
        eform.addWidget(self.calib_table)
        root.addWidget(ev)

        ex = QGroupBox("Export")
        xform = QVBoxLayout(ex)
        self.export_folder = QLineEdit()
        self.export_folder.setPlaceholderText("folder for GeoJSON, PNG, JSON/CSV")
        xform.addWidget(self._with_browse(self.export_folder, "Export folder", None))
        xrow = QHBoxLayout()
        self.geojson_btn = QPushButton("QuPath GeoJSON")
        self.geojson_btn.clicked.connect(self.export_geojson)
        self.png_btn = QPushButton("Fig. 4 PNG")
        self.png_btn.clicked.connect(self.export_png)
        self.results_btn = QPushButton("Results JSON/CSV")
        self.results_btn.clicked.connect(self.export_results)
        for b in (self.geojson_btn, self.png_btn, self.results_btn):
            xrow.addWidget(b)
        xform.addLayout(xrow)
        root.addWidget(ex)
        root.addStretch(1)
        self._set_done(True)

    def _with_browse(self, edit: QLineEdit, title: str, pattern: str | None) -> QWidget:
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(edit)
        btn = QPushButton("…")
        btn.setMaximumWidth(28)

        def browse() -> None:
            if pattern is None:
                path = QFileDialog.getExistingDirectory(self, title, edit.text())
            else:
                path, _ = QFileDialog.getOpenFileName(self, title, edit.text(), pattern)
            if path:
                edit.setText(path)
                edit.editingFinished.emit()
                if edit is self.gt_path:
                    self.gt_combo.setCurrentText(FILE)

        btn.clicked.connect(browse)
        lay.addWidget(btn)
        return box

    # ------------------------------------------------------------------ inputs
    def _follow_slide(self, slide: str) -> None:
        """Another slide chosen: its own grid and ground truth, when layers are named so."""
        follow_slide(self.grid_combo, slide)
        follow_slide(self.gt_combo, slide)

    def refresh_layers(self, event: Any = None) -> None:
        """Fill the slide, grid and ground-truth choices from the viewer's layers (called
        when a layer is added, removed or renamed)."""
        follow_renames(self.viewer.layers, self.refresh_layers)
        slides = [
            ly.name
            for ly in self.viewer.layers
            if "lsr_slide" in ly.metadata and ly.__class__.__name__ == "Image"
        ]
        grids, seen = [], set()
        for ly in self.viewer.layers:
            g = ly.metadata.get("lsr_grid")
            if g and g["path"] not in seen:
                seen.add(g["path"])
                grids.append(ly.name)
        not_truth = ("lsr_grid", "lsr_compare", "lsr_coarse")  # grids, the band, paintings
        labels = [
            ly.name
            for ly in self.viewer.layers
            if ly.__class__.__name__ == "Labels"
            and not any(k in ly.metadata for k in not_truth)
            and not ly.name.startswith("annotator:")
        ]
        refill(self.slide_combo, slides)
        slide = self.slide_combo.currentText()  # the slide's own grid and truth, when named so
        refill(self.grid_combo, grids, named_after(grids, slide))
        own_truth = named_after(labels, slide)
        refill(self.gt_combo, [NONE, FILE, *labels], own_truth or (labels[0] if labels else None))

    def refresh_models(self) -> None:
        """List the finished models of the model folder (newest first), all checked."""
        from lsr.training_process import list_models

        folder = self.model_folder.text().strip()
        manual = [self.model_list.item(i) for i in range(self.model_list.count())]
        manual = [
            (it.text(), it.data(Qt.UserRole), it.checkState())
            for it in manual
            if it.data(Qt.UserRole + 1) == "manual"
        ]
        self.model_list.clear()
        problems: list[str] = []
        for m in list_models(folder, problems=problems) if folder else []:
            text = f"{m.name} — {m.loss}, {m.steps} steps"
            self._add_item(text, m.checkpoint, "folder", Qt.Checked)
        for text, path, state in manual:
            self._add_item(text, path, "manual", state)
        if folder and not Path(folder).is_dir():
            _error(f"{folder}: model folder not found")
        if problems and problems != self._model_problems:  # once per new set, not per refresh
            _warning(f"{len(problems)} run(s) left out of the model list: " + "; ".join(problems))
        self._model_problems = problems

    def _add_item(self, text: str, path: str, origin: str, state: Any) -> None:
        it = QListWidgetItem(text)
        it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
        it.setCheckState(state)
        it.setData(Qt.UserRole, path)
        it.setData(Qt.UserRole + 1, origin)
        self.model_list.addItem(it)

    def add_model(self, path: str) -> bool:
        """Add one model by path (run folder, checkpoint folder or weights file)."""
        path = path.strip()
        try:
            ref = lc.model_ref(path)
        except LsrInputError as err:
            _error(f"Not a trained model: {err}")
            return False
        self._add_item(
            f"{ref.name} — {ref.loss}, {ref.metadata.get('step', '?')} steps",
            ref.checkpoint,
            "manual",
            Qt.Checked,
        )
        return True

    def chosen_models(self) -> list[str]:
        items = [self.model_list.item(i) for i in range(self.model_list.count())]
        return [it.data(Qt.UserRole) for it in items if it.checkState() == Qt.Checked]

    def _ground_truth(self, working_mpp: float) -> Any:
        choice = self.gt_combo.currentText()
        if choice in (NONE, ""):
            return None
        if choice == FILE:
            path = self.gt_path.text().strip()
            if not path:
                raise LsrInputError("ground truth 'file' chosen but no file given")
            return path
        from lsr.compare import ground_truth_level

        layer = self.viewer.layers[choice]
        levels = list(layer.data) if layer.multiscale else [layer.data]
        return ground_truth_level(levels, float(layer.scale[-1]), working_mpp)

    # ------------------------------------------------------------------ prediction
    def run(self) -> bool:
        """Start predicting and outlining in a worker thread; False (and a notification)
        when the input is incomplete."""
        if self.worker is not None:
            _error("A comparison is already running; cancel it first")
            return False
        try:
            if not self.slide_combo.currentText():
                raise LsrInputError("no slide: open a slide (File > Open or the sample data)")
            if not self.grid_combo.currentText():
                raise LsrInputError("no block grid: open the slide's *_grid.npy")
            models = self.chosen_models()
            if not models:
                raise LsrInputError(
                    "no model chosen: pick a model folder (the Trainer's output) or add a model"
                )
            slide_meta = self.viewer.layers[self.slide_combo.currentText()].metadata["lsr_slide"]
            geo = self.viewer.layers[self.grid_combo.currentText()].metadata["lsr_grid"]
            from lsr.grid import load_grid

            grid = load_grid(geo["path"], block_px=geo["block_px"], origin=tuple(geo["origin"]))
            gt = self._ground_truth(float(geo["working_mpp"]))
        except LsrInputError as err:
            _error(f"Cannot compare: {err}")
            return False
        self._cancel.clear()
        cache = lc.PredictionCache(self.cache_folder.text().strip() or lc.default_cache_folder())

        def work() -> tuple[lc.Comparison, list[Any], np.ndarray | None]:
            comp = lc.run_comparison(
                slide_meta["path"], grid, float(geo["working_mpp"]), models,
                ground_truth=gt, cache=cache, progress=self._progress.changed.emit,
                cancel=self._cancel,
            )  # fmt: skip
            self._progress.changed.emit("drawing", 0, 1)
            self._stop_if_cancelled()
            layers = _layers_of(comp, edge_width)
            self._stop_if_cancelled()
            return comp, layers, _band_of(comp)

        # lines drawn at the width the current zoom needs: changing it later re-meshes
        # every ring on the GUI thread
        zoom = float(_camera(self.viewer).zoom) or 1.0
        edge_width = self.line_width.value() / zoom / float(geo["working_mpp"])

        self.worker = make_worker(work)
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._run_finished)
        self._set_done(False)
        self.status.setText("starting…")
        self._watch = CloseWatch(self, self._closed)
        self.worker.start()
        return True

    def _closed(self) -> None:
        """The dock or napari closed during a run: stop it; nothing is drawn, or, when the
        new layers are already going in (the old ones are gone), they are finished; nothing
        is scored."""
        self._cancel.set()
        self._evaluate_next = False

    def _is_closed(self) -> bool:
        return self._watch is not None and self._watch.closed

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling…")

    def _set_done(self, done: bool, cancellable: bool = True) -> None:
        """Buttons for a job that ended (``done``) or started; scoring and exports take
        seconds and cannot stop part-way: Cancel stays off (it said "cancelling…", then the
        scores or the files came all the same)."""
        if done:
            self.worker = None
            if self._undocked:  # the dock was closed while this job ran
                self._release()
        self.run_btn.setEnabled(done)
        self.cancel_btn.setEnabled(not done and cancellable)
        has = self.comparison is not None
        for b in (self.eval_btn, self.geojson_btn, self.png_btn, self.results_btn):
            b.setEnabled(done and has)

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        self.status.setText(f"{stage}: {done}/{total}")

    def _failed(self, err: Exception) -> None:
        from lsr.infer import InferenceCancelled

        if self._is_closed():  # nobody is looking: no notification about a closed widget
            self.status.setText("closed: stopped")
            return
        if isinstance(err, InferenceCancelled):
            _info(f"Comparison cancelled ({err})")
            self.status.setText("cancelled")
        elif isinstance(err, LsrInputError):
            _error(f"Cannot compare: {err}")
            self.status.setText(f"failed: {err}")
        else:
            _error(f"Comparison failed: {type(err).__name__}: {err}")
            self.status.setText(f"failed: {type(err).__name__}: {err}")

    # ------------------------------------------------------------------ drawing
    def _show(self, result: tuple[lc.Comparison, list[Any], np.ndarray | None]) -> None:
        """Swap the old layers for the worker's new ones, one layer per event-loop turn.

        Building the layers (thousands of boundary rings to triangulate) happened in the
        worker; what is left — napari removing layers (a full garbage collection after each
        removal, one for a batch) and creating and uploading one visual per layer — takes a
        few hundred ms per step here, so the old layers go in one batch and each new layer
        gets its own turn instead of freezing the viewer for seconds in one.
        """
        if self._is_closed():  # a late result for a closed dock or viewer: not drawn
            return
        comp, layers, band = result
        self.comparison = comp
        self.scores = self.calib = None
        self._band_data = band
        old = [ly for ly in self.viewer.layers if _own(ly)]
        steps: list[Any] = [lambda: self._remove_layers(old)] if old else []
        steps += [lambda ly=ly: self.viewer.add_layer(ly) for ly in layers]
        steps.append(lambda: self._drawn(comp))
        self._drawing = steps
        QTimer.singleShot(0, self._draw_step)

    def _stop_if_cancelled(self) -> None:
        """In the worker, between its phases: Cancel also stops the layer building."""
        from lsr.infer import InferenceCancelled

        if self._cancel.is_set():
            raise InferenceCancelled("cancelled before drawing")

    def _draw_step(self) -> None:
        if not self._drawing:
            return
        step = self._drawing.pop(0)
        try:
            step()
        except Exception as err:  # never leave the widget waiting for steps that won't run
            self._drawing.clear()
            self._evaluate_next = False
            _error(f"Drawing the comparison failed: {type(err).__name__}: {err}")
            self.status.setText(f"drawing failed: {type(err).__name__}: {err}")
            if self._worker_done:
                self._finish_run()
            return
        if self._drawing:
            QTimer.singleShot(0, self._draw_step)

    def _remove_layers(self, layers: list[Any]) -> None:
        """Remove ``layers`` (those still in the viewer) as one batch: napari then collects
        garbage once, not once per layer (~0.3 s each with a napari session's heap)."""
        # older napari has no batched_update: one collection per layer there
        batch = getattr(self.viewer.layers, "batched_update", contextlib.nullcontext)
        with batch():
            for layer in layers:
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)

    def _drawn(self, comp: lc.Comparison) -> None:
        """The last drawing step: legend, widths, band, status; then evaluate."""
        self._build_legend(comp)
        self.update_line_width()
        self._toggle_band(self.show_band.isChecked())
        n_cached = sum(comp.cached.values())
        self.status.setText(
            f"{len(comp.probs)} model(s) ({n_cached} from the cache); "
            f"{'evaluating…' if comp.gt is not None else 'no ground truth: nothing to score'}"
        )
        self.progress.setValue(self.progress.maximum())
        self._evaluate_next = comp.gt is not None and not self._cancel.is_set()
        if self._cancel.is_set():  # cancelled while the layers went in: drawn, not scored
            self.status.setText("cancelled: boundaries drawn, not evaluated")
        if self._worker_done:
            self._finish_run()

    def _run_finished(self) -> None:
        self._worker_done = True
        if not self._drawing:  # failed or cancelled, or drawing already over
            self._finish_run()

    def _finish_run(self) -> None:
        self._worker_done = False
        self._set_done(True)
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._evaluate_next:
            self._evaluate_next = False
            self.evaluate()

    def boundary_layer(self, key: str) -> Any:
        for ly in self.viewer.layers:
            if ly.metadata.get("lsr_boundary", {}).get("key") == key:
                return ly
        return None

    def _build_legend(self, comp: lc.Comparison) -> None:
        while self.legend.count():
            item = self.legend.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self._legend_checks = {}
        for b in comp.boundaries:
            cb = QCheckBox(b.label)
            cb.setIcon(swatch(b.colour))
            cb.setChecked(True)
            cb.setToolTip(f"{b.hex} — QuPath class '{b.name}'")
            cb.toggled.connect(lambda on, k=b.key: self._toggle(k, on))
            self.legend.addWidget(cb)
            self._legend_checks[b.key] = cb

    def _toggle(self, key: str, on: bool) -> None:
        layer = self.boundary_layer(key)
        if layer is not None:
            layer.visible = on

    def update_line_width(self, *_: Any) -> None:
        """Keep boundary lines ``line_width`` screen pixels wide at the current zoom."""
        zoom = float(_camera(self.viewer).zoom) or 1.0
        for ly in self.viewer.layers:
            if "lsr_boundary" in ly.metadata and ly.nshapes:
                width = self.line_width.value() / zoom / float(ly.scale[-1])
                if not np.isclose(ly.edge_width[0], width, rtol=0.02):
                    ly.edge_width = width
                    # napari 0.9 re-renders the lines only on a refresh (the model alone
                    # would keep the width they were drawn with)
                    ly.refresh(thumbnail=False, highlight=False)

    def _toggle_band(self, on: bool) -> None:
        comp = self.comparison
        existing = [
            ly
            for ly in self.viewer.layers
            if ly.metadata.get("lsr_compare", {}).get("key") == "band"
        ]
        if not on:
            for ly in existing:
                ly.visible = False
            return
        if comp is None or comp.gt is None:
            if on and comp is not None:
                _error("The evaluation band needs ground truth")
            return
        if existing:
            existing[0].visible = True
            return
        band = self._band_data if self._band_data is not None else _band_of(comp)
        mpp = comp.working_mpp
        self.viewer.add_labels(
            band,
            name=BAND_NAME,
            scale=(mpp, mpp),
            units=UNITS,
            translate=(mpp / 2, mpp / 2),
            opacity=0.3,
            colormap={1: "#3cb44b", None: "transparent"},
            metadata={"lsr_compare": {"key": "band"}},
        )
        # keep the boundaries above the band
        idx = self.viewer.layers.index(BAND_NAME)
        first = min(
            (i for i, ly in enumerate(self.viewer.layers) if "lsr_boundary" in ly.metadata),
            default=idx,
        )
        if first < idx:
            self.viewer.layers.move(idx, first)

    # ------------------------------------------------------------------ evaluation
    def visible_region(self) -> tuple[int, int, int, int]:
        """The part of the slide on screen, (y0, x0, y1, x1) evaluation px."""
        comp = self.comparison
        cam = _camera(self.viewer)
        h, w = canvas_size(self.viewer)
        cy, cx = cam.center[-2:]
        half_h, half_w = h / 2 / cam.zoom, w / 2 / cam.zoom
        mpp = comp.working_mpp
        box = ((cy - half_h) / mpp, (cx - half_w) / mpp, (cy + half_h) / mpp, (cx + half_w) / mpp)
        return lc.clip_region(box, comp.shape)

    def evaluate(self) -> bool:
        """Score every boundary (Table 2) and the calibration table in a worker thread."""
        comp = self.comparison
        if comp is None:
            _error("Nothing to evaluate: run Predict & compare first")
            return False
        try:
            region = self.visible_region() if self.region_combo.currentText() == VISIBLE else None
        except LsrInputError as err:
            _error(f"Cannot evaluate: {err}")
            return False

        def work() -> tuple:
            scores = lc.evaluate(comp, region) if comp.gt is not None else None
            return scores, lc.calibration(comp, region), region

        self.worker = make_worker(work)
        self.worker.returned.connect(self._show_scores)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(lambda: self._set_done(True))
        self._set_done(False, cancellable=False)
        self.worker.start()
        return True

    def _show_scores(self, result: tuple) -> None:
        scores, calib, region = result
        self.scores, self.calib, self.region = scores, calib, region
        where = (
            "whole slide"
            if region is None
            else f"region y {region[0]}–{region[2]}, x {region[1]}–{region[3]} px"
        )
        checks = lc.calibration_checks(calib or [])
        status = f"evaluated on the {where}" if scores else "calibration only"
        rows = list((scores or {}).items())
        empty = [r["label"] for _k, r in rows if not r.get("has_boundary", True)]
        if empty:  # an empty boundary scores 0 and draws nothing: say why
            status += " · no cancer drawn by " + ", ".join(empty)
        self.status.setText(status + self._calibration_warning(checks))
        t = self.scores_table
        t.setRowCount(len(rows))
        t.setVerticalHeaderLabels(_short_labels([r["label"] for _k, r in rows]))
        for i, (key, r) in enumerate(rows):
            t.verticalHeaderItem(i).setToolTip(r["label"])
            for j, m in enumerate(lc.METRICS):
                t.setItem(i, j, _cell("–" if r[m] is None else f"{r[m]:.4f}"))
            paper = PAPER.get(key)
            t.setItem(i, 4, _cell(f"{paper[0]:.4f} / {paper[1]:.4f}" if paper else "–"))
            t.verticalHeaderItem(i).setIcon(swatch(self.comparison.boundary(key).colour))
        _fit_rows(t)
        self._fill_calibration(calib, checks)

    def _fill_calibration(self, calib: list[dict], checks: dict[str, Any]) -> None:
        comp = self.comparison
        keys = list(calib[0]["models"]) if calib else []
        has_gt = bool(calib) and "ground_truth" in calib[0]
        tkey = next(iter(calib[0]["table"]), None) if calib else None
        labels = [comp.boundary(k).label for k in keys]
        heads = (["table η ± ρ"] if tkey else []) + _short_labels(labels)
        heads += ["ground truth"] if has_gt else []
        t = self.calib_table
        t.clearContents()  # (a cell the new comparison does not fill keeps no old value)
        t.setColumnCount(len(heads))
        t.setHorizontalHeaderLabels(heads)
        for j, label in enumerate(labels, start=1 if tkey else 0):
            t.horizontalHeaderItem(j).setToolTip(label)  # the run's name, cut from the header
        t.setRowCount(len(calib) + 1)  # row 0: the check, seen without scrolling
        t.setVerticalHeaderLabels(["off the table"] + [f"z={r['z']} ({r['label']})" for r in calib])
        for i, row in enumerate(calib, start=1):
            cells = []
            if tkey:
                eta, rho = row["table"][tkey]
                cells.append(f"{100 * eta:.1f} ± {100 * rho:.1f}")
            stats = [row["models"][k] for k in keys] + ([row["ground_truth"]] if has_gt else [])
            for s in stats:
                cells.append(
                    "–"
                    if s["mean"] is None
                    else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} (n={s['n']})"
                )
            for j, c in enumerate(cells):
                t.setItem(i, j, _cell(c))
        self._fill_calibration_check(checks, keys, 1 if tkey else 0)
        _fit_rows(t, max_rows=5)  # ten bins: the rest scrolls

    def _calibration_warning(self, checks: dict[str, Any]) -> str:
        """' · <model>: N points off its count table ⚠' for each flagged model
        (``checks``: :func:`lsr.compare.calibration_checks`)."""
        bad = [
            f"{self.comparison.boundary(k).label}: {100 * c['error']:.0f} points off its "
            "count table ⚠"
            for k, c in checks.items()
            if c and c["flagged"]
        ]
        return "".join(f" · {b}" for b in bad)

    def _fill_calibration_check(self, checks: dict[str, Any], keys: list[str], first: int) -> None:
        """The first row: each model's block-weighted distance from its table, marked when
        :func:`lsr.metrics.calibration_check` flags it (then the network is suspect)."""
        from lsr.metrics import CALIBRATION_ERROR_LIMIT, CALIBRATION_MIN_BLOCKS

        t = self.calib_table
        row = 0  # the first row: a flag must not hide below the ten bins
        for j, k in enumerate(keys, start=first):
            c = checks.get(k)
            if c is None or c["error"] is None:
                item = _cell("–")
            else:
                flag = " ⚠" if c["flagged"] else ""
                item = _cell(f"{100 * c['error']:.1f} points ({c['blocks']} blocks){flag}")
            item.setToolTip(
                "Block-weighted |predicted − table| cancer %. Over "
                f"{100 * CALIBRATION_ERROR_LIMIT:.0f} points on {CALIBRATION_MIN_BLOCKS} blocks "
                "or more the network does not follow its count table: in the training study 6 "
                "of 8 such networks scored below the blocky model. Below that it does not rank "
                "networks."
            )
            if c is not None and c["flagged"]:
                item.setForeground(QBrush(QColor("#e05050")))
            t.setItem(row, j, item)

    # ------------------------------------------------------------------ export
    def _export_target(self) -> tuple[Path, str] | None:
        if self.comparison is None:
            _error("Nothing to export: run Predict & compare first")
            return None
        folder = self.export_folder.text().strip()
        if not folder:
            _error("Choose an export folder first")
            return None
        return Path(folder), slide_name(self.comparison.slide_path)

    def _export(self, fn: Any, what: str) -> bool:
        target = self._export_target()
        if target is None:
            return False
        self.worker = make_worker(fn, *target)
        self.worker.returned.connect(lambda paths: self._exported(what, paths))
        self.worker.errored.connect(lambda err: self._export_failed(what, err))
        self.worker.finished.connect(lambda: self._set_done(True))
        self._set_done(False, cancellable=False)
        self.worker.start()
        return True

    def _exported(self, what: str, paths: list[Path]) -> None:
        self.exported = [Path(p) for p in paths]
        shown = ", ".join(Path(p).name for p in paths)
        self.status.setText(f"wrote {what}: {shown}")
        _info(f"Wrote {what} to {Path(paths[0]).parent}" if paths else f"No {what} written")

    def _export_failed(self, what: str, err: Exception) -> None:
        """Say in the status line and a notification why nothing was exported (e.g. a file of
        the user's in the way, named by the error); the widget stays usable."""
        self.exported = []
        if isinstance(err, LsrInputError):
            text = f"{what} not exported: {err}"
        else:
            text = f"{what} export failed: {type(err).__name__}: {err}"
        self.status.setText(text)
        _error(text)

    def export_geojson(self) -> bool:
        comp = self.comparison
        return self._export(
            lambda folder, stem: lc.export_geojson(comp, folder, stem), "QuPath GeoJSON"
        )

    def export_png(self) -> bool:
        comp = self.comparison
        region = self.region
        if comp is not None and self.region_combo.currentText() == VISIBLE:
            with contextlib.suppress(LsrInputError):
                region = self.visible_region()

        def work(folder: Path, stem: str) -> list[Path]:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{stem}_fig4.png"
            lc.fig4_png(comp, path, region, title=stem)
            return [path]

        return self._export(work, "Fig. 4 PNG")

    def export_results(self) -> bool:
        comp, scores, calib, region = self.comparison, self.scores, self.calib, self.region
        return self._export(
            lambda folder, stem: lc.write_results(comp, folder, stem, scores, calib, region),
            "results",
        )


def _own(layer: Any) -> bool:
    """A layer this widget drew (boundaries, probability maps, the band)."""
    return "lsr_boundary" in layer.metadata or "lsr_compare" in layer.metadata


def _layers_of(comp: lc.Comparison, edge_width: float = 1.0) -> list[Any]:
    """The napari layers of a comparison: hidden probability maps, then one shapes layer
    per boundary in its Fig. 4 colour, ``edge_width`` data px wide. Built off the GUI
    thread (napari layers are plain Python models until added): triangulating thousands of
    rings takes seconds."""
    from napari.layers import Image, Shapes

    mpp = comp.working_mpp
    scale, centre = (mpp, mpp), (mpp / 2, mpp / 2)
    layers: list[Any] = []
    for b in comp.boundaries:
        if b.key in comp.probs:
            layers.append(
                Image(
                    np.asarray(comp.probs[b.key]),
                    name=PROB_PREFIX + b.label,
                    scale=scale,
                    units=UNITS,
                    translate=centre,
                    colormap="inferno",
                    contrast_limits=(0.0, 1.0),
                    opacity=0.6,
                    visible=False,
                    metadata={"lsr_compare": {"key": b.key}},
                )
            )
    for b in comp.boundaries:
        meta = {
            "lsr_boundary": {
                "key": b.key, "name": b.name, "label": b.label, "colour": list(b.colour),
                "level0_mpp": comp.level0_mpp, "working_mpp": mpp,
                "level0_shape": None if comp.level0_shape is None else list(comp.level0_shape),
            }
        }  # fmt: skip
        layer = Shapes(
            lc.polygon_rings(comp.polygons[b.key]) or None, shape_type="path",
            name=BOUNDARY_PREFIX + b.label, scale=scale, units=UNITS, edge_color=b.hex,
            face_color="transparent", edge_width=edge_width, metadata=meta,
            blending="translucent_no_depth",
        )  # fmt: skip
        layer.current_edge_color = b.hex
        layer.editable = False
        layers.append(layer)
    return layers


def _band_of(comp: lc.Comparison) -> np.ndarray | None:
    """(H, W) uint8 evaluation band of a comparison with ground truth (computed in the
    worker: the distance transform takes seconds on a whole slide)."""
    if comp.gt is None:
        return None
    from lsr.metrics import boundary_band

    return boundary_band(comp.gt, comp.band_px).astype(np.uint8)


def _short_labels(labels: list[str]) -> list[str]:
    """Row or column names of the models: the loss ("intra-instance") without the run's
    folder name ("… (intra-gaussian-nll-20261202-103922)"), which pushed the values out of
    sight; the full labels when two runs share a loss."""
    short = [label.split(" (")[0] for label in labels]
    return short if len(set(short)) == len(short) else list(labels)


def _fit_rows(table: QTableWidget, max_rows: int = 12) -> None:
    """Make ``table`` tall enough to show its rows (up to ``max_rows``) without scrolling."""
    table.resizeColumnsToContents()
    n = min(table.rowCount(), max_rows)
    rows = sum(table.rowHeight(i) for i in range(n))
    scrollbar = table.horizontalScrollBar().sizeHint().height()
    table.setMinimumHeight(table.horizontalHeader().height() + rows + scrollbar + 6)


def _cell(text: str) -> QTableWidgetItem:
    it = QTableWidgetItem(text)
    it.setFlags(it.flags() & ~Qt.ItemIsEditable)
    it.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
    return it
