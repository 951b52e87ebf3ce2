"""A small live loss curve (matplotlib in Qt) that is cheap to update while training runs.

A full matplotlib render (texts above all: each costs 1-2 ms) would stall the GUI thread
for tens of milliseconds, so the figure is drawn in three layers, each kept as a pixel copy:

1. the *frame*: backgrounds, title, axis names: rendered by matplotlib
   (``draw``) only when the canvas is resized, the title changes or the curve appears;
2. the *axes*: ticks, tick labels, grid, spines, resume markers (``animated`` artists drawn
   with ``draw_artist`` on the restored frame): redrawn only when the limits change: the
   curve leaves the y-range (the new range gets 25 % headroom on the side that grew) or
   passes the end of the step axis (which then doubles: 10, 20, 40, ...), or a resume
   marker is added; at most every ``min_interval_s`` seconds unless forced (meanwhile the
   line is drawn clipped to the old axes), and in two halves (the y-axis, then the rest a
   timer event later) so the GUI thread is never busy with all of it at once;
3. the *line*: every update restores layers 1+2 and draws only the line (*blitting*), then
   asks Qt for a repaint (``update``: coalesced with the dock's other repaints).

Long histories are thinned to at most ``max_points`` points (every k-th step, the last one
always kept).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation
from qtpy.QtCore import QTimer

#: napari's dark theme colours, so the plot sits in the dock without a white box.
BACKGROUND = "#262930"
FOREGROUND = "#d1d2d4"
GRID = "#44474f"
LINE = "#67b3ff"
RESUME = "#e0a040"
X_START = 10  # first length of the step axis; it doubles when the curve reaches its end
HEADROOM = 0.25  # of the data's span, added on the side where the y-range grows
XLABEL_PT, YLABEL_PT = 14.0, 30.0  # axis names: this far outside the axes (fixed: no search)


class LossPlot(FigureCanvasQTAgg):
    """Loss per step; dashed vertical lines where a run was resumed.

    Counters for tests and benchmarks: :attr:`draws` (full matplotlib renders),
    :attr:`axes_draws` (renders of the axes layer: each full render and each change of
    limits), :attr:`blits` (line-only updates), :attr:`max_draw_s` (longest render of
    either kind).
    """

    def __init__(self, parent=None, min_interval_s: float = 1.0, max_points: int = 1000) -> None:
        # fixed margins: a layout engine (constrained/tight) would re-run on every draw
        fig = Figure(figsize=(4.0, 2.2), dpi=90, facecolor=BACKGROUND)
        fig.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.88)
        super().__init__(fig)
        self.setParent(parent)
        self.min_interval_s = float(min_interval_s)
        self.max_points = int(max_points)
        self.ax = ax = fig.add_subplot(1, 1, 1)
        ax.set_facecolor(BACKGROUND)
        for spine in ax.spines.values():
            spine.set_color(FOREGROUND)
        ax.tick_params(colors=FOREGROUND, labelsize=8)
        ax.grid(True, color=GRID, linewidth=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # few tick labels
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        (self.line,) = ax.plot([], [], color=LINE, linewidth=1.2)
        # title at a fixed height and axis names as figure texts: no overlap search per render
        self.title = ax.set_title("", color=FOREGROUND, fontsize=9, y=1.0)
        below = ax.transAxes + ScaledTranslation(0, -XLABEL_PT / 72, fig.dpi_scale_trans)
        left = ax.transAxes + ScaledTranslation(-YLABEL_PT / 72, 0, fig.dpi_scale_trans)
        self.axis_names = [
            fig.text(0.5, 0, "step", transform=below, ha="center", va="top", color=FOREGROUND,
                     fontsize=8),
            fig.text(0, 0.5, "loss", transform=left, ha="right", va="center", rotation=90,
                     color=FOREGROUND, fontsize=8),
        ]  # fmt: skip
        for axis in (ax.xaxis, ax.yaxis):  # their own names stay empty: skip placing them
            axis.set_label_coords(0.5, 0.5)
        for artist in (ax.xaxis, ax.yaxis, *ax.spines.values(), self.line):
            artist.set_animated(True)  # not in the frame: drawn by _draw_axes / _blit
        self._resume_lines: list[Any] = []
        self._shown_resumes: list[int] = []
        self._losses: list[float] = []
        self._resumes: list[int] = []
        self._xmax: float | None = None  # current axes limits (None: fit at the next render)
        self._ylim: tuple[float, float] | None = None
        self._frame: tuple[tuple[int, int], Any] | None = None  # (canvas size, pixels)
        self._background: tuple[tuple[int, int], Any] | None = None  # frame + axes
        self._dirty = False
        self._needs_full = False  # the frame must change (title, curve appears or goes)
        self._last_fit = -math.inf
        self._retry_pending = False
        self._half_drawn = False  # the y-axis of a split axes redraw is in the buffer
        self.draws = 0
        self.axes_draws = 0
        self.blits = 0
        self.max_draw_s = 0.0
        self.setMinimumHeight(150)
        # Until a run reports its first loss, a hint instead of empty axes.
        self.placeholder = fig.text(0.5, 0.5, "loss curve: starts with training", ha="center",
                                    va="center", color=FOREGROUND, fontsize=9)  # fmt: skip
        self.mpl_connect("draw_event", self._on_draw)
        self._show_axes(True)
        self.draw()  # warm-up: fonts and tick machinery load now, not when training starts
        self._show_axes(False)
        self._frame = self._background = None

    # ------------------------------------------------------------------ rendering
    def draw(self) -> None:
        """Full render: the frame, then (``draw_event``) the axes and the line."""
        if getattr(self, "_is_drawing", False):
            return
        t0 = time.perf_counter()
        super().draw()
        self.draws += 1
        self.max_draw_s = max(self.max_draw_s, time.perf_counter() - t0)

    def _on_draw(self, event: Any) -> None:
        """After matplotlib rendered the frame: keep it, then add the animated layers."""
        if event.renderer is not getattr(self, "renderer", None) or self.is_saving():
            return  # a savefig draws every artist itself
        self._frame = self._background = None
        self._half_drawn = False  # a split axes redraw is superseded
        if self.ax.get_visible():
            self._frame = (self._size(), self.copy_from_bbox(self.figure.bbox))
            self._draw_axes()

    def _draw_axes(self, yaxis: bool = True) -> None:
        """Axes layer (the y-axis unless drawn already) on the frame in the buffer; keep that
        as the background; the line on top."""
        t0 = time.perf_counter()
        first = [self.ax.yaxis] if yaxis else []
        for artist in [*first, self.ax.xaxis, *self._resume_lines, *self.ax.spines.values()]:
            self.ax.draw_artist(artist)
        self._background = (self._size(), self.copy_from_bbox(self.figure.bbox))
        self.ax.draw_artist(self.line)
        self.axes_draws += 1
        self.max_draw_s = max(self.max_draw_s, time.perf_counter() - t0)

    def _redraw_axes(self, split: bool = True) -> bool:
        """New limits on the kept frame (no full render); False if there is no frame.

        ``split``: the y-axis now, the rest in a timer event a millisecond later, so the GUI
        thread is never busy with both halves (~10 ms each) at once.
        """
        if self._frame is None or self._frame[0] != self._size():
            return False
        self.restore_region(self._frame[1])
        if not split:
            self._half_drawn = False
            self._draw_axes()
            self.update()
            return True
        t0 = time.perf_counter()
        self.ax.draw_artist(self.ax.yaxis)
        self._background = None  # no blits onto half an axes layer
        self._half_drawn = True
        QTimer.singleShot(1, self._finish_axes)
        self.max_draw_s = max(self.max_draw_s, time.perf_counter() - t0)
        return True

    def _finish_axes(self) -> None:
        """Second half of a split axes redraw (unless a full render came in between)."""
        if not self._half_drawn:
            return
        self._half_drawn = False
        if self._frame is None or self._frame[0] != self._size():
            self.draw_idle()
            return
        self._draw_axes(yaxis=False)
        self.update()
        if self._dirty:
            self.flush()

    def _blit(self) -> bool:
        """Kept background + line, then a (coalesced) Qt repaint; False if none is kept."""
        bg = self._background
        if bg is None or bg[0] != self._size():
            return False  # never rendered at this size yet: the pending full render shows it
        self.restore_region(bg[1])
        self.ax.draw_artist(self.line)
        self.update()
        self.blits += 1
        return True

    def _size(self) -> tuple[int, int]:
        return self.get_width_height(physical=True)

    def _show_axes(self, visible: bool) -> None:
        self.ax.set_visible(visible)
        for text in self.axis_names:
            text.set_visible(visible)
        self.placeholder.set_visible(not visible)

    # ------------------------------------------------------------------ data
    @property
    def losses(self) -> list[float]:
        return list(self._losses)

    def set_losses(
        self,
        losses: Sequence[float],
        resumes: Sequence[int] = (),
        title: str = "",
        force: bool = False,
    ) -> bool:
        """Show ``losses`` (one per step, step 1 first); returns True if the display changed.

        A new title (another run) or a shorter history refits the axes from scratch.
        """
        new = [float(v) for v in losses]
        if title != self.title.get_text() or len(new) < len(self._losses):
            self.title.set_text(title)
            self._xmax, self._ylim, self._needs_full = None, None, True
        self._losses = new
        self._resumes = [int(s) for s in resumes if s > 0]
        self._dirty = True
        return self.flush(force)

    def flush(self, force: bool = False) -> bool:
        """Show the stored losses: blit the line, redraw the axes when the limits change (at
        most every ``min_interval_s`` unless ``force``). True if the display changed."""
        if not self._dirty:
            return False
        xs, ys = self._thinned()
        self.line.set_data(xs, ys)
        n = len(self._losses)
        finite = [y for y in ys if math.isfinite(y)]
        now = time.monotonic()
        if self._needs_full or self.ax.get_visible() != (n > 0):  # frame changes: render all
            self._fit(n, finite)
            self._show_axes(n > 0)
            self._frame = self._background = None
            self.draw_idle()
            self._needs_full = self._dirty = False
            self._last_fit = now
            return True
        if n == 0:  # the placeholder is shown
            self._dirty = False
            return False
        refit = self._resumes != self._shown_resumes or not self._fits(n, finite)
        wait = self.min_interval_s - (now - self._last_fit)
        if refit and (force or wait <= 0):
            self._fit(n, finite)
            self._last_fit, self._dirty = now, False
            if not self._redraw_axes(split=not force):
                self.draw_idle()
            return True
        self._dirty = refit  # a postponed refit still has to happen
        if refit and not self._retry_pending:
            self._retry_pending = True
            QTimer.singleShot(int(1000 * wait) + 1, self._retry)
        return self._blit()

    def _retry(self) -> None:
        self._retry_pending = False
        self.flush()

    # ------------------------------------------------------------------ limits
    def _thinned(self) -> tuple[list[int], list[float]]:
        """(steps, losses) with at most ``max_points`` points, the last step always kept."""
        n = len(self._losses)
        k = max(1, math.ceil(n / self.max_points))
        xs = list(range(1, n + 1, k))
        ys = self._losses[::k]
        if n and xs[-1] != n:
            xs.append(n)
            ys.append(self._losses[-1])
        return xs, ys

    def _fits(self, n: int, finite: list[float]) -> bool:
        """Whether the current axes hold the curve (and are not 4× too tall for it)."""
        if self._xmax is None or n > self._xmax:
            return False
        if not finite:
            return True
        if self._ylim is None:
            return False
        lo, hi = min(finite), max(finite)
        ylo, yhi = self._ylim
        if lo < ylo or hi > yhi:
            return False
        return hi == lo or (hi - lo) * 4 >= yhi - ylo

    def _fit(self, n: int, finite: list[float]) -> None:
        """New limits (step axis doubled, y-range grown with headroom) and resume markers."""
        xmax = self._xmax or X_START
        while xmax < n:
            xmax *= 2
        self._xmax = xmax
        self.ax.set_xlim(0, xmax)
        if finite:
            lo, hi = min(finite), max(finite)
            span = hi - lo if hi > lo else max(abs(hi) * 0.05, 1e-3)
            old = self._ylim
            if old is not None and (hi - lo) * 4 < old[1] - old[0]:
                old = None  # far too tall for the curve (e.g. after a resume): start over
            grow_lo = old is None or lo < old[0]
            grow_hi = old is not None and hi > old[1]
            ylo = lo - span * (0.05 + HEADROOM) if grow_lo else old[0]
            if grow_hi:
                yhi = hi + span * (0.05 + HEADROOM)
            else:
                yhi = hi + span * 0.05 if old is None else old[1]
            self._ylim = (ylo, yhi)
            self.ax.set_ylim(ylo, yhi)
        for ln in self._resume_lines:
            ln.remove()
        self._resume_lines = [
            self.ax.axvline(s, color=RESUME, linestyle="--", linewidth=0.8, animated=True)
            for s in self._resumes
        ]
        self._shown_resumes = list(self._resumes)
