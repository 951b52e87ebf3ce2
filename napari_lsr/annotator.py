"""The count-table annotator: an expert estimates the cancer % of sampled blocks.

Thin Qt layer over :mod:`lsr.annotation` (sampling, the walk, the log, autosave, merge).
The widget grows the Count table widget: its live table *is* a
:class:`~napari_lsr.counttable_widget.CountTableWidget` (paper Table 1 beside it on demand).

World coordinates are µm from the slide's top-left corner (see :mod:`napari_lsr._reader`).
The grid layer has one pixel per block: its ``scale`` is the block side in µm.

Keys in the percentage field (≤ 2 keystrokes for a one-digit estimate: ``5`` ``Enter``):
Enter record and go to the next undone block · Up/PageUp back · Down/PageDown forward ·
A skip (artefact) · U skip (unsure) · N next unfinished bin · R reveal/hide the bin.
"""

from __future__ import annotations

import contextlib
import getpass
import tempfile
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lsr.annotation import (
    NO_ESTIMATE_YET,
    SKIP_REASONS,
    AnnotationSession,
    check_grid_fits,
    find_autosave,
    merge_sessions,
    open_session,
    sample_blocks,
)
from lsr.counttable import CountTable, bin_probabilities
from lsr.errors import LsrInputError
from napari_lsr._reader import UNITS
from napari_lsr._sample_data import is_shipped
from napari_lsr.closing import CloseWatch
from napari_lsr.counttable_widget import CountTableWidget
from napari_lsr.layer_choice import follow_renames, follow_slide, named_after, refill
from napari_lsr.viewer_compat import camera as _camera
from napari_lsr.viewer_compat import canvas_size as _canvas_size
from napari_lsr.viewer_compat import make_worker

#: Context shown around the block, in blocks on each side.
CONTEXT_BLOCKS = 0.5
#: A block counts as tissue when at least this fraction of it is tissue.
MIN_TISSUE = 0.5
#: Paint resolution of the cancer brush: pixels per block side (1 px = 1 % of the side).
PAINT_PX = 100
OUTLINE_LAYER = "annotator: block"
PAINT_LAYER = "annotator: cancer paint"
COARSE_LAYER = "coarse labels (paint z)"
#: Written into the sidecar of a coarse grid saved here: only such a grid is ever replaced.
COARSE_MARK = {"saved_by": "napari-lsr annotator: coarse labels"}
#: Names a grid file may end with (as the grid reader recognises them).
GRID_ENDINGS = tuple(f"{sep}grid.{ext}" for sep in "_." for ext in ("npy", "csv", "tif", "tiff"))
KEYS_HELP = (
    "Enter: record & next · ↑ back · ↓ forward · A artefact · U unsure · "
    "N next unfinished bin · R reveal bin"
)


class LiveTable(CountTableWidget):
    """The Count table widget, showing "—" for bins without an estimate yet.

    Only the estimated class (cancer) is shown: non-cancer is its complement and would
    double the width of a narrow dock.
    """

    def _show_current(self, *args) -> None:
        super()._show_current(*args)
        table, view = self.table, self.view
        headers = [view.horizontalHeaderItem(j).text() for j in range(view.columnCount())]
        first = table.class_names[0]
        for j, h in enumerate(headers[1:], start=1):
            view.setColumnHidden(j, "(%)" in h and not h.startswith(f"{first} "))
        for b, why in table.flagged.items():
            if why != NO_ESTIMATE_YET:
                continue
            for j, h in enumerate(headers[1:-1], start=1):
                if "(%)" in h and not h.endswith("paper") and view.item(b, j) is not None:
                    view.item(b, j).setText("—")


class _Keys(QObject):
    """Event filter on the percentage field: letters and arrows become commands."""

    def __init__(self, widget: AnnotatorWidget):
        super().__init__(widget)
        self.w = widget

    def eventFilter(self, obj, event) -> bool:
        if event.type() != QEvent.Type.KeyPress:
            return False
        key = event.key()
        actions = {
            Qt.Key.Key_Up: self.w.back,
            Qt.Key.Key_PageUp: self.w.back,
            Qt.Key.Key_Down: self.w.forward,
            Qt.Key.Key_PageDown: self.w.forward,
            Qt.Key.Key_A: lambda: self.w.skip("artefact"),
            Qt.Key.Key_U: lambda: self.w.skip("unsure"),
            Qt.Key.Key_N: self.w.next_bin,
            Qt.Key.Key_R: self.w.reveal.toggle,
        }
        action = actions.get(key)
        if action is None:
            return False
        action()
        return True


class AnnotatorWidget(QWidget):
    """Sample blocks by z, walk through them with the expert, keep the table up to date."""

    def __init__(self, napari_viewer=None, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: AnnotationSession | None = None
        self.autosave: Path | None = None
        self._geo: dict = {}
        self._worker = None
        # (expert, its CloseWatch) while tissue blocks are being found
        self._starting: tuple[str, CloseWatch] | None = None
        self._painted_text = ""  # the percentage field as the last paint stroke set it
        # the other experts' autosaves merged with this session, while the merged table shows
        self._merged_paths: list[str | Path] | None = None
        self._hidden_grids: list = []  # grid layers hidden while the bin is hidden
        self._session_watch: CloseWatch | None = None

        # -- setup
        self.slide_combo = QComboBox()
        self.slide_combo.setToolTip("The whole-slide image (opened with napari-lsr: µm scale)")
        self.grid_combo = QComboBox()
        self.grid_combo.setToolTip("Low-resolution labels: one pixel per block (z or p)")
        self.slide_combo.currentTextChanged.connect(self._follow_slide)
        self.expert = QLineEdit(_user())
        self.expert.setToolTip("Your name: each expert has an autosave file of their own")
        self.per_bin = QSpinBox()
        self.per_bin.setRange(1, 500)
        self.per_bin.setValue(12)
        self.per_bin.setToolTip("Blocks sampled per bin z (the paper used 10-12)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Random seed of the sampling (same seed, same blocks)")
        self.tissue_only = QCheckBox("tissue only")
        self.tissue_only.setChecked(True)
        self.tissue_only.setToolTip(f"Sample only blocks at least {MIN_TISSUE:.0%} tissue")
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("autosave next to the slide")
        self.folder_button = QPushButton("…")
        self.folder_button.setToolTip("Choose another folder for the autosave")
        self.start_button = QPushButton("Start / resume")
        self.start_button.setToolTip("Sample the blocks (or resume this expert's autosave)")
        setup = self.setup_box = QGroupBox("Setup")
        self.session_button = QPushButton()
        self.session_button.setToolTip("Show the setup again (another expert, slide or seed)")
        self.session_button.setVisible(False)
        form = QFormLayout(setup)
        form.addRow("Slide", self.slide_combo)
        form.addRow("Low-res labels", self.grid_combo)
        form.addRow("Expert", self.expert)
        row = QHBoxLayout()
        row.addWidget(QLabel("blocks/bin"))
        row.addWidget(self.per_bin)
        row.addWidget(QLabel("seed"))
        row.addWidget(self.seed)
        row.addWidget(self.tissue_only)
        form.addRow(row)
        frow = QHBoxLayout()
        frow.addWidget(self.folder, 1)
        frow.addWidget(self.folder_button)
        form.addRow("Autosave", frow)
        form.addRow(self.start_button)

        # -- annotate
        self.progress = QProgressBar()
        self.progress.setFormat("%v of %m blocks")
        self.where = QLabel("—")
        self.bin_label = QLabel()
        self.reveal = QPushButton("Reveal bin (R)")
        self.reveal.setCheckable(True)
        self.reveal.setToolTip("Show the block's label z (hidden to avoid anchoring)")
        self.percent = QLineEdit()
        self.percent.setPlaceholderText("cancer % of the outlined block, then Enter")
        font = self.percent.font()
        font.setPointSize(font.pointSize() + 5)
        self.percent.setFont(font)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setToolTip("Cancer %: drag, then Enter or Record")
        self.record_button = QPushButton("Record ⏎")
        self.back_button = QPushButton("↑ Back")
        self.skip_buttons = {r: QPushButton(f"Skip: {r} ({r[0].upper()})") for r in SKIP_REASONS}
        self.next_bin_button = QPushButton("Next bin (N)")
        self.paint_button = QPushButton("Paint cancer area")
        self.paint_button.setCheckable(True)
        self.paint_button.setToolTip(
            "Paint the cancer in the block with the brush; the % is filled in from the painting"
        )
        self.message = QLabel()
        self.message.setWordWrap(True)
        keys = QLabel(KEYS_HELP)
        keys.setWordWrap(True)
        keys.setStyleSheet("color: grey;")
        annotate = QGroupBox("Annotate")
        av = QVBoxLayout(annotate)
        top = QHBoxLayout()
        top.addWidget(self.where, 1)
        top.addWidget(self.bin_label)
        top.addWidget(self.reveal)
        av.addLayout(top)
        av.addWidget(self.progress)
        erow = QHBoxLayout()
        erow.addWidget(self.percent, 1)
        erow.addWidget(self.record_button)
        av.addLayout(erow)
        av.addWidget(self.slider)
        brow = QHBoxLayout()
        brow.addWidget(self.back_button)
        for b in self.skip_buttons.values():
            brow.addWidget(b)
        brow.addWidget(self.next_bin_button)
        av.addLayout(brow)
        av.addWidget(self.paint_button)
        av.addWidget(keys)
        av.addWidget(self.message)

        # -- live table (the Count table widget) and files
        self.table_widget = LiveTable(napari_viewer)
        self.export_button = QPushButton("Export table…")
        self.merge_button = QPushButton("Merge experts…")
        self.merge_button.setToolTip("Pool autosaves of several experts into one table")
        self.coarse_button = QPushButton("Paint coarse labels")
        self.coarse_button.setToolTip(
            "No classifier? Paint a bin z per block (brush snaps to blocks), then save as a grid"
        )
        self.save_coarse_button = QPushButton("Save grid…")
        files = QHBoxLayout()
        files.addWidget(self.export_button)
        files.addWidget(self.merge_button)
        files.addWidget(self.coarse_button)
        files.addWidget(self.save_coarse_button)

        layout = QVBoxLayout(self)
        layout.addWidget(setup)
        layout.addWidget(self.session_button)
        layout.addWidget(annotate)
        layout.addWidget(self.table_widget, 1)
        layout.addLayout(files)

        # -- wiring
        self._keys = _Keys(self)
        self.percent.installEventFilter(self._keys)
        self.percent.returnPressed.connect(self.record_typed)
        self.record_button.clicked.connect(self.record_typed)
        self.percent.textEdited.connect(self._text_to_slider)
        self.slider.sliderMoved.connect(lambda v: self.percent.setText(str(v)))
        self.back_button.clicked.connect(self.back)
        for r, b in self.skip_buttons.items():
            b.clicked.connect(lambda _=False, r=r: self.skip(r))
        self.next_bin_button.clicked.connect(self.next_bin)
        self.reveal.toggled.connect(lambda _on: self._show_block())
        self.paint_button.toggled.connect(self._toggle_paint)
        self.start_button.clicked.connect(self.start)
        self.session_button.clicked.connect(lambda: self._show_setup(True))
        self.folder_button.clicked.connect(self._ask_folder)
        self.export_button.clicked.connect(self._ask_export)
        self.merge_button.clicked.connect(self._ask_merge)
        self.coarse_button.clicked.connect(self.paint_coarse_labels)
        self.save_coarse_button.clicked.connect(self._ask_save_coarse)
        if self.viewer is not None:
            self.viewer.layers.events.inserted.connect(self._refresh_layers)
            self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self._set_annotating(False)

    @property
    def table(self) -> CountTable:
        """The table shown in the annotator (live, merged or loaded): the Trainer lists it."""
        return self.table_widget.table

    # ------------------------------------------------------------------ layers
    def _refresh_layers(self, *_args) -> None:
        """Fill the slide and grid choices (on a layer added, removed or renamed)."""
        if self.viewer is None:
            return
        follow_renames(self.viewer.layers, self._refresh_layers)
        slides, grids = [], []
        for layer in self.viewer.layers:
            kind = type(layer).__name__
            if layer.name in (OUTLINE_LAYER, PAINT_LAYER) or any(
                k in layer.metadata for k in ("lsr_compare", "lsr_boundary")
            ):
                continue  # own layers; Compare's full-resolution maps and boundaries
            if "lsr_grid" in layer.metadata or layer.name == COARSE_LAYER:
                grids.append(layer.name)
            elif kind == "Image" and (
                getattr(layer, "rgb", False) or "lsr_slide" in layer.metadata
            ):
                slides.append(layer.name)
            elif (
                kind in ("Image", "Labels")
                and layer.ndim == 2
                and "lsr_slide" not in layer.metadata
            ):
                grids.append(layer.name)  # not a slide-sized mask (ground truth)
        refill(self.slide_combo, slides)
        z_names = [n for n in grids if n.endswith(" z")]  # prefer the z labels of a grid reader
        own = named_after(z_names, self.slide_combo.currentText())  # the slide's own grid
        refill(self.grid_combo, grids, own or (z_names[-1] if z_names else None))

    def _follow_slide(self, slide: str) -> None:
        """Another slide chosen: its own grid's z labels, when a layer is named so."""
        follow_slide(self.grid_combo, slide, prefer=" z")

    def _layer(self, name: str):
        try:
            return self.viewer.layers[name]
        except (KeyError, ValueError):
            return None

    def _slide_info(self, layer) -> dict:
        """{"name", "path", "mpp", "extent_um" (H, W)} of the slide layer; raises if unusable."""
        meta = layer.metadata.get("lsr_slide") or {}
        mpp = float(meta.get("mpp") or layer.scale[-1])
        if not meta and np.allclose(layer.scale[-2:], 1.0):
            raise LsrInputError(
                f"the slide layer '{layer.name}' has no pixel size (its scale is 1): open the "
                "slide with napari-lsr (File ▸ Open with Plugin) or pass its µm/px as scale"
            )
        level0 = layer.data[0] if layer.multiscale else layer.data
        h, w = level0.shape[:2]
        path = meta.get("path") or (layer.source.path if layer.source else None)
        return {
            "name": Path(path).name if path else layer.name,
            "path": path,
            "mpp": mpp,
            "extent_um": (h * float(layer.scale[-2]), w * float(layer.scale[-1])),
        }

    def _grid_info(self, layer) -> dict:
        """{"z" (rows, cols) int, -1 = no label; "block_um"; "origin_um" (y, x); "shape"}."""
        meta = layer.metadata.get("lsr_grid") or {}
        block_um = float(layer.scale[-1])
        if not np.isclose(layer.scale[-2], block_um):
            raise LsrInputError(f"the grid layer '{layer.name}' has non-square blocks")
        origin = tuple(float(t) - block_um / 2 for t in layer.translate[-2:])
        data = np.asarray(layer.data)
        if meta.get("path") and Path(meta["path"]).is_file():
            from lsr.grid import load_grid

            grid = load_grid(meta["path"], block_px=meta["block_px"], origin=tuple(meta["origin"]))
            z = grid.z.astype(np.int64)
        elif np.issubdtype(data.dtype, np.floating):
            z = np.full(data.shape, -1, np.int64)
            ok = np.isfinite(data)
            z[ok] = bin_probabilities(data[ok])
        else:
            z = data.astype(np.int64)
        return {"z": z, "block_um": block_um, "origin_um": origin, "shape": list(z.shape)}

    # ------------------------------------------------------------------ start
    def start(self) -> bool:
        """Check the inputs, then sample (or resume). False (and a notification) on bad input."""
        if self.viewer is None:
            return False
        slide_layer = self._layer(self.slide_combo.currentText())
        grid_layer = self._layer(self.grid_combo.currentText())
        if slide_layer is None or grid_layer is None:
            self._notify("Open a slide and its low-resolution grid first (File ▸ Open).")
            return False
        try:
            slide = self._slide_info(slide_layer)
            grid = self._grid_info(grid_layer)
            check_grid_fits(
                tuple(grid["shape"]),
                grid["block_um"],
                grid["origin_um"],
                slide["extent_um"],
                (grid_layer.metadata.get("lsr_grid") or {}).get("path") or grid_layer.name,
            )
            expert = self.expert.text().strip()
            if not expert:
                raise LsrInputError("type your name in Expert (each expert has own estimates)")
            folder = self.folder.text().strip() or default_autosave_folder(slide["path"])
            if not folder:
                raise LsrInputError("the slide has no file: choose an autosave folder")
            check_autosave_folder(folder)
            autosave = find_autosave(folder, slide["name"], expert)
        except LsrInputError as err:
            self._notify(f"Cannot start: {err}")
            return False
        self._geo = {**grid, "slide": slide}
        self.autosave = autosave
        self.start_button.setEnabled(False)
        if self.tissue_only.isChecked():
            self.message.setText("Finding tissue blocks…")
            self._starting = (expert, CloseWatch(self, lambda: None))  # closed meanwhile?
            self._worker = make_worker(_tissue_fraction, slide_layer, grid)
            self._worker.returned.connect(self._tissue_found)
            self._worker.errored.connect(self._tissue_failed)
            self._worker.start()
        else:
            self._begin(expert, None)
        return True

    def _tissue_found(self, fraction: np.ndarray) -> None:
        self._begin_unless_closed(fraction >= MIN_TISSUE)

    def _tissue_failed(self, err: Exception) -> None:
        self._begin_unless_closed(None, f"{err}")

    def _begin_unless_closed(self, eligible: np.ndarray | None, problem: str = "") -> None:
        """The tissue search's end: start the session, unless the dock or napari was closed
        meanwhile (then no layer, camera move or autosave for a widget nobody sees)."""
        assert self._starting is not None
        (expert, watch), self._starting = self._starting, None
        watch.stop()
        self._worker = None
        if watch.closed:
            self.start_button.setEnabled(True)
            self.message.setText("closed before the tissue blocks were found")
            return
        self._begin(expert, eligible, problem)

    def _begin(self, expert: str, eligible: np.ndarray | None, problem: str = "") -> None:
        self.start_button.setEnabled(True)
        grid, slide = self._geo, self._geo["slide"]
        if problem:
            self._notify(f"Tissue detection failed ({problem}); sampling all labelled blocks")
        geo = {"shape": grid["shape"], "block_um": grid["block_um"]}
        geo["origin_um"] = list(grid["origin_um"])

        def new() -> AnnotationSession:
            blocks = sample_blocks(grid["z"], self.per_bin.value(), self.seed.value(), eligible)
            return AnnotationSession(
                expert=expert,
                slide=slide["name"],
                blocks=blocks,
                per_bin=self.per_bin.value(),
                seed=self.seed.value(),
                tissue_only=eligible is not None,
                grid=geo,
            )

        try:
            session, note = open_session(
                self.autosave, new, grid=geo, expert=expert, slide=slide["name"]
            )
        except LsrInputError as err:
            self._notify(f"Cannot start: {err}")
            return
        self.session = session
        self._merged_paths = None  # a new session shows its own table
        if self._session_watch is None:  # the dock closed mid-session tidies the canvas
            self._session_watch = CloseWatch(self, self._dock_closed)
        if note:
            (self._notify if "corrupt" in note else self._info)(note)
        short = np.flatnonzero(session.sampled_per_bin() < session.per_bin)
        if len(short):
            self._info(
                f"Bins {', '.join(map(str, short))} have fewer than {session.per_bin} blocks "
                "on this slide: annotate another slide of the set and pool the sessions "
                "(Merge experts…) to complete them; with this slide alone those bins rest on "
                "fewer estimates."
            )
        self._set_annotating(True)
        self.session_button.setText(f"{session.expert} on {session.slide} · change setup…")
        self._show_setup(False)
        self._show_block()
        self._update_table()

    # ------------------------------------------------------------------ walking
    def record_typed(self) -> None:
        """Record the typed (or slider / painted) percentage and go to the next block."""
        if self.session is None:
            return
        if self.percent.text() == self._painted_text and self._layer(PAINT_LAYER) is not None:
            self._painted()  # napari's undo/redo of a stroke emits no paint event: read it now
        text = self.percent.text().strip().rstrip("%").replace(",", ".").strip()
        if not text:
            self.message.setText("Type the cancer percentage (0-100), then Enter.")
            return
        try:
            self.session.record(float(text))
        except (ValueError, LsrInputError):
            self.message.setText(f"'{self.percent.text()}' is not a percentage 0-100.")
            return
        self._after_change()

    def skip(self, reason: str) -> None:
        """Skip the current block with ``reason`` (kept in the log, not counted)."""
        if self.session is None:
            return
        self.session.skip(reason)
        self._after_change()

    def back(self) -> None:
        if self.session is not None:
            self.session.back()
            self._show_block()

    def forward(self) -> None:
        if self.session is not None:
            self.session.forward()
            self._show_block()

    def next_bin(self) -> None:
        if self.session is not None and self.session.next_unfinished_bin() is not None:
            self._show_block()

    def _after_change(self) -> None:
        self._save()
        self._update_table()
        self._show_block()
        if self.session.finished:
            self._info(
                f"All {len(self.session.blocks)} blocks done. Export the table, or merge "
                "with other experts."
            )

    def _save(self) -> None:
        try:
            self.session.save(self.autosave)
        except OSError as err:
            self._notify(f"Autosave failed ({self.autosave}): {err}")

    def _show_block(self) -> None:
        s = self.session
        if s is None:
            return
        blk = s.block
        i = s.current
        self.progress.setRange(0, len(s.blocks))
        self.progress.setValue(s.n_done)
        done = s.results.get(i)
        state = ""
        if done is not None:
            state = (
                f" — skipped ({done.skipped})"
                if done.skipped
                else f" — recorded {done.percent_cancer:g} %"
            )
        self.where.setText(f"Block {i + 1} of {len(s.blocks)}{state}")
        if self.reveal.isChecked():
            lo, hi = s.edges[blk.z], s.edges[blk.z + 1]
            self.bin_label.setText(f"z = {blk.z} (classifier {100 * lo:g}–{100 * hi:g} %)")
        else:
            self.bin_label.setText("bin hidden")
        self.percent.setText("" if done is None or done.skipped else f"{done.percent_cancer:g}")
        self.slider.setValue(0 if done is None or done.skipped else round(done.percent_cancer))
        self.message.setText("")
        self._hide_grids(not self.reveal.isChecked() and not s.finished)
        self._outline_and_zoom()
        if self.paint_button.isChecked():
            self._reset_paint()
        self.percent.setFocus()

    def _block_box_um(self) -> tuple[float, float, float]:
        """(y0, x0, side) of the current block in world µm."""
        blk, b = self.session.block, self._geo["block_um"]
        oy, ox = self._geo["origin_um"]
        return (oy + blk.row * b, ox + blk.col * b, b)

    def _outline_and_zoom(self) -> None:
        if self.viewer is None or not self._geo:
            return
        y0, x0, b = self._block_box_um()
        rect = np.array([[y0, x0], [y0 + b, x0 + b]])
        layer = self._layer(OUTLINE_LAYER)
        if layer is None:
            layer = self.viewer.add_shapes(
                [rect],
                shape_type="rectangle",
                edge_color="#39ff14",
                face_color="transparent",
                edge_width=b * 0.015,
                name=OUTLINE_LAYER,
                units=UNITS,
            )
            layer.editable = False
            slide = self._layer(self.slide_combo.currentText())
            if slide is not None:
                self.viewer.layers.selection.active = slide
        else:
            layer.data = [rect]
            layer.shape_type = ["rectangle"]
        camera = _camera(self.viewer)
        camera.center = (y0 + b / 2, x0 + b / 2)
        camera.zoom = min(_canvas_size(self.viewer)) / ((1 + 2 * CONTEXT_BLOCKS) * b)

    def _dock_closed(self) -> None:
        """The dock's ✕ (or napari's window) closed mid-session: show the grid layers hidden
        with the bin again and take the annotator's own layers away (the session itself is
        in its autosave; reopening the annotator resumes it)."""
        self._session_watch = None
        if self.viewer is None or self.parent() is not None:
            return  # napari's window is closing: its layers go with it
        self._hide_grids(False)
        for name in (OUTLINE_LAYER, PAINT_LAYER):
            if (layer := self._layer(name)) is not None:
                self.viewer.layers.remove(layer)

    def _hide_grids(self, hide: bool) -> None:
        """Hide the visible grid layers (their colours show the bin), or show again those
        hidden here: while the bin is hidden the expert must not see it on the canvas."""
        if self.viewer is None:
            return
        if not hide:
            for layer in self._hidden_grids:
                if layer in self.viewer.layers:
                    layer.visible = True
            self._hidden_grids = []
            return
        chosen = self.grid_combo.currentText()
        for layer in self.viewer.layers:
            is_grid = "lsr_grid" in layer.metadata or layer.name in (COARSE_LAYER, chosen)
            if is_grid and layer.visible:
                layer.visible = False
                self._hidden_grids.append(layer)

    def _show_setup(self, on: bool) -> None:
        """The setup folds away while annotating, to give the table room."""
        if on:
            self._hide_grids(False)
        self.setup_box.setVisible(on)
        self.session_button.setVisible(not on and self.session is not None)

    def _set_annotating(self, on: bool) -> None:
        for w in (
            self.percent,
            self.slider,
            self.record_button,
            self.back_button,
            self.next_bin_button,
            self.paint_button,
            self.reveal,
            self.export_button,
            *self.skip_buttons.values(),
        ):
            w.setEnabled(on)

    def _text_to_slider(self, text: str) -> None:
        with contextlib.suppress(ValueError):
            self.slider.setValue(round(float(text.rstrip("%").replace(",", "."))))

    # ------------------------------------------------------------------ painting
    def _toggle_paint(self, on: bool) -> None:
        if on and self.session is not None:
            self._reset_paint()
        elif not on:
            layer = self._layer(PAINT_LAYER)
            if layer is not None:
                self.viewer.layers.remove(layer)
            self.percent.setFocus()

    def _reset_paint(self) -> None:
        """A labels layer covering exactly the current block: painting can't leave it."""
        y0, x0, b = self._block_box_um()
        px = b / PAINT_PX
        layer = self._layer(PAINT_LAYER)
        data = np.zeros((PAINT_PX, PAINT_PX), np.uint8)
        if layer is None:
            layer = self.viewer.add_labels(
                data,
                name=PAINT_LAYER,
                scale=(px, px),
                units=UNITS,
                opacity=0.45,
                translate=(0, 0),
            )
            layer.events.paint.connect(self._painted)
        else:
            layer.data = data
            layer.scale = (px, px)
        layer.translate = (y0 + px / 2, x0 + px / 2)
        layer.selected_label = 1
        layer.brush_size = 8
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer

    def _painted(self, *_args) -> None:
        layer = self._layer(PAINT_LAYER)
        if layer is not None:
            self.percent.setText(f"{100.0 * float((np.asarray(layer.data) > 0).mean()):.0f}")
            self._painted_text = self.percent.text()
            self._text_to_slider(self.percent.text())

    def paint_coarse_labels(self) -> None:
        """A labels layer with one pixel per block over the slide: paint z (0 = bin 0)."""
        slide_layer = self._layer(self.slide_combo.currentText())
        if slide_layer is None:
            self._notify("Open a slide first.")
            return
        try:
            slide = self._slide_info(slide_layer)
        except LsrInputError as err:
            self._notify(str(err))
            return
        grid_layer = self._layer(self.grid_combo.currentText())
        geo = (grid_layer.metadata.get("lsr_grid") or {}) if grid_layer is not None else {}
        if geo.get("block_px") and geo.get("working_mpp"):  # the grid's own geometry
            block_px = int(geo["block_px"])
            b = block_px * float(geo["working_mpp"])
        else:  # µm per block from the layer, else the paper's; never finer than the slide
            from lsr.slide import WORKING_MPP

            b = float(grid_layer.scale[-1]) if grid_layer is not None else 240 * WORKING_MPP
            block_px = max(1, round(b / max(WORKING_MPP, slide["mpp"])))
        shape = tuple(int(np.ceil(e / b - 0.005)) for e in slide["extent_um"])
        layer = self._layer(COARSE_LAYER)
        owner = (layer.metadata.get("lsr_coarse") or {}).get("slide") if layer else None
        if layer is not None and (owner != slide["name"] or tuple(layer.data.shape) != shape):
            # another slide's painting: reused, it was saved as this slide's grid (wrong size)
            self._notify(
                f"The layer '{COARSE_LAYER}' holds the coarse labels of {owner or 'another slide'}"
                f" ({layer.data.shape[0]} x {layer.data.shape[1]} blocks; {slide['name']} needs "
                f"{shape[0]} x {shape[1]}): save them (Save grid) and delete or rename that "
                f"layer to paint {slide['name']}."
            )
            return
        if layer is None:
            from napari_lsr._reader import _z_colormap

            layer = self.viewer.add_labels(
                np.zeros(shape, np.uint8),
                name=COARSE_LAYER,
                scale=(b, b),
                units=UNITS,
                translate=(b / 2, b / 2),
                opacity=0.5,
                colormap=_z_colormap(),
                metadata={"lsr_coarse": {"slide": slide["name"], "block_px": block_px}},
            )
        layer.brush_size = 1
        layer.selected_label = 9
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self._info("Paint a bin z (label 1-9) per block; label 0 (eraser) = bin 0 (0-20 %).")

    def save_coarse_grid(self, path: str | Path, block_px: int | None = None) -> Path | None:
        """Save the painted coarse labels as a z grid + sidecar geometry (``*_grid.npy``).

        The file name is :func:`coarse_grid_path` of ``path``. A file already there is
        replaced only when it is a coarse grid saved here before (its sidecar is marked):
        anything else (a classifier's grid, the user's file) is refused before writing.
        ``block_px``: block side at the working resolution; default that of the grid the
        painting was laid on (``working_mpp`` = µm per block / ``block_px``).
        """
        from lsr.atomic import check_replaceable
        from lsr.grid import (
            BlockGrid,
            check_sidecar_replaceable,
            grid_sidecar,
            save_grid,
            write_grid_sidecar,
        )

        layer = self._layer(COARSE_LAYER)
        if layer is None:
            self._notify("Nothing painted: press 'Paint coarse labels' first.")
            return None
        p = coarse_grid_path(path)
        b = float(layer.scale[-1])
        block_px = int(block_px or layer.metadata.get("lsr_coarse", {}).get("block_px") or 240)
        z = np.asarray(layer.data)
        if z.max(initial=0) > 9:
            self._notify(f"Cannot save the grid: bins z must be 0–9, the painting has {z.max()}.")
            return None
        try:  # both checks before writing: refused = nothing written, no grid without sidecar
            check_replaceable(p, _is_coarse_grid, "a coarse grid saved by the annotator", "name")
            check_sidecar_replaceable(p)
            side = grid_sidecar(p)  # x_grid.csv shares x_grid.json with the classifier's .npy
            if side.exists() and _coarse_sidecar(side) is None:
                raise LsrInputError(
                    "holds the geometry of another grid of that name (the classifier's?); not "
                    "replaced: save the coarse grid under another name",
                    side,
                )
            save_grid(BlockGrid.from_z(z.astype(np.int16), block_px), p)
            side = write_grid_sidecar(p, block_px, b / block_px, extra=COARSE_MARK)
        except (LsrInputError, OSError) as err:
            self._notify(f"Cannot save the grid: {err}")
            return None
        self._info(f"Saved {p.name} (+ {side.name})")
        return p

    # ------------------------------------------------------------------ tables
    def _update_table(self) -> None:
        if self.session is None:
            return
        if self._merged_paths is not None:
            if self.merge(self._merged_paths) is not None:
                return  # the merged table stays shown, with this estimate (the Trainer takes it)
            self._merged_paths = None  # (said why once) the live table from now on
        self.table_widget.set_table(self.session.table(), f"live: {self.session.expert}")

    def export(self, path: str | Path) -> bool:
        """Write this session's table as CSV or JSON (by suffix, atomic)."""
        if self.session is None:
            return False
        try:
            self.session.table().save(path)
        except (LsrInputError, OSError) as err:
            self._notify(f"Cannot export: {err}")
            return False
        self._info(f"Exported {Path(path).name}")
        return True

    def merge(self, paths: list[str | Path]) -> CountTable | None:
        """Pool the autosaves at ``paths`` (and this session) into one shown table."""
        sessions, seen = [], set()
        if self.session is not None and self.autosave is not None:
            sessions.append(self.session)
            seen.add(Path(self.autosave).resolve())
        for p in paths:
            if Path(p).resolve() in seen:
                continue
            seen.add(Path(p).resolve())
            try:
                sessions.append(AnnotationSession.load(p))
            except LsrInputError as err:
                self._notify(f"Cannot merge: {err}")
                return None
        try:
            table = merge_sessions(sessions)
        except LsrInputError as err:
            self._notify(f"Cannot merge: {err}")
            return None
        experts = " + ".join(sorted({s.expert for s in sessions}))
        self._merged_paths = list(paths)
        self.merged = table
        self.table_widget.set_table(table, f"merged: {experts}")
        return table

    # ------------------------------------------------------------------ dialogs
    def _ask_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Autosave folder")
        if d:
            self.folder.setText(d)

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export count table", "", "Count table (*.csv *.json)"
        )
        if path:
            self.export(path)

    def _ask_merge(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Autosaves of other experts", "", "Autosaves (*.lsr-estimates.json)"
        )
        if paths:
            self.merge(paths)

    def _ask_save_coarse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save coarse grid", "", "Grid (*_grid.npy)")
        if path:
            self.save_coarse_grid(path)

    # ------------------------------------------------------------------ messages
    def _info(self, message: str) -> None:
        self.message.setText(message)
        from napari.utils.notifications import show_info

        show_info(message)

    def _notify(self, message: str) -> None:
        self.message.setText(message)
        from napari.utils.notifications import show_error

        show_error(message)


def default_autosave_folder(slide_path: str | None) -> str:
    """Where annotations autosave when no folder is chosen: next to the slide.

    The shipped sample slide lies inside the install (read-only, or a source checkout), so
    its annotations go to the user data folder instead. "" when the slide has no file.
    """
    if not slide_path:
        return ""
    if is_shipped(slide_path):
        from platformdirs import user_data_dir

        return str(Path(user_data_dir("napari-lsr")) / "sample-annotations")
    return str(Path(slide_path).parent)


def coarse_grid_path(path: str | Path) -> Path:
    """Where a coarse grid chosen as ``path`` is saved: the name as typed when the grid reader
    recognises it (``*_grid.npy``, ...), else ``<name>_grid.npy`` (``mine.v2.npy`` ->
    ``mine.v2_grid.npy``: dots in the name are kept, only a grid suffix is dropped)."""
    p = Path(path)
    if p.name.lower().endswith(GRID_ENDINGS):
        return p
    known = p.suffix.lower() in (".npy", ".csv", ".tif", ".tiff")
    base = p.name[: -len(p.suffix)] if known else p.name
    return p.with_name(f"{base}_grid.npy")


def _coarse_sidecar(side: Path) -> dict | None:
    """The sidecar ``side`` when it says this widget saved its grid (:data:`COARSE_MARK`),
    else None (missing, not JSON, another grid's geometry)."""
    import json

    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    marked = isinstance(data, dict) and all(data.get(k) == v for k, v in COARSE_MARK.items())
    return data if marked else None


def _is_coarse_grid(path: Path) -> bool:
    """Whether the grid at ``path`` is one this widget saved (its sidecar carries the mark):
    the only kind of file that saving a coarse grid may replace."""
    from lsr.grid import grid_sidecar, load_grid

    side = _coarse_sidecar(grid_sidecar(path))
    if side is None:
        return False
    return load_grid(path, block_px=int(side["block_px"])).z_explicit is not None


def check_autosave_folder(folder: str | Path) -> None:
    """Refuse an autosave folder that is (or lies inside) a file, before any work is done.

    Why: otherwise every autosave fails and the expert annotates on with nothing saved.
    """
    p = Path(folder)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                problem = "is a file; the autosave folder must be a folder"
                if q != p:
                    problem = f"is a file, so the autosave folder {p} cannot be made in it"
                raise LsrInputError(f"{problem}: choose another autosave folder", q)
            try:  # a read-only share: every estimate would live in memory only
                tempfile.TemporaryFile(dir=q).close()
            except OSError as err:
                raise LsrInputError(
                    f"cannot write there ({err.strerror or err}), so the estimates could not "
                    "be autosaved: choose another autosave folder",
                    q,
                ) from None
            return


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return ""


def _tissue_fraction(slide_layer, grid: dict) -> np.ndarray:
    """(rows, cols) tissue fraction per block, from the coarsest level of the slide layer.

    Runs in a worker thread: reads one small level (a few hundred px per side).
    """
    from lsr.grid import BlockGrid
    from lsr.slide import ArraySlide
    from lsr.tissue import block_tissue_fraction

    levels = slide_layer.data if slide_layer.multiscale else [slide_layer.data]
    coarse = levels[-1]
    mpp0 = float(slide_layer.scale[-1])
    mpp = mpp0 * levels[0].shape[1] / coarse.shape[1]
    k = 16  # working px per block for the tissue grid
    wmpp = grid["block_um"] / k
    oy, ox = (round(o / wmpp) for o in grid["origin_um"])
    g = BlockGrid(np.zeros(grid["shape"], np.float32), k, (oy, ox))
    return block_tissue_fraction(ArraySlide(coarse, mpp), g, working_mpp=wmpp, px_per_block=8)
