"""The study probe's statistics (benchmarks/study_probe.py) against direct computations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


def _probe():
    spec = importlib.util.spec_from_file_location(
        "study_probe", ROOT / "benchmarks" / "study_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _probe()


def _auroc_pairs(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), over every pair."""
    pos, neg = score[positive], score[~positive]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40).filter(
        lambda xs: 0 < sum(b for _, b in xs) < len(xs)
    )
)
def test_auroc_equals_pairwise_count_with_ties(items):
    score = np.array([s for s, _ in items], dtype=float) / 5  # few values: many ties
    positive = np.array([b for _, b in items])
    assert probe.auroc(score, positive) == pytest.approx(_auroc_pairs(score, positive))


def test_auroc_extremes_and_one_class():
    y = np.array([False, False, True, True])
    assert probe.auroc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert probe.auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert probe.auroc(np.full(4, 0.3), y) == 0.5
    assert np.isnan(probe.auroc(np.array([0.1, 0.2]), np.array([True, True])))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.9, 1.0])
def test_table_threshold_calls_the_fraction(fraction):
    probs = np.random.default_rng(1).beta(0.5, 0.5, 20_000)
    t = probe.table_threshold(probs, fraction)
    assert (probs >= t).mean() == pytest.approx(fraction, abs=1e-3)


def test_table_threshold_rejects_a_percentage():
    with pytest.raises(ValueError, match="fraction"):
        probe.table_threshold(np.linspace(0, 1, 11), 37.0)


def test_pooled_iou_sums_counts_before_dividing():
    # patch 1: 10 ∩ of 20 ∪; patch 2: 0 of 80 → pooled 10/100, not the mean of 0.5 and 0
    counts = np.array([[10, 20, 15, 15], [0, 80, 40, 40]], dtype=float)
    assert probe.pooled_iou(counts) == pytest.approx(0.1)
    assert probe.pooled_iou(np.zeros((2, 4))) == 1.0  # nothing predicted, nothing true


def test_pooled_iou_agrees_with_lsr_metrics():
    from lsr.metrics import _counts, pooled_scores

    rng = np.random.default_rng(3)
    gts = [rng.random((40, 40)) < 0.4 for _ in range(3)]
    preds = [rng.random((40, 40)) < 0.5 for _ in range(3)]
    counts = np.array([_counts(p, g, None) for p, g in zip(preds, gts, strict=True)], float)
    assert probe.pooled_iou(counts) == pytest.approx(pooled_scores(preds, gts)["iou"])


def test_bootstrap_sd_zero_for_equal_rows_and_grows_with_patch_disagreement():
    rng = np.random.default_rng(0)
    a = rng.integers(10, 100, (10, 4)).astype(float)
    a[:, 1] = a[:, 0] + 50
    assert probe.bootstrap_sd(a, a.copy()) == 0.0
    b_close, b_far = a.copy(), a.copy()
    b_close[:, 0] += rng.normal(0, 2, 10)
    b_far[:, 0] += rng.normal(0, 20, 10)
    assert 0 < probe.bootstrap_sd(a, b_close) < probe.bootstrap_sd(a, b_far)


def _seed(auc_low, auc_intra, auc_ii, iou_intra, iou_ii, t=None):
    rows = {"low_res": {"auroc": auc_low, "iou05": 0.4},
            "intra": {"auroc": auc_intra, "iou05": iou_intra},
            "intra_inter": {"auroc": auc_ii, "iou05": iou_ii}}  # fmt: skip
    if t is not None:
        for name in ("intra", "intra_inter"):
            rows[name] |= {"iou_t": rows[name]["iou05"] + t, "t": 0.4, "fstar": 0.3,
                           "train_share05": 0.25}  # fmt: skip
    return rows


def _paired_text(d):
    d = np.asarray(d)
    return f"{d.mean():+.3f} ({d.std(ddof=1) / np.sqrt(len(d)):.3f}), {int((d > 0).sum())}/{len(d)}"


def test_report_pairs_seeds_and_leaves_out_the_threshold_table_when_not_run():
    per_seed = {0: _seed(0.70, 0.80, 0.83, 0.5, 0.6), 1: _seed(0.72, 0.78, 0.79, 0.6, 0.5)}
    for rows in per_seed.values():
        rows["boot_sd_ii_minus_intra"] = 0.02
    text = probe.report({"arm": per_seed})
    first = _paired_text([0.80 - 0.70, 0.78 - 0.72])
    second = _paired_text([0.83 - 0.80, 0.79 - 0.78])
    assert f"| arm | 0–1 | 0.710 / 0.790 / 0.810 | {first} | {second} | – |" in text
    assert "at t" not in text
    # SD over seeds of the masked-IoU difference (+0.1, −0.1), and the bootstrap RMS
    assert f"| arm | {np.std([0.1, -0.1], ddof=1):.3f} | 0.020 |" in text


def test_report_threshold_table_when_run():
    per_seed = {s: _seed(0.7, 0.8, 0.8, 0.5, 0.6, t=0.02 * (s + 1)) for s in range(3)}
    text = probe.report({"arm": per_seed})
    assert "| arm | intra | 0.500 | 0.540 | +0.040 (0.012), 3/3 |" in text
    assert "| arm | intra+inter − intra at t | | +0.100 (0.000), 3/3 |" in text


def test_report_names_an_arm_with_no_finished_seed():
    per_seed = {0: _seed(0.70, 0.80, 0.83, 0.5, 0.6), 1: _seed(0.72, 0.78, 0.79, 0.6, 0.5)}
    text = probe.report({"running": {}, "arm": per_seed})
    assert "| running | no finished seed |" in text
    assert "| arm | 0–1 |" in text  # the other arm is still reported


def test_low_res_scores_agree_with_its_mask_where_blocks_are_unlabelled():
    probs = np.array([[0.2, np.nan], [0.7, 0.5]], dtype=np.float32)
    patch = {"probs": probs, "gt": np.zeros((5, 7), dtype=np.uint8)}  # cropped: 2 x 2 blocks of 3
    (score,), (mask,) = probe.low_res_rows([patch], 3)
    assert score.shape == mask.shape == (5, 7) and np.isfinite(score).all()
    np.testing.assert_array_equal(score >= 0.5, mask)
    assert score[0, 4] == 0.0 and score[4, 1] == pytest.approx(0.7)
    truth = np.zeros((5, 7), dtype=bool)
    truth[3:, :3] = True  # the 0.7 block is the cancer
    assert probe.auroc(score, truth) == 1.0
