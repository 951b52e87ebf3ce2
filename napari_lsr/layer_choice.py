"""Combo boxes that list the viewer's layers, shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtWidgets import QComboBox


def refill(combo: QComboBox, items: Sequence[str], preferred: str | None = None) -> None:
    """Replace ``combo``'s items, keeping the current choice when it is still there, else
    choosing ``preferred`` (when given and present). Emits no change signal while refilling.
    """
    current = combo.currentText()
    combo.blockSignals(True)
    try:
        combo.clear()
        combo.addItems(list(items))
        if current in items:
            combo.setCurrentText(current)
        elif preferred is not None and preferred in items:
            combo.setCurrentText(preferred)
    finally:
        combo.blockSignals(False)
