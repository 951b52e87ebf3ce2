"""Combo boxes that list the viewer's layers, shared by the dock widgets."""

from __future__ import annotations

import re
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


#: What follows a slide's name in the name of a layer of its own: the readers name a layer
#: after its file (``s_gt``, ``s_mask``; the grid ``s_grid.npy``, ``s.grid.csv`` or
#: ``s-grid.tif`` as ``s_grid p(cancer)``, ``s.grid z``), napari may add `` [1]``.
_OWN = r"(?:[_.-]grid|_gt|_mask)(?=$|\s)"


def named_after(items: Sequence[str], slide: str) -> str | None:
    """The first of ``items`` that is a layer of the slide layer ``slide``'s own (its grid
    or ground truth: ``s_grid z``, ``s.grid p(cancer)``, ``s_gt`` belong to slide ``s``),
    or None.

    Why: with two cases open, a widget took the last grid or the first labels layer,
    whichever slide they came from, and scored or sampled one case with the other's; a
    prefix match then gave slide ``Case 1`` the grid and truth of ``Case 1 deeper``."""
    if not slide:
        return None
    own = re.compile(re.escape(slide) + _OWN, re.IGNORECASE)
    return next((name for name in items if own.match(name)), None)


def follow_slide(combo: QComboBox, slide: str, prefer: str = "") -> None:
    """Choose the item of ``combo`` named after ``slide``, when there is one; among them
    one ending with ``prefer`` first (the annotator's `` z`` labels of a grid)."""
    items = [combo.itemText(i) for i in range(combo.count())]
    preferred = [n for n in items if n.endswith(prefer)] if prefer else []
    match = named_after(preferred, slide) or named_after(items, slide)
    if match is not None:
        combo.setCurrentText(match)
