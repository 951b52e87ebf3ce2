"""lsr.figures: a boundary that no panel can show is named in a footnote, not left missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsr import figures


def _disc(shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return (yy - 32 - shift) ** 2 + (xx - 32) ** 2 < 20**2


def test_missing_boundaries_only_when_every_panel_is_uniform() -> None:
    full, empty, disc = np.ones((64, 64), bool), np.zeros((64, 64), bool), _disc()
    lines = figures.missing_boundaries(
        {"a": [full, full], "b": [empty, empty], "c": [full, disc], "d": [disc], "e": []}, 12.0
    )
    text = " ".join(lines)
    assert "a: all cancer" in text and "b: no cancer" in text
    assert "c:" not in text and "d:" not in text and "e:" not in text  # c, d have a line
    assert figures.missing_boundaries({"c": [full, disc]}, 12.0) == []
    # wrapped to the figure's width
    many = {f"boundary number {i}": [full] for i in range(12)}
    narrow = figures.missing_boundaries(many, 4.0)
    assert len(narrow) > 1
    assert all(len(line) <= 4.0 / figures.NOTE_IN_PER_CHAR for line in narrow)


def test_fig4_names_the_boundary_it_cannot_draw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[str], list[str]]] = []
    save = figures._save

    def keep_text(fig, path) -> None:
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        seen.append((legend, [t.get_text() for t in fig.texts]))
        save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_text)
    rgb = np.full((64, 64, 3), 200, np.uint8)
    masks = {"intra": _disc(3), "intra_inter": np.ones((64, 64), bool), "ground_truth": _disc()}
    figures.fig4(tmp_path / "f.png", [(rgb, masks)] * 2, px_per_mm=20.0)
    figures.fig4(tmp_path / "g.png", [(rgb, {**masks, "intra_inter": _disc(5)})], px_per_mm=20.0)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (legend, notes), (_, no_notes) = seen
    assert legend == ["intra-instance", "intra+inter-instance", "ground truth"]
    assert "intra+inter-instance: all cancer" in " ".join(notes)
    assert "intra-instance:" not in " ".join(notes)
    assert no_notes == []
