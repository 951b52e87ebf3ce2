"""A small live loss curve (matplotlib in Qt) that is cheap to update while training runs.

Redrawing a matplotlib figure costs a few to tens of milliseconds on the GUI thread, so
:meth:`LossPlot.set_losses` only stores the data and redraws at most every
``min_interval_s`` seconds (default 1 s); long histories are thinned to at most
``max_points`` points (every k-th step, the last one always kept).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

#: napari's dark theme colours, so the plot sits in the dock without a white box.
BACKGROUND = "#262930"
FOREGROUND = "#d1d2d4"
LINE = "#67b3ff"
RESUME = "#e0a040"


class LossPlot(FigureCanvasQTAgg):
    """Loss per step; dashed vertical lines where a run was resumed."""

    def __init__(self, parent=None, min_interval_s: float = 1.0, max_points: int = 1000) -> None:
        # fixed margins: a layout engine (constrained/tight) would re-run on every draw
        fig = Figure(figsize=(4.0, 2.2), dpi=90, facecolor=BACKGROUND)
        fig.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.88)
        super().__init__(fig)
        self.setParent(parent)
        self.min_interval_s = float(min_interval_s)
        self.max_points = int(max_points)
        self.ax = fig.add_subplot(1, 1, 1)
        ax = self.ax
        ax.set_facecolor(BACKGROUND)
        for spine in ax.spines.values():
            spine.set_color(FOREGROUND)
        ax.tick_params(colors=FOREGROUND, labelsize=8)
        ax.set_xlabel("step", color=FOREGROUND, fontsize=8)
        ax.set_ylabel("loss", color=FOREGROUND, fontsize=8)
        ax.grid(True, color="#44474f", linewidth=0.5)
        (self.line,) = ax.plot([], [], color=LINE, linewidth=1.2)
        self.title = ax.set_title("", color=FOREGROUND, fontsize=9)
        self._resume_lines: list = []
        self._losses: list[float] = []
        self._resumes: list[int] = []
        self._dirty = False
        self._last_draw = 0.0
        self.draws = 0  # how many times the figure was redrawn (for tests/benchmarks)
        self.max_draw_s = 0.0
        self.setMinimumHeight(150)
        # Until a run reports its first loss, a hint instead of empty axes.
        ax.set_visible(False)
        self.placeholder = fig.text(0.5, 0.5, "loss curve: starts with training", ha="center",
                                    va="center", color=FOREGROUND, fontsize=9)  # fmt: skip

    def draw(self) -> None:
        """Render the figure (timed: :attr:`max_draw_s` is the longest render so far)."""
        t0 = time.perf_counter()
        super().draw()
        self.max_draw_s = max(self.max_draw_s, time.perf_counter() - t0)

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
        """Show ``losses`` (one per step, step 1 first); returns True if it redrew now."""
        self._losses = [float(v) for v in losses]
        self._resumes = [int(s) for s in resumes if s > 0]
        if title != self.title.get_text():
            self.title.set_text(title)
        self._dirty = True
        return self.flush(force)

    def flush(self, force: bool = False) -> bool:
        """Redraw if there is something new and the last redraw is old enough (or ``force``)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_draw < self.min_interval_s):
            return False
        n = len(self._losses)
        k = max(1, math.ceil(n / self.max_points))
        idx = list(range(0, n, k))
        if n and idx[-1] != n - 1:
            idx.append(n - 1)
        xs = [i + 1 for i in idx]
        ys = [self._losses[i] for i in idx]
        finite = [y for y in ys if math.isfinite(y)]
        self.line.set_data(xs, ys)
        self.ax.set_visible(n > 0)
        self.placeholder.set_visible(n == 0)
        for ln in self._resume_lines:
            ln.remove()
        self._resume_lines = [
            self.ax.axvline(s, color=RESUME, linestyle="--", linewidth=0.8) for s in self._resumes
        ]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
            self.ax.set_ylim(lo - pad, hi + pad)
            self.ax.set_xlim(0, max(xs[-1], 2))
        self.draw_idle()
        self._dirty = False
        self._last_draw = now
        self.draws += 1
        return True
