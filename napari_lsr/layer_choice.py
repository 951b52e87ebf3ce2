"""Combo boxes that list the viewer's layers, shared by the dock widgets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


def follow_renames(layers: Iterable[Any], callback: Callable[..., Any]) -> None:
    """Call ``callback`` when one of ``layers`` is renamed (a layer combo must follow).

    Connecting twice is a no-op in napari, so a widget calls this from its refresh, which
    runs on every inserted layer. Pass a bound method: napari holds it weakly.
    """
    for layer in layers:
        layer.events.name.connect(callback)
