"""lsr.compare: cached predictions, boundaries, Table 2 rows, calibration and exports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import shape as shapely_shape

from lsr import compare
from lsr.errors import LsrInputError
from lsr.geojson import FIG4_COLOURS, import_geojson
from lsr.grid import load_grid
from lsr.metrics import (
    boundary_band,
    calibration_table,
    iou_dice,
    masked_iou_dice,
)

BLOCK, MPP = 120, 8.33


def tiny_model(data: Path, slide: str, loss: str, out: Path, seed: int = 0) -> Path:
    """A width-4, depth-2 U-Net trained for two steps (enough to be a real checkpoint)."""
    from lsr.train import DataPair, TrainConfig, train

    cfg = TrainConfig(
        data=[DataPair(str(data / f"{slide}.tif"), str(data / f"{slide}_grid.npy"))],
        block_px=BLOCK,
        working_mpp=MPP,
        loss=loss,
        width=4,
        depth=2,
        steps=2,
        batch_size=4,
        group_size=2,
        groups_per_batch=1,
        augment=False,
        device="cpu",
        seed=seed,
        out_dir=str(out),
        checkpoint_every=1000,
    )
    result = train(cfg)
    assert result.ok, result.failure
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 480x600 synthetic slide (4x5 blocks of 120 px at 8.33 µm/px) and two tiny models."""
    import warnings

    from lsr.synthetic import SyntheticConfig, write_slide

    d = tmp_path_factory.mktemp("cmp")
    write_slide(SyntheticConfig(), 1, d, "s", 480, 600)  # 11 cancer blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m1 = tiny_model(d, "s", "intra_inter", d / "models" / "a")
        m2 = tiny_model(d, "s", "intra_inter", d / "models" / "b", seed=1)
    return {"dir": d, "models": [m1, m2], "grid": load_grid(d / "s_grid.npy", block_px=BLOCK)}


@pytest.fixture(scope="module")
def comp(setup) -> compare.Comparison:
    d = setup["dir"]
    cache = compare.PredictionCache(d / "cache")
    return compare.run_comparison(
        d / "s.tif", setup["grid"], MPP, setup["models"], ground_truth=d / "s_gt.tif", cache=cache
    )


def test_a_slide_replaced_at_the_same_path_is_not_served_from_the_cache(setup, tmp_path):
    """The cache key held the slide's path, not which file was there: a rescan at the same
    path got the old slide's probability map back."""
    import os
    import shutil

    from lsr.slide import open_slide
    from lsr.synthetic import SyntheticConfig, write_slide

    d = setup["dir"]
    path = tmp_path / "s.tif"
    shutil.copy(d / "s.tif", path)
    cache = compare.PredictionCache(tmp_path / "cache")
    ref = compare.model_ref(setup["models"][0])
    first, hit = cache.predict(ref, open_slide(path), MPP)
    assert not hit and cache.predict(ref, open_slide(path), MPP)[1]
    stamp = os.stat(path)
    write_slide(SyntheticConfig(), 2, tmp_path / "new", "s", 480, 600)  # another case
    shutil.copy(tmp_path / "new" / "s.tif", path)
    if os.stat(path).st_mtime_ns == stamp.st_mtime_ns:  # (a coarse file-system clock)
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    second, hit = cache.predict(ref, open_slide(path), MPP)
    assert not hit and not np.array_equal(np.asarray(first), np.asarray(second))


def test_boundary_colours_follow_fig4_and_stay_distinct() -> None:
    models = [("r1", "intra"), ("r2", "intra_inter"), ("r3", "intra"), ("r4", "inter")]
    bs = compare.model_boundaries([*models, ("r5", "x"), ("r6", "intra_plus_inter")])
    assert [b.key for b in bs][:2] == ["intra", "intra_inter"]
    assert bs[0].colour == FIG4_COLOURS["intra"] and bs[1].colour == FIG4_COLOURS["intra_inter"]
    assert bs[3].colour == FIG4_COLOURS["inter"]
    assert bs[5].key == "intra_plus_inter" and bs[5].colour == (255, 255, 0)  # yellow
    assert bs[5].label == "intra + inter (sum) (r6)"
    colours = [b.colour for b in bs] + [FIG4_COLOURS["low_res"], FIG4_COLOURS["ground_truth"]]
    assert len(set(colours)) == len(colours)
    assert len({b.key for b in bs}) == len(bs)
    assert compare.paper_boundary("low_res").hex == "#00ff00"
    assert len({b.name for b in bs}) == len(bs)  # every model its own QuPath class
    # the same run name twice, and two names that are the same once made safe for QuPath
    same = compare.model_boundaries([("a:b", "intra"), ("a - b", "intra"), ("a:b", "intra")])
    assert [b.name for b in same] == [
        "Intra-instance (a - b)",
        "Intra-instance (a - b #2)",
        "Intra-instance (a - b #3)",
    ]


def test_comparison_masks_and_cache(setup, comp) -> None:
    d = setup["dir"]
    assert comp.shape == (480, 600)
    keys = [b.key for b in comp.boundaries]
    assert keys[0] == "low_res" and keys[-1] == "ground_truth"
    assert keys[1] == "intra_inter" and keys[2].startswith("model:")
    gt = tifffile.imread(d / "s_gt.tif") > 0
    np.testing.assert_array_equal(comp.gt, gt)
    probs = setup["grid"].probs
    up = np.repeat(np.repeat(probs >= 0.5, BLOCK, 0), BLOCK, 1)
    np.testing.assert_array_equal(comp.masks["low_res"], up)
    for key, p in comp.probs.items():
        np.testing.assert_array_equal(comp.masks[key], np.asarray(p) >= 0.5)
    assert not any(comp.cached.values())
    # second run: read from the cache, same maps; the cache entry is keyed by weights+slide
    again = compare.run_comparison(
        d / "s.tif", setup["grid"], MPP, setup["models"], cache=compare.PredictionCache(d / "cache")
    )
    assert all(again.cached.values())
    for key in comp.probs:
        np.testing.assert_array_equal(np.asarray(again.probs[key]), np.asarray(comp.probs[key]))
    assert len(list((d / "cache").glob("*.npy"))) == 2
    # the prediction equals one pass of the network over the slide
    from lsr import model as lsr_model
    from lsr.infer import predict_array
    from lsr.slide import open_slide

    net, _ = lsr_model.load(setup["models"][0])
    with open_slide(d / "s.tif") as s:
        rgb = s.read_working(0, 0, 480, 600, MPP)
    np.testing.assert_allclose(comp.probs["intra_inter"], predict_array(net, rgb), atol=1e-5)


def test_polygons_outline_the_masks(comp) -> None:
    from lsr.geojson import polygons_to_mask

    for key, poly in comp.polygons.items():
        back = polygons_to_mask(poly, comp.shape)
        # simplified by 1 px and small parts dropped: agrees except near the outline
        assert np.mean(back != comp.masks[key]) < 0.01
    rings = compare.polygon_rings(comp.polygons["ground_truth"])
    assert rings and all(np.allclose(r[0], r[-1]) for r in rings)


def test_scores_equal_lsr_metrics(comp) -> None:
    scores = compare.evaluate(comp)
    assert next(iter(scores)) == "low_res" and "ground_truth" not in scores
    for key, row in scores.items():
        iou, dice = masked_iou_dice(comp.masks[key], comp.gt, band=BLOCK)
        assert row["masked_iou"] == pytest.approx(iou) and row["masked_dice"] == pytest.approx(dice)
        u = iou_dice(comp.masks[key], comp.gt)
        assert (row["iou"], row["dice"]) == pytest.approx(u)
    # independent NumPy count for the low-resolution row
    band = boundary_band(comp.gt, BLOCK)
    p, g = comp.masks["low_res"] & band, comp.gt & band
    assert scores["low_res"]["masked_iou"] == pytest.approx((p & g).sum() / (p | g).sum())
    region = (100, 150, 400, 550)
    sub = compare.evaluate(comp, region)
    y0, x0, y1, x1 = region
    iou, dice = masked_iou_dice(comp.masks["low_res"][y0:y1, x0:x1], comp.gt[y0:y1, x0:x1], BLOCK)
    assert sub["low_res"]["masked_iou"] == pytest.approx(iou)


def test_calibration_matches_metrics(comp, setup) -> None:
    rows = compare.calibration(comp)
    z = setup["grid"].z
    want = calibration_table([np.asarray(comp.probs["intra_inter"])], [z], BLOCK)
    for row, w in zip(rows, want, strict=True):
        assert row["models"]["intra_inter"] == w
        assert set(row["table"]) == {"intra_inter", compare.model_boundaries(
            [("a", "intra_inter"), ("b", "intra_inter")])[1].key}  # fmt: skip
    gt = calibration_table([comp.gt.astype(np.float32)], [z], BLOCK)
    assert [r["ground_truth"] for r in rows] == gt
    # each model's distance from its own table: every labelled block against its bin's eta
    means = {r["z"]: r["models"]["intra_inter"]["mean"] for r in rows}
    eta = {r["z"]: r["table"]["intra_inter"][0] for r in rows}
    lab = z[z >= 0]
    want_err = np.mean([abs(means[b] - eta[b]) for b in lab])
    check = compare.calibration_checks(rows)["intra_inter"]
    assert check["error"] == pytest.approx(want_err) and check["blocks"] == lab.size
    assert check["flagged"] == (want_err > 0.3 and lab.size >= 100)
    # a region: only the whole blocks inside it
    sub = compare.calibration(comp, (130, 0, 480, 600))  # rows 2..3 of blocks
    want = calibration_table([np.asarray(comp.probs["intra_inter"])[240:480]], [z[2:4]], BLOCK)
    assert [r["models"]["intra_inter"] for r in sub] == want


def test_calibration_bins_with_the_tables_own_edges(comp, setup) -> None:
    """A table with its own edges: the grid is binned with them (as training did), one row
    per bin; a model whose table has other edges is not compared with it."""
    from lsr.counttable import CountTable

    edges = (0.0, 0.5, 0.8, 0.95, 1.0)
    rng = np.random.default_rng(0)
    z_est = np.repeat(np.arange(4), 5)
    own = CountTable.from_estimates(z_est, rng.uniform(0, 100, z_est.size), edges=edges)
    c = copy.copy(comp)
    first, second = list(comp.tables)[:2]
    c.tables = {**comp.tables, first: own.to_dict()}  # the second keeps paper Table 1
    rows = compare.calibration(c)
    assert [r["label"] for r in rows] == own.bin_labels() and len(rows) == 4
    probs = np.asarray(setup["grid"].probs, np.float64)
    z = np.where(np.isnan(probs), -1, sum((probs >= e).astype(int) for e in edges[1:-1]))
    want = calibration_table([np.asarray(comp.probs[first])], [z], BLOCK, n_bins=4)
    assert [r["models"][first] for r in rows] == want
    assert all(set(r["table"]) == {first} for r in rows)
    assert [r["table"][first][0] for r in rows] == pytest.approx(own.eta[:, 0].tolist())
    checks = compare.calibration_checks(rows)
    assert checks[second] is None and checks[first]["blocks"] == int((z >= 0).sum())


def test_calibration_of_a_region_without_a_whole_block_on_one_axis_is_empty(comp) -> None:
    """A wide view less than a block tall (or a tall narrow one) has no whole block: an empty
    table, as for a region smaller than a block both ways, not an error that also lost the
    scores computed beside it."""
    for region in ((12, 0, 25, 600), (0, 12, 480, 25), (12, 12, 25, 25)):
        rows = compare.calibration(comp, region)
        assert len(rows) == 10
        assert all(r["models"][k]["n"] == 0 for r in rows for k in comp.probs)


def test_calibration_compares_with_the_tables_cancer_column(comp) -> None:
    """A table listing non-cancer first (JSON may): the predicted cancer fraction is shown
    beside the table's cancer mean, not its non-cancer one."""
    from lsr.counttable import CountTable

    first = next(iter(comp.tables))
    table = CountTable.from_dict(comp.tables[first])
    flipped = CountTable(table.eta[:, ::-1], table.rho[:, ::-1], table.edges,
                         ("non-cancer", "cancer"))  # fmt: skip
    assert flipped.cancer == 1 and table.cancer == 0
    c = copy.copy(comp)
    c.tables = {k: flipped.to_dict() for k in comp.tables}
    same, turned = compare.calibration(comp), compare.calibration(c)
    assert [r["table"][first] for r in turned] == [r["table"][first] for r in same]
    assert [r["table"][first][0] for r in turned] == pytest.approx(table.eta[:, 0].tolist())
    assert compare.calibration_checks(turned) == compare.calibration_checks(same)
    assert flipped.top_bin_problem() == table.top_bin_problem()


def test_exports(comp, tmp_path) -> None:
    paths = compare.export_geojson(comp, tmp_path, "s")
    assert tmp_path / "s_boundaries.geojson" in paths
    gt_geo = import_geojson(tmp_path / "s_ground_truth.geojson")
    assert gt_geo.symmetric_difference(comp.polygons["ground_truth"]).area < 1e-6
    doc = json.loads((tmp_path / "s_boundaries.geojson").read_text())
    for f in doc["features"]:
        g = shapely_shape(f["geometry"])
        assert g.is_valid and g.area > 0
    by_name = {b.name: list(b.colour) for b in comp.boundaries}
    got = {f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"]
           for f in doc["features"]}  # fmt: skip
    assert got["Low-resolution model"] == [0, 255, 0] and got["Tumor"] == [255, 0, 0]
    assert all(by_name[k] == v for k, v in got.items())
    compare.fig4_png(comp, tmp_path / "fig4.png", (0, 0, 480, 600), title="s")
    assert (tmp_path / "fig4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores, calib = compare.evaluate(comp), compare.calibration(comp)
    out = compare.write_results(comp, tmp_path, "s", scores, calib)
    rec = json.loads(out[0].read_text())
    assert rec["scores"]["low_res"]["masked_iou"] == scores["low_res"]["masked_iou"]
    assert rec["calibration_check"] == compare.calibration_checks(calib)
    lines = (tmp_path / "s_scores.csv").read_text().splitlines()
    assert lines[0].startswith("boundary,label,masked_iou") and len(lines) == 1 + len(scores)
    assert len((tmp_path / "s_calibration.csv").read_text().splitlines()) == 11
    assert shapely.is_valid(comp.polygons["low_res"])


def test_geojson_of_two_models_whose_names_are_one_file_name_keeps_both(comp, tmp_path) -> None:
    """Runs ``run_b.v2`` and ``run_b_v2`` are one file name made safe: the second file
    replaced the first, and the list of written files named it twice."""
    import dataclasses

    low = comp.boundaries[0]
    keys = ["model:run_b.v2", "model:run_b_v2"]
    polys = [comp.polygons["low_res"], comp.polygons["ground_truth"]]
    twins = dataclasses.replace(
        comp,
        boundaries=[dataclasses.replace(low, key=k, name=f"LSR prediction ({k})") for k in keys],
        polygons=dict(zip(keys, polys, strict=True)),
    )
    paths = compare.export_geojson(twins, tmp_path, "s")
    assert len(set(paths)) == len(paths) == 3
    for path, poly in zip(paths[1:], polys, strict=True):
        got = import_geojson(path)
        want = compare._scaled(poly, comp.scale_to_level0)
        assert got.symmetric_difference(want).area < 1e-6 * max(want.area, 1)


def test_exports_never_replace_the_users_files(comp, tmp_path) -> None:
    """An export refuses, before writing anything, a file of its name that lsr did not write
    (a QuPath ground truth named after the slide, the user's CSV, JSON or PNG); its own
    earlier exports are replaced, and the marks it uses to know them leave readers alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, calib = compare.evaluate(comp), compare.calibration(comp)
    out = tmp_path / "out"
    out.mkdir()

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    def refused(export, name: str, content: bytes) -> None:
        (out / name).write_bytes(content)
        before = snapshot()
        with pytest.raises(LsrInputError, match="refusing to overwrite") as err:
            export()
        assert err.value.path == str(out / name) and name in str(err.value)
        assert snapshot() == before  # nothing written, the user's file intact
        (out / name).unlink()

    square = {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 9], [0, 0]]]}
    props = {"objectType": "annotation", "classification": {"name": "Tumor"}}
    feature = {"type": "Feature", "properties": props, "geometry": square}
    gt = {"type": "FeatureCollection", "features": [feature]}  # hand-drawn in QuPath
    user_png = tmp_path / "mine.png"
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(user_png)  # the user's own matplotlib figure ("Software: Matplotlib ...")
    plt.close(fig)

    def geo() -> list[Path]:
        return compare.export_geojson(comp, out, "s")

    def png() -> None:
        compare.fig4_png(comp, out / "s_fig4.png", (0, 0, 480, 600))

    def res() -> list[Path]:
        return compare.write_results(comp, out, "s", scores, calib)

    refused(geo, "s_ground_truth.geojson", json.dumps(gt).encode())
    refused(geo, "s_boundaries.geojson", b"my notes")
    refused(png, "s_fig4.png", user_png.read_bytes())
    refused(res, "s_results.json", b'{"format": "my lab results"}')
    refused(res, "s_scores.csv", b"boundary,label,my_score\n")
    refused(res, "s_calibration.csv", b"z,bin,notes\n")
    assert snapshot() == {}

    # lsr's own exports: re-exported in place, still read as before
    for _ in range(2):
        written = [*geo(), *res()]
        png()
    drawn = [k for k, g in comp.polygons.items() if not g.is_empty]
    assert len(written) == len(drawn) + 1 + 3
    assert set(snapshot()) == {p.name for p in written} | {"s_fig4.png"}
    doc = json.loads((out / "s_ground_truth.geojson").read_text())
    assert doc[compare.MARK_KEY] == compare.GEOJSON_MARK and doc["type"] == "FeatureCollection"
    gt_geo = import_geojson(out / "s_ground_truth.geojson", classification="Tumor")
    assert gt_geo.symmetric_difference(comp.polygons["ground_truth"]).area < 1e-6


def test_bad_input(setup, tmp_path) -> None:
    d = setup["dir"]
    grid = setup["grid"]
    with pytest.raises(LsrInputError, match="no model"):
        compare.run_comparison(d / "s.tif", grid, MPP, [])
    small = np.zeros((100, 100), np.uint8)
    with pytest.raises(LsrInputError, match="wrong size"):
        compare.mask_from_array(small, MPP, (480, 600), MPP)
    bad = tmp_path / "bad.geojson"
    ring = [[0, 0], [10, 0], [10, 10]]  # open and too short
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(LsrInputError, match="ring"):
        compare.run_comparison(
            d / "s.tif", grid, MPP, setup["models"], ground_truth=bad,
            cache=compare.PredictionCache(d / "cache"),
        )  # fmt: skip
    from lsr.slide import write_pyramidal_tiff

    write_pyramidal_tiff(tmp_path / "m.tif", np.zeros((200, 200), np.uint8), mpp=MPP, tile=64)
    with pytest.raises(LsrInputError, match="wrong size"):
        compare.load_ground_truth(tmp_path / "m.tif", _Slide(), MPP)


class _Slide:
    """The geometry of the test slide (what load_ground_truth needs)."""

    mpp = MPP
    shape = (480, 600)

    def working_shape(self, working_mpp: float) -> tuple[int, int]:
        return self.shape


def test_nearest_resample_is_centre_sampling() -> None:
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 2, (40, 60))
    coarse = compare.nearest_resample(fine, 1.0, (10, 15), 4.0)
    np.testing.assert_array_equal(coarse, fine[2::4, 2::4])
    labels = compare.mask_from_array(fine, 1.0, (10, 15), 4.0)
    np.testing.assert_array_equal(labels, fine[2::4, 2::4] > 0)


def test_fig4_png_fits_long_run_names_and_shows_the_title(comp, tmp_path, monkeypatch) -> None:
    """The legend stays inside the figure with the Trainer's long run names; the title shows."""
    import dataclasses

    from lsr import figures

    long = copy.copy(comp)
    long.boundaries = [
        dataclasses.replace(b, label=f"{b.label} (intra-gaussian-nll-20260611-232948-{i})")
        for i, b in enumerate(comp.boundaries)
    ]
    saved = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.update(fig=fig))
    monkeypatch.setattr(figures._pyplot(), "close", lambda fig: None)
    compare.fig4_png(long, tmp_path / "f.png", (0, 0, 480, 600), title="slide s")
    fig = saved["fig"]
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    (legend,) = fig.legends
    lb = legend.get_window_extent(renderer)
    assert box.x0 <= lb.x0 and lb.x1 <= box.x1 and box.y0 <= lb.y0
    title = fig._suptitle
    assert title is not None and title.get_text() == "slide s"
    tb = title.get_window_extent(renderer)
    assert tb.y1 <= box.y1 + 1 and tb.y0 >= fig.axes[0].get_window_extent(renderer).y1 - 1


def test_the_qupath_script_removes_every_class_lsr_writes_and_never_tumor() -> None:
    """docs/qupath.md's Groovy script removes earlier imports before importing again; its
    class list and predicate (mirrored here) must match what the Compare export and
    ``lsr predict`` name their boundaries, and never the user's own ``Tumor``."""
    import re

    from lsr.geojson import DEFAULT_NAMES
    from lsr.predict import _boundary_class

    doc = (Path(__file__).parents[1] / "docs" / "qupath.md").read_text(encoding="utf-8")
    listed = re.search(r"def lsrClasses = \[(.*?)\] as Set", doc, re.S).group(1)
    classes = set(re.findall(r"'([^']*)'", listed))
    old_keys = re.search(r"def oldClasses = \[(.*?)\]", doc, re.S).group(1)
    old = {f"Tumor ({k})" for k in re.findall(r"'([^']*)'", old_keys)}
    assert "lsrClasses.any { c.startsWith(it + ' (') }" in doc  # the predicate mirrored:
    assert "c in lsrClasses || c in oldClasses ||" in doc

    def is_lsr(c: str) -> bool:
        return c in classes or c in old or any(c.startswith(k + " (") for k in classes)

    losses = [*(k for k in DEFAULT_NAMES if k not in ("ground_truth", "low_res")), "odd", ""]
    compare_names = [b.name for b in compare.model_boundaries([(f"run-{k}", k) for k in losses])]
    predict_names = [next(iter(_boundary_class({"loss": k})[1].values())) for k in losses]
    written = {*compare_names, *predict_names, DEFAULT_NAMES["low_res"]}
    assert len(set(compare_names)) == len(losses)  # every model its own class in QuPath
    assert all(is_lsr(c) for c in written), sorted(c for c in written if not is_lsr(c))
    assert not is_lsr(DEFAULT_NAMES["ground_truth"]) and not is_lsr("Tumor")
    assert not is_lsr("Tumor (grade 2)")  # the user's own class
    earlier = [k for k in DEFAULT_NAMES if k not in ("ground_truth", "low_res")]
    assert all(is_lsr(f"Tumor ({k})") for k in earlier)  # what older versions wrote


def test_low_res_mask_of_a_grid_of_bins_equals_its_probabilities() -> None:
    """A grid of ready bins (the Annotator's painted grid) is cancer from the 50 % bin up,
    as the same blocks given as probabilities; the origin is honoured in both."""
    from lsr.counttable import bin_probabilities
    from lsr.grid import BlockGrid

    rng = np.random.default_rng(3)
    probs = rng.uniform(0, 1, (5, 7)).astype(np.float32)
    probs[0, 0] = np.nan
    z = np.where(np.isnan(probs), -1, bin_probabilities(np.nan_to_num(probs)))
    shape = (5 * 6 + 3, 7 * 6 + 2)
    from_probs = compare.low_res_slide_mask(BlockGrid(probs, 6, (3, 2)), shape)
    from_bins = compare.low_res_slide_mask(BlockGrid.from_z(z, 6, (3, 2)), shape)
    expected = np.zeros(shape, bool)
    expected[3:, 2:] = np.kron(np.nan_to_num(probs) >= 0.5, np.ones((6, 6), bool))
    assert from_bins.any()
    np.testing.assert_array_equal(from_probs, expected)
    np.testing.assert_array_equal(from_bins, expected)


def test_ground_truth_level_is_the_coarsest_still_fine_enough() -> None:
    """A label pyramid is read at the coarsest level whose pixels are no larger than the
    working resolution's (1 % slack), never coarser; the finest when all are coarser."""
    levels = [np.zeros((800, 1000)), np.zeros((400, 500)), np.zeros((200, 250))]
    for working, want in ((4.17, 1), (8.0, 2), (3.99, 1), (2.0, 0), (0.5, 0), (4.0 * 1.005, 1)):
        level, um = compare.ground_truth_level(levels, 1.0 * 2, working)
        # µm/px per level: 2, 4, 8
        assert level is levels[want] and um == 2.0 * 2**want, working


def test_the_prediction_cache_removes_day_old_maps_of_killed_predictions(tmp_path) -> None:
    """Each napari killed mid-prediction left a hidden map the size of the slide's float32
    probability map in the cache, for good; another napari may be writing a fresh one."""
    import os

    cache = compare.PredictionCache(tmp_path)
    key = "0123456789abcdef0123456789abcdef"
    stale = tmp_path / f".{key}.tmp-0123456789ab.npy"
    fresh = tmp_path / f".{key}.tmp-fedcba987654.npy"
    other = tmp_path / ".notes.tmp-0123456789ab.npy"  # not a cache entry's
    done = tmp_path / f"{key}.npy"
    for p in (stale, fresh, other, done):
        p.write_bytes(b"x")
    old = stale.stat().st_mtime - compare.PredictionCache.STALE_S - 60
    for p in (stale, other, done):
        os.utime(p, (old, old))
    assert cache.remove_killed_writes() == [stale]
    assert all(p.exists() for p in (fresh, other, done))


def test_exported_boundaries_stay_on_the_slide(comp, tmp_path) -> None:
    """The evaluation grid may overhang the slide by part of a pixel (its size is rounded);
    the export then reached past the slide, and the import against the slide (as QuPath)
    refused lsr's own file."""
    assert comp.level0_shape is not None
    s = comp.scale_to_level0
    low = comp.polygons["low_res"]
    x1, y1 = low.bounds[2] * s, low.bounds[3] * s
    small = copy.copy(comp)
    small.level0_shape = (int(y1) - 3, int(x1) - 5)  # a slide 3 and 5 px short of the grid
    compare.export_geojson(small, tmp_path, "s")
    geom = import_geojson(tmp_path / "s_low_res.geojson", slide_shape_level0=small.level0_shape)
    assert geom.bounds[2] == small.level0_shape[1] and geom.bounds[3] == small.level0_shape[0]
    full = shapely.affinity.scale(low, s, s, origin=(0, 0))
    clipped = full.intersection(shapely.box(0, 0, small.level0_shape[1], small.level0_shape[0]))
    assert geom.symmetric_difference(clipped).area < 1e-6
