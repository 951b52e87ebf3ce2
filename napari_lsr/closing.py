"""Notice when a dock widget leaves the viewer while its background work runs.

Closing a dock (its ✕: napari takes the widget out of the dock, parent None) or the napari
window does not stop a worker thread: it ran on for its whole length, then added layers to
a viewer the user had closed, and kept an invisible process busy after the window was
gone. A :class:`CloseWatch` set up when the work starts calls ``on_close`` once, so the
widget can cancel the work and drop its result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget


class CloseWatch(QObject):
    """Call ``on_close`` once when ``widget`` is taken out of its dock or its window closes.

    The window's close is seen as its non-spontaneous Hide, which comes only once the close
    was accepted (another dock may still refuse it; minimising sends a spontaneous Hide).
    The window is the widget's outermost parent: a floating dock is a window of its own,
    hidden when it is docked again, but its parent is still napari's main window.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]):
        super().__init__()  # no Qt parent: the widget would keep it, and it the widget
        self._widget = widget
        root = widget
        while root.parentWidget() is not None:
            root = root.parentWidget()
        self._window = root
        self._on_close = on_close
        self.closed = False
        widget.installEventFilter(self)
        if self._window is not widget:
            self._window.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        undocked = obj is self._widget and kind == QEvent.ParentChange and not obj.parent()
        window_gone = (
            obj is self._window
            and obj is not self._widget
            and kind == QEvent.Hide
            and not event.spontaneous()
        )
        if (undocked or window_gone) and not self.closed:
            self.closed = True
            self._on_close()
        return False

    def stop(self) -> None:
        """Stop watching (the work ended)."""
        for obj in (self._widget, self._window):
            with contextlib.suppress(RuntimeError):  # a window already deleted
                obj.removeEventFilter(self)
