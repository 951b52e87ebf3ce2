"""Synthetic benchmark: determinism, tiling, files and metadata, memory, classifier, expert."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lsr.counttable import CountTable
from lsr.errors import LsrInputError
from lsr.synthetic import (
    generate_dataset,
    generate_patch,
    generate_slide,
    slide_arrays,
    write_slide,
)
from lsr.synthetic_classifier import block_dice, fit_weights
from lsr.synthetic_config import SyntheticConfig, config_from_dict, load_config, shipped_config
from lsr.synthetic_expert import human_estimates, sample_blocks, table_error, true_table
from lsr.synthetic_fields import Fields
from lsr.synthetic_tissue import make_plan, render


@pytest.fixture(scope="module")
def cfg() -> SyntheticConfig:
    return load_config("default")


def test_generation_is_deterministic_for_a_seed(cfg):
    a = generate_slide(cfg, 5, 360, 480)
    b = generate_slide(cfg, 5, 360, 480)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.gt, b.gt)
    np.testing.assert_array_equal(a.probs, b.probs)
    c = generate_slide(cfg, 6, 360, 480)
    assert np.mean(a.rgb != c.rgb) > 0.5


def test_windows_tile_seamlessly(cfg):
    """A slide rendered in pieces equals the slide rendered at once (tile independence)."""
    plan = make_plan(cfg, 3, 480, 480)
    whole_rgb, whole_gt = render(cfg, plan, 0, 0, 480, 480)
    rgb = np.zeros_like(whole_rgb)
    gt = np.zeros_like(whole_gt)
    for y, h in ((0, 130), (130, 350)):
        for x, w in ((0, 250), (250, 230)):
            rgb[y : y + h, x : x + w], gt[y : y + h, x : x + w] = render(cfg, plan, y, x, h, w)
    np.testing.assert_array_equal(gt, whole_gt)
    assert np.abs(rgb.astype(int) - whole_rgb.astype(int)).max() <= 1


def test_smooth_field_statistics_and_stride():
    f = Fields(1)
    a = f.smooth(7, 6.0, 0, 0, 600, 600)
    assert abs(float(a.mean())) < 0.2
    assert 0.7 < float(a.std()) < 1.3
    coarse = f.smooth(7, 6.0, 0, 0, 150, 150, stride=4)
    np.testing.assert_allclose(coarse, a[::4, ::4], atol=1e-5)


def test_patch_shapes_and_content(cfg):
    rgb, gt, probs = generate_patch(cfg, 0)
    n = cfg.slide.patch_px
    assert rgb.shape == (n, n, 3) and rgb.dtype == np.uint8
    assert gt.shape == (n, n) and gt.dtype == bool
    assert probs.shape == (n // cfg.scale.block_px,) * 2
    assert 0.05 < gt.mean() < 0.95  # a boundary to evaluate
    assert np.all((probs >= 0) & (probs <= 1))
    # H&E-like colours: tissue is pink/purple (red and blue above green), not grey
    tissue = rgb.reshape(-1, 3).astype(int)
    assert np.mean(tissue[:, 0] > tissue[:, 1]) > 0.9
    assert np.mean(tissue[:, 2] > tissue[:, 1]) > 0.9
    # tumour is darker and more hematoxylin-rich than the rest
    assert rgb[gt].mean() < rgb[~gt].mean()


def test_tumour_nuclei_darker_than_stroma(cfg):
    from skimage.color import hed_from_rgb

    s = generate_slide(cfg, 2)
    od = -np.log(np.clip(s.rgb.astype(np.float32), 1, 255) / 255)
    h = (od.reshape(-1, 3) @ hed_from_rgb)[:, 0].reshape(s.gt.shape)
    tissue = s.rgb.mean(axis=2) < 215
    assert np.median(h[s.gt & tissue]) > 1.5 * np.median(h[~s.gt & tissue])


def test_write_slide_files_and_metadata(cfg, tmp_path):
    from lsr.grid import load_grid
    from lsr.slide import open_slide

    small = replace(cfg, slide=replace(cfg.slide, width_px=480, height_px=360))
    rec, data = write_slide(small, 4, tmp_path, "s")
    with open_slide(tmp_path / rec["image"]) as sl:
        assert sl.shape == (360, 480)
        assert sl.mpp == pytest.approx(cfg.scale.working_mpp, rel=1e-3)
    with open_slide(tmp_path / rec["ground_truth"]) as gt:
        assert gt.shape == (360, 480)
    grid = load_grid(tmp_path / rec["grid"], block_px=cfg.scale.block_px)
    assert grid.shape == (3, 4)
    np.testing.assert_array_equal(grid.z, data["z"])
    assert rec["blocks"] == [3, 4]
    # the grid's geometry travels with it (napari, lsr train and lsr evaluate read it there)
    from lsr.grid import grid_geometry

    geo = grid_geometry(tmp_path / rec["grid"])
    assert geo["sidecar"] and geo["origin"] == [0, 0]
    assert (geo["block_px"], geo["working_mpp"]) == (cfg.scale.block_px, cfg.scale.working_mpp)


def _fake_render(cfg, plan, y0, x0, h, w):
    """A cheap stand-in for the tissue renderer: a pure function of global coordinates."""
    yy = np.arange(y0, y0 + h)[:, None]
    xx = np.arange(x0, x0 + w)[None, :]
    gt = ((yy // 300 + xx // 250) % 3) == 0
    v = ((yy * 7 + xx * 13) % 200 + 30).astype(np.uint8)
    rgb = np.stack([v, np.where(gt, 90, 160).astype(np.uint8) + (v % 50), v[::1] // 2 + 100], -1)
    return rgb.astype(np.uint8), gt


def test_large_slide_in_bounded_memory(cfg, tmp_path, monkeypatch):
    """The tiled path never holds the full image: peak memory is a small part of the slide.

    The renderer is replaced by a cheap function of coordinates (its own memory is per tile:
    see test_render_memory_is_per_tile), so this checks the tiling, the stashed ground truth
    and classifier sums, and the pyramid writer at a size that would not fit the budget.
    """
    import dask

    import lsr.synthetic as syn

    monkeypatch.setattr(syn, "render", _fake_render)
    small_tiles = replace(cfg, slide=replace(cfg.slide, tile_px=240, compression="zlib"))
    syn.write_slide(small_tiles, 1, tmp_path, "warm", 240, 240, in_memory_limit_px=1)  # imports

    def peak_of(h: int, w: int) -> tuple[int, dict, dict]:
        tracemalloc.start()
        try:
            with dask.config.set(scheduler="synchronous"):
                rec, data = syn.write_slide(
                    small_tiles, 9, tmp_path, f"s{h}", h, w, in_memory_limit_px=1
                )
            return tracemalloc.get_traced_memory()[1], rec, data
        finally:
            tracemalloc.stop()

    w = 1920
    peak_short, _, _ = peak_of(960, w)
    h = 3840
    peak, rec, data = peak_of(h, w)
    full = h * w * 3
    # memory is a few bands of tile rows: it does not grow with the slide's height
    assert peak < full / 3, f"peak {peak / 1e6:.1f} MB vs slide {full / 1e6:.1f} MB"
    # growth with height: the bit-packed truth (1/24 of the RGB bytes) and bookkeeping only
    assert peak - peak_short < 0.2 * (full - 960 * w * 3), (peak, peak_short)
    assert data["z"].shape == (h // 120, w // 120)
    from lsr.slide import open_slide

    with open_slide(tmp_path / rec["ground_truth"]) as g:
        part = g.read_level(0, 1000, 500, 300, 400) > 0
    np.testing.assert_array_equal(part, _fake_render(cfg, None, 1000, 500, 300, 400)[1])
    expect = _fake_render(cfg, None, 0, 0, 240, 240)[1].reshape(2, 120, 2, 120).mean((1, 3))
    np.testing.assert_allclose(data["cancer"][:2, :2], expect)


def test_render_memory_is_per_tile(cfg):
    """Rendering a window allocates a bounded multiple of the window, whatever the slide."""
    plan = make_plan(cfg, 4, 20_000, 20_000)  # a 2.4 × 2.4 cm slide: 1.2 GB of RGB
    render(cfg, plan, 9000, 9000, 16, 16)  # warm up
    tracemalloc.start()
    try:
        render(cfg, plan, 9000, 9000, 240, 240)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 240 * 240 * 4 * 150  # ~150 float32 window-sized arrays at most


def test_tiled_path_matches_in_memory(cfg, tmp_path):
    """Writing tile by tile gives the same pixels, truth and classifier as in one piece."""
    small = replace(cfg, slide=replace(cfg.slide, tile_px=240, compression="zlib"))
    rec, data = write_slide(small, 9, tmp_path, "t", 480, 720, in_memory_limit_px=1)
    whole = generate_slide(small, 9, 480, 720)
    np.testing.assert_allclose(data["probs"], whole.probs, rtol=1e-5)
    np.testing.assert_array_equal(data["cancer"], whole.cancer_fraction)
    from lsr.slide import open_slide

    with open_slide(tmp_path / rec["ground_truth"]) as g:
        np.testing.assert_array_equal(g.read_level(0, 0, 0, 480, 720) > 0, whole.gt)
    with open_slide(tmp_path / rec["image"]) as im:
        np.testing.assert_array_equal(im.read_level(0, 0, 0, 480, 720), whole.rgb)
    rgb, _ = slide_arrays(small, 9, 480, 720)
    np.testing.assert_array_equal(np.asarray(rgb[100:300, 200:500]), whole.rgb[100:300, 200:500])


def test_classifier_block_dice_near_paper(cfg):
    """Block-level DICE of the simulated classifier on fresh slides sits near 0.73."""
    probs, fracs = [], []
    for seed in (300, 301, 302, 303, 304):
        s = generate_slide(cfg, seed)
        ok = np.isfinite(s.probs)
        probs.append(s.probs[ok])
        fracs.append(s.cancer_fraction[ok])
    d = block_dice(
        np.concatenate(probs), np.concatenate(fracs), cfg.classifier.block_truth_fraction
    )
    assert 0.6 <= d <= 0.86, d


def test_classifier_uses_the_image_not_the_truth(cfg):
    """Same image, different ground truth -> same probabilities (the truth is never read)."""
    s = generate_slide(cfg, 8, 360, 360)
    from lsr.synthetic_classifier import block_features, classify

    feats = block_features(s.cells, cfg)
    np.testing.assert_allclose(feats, s.features)
    p = classify(feats, cfg.classifier, 8)
    np.testing.assert_allclose(np.where(np.isfinite(s.probs), p, np.nan), s.probs, rtol=1e-6)


def test_block_dice_and_logistic_fit():
    assert block_dice(np.array([0.9, 0.1, 0.8]), np.array([0.7, 0.0, 0.2]), 0.5) == pytest.approx(
        2 * 1 / (2 + 1)
    )
    assert block_dice(np.zeros(3), np.zeros(3), 0.5) == 1.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4000))
    true_w, true_b = np.array([2.0, -1.0, 0.5, 0.0]), 0.3
    y = rng.random(4000) < 1 / (1 + np.exp(-(true_w @ x + true_b)))
    w, b = fit_weights(x, y, l2=0.0)
    np.testing.assert_allclose(w, true_w, atol=0.25)
    assert b == pytest.approx(true_b, abs=0.2)


def test_expert_rounding_and_sampling():
    from lsr.synthetic_config import ExpertConfig

    ec = ExpertConfig(bias=0.0, noise_sd=0.03, relative_noise_sd=0.1)
    rng = np.random.default_rng(1)
    t = rng.random(500)
    est = human_estimates(t, ec, rng)
    assert np.all((est >= 0) & (est <= 1))
    coarse = est[est >= ec.fine_below]
    np.testing.assert_allclose(coarse / 0.05, np.round(coarse / 0.05), atol=1e-9)
    fine = est[est < ec.fine_below]
    np.testing.assert_allclose(fine / 0.01, np.round(fine / 0.01), atol=1e-9)
    assert abs(float(np.mean(est - t))) < 0.02  # unbiased when bias = 0
    z = np.repeat(np.arange(10), [3, 50, 50, 50, 50, 50, 50, 50, 50, 0])
    idx = sample_blocks(z, ec, rng)
    counts = np.bincount(z[idx], minlength=10)
    assert counts[0] == 3 and counts[9] == 0
    assert np.all((counts[1:9] >= 10) & (counts[1:9] <= 12))
    assert len(set(idx.tolist())) == idx.size


def test_true_table_and_error():
    rng = np.random.default_rng(2)
    z = rng.integers(0, 9, 400)  # bin 9 empty
    frac = np.clip(z / 10 + rng.normal(0, 0.05, 400), 0, 1)
    truth = true_table(z, frac)
    for b in range(9):
        assert truth.eta[b, 0] == pytest.approx(frac[z == b].mean())
        assert truth.rho[b, 0] == pytest.approx(frac[z == b].std())
    assert 9 in truth.flagged
    shifted = CountTable(truth.eta + np.array([[0.01, -0.01]]), truth.rho, flagged=truth.flagged)
    err = table_error(shifted, truth)
    assert err["eta_mae"] == pytest.approx(0.01)
    assert err["n_bins"] == 9 and err["eta_error"][9] is None


@pytest.mark.filterwarnings("ignore:count table")  # tiny data set: some bins are empty
def test_dataset_manifest_and_tables(cfg, tmp_path):
    small = replace(
        cfg,
        slide=replace(cfg.slide, width_px=600, height_px=600, patch_px=360),
        expert=replace(cfg.expert, min_tissue=0.0),
    )
    m = generate_dataset(small, 1, tmp_path, n_slides=3, n_test_patches=2, workers=1)
    assert len(m["train"]) == 3 and len(m["test"]) == 2
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["seed"] == 1 and on_disk["config"]["scale"]["block_px"] == 120
    assert config_from_dict(on_disk["config"]) == small  # the manifest reproduces the config
    for f in ("table_expert.json", "table_expert.csv", "table_true.json", "table_true.csv"):
        assert (tmp_path / f).exists()
    CountTable.from_json(tmp_path / "table_expert.json")
    assert 0.0 <= m["classifier"]["block_dice_train"] <= 1.0
    assert m["tables"]["expert_error"]["eta_mae"] is not None
    for rec in m["train"] + m["test"]:
        folder = tmp_path / ("train" if rec["name"].startswith("slide") else "test")
        assert (folder / rec["image"]).exists() and (folder / rec["grid"]).exists()


def test_paper_scale_smoke():
    cfg = load_config("paper_scale")
    assert cfg.scale.block_px == 240 and cfg.band_px == 240
    rgb, gt, probs = generate_patch(cfg, 3, size=480)
    assert rgb.shape == (480, 480, 3) and gt.shape == (480, 480) and probs.shape == (2, 2)


def test_every_shipped_config_loads():
    names = ("default", "paper_scale", "ductal_nested", "lobular_single_file", "stain_batch",
             "noisy_classifier", "noisier_classifier")  # fmt: skip
    for name in names:
        path = shipped_config(name)
        assert path is not None, name
        assert load_config(path).name == name
    assert load_config("default") == SyntheticConfig()


def test_a_folder_given_as_the_config_says_the_output_goes_after_o(tmp_path):
    """`lsr synth .` (for `lsr synth -o .`) said "config file not found" of a folder."""
    from lsr.synthetic_config import shipped_names

    with pytest.raises(LsrInputError) as err:
        load_config(tmp_path)
    assert str(tmp_path) in str(err.value) and "is a folder, not a config" in str(err.value)
    assert "goes after -o" in str(err.value) and "paper_scale" in shipped_names()


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tumour]\nnest_size = 3\n")
    with pytest.raises(LsrInputError, match=r"bad\.toml.*tumour\.nest_size.*unknown key"):
        load_config(bad)
    bad.write_text("[scale]\nblock_px = 'big'\n")
    with pytest.raises(LsrInputError, match=r"scale\.block_px.*integer"):
        load_config(bad)
    bad.write_text("[scale]\nblock_px = 100\n")  # downsample 4 does not divide 100... it does
    assert load_config(bad).scale.block_px == 100
    bad.write_text("[scale]\nblock_px = 122\n")
    with pytest.raises(LsrInputError, match=r"classifier\.downsample"):
        load_config(bad)
    bad.write_text("[tumour]\nfraction = [0.5, 0.2]\n")
    with pytest.raises(LsrInputError, match=r"tumour\.fraction"):
        load_config(bad)
    bad.write_text("scale = [")
    with pytest.raises(LsrInputError, match="not valid TOML"):
        load_config(bad)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"scale": {"working_mpp": 4.17, "block_px": 240}}))
    assert load_config(js).scale.block_px == 240
    js.write_text(json.dumps({"stain": {"eosin_vector": [1, 2]}}))
    with pytest.raises(LsrInputError, match=r"stain\.eosin_vector.*3 values"):
        load_config(js)
    with pytest.raises(LsrInputError, match="not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.filterwarnings("ignore:count table")  # tiny data set: some bins are empty
def test_cli_synth_and_evaluate(tmp_path):
    from typer.testing import CliRunner

    from lsr.cli import _register, app

    _register()
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        "[slide]\nwidth_px = 360\nheight_px = 360\npatch_px = 360\n[expert]\nmin_tissue = 0.0\n"
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["synth", str(cfg), "--seed", "2", "-o", str(out), "--n-slides", "2", "--n-test", "1",
              "-j", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "block DICE" in res.output and "expert table error" in res.output
    gt = out / "test" / "patch_000_gt.tif"
    pred = tmp_path / "patch_000_pred.npy"
    from lsr.cli.evaluate import read_mask

    g = read_mask(gt)
    np.save(pred, g)
    res = CliRunner().invoke(
        app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "--band", "120", "--json",
              str(tmp_path / "s.json")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["iou"] == 1.0 and scores["n_patches"] == 1


def test_dataset_needs_a_training_slide(cfg, tmp_path):
    from lsr.synthetic import generate_dataset

    for n_slides, n_test in ((0, 1), (-1, 1), (1, -1)):
        with pytest.raises(LsrInputError, match="at least 1 training slide"):
            generate_dataset(cfg, 0, tmp_path / "d", n_slides=n_slides, n_test_patches=n_test)
    assert not (tmp_path / "d").exists()


@pytest.fixture
def tiny(cfg) -> SyntheticConfig:
    """Slides of 2x2 blocks and patches of one block: a data set in well under a second."""
    return replace(
        cfg,
        slide=replace(cfg.slide, width_px=240, height_px=240, patch_px=120),
        expert=replace(cfg.expert, min_tissue=0.0),
    )


def _files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.filterwarnings("ignore:count table")
def test_synth_refuses_a_folder_of_someone_elses(tmp_path, capsys):
    """A non-empty folder that is no lsr synth data set is never written to, --overwrite or
    not: one error names the folder and what is in the way."""
    from lsr.cli import main

    out = tmp_path / "s_user"
    out.mkdir()
    (out / "table_expert.csv").write_text("my edited expert table\n")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[slide]\nwidth_px = 240\nheight_px = 240\npatch_px = 120\n")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as exc:
            main(["synth", str(cfg), "--n-slides", "1", "--n-test", "1", "-j", "1", "-o",
                  str(out), *extra])  # fmt: skip
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"error: {out}: " in err and "table_expert.csv" in err and "Traceback" not in err
        assert (out / "table_expert.csv").read_text() == "my edited expert table\n"
        assert _files(out) == {"table_expert.csv"}
    (out / "file").write_text("x")
    with pytest.raises(LsrInputError, match="is a file"):
        generate_dataset(load_config("default"), 0, out / "file", n_slides=1, n_test_patches=0)


@pytest.mark.filterwarnings("ignore:count table")
def test_synth_replaces_a_data_set_only_with_overwrite(tiny, tmp_path):
    """A rerun into an earlier data set needs overwrite; then none of the old slides stay
    (a smaller set must not leave slide_001 for lsr evaluate), but the user's files do."""
    out = tmp_path / "d"
    generate_dataset(tiny, 0, out, n_slides=2, n_test_patches=2, workers=1)
    assert {"train/slide_001.tif", "test/patch_001_grid.json"} <= _files(out)
    (out / "notes.txt").write_text("mine")
    (out / "train" / "slide_000_notes.txt").write_text("mine too")
    stage = out / "test" / ".lsr-pyramid-k1ll3d"  # a killed TIFF write's staging folder
    stage.mkdir()
    (stage / "1.npy").write_bytes(b"level 1")
    before = (out / "manifest.json").read_text()
    with pytest.raises(LsrInputError, match=r"holds an lsr synth data set.*--overwrite") as exc:
        generate_dataset(tiny, 5, out, n_slides=1, n_test_patches=1, workers=1)
    assert exc.value.path == str(out)
    assert (out / "manifest.json").read_text() == before
    m = generate_dataset(tiny, 5, out, n_slides=1, n_test_patches=1, workers=1, overwrite=True)
    assert m["seed"] == 5 and len(m["train"]) == 1
    ours = {f"{d}/{n}_000{s}" for d, n in (("train", "slide"), ("test", "patch"))
            for s in (".tif", "_gt.tif", "_grid.npy", "_grid.json")}  # fmt: skip
    tables = {f"table_{k}.{e}" for k in ("expert", "true") for e in ("json", "csv")}
    kept = {"notes.txt", "train/slide_000_notes.txt"}
    assert _files(out) == ours | tables | kept | {"manifest.json"}
    assert (out / "notes.txt").read_text() == "mine" and not stage.exists()


@pytest.mark.filterwarnings("ignore:count table")
def test_interrupted_synth_leaves_a_clear_sign(tiny, tmp_path, monkeypatch):
    """Overwriting deletes the old manifest first and the new one comes last, so a crash
    half-way leaves a marker and no manifest, never a manifest beside a mixed set; the
    next run needs overwrite and cleans up, temporary files included."""
    import lsr.synthetic as syn

    out = tmp_path / "d"
    generate_dataset(tiny, 0, out, n_slides=2, n_test_patches=1, workers=1)
    real, calls = syn._write_job, []

    def crash_on_second(job):
        calls.append(job)
        if len(calls) == 2:
            (job[2] / ".slide_001.tmp-0123456789ab.tif").write_bytes(b"half")  # a killed write
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(syn, "_write_job", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tiny, 5, out, n_slides=2, n_test_patches=1, workers=1, overwrite=True)
    assert not (out / "manifest.json").exists()
    assert json.loads((out / "synth_unfinished.json").read_text())["unfinished"] is True
    assert not (out / "train" / "slide_001.tif").exists()  # the old set's slide is gone
    monkeypatch.setattr(syn, "_write_job", real)
    with pytest.raises(LsrInputError, match="unfinished lsr synth data set"):
        generate_dataset(tiny, 5, out, n_slides=1, n_test_patches=0, workers=1)
    generate_dataset(tiny, 5, out, n_slides=1, n_test_patches=0, workers=1, overwrite=True)
    assert _files(out) == {
        "manifest.json", "table_expert.json", "table_expert.csv", "table_true.json",
        "table_true.csv", "train/slide_000.tif", "train/slide_000_gt.tif",
        "train/slide_000_grid.npy", "train/slide_000_grid.json",
    }  # fmt: skip
    assert not (out / "test").exists()


def test_bad_counts_name_the_config_key_or_the_flag(tmp_path):
    from typer.testing import CliRunner

    from lsr.cli import _register, app

    neg = tmp_path / "neg.toml"
    neg.write_text("[slide]\nn_slides = -3\n")
    with pytest.raises(LsrInputError, match=r"neg\.toml, key 'slide\.n_slides': .*got -3"):
        load_config(neg)
    neg.write_text("[slide]\nn_test_patches = -1\n")
    with pytest.raises(LsrInputError, match=r"neg\.toml, key 'slide\.n_test_patches'"):
        load_config(neg)
    _register()
    for flag, value in (("--n-slides", "0"), ("--n-test", "-1")):
        out = tmp_path / "o"
        res = CliRunner().invoke(app, ["synth", "default", flag, value, "-o", str(out)])
        assert res.exit_code == 2 and flag in res.output, res.output
        assert not out.exists()


def test_a_folder_holding_only_a_file_browsers_clutter_counts_as_empty(tmp_path):
    """macOS and Windows leave .DS_Store / Thumbs.db in folders a user merely opened: the
    folder was refused as 'not empty'."""
    from lsr.synthetic import check_out_dir

    out = tmp_path / "new"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (out / "Thumbs.db").write_bytes(b"\xd0\xcf")
    assert check_out_dir(out) is None
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LsrInputError, match=r"in the way: notes\.txt\. Choose"):
        check_out_dir(out)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_pool_worker_ends_when_its_parent_is_killed(tmp_path):
    """lsr synth -j 2 killed by SIGKILL/SIGTERM left its workers to init: they wrote more
    slides into the folder, then waited forever. The pool's initializer now ends them."""
    import signal
    import subprocess
    import sys
    import time

    child = (
        "import os, time; from lsr.synthetic import _exit_with_parent; "
        "_exit_with_parent(os.getppid(), 0.05); print('watching', flush=True); time.sleep(60)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]  # either order
    pid = int(next(ln for ln in lines if ln.isdigit()))
    assert "watching" in lines, lines

    def running() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status  # a zombie has exited (nobody reaped it yet)

    try:
        assert running()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running()
