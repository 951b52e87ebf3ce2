"""The live loss curve: line-only (blitted) updates, full renders only when the axes change."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")


@pytest.fixture
def plot(qtbot):
    from napari_lsr.loss_plot import LossPlot

    p = LossPlot(min_interval_s=0.0)
    p.resize(460, 220)
    qtbot.addWidget(p)
    p.show()
    qtbot.waitExposed(p)
    return p


def show(qtbot, plot, *args, **kw) -> None:
    """``set_losses`` that must render in full; waits for that (deferred) render."""
    before = plot.draws
    assert plot.set_losses(*args, **kw)
    qtbot.waitUntil(lambda: plot.draws > before, timeout=5000)


def line_colour_near(plot, x: float, y: float, radius: int = 2) -> bool:
    """Whether the Agg buffer has the curve's colour within ``radius`` px of data (x, y)."""
    from matplotlib.colors import to_rgb

    from napari_lsr.loss_plot import LINE

    buf = np.asarray(plot.buffer_rgba())[..., :3].astype(int)
    px, py = plot.ax.transData.transform((x, y))
    row, col = round(buf.shape[0] - py), round(px)
    patch = buf[row - radius : row + radius + 1, col - radius : col + radius + 1]
    want = np.array([round(255 * c) for c in to_rgb(LINE)])
    return bool((np.abs(patch - want).max(axis=-1) < 40).any())


def counts(plot) -> tuple[int, int, int]:
    return plot.draws, plot.axes_draws, plot.blits


def refitted(qtbot, plot, *args, **kw) -> None:
    """``set_losses`` that must redraw the axes (in two halves); waits for the second."""
    before = plot.axes_draws
    assert plot.set_losses(*args, **kw)
    qtbot.waitUntil(lambda: plot.axes_draws > before, timeout=5000)


def test_new_losses_inside_the_axes_are_blitted_not_rendered(qtbot, plot) -> None:
    show(qtbot, plot, [1.0, 0.0, 0.5], title="run-a")
    draws, axes_draws, blits = counts(plot)
    assert not line_colour_near(plot, 8, 0.7)
    losses = [1.0, 0.0, 0.5, 0.9, 0.1, 0.8, 0.2, 0.7]
    assert plot.set_losses(losses, title="run-a")
    qtbot.wait(50)  # nothing deferred may render
    assert counts(plot) == (draws, axes_draws, blits + 1)
    xs, ys = plot.line.get_data()
    assert list(xs) == list(range(1, 9)) and list(ys) == pytest.approx(losses)
    assert plot.losses == pytest.approx(losses)
    assert line_colour_near(plot, 8, 0.7)  # the new point is in the pixels


def test_axes_redrawn_when_the_curve_leaves_them(qtbot, plot) -> None:
    show(qtbot, plot, [1.0, 0.0, 0.5], title="run-a")
    assert plot.ax.get_xlim() == (0, 10)
    draws, axes_draws, blits = counts(plot)
    losses = [1.0, 0.0, 0.5] + [0.5] * 9  # 12 steps: past the end of the step axis
    refitted(qtbot, plot, losses, title="run-a")
    assert counts(plot) == (draws, axes_draws + 1, blits)  # axes only, no full render
    assert plot.ax.get_xlim() == (0, 20)  # doubled
    _, yhi = plot.ax.get_ylim()
    refitted(qtbot, plot, [*losses, 3.0], title="run-a")  # above the y-range
    assert counts(plot) == (draws, axes_draws + 2, blits)
    lo, hi = plot.ax.get_ylim()
    assert hi > yhi and lo <= 0.0 and hi >= 3.0
    assert plot.ax.get_xlim() == (0, 20)  # unchanged: 13 steps fit
    assert line_colour_near(plot, 13, 3.0)
    qtbot.wait(50)
    assert plot.draws == draws


def test_axes_redraws_are_throttled_but_the_line_still_moves(qtbot, plot) -> None:
    show(qtbot, plot, [1.0, 0.0, 0.5], title="run-a")
    plot.min_interval_s = 3600.0
    draws, axes_draws, blits = counts(plot)
    losses = [1.0, 0.0, 0.5] + [0.5] * 9
    assert plot.set_losses(losses, title="run-a")  # needs new axes, too soon: blitted
    assert counts(plot) == (draws, axes_draws, blits + 1)
    assert plot.ax.get_xlim() == (0, 10)
    assert plot.flush(force=True)  # the postponed redraw, forced: at once, in one go
    assert counts(plot) == (draws, axes_draws + 1, blits + 1)
    assert plot.ax.get_xlim() == (0, 20)


def test_new_run_refits_and_resumes_are_marked(qtbot, plot) -> None:
    show(qtbot, plot, list(np.linspace(5, 1, 30)), title="run-a")
    assert plot.ax.get_xlim() == (0, 40)
    show(qtbot, plot, [0.3, 0.2], title="run-b")  # another run: a full render, fitted afresh
    assert plot.ax.get_xlim() == (0, 10) and plot.ax.get_ylim()[1] < 1.0
    assert plot.title.get_text() == "run-b"
    refitted(qtbot, plot, [0.3, 0.2, 0.25, 0.2], resumes=[2], title="run-b")
    assert [ln.get_xdata()[0] for ln in plot._resume_lines] == [2]


def test_long_histories_are_thinned_keeping_the_last_step(plot) -> None:
    plot.max_points = 100
    losses = list(np.linspace(2.0, 1.0, 1001))
    plot.set_losses(losses, title="long")
    xs, ys = plot.line.get_data()
    assert len(xs) <= 101 and xs[0] == 1 and xs[-1] == 1001 and ys[-1] == losses[-1]
    assert plot.losses == losses


def test_placeholder_until_the_first_loss(qtbot, plot) -> None:
    assert plot.placeholder.get_visible() and not plot.ax.get_visible()
    assert not plot.set_losses([], title="")  # nothing to show yet
    show(qtbot, plot, [0.5], title="run-a")
    assert plot.ax.get_visible() and not plot.placeholder.get_visible()
    show(qtbot, plot, [], title="run-b")  # the next run of a queue has not started
    assert plot.placeholder.get_visible() and not plot.ax.get_visible()


def test_no_blit_onto_half_drawn_axes(qtbot, plot) -> None:
    show(qtbot, plot, [1.0, 0.0, 0.5], title="run-a")
    blits = plot.blits
    losses = [1.0, 0.0, 0.5] + [0.5] * 9
    assert plot.set_losses(losses, title="run-a")  # first half of the axes drawn
    assert not plot.set_losses([*losses, 0.6], title="run-a")  # must wait for the rest
    qtbot.waitUntil(lambda: not plot._half_drawn, timeout=5000)
    assert plot.blits == blits
    assert plot.line.get_xdata()[-1] == 13 and line_colour_near(plot, 13, 0.6)
