"""A read-only Qt view of a count table laid out as paper Table 1 (reused by the annotator)."""

from __future__ import annotations

from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
)

from lsr.counttable import CountTable

FLAG_COLOUR = QColor(120, 90, 0)


class CountTableView(QTableWidget):
    """Rows: bins; columns: bin range, mean ± std (percent) per class, n.

    With a ``reference`` table (e.g. paper Table 1) each class gets a second column so the
    two can be compared side by side. Flagged bins (:meth:`CountTable.bin_problems`) are
    highlighted, their reason as tooltip.
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.table: CountTable | None = None

    def set_table(self, table: CountTable, reference: CountTable | None = None) -> None:
        """Show ``table`` (and ``reference`` beside it when given)."""
        self.table = table
        header = table.header()
        rows = table.format_rows()
        if reference is not None:
            ref_rows = reference.format_rows()
            name = "paper" if reference.name == "paper-table1" else reference.name or "ref."
            n_cls = len(table.class_names)
            header = [header[0]]
            for c in table.class_names:
                header += [f"{c} (%)", f"{c} (%) {name}"]
            header.append("n")
            rows = [
                [r[0], *[x for c in range(n_cls) for x in (r[1 + c], rr[1 + c])], r[-1]]
                for r, rr in zip(rows, ref_rows, strict=True)
            ]
        self.clear()
        self.setColumnCount(len(header))
        self.setRowCount(len(rows))
        self.setHorizontalHeaderLabels(header)
        problems = table.bin_problems()
        for i, row in enumerate(rows):
            why = problems.get(i)
            for j, text in enumerate(row):
                item = QTableWidgetItem(text)
                if why:
                    item.setBackground(QBrush(FLAG_COLOUR))
                    item.setToolTip(why)
                self.setItem(i, j, item)

    def cell_text(self, row: int, col: int) -> str:
        """Text shown in a cell (for tests and copy)."""
        item = self.item(row, col)
        return "" if item is None else item.text()
