"""``lsr demo --quick`` end to end: every output file, consistent numbers, resumable."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import shapely.geometry

from lsr.metrics import pooled_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run(
        [sys.executable, "-m", "lsr", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout, res.stderr


def test_demo_writes_every_file(demo_out):
    out, stdout, _ = demo_out
    for name in ("results.json", "results.md", "fig4.png", "fig3.png", "table1.md",
                 "calibration.md"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
        assert str(out / name) in stdout.replace("\n", "")  # the demo says where files are
    assert (out / "fig4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"low_res", "intra", "inter", "intra_inter"}
    for row in res["rows"].values():
        for key in ("masked_iou", "masked_dice", "iou", "dice"):
            assert 0.0 <= row[key] <= 1.0
    assert res["seed"] == 0 and "torch" in res["versions"] and res["config"]["losses"]
    md = (out / "results.md").read_text()
    assert "0.5722" in md and "Intra+inter-instance" in md  # paper numbers beside ours


def test_demo_low_res_row_matches_metrics_on_its_data(demo_out):
    """Recompute the low-resolution row from the generated files with lsr.metrics."""
    from lsr.baseline import low_res_mask
    from lsr.grid import load_grid
    from lsr.slide import open_slide

    out, _, _ = demo_out
    res = json.loads((out / "results.json").read_text())
    man = json.loads((out / "data" / "seed0" / "manifest.json").read_text())
    preds, gts = [], []
    for p in man["test"]:
        with open_slide(out / "data" / "seed0" / "test" / p["ground_truth"]) as s:
            gt = s.read_level(0, 0, 0, *s.shape)
        gt = np.asarray(gt)[..., 0] > 0 if np.ndim(gt) == 3 else np.asarray(gt) > 0
        grid = load_grid(out / "data" / "seed0" / "test" / p["grid"], block_px=man["block_px"])
        preds.append(low_res_mask(grid.probs, man["block_px"], gt.shape))
        gts.append(gt)
    ref = pooled_scores(preds, gts, band=res["band_px"])
    assert res["rows"]["low_res"]["masked_iou"] == pytest.approx(ref["masked_iou"])
    assert res["rows"]["low_res"]["dice"] == pytest.approx(ref["dice"])


def test_demo_geojson_opens_in_shapely(demo_out):
    out, _, _ = demo_out
    files = sorted((out / "geojson").glob("*.geojson"))
    res = json.loads((out / "results.json").read_text())
    assert len(files) == res["n_test_patches"]
    names = set()
    for path in files:
        fc = json.loads(path.read_text())
        for f in fc["features"]:  # empty boundaries are left out (QuPath cannot show them)
            assert f["properties"]["objectType"] == "annotation"
            assert shapely.geometry.shape(f["geometry"]).is_valid
            names.add(f["properties"]["classification"]["name"])
    assert {"Tumor", "Low-resolution model"} <= names


def test_demo_names_its_empty_boundaries_once(demo_out):
    """An empty boundary is left out of a patch's GeoJSON; the demo said so once per model,
    naming no patch (Python shows a message once), or, naming them, once per patch."""
    import re

    from lsr.geojson import DEFAULT_NAMES

    out, _, stderr = demo_out
    files = sorted((out / "geojson").glob("*.geojson"))
    classes = [
        {f["properties"]["classification"]["name"] for f in json.loads(p.read_text())["features"]}
        for p in files
    ]
    missing = {k: sum(name not in c for c in classes) for k, name in DEFAULT_NAMES.items()}
    lines = [ln for ln in stderr.splitlines() if "empty boundar" in ln]
    said = dict.fromkeys(missing, 0)
    if lines:
        assert len(lines) == 1 and lines[0].startswith(f"warning: {out / 'geojson'}: ")
        for k, n, total in re.findall(r"(\w+) in (\d+) of (\d+) patches", lines[0]):
            assert int(total) == len(files)
            said[k] = int(n)
    res = json.loads((out / "results.json").read_text())
    for k in [*res["rows"], "ground_truth"]:
        assert said[k] == missing[k], (k, lines)


def test_demo_rerun_reuses_finished_work(demo_out):
    out, _, _ = demo_out
    res = subprocess.run(
        [sys.executable, "-m", "lsr", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "reusing" in res.stdout and "training on" not in res.stdout


def test_demo_config_errors_come_before_any_work(tmp_path):
    from lsr.demo import DemoConfig, run_demo
    from lsr.errors import LsrInputError

    def cfg_file(text: str):
        path = tmp_path / "demo.toml"
        path.write_text(text)
        return path

    ii_first = 'losses = ["intra_inter", "intra"]\n[per_loss.intra_inter]\n'
    ii_second = 'losses = ["intra", "intra_inter"]\n[per_loss.intra_inter]\n'
    cases = {
        'n_train_slides = "x"': "n_train_slides must be a whole number",
        'losses = ["intra", "foo"]': "losses must be distinct names",
        'losses = "intra"': "losses must be a list of names, e.g. [\"intra\"], got 'intra'",
        'losses = ["intra"]\n[per_loss.inter]\nlr = 0.1': "per_loss names losses",
        'losses = ["intra", "inter"]\n[per_loss.inter]\ndistance = "l7"': "(training inter)",
        f"{ii_first}init_from = 'intra'": "init_from of intra_inter must name a loss trained "
        "before it (none is)",
        f"{ii_second}init_from = 'inter'": "trained before it (intra), got 'inter'",
    }
    for text, message in cases.items():
        with pytest.raises(LsrInputError, match=re.escape(message)) as err:
            DemoConfig.load(cfg_file(text))
        assert "demo.toml" in str(err.value)
    with pytest.raises(LsrInputError, match="no seeds"):
        run_demo(tmp_path / "out", config=DemoConfig.load(None, quick=True), seeds=[])
    assert not (tmp_path / "out").exists()


def test_demo_rerun_restarts_a_run_that_stopped_before_its_first_checkpoint(demo_out):
    """A run folder with run.json but no checkpoint (the attempt died early) is trained
    again, not refused as 'another run' (lsr train refuses to mix two runs in a folder)."""
    import shutil

    out, _, _ = demo_out
    run = out / "runs" / "seed0" / "intra"
    shutil.rmtree(run / "checkpoints")
    (run / "latest.json").unlink()
    state = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**state, "status": "failed", "step": 0}))
    res = subprocess.run(
        [sys.executable, "-m", "lsr", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("training on") == 1 and "intra: training on" in res.stdout
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_demo_init_from_names_the_same_seeds_earlier_run(tmp_path, monkeypatch):
    """``per_loss.X.init_from = "intra"`` starts X from this seed's intra run folder."""
    import types

    import lsr.train
    from lsr.demo import DemoConfig, train_loss

    seen = {}

    def fake_train(cfg, callbacks=()):
        seen["cfg"] = cfg
        return types.SimpleNamespace(status="completed", ok=True, failure="")

    monkeypatch.setattr(lsr.train, "train", fake_train)
    cfg = DemoConfig(losses=("intra", "intra_inter"),
                     per_loss={"intra_inter": {"init_from": "intra", "lr": 1e-3}})  # fmt: skip
    cfg.check()
    manifest = {"train": [], "tables": {"expert": "t.json"}, "block_px": 120,
                "working_mpp": 8.33}  # fmt: skip
    train_loss(cfg, "intra_inter", 7, manifest, tmp_path, lambda msg: None)
    assert seen["cfg"].init_from == str(tmp_path / "runs" / "seed7" / "intra")
    assert seen["cfg"].lr == 1e-3
    train_loss(cfg, "intra", 7, manifest, tmp_path, lambda msg: None)
    assert seen["cfg"].init_from is None


def test_demo_progress_goes_quiet_when_its_reader_goes_away(tmp_path):
    """`lsr demo | head`: a closed stdout must not end a run of hours mid-way."""
    done = tmp_path / "done"
    code = (
        "from lsr.demo import _print\n"
        "for i in range(2000): _print(f'step {i} ' + 'x' * 60)\n"
        f"open({str(done)!r}, 'w').write('ok')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert done.read_text() == "ok" and b"BrokenPipe" not in err


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_paired_differences_are_strict_json_and_match_numpy(n_seeds):
    """One seed: no standard error (null, shown '–'), never NaN, which strict JSON readers
    (jq, JavaScript) refuse; several: the paired SE is std(d, ddof=1) / sqrt(n)."""
    from lsr.demo import aggregate, results_markdown
    from lsr.metrics import METRICS

    rng = np.random.default_rng(n_seeds)
    per_seed = {
        s: {"rows": {r: {m: float(rng.uniform(0.3, 0.7)) for m in METRICS}
                     for r in ("low_res", "intra", "intra_inter")}}
        for s in range(n_seeds)
    }  # fmt: skip
    agg = aggregate(per_seed)
    text = json.dumps(agg, allow_nan=False)  # raises on NaN
    d = agg["paired_differences"]["intra_inter - intra"]
    rows = [per_seed[s]["rows"] for s in range(n_seeds)]
    want = np.array([r["intra_inter"]["masked_iou"] - r["intra"]["masked_iou"] for r in rows])
    assert d["masked_iou_diff"] == pytest.approx(want.mean())
    if n_seeds == 1:
        assert d["paired_se"] is None and "null" in text
    else:
        assert d["paired_se"] == pytest.approx(want.std(ddof=1) / np.sqrt(n_seeds))
    md = results_markdown({**agg, "seeds": list(range(n_seeds)), "band_px": 120,
                           "n_test_patches": 10, "config": {"synthetic": "default"}})  # fmt: skip
    line = next(ln for ln in md.splitlines() if ln.startswith("| intra_inter - intra |"))
    assert line.endswith("| – |") == (n_seeds == 1) and "nan" not in md


def test_a_data_folder_of_other_files_names_the_way_out_for_lsr_demo(tmp_path):
    """An earlier version's interrupted demo (or anything else) in demo-out/data/seed0 was
    refused with lsr synth's advice to pass --overwrite, which lsr demo does not have."""
    from lsr.demo import DemoConfig, make_data
    from lsr.errors import LsrInputError

    data = tmp_path / "data" / "seed0"
    (data / "train").mkdir(parents=True)
    (data / "train" / "slide_000.tif").write_bytes(b"half a slide")
    with pytest.raises(LsrInputError, match="delete the folder and run lsr demo again") as err:
        make_data(DemoConfig.load(None, quick=True), 0, tmp_path, print)
    assert "--overwrite" not in str(err.value) and str(data) in str(err.value)
    assert (data / "train" / "slide_000.tif").read_bytes() == b"half a slide"


def test_demo_refuses_a_folder_of_the_users_files_and_adopts_an_earlier_demos(tmp_path):
    """`lsr demo --out FOLDER` replaced the user's results.md and table1.md by name."""
    from lsr.demo import MARKER, DemoConfig, claim_out_dir, run_demo
    from lsr.errors import LsrInputError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("MY RESULTS")
    (mine / "table1.md").write_text("precious")
    with pytest.raises(LsrInputError, match=r"holds files lsr demo did not write \(results\.md"):
        run_demo(mine, config=DemoConfig.load(None, quick=True))
    assert (mine / "results.md").read_text() == "MY RESULTS"
    assert sorted(p.name for p in mine.iterdir()) == ["results.md", "table1.md"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(LsrInputError, match="is a file"):
        claim_out_dir(tmp_path / "file")

    old = tmp_path / "old"  # an earlier version's demo: no marker, its own results.json
    (old / "data" / "seed0").mkdir(parents=True)
    (old / "results.json").write_text(json.dumps({"rows": {}, "seeds": [0], "config": {}}))
    (old / "results.md").write_text("an earlier demo's table")
    claim_out_dir(old)
    interrupted = tmp_path / "interrupted"  # stopped while generating its data
    (interrupted / "data" / "seed0").mkdir(parents=True)
    claim_out_dir(interrupted)
    study = tmp_path / "study"  # the study's job folder: its own log beside the demo's files
    study.mkdir()
    (study / "job.log").write_text("")
    with pytest.raises(LsrInputError, match=r"job\.log"):
        claim_out_dir(study)
    claim_out_dir(study, also=("job.log",))
    claim_out_dir(tmp_path / "new")  # made
    hidden = tmp_path / "hidden"  # a file browser's or Jupyter's hidden entries: no harm
    (hidden / ".ipynb_checkpoints").mkdir(parents=True)
    (hidden / ".DS_Store").write_text("")
    claim_out_dir(hidden)
    mixed = tmp_path / "mixed"  # an earlier demo's folder, plus the user's notes: named alone
    (mixed / "data").mkdir(parents=True)
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(LsrInputError, match=r"did not write \(notes\.txt\)"):
        claim_out_dir(mixed)
    for folder in (old, interrupted, study, hidden, tmp_path / "new"):
        assert json.loads((folder / MARKER).read_text())["format"] == "napari-lsr demo"
        claim_out_dir(folder)  # marked: taken as it is
    (mine / MARKER).write_text("{")  # a damaged marker does not make the folder the demo's
    with pytest.raises(LsrInputError, match="did not write"):
        claim_out_dir(mine)


def test_a_damaged_data_manifest_names_the_file_and_the_way_out(tmp_path):
    from lsr.demo import DemoConfig, make_data
    from lsr.errors import LsrInputError

    manifest = tmp_path / "data" / "seed0" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"format": "napari-lsr synthetic benchmark", "tra')
    with pytest.raises(LsrInputError, match="cannot be read") as err:
        make_data(DemoConfig.load(None, quick=True), 0, tmp_path, print)
    assert str(manifest) in str(err.value) and f"delete {manifest.parent}" in str(err.value)


def test_demo_rerun_resumes_a_run_whose_run_json_is_damaged(demo_out):
    out, _, _ = demo_out
    run_json = out / "runs" / "seed0" / "inter" / "run.json"
    run_json.write_text(run_json.read_text()[:20])
    res = subprocess.run(
        [sys.executable, "-m", "lsr", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "inter: training on" in res.stdout
    assert json.loads(run_json.read_text())["status"] == "completed"
