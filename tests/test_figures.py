"""lsr.figures: a boundary that no panel can show is explained in the legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsr import figures


def _disc(shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return (yy - 32 - shift) ** 2 + (xx - 32) ** 2 < 20**2


def test_missing_boundary_note_only_when_every_panel_is_uniform() -> None:
    full, empty, disc = np.ones((64, 64), bool), np.zeros((64, 64), bool), _disc()
    assert "all cancer" in figures.missing_boundary_note([full, full])
    assert "no cancer" in figures.missing_boundary_note([empty, empty])
    assert figures.missing_boundary_note([full, disc]) == ""  # one panel shows the line
    assert figures.missing_boundary_note([disc]) == ""
    assert figures.missing_boundary_note([]) == ""


def test_fig4_legend_says_why_a_boundary_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    legends: list[list[str]] = []
    save = figures._save

    def keep_legend(fig, path) -> None:
        legends.append([t.get_text() for t in fig.legends[0].get_texts()])
        save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_legend)
    rgb = np.full((64, 64, 3), 200, np.uint8)
    masks = {"intra": _disc(3), "intra_inter": np.ones((64, 64), bool), "ground_truth": _disc()}
    figures.fig4(tmp_path / "f.png", [(rgb, masks)] * 2, px_per_mm=20.0)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (labels,) = legends
    assert labels == ["intra-instance", "intra+inter-instance (all cancer here: no boundary)",
                      "ground truth"]  # fmt: skip
