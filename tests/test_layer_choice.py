"""Which layers a widget takes for a slide: its own grid and ground truth, never another's."""

from __future__ import annotations

import pytest

pytest.importorskip("qtpy")
from napari_lsr.layer_choice import named_after


@pytest.mark.parametrize(
    ("slide", "want"),
    [
        ("Case 1", ["Case 1_grid p(cancer)", "Case 1_gt"]),
        ("Case 1 deeper", ["Case 1 deeper_grid p(cancer)", "Case 1 deeper_gt"]),
        ("A1", ["A1.grid z", "A1_mask"]),
        ("A1_recut", ["A1_recut-grid z [1]", "A1_recut_GT"]),
        ("S21.1234", [None, None]),
    ],
)
def test_a_slide_takes_only_layers_of_its_own(slide, want):
    """A prefix match gave ``Case 1`` the grid and ground truth of ``Case 1 deeper`` (and
    ``A1`` those of ``A1_recut``), whichever was listed first."""
    layers = [
        "Case 1 deeper_grid p(cancer)", "Case 1 deeper_gt", "Case 1_grid p(cancer)", "Case 1_gt",
        "A1_recut-grid z [1]", "A1_recut_GT", "A1.grid z", "A1_mask", "S21.1234.A1_gt",
        "S21.1234.A1_grid z", "coarse labels (paint z)",
    ]  # fmt: skip
    grids = [n for n in layers if "grid" in n.lower()]
    truths = [n for n in layers if n.lower().endswith(("_gt", "_mask"))]
    assert [named_after(grids, slide), named_after(truths, slide)] == want
    assert named_after(layers, "") is None
