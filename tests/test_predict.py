"""Per-slide outputs (probability/mask TIFFs, QuPath GeoJSON in level-0 px, summary) and the
cohort driver: resuming, failures, the CLI and a 2-worker dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch

from lsr.checkpoint import write_checkpoint
from lsr.errors import LsrInputError
from lsr.geojson import import_geojson
from lsr.model import INPUT_MEAN, INPUT_STD, UNet
from lsr.predict import (
    LEFTOVER_S,
    PredictOptions,
    parse_tile,
    predict_cohort,
    predict_one,
    read_summary,
    slide_name,
)
from lsr.slide import open_slide, write_pyramidal_tiff

MPP0 = 1.0  # level-0 µm/px of the test slides
WMPP = 4.0  # working µm/px: 4 level-0 px per working px
# dark square in working px: rows [16, 40), cols [24, 56)
SQUARE = (16, 40, 24, 56)


def dark_square_net() -> UNet:
    """A real (depth-0) U-Net whose cancer logit is 10·relu(-R_normalised) − 5.

    On white (R = 255) R_normalised = +1.5 → p(cancer) = sigmoid(−5) ≈ 0.007; on the dark
    square (R = 60) it is −2.3 → p ≈ 1. Pointwise (centre taps only), so the mask is exact.
    """
    net = UNet(2, width=4, depth=0, norm="none")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        conv1, conv2 = net.encoder[0][0], net.encoder[0][3]
        conv1.weight[0, 0, 1, 1] = -1.0
        conv2.weight[0, 0, 1, 1] = 1.0
        net.head.weight[0, 0] = 10.0
        net.head.bias[0] = -5.0
    return net.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    net = dark_square_net()
    meta = {
        "model": net.config(),
        "class_names": ["cancer", "non-cancer"],
        "loss": "intra_inter",
        "working_mpp": WMPP,
    }
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    write_checkpoint(
        out, 1, model_state=net.state_dict(), metadata=meta,
        optimizer_state=opt.state_dict(), trainer_state={},
    )  # fmt: skip
    return out


def make_slide(path, square=SQUARE, shape=(64, 80)):
    h, w = shape
    img = np.full((4 * h, 4 * w, 3), 255, np.uint8)
    y0, y1, x0, x1 = (4 * v for v in square)
    img[y0:y1, x0:x1] = (60, 40, 120)
    write_pyramidal_tiff(path, img, mpp=MPP0, compression="zlib", min_size=64, tile=64)
    return path


OPTS = PredictOptions(working_mpp=WMPP, tile=32, device="cpu", tissue="none", min_area_mm2=0)


def test_outputs_of_one_slide(tmp_path, model_dir):
    slide = make_slide(tmp_path / "case-1.ome.tif")
    res = predict_one(str(slide), str(model_dir), str(tmp_path / "out"), OPTS)
    assert res.status == "done", res.error
    folder = tmp_path / "out" / "case-1"
    assert slide_name(slide) == "case-1"

    # probability: uint8 0-255 at the working resolution with its pixel size
    with open_slide(folder / "probability.tif") as prob_slide:
        assert prob_slide.mpp == pytest.approx(WMPP)
        prob = prob_slide.read_level(0, 0, 0, 64, 80)
    assert prob.dtype == np.uint8 and prob.shape == (64, 80)
    y0, y1, x0, x1 = SQUARE
    r_dark = (60 / 255 - INPUT_MEAN[0]) / INPUT_STD[0]
    p_in = 1 / (1 + np.exp(-(10 * -r_dark - 5)))
    assert (prob[y0:y1, x0:x1] == round(255 * p_in)).all()
    outside = np.ones((64, 80), bool)
    outside[y0:y1, x0:x1] = False
    assert (prob[outside] == round(255 / (1 + np.exp(5)))).all()

    # mask: exactly the square
    mask = tifffile.imread(folder / "mask.tif")
    assert mask.dtype == np.uint8 and np.array_equal(mask > 0, ~outside)

    # boundaries: the square in level-0 px (×4), QuPath annotation
    poly = import_geojson(folder / "boundaries.geojson", slide_shape_level0=(256, 320))
    assert poly.area == pytest.approx(4 * (y1 - y0) * 4 * (x1 - x0))
    assert poly.bounds == pytest.approx((4 * x0, 4 * y0, 4 * x1, 4 * y1))
    doc = json.loads((folder / "boundaries.geojson").read_text())
    props = doc["features"][0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["color"] == [0, 0, 255]

    # summary
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["mpp"] == pytest.approx(MPP0)
    assert summary["working_shape"] == [64, 80] and summary["level0_shape"] == [256, 320]
    area = (y1 - y0) * (x1 - x0) * (WMPP / 1000) ** 2
    assert summary["cancer_area_mm2"] == pytest.approx(area)
    assert summary["model"]["class_names"] == ["cancer", "non-cancer"]
    assert summary["timings_s"]["total"] > 0
    assert not (folder / "error.txt").exists()


def test_float32_probability_and_empty_boundaries(tmp_path, model_dir):
    slide = make_slide(tmp_path / "blank.tif", square=(0, 0, 0, 0))
    opts = PredictOptions(**{**OPTS.to_dict(), "probability_dtype": "float32"})
    res = predict_one(str(slide), str(model_dir), str(tmp_path / "out"), opts)
    assert res.status == "done", res.error and res.cancer_area_mm2 == 0
    prob = tifffile.imread(tmp_path / "out" / "blank" / "probability.tif")
    assert prob.dtype == np.float32
    assert np.allclose(prob, 1 / (1 + np.exp(5)), atol=1e-6)
    doc = json.loads((tmp_path / "out" / "blank" / "boundaries.geojson").read_text())
    assert doc == {"type": "FeatureCollection", "features": []}


def test_cohort_records_failures_and_resumes(tmp_path, model_dir):
    a, b = make_slide(tmp_path / "a.tif"), make_slide(tmp_path / "b.tif", square=(0, 8, 0, 8))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(a.read_bytes()[:2000])  # truncated
    out = tmp_path / "out"
    results = predict_cohort([a, bad, b], model_dir, out, OPTS)
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert (out / "bad" / "error.txt").read_text().strip()
    assert "bad.tif" in results[1].error
    cohort = json.loads((out / "cohort.json").read_text())
    assert (cohort["done"], cohort["failed"], cohort["skipped"]) == (2, 1, 0)

    # a re-run skips what is done and retries the failure
    mtime = (out / "a" / "probability.tif").stat().st_mtime_ns
    again = predict_cohort([a, bad, b], model_dir, out, OPTS)
    assert [r.status for r in again] == ["skipped", "failed", "skipped"]
    assert (out / "a" / "probability.tif").stat().st_mtime_ns == mtime
    assert again[0].cancer_area_mm2 == results[0].cancer_area_mm2

    # an incomplete folder (missing output) is redone
    (out / "b" / "mask.tif").unlink()
    assert read_summary(out / "b") is None
    third = predict_cohort([a, b], model_dir, out, OPTS)
    assert [r.status for r in third] == ["skipped", "done"]
    assert read_summary(out / "b") is not None


def test_two_worker_dask_cluster_matches_in_process(tmp_path, model_dir):
    slides = [make_slide(tmp_path / "s1.tif"), make_slide(tmp_path / "s2.tif", (8, 24, 8, 72))]
    local = predict_cohort(slides, model_dir, tmp_path / "local", OPTS)
    dist = predict_cohort(slides, model_dir, tmp_path / "dist", OPTS, workers=2, processes=False)
    assert [r.status for r in dist] == ["done", "done"], [r.error for r in dist]
    for r_local, r_dist in zip(local, dist, strict=True):
        assert r_dist.cancer_area_mm2 == pytest.approx(r_local.cancer_area_mm2)
        p_local = tifffile.imread(tmp_path / "local" / r_local.name / "probability.tif")
        p_dist = tifffile.imread(tmp_path / "dist" / r_dist.name / "probability.tif")
        assert np.array_equal(p_local, p_dist)
    assert dist[0].cancer_area_mm2 != dist[1].cancer_area_mm2


def test_same_folder_name_twice_is_an_error(tmp_path, model_dir):
    (tmp_path / "x").mkdir()
    a = make_slide(tmp_path / "a.tif")
    b = make_slide(tmp_path / "x" / "a.tif")
    with pytest.raises(LsrInputError, match="same folder"):
        predict_cohort([a, b], model_dir, tmp_path / "out", OPTS)
    with pytest.raises(LsrInputError, match=r"not an lsr checkpoint|not found"):
        predict_cohort([a], tmp_path / "x", tmp_path / "out", OPTS)


def test_cli_writes_outputs_and_exits_non_zero_on_failure(tmp_path, model_dir):
    a = make_slide(tmp_path / "a.tif")
    missing = tmp_path / "missing.tif"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lsr", "predict", str(a), str(missing), "--model",
           str(model_dir), "--out", str(out), "--working-mpp", str(WMPP), "--tile", "32",
           "--device", "cpu", "--tissue", "none"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "✓ a" in res.stderr and "✗ missing" in res.stderr and "file not found" in res.stderr
    assert read_summary(out / "a") is not None
    res = subprocess.run(cmd[:5] + cmd[6:], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "already done" in res.stderr


def test_cli_predicts_on_when_its_reader_goes_away(tmp_path, model_dir):
    """`lsr predict ... 2>&1 | head -1`: the first line met a closed pipe and rich ended the
    process (exit 1, the other slides not predicted). Now the console goes quiet."""
    slides = [make_slide(tmp_path / f"{n}.tif") for n in "ab"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lsr", "predict", *map(str, slides), "--model",
           str(model_dir), "--out", str(out), "--working-mpp", str(WMPP), "--tile", "32",
           "--device", "cpu", "--tissue", "none", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.close()  # the reader is gone before the first line
    assert proc.wait(timeout=120) == 0
    assert all(read_summary(out / n) is not None for n in "ab")


def test_auto_tile_is_the_default_and_gives_the_same_outputs(tmp_path, model_dir):
    assert PredictOptions().tile == "auto"
    assert parse_tile("auto") == "auto" and parse_tile(" 2048 ") == 2048 and parse_tile(64) == 64
    for bad in ("big", 8, "8", True):
        with pytest.raises(LsrInputError, match="tile"):
            PredictOptions(tile=bad)
    with pytest.raises(LsrInputError, match="tile_memory_mib"):
        PredictOptions(tile_memory_mib=0)
    slide = make_slide(tmp_path / "a.tif")
    auto = PredictOptions(**{**OPTS.to_dict(), "tile": "auto"})
    res = predict_one(str(slide), str(model_dir), str(tmp_path / "auto"), auto)
    ref = predict_one(str(slide), str(model_dir), str(tmp_path / "t32"), OPTS)
    assert res.status == ref.status == "done", (res.error, ref.error)
    assert res.summary["tiles_total"] == 1 and ref.summary["tiles_total"] == 6
    assert res.summary["tile_px"] == 80 and ref.summary["tile_px"] == 32
    assert res.summary["options"]["tile"] == "auto"
    a = tifffile.imread(tmp_path / "auto" / "a" / "probability.tif")
    b = tifffile.imread(tmp_path / "t32" / "a" / "probability.tif")
    assert np.array_equal(a, b)


def test_the_models_working_resolution_is_the_default(tmp_path, model_dir):
    """A model trained at 4 µm/px runs at 4 µm/px unless told otherwise, and then warns."""
    slide = make_slide(tmp_path / "a.tif")
    default = PredictOptions(**{**OPTS.to_dict(), "working_mpp": None})
    res = predict_one(str(slide), str(model_dir), str(tmp_path / "d"), default)
    assert res.status == "done", res.error
    assert res.summary["working_mpp"] == WMPP and res.summary["working_shape"] == [64, 80]
    assert res.summary["warnings"] == []
    other = PredictOptions(**{**OPTS.to_dict(), "working_mpp": 2 * WMPP})
    with pytest.warns(UserWarning, match="trained at 4 µm/px"):
        res = predict_one(str(slide), str(model_dir), str(tmp_path / "o"), other)
    assert res.summary["working_shape"] == [32, 40]
    assert any("trained at 4" in w for w in res.summary["warnings"])


def test_mpp_override_and_coarse_slides_are_warned_in_the_summary(tmp_path, model_dir):
    slide = make_slide(tmp_path / "a.tif")  # the file says 1 µm/px
    opts = PredictOptions(**{**OPTS.to_dict(), "mpp": 8.0})  # 2x coarser than the model
    with pytest.warns(UserWarning):
        res = predict_one(str(slide), str(model_dir), str(tmp_path / "out"), opts)
    assert res.status == "done", res.error
    notes = " | ".join(res.summary["warnings"])
    assert "overrides the file's own 1 µm/px" in notes and "coarser than the model's" in notes
    assert res.summary["file_mpp"] == pytest.approx(MPP0) and res.summary["mpp"] == 8.0
    # matching metadata: no warning
    ok = PredictOptions(**{**OPTS.to_dict(), "mpp": MPP0 * 1.01})
    res = predict_one(str(slide), str(model_dir), str(tmp_path / "ok"), ok)
    assert res.summary["warnings"] == []


def test_blank_slide_tissue_warning_names_the_slide(tmp_path, model_dir):
    slide = make_slide(tmp_path / "blank.tif", square=(0, 0, 0, 0))
    opts = PredictOptions(**{**OPTS.to_dict(), "tissue": "auto"})
    with pytest.warns(UserWarning, match=r"^blank: no tissue found"):
        res = predict_one(str(slide), str(model_dir), str(tmp_path / "out"), opts)
    assert res.status == "done" and "no tissue found" in res.summary["warnings"][0]


def test_boundaries_class_is_the_compare_exports_never_plain_tumor(tmp_path, model_dir):
    from lsr.predict import _boundary_class

    assert _boundary_class({"loss": "intra"}) == ("intra", {"intra": "Intra-instance"})
    assert _boundary_class({"loss": "intra_inter"})[1] == {"intra_inter": "Intra+inter-instance"}
    assert _boundary_class({})[1] == {"prediction": "LSR prediction"}
    assert _boundary_class({"loss": "mine"})[1] == {"mine": "LSR prediction (mine)"}
    slide = make_slide(tmp_path / "a.tif")
    res = predict_one(str(slide), str(model_dir), str(tmp_path / "o"), OPTS)
    doc = json.loads((tmp_path / "o" / "a" / "boundaries.geojson").read_text())
    cls = doc["features"][0]["properties"]["classification"]
    assert res.status == "done" and cls == {"name": "Intra+inter-instance", "color": [0, 0, 255]}


def test_a_rerun_with_another_model_or_threshold_redoes_the_slide(tmp_path, model_dir):
    slide = make_slide(tmp_path / "a.tif")
    out = tmp_path / "out"
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "done"
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "skipped"
    # tile size does not change the result: still skipped
    tiled = PredictOptions(**{**OPTS.to_dict(), "tile": 48})
    assert predict_cohort([slide], model_dir, out, tiled)[0].status == "skipped"
    # another threshold does
    lower = PredictOptions(**{**OPTS.to_dict(), "threshold": 0.3})
    res = predict_cohort([slide], model_dir, out, lower)[0]
    assert res.status == "done" and res.summary["threshold"] == 0.3
    # other weights (same folder layout, different bytes) do too
    other = tmp_path / "other_run"
    net = dark_square_net()
    with torch.no_grad():
        net.head.bias[0] = -4.0
    meta = {"model": net.config(), "class_names": ["cancer", "non-cancer"], "loss": "intra",
            "working_mpp": WMPP}  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    write_checkpoint(other, 1, model_state=net.state_dict(), metadata=meta,
                     optimizer_state=opt.state_dict(), trainer_state={})  # fmt: skip
    res = predict_cohort([slide], other, out, lower)[0]
    assert res.status == "done" and res.summary["model"]["loss"] == "intra"


def test_run_wide_problems_fail_once_before_any_slide(tmp_path, model_dir):
    import shutil

    slide = make_slide(tmp_path / "a.tif")
    with pytest.raises(LsrInputError, match="batch_size"):
        PredictOptions(batch_size=0)
    with pytest.raises(LsrInputError, match="working_mpp"):
        PredictOptions(working_mpp=-1)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = next(broken.rglob("model.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(LsrInputError, match=r"model\.safetensors"):
        predict_cohort([slide], broken, tmp_path / "out", OPTS)
    assert not (tmp_path / "out" / "a").exists()


def test_cli_line_shows_the_scale_and_warnings_and_keeps_brackets():
    from lsr.cli.predict import _result_line
    from lsr.predict import SlideResult

    ok = SlideResult("a.tif", "a", "done", 1.5, "", 0.25,
                     {"mpp": 0.5, "working_mpp": 4.17, "warnings": ["odd [thing]"]})  # fmt: skip
    text = _result_line(ok)
    assert "0.5 µm/px, read at 4.17 µm/px" in text and "cancer 0.25 mm²" in text
    assert "⚠ odd \\[thing]" in text  # escaped: rich would eat [thing]
    bad = SlideResult("b.tif", "b", "failed", 0.1, "install napari-lsr[wsi]")
    assert "napari-lsr\\[wsi]" in _result_line(bad)


def test_cli_output_folder_that_is_a_file_is_one_line(tmp_path, model_dir):
    a = make_slide(tmp_path / "a.tif")
    blocker = tmp_path / "out"
    blocker.write_text("mine\n")
    cmd = [sys.executable, "-m", "lsr", "predict", str(a), "--model", str(model_dir),
           "--out", str(blocker), "--device", "cpu"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{blocker}: a file is in the way" in res.stderr
    assert blocker.read_text() == "mine\n"


def test_older_summaries_are_reused_by_folder_and_step_and_a_new_slide_file_is_redone(
    tmp_path, model_dir
):
    slide = make_slide(tmp_path / "a.tif")
    out = tmp_path / "out"
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "done"
    summary_path = out / "a" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["model"].pop("sha256")  # as written before the weights' hash was recorded
    summary_path.write_text(json.dumps(summary))
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "skipped"
    # the same name from another folder, the first slide still there: refused, its outputs
    # kept (siteB/a.tif's replaced siteA/a.tif's without a word); --overwrite replaces them
    (tmp_path / "other").mkdir()
    moved = make_slide(tmp_path / "other" / "a.tif", square=(0, 8, 0, 8))
    before = (out / "a" / "probability.tif").read_bytes()
    with pytest.raises(LsrInputError, match="another slide of the same name") as err:
        predict_cohort([moved], model_dir, out, OPTS)
    assert str(slide.resolve()) in str(err.value) and "--overwrite" in str(err.value)
    one = predict_one(str(moved), str(model_dir), str(out), OPTS)
    assert one.status == "failed" and "same name" in one.error
    assert (out / "a" / "probability.tif").read_bytes() == before
    assert read_summary(out / "a")["slide"] == str(slide.resolve())
    res = predict_cohort([moved], model_dir, out, OPTS, overwrite=True)[0]
    assert res.status == "done" and res.summary["slide"] == str(moved.resolve())
    # a slide that moved (its earlier file gone) is another slide of that name: redone
    (tmp_path / "third").mkdir()
    moved = moved.rename(tmp_path / "third" / "a.tif")
    res = predict_cohort([moved], model_dir, out, OPTS)[0]
    assert res.status == "done" and res.summary["slide"] == str(moved.resolve())


def test_a_slide_replaced_at_the_same_path_is_predicted_again(tmp_path, model_dir):
    """A rescan (or ``lsr synth --overwrite``) puts another file at the slide's path: its
    outputs were kept, as if they were of the new file."""
    slide = make_slide(tmp_path / "a.tif")
    out = tmp_path / "out"
    first = predict_cohort([slide], model_dir, out, OPTS)[0]
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "skipped"
    stamp = os.stat(slide)
    make_slide(slide, square=(0, 8, 0, 8))
    if os.stat(slide).st_mtime_ns == stamp.st_mtime_ns:  # (a coarse file-system clock)
        os.utime(slide, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    again = predict_cohort([slide], model_dir, out, OPTS)[0]
    assert again.status == "done"
    assert again.summary["cancer_area_mm2"] != first.summary["cancer_area_mm2"]
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "skipped"


def test_someone_elses_files_in_a_slide_folder_or_cohort_json_are_never_replaced(
    tmp_path, model_dir
):
    slide = make_slide(tmp_path / "a.tif")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    mine = out / "a" / "boundaries.geojson"
    mine.write_text('{"my": "QuPath annotations"}')
    with pytest.raises(LsrInputError, match=r"boundaries\.geojson without a summary\.json"):
        predict_cohort([slide], model_dir, out, OPTS)
    assert mine.read_text() == '{"my": "QuPath annotations"}'
    assert sorted(p.name for p in out.rglob("*")) == ["a", "boundaries.geojson"]
    assert predict_one(str(slide), str(model_dir), str(out), OPTS).status == "failed"
    assert sorted(p.name for p in (out / "a").iterdir()) == ["boundaries.geojson"]
    mine.unlink()
    notes = out / "cohort.json"
    notes.write_text("cohort notes")
    with pytest.raises(LsrInputError, match="not a cohort summary"):
        predict_cohort([slide], model_dir, out, OPTS)
    assert notes.read_text() == "cohort notes"
    notes.unlink()
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "done"
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "skipped"  # ours now


def test_a_failed_rerun_leaves_no_outputs_of_the_earlier_run(tmp_path, model_dir):
    slide = make_slide(tmp_path / "a.tif")
    out = tmp_path / "out"
    lower = PredictOptions(**{**OPTS.to_dict(), "threshold": 0.3})
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "done"
    slide.write_bytes(slide.read_bytes()[:3000])  # the slide is damaged before a re-run
    res = predict_cohort([slide], model_dir, out, lower)[0]
    assert res.status == "failed"
    assert sorted(p.name for p in (out / "a").iterdir()) == ["error.txt", "summary.json"]
    summary = json.loads((out / "a" / "summary.json").read_text())
    assert summary["status"] == "failed" and "a.tif" in summary["error"]
    assert read_summary(out / "a") is None


def test_a_bad_network_description_fails_once_naming_checkpoint_json(tmp_path, model_dir):
    import shutil

    slides = [make_slide(tmp_path / "a.tif"), make_slide(tmp_path / "b.tif")]
    edits = {
        "norm": ("bogus", r"unknown norm 'bogus'.*\(its \"model\"\)"),
        "width": (16, r"do not match.*size mismatch for .*; and \d+ more"),
    }
    for key, (value, want) in edits.items():
        bad = tmp_path / f"bad_{key}"
        shutil.copytree(model_dir, bad)
        meta_path = next(bad.rglob("checkpoint.json"))
        meta = json.loads(meta_path.read_text())
        meta["model"][key] = value
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(LsrInputError, match=want) as info:
            predict_cohort(slides, bad, tmp_path / f"out_{key}", OPTS)
        named = "checkpoint.json" if key == "norm" else "model.safetensors"
        assert str(info.value.path).endswith(named) and "\n" not in str(info.value)
        assert not (tmp_path / f"out_{key}").exists()


def test_a_corrupt_working_mpp_in_the_checkpoint_is_refused_not_replaced(tmp_path, model_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    meta_path = next(bad.rglob("checkpoint.json"))
    meta = json.loads(meta_path.read_text())
    meta["working_mpp"] = -1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LsrInputError, match=r"working_mpp must be µm per pixel.*-1") as info:
        predict_cohort([make_slide(tmp_path / "a.tif")], bad, tmp_path / "out", OPTS)
    assert str(info.value.path) == str(meta_path)


def test_folders_of_an_earlier_version_are_taken_up_again(tmp_path, model_dir):
    """Versions before the 'running' summary left a failed slide with error.txt alone, and
    an interrupted one with outputs but no summary: a re-run retried them (the docs promise
    it); only files no earlier run accounts for are refused."""
    a, b = make_slide(tmp_path / "a.tif"), make_slide(tmp_path / "b.tif")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "error.txt").write_text("Traceback (most recent call last):\n  ...\n")
    (out / "b").mkdir()
    (out / "b" / "probability.tif").write_bytes(b"half a TIFF")
    with pytest.raises(LsrInputError, match=r"out/b: holds probability\.tif without"):
        predict_cohort([a, b], model_dir, out, OPTS)
    cohort = {"format": "napari-lsr cohort prediction", "done": 0, "skipped": 0, "failed": 1,
              "slides": [{"slide": str(b), "name": "b", "status": "failed"}]}  # fmt: skip
    (out / "cohort.json").write_text(json.dumps(cohort))
    assert [r.status for r in predict_cohort([a, b], model_dir, out, OPTS)] == ["done", "done"]
    assert not (out / "a" / "error.txt").exists() and read_summary(out / "b") is not None


def test_a_redone_slide_folder_loses_what_a_killed_run_left(tmp_path, model_dir):
    """SIGKILL mid-write left a hidden probability map and a pyramid staging folder in
    OUT/<slide>/; a successful rerun kept them for good (slide-sized files)."""
    slide = make_slide(tmp_path / "a.tif")
    out = tmp_path / "out"
    assert predict_cohort([slide], model_dir, out, OPTS)[0].status == "done"
    left = [out / "a" / ".probability.tmp-0123456789ab.tif", out / "a" / ".lsr-pyramid-x1y2"]
    left[0].write_bytes(b"partial")
    left[1].mkdir()
    (left[1] / "level1.npy").write_bytes(b"partial")
    notes = out / "a" / ".notes.tmp-0123456789ab.txt"  # not a temporary of an lsr output
    notes.write_text("mine")
    live = out / "a" / ".mask.tmp-fedcba987654.tif"  # another lsr predict writing right now
    live.write_bytes(b"being written")
    old = time.time() - LEFTOVER_S - 60
    for p in (*left, left[1] / "level1.npy", notes):
        os.utime(p, (old, old))
    lower = PredictOptions(**{**OPTS.to_dict(), "threshold": 0.3})
    assert predict_cohort([slide], model_dir, out, lower)[0].status == "done"
    assert not any(p.exists() for p in left) and notes.read_text() == "mine"
    assert live.exists()


def test_a_slide_given_twice_is_predicted_once(tmp_path, model_dir):
    """Given twice (a glob and its name), one slide had two writers of its folder."""
    slide = make_slide(tmp_path / "a.tif")
    other = tmp_path / "sub" / ".." / "a.tif"  # the same file by another path
    (tmp_path / "sub").mkdir()
    results = predict_cohort([slide, other, slide], model_dir, tmp_path / "out", OPTS)
    assert [r.status for r in results] == ["done"]
    assert results[0].slide == str(slide)


def test_boundaries_stay_on_the_slide_and_import_against_it(tmp_path, model_dir):
    """The working grid of a slide whose side is no multiple of the factor overhangs it by
    up to half a working px; a boundary touching that edge left the slide, and
    import_geojson (as QuPath) refused lsr's own file for this slide."""
    h0, w0 = 4 * 64 + 3, 4 * 80 + 3  # level-0 px: 64.75 × 80.75 working px, rounded up
    img = np.full((h0, w0, 3), 255, np.uint8)
    img[4 * 40 :, 4 * 56 :] = (60, 40, 120)  # dark to the far corner
    path = tmp_path / "edge.tif"
    write_pyramidal_tiff(path, img, mpp=MPP0, compression="zlib", min_size=64, tile=64)
    res = predict_one(str(path), str(model_dir), str(tmp_path / "out"), OPTS)
    assert res.status == "done", res.error
    geojson = tmp_path / "out" / "edge" / "boundaries.geojson"
    geom = import_geojson(geojson, slide_shape_level0=(h0, w0))
    x0, y0, x1, y1 = geom.bounds
    assert (x1, y1) == (w0, h0)  # to the slide's edge, not past it
    assert x0 == pytest.approx(4 * 56, abs=4) and y0 == pytest.approx(4 * 40, abs=4)
