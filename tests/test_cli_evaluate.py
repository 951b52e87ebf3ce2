"""``lsr evaluate``: scores against ground truth and the calibration table against grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lsr.cli import _register, app
from lsr.counttable import CountTable
from lsr.errors import LsrInputError

B = 8  # block px


@pytest.fixture(scope="module")
def runner():
    _register()
    return CliRunner()


def _patch(tmp_path, name, rng, rows=3, cols=4):
    prob = rng.random((rows * B, cols * B)).astype(np.float32)
    z = rng.integers(-1, 10, (rows, cols)).astype(np.int16)
    np.save(tmp_path / f"{name}_prob.npy", prob)
    np.save(tmp_path / f"{name}_grid.npy", z)
    return prob, z


@pytest.mark.parametrize("non_cancer_first", [False, True])
def test_calibration_matches_numpy_per_bin(tmp_path, runner, non_cancer_first):
    rng = np.random.default_rng(3)
    preds, grids = tmp_path / "pred", tmp_path / "grid"
    preds.mkdir()
    grids.mkdir()
    data = [_patch(tmp_path, f"p{i}", rng) for i in range(3)]
    for i in range(3):
        (tmp_path / f"p{i}_prob.npy").rename(preds / f"p{i}_prob.npy")
        (tmp_path / f"p{i}_grid.npy").rename(grids / f"p{i}_grid.npy")
    table = CountTable.paper_table1()
    saved = table  # a JSON table may list non-cancer first: still compared with cancer
    if non_cancer_first:
        saved = CountTable(table.eta[:, ::-1], table.rho[:, ::-1], table.edges,
                           table.class_names[::-1])  # fmt: skip
    saved.to_json(tmp_path / "table.json")
    res = runner.invoke(app, ["evaluate", "-p", str(preds), "--grid", str(grids), "--block-px",
                              str(B), "-t", str(tmp_path / "table.json"), "--json",
                              str(tmp_path / "out.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Calibration" in res.output
    calib = json.loads((tmp_path / "out.json").read_text())["calibration"]
    # independent computation: block means by reshape, grouped by z
    fr = [
        p.astype(np.float64).reshape(p.shape[0] // B, B, p.shape[1] // B, B).mean(axis=(1, 3))
        for p, _ in data
    ]
    for row in calib:
        vals = np.concatenate([f[z == row["z"]] for f, (_, z) in zip(fr, data, strict=True)])
        assert row["n"] == vals.size
        if vals.size:
            assert row["mean"] == pytest.approx(vals.mean())
            assert row["std"] == pytest.approx(vals.std())
        else:
            assert row["mean"] is None
        assert row["table_mean"] == pytest.approx(table.eta[row["z"], 0])
        assert row["table_std"] == pytest.approx(table.rho[row["z"], 0])
    # block-weighted distance from the table, from every block directly
    blocks = np.concatenate([f[z >= 0] for f, (_, z) in zip(fr, data, strict=True)])
    zs = np.concatenate([z[z >= 0] for _, (_, z) in zip(fr, data, strict=True)])
    want = np.abs(blocks - table.eta[zs, 0]).mean()
    check = json.loads((tmp_path / "out.json").read_text())["calibration_check"]
    assert check["error"] == pytest.approx(want) and check["blocks"] == zs.size
    text = " ".join(res.output.split())
    assert f"distance from the count table: {100 * want:.1f} points ({zs.size} blocks)" in text
    assert check["flagged"] == (want > 0.3 and zs.size >= 100)
    assert ("does not follow its count table" in res.output) == check["flagged"]


def test_calibration_with_a_mask_counts_cancer_pixels(tmp_path, runner):
    mask = np.zeros((B, 2 * B), np.uint8)
    mask[:, :B] = 255  # left block all cancer
    mask[: B // 2, B:] = 255  # right block: half
    np.save(tmp_path / "a_mask.npy", mask)
    np.save(tmp_path / "a_grid.npy", np.array([[9, 4]], np.int16))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_mask.npy"), "--grid",
                              str(tmp_path / "a_grid.npy"), "--block-px", str(B), "--json",
                              str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    calib = {r["z"]: r for r in json.loads((tmp_path / "o.json").read_text())["calibration"]}
    assert calib[9]["mean"] == 1.0 and calib[4]["mean"] == 0.5 and calib[0]["n"] == 0


def test_grid_of_the_wrong_size_names_the_grid(tmp_path, runner):
    np.save(tmp_path / "a_prob.npy", np.zeros((2 * B, 2 * B), np.float32))
    np.save(tmp_path / "a_grid.npy", np.zeros((3, 2), np.int16))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                              str(tmp_path / "a_grid.npy"), "--block-px", str(B)])  # fmt: skip
    assert isinstance(res.exception, LsrInputError)  # lsr.cli.main prints it, exit code 2
    assert "does not match" in str(res.exception) and "a_grid.npy" in str(res.exception)


def test_a_grid_holding_the_last_partial_block_is_taken_as_training_takes_it(tmp_path, runner):
    """A slide of 2.5 x 3.25 blocks: grids of 2 x 3 and of 3 x 4 blocks both fit it (as
    `BlockGrid.check_fits` and training allow); partial blocks are not scored."""
    rng = np.random.default_rng(5)
    prob = rng.random((int(2.5 * B), int(3.25 * B))).astype(np.float32)
    np.save(tmp_path / "a_prob.npy", prob)
    z = rng.integers(0, 10, (3, 4)).astype(np.int16)
    results = []
    for name, grid in (("whole", z[:2, :3]), ("partial", z), ("big", np.zeros((4, 4)))):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "a_grid.npy", grid.astype(np.int16))
        out = tmp_path / f"{name}.json"
        res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                                  str(tmp_path / name / "a_grid.npy"), "--block-px", str(B),
                                  "--json", str(out)])  # fmt: skip
        if name == "big":  # one block too many: refused, naming the grid and what fits
            assert isinstance(res.exception, LsrInputError)
            assert "big/a_grid.npy" in str(res.exception)
            assert "2 or 3 x 3 or 4 blocks" in str(res.exception)
            break
        assert res.exit_code == 0, res.output
        results.append(json.loads(out.read_text())["calibration"])
    assert results[0] == results[1]
    means = prob[: 2 * B, : 3 * B].reshape(2, B, 3, B).mean(axis=(1, 3))
    assert sum(r["n"] for r in results[1]) == 6
    for r in results[1]:
        if r["n"]:
            assert r["mean"] == pytest.approx(means[z[:2, :3] == r["z"]].mean())


def test_nothing_to_compare_with_is_an_error(tmp_path, runner):
    np.save(tmp_path / "a_prob.npy", np.zeros((B, B), np.float32))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy")])
    assert isinstance(res.exception, LsrInputError) and "--gt" in str(res.exception)


def test_grid_folder_with_images_and_ground_truth_pairs_the_grids(tmp_path, runner):
    folder = tmp_path / "test"
    folder.mkdir()
    np.save(folder / "a_grid.npy", np.array([[9]], np.int16))
    np.save(folder / "a_gt.npy", np.ones((B, B), np.uint8))
    np.save(tmp_path / "a_prob.npy", np.full((B, B), 0.25, np.float32))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                              str(folder), "--block-px", str(B), "--json",
                              str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    calib = {r["z"]: r for r in json.loads((tmp_path / "o.json").read_text())["calibration"]}
    assert calib[9]["n"] == 1 and calib[9]["mean"] == pytest.approx(0.25)


def test_lsr_predicts_uint8_probability_map_is_read_as_probabilities(tmp_path, runner):
    """``lsr predict`` stores probability.tif as uint8 round(255 p): scores and calibration
    must use p, not 'nonzero = cancer' (which called almost every pixel cancer)."""
    from lsr.metrics import masked_iou_dice
    from lsr.predict import _Quantised
    from lsr.slide import write_pyramidal_tiff

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[: 4 * B, : 4 * B]
    prob = np.clip(0.5 + 0.4 * np.sin(yy / 9.0) * np.cos(xx / 7.0)
                   + rng.normal(0, 0.05, yy.shape), 0, 1).astype(np.float32)  # fmt: skip
    gt = (np.sin(yy / 9.0) * np.cos(xx / 7.0) > 0.1).astype(np.uint8) * 255
    z = rng.integers(0, 10, (4, 4)).astype(np.int16)
    (tmp_path / "pred").mkdir()
    write_pyramidal_tiff(tmp_path / "pred" / "s_prob.tif", _Quantised(prob), mpp=1.0,
                         compression="zlib", min_size=4 * B)  # fmt: skip
    np.save(tmp_path / "s_gt.npy", gt)
    np.save(tmp_path / "s_grid.npy", z)
    CountTable.paper_table1().to_json(tmp_path / "t.json")
    args = ["evaluate", "-p", str(tmp_path / "pred"), "-g", str(tmp_path / "s_gt.npy"),
            "--band", str(B), "--grid", str(tmp_path / "s_grid.npy"), "--block-px", str(B),
            "-t", str(tmp_path / "t.json"), "--json", str(tmp_path / "o.json")]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "o.json").read_text())
    q = np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8) / 255.0  # what the file holds
    want = masked_iou_dice(q >= 0.5, gt > 0, B)
    assert (out["masked_iou"], out["masked_dice"]) == pytest.approx(want)
    blocks = q.reshape(4, B, 4, B).mean(axis=(1, 3))
    for row in out["calibration"]:
        if row["n"]:
            assert row["mean"] == pytest.approx(blocks[z == row["z"]].mean(), abs=1e-9)


@pytest.mark.parametrize("on", [1, 255])
def test_binary_uint8_prediction_is_a_mask(tmp_path, runner, on):
    from lsr.cli.evaluate import read_prediction

    m = np.zeros((B, B), np.uint8)
    m[: B // 2] = on
    np.save(tmp_path / "m.npy", m)
    fraction, is_probability = read_prediction(tmp_path / "m.npy")
    np.testing.assert_array_equal(fraction, (m > 0).astype(float))
    assert not is_probability


def _u8(values, shape=(B, B)):
    """A uint8 map holding ``values`` cyclically (every value occurs)."""
    return np.resize(np.asarray(values, np.uint8), shape[0] * shape[1]).reshape(shape)


@pytest.mark.parametrize(
    ("name", "a", "want"),
    [
        ("x_pred.npy", _u8([81, 82]), "probability"),  # collapsed network, p ~ 0.32
        ("x_pred.npy", _u8([0, 200]), "probability"),  # {0, v}: skipped tissue
        ("x_pred.npy", _u8([0, 1]), "mask"),
        ("x_pred.npy", _u8([0, 255]), "mask"),
        ("x_pred.npy", _u8([255]), "mask"),
        ("x_pred.npy", _u8([0, 3, 250]), "probability"),
        ("x_pred.npy", _u8([0, 1]).astype(np.uint16) * 65535, "mask"),
        ("x_pred.npy", _u8([0, 1]).astype(np.uint16) * 255, "mask"),
        ("x_pred.npy", _u8([0, 1, 2, 3]).astype(np.int32), "mask"),  # label image
        ("x_pred.npy", _u8([0, 1]).astype(bool), "mask"),
        ("x_pred.npy", _u8([0, 1]).astype(np.float32), "probability"),
        ("probability.npy", _u8([0, 1]), "probability"),  # lsr predict's name decides
        ("mask.npy", _u8([0, 7]), "mask"),
    ],
)
def test_prediction_kind_rule(tmp_path, name, a, want):
    from lsr.cli.evaluate import prediction_kind, read_prediction

    np.save(tmp_path / name, a)
    assert prediction_kind(tmp_path / name, a) == want
    prob, is_probability = read_prediction(tmp_path / name)
    assert is_probability == (want == "probability")
    if want == "mask":
        np.testing.assert_array_equal(prob, (a > 0).astype(float))
    elif a.dtype == np.uint8:
        np.testing.assert_allclose(prob, a / 255.0)


def test_near_constant_probability_map_is_not_read_as_a_mask(tmp_path, runner):
    """A uint8 map of only {81, 82} (p ~ 0.32) predicts no cancer: IoU 0 against a ground
    truth with cancer (read as a mask it scored IoU > 0); --pred-kind mask overrides."""
    from lsr.metrics import pooled_scores

    pred = _u8([81, 82], (4 * B, 4 * B))
    gt = np.zeros((4 * B, 4 * B), np.uint8)
    gt[:, : 2 * B] = 255
    np.save(tmp_path / "s_pred.npy", pred)
    np.save(tmp_path / "s_gt.npy", gt)
    args = ["evaluate", "-p", str(tmp_path / "s_pred.npy"), "-g", str(tmp_path / "s_gt.npy"),
            "--band", str(B), "--json", str(tmp_path / "o.json")]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["iou"] == 0.0 and out["per_patch"][0]["pred_kind"] == "probability"
    assert "1 probability map(s)" in " ".join(res.output.split())
    res = runner.invoke(app, [*args, "--pred-kind", "mask"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "o.json").read_text())
    want = pooled_scores([pred > 0], [gt > 0], band=B)
    assert out["iou"] == pytest.approx(want["iou"]) == pytest.approx(0.5)
    assert out["per_patch"][0]["pred_kind"] == "mask"
    res = runner.invoke(app, [*args, "--pred-kind", "maybe"])
    assert isinstance(res.exception, LsrInputError) and "--pred-kind" in str(res.exception)


def test_forced_probability_of_a_label_image_is_an_error(tmp_path):
    from lsr.cli.evaluate import read_prediction

    np.save(tmp_path / "l.npy", _u8([0, 1, 2]).astype(np.int32))
    with pytest.raises(LsrInputError, match="--pred-kind mask") as err:
        read_prediction(tmp_path / "l.npy", "probability")
    assert "l.npy" in str(err.value)
    prob, is_probability = read_prediction(tmp_path / "l.npy")
    assert not is_probability and prob.max() == 1.0


def test_gt_folder_never_pairs_an_image_or_grid_as_ground_truth(tmp_path, runner):
    """A --gt folder like lsr synth's test/: patch_001's _gt is missing, its H&E image and
    grid are there; neither may be scored as its ground truth."""
    gt, pred = tmp_path / "test", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    np.save(gt / "patch_000_gt.npy", np.ones((B, B), np.uint8))
    np.save(gt / "patch_001.npy", np.full((B, B, 3), 200, np.uint8))  # the H&E image
    np.save(gt / "patch_001_grid.npy", np.array([[3]], np.int16))
    for name in ("patch_000_pred.npy", "patch_001_pred.npy"):
        np.save(pred / name, np.ones((B, B), np.float32))
    res = runner.invoke(app, ["evaluate", "-p", str(pred), "--gt", str(gt), "--band", str(B)])
    assert isinstance(res.exception, LsrInputError), res.output
    msg = str(res.exception)
    assert "no ground-truth file for patch 'patch_001'" in msg and "patch_001_gt" in msg
    assert "patch_001_pred.npy" in msg
    # with its ground truth it is scored against it
    np.save(gt / "patch_001_mask.npy", np.zeros((B, B), np.uint8))
    res = runner.invoke(app, ["evaluate", "-p", str(pred), "--gt", str(gt), "--band", str(B),
                              "--json", str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "o.json").read_text())["per_patch"]
    assert [r["gt"] for r in rows] == [str(gt / "patch_000_gt.npy"), str(gt / "patch_001_mask.npy")]
    # two candidates for one patch: an error naming both
    np.save(gt / "patch_001_gt.npy", np.zeros((B, B), np.uint8))
    res = runner.invoke(app, ["evaluate", "-p", str(pred), "--gt", str(gt)])
    msg = str(res.exception)
    assert isinstance(res.exception, LsrInputError) and "patch_001_gt.npy" in msg
    assert "patch_001_mask.npy" in msg and "2 ground-truth files" in msg


def test_gt_folder_without_ground_truth_names_and_grid_as_gt_are_errors(tmp_path, runner):
    """A folder of same-name masks (gt/a.npy for a_pred.npy) is ground truth; a folder of
    RGB pictures only is not; a grid given as --gt is not."""
    gt = tmp_path / "gt"
    gt.mkdir()
    np.save(gt / "a.npy", np.full((B, B, 3), 200, np.uint8))  # an H&E picture, no mask
    np.save(tmp_path / "a_pred.npy", np.ones((B, B), np.float32))
    np.save(tmp_path / "a_grid.npy", np.array([[3]], np.int16))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--gt", str(gt)])
    assert isinstance(res.exception, LsrInputError) and "_gt.*" in str(res.exception)
    assert str(gt) in str(res.exception)
    np.save(gt / "a.npy", np.ones((B, B), np.uint8))  # now a one-channel mask of that name
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--gt", str(gt),
                              "--band", str(B), "--json", str(tmp_path / "s.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "s.json").read_text())["per_patch"]
    assert [r["gt"] for r in rows] == [str(gt / "a.npy")]
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--gt",
                              str(tmp_path / "a_grid.npy")])  # fmt: skip
    assert isinstance(res.exception, LsrInputError) and "--grid" in str(res.exception)
    # a file given by itself is ground truth whatever its name
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--gt",
                              str(gt / "a.npy")])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_lsr_predict_output_folder_pairs_by_slide_folder(tmp_path, runner):
    """lsr predict writes OUT/<slide>/probability.tif and mask.tif: --pred OUT scores each
    slide's probability.tif against <slide>_gt (mask.tif only where there is no
    probability.tif), and a single probability.tif pairs by its folder name."""
    from lsr.metrics import pooled_scores
    from lsr.predict import _Quantised
    from lsr.slide import write_pyramidal_tiff

    rng = np.random.default_rng(7)
    out, gt = tmp_path / "preds", tmp_path / "test"
    gt.mkdir()
    want_pred, want_gt = [], []
    for i, name in enumerate(("patch_000", "patch_001", "patch_002")):
        (out / name).mkdir(parents=True)
        prob = rng.random((2 * B, 2 * B)).astype(np.float32)
        g = (rng.random((2 * B, 2 * B)) > 0.5).astype(np.uint8)
        np.save(gt / f"{name}_gt.npy", g)
        (out / name / "summary.json").write_text("{}")
        # a mask.tif that disagrees with the probability, to see which one is read
        wrong = np.zeros_like(prob, dtype=bool) if i < 2 else prob >= 0.5
        write_pyramidal_tiff(out / name / "mask.tif", wrong, mpp=1.0, min_size=4 * B)
        if i < 2:
            write_pyramidal_tiff(out / name / "probability.tif", _Quantised(prob), mpp=1.0,
                                 min_size=4 * B)  # fmt: skip
        q = np.clip(np.rint(prob * 255), 0, 255) / 255.0 if i < 2 else prob
        want_pred.append(q >= 0.5)
        want_gt.append(g > 0)
    (out / "cohort.json").write_text("{}")
    res = runner.invoke(app, ["evaluate", "-p", str(out), "--gt", str(gt), "--band", str(B),
                              "--json", str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "o.json").read_text())
    assert [r["pred"] for r in got["per_patch"]] == [
        str(out / "patch_000" / "probability.tif"), str(out / "patch_001" / "probability.tif"),
        str(out / "patch_002" / "mask.tif"),
    ]  # fmt: skip
    assert [r["pred_kind"] for r in got["per_patch"]] == ["probability", "probability", "mask"]
    want = pooled_scores(want_pred, want_gt, band=B)
    assert got["iou"] == pytest.approx(want["iou"]) and got["dice"] == pytest.approx(want["dice"])
    for args in ([str(out / "patch_001" / "probability.tif")], [str(out / "patch_001")]):
        res = runner.invoke(app, ["evaluate", "-p", *args, "--gt", str(gt / "patch_001_gt.npy"),
                                  "--json", str(tmp_path / "one.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
        one = json.loads((tmp_path / "one.json").read_text())
        assert one["per_patch"][0]["pred"].endswith("probability.tif")
        assert one["iou"] == pytest.approx(pooled_scores(want_pred[1:2], want_gt[1:2])["iou"])


@pytest.mark.parametrize(("scale", "shift", "want"), [(5, 0, "0..5"), (1, -0.5, "-0.5..0.5")])
def test_float_prediction_outside_0_1_names_file_and_range(tmp_path, runner, scale, shift, want):
    p = np.linspace(0, 1, B * B, dtype=np.float32).reshape(B, B) * scale + shift
    np.save(tmp_path / "a_pred.npy", p)
    np.save(tmp_path / "a_gt.npy", np.ones((B, B), np.uint8))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "-g",
                              str(tmp_path / "a_gt.npy")])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    msg = str(res.exception)
    assert str(tmp_path / "a_pred.npy") in msg and f"found {want}" in msg


def test_probability_grid_is_binned_with_the_tables_own_edges(tmp_path, runner):
    """A 3-bin table (edges 0, .5, .8, 1) with a probability grid: blocks are binned with the
    table's edges (the paper's ten gave bins up to 9 that the table does not have)."""
    rng = np.random.default_rng(11)
    edges = [0.0, 0.5, 0.8, 1.0]
    table = CountTable(eta=[[0.1, 0.9], [0.4, 0.6], [0.8, 0.2]], rho=[[0.05, 0.05]] * 3,
                       edges=edges)  # fmt: skip
    table.to_json(tmp_path / "t3.json")
    probs = np.array([[0.1, 0.55, 0.79], [0.8, 0.95, np.nan]], np.float32)
    np.save(tmp_path / "a_grid.npy", probs)
    pred = rng.random((2 * B, 3 * B)).astype(np.float32)
    np.save(tmp_path / "a_pred.npy", pred)
    args = ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--grid", str(tmp_path / "a_grid.npy"),
            "--block-px", str(B), "-t", str(tmp_path / "t3.json"), "--json",
            str(tmp_path / "o.json")]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    calib = json.loads((tmp_path / "o.json").read_text())["calibration"]
    assert [r["z"] for r in calib] == [0, 1, 2]
    blocks = pred.reshape(2, B, 3, B).mean(axis=(1, 3))
    want_z = np.array([[0, 1, 1], [2, 2, -1]])  # by hand from the edges
    for row in calib:
        vals = blocks[want_z == row["z"]]
        assert row["n"] == vals.size and row["mean"] == pytest.approx(vals.mean())
        assert row["table_mean"] == pytest.approx(table.eta[row["z"], 0])
    # ready bins beyond the table's last one: an error naming the grid
    np.save(tmp_path / "a_grid.npy", np.array([[0, 1, 7], [2, 2, -1]], np.int16))
    res = runner.invoke(app, args)
    assert isinstance(res.exception, LsrInputError) and "a_grid.npy" in str(res.exception)
    assert "up to 7 but the count table has 3 bins" in str(res.exception)


def test_band_and_block_come_from_the_synth_manifest_unless_given(tmp_path, runner):
    """lsr synth's default data has 120-px blocks, written to OUT/manifest.json: evaluate
    --gt OUT/test uses its band_px and block_px when --band/--block-px are not given."""
    from lsr.metrics import pooled_scores

    out = tmp_path / "synth"
    test = out / "test"
    test.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(
        {"format": "napari-lsr synthetic benchmark", "block_px": 2 * B, "band_px": 3}
    ))  # fmt: skip
    yy, xx = np.mgrid[: 4 * B, : 4 * B]
    gt = ((yy - 2 * B) ** 2 + (xx - 2 * B) ** 2 < (1.5 * B) ** 2).astype(np.uint8)
    pred = (np.abs(yy - 2 * B) + np.abs(xx - 2 * B) < 2 * B).astype(np.float32)
    np.save(test / "p_gt.npy", gt)
    np.save(test / "p_grid.npy", np.array([[1, 2], [3, 4]], np.int16))
    np.save(tmp_path / "p_pred.npy", pred)
    base = ["evaluate", "-p", str(tmp_path / "p_pred.npy"), "--gt", str(test), "--grid",
            str(test), "--json", str(tmp_path / "o.json")]  # fmt: skip
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    text = "".join(res.output.split())  # rich wraps long paths
    assert f"--band3(from{out / 'manifest.json'}" in text
    assert f"--block-px{2 * B}(from" in text
    got = json.loads((tmp_path / "o.json").read_text())
    want = pooled_scores([pred >= 0.5], [gt > 0], band=3)
    assert got["band"] == 3 and got["masked_iou"] == pytest.approx(want["masked_iou"])
    assert got["block_px"] == 2 * B and sum(r["n"] for r in got["calibration"]) == 4
    # a given value wins, with a note where it differs from the manifest
    res = runner.invoke(app, [*base, "--band", "5"])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "o.json").read_text())
    assert got["band"] == 5 and got["block_px"] == 2 * B
    assert "--band5:thedata's" in "".join(res.output.split()) and "says 3" in res.output


def test_single_channel_check_reads_only_headers_of_npy_tif_png(tmp_path):
    import tifffile
    from skimage import io

    from lsr.arrays import is_single_channel as _is_single_channel

    grey, rgb = np.zeros((8, 9), np.uint8), np.zeros((8, 9, 3), np.uint8)
    for name, arr, want in (("g", grey, True), ("c", rgb, False)):
        np.save(tmp_path / f"{name}.npy", arr)
        tifffile.imwrite(tmp_path / f"{name}.tif", arr)
        io.imsave(tmp_path / f"{name}.png", arr, check_contrast=False)
        for suffix in (".npy", ".tif", ".png"):
            assert _is_single_channel(tmp_path / f"{name}{suffix}") is want, (name, suffix)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert _is_single_channel(tmp_path / "broken.png") is False


def test_json_output_replaces_an_older_result_but_never_a_user_file(tmp_path, runner):
    np.save(tmp_path / "a_pred.npy", np.ones((B, B), np.float32))
    np.save(tmp_path / "a_gt.npy", np.ones((B, B), np.uint8))
    sidecar = tmp_path / "a_grid.json"
    sidecar.write_text('{"block_px": 16, "working_mpp": 4.17, "origin": [0, 0]}')
    base = ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--gt", str(tmp_path / "a_gt.npy"),
            "--band", str(B), "--json"]  # fmt: skip
    for _ in range(2):  # the second run replaces the first one's result
        res = runner.invoke(app, [*base, str(tmp_path / "s.json")])
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["per_patch"]
    for target, why in ((sidecar, "is not an lsr evaluate result; refusing"),
                        (tmp_path, "is a folder")):  # fmt: skip
        res = runner.invoke(app, [*base, str(target)])
        assert isinstance(res.exception, LsrInputError) and why in str(res.exception)
        assert str(target) in str(res.exception)
    assert json.loads(sidecar.read_text())["block_px"] == 16


def test_a_colour_image_is_not_read_as_a_prediction_but_grey_rgb_is(tmp_path, runner):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a_gt.npy", np.ones((B, B), np.uint8))
    he = rng.integers(0, 255, (B, B, 3), dtype=np.uint8)  # an H&E-like picture
    np.save(tmp_path / "a_pred.npy", he)
    base = ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "--gt", str(tmp_path / "a_gt.npy"),
            "--band", str(B)]  # fmt: skip
    res = runner.invoke(app, base)
    assert isinstance(res.exception, LsrInputError), res.output
    assert "a colour (RGB) image" in str(res.exception)
    assert str(tmp_path / "a_pred.npy") in str(res.exception)
    grey = np.repeat(np.full((B, B, 1), 255, np.uint8), 4, axis=-1)  # grey saved as RGBA
    np.save(tmp_path / "a_pred.npy", grey)
    res = runner.invoke(app, [*base, "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["iou"] == pytest.approx(1.0)


def test_block_px_comes_from_the_grids_sidecar_unless_given(tmp_path, runner):
    """A grid the Annotator painted at 8-px blocks carries them in ``<grid>.json``: evaluate
    reads it there, not at the paper's 240 (which would not fit the prediction)."""
    from lsr.grid import write_grid_sidecar

    prob = np.zeros((2 * B, 2 * B), np.float32)
    prob[:B] = 1.0  # top row of blocks all cancer
    np.save(tmp_path / "a_prob.npy", prob)
    np.save(tmp_path / "a_grid.npy", np.array([[9, 9], [0, 0]], np.int16))
    write_grid_sidecar(tmp_path / "a_grid.npy", B, 4.17)
    args = ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
            str(tmp_path / "a_grid.npy"), "--json", str(tmp_path / "o.json")]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"--block-px {B} (from" in " ".join(res.output.split())
    got = json.loads((tmp_path / "o.json").read_text())
    calib = {r["z"]: r for r in got["calibration"]}
    assert got["block_px"] == B and calib[9]["mean"] == 1.0 and calib[0]["mean"] == 0.0
    assert runner.invoke(app, [*args, "--block-px", str(B)]).exit_code == 0  # agrees
    res = runner.invoke(app, [*args, "--block-px", str(2 * B)])  # contradicts: refused
    assert isinstance(res.exception, LsrInputError)
    text = str(res.exception)
    assert text.startswith(str(tmp_path / "a_grid.json")) and f"--block-px says {2 * B}" in text


def test_help_shows_where_band_and_block_size_come_from(runner):
    """The defaults were written as '[default: ...]' in the help text, which rich took for
    markup and dropped: --help said nothing of the manifest or the sidecars."""
    res = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert "240, or band_px of the lsr synth manifest.json" in text
    assert "the grids' sidecars' (<grid>.json), else the lsr synth manifest.json's" in text


@pytest.mark.parametrize(
    ("pred_shape", "gt_shape", "bad", "dims"),
    [
        ((0, 600), (B, B), "a_pred.npy", "0 × 600"),  # min() of nothing: a traceback
        ((0, 0), (0, 0), "a_pred.npy", "0 × 0"),  # scored a perfect IoU 1.0
        ((B, B), (B, 0), "a_gt.npy", f"{B} × 0"),
    ],
)
def test_an_empty_prediction_or_ground_truth_is_refused_naming_it(
    tmp_path, runner, pred_shape, gt_shape, bad, dims
):
    np.save(tmp_path / "a_pred.npy", np.zeros(pred_shape, np.uint8 if 0 in gt_shape else "f4"))
    np.save(tmp_path / "a_gt.npy", np.zeros(gt_shape, np.uint8))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "-g",
                              str(tmp_path / "a_gt.npy"), "--band", str(B)])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    assert str(res.exception).startswith(f"{tmp_path / bad}: empty image ({dims} pixels)")


def test_an_empty_grid_is_refused_naming_it(tmp_path, runner):
    """A prediction smaller than one block has (0, 0) blocks, which an empty grid matched:
    the calibration was an empty table, exit 0."""
    np.save(tmp_path / "a_prob.npy", np.zeros((B // 2, B // 2), np.float32))
    np.save(tmp_path / "a_grid.npy", np.zeros((0, 0), np.int16))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                              str(tmp_path / "a_grid.npy"), "--block-px", str(B)])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    want = f"{tmp_path / 'a_grid.npy'}: no blocks in the file (an empty 0 × 0 grid)"
    assert str(res.exception) == want


@pytest.mark.parametrize(("flag", "what"), [("-p", "prediction"), ("-g", "ground-truth mask")])
def test_a_truncated_tiff_says_so_without_tifffiles_log(tmp_path, runner, caplog, flag, what):
    """lsr synth's patch_000_gt.tif cut short gave two raw tifffile log lines and 'cannot
    read mask: libdeflate... BAD_DATA'; slide.py's check says the file is truncated."""
    from lsr.slide import write_pyramidal_tiff

    rng = np.random.default_rng(1)
    mask = (rng.random((16 * B, 16 * B)) > 0.5).astype(np.uint8) * 255
    write_pyramidal_tiff(tmp_path / "a_gt.tif", mask, mpp=1.0, compression="zlib")
    data = (tmp_path / "a_gt.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    files = {"-p": str(tmp_path / "a_gt.tif"), "-g": str(tmp_path / "a_gt.tif")}
    files[flag] = str(tmp_path / "cut.tif")
    res = runner.invoke(app, ["evaluate", "-p", files["-p"], "-g", files["-g"], "--pair-by",
                              "order", "--band", str(B)])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    msg = str(res.exception)
    assert msg.startswith(f"{tmp_path / 'cut.tif'}: file is truncated: image data ends at byte")
    assert f"the file has {len(data) * 2 // 3} bytes" in msg
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    assert "TiffFileError" not in res.output
    # a file that is not truncated but cannot be read names what was being read
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    files[flag] = str(tmp_path / "bad.png")
    res = runner.invoke(app, ["evaluate", "-p", files["-p"], "-g", files["-g"], "--pair-by",
                              "order"])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    assert str(res.exception).startswith(f"{tmp_path / 'bad.png'}: cannot read {what}: ")
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "bad.png"), "-g", files["-g"],
                              "--pair-by", "order", "--pred-kind", "probability"])  # fmt: skip
    assert "cannot read probability map: " in str(res.exception)


def test_grids_without_a_labelled_block_are_refused_naming_them(tmp_path, runner):
    """An all-NaN grid showed '0 │ –' in every bin, dropped the distance line, exit 0."""
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}_prob.npy", np.full((B, 2 * B), 0.5, np.float32))
        np.save(tmp_path / f"{name}_grid.npy", np.full((1, 2), np.nan, np.float32))
    CountTable.paper_table1().to_json(tmp_path / "t.json")
    args = ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid", str(tmp_path / "a_grid.npy"),
            "--block-px", str(B), "-t", str(tmp_path / "t.json")]  # fmt: skip
    res = runner.invoke(app, args)
    assert isinstance(res.exception, LsrInputError), res.output
    msg = str(res.exception)
    assert msg.startswith(f"{tmp_path / 'a_grid.npy'}: no labelled blocks: every block of the")
    both = ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "-p", str(tmp_path / "b_prob.npy"),
            "--grid", str(tmp_path / "a_grid.npy"), "--grid", str(tmp_path / "b_grid.npy"),
            "--block-px", str(B)]  # fmt: skip
    res = runner.invoke(app, both)
    assert isinstance(res.exception, LsrInputError), res.output
    assert "every block of the 2 grids (a_grid.npy, b_grid.npy) is unlabelled" in str(res.exception)
    np.save(tmp_path / "b_grid.npy", np.array([[np.nan, 0.9]], np.float32))  # one label: fine
    res = runner.invoke(app, [*both, "--json", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    calib = json.loads((tmp_path / "o.json").read_text())["calibration"]
    assert sum(r["n"] for r in calib) == 1


def test_table_and_block_px_without_grid_are_flag_errors(tmp_path, runner):
    """--table without --grid was silently ignored, --block-px -3 accepted."""
    np.save(tmp_path / "a_pred.npy", np.ones((B, B), np.float32))
    np.save(tmp_path / "a_gt.npy", np.ones((B, B), np.uint8))
    CountTable.paper_table1().to_json(tmp_path / "t.json")
    base = ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "-g", str(tmp_path / "a_gt.npy"),
            "--band", str(B)]  # fmt: skip
    res = runner.invoke(app, [*base, "-t", str(tmp_path / "t.json")])
    assert isinstance(res.exception, LsrInputError), res.output
    assert str(res.exception).startswith("--table needs --grid")
    res = runner.invoke(app, [*base, "--block-px", "-3"])
    assert isinstance(res.exception, LsrInputError), res.output
    assert str(res.exception) == "--block-px must be a positive whole number of px, got -3"
    res = runner.invoke(app, [*base, "--block-px", str(B)])
    assert res.exit_code == 0, res.output
    assert f"--block-px {B} is used only with --grid: ignored" in " ".join(res.output.split())


def test_block_px_zero_blames_the_flag_not_the_grid(tmp_path, runner):
    np.save(tmp_path / "a_prob.npy", np.zeros((B, B), np.float32))
    np.save(tmp_path / "a_grid.npy", np.array([[3]], np.int16))  # no sidecar
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                              str(tmp_path / "a_grid.npy"), "--block-px", "0"])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    assert str(res.exception) == "--block-px must be a positive whole number of px, got 0"


def test_a_slide_whose_lsr_predict_failed_is_named_not_silently_missing(tmp_path, runner):
    """lsr predict leaves a failed slide's folder with summary.json ("failed") and error.txt
    only: evaluate names it (beside the scores, or in the error when nothing is left)."""
    from lsr.predict import SUMMARY_FORMAT
    from lsr.slide import write_pyramidal_tiff

    out, gt = tmp_path / "preds", tmp_path / "test"
    gt.mkdir()
    rng = np.random.default_rng(3)
    for name, status in (("patch_000", "failed"), ("patch_001", "complete")):
        (out / name).mkdir(parents=True)
        np.save(gt / f"{name}_gt.npy", (rng.random((2 * B, 2 * B)) > 0.5).astype(np.uint8))
        summary = {"format": SUMMARY_FORMAT, "status": status}
        (out / name / "summary.json").write_text(json.dumps(summary))
    prob = rng.random((2 * B, 2 * B)).astype(np.float32)
    write_pyramidal_tiff(out / "patch_001" / "probability.tif", prob, mpp=1.0, min_size=4 * B)
    (out / "patch_000" / "error.txt").write_text("Traceback ...")
    res = runner.invoke(app, ["evaluate", "-p", str(out / "patch_000"), "--gt", str(gt)])
    assert res.exit_code != 0
    assert "patch_000: its lsr predict failed (see" in str(res.exception)
    res = runner.invoke(app, ["evaluate", "-p", str(out), "--gt", str(gt / "patch_001_gt.npy")])
    assert res.exit_code == 0, res.output
    assert "patch_000: its lsr predict failed" in res.output.replace("\n", "")
    # a killed run: "running", its probability.tif written, its mask not: never scored
    (out / "patch_000" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    write_pyramidal_tiff(out / "patch_000" / "probability.tif", prob, mpp=1.0, min_size=4 * B)
    res = runner.invoke(app, ["evaluate", "-p", str(out), "--gt", str(gt), "--json",
                              str(tmp_path / "o.json")])  # fmt: skip
    assert "patch_000: its lsr predict is running" in res.output.replace("\n", "")
    assert res.exit_code != 0 or "patch_000" not in (tmp_path / "o.json").read_text()
    # named by itself, the killed run's file is not scored either
    one = out / "patch_000" / "probability.tif"
    res = runner.invoke(app, ["evaluate", "-p", str(one), "--gt", str(gt / "patch_000_gt.npy")])
    assert res.exit_code != 0 and "patch_000: its lsr predict is running" in str(res.exception)


def test_band_without_gt_is_named_as_ignored_and_a_negative_band_is_the_flags_error(
    tmp_path, runner
):
    _patch(tmp_path, "a", np.random.default_rng(0))
    base = ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid", str(tmp_path / "a_grid.npy"),
            "--block-px", str(B)]  # fmt: skip
    res = runner.invoke(app, [*base, "--band", "16"])
    assert res.exit_code == 0, res.output
    assert "--band 16 is used only with --gt: ignored" in " ".join(res.output.split())
    res = runner.invoke(app, [*base, "--band", "-1"])
    assert str(res.exception) == "--band must be a non-negative number of px, got -1"


def test_the_grids_origin_from_its_sidecar_places_the_blocks(tmp_path, runner):
    """A grid whose sidecar puts block (0, 0) at (y, x) = (3, 5) px is scored there, as
    training and the Compare widget place it; read at (0, 0) its blocks fell on other tissue
    without a word (a map of the same number of blocks fits either way)."""
    from lsr.grid import write_grid_sidecar

    rng = np.random.default_rng(7)
    oy, ox = 3, 5
    prob = rng.random((2 * B + oy, 3 * B + ox)).astype(np.float32)
    z = np.array([[9, 0, 4], [2, -1, 7]], np.int16)
    np.save(tmp_path / "a_prob.npy", prob)
    np.save(tmp_path / "a_grid.npy", z)
    write_grid_sidecar(tmp_path / "a_grid.npy", B, 4.17, origin=(oy, ox))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                              str(tmp_path / "a_grid.npy"), "--json",
                              str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    calib = {r["z"]: r for r in json.loads((tmp_path / "o.json").read_text())["calibration"]}
    blocks = prob[oy:, ox:].astype(np.float64).reshape(2, B, 3, B).mean(axis=(1, 3))
    for zb in (9, 0, 4, 2, 7):
        assert calib[zb]["n"] == 1
        assert calib[zb]["mean"] == pytest.approx(blocks[z == zb][0])
    # a grid that does not fit the map from its origin names the origin
    write_grid_sidecar(tmp_path / "a_grid.npy", B, 4.17, origin=(oy + B, ox))
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                              str(tmp_path / "a_grid.npy")])  # fmt: skip
    assert isinstance(res.exception, LsrInputError)
    assert f"origin (y, x) = ({oy + B}, {ox}) px" in str(res.exception)


def test_a_grid_folder_supplies_its_csv_grids_as_it_does_npy(tmp_path, runner):
    """``--grid FOLDER`` saw only .tif/.png/.npy: a folder of ``patch_000_grid.csv`` (which
    ``--grid FILE`` reads) said 'no grid file for patch ...'."""
    from lsr.grid import BlockGrid, save_grid

    rng = np.random.default_rng(7)
    _, z = _patch(tmp_path, "a", rng)
    results = {}
    for suffix in (".npy", ".csv"):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        save_grid(BlockGrid.from_z(z, B), folder / f"a_grid{suffix}")
        res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_prob.npy"), "--grid",
                                  str(folder), "--block-px", str(B), "--json",
                                  str(tmp_path / f"{suffix[1:]}.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
        results[suffix] = json.loads((tmp_path / f"{suffix[1:]}.json").read_text())
    assert results[".csv"]["calibration"] == results[".npy"]["calibration"]
    assert sum(r["n"] for r in results[".csv"]["calibration"]) == int((z >= 0).sum())


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        ('{"format": "napari-lsr synthetic benchmark", "block_px": 1', "cannot read it"),
        ('{"format": "napari-lsr synthetic benchmark", "band_px": "3"}', "band_px '3'"),
    ],
)
def test_an_unusable_synth_manifest_is_named_not_silently_replaced_by_defaults(
    tmp_path, runner, manifest, why
):
    """A truncated manifest.json was passed over without a word: the band silently became
    240 px instead of the manifest's."""
    from lsr.cli.evaluate import DEFAULT_BAND_PX

    test = tmp_path / "synth" / "test"
    test.mkdir(parents=True)
    (test.parent / "manifest.json").write_text(manifest)
    preds = tmp_path / "preds"
    preds.mkdir()
    for name in ("p", "q", "r"):  # three patches: still one line about the manifest
        np.save(test / f"{name}_gt.npy", np.ones((B, B), np.uint8))
        np.save(preds / f"{name}.npy", np.ones((B, B), np.float32))
    gts = [arg for name in ("p", "q", "r") for arg in ("--gt", str(test / f"{name}_gt.npy"))]
    res = runner.invoke(app, ["evaluate", "-p", str(preds), *gts,
                              "--json", str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count(why) == 1
    assert str(test.parent / "manifest.json") in "".join(res.output.split())
    assert why in text and f"using the default --band {DEFAULT_BAND_PX}" in text
    assert json.loads((tmp_path / "o.json").read_text())["band"] == DEFAULT_BAND_PX


def test_a_killed_saves_hidden_temporary_in_the_prediction_folder_is_not_a_patch(tmp_path, runner):
    """A save killed before its rename leaves preds/.p.tmp-….npy: the rerun failed on it
    ("no ground-truth file for patch ''")."""
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    preds.mkdir()
    gts.mkdir()
    np.save(preds / "p.npy", np.ones((B, B), np.float32))
    np.save(preds / ".p.tmp-1a2b3c.npy", np.ones((B, 1), np.float32))
    np.save(gts / "p_gt.npy", np.ones((B, B), np.uint8))
    res = runner.invoke(app, ["evaluate", "-p", str(preds), "--gt", str(gts), "--json",
                              str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "o.json").read_text())["per_patch"]
    assert [Path(r["pred"]).name for r in rows] == ["p.npy"]


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_a_ground_truth_of_another_size_is_refused_before_it_is_read(
    tmp_path, runner, monkeypatch, suffix
):
    """A ground truth at the slide's level 0 beside a prediction at the working resolution
    was read whole (2.4 GB for a 30000 x 40000 slide) before its size was compared: the
    header says the size, the pixels are never read."""
    import lsr.cli.evaluate as ev
    from lsr.slide import write_pyramidal_tiff

    np.save(tmp_path / "a_pred.npy", np.zeros((3 * B, 4 * B), "f4"))
    gt = np.zeros((30 * B, 40 * B), bool)
    if suffix == ".tif":
        write_pyramidal_tiff(tmp_path / "a_gt.tif", gt, mpp=1.0, min_size=64)
    else:
        np.save(tmp_path / "a_gt.npy", gt)

    def never(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(ev, "read_mask", never)
    res = runner.invoke(app, ["evaluate", "-p", str(tmp_path / "a_pred.npy"), "-g",
                              str(tmp_path / f"a_gt{suffix}"), "--band", str(B)])  # fmt: skip
    assert isinstance(res.exception, LsrInputError), res.output
    assert f"shape ({3 * B}, {4 * B}) differs from ground truth" in str(res.exception)
    assert f"({30 * B}, {40 * B})" in str(res.exception)
    assert ev.stored_shape(tmp_path / f"a_gt{suffix}") == gt.shape


def test_patch_names_with_dots_tags_and_capitals_pair_with_their_own_files(tmp_path, runner):
    """``S21.1234.A1`` is a name, not ``S21`` plus extensions (two such slides collided, or
    one found no ground truth); one tag is taken off (``Liver_mask_gt`` is patch
    ``Liver_mask``), in any case (``CASE_GT``); grids named ``X.grid.npy`` pair too."""
    from lsr.metrics import pooled_scores

    rng = np.random.default_rng(3)
    out, gt, grids = tmp_path / "out", tmp_path / "gt", tmp_path / "grids"
    for d in (gt, grids):
        d.mkdir()
    names = ["S21.1234.A1", "S21.1234.B2", "Liver_mask", "CASE"]
    gt_files = ["S21.1234.A1_gt.npy", "S21.1234.B2_gt.ome.tif", "Liver_mask_gt.npy", "CASE_GT.npy"]
    grid_files = ["S21.1234.A1_grid.npy", "S21.1234.B2.grid.npy", "Liver_mask-grid.npy",
                  "CASE_GRID.npy"]  # fmt: skip
    want_pred, want_gt = [], []
    for name, gname, grid_name in zip(names, gt_files, grid_files, strict=True):
        out.mkdir(exist_ok=True)
        prob = rng.random((2 * B, 2 * B)).astype(np.float32)
        g = (rng.random((2 * B, 2 * B)) > 0.5).astype(np.uint8)
        np.save(out / f"{name}_prob.npy", prob)
        if gname.endswith(".tif"):
            import tifffile

            tifffile.imwrite(gt / gname, g)
        else:
            np.save(gt / gname, g)
        np.save(grids / grid_name, rng.integers(0, 10, (2, 2)).astype(np.int16))
        want_pred.append(prob >= 0.5)
        want_gt.append(g > 0)
    preds = sorted(out.glob("*_prob.npy"))
    order = [names.index(p.name.removesuffix("_prob.npy")) for p in preds]
    res = runner.invoke(app, ["evaluate", "-p", str(out), "--gt", str(gt),
                              "--grid", str(grids), "--block-px", str(B), "--band", str(B),
                              "--json", str(tmp_path / "o.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "o.json").read_text())
    assert [Path(r["gt"]).name for r in got["per_patch"]] == [gt_files[i] for i in order]
    want = pooled_scores([want_pred[i] for i in order], [want_gt[i] for i in order], band=B)
    assert got["iou"] == pytest.approx(want["iou"])
    assert sum(row["n"] for row in got["calibration"]) == 4 * len(names)
