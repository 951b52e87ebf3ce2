"""The "Count table" dock widget: load a table (file or paper preset) and show it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lsr.counttable import CountTable
from lsr.errors import LsrInputError
from napari_lsr.table_view import CountTableView

PRESET = "Paper Table 1"


class CountTableWidget(QWidget):
    """Pick a count table and see it as paper Table 1 shows it.

    ``load(path)`` is what the file button, the reader and tests call; errors go to a
    napari notification, and the table shown before stays.
    """

    def __init__(self, napari_viewer=None, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.source = QComboBox()
        self.source.addItem(PRESET)
        self.source.setToolTip("Count table to show: the paper preset or a loaded file")
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Load a count table (.csv in percent or .json)")
        self.compare = QCheckBox("beside paper Table 1")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.view = CountTableView()
        self._tables: dict[str, CountTable] = {PRESET: CountTable.paper_table1()}

        top = QHBoxLayout()
        top.addWidget(self.source, 1)
        top.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.compare)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)

        self.source.currentTextChanged.connect(self._show_current)
        self.open_button.clicked.connect(self._ask_file)
        self.compare.toggled.connect(self._show_current)
        self._show_current()

    @property
    def table(self) -> CountTable:
        """The table currently shown."""
        return self._tables[self.source.currentText()]

    def load(self, path: str | Path) -> CountTable | None:
        """Load a table file, add it to the choices and show it (None on a bad file)."""
        try:
            table = CountTable.load(path)
        except (LsrInputError, OSError) as err:
            self._notify(f"Could not load the count table: {err}")
            return None
        key = str(path)
        self._tables[key] = table
        if self.source.findText(key) < 0:
            self.source.addItem(key)
        self.source.setCurrentText(key)
        self._show_current()
        return table

    def set_table(self, table: CountTable, key: str) -> None:
        """Show a table made elsewhere (e.g. the annotator's live table) under ``key``."""
        self._tables[key] = table
        if self.source.findText(key) < 0:
            self.source.addItem(key)
        self.source.setCurrentText(key)
        self._show_current()

    def _ask_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open count table", "", "Count tables (*.csv *.json)"
        )
        if path:
            self.load(path)

    def _show_current(self, *_args) -> None:
        table = self.table
        paper = self._tables[PRESET]
        comparable = (
            np.allclose(table.edges, paper.edges) if table.n_bins == paper.n_bins else False
        )
        comparable = comparable and table.class_names == paper.class_names
        self.compare.setEnabled(comparable)
        self.compare.setToolTip(
            "Show paper Table 1's values beside this table"
            if comparable
            else "paper Table 1 has other bins or classes than this table"
        )
        ref = paper if self.compare.isChecked() and comparable else None
        self.view.set_table(table, reference=ref)
        problems = table.bin_problems()
        notes = [f"{len(problems)} bin(s) flagged (hover for why)"] if problems else []
        if not comparable:
            notes.append(
                f"paper Table 1 has other bins ({paper.n_bins}, not {table.n_bins}) or classes: "
                "no side-by-side view"
            )
        if table.n is not None:
            notes.insert(0, f"{int(table.n.sum())} estimates")
        self.status.setText(" · ".join(notes))

    def _notify(self, message: str) -> None:
        self.status.setText(message)
        try:
            from napari.utils.notifications import show_error
        except ImportError:  # pragma: no cover - napari is a dependency
            return
        show_error(message)
