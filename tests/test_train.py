"""Trainer: the three losses end to end (CLI), checkpoints, exact resume, cancel, failures."""

from __future__ import annotations

import json
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lsr.checkpoint import LATEST, MODEL, read_checkpoint
from lsr.errors import LsrInputError
from lsr.model import normalise_rgb
from lsr.train import (
    REPLACED_PREFIX,
    CollapseMonitor,
    MaskMonitor,
    StepEvent,
    TrainConfig,
    TrainResult,
    TrainWarning,
    check_final_network,
    crop_to_block,
    final_check_blocks,
    learning_rate,
    previous_run,
    replaced_runs,
    set_aside_run,
    train,
)

BLOCK = 32
WORKING_MPP = 4.17
CANCER_RGB = (90, 40, 140)
NORMAL_RGB = (230, 170, 200)


def make_image(
    seed: int, rows: int = 4, cols: int = 4, b: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """A slide whose blocks are z = 9 (70 % dark 'cancer' rows, paper Table 1) or z = 0 (none)."""
    rng = np.random.default_rng(seed)
    img = np.empty((rows * b, cols * b, 3), np.float64)
    img[:] = NORMAL_RGB
    z = np.where(np.arange(rows * cols).reshape(rows, cols) % 2 == 0, 0, 9)
    z = rng.permuted(z, axis=1)
    for r in range(rows):
        for c in range(cols):
            if z[r, c] == 9:
                img[r * b : r * b + round(0.7 * b), c * b : (c + 1) * b] = CANCER_RGB
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), z.astype(np.int16)


def make_files(folder: Path, n: int = 2) -> list[tuple[str, str]]:
    """``n`` pyramidal TIFF slides (4×4 blocks of 32 px) and their .npy bin grids."""
    from lsr.grid import BlockGrid, save_grid
    from lsr.slide import write_pyramidal_tiff

    pairs = []
    for i in range(n):
        img, z = make_image(i)
        slide, grid = folder / f"slide{i}.tif", folder / f"slide{i}.grid.npy"
        write_pyramidal_tiff(slide, img, mpp=WORKING_MPP, tile=64, compression="zlib")
        save_grid(BlockGrid.from_z(z, BLOCK), grid)
        pairs.append((str(slide), str(grid)))
    return pairs


def tiny_config(tmp_path: Path, pairs: list[tuple[str, str]], **kw: object) -> TrainConfig:
    from lsr.train import DataPair

    base = dict(
        data=[DataPair(s, g) for s, g in pairs],
        block_px=BLOCK,
        working_mpp=WORKING_MPP,
        width=4,
        depth=2,
        steps=6,
        checkpoint_every=3,
        device="cpu",
        out_dir=str(tmp_path / "run"),
        groups_per_batch=2,
        group_size=4,
        batch_size=8,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    return make_files(tmp_path_factory.mktemp("data"))


# ---------------------------------------------------------------------- configuration
def test_defaults_per_loss_and_overrides() -> None:
    from lsr.train import PAPER_DEFAULTS

    intra = TrainConfig(loss="intra").resolved()
    assert (intra.batch_size, intra.lr) == (30, 1e-3)  # the study's choice, not the paper's
    assert intra.variance_norm == "n"  # the study's: 1/n rewards confident pixels
    assert TrainConfig(loss="intra_inter").resolved().variance_norm == "n2"
    summed = TrainConfig(loss="intra_plus_inter").resolved()  # intra's lr and 1/n, 6 × 5 groups
    assert (summed.variance_norm, summed.lr) == ("n", 1e-3)
    assert (summed.groups_per_batch, summed.group_size, summed.batch_size) == (6, 5, 30)
    assert TrainConfig(loss="intra", variance_norm="n2").resolved().variance_norm == "n2"
    assert PAPER_DEFAULTS["intra"]["lr"] == 1e-5
    assert TrainConfig(loss="intra", lr=1e-5).resolved().lr == 1e-5
    for loss in ("inter", "intra_inter"):
        cfg = TrainConfig(loss=loss).resolved()  # the study's 6 × 5, not the paper's 2 × 15
        assert (cfg.groups_per_batch, cfg.group_size, cfg.lr, cfg.batch_size) == (6, 5, 1e-3, 30)
        assert (PAPER_DEFAULTS[loss]["groups_per_batch"], PAPER_DEFAULTS[loss]["group_size"]) == (
            2,
            15,
        )
    assert TrainConfig(loss="intra").rmsprop_alpha == 0.9
    custom = TrainConfig(loss="inter", lr=5e-4, group_size=4).resolved()
    assert (custom.lr, custom.group_size, custom.batch_size) == (5e-4, 4, 24)  # 6 groups × 4
    with pytest.raises(LsrInputError, match="group_size"):
        TrainConfig(loss="inter", group_size=1).resolved()
    with pytest.raises(LsrInputError, match="loss"):
        TrainConfig(loss="nope").resolved()
    with pytest.raises(LsrInputError, match="distance"):
        TrainConfig(distance="l2").resolved()


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ({"rho_floor": 2.0}, "rho_floor=2.0: a fraction in (0, 1)"),
        ({"rho_floor": 0.0}, "rho_floor=0.0: a fraction in (0, 1)"),
        ({"rho_floor": float("nan")}, "rho_floor=nan: a fraction"),
        ({"rmsprop_alpha": 2.0}, "rmsprop_alpha=2.0: RMSprop's smoothing constant"),
        ({"rmsprop_eps": 0.0}, "rmsprop_eps=0.0: must be > 0"),
        ({"grad_clip": -1.0}, "grad_clip=-1.0: a gradient norm ≥ 0"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1: must be ≥ 0"),
        ({"seed": -1}, "seed=-1: must be ≥ 0"),
        ({"lr": float("inf")}, "lr=inf: must be a finite number > 0"),
        ({"batch_size": 10**6}, "batch_size=1000000: 1,000,000 blocks per step; at most 65,536"),
        ({"depth": 8, "block_px": 240}, "depth=8: 8 halvings shrink the network's 240-px input"),
        (
            {"depth": 6, "block_px": 16, "context_px": 8},
            "depth=6: 6 halvings shrink the "
            "network's 32-px input below 1 px (at most 5 for block_px 16, context_px 8)",
        ),
    ],
)
def test_out_of_range_settings_fail_before_training(setting: dict, why: str) -> None:
    """Out of range, these train in silence or fail steps later as NaN: caught up front."""
    base = {k: v for k, v in setting.items() if k in ("block_px", "context_px")}
    with pytest.raises(LsrInputError, match=re.escape(f"bad setting {why}")):
        TrainConfig(loss="intra", **setting).resolved()
    assert TrainConfig(loss="intra", **base).resolved()  # the defaults pass
    assert TrainConfig(loss="intra", block_px=16, context_px=8, depth=5).resolved()  # 32 px → 1


def test_groups_past_any_memory_are_refused_before_a_process_starts() -> None:
    """The Trainer's 1e12 groups per batch only failed, in its process, as out of memory."""
    with pytest.raises(LsrInputError, match=r"groups_per_batch=10000000: 40,000,000 blocks"):
        TrainConfig(loss="inter", groups_per_batch=10**7, group_size=4).resolved()
    assert TrainConfig(loss="intra", groups_per_batch=10**7).resolved()  # intra has no groups


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ('slide = 5\ngrid = "a.npy"', r"data\[0\]: slide must be a file path, got 5"),
        ('slide = ["a.tif"]\ngrid = "a.npy"', "slide must be a file path, got \\['a.tif'\\]"),
        ('slide = "a.tif"\ngrd = "a.npy"', "unknown key\\(s\\) 'grd' \\(a data entry has slide"),
        (
            'slide = "a.tif"\ngrid = "a.npy"\nmpp = "x"',
            "mpp must be a number of µm per pixel, got 'x'",
        ),
        (
            'slide = "a.tif"\ngrid = "a.npy"\nmpp = -1',
            r"mpp must be µm per pixel in \(0, 100\], got -1",
        ),
        ('slide = "a.tif"\ngrid = "a.npy"\nmpp = 5000', r"in \(0, 100\], got 5000"),
        (
            'slide = "a.tif"\ngrid = "a.npy"\nmpp = true',
            "mpp must be a number of µm per pixel, got True",
        ),
        ('slide = "a.tif"\ngrid = "a.npy"\nmpp = "0.25"', "a number of µm per pixel, got '0.25'"),
    ],
)
def test_data_entries_with_wrong_types_or_keys_name_the_file(tmp_path: Path, entry, match):
    (tmp_path / "c.toml").write_text(f"[[data]]\n{entry}\n")
    with pytest.raises(LsrInputError, match=match) as err:
        TrainConfig.from_file(tmp_path / "c.toml")
    assert str(tmp_path / "c.toml") in str(err.value)


def test_config_files_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        'loss = "intra"\nsteps = 7\n[[data]]\nslide = "a.tif"\ngrid = "a.npy"\n'
    )
    cfg = TrainConfig.from_file(tmp_path / "run.toml")
    assert cfg.loss == "intra" and cfg.steps == 7
    assert cfg.data[0].slide == str(tmp_path / "a.tif")
    cfg.save(tmp_path / "run.json")
    again = TrainConfig.from_file(tmp_path / "run.json")
    assert again.data[0].grid == str(tmp_path / "a.npy") and again.steps == 7
    (tmp_path / "bad.toml").write_text("stepz = 3\n")
    with pytest.raises(LsrInputError, match="stepz"):
        TrainConfig.from_file(tmp_path / "bad.toml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(LsrInputError, match=r"broken\.json"):
        TrainConfig.from_file(tmp_path / "broken.json")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('steps = "2"', "steps = '2': expected an integer, got text"),
        ("width = 4.5", "width = 4.5: expected an integer, got a decimal number"),
        ("augment = 1", "augment = 1: expected true or false, got an integer"),
        ('lr = "1e-3"', "lr = '1e-3': expected a number or nothing"),
        ("table = 3", "table = 3: expected text, got an integer"),
    ],
)
def test_wrongly_typed_settings_name_key_type_and_file(
    line: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "run.toml").write_text(line + "\n")
    with pytest.raises(LsrInputError) as err:
        TrainConfig.from_file(tmp_path / "run.toml")
    assert str(err.value).startswith(f"{tmp_path / 'run.toml'}: bad setting {message}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("rho_floor = 1.5", "bad setting rho_floor=1.5: a fraction in (0, 1)"),
        ('loss = "intr"', "unknown loss 'intr'"),
        ("depth = 9", "bad setting depth=9: 9 halvings"),
        ('loss = "intra"\nbatch_size = -3', "bad setting batch_size=-3: must be ≥ 1"),
        ('loss = "inter"\ngroups_per_batch = 0', "bad setting groups_per_batch=0: must be ≥ 1"),
        (
            'loss = "intra_inter"\ngroups_per_batch = -1',
            "bad setting groups_per_batch=-1: must be ≥ 1",
        ),
    ],
)
def test_an_out_of_range_setting_from_a_file_names_the_file(
    line: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "run.toml").write_text(line + "\n")
    cfg = TrainConfig.from_file(tmp_path / "run.toml")
    with pytest.raises(LsrInputError) as err:
        cfg.resolved()
    assert str(err.value).startswith(f"{tmp_path / 'run.toml'}: {message}")


def test_a_bad_value_given_after_the_file_is_not_blamed_on_it(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("rho_floor = 1.5\nsteps = 5\n")
    cfg = TrainConfig.from_file(tmp_path / "run.toml")
    cfg.rho_floor = 0.01  # a command-line flag fixes the file's value
    assert cfg.resolved().rho_floor == 0.01
    cfg.steps = 0  # and one replaces a good value with a bad one
    with pytest.raises(LsrInputError) as err:
        cfg.resolved()
    assert str(err.value) == "bad setting steps=0: must be ≥ 1"  # not the file's
    assert "_from_file" not in cfg.to_dict()  # never saved


def test_whole_numbers_are_taken_and_types_are_checked_on_resolve() -> None:
    cfg = TrainConfig.from_dict({"steps": 300.0, "grad_clip": 1, "prior": [0.3, 0.7]})
    assert cfg.steps == 300 and isinstance(cfg.steps, int)
    assert cfg.grad_clip == 1.0 and isinstance(cfg.grad_clip, float)
    with pytest.raises(LsrInputError, match="bad setting steps = '2': expected an integer"):
        TrainConfig(steps="2").resolved()  # type: ignore[arg-type]
    with pytest.raises(LsrInputError, match="prior = 5: expected text or a list"):
        TrainConfig(prior=5).resolved()  # type: ignore[arg-type]


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(lr=1.0, steps=10, warmup_steps=2, lr_schedule="cosine").resolved()
    lrs = [learning_rate(cfg, s) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and all(np.diff(lrs[2:]) <= 0)


def test_crop_to_block() -> None:
    x = torch.arange(2 * 3 * 10 * 10.0).reshape(2, 3, 10, 10)
    assert torch.equal(crop_to_block(x, 2), x[..., 2:8, 2:8])
    assert crop_to_block(x, 0) is x


def test_collapse_monitor() -> None:
    mon = CollapseMonitor(window=3, threshold=1e-4)
    assert not mon.update([0.2, 0.2]) and not mon.update([0.2, 0.2])
    assert mon.update([0.2, 0.2])  # window full, zero spread
    assert not mon.update([0.2, 0.5])  # varies again
    other = CollapseMonitor(3, 1e-4)
    other.load_state_dict(mon.state_dict())
    assert other.spread == pytest.approx(mon.spread)
    # Constant within each step but drifting between steps (the paper-printed collapse):
    # collapsed, although the values pooled over steps vary.
    drift = CollapseMonitor(3, 1e-4)
    for level in (0.3, 0.5, 0.7):
        flagged = drift.update([level] * 4)
    assert flagged and drift.spread == 0.0
    assert np.std([0.3, 0.5, 0.7]) > 0.1
    # One block per step: the spread is taken across steps instead (never a false alarm).
    single = CollapseMonitor(2, 1e-4)
    single.update([0.2])
    assert not single.update([0.6]) and single.spread == pytest.approx(0.2)


def test_mask_monitor_flags_a_class_missing_from_the_mask() -> None:
    # Under-confident cancer: mean probability 30 % but never the argmax -> flagged (class 0).
    mon = MaskMonitor(window=2, ratio=0.1)
    assert not mon.update([0.3, 0.7], [0.0, 1.0])  # window not full yet
    assert mon.update([0.3, 0.7], [0.0, 1.0]) and mon.degenerate_class == 0
    assert "'cancer' has mean probability 30.0%" in mon.describe(["cancer", "other"])
    # Cancer everywhere: the non-cancer class vanishes from the mask.
    full = MaskMonitor(2, 0.1)
    full.update([0.7, 0.3], [1.0, 0.0])
    assert full.update([0.7, 0.3], [1.0, 0.0]) and full.degenerate_class == 1
    assert "every pixel is called 'cancer'" in full.describe(["cancer", "other"])
    # Healthy (argmax share close to the mean) and a class that is absent anyway: not flagged.
    ok = MaskMonitor(2, 0.1)
    ok.update([0.4, 0.6], [0.25, 0.75])
    assert not ok.update([0.01, 0.99], [0.0, 1.0])
    # The window averages: one degenerate step among healthy ones is not enough.
    mixed = MaskMonitor(3, 0.1)
    for hard in ([0.3, 0.7], [0.0, 1.0], [0.3, 0.7]):
        flagged = mixed.update([0.3, 0.7], hard)
    assert not flagged
    assert MaskMonitor(2, 0.0).update([0.3, 0.7], [0.0, 1.0]) is False  # ratio 0: off
    clone = MaskMonitor(2, 0.1)
    clone.load_state_dict(mon.state_dict())
    assert clone.degenerate_class == 0


# ---------------------------------------------------------------------- end to end
@pytest.mark.parametrize("loss", ["intra", "inter", "intra_inter", "intra_plus_inter"])
def test_cli_trains_each_loss_and_loss_decreases(
    loss: str, pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    from lsr.cli import main

    out = tmp_path / "out"
    args = ["train", "--loss", loss, "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        args += ["--slide", s, "--grid", g]
    args += ["--width", "4", "--depth", "2", "--steps", "10", "--checkpoint-every", "5"]
    args += ["--device", "cpu", "--out-dir", str(out), "--lr", "3e-3", "--no-augment"]
    args += ["--group-size", "4", "--batch-size", "8"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["step"] == 10
    losses = run["losses"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    latest = json.loads((out / LATEST).read_text())
    assert latest["step"] == 10
    ck = read_checkpoint(out)
    assert ck.metadata["loss"] == loss and ck.metadata["distance"] == "gaussian-nll"
    assert ck.metadata["table"]["eta"][9][0] == pytest.approx(0.7)
    assert (out / "checkpoints" / "step-000005").is_dir()

    # resume from the folder to a later step: continues from 10
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(out), "--steps", "12"])
    assert exc.value.code in (0, None)
    run2 = json.loads((out / "run.json").read_text())
    assert run2["step"] == 12 and run2["losses"][:10] == losses


def test_resume_is_exact(pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    straight = train(tiny_config(tmp_path / "a", pairs, steps=6, checkpoint_every=6))
    half = train(tiny_config(tmp_path / "b", pairs, steps=3, checkpoint_every=3))
    assert half.step == 3
    resumed = train(tiny_config(tmp_path / "b", pairs, steps=6, resume=str(tmp_path / "b/run")))
    assert resumed.step == 6 and resumed.losses == straight.losses
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    opt_a = read_checkpoint(straight.checkpoint).optimizer_state["state"]
    opt_b = read_checkpoint(resumed.checkpoint).optimizer_state["state"]
    for pid in opt_a:
        for key in opt_a[pid]:
            assert torch.equal(torch.as_tensor(opt_a[pid][key]), torch.as_tensor(opt_b[pid][key]))


def test_cancel_stops_within_one_step_and_checkpoints(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    class Stopper:
        def on_step(self, event: StepEvent) -> None:
            seen.append(event.step)
            assert event.loss == event.loss and event.blocks_per_s > 0 and event.eta_s >= 0
            if event.step == 2:
                cancel.set()

    result = train(
        tiny_config(tmp_path, pairs, steps=50, checkpoint_every=100), [Stopper()], cancel
    )
    assert result.status == "cancelled" and result.step == 2 and seen == [1, 2]
    assert read_checkpoint(tmp_path / "run").step == 2

    class StopReturn:
        def on_step(self, event: StepEvent) -> str | None:
            return "stop" if event.step == 1 else None

    result = train(tiny_config(tmp_path / "x", pairs, steps=50), [StopReturn()])
    assert result.status == "cancelled" and result.step == 1


def test_nan_loss_marks_run_failed(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lsr.train as lt

    real = lt.compute_loss

    def nan_at_step_3(cfg, probs, eta, rho, group):  # type: ignore[no-untyped-def]
        nan_at_step_3.calls += 1
        value = real(cfg, probs, eta, rho, group)
        return value * float("nan") if nan_at_step_3.calls == 3 else value

    nan_at_step_3.calls = 0
    monkeypatch.setattr(lt, "compute_loss", nan_at_step_3)
    with pytest.warns(lt.TrainWarning, match="nan"):
        result = train(tiny_config(tmp_path, pairs, steps=6, checkpoint_every=100))
    assert result.status == "failed" and "nan" in result.failure and result.step == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_collapse_marks_run_failed(pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    # A huge collapse threshold makes any run "collapsed": the flag reaches the result.
    cfg = tiny_config(tmp_path, pairs, steps=3, collapse_window=2, collapse_std=10.0)
    with warnings.catch_warnings(record=True) as caught:  # a degenerate mask may come too
        warnings.simplefilter("always")
        result = train(cfg)
    assert any("collapse" in str(w.message) for w in caught)
    assert result.status == "failed" and result.failure.startswith("collapsed")


def test_degenerate_mask_marks_run_failed(pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    # Start at 30 % cancer everywhere and barely move: the cancer mask at 0.5 stays empty.
    # (collapse_std 0 switches the collapse check off: a still network is collapsed as well)
    cfg = tiny_config(
        tmp_path, pairs, steps=3, collapse_window=2, collapse_std=0.0, prior=[0.3, 0.7], lr=1e-9
    )
    with pytest.warns(UserWarning, match="degenerate mask"):
        result = train(cfg)
    assert result.status == "failed" and result.failure.startswith("degenerate mask")
    assert "'cancer' has mean probability" in result.failure and "of pixels" in result.failure
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_table_with_a_low_top_bin_warns_but_trains(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    from lsr.counttable import CountTable

    table = CountTable.paper_table1()
    table.eta[0] = (0.60, 0.40)  # bin 0-20 % holds 60 % cancer, the top bin 70 %: consistent
    table.save(tmp_path / "ok.json")
    table.eta[9] = (0.30, 0.70)  # now the top bin holds 30 points less than bin 0-20 %
    table.save(tmp_path / "low_top.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = train(tiny_config(tmp_path, pairs, steps=1, table=str(tmp_path / "ok.json")))
    assert not any("top bin" in str(w.message) for w in caught)
    assert not any("top bin" in w for w in ok.warnings)
    want = r"count table: blocks of the classifier's top bin \(95–100%\) average 30.0%"
    with pytest.warns(UserWarning, match=want):
        result = train(
            tiny_config(tmp_path / "low", pairs, steps=1, table=str(tmp_path / "low_top.json"))
        )
    assert result.step == 1 and any("30 points below bin 0–20%" in w for w in result.warnings)


def test_unreliable_bins_the_blocks_use_are_warned(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """The slides use bins 0 and 9: a flagged bin 9 is warned about, a flagged bin 5 is not."""
    from lsr.counttable import CountTable

    table = CountTable.paper_table1()
    table.n = np.full(10, 12)
    table.n[5] = 1  # one estimate in a bin no block uses
    table.save(tmp_path / "unused.json")
    result = train(tiny_config(tmp_path, pairs, steps=1, table=str(tmp_path / "unused.json")))
    assert not any("unreliable" in w for w in result.warnings)
    table.n[9] = 1
    table.save(tmp_path / "used.json")
    with pytest.warns(UserWarning, match="unreliable bins"):
        result = train(
            tiny_config(tmp_path / "u", pairs, steps=1, table=str(tmp_path / "used.json"))
        )
    shaky = [w for w in result.warnings if "unreliable" in w]
    n9 = sum(int((make_image(i)[1] == 9).sum()) for i in range(len(pairs)))
    assert len(shaky) == 1 and f"bin 9 (95–100%, {n9} blocks): only 1 estimate" in shaky[0]
    assert "bin 5" not in shaky[0]


def test_context_margin_trains(pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, pairs, steps=2, context_px=8, loss="intra"))
    assert result.ok and np.isfinite(result.losses).all()


def test_bad_checkpoints_raise(pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    from lsr.model import load

    result = train(tiny_config(tmp_path, pairs, steps=1))
    model, meta = load(tmp_path / "run")
    assert not model.training and meta["loss"] == "intra_inter" and meta["step"] == 1
    x = torch.randn(1, 3, BLOCK, BLOCK)
    with torch.no_grad():
        result.model.eval()
        assert torch.allclose(model(x), result.model(x))
    weights = Path(result.checkpoint) / MODEL
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(LsrInputError, match="truncated"):
        load(tmp_path / "run")
    with pytest.raises(LsrInputError, match="truncated"):
        train(tiny_config(tmp_path, pairs, steps=2, resume=str(tmp_path / "run")))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoint.json").write_text('{"format": "something else"}')
    with pytest.raises(LsrInputError, match="not an lsr checkpoint"):
        load(foreign)
    with pytest.raises(LsrInputError):
        load(tmp_path / "nothing-here")


# ---------------------------------------------------------------------- output folder
def _fingerprint(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (to show nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_that_failed_before_its_first_checkpoint_is_not_offered_for_resume(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    failed = {"status": "failed", "failure": "slide0.tif: corrupt tile", "step": 0}
    (out / "run.json").write_text(json.dumps(failed))
    with pytest.raises(LsrInputError) as err:
        train(tiny_config(tmp_path, pairs, steps=1, loss="intra"))
    text = str(err.value)
    assert text.startswith(f"{out}: holds a run that ended before its first checkpoint")
    assert "(failed: slide0.tif: corrupt tile)" in text and "--resume" not in text
    assert train(tiny_config(tmp_path, pairs, steps=1, loss="intra", overwrite=True)).ok


def test_a_folder_holding_a_run_is_refused_unless_overwrite(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    first = train(tiny_config(tmp_path, pairs, steps=4, checkpoint_every=2, loss="intra"))
    out = tmp_path / "run"
    (out / "notes.txt").write_text("mine")
    before = _fingerprint(out)
    assert "checkpoints/step-000002/model.safetensors" in before
    with pytest.raises(LsrInputError, match=r"already holds a training run .*--overwrite") as err:
        train(tiny_config(tmp_path, pairs, steps=2, checkpoint_every=1, loss="inter"))
    assert str(out) in str(err.value)
    assert _fingerprint(out) == before  # nothing written, nothing pruned

    # --overwrite: the old run's checkpoints go first, so no mix of the two runs remains
    second = train(
        tiny_config(tmp_path, pairs, steps=3, checkpoint_every=1, loss="inter", overwrite=True)
    )
    assert second.ok and first.ok
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-000001", "step-000002", "step-000003"]
    for name in names:
        assert read_checkpoint(out / "checkpoints" / name).metadata["loss"] == "inter"
    assert json.loads((out / LATEST).read_text())["step"] == 3
    assert json.loads((out / "run.json").read_text())["step"] == 3
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LsrInputError, match="the output folder is a file"):
        train(tiny_config(tmp_path, pairs, steps=1, out_dir=str(tmp_path / "a-file")))
    assert (tmp_path / "a-file").read_text() == "x"


def test_cli_second_run_into_the_default_folder_is_refused(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from lsr.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["train", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        args += ["--slide", s, "--grid", g]
    args += ["--width", "4", "--depth", "2", "--steps", "2", "--device", "cpu"]
    args += ["--group-size", "4", "--groups-per-batch", "2"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    before = _fingerprint(tmp_path / "lsr-run")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--loss", "intra"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lsr-run: already holds a training run" in err and "--overwrite" in err
    assert _fingerprint(tmp_path / "lsr-run") == before
    with pytest.raises(SystemExit) as exc:
        main([*args, "--resume", "lsr-run", "--overwrite"])
    assert exc.value.code == 2
    assert "give only one of them" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--loss", "intra", "--overwrite"])
    assert exc.value.code in (0, None)
    assert read_checkpoint(tmp_path / "lsr-run").metadata["loss"] == "intra"


# ---------------------------------------------------------------------- data checks
@pytest.mark.parametrize("shape", [(2, 2), (7, 7)])
def test_a_grid_that_does_not_tile_its_slide_is_refused(
    shape: tuple[int, int], pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    from lsr.grid import BlockGrid, save_grid

    grid = tmp_path / "wrong_grid.npy"  # the slides are 4x4 blocks of 32 px
    save_grid(BlockGrid.from_z(np.zeros(shape, np.int16), BLOCK), grid)
    cfg = tiny_config(tmp_path, [(pairs[0][0], str(grid))], steps=1)
    with pytest.raises(LsrInputError, match=f"{shape[0]}x{shape[1]} blocks") as err:
        train(cfg)
    assert str(grid) in str(err.value) and pairs[0][0] in str(err.value)
    assert "needs 4 x 4 blocks" in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_missing_slide_fails_before_anything_is_written(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    train(tiny_config(tmp_path, pairs, steps=2, checkpoint_every=2))
    out = tmp_path / "run"
    before = _fingerprint(out)
    missing = [(str(tmp_path / "nope.tif"), pairs[0][1])]
    cfg = tiny_config(tmp_path, missing, steps=4, resume=str(out))  # continuing its own run
    with pytest.raises(LsrInputError, match=r"nope\.tif"):
        train(cfg)
    assert _fingerprint(out) == before  # run.json still says completed at step 2
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def _first_run(tmp_path: Path, pairs: list[tuple[str, str]]) -> tuple[Path, dict[str, bytes]]:
    """A finished run with two checkpoints and a file of the user's, and its fingerprint."""
    assert train(tiny_config(tmp_path, pairs, steps=4, checkpoint_every=2, loss="intra")).ok
    out = tmp_path / "run"
    (out / "notes.txt").write_text("mine")
    return out, _fingerprint(out)


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_before_a_checkpoint(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    out, before = _first_run(tmp_path, pairs)
    assert "checkpoints/step-000004/model.safetensors" in before
    cfg = tiny_config(tmp_path, pairs, steps=2, loss="inter", overwrite=True)
    back = f"wrote no checkpoint, .* is back in {re.escape(str(out))}"
    with (
        pytest.warns(TrainWarning, match=back),
        pytest.raises(LsrInputError, match="corrupt tile"),
    ):
        train(cfg, sources=broken_sources())
    assert _fingerprint(out) == before  # the old run, byte for byte; no folder left aside
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoints", "latest.json", "notes.txt", "run.json"]
    assert read_checkpoint(out).step == 4


def test_overwrite_puts_the_old_run_back_after_a_nan_loss_before_a_checkpoint(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lsr.train as lt

    out, before = _first_run(tmp_path, pairs)
    real = lt.compute_loss
    monkeypatch.setattr(lt, "compute_loss", lambda *a: real(*a) * float("nan"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_config(tmp_path, pairs, steps=4, loss="inter", overwrite=True))
    assert result.status == "failed" and "nan" in result.failure and not result.checkpoint
    said = [str(w.message) for w in caught]
    assert any("is back in" in m for m in said) and f"is back in {out}" in result.warnings[-1]
    assert _fingerprint(out) == before  # run.json is the old run's, not the failed one's


def test_overwrite_deletes_the_old_run_only_at_the_new_runs_first_checkpoint(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    out, _ = _first_run(tmp_path, pairs)
    seen: list[list[str]] = []

    class Look:
        def on_step(self, event: StepEvent) -> None:
            seen.append(sorted(p.name for p in out.iterdir()))

    cfg = tiny_config(tmp_path, pairs, steps=3, checkpoint_every=2, loss="inter", overwrite=True)
    assert train(cfg, [Look()]).ok
    # step 1: the old run waits aside; from step 2 (the first checkpoint) it is gone
    assert any(n.startswith(REPLACED_PREFIX) for n in seen[0])
    assert not any(n.startswith(REPLACED_PREFIX) for names in seen[2:] for n in names)
    assert not any(p.name.startswith(REPLACED_PREFIX) for p in out.iterdir())
    assert read_checkpoint(out).metadata["loss"] == "inter"


def test_a_stop_asked_while_the_slides_are_read_trains_nothing_and_writes_nothing(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """Ctrl-C (or the GUI's Cancel) during data setup: no step, no file, the old run intact."""
    out, before = _first_run(tmp_path, pairs)
    ended: list[TrainResult] = []

    class Asked:  # the GUI's STOP file, written while the slides were read
        def stop_requested(self) -> bool:
            return True

        def on_step(self, event: StepEvent) -> None:
            raise AssertionError("no step may run")

        def on_end(self, result: TrainResult) -> None:
            ended.append(result)

    cfg = tiny_config(tmp_path, pairs, steps=9, loss="inter", overwrite=True)
    result = train(cfg, [Asked()])
    assert result.status == "cancelled" and result.step == 0 and result.checkpoint == ""
    assert ended == [result]
    assert _fingerprint(out) == before and not replaced_runs(out)  # not even set aside

    cancel = threading.Event()
    cancel.set()  # the CLI's first Ctrl-C
    fresh = tiny_config(tmp_path / "fresh", pairs, steps=9)
    result = train(fresh, [], cancel)
    assert result.status == "cancelled" and result.step == 0
    assert not any(Path(fresh.out_dir).rglob("*"))  # a later run needs no --overwrite
    assert train(tiny_config(tmp_path / "fresh", pairs, steps=2)).ok

    resumed = tiny_config(tmp_path, pairs, steps=9, loss="intra", resume=str(out))
    result = train(resumed, [], cancel)  # a resume stopped at once keeps its checkpoint
    assert result.status == "cancelled" and result.step == 4
    assert result.checkpoint == str(read_checkpoint(out).path)
    assert _fingerprint(out) == before


def test_a_cancel_before_the_first_periodic_checkpoint_keeps_the_replaced_run(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    out, before = _first_run(tmp_path, pairs)

    class Stop:  # Ctrl-C seconds after a mistaken --overwrite
        def on_step(self, event: StepEvent) -> str:
            return "stop"

    cfg = tiny_config(tmp_path, pairs, steps=9, checkpoint_every=4, loss="inter", overwrite=True)
    with pytest.warns(TrainWarning, match="cancelled before the first periodic checkpoint"):
        result = train(cfg, [Stop()])
    assert result.status == "cancelled" and result.step == 1
    assert read_checkpoint(out).step == 1  # the new run's checkpoint, to resume from
    (aside,) = replaced_runs(out)
    assert str(aside) in result.warnings[-1]
    kept = {k.split("/", 1)[1]: v for k, v in _fingerprint(out).items() if k.startswith(aside.name)}
    assert kept == {k: v for k, v in before.items() if k != "notes.txt"}  # byte for byte
    assert (out / "notes.txt").read_text() == "mine"


def test_a_set_aside_run_holding_only_its_summary_is_removed_once_not_warned_forever(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """A killed ``--overwrite`` of a run that had no checkpoint leaves a ``replaced-run-*``
    with only that run's run.json: nothing to continue, so the next run removes it (saying
    so) instead of telling the user on every run to move it back. A set-aside run with a
    checkpoint (or anything else) stays, and is still warned about."""
    out = tmp_path / "run"
    summary_only = out / f"{REPLACED_PREFIX}20261202-120000-abc"
    summary_only.mkdir(parents=True)
    (summary_only / "run.json").write_text('{"status": "failed"}')
    (summary_only / "checkpoints").mkdir()  # emptied by the moves: no file in it
    with_ckpt = out / f"{REPLACED_PREFIX}20261202-130000-def"
    (with_ckpt / "checkpoints" / "step-000002").mkdir(parents=True)
    (with_ckpt / "checkpoints" / "step-000002" / "model.safetensors").write_bytes(b"x")
    (with_ckpt / "run.json").write_text('{"status": "cancelled"}')
    with pytest.warns(TrainWarning) as seen:
        assert train(tiny_config(tmp_path, pairs, steps=2, loss="intra")).ok
    said = [str(w.message) for w in seen]
    assert any(m.startswith(f"removed {summary_only}") for m in said)
    assert any(m.startswith(f"{with_ckpt}: a run that --overwrite set aside") for m in said)
    assert replaced_runs(out) == [with_ckpt] and not summary_only.exists()
    with pytest.warns(TrainWarning) as seen:  # the next run: only the one worth keeping
        assert train(tiny_config(tmp_path, pairs, steps=2, loss="intra", overwrite=True)).ok
    assert not any("removed" in str(w.message) for w in seen)
    assert sum(str(with_ckpt) in str(w.message) for w in seen) == 1


def test_overwrite_puts_the_old_run_back_even_when_run_json_cannot_be_written(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lsr.train as lt

    out, before = _first_run(tmp_path, pairs)
    real = lt._write_run_json

    def full_disk(folder: Path, data: dict) -> None:
        if data.get("status") == "failed":
            raise OSError(28, "No space left on device")
        real(folder, data)

    monkeypatch.setattr(lt, "_write_run_json", full_disk)
    cfg = tiny_config(tmp_path, pairs, steps=2, loss="inter", overwrite=True)
    with pytest.warns(TrainWarning, match="is back in"), pytest.raises(OSError, match="space"):
        train(cfg, sources=broken_sources())
    assert not replaced_runs(out)
    assert read_checkpoint(out).step == 4 and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "run.json").read_text()) == json.loads(before["run.json"])


def test_a_run_left_aside_by_a_killed_overwrite_is_named_and_kept(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    out, _ = _first_run(tmp_path, pairs)
    aside = set_aside_run(out)  # what a process killed before its first checkpoint leaves
    assert aside is not None and aside.parent == out and (aside / "latest.json").is_file()
    assert previous_run(out) == []
    cfg = tiny_config(tmp_path, pairs, steps=2, loss="inter", overwrite=True)
    with pytest.warns(TrainWarning, match=f"{re.escape(str(aside))}: a run that --overwrite"):
        assert train(cfg).ok
    assert read_checkpoint(aside).step == 4  # still whole, for the user to take back


class UnreadableSlide:
    """A slide whose pixels cannot be read (a corrupt tile found only when training)."""

    def read_working(self, y: int, x: int, h: int, w: int, working_mpp: float) -> np.ndarray:
        raise LsrInputError("cannot read region (corrupt tile?)", "broken.tif")


def broken_sources() -> list:
    from lsr.dataset import BlockSource
    from lsr.grid import BlockGrid

    z = np.zeros((2, 2), np.int16)
    return [BlockSource(UnreadableSlide(), BlockGrid.from_z(z, BLOCK), name="broken")]


def test_an_error_during_training_leaves_run_json_failed(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path, pairs, steps=2, loss="intra")
    with pytest.raises(LsrInputError, match="corrupt tile"):
        train(cfg, sources=broken_sources())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "broken.tif" in run["failure"]
    assert run["step"] == 0 and run["checkpoint"] == ""


def test_cli_ctrl_c_keeps_a_checkpoint_and_exits_130(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import signal

    from lsr.cli import main
    from lsr.cli.train import RichProgress

    real_on_step = RichProgress.on_step

    def ctrl_c_at_step_2(self: RichProgress, event: StepEvent) -> None:
        real_on_step(self, event)
        if event.step == 2:
            signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C

    monkeypatch.setattr(RichProgress, "on_step", ctrl_c_at_step_2)
    out = tmp_path / "out"
    args = ["train", "--loss", "intra", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        args += ["--slide", s, "--grid", g]
    args += ["--width", "4", "--depth", "2", "--steps", "50", "--checkpoint-every", "100"]
    args += ["--device", "cpu", "--out-dir", str(out), "--batch-size", "8"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 130
    assert json.loads((out / "run.json").read_text())["status"] == "cancelled"
    assert read_checkpoint(out).step == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"resume with: lsr train --resume {out} --steps 50" in err
    assert "Ctrl-C: stopping after the current step, with a checkpoint" in err  # said at once


def test_cli_ctrl_c_while_the_slides_are_read_stops_before_a_step_and_writes_nothing(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import signal

    import lsr.train
    from lsr.cli import main

    real_build = lsr.train.build_dataset

    def ctrl_c_while_reading(*args: object, **kw: object) -> object:
        signal.raise_signal(signal.SIGINT)
        return real_build(*args, **kw)

    monkeypatch.setattr(lsr.train, "build_dataset", ctrl_c_while_reading)
    out = tmp_path / "out"
    args = ["train", "--loss", "intra", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        args += ["--slide", s, "--grid", g]
    args += ["--width", "4", "--depth", "2", "--steps", "50", "--device", "cpu"]
    args += ["--out-dir", str(out), "--batch-size", "8"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 130
    assert not out.exists() or not any(out.iterdir())
    err = " ".join(capsys.readouterr().err.split())
    assert "Ctrl-C: stopping once the slides are read, before the first step" in err
    assert "cancelled at step 0" in err and "resume with" not in err

    monkeypatch.setattr(lsr.train, "build_dataset", real_build)
    with pytest.raises(SystemExit) as exc:  # a finished run, then resumed for more steps
        main([*args, "--steps", "2"])
    assert exc.value.code == 0
    monkeypatch.setattr(lsr.train, "build_dataset", ctrl_c_while_reading)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(out), "--steps", "9", "--device", "cpu"])
    assert exc.value.code == 130 and read_checkpoint(out).step == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"resume with: lsr train --resume {out}" in err and "--steps 0" not in err


def test_a_worker_error_arrives_as_its_own_one_line_message(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path, pairs, steps=2, loss="intra", num_workers=1)
    with pytest.raises(LsrInputError) as err:
        train(cfg, sources=broken_sources())
    assert str(err.value) == "broken.tif: cannot read region (corrupt tile?)"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["failure"] == "broken.tif: cannot read region (corrupt tile?)"


def test_cli_resume_with_slides_keeps_the_runs_settings_and_folder(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lsr.cli import main

    out = tmp_path / "run"
    train(tiny_config(tmp_path, pairs, steps=2, checkpoint_every=2, loss="intra", seed=3))
    monkeypatch.chdir(tmp_path)
    args = ["train", "--resume", str(out), "--steps", "4"]
    for s, g in reversed(pairs):  # the slides given again (here in another order)
        args += ["--slide", s, "--grid", g]
    with pytest.raises(SystemExit) as exc:
        main(args)  # no --width/--depth/--block-px: the checkpoint's are used
    assert exc.value.code in (0, None)
    assert not (tmp_path / "lsr-run").exists()  # the run's own folder, not the default
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["step"] == 4
    meta = read_checkpoint(out).metadata
    assert meta["seed"] == 3 and meta["config"]["checkpoint_every"] == 2
    assert [d["slide"] for d in meta["config"]["data"]] == [s for s, _ in reversed(pairs)]


def test_cli_resume_from_another_folder_finds_data_given_by_relative_paths(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slides, grids and the folder given relative to where training started: the run kept
    them so, and ``lsr train --resume`` from another folder looked for the data there."""
    import os

    from lsr.cli import main

    monkeypatch.chdir(Path(pairs[0][0]).parent.parent)
    rel = [(os.path.relpath(s), os.path.relpath(g)) for s, g in pairs]
    run = Path(os.path.relpath(tmp_path))
    train(tiny_config(run, rel, steps=2, checkpoint_every=2, loss="intra"))
    meta = read_checkpoint(tmp_path / "run").metadata
    assert [d["slide"] for d in meta["config"]["data"]] == [str(Path(s).absolute()) for s, _ in rel]
    assert Path(meta["config"]["out_dir"]).is_absolute()
    assert all(Path(d["grid"]).is_absolute() for d in meta["config"]["data"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(tmp_path / "run"), "--steps", "4"])
    assert exc.value.code in (0, None)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["step"] == 4


def test_cli_resume_with_another_loss_says_the_loss_cannot_change(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsr.cli import main

    out = tmp_path / "run"
    train(tiny_config(tmp_path, pairs, steps=2, checkpoint_every=2, loss="intra"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(out), "--loss", "inter", "--steps", "4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "trained with loss 'intra', and the loss cannot change on resume" in err


def test_resume_says_what_cannot_change_and_when_steps_are_past(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    out = str(tmp_path / "run")
    train(tiny_config(tmp_path, pairs, steps=4, checkpoint_every=4, loss="inter"))
    before = _fingerprint(tmp_path / "run")
    with pytest.raises(LsrInputError, match="loss 'inter', and the loss cannot change on resume"):
        train(tiny_config(tmp_path, pairs, steps=6, loss="intra", resume=out))
    with pytest.raises(LsrInputError, match="seed 0, and the seed cannot change"):
        train(tiny_config(tmp_path, pairs, steps=6, loss="inter", seed=1, resume=out))
    with pytest.raises(LsrInputError, match=r"network cannot change on resume: .*width 4.*width 8"):
        train(tiny_config(tmp_path, pairs, steps=6, loss="inter", width=8, resume=out))
    assert _fingerprint(tmp_path / "run") == before
    # fewer steps than the checkpoint: the library (demo, Trainer) warns and gives the run
    # back; the CLI, where the user typed --steps, refuses
    with pytest.warns(UserWarning, match="already at step 4, the 3 steps asked"):
        done = train(tiny_config(tmp_path, pairs, steps=3, loss="inter", resume=out))
    assert done.step == 4
    from lsr.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", out, "--steps", "3"])
    assert exc.value.code == 2


def test_cli_banner_names_the_count_table(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys
) -> None:
    from lsr.cli import main
    from lsr.counttable import CountTable

    CountTable.paper_table1().save(tmp_path / "expert.json")
    base = ["train", "--loss", "intra", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        base += ["--slide", s, "--grid", g]
    base += ["--width", "4", "--depth", "2", "--steps", "1", "--device", "cpu", "--batch-size", "8"]
    with pytest.raises(SystemExit):
        main([*base, "--out-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "count table: paper Table 1 (the default" in err
    n_blocks = int(re.search(r"(\d+) labelled blocks", err).group(1))
    times = 8 / n_blocks  # 1 step of 8 blocks
    assert f"1 steps × 8 blocks: a block is seen about {times:.2g} times on average (less" in err
    table = str(tmp_path / "expert.json")
    with pytest.raises(SystemExit):
        main([*base, "--out-dir", str(tmp_path / "b"), "--table", table])
    assert f"count table: {table}\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path / "b"), "--steps", "2"])
    assert f"count table: the checkpoint's, first from {table}\n" in capsys.readouterr().err
    source = str(tmp_path / "a")
    with pytest.raises(SystemExit):
        main([*base, "--out-dir", str(tmp_path / "c"), "--init-from", source])
    assert f"starting from the weights of: {source}\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path / "c"), "--steps", "2"])
    assert "starting from the weights" not in capsys.readouterr().err


def test_cli_help_shows_the_config_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsr.cli import main
    from lsr.cli.train import HELP_DEFAULTS

    shipped = TrainConfig()
    for key, value in HELP_DEFAULTS.items():
        assert getattr(shipped, key) == value, key  # the help must not drift from TrainConfig
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code in (0, None)
    text = capsys.readouterr().out
    for shown in ("(300)", "(lsr-run)", "(100)", "(paper)", "(--augment)"):
        assert f"[default: {shown}]" in text, shown
    assert "Steps of linear learning-rate warm-up" in text
    assert "Seed of the initial weights" in text and "Random flips" in text


def test_saved_config_reads_back_from_anywhere_and_never_replaces_user_files(
    tmp_path: Path, monkeypatch
) -> None:
    from lsr.train import DataPair

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.tif").write_bytes(b"II*\0 a slide")
    cfg = TrainConfig(loss="intra", steps=7, table="t.json", data=[DataPair("a.tif", "a.npy")])
    (tmp_path / "sub").mkdir()
    cfg.save("sub/c.json")  # relative paths of the command line, saved one folder down
    again = TrainConfig.from_file(tmp_path / "sub" / "c.json")
    assert again.data[0].slide == str(tmp_path / "a.tif") and again.table == str(
        tmp_path / "t.json"
    )
    cfg.save("sub/c.json")  # an older saved config is replaced
    before = (tmp_path / "a.tif").read_bytes()
    for target, why in (
        ("a.tif", "not a training config; refusing"),
        ("sub", "is a folder"),
        ("c.toml", "a saved config is JSON"),
    ):
        with pytest.raises(LsrInputError, match=why):
            cfg.save(target)
    (tmp_path / "notes.json").write_text('{"patient": "x"}')
    with pytest.raises(LsrInputError, match=r"notes\.json.*not a training config; refusing"):
        cfg.save("notes.json")
    assert (tmp_path / "a.tif").read_bytes() == before
    assert (tmp_path / "notes.json").read_text() == '{"patient": "x"}'


def test_a_slide_without_its_pixel_size_trains_with_mpp(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys
) -> None:
    """A TIFF without resolution tags: the error says how to give the pixel size, and both
    ways it names (--mpp, a config entry's mpp) train; the saved config keeps it."""
    import tifffile

    from lsr.cli import main

    img, _ = make_image(0)
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, img)  # no pixel size anywhere
    grid = pairs[0][1]
    base = ["train", "--loss", "intra", "--block-px", str(BLOCK), "--working-mpp",
            str(WORKING_MPP), "--slide", str(bare), "--grid", grid, "--width", "4", "--depth",
            "2", "--steps", "1", "--device", "cpu", "--batch-size", "8"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main([*base, "--out-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and str(bare) in err and "--mpp 0.25" in err
    assert "mpp = ... in the slide's [[data]] entry" in err
    saved = tmp_path / "b.json"
    with pytest.raises(SystemExit) as stop:
        main([*base, "--mpp", str(WORKING_MPP), "--out-dir", str(tmp_path / "b"),
              "--save-config", str(saved)])  # fmt: skip
    assert stop.value.code == 0, capsys.readouterr().err
    assert json.loads(saved.read_text())["data"][0]["mpp"] == WORKING_MPP
    with pytest.raises(SystemExit) as stop:  # the saved config trains again by itself
        main(["train", str(saved), "--out-dir", str(tmp_path / "c")])
    assert stop.value.code == 0, capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--mpp", "1", "--mpp", "2", "--out-dir", str(tmp_path / "d")])
    assert "give --mpp once for every slide or once per --slide (1), not 2" in (
        capsys.readouterr().err
    )
    for bad in ("0", "250"):  # the same check as a config entry's mpp and open_slide's
        with pytest.raises(SystemExit) as stop:
            main([*base, "--mpp", bad, "--out-dir", str(tmp_path / "e")])
        err = " ".join(capsys.readouterr().err.split())
        assert (
            stop.value.code == 2
            and f"--mpp must be µm per pixel in (0, 100], got {float(bad)}" in err
        )


def test_overwrite_is_never_saved_nor_read_from_a_file(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """A replace is one command's decision: a saved config, run.json or checkpoint that
    carried it would delete whatever run its folder holds on a later start."""
    cfg = tiny_config(tmp_path, pairs, steps=1, overwrite=True)
    assert "overwrite" not in cfg.to_dict()
    cfg.save(tmp_path / "saved.json")
    assert "overwrite" not in json.loads((tmp_path / "saved.json").read_text())
    assert TrainConfig.from_dict({**cfg.to_dict(), "overwrite": True}).overwrite is False
    result = train(cfg)
    assert result.ok and '"overwrite"' not in (Path(cfg.out_dir) / "run.json").read_text()
    ckpt = next(Path(cfg.out_dir).glob("checkpoints/step-*/checkpoint.json"))
    assert '"overwrite"' not in ckpt.read_text()


# ---------------------------------------------------------------------- init_from
def test_init_from_starts_from_the_models_weights_with_a_fresh_optimizer(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    from lsr.checkpoint import read_metadata, read_model

    first = train(tiny_config(tmp_path / "a", pairs, steps=4, checkpoint_every=4, loss="intra"))
    source = tmp_path / "a" / "run"
    weights, meta = read_model(source)
    # a learning rate too small to move a weight: the run ends where its source did
    tiny_lr = tiny_config(tmp_path / "b", pairs, steps=1, checkpoint_every=1, lr=1e-12,
                          init_from=str(source))  # fmt: skip
    started = train(tiny_lr)
    assert started.ok and started.step == 1
    fresh = train(tiny_config(tmp_path / "c", pairs, steps=1, checkpoint_every=1, lr=1e-12))
    moved = 0
    for name, w in weights.items():
        got = started.model.state_dict()[name]
        assert torch.allclose(got, w, atol=1e-6), name
        moved += not torch.allclose(fresh.model.state_dict()[name], w, atol=1e-6)
    assert moved > 0  # without init_from the same seed starts elsewhere
    # the optimizer is new (one step of state), and the source is recorded by its hash
    opt = read_checkpoint(started.checkpoint).optimizer_state["state"]
    assert all(int(torch.as_tensor(s["step"])) == 1 for s in opt.values())
    _, new_meta = read_metadata(started.checkpoint)
    assert new_meta["init_from"] == {
        "path": str(Path(first.checkpoint)),
        "sha256": meta["files"][MODEL]["sha256"],
        "step": 4,
        "working_mpp": WORKING_MPP,
    }
    # resuming the new run keeps that record and never reads the source again
    import shutil

    shutil.rmtree(source)
    again = tiny_config(tmp_path / "b", pairs, steps=2, checkpoint_every=1, lr=1e-12,
                        init_from=str(source), resume=str(tmp_path / "b" / "run"))  # fmt: skip
    resumed = train(again)
    assert resumed.step == 2
    assert read_metadata(resumed.checkpoint)[1]["init_from"] == new_meta["init_from"]


def test_init_from_another_network_or_nothing_is_refused(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    train(tiny_config(tmp_path / "a", pairs, steps=2, checkpoint_every=2, loss="intra"))
    source = str(tmp_path / "a" / "run")
    with pytest.raises(
        LsrInputError, match=r"differs from the one this run trains: .*width 4.*width 8"
    ):
        train(tiny_config(tmp_path / "b", pairs, width=8, init_from=source))
    assert not (tmp_path / "b" / "run" / LATEST).exists()
    # a source trained at another scale is taken, with a warning
    from lsr.checkpoint import METADATA, resolve

    meta_path = resolve(source) / METADATA
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "working_mpp": 2 * WORKING_MPP}))
    run = tiny_config(tmp_path / "d", pairs, steps=1, checkpoint_every=1, init_from=source)
    with pytest.warns(UserWarning, match=r"trained at 8.34 µm/px, this run trains at 4.17"):
        assert train(run).ok
    # a source whose run was marked failed is taken, with its reason
    run_json = tmp_path / "a" / "run" / "run.json"
    run_json.write_text(json.dumps({"status": "failed", "failure": "collapsed: spread 1e-05"}))
    run = tiny_config(tmp_path / "e", pairs, steps=1, checkpoint_every=1, init_from=source)
    with pytest.warns(UserWarning) as caught:  # (and the other scale again)
        assert train(run).ok
    assert any("from a failed run: collapsed: spread 1e-05" in str(w.message) for w in caught)
    with pytest.raises(LsrInputError, match="checkpoint not found") as err:
        train(tiny_config(tmp_path / "b", pairs, init_from=str(tmp_path / "nowhere")))
    assert "nowhere" in str(err.value)


def test_cli_init_from_and_resume_together_are_refused(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsr.cli import main

    train(tiny_config(tmp_path, pairs, steps=2, checkpoint_every=2, loss="intra"))
    run = str(tmp_path / "run")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", run, "--init-from", run, "--steps", "4"])
    assert exc.value.code == 2
    assert "give only one of them" in capsys.readouterr().err


# ---------------------------------------------------------------------- final network
class _Logits(torch.nn.Module):
    """Stand-in network: cancer logit = a + b × the block's own mean darkness (per pixel)."""

    def __init__(self, a: float, b: float, per_pixel: bool = True):
        super().__init__()
        self.a, self.b, self.per_pixel = a, b, per_pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = -x.mean(dim=1, keepdim=True)  # (B, 1, H, W), larger where the block is dark
        if not self.per_pixel:
            dark = dark.mean(dim=(2, 3), keepdim=True).expand_as(dark)
        cancer = self.a + self.b * dark
        return torch.cat([cancer, torch.zeros_like(cancer)], dim=1)


def test_final_check_blocks_cover_every_bin_deterministically() -> None:
    labels = np.array([0] * 100 + [3] * 5 + [9] * 40)
    idx = final_check_blocks(labels, seed=1, n=12)
    assert idx.size == 12 and np.array_equal(idx, np.unique(idx))
    assert set(labels[idx]) == {0, 3, 9}  # a rare bin is not left out
    assert np.array_equal(idx, final_check_blocks(labels, seed=1, n=12))
    assert not np.array_equal(idx, final_check_blocks(labels, seed=2, n=12))
    assert final_check_blocks(np.array([2, 2]), seed=0, n=64).tolist() == [0, 1]
    # more bins than fit twice: every bin once before any bin twice, whatever its index
    many = np.repeat(np.arange(10), 30)
    idx = final_check_blocks(many, seed=0, n=12)
    assert idx.size == 12 and set(many[idx]) == set(range(10))
    assert max(np.bincount(many[idx])) == 2


def test_check_final_network_names_collapse_and_a_degenerate_mask(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    from lsr.counttable import CountTable
    from lsr.train import build_dataset

    cfg = tiny_config(tmp_path, pairs).resolved()
    table = CountTable.paper_table1()
    dataset = build_dataset(cfg, table)
    names = table.class_names
    # dark rows cancer, pale rows not: both classes in the mask, block fractions vary
    healthy, stats = check_final_network(_Logits(0.0, 4.0), dataset, cfg, names)
    assert healthy == "" and 0.05 < stats["hard"][0] < 0.95 and stats["spread"] > 0.05
    # the same everywhere: collapsed (checked first; its mask is degenerate too)
    flat, stats = check_final_network(_Logits(2.0, 0.0), dataset, cfg, names)
    assert flat.startswith("collapsed") and stats["spread"] < 1e-6
    # depends on the block, but every pixel is cancer: the mask holds no 'non-cancer'
    full, stats = check_final_network(_Logits(3.0, 1.0), dataset, cfg, names)
    assert full.startswith("degenerate mask") and "every pixel is called 'cancer'" in full
    assert stats["hard"][0] == 1.0 and stats["soft"][1] > 0.02
    # independent computation of the statistics for the healthy network
    idx = final_check_blocks(dataset.labels, cfg.seed)
    x = torch.stack([normalise_rgb(dataset.read_block(int(i))) for i in idx])
    p = torch.softmax(_Logits(0.0, 4.0)(x), dim=1)
    _, stats = check_final_network(_Logits(0.0, 4.0), dataset, cfg, names)
    assert np.allclose(stats["soft"], p.mean(dim=(0, 2, 3)).numpy(), atol=1e-6)
    assert np.isclose(stats["hard"][0], float((p[:, 0] > p[:, 1]).float().mean()), atol=1e-6)
    assert np.isclose(stats["spread"], float(p[:, 0].mean(dim=(1, 2)).std(unbiased=False)))


def test_a_final_network_that_fails_the_check_fails_the_run(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lsr.train

    calls = []

    def wrecked_at_the_end(model, dataset, cfg, class_names, device="cpu"):  # type: ignore[no-untyped-def]
        calls.append(model)
        # the final network fails; the earlier checkpoints pass unless told otherwise
        return ("degenerate mask: on the final network …" if len(calls) == 1 or every else ""), {}

    monkeypatch.setattr(lsr.train, "check_final_network", wrecked_at_the_end)
    every = True
    # shorter than the monitors' window: not judged (a run starts at the table prior)
    assert train(tiny_config(tmp_path / "a", pairs, steps=4, checkpoint_every=2)).ok
    assert calls == []

    def run(folder: str) -> TrainResult:
        cfg = tiny_config(tmp_path / folder, pairs, steps=6, checkpoint_every=2,
                          collapse_window=2, collapse_std=0.0, mask_ratio=0.0)  # fmt: skip
        with pytest.warns(UserWarning, match="the final network fails a check"):
            return train(cfg)

    result = run("b")  # the kept step-4 and step-2 checkpoints fail too
    assert result.status == "failed" and len(calls) == 3
    assert result.failure.startswith("degenerate mask: on the final network")
    assert result.failure.endswith(
        "none of the earlier checkpoints (step-000004, step-000002) passes it"
    )
    assert json.loads((tmp_path / "b" / "run" / "run.json").read_text())["status"] == "failed"
    # the earlier checkpoints are checked with their own weights, not the final ones
    final = {k: v.clone() for k, v in result.model.state_dict().items()}
    assert not all(torch.equal(final[k], v) for k, v in calls[2].state_dict().items())
    calls.clear()
    every = False
    result = run("c")
    ckpts = tmp_path / "c" / "run" / "checkpoints"
    passing = f"step-000004, step-000002 (in {ckpts})"
    assert result.failure.endswith(f"earlier checkpoints that pass this check: {passing}")


def test_cli_takes_block_size_from_the_grids_sidecars_and_refuses_a_contradiction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Grids painted in the Annotator (or from lsr synth) carry their block size in a sidecar:
    lsr train reads them at it without --block-px, and refuses a --block-px it contradicts
    (read at the paper's 240 px, the labels would land on the wrong tissue)."""
    from lsr.cli import main
    from lsr.grid import grid_sidecar, write_grid_sidecar

    pairs = make_files(tmp_path / "data", 2)
    for _, g in pairs:
        write_grid_sidecar(g, BLOCK, WORKING_MPP)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--loss", "intra", "--steps", "1", "--width", "4", "--depth", "2"]
    args += ["--batch-size", "4", "--device", "cpu"]
    for s, g in pairs:
        args += ["--slide", s, "--grid", g]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"--block-px {BLOCK} --working-mpp {WORKING_MPP} (from {grid_sidecar(pairs[0][1])})" in err
    )
    meta = read_checkpoint(tmp_path / "lsr-run").metadata
    assert (meta["block_px"], meta["working_mpp"]) == (BLOCK, WORKING_MPP)

    with pytest.raises(SystemExit) as exc:
        main([*args, "--block-px", str(2 * BLOCK), "--out-dir", "other"])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{grid_sidecar(pairs[0][1])}: the grid's blocks are {BLOCK} px" in err
    assert f"--block-px {BLOCK}" in err and "Trainer: Block px" in err
    assert not (tmp_path / "other" / "latest.json").exists()


@pytest.mark.parametrize("file_block_px", [None, 2 * BLOCK])
def test_a_config_file_without_a_block_size_takes_the_sidecars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file_block_px: int | None
) -> None:
    """A config file's data are read at the sidecars' block size unless the file sets one;
    one it sets is the user's, and a sidecar that contradicts it refuses the run."""
    from lsr.cli import main
    from lsr.grid import grid_sidecar, write_grid_sidecar

    pairs = make_files(tmp_path / "data", 2)
    for _, g in pairs:
        write_grid_sidecar(g, BLOCK, WORKING_MPP)
    lines = ['loss = "intra"', "steps = 1", "width = 4", "depth = 2", "batch_size = 4"]
    lines += ['device = "cpu"', f'out_dir = "{tmp_path / "run"}"']
    if file_block_px is not None:
        lines.append(f"block_px = {file_block_px}")
    for s, g in pairs:
        lines += ["[[data]]", f'slide = "{s}"', f'grid = "{g}"']
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(cfg)])
    err = " ".join(capsys.readouterr().err.split())
    if file_block_px is None:
        assert exc.value.code in (0, None), err
        assert (
            f"--block-px {BLOCK} --working-mpp {WORKING_MPP} (from {grid_sidecar(pairs[0][1])})"
            in err
        )
        assert read_checkpoint(tmp_path / "run").metadata["block_px"] == BLOCK
    else:
        assert exc.value.code == 2
        assert f"{grid_sidecar(pairs[0][1])}: the grid's blocks are {BLOCK} px" in err
        assert not (tmp_path / "run" / "latest.json").exists()


@pytest.mark.parametrize(
    ("steps", "per_step", "n_blocks"),
    [(300, 30, 1200), (10, 8, 1000), (5, 30, 0), (0, 8, 9), (3000, 30, 50), (5000, 30, 1)],
)
def test_blocks_seen_is_draws_over_blocks_with_a_hint_below_once(steps, per_step, n_blocks):
    from lsr.train import blocks_seen

    text = blocks_seen(steps, per_step, n_blocks)
    if not (steps and n_blocks):
        assert text == ""  # unknown: nothing said
        return
    times = steps * per_step / n_blocks  # draws of blocks / blocks
    assert text.startswith(f"{steps} steps × {per_step} blocks: a block is seen about ")
    said = re.search(r"about ([\d.,]+) times", text).group(1)
    assert float(said.replace(",", "")) == pytest.approx(times, rel=0.05)  # two digits or more
    assert "e+" not in text  # 1,800, not 1.8e+03
    assert ("less than once" in text) == (times < 1)


class _ClosedPipe:
    """A terminal whose reader went away: every write raises BrokenPipeError."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


def test_a_closed_terminal_does_not_end_the_run(pairs: list[tuple[str, str]], tmp_path: Path):
    """`lsr train 2>&1 | head`: rich's own console ends the process from inside the training
    callback (the run failed mid-way with "SystemExit: 1"); the CLI's console goes quiet and
    the run trains to its end."""
    from rich.console import Console

    from lsr.cli.train import QuietOnBrokenPipe, RichProgress

    cfg = tiny_config(tmp_path, pairs, steps=4, checkpoint_every=2, loss="intra")
    with pytest.raises(SystemExit):  # what rich does by default
        train(cfg, [RichProgress(Console(file=_ClosedPipe()))])
    cfg = tiny_config(tmp_path, pairs, steps=4, checkpoint_every=2, loss="intra",
                      out_dir=str(tmp_path / "quiet"))  # fmt: skip
    quiet = QuietOnBrokenPipe(file=_ClosedPipe())
    result = train(cfg, [RichProgress(quiet)])
    assert result.ok and result.step == 4 and quiet.quiet
    assert json.loads((tmp_path / "quiet" / "run.json").read_text())["status"] == "completed"


def test_cli_names_batch_flags_the_loss_does_not_use(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys
) -> None:
    """--loss intra --group-size 3 ran 30-block batches without a word (and --batch-size
    with an inter loss likewise); the flag is now named as ignored, the other kind is not."""
    from lsr.cli import main

    base = ["train", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        base += ["--slide", s, "--grid", g]
    base += ["--width", "4", "--depth", "2", "--steps", "1", "--device", "cpu"]
    with pytest.raises(SystemExit):
        main([*base, "--loss", "intra", "--group-size", "3", "--batch-size", "4",
              "--out-dir", str(tmp_path / "a")])  # fmt: skip
    err = capsys.readouterr().err
    assert "--group-size ignored: the intra loss's batch is --batch-size" in err
    assert "--batch-size ignored" not in err
    with pytest.raises(SystemExit):
        main([*base, "--loss", "inter", "--batch-size", "4", "--group-size", "2",
              "--groups-per-batch", "2", "--out-dir", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err
    assert "--batch-size ignored: the inter loss's batch is --groups-per-batch" in err
    assert "--group-size ignored" not in err and "--variance-norm ignored" not in err
    # the inter loss has no block variance either (it compares group means' spread)
    with pytest.raises(SystemExit):
        main([*base, "--loss", "inter", "--variance-norm", "n", "--group-size", "2",
              "--groups-per-batch", "2", "--out-dir", str(tmp_path / "c")])  # fmt: skip
    assert "--variance-norm ignored: the inter loss" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--loss", "intra", "--variance-norm", "n", "--batch-size", "4",
              "--out-dir", str(tmp_path / "d")])  # fmt: skip
    assert "--variance-norm ignored" not in capsys.readouterr().err


def test_a_resumed_run_removes_what_a_killed_checkpoint_write_left(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """SIGKILL while checkpoint N was written left OUT/checkpoints/.step-N.tmp-…/ (as large
    as the checkpoint); resuming neither removed nor mentioned it. A minute-old one goes."""
    import os

    assert train(tiny_config(tmp_path, pairs, steps=3, checkpoint_every=3)).ok
    out = tmp_path / "run"
    stale = out / "checkpoints" / ".step-000006.tmp-0123456789ab"
    fresh = out / "checkpoints" / ".step-000006.tmp-fedcba987654"  # a live writer's
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    replaced = out / "checkpoints" / ".step-000003.old-k2j3x9_q"  # a killed replacement's
    (replaced / "step-000003").mkdir(parents=True)
    run_tmp = out / ".run.tmp-0123456789ab.json"
    run_tmp.write_text("{")
    mine = out / "checkpoints" / "notes.txt"
    mine.write_text("mine")
    old = stale.stat().st_mtime - 3600
    for p in (stale, stale / "model.safetensors", replaced, replaced / "step-000003", run_tmp,
              mine):  # fmt: skip
        os.utime(p, (old, old))
    assert train(tiny_config(tmp_path, pairs, steps=6, checkpoint_every=3, resume=str(out))).ok
    assert not stale.exists() and not run_tmp.exists() and not replaced.exists()
    assert fresh.is_dir() and mine.read_text() == "mine"


def test_cli_second_ctrl_c_says_which_checkpoint_is_kept(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys, monkeypatch
) -> None:
    """A second Ctrl-C stops at once; the progress bar just stopped, without a word about
    what was kept or whether --resume can continue."""
    import lsr.train as lsr_train
    from lsr.cli import main

    base = ["train", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        base += ["--slide", s, "--grid", g]
    base += ["--width", "4", "--depth", "2", "--steps", "1", "--device", "cpu", "--loss",
             "intra", "--batch-size", "4"]  # fmt: skip

    def aborted(cfg, **kwargs):
        if kwargs.get("callbacks") is not None and Path(cfg.out_dir).name == "kept":
            Path(cfg.out_dir).mkdir()
            (Path(cfg.out_dir) / "latest.json").write_text(
                '{"checkpoint": "checkpoints/step-001200", "step": 1200}'
            )
        raise KeyboardInterrupt

    monkeypatch.setattr(lsr_train, "train", aborted)
    for name, want in (
        ("kept", "its last checkpoint (step 1,200) is kept: lsr train --resume"),
        ("none", "has no checkpoint to resume from"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--out-dir", str(tmp_path / name)])
        assert exit_.value.code == 130
        err = " ".join(capsys.readouterr().err.split())
        assert "interrupted: stopped at once" in err and want in err, err


def test_cli_second_ctrl_c_during_an_overwrite_names_the_run_put_back(
    pairs: list[tuple[str, str]], tmp_path: Path, capsys, monkeypatch
) -> None:
    """Stopped at once before its first checkpoint, an --overwrite run puts the old run
    back; the line offered to resume that old run as if it were this one."""
    import lsr.train as lsr_train
    from lsr.cli import main

    base = ["train", "--block-px", str(BLOCK), "--working-mpp", str(WORKING_MPP)]
    for s, g in pairs:
        base += ["--slide", s, "--grid", g]
    base += ["--width", "4", "--depth", "2", "--device", "cpu", "--loss", "intra",
             "--batch-size", "4", "--out-dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--steps", "3", "--checkpoint-every", "3"])
    assert exit_.value.code == 0
    capsys.readouterr()

    def second_ctrl_c(out_dir: Path) -> None:  # right after the old run was set aside
        raise KeyboardInterrupt

    monkeypatch.setattr(lsr_train, "_remove_killed_writes", second_ctrl_c)
    with pytest.raises(SystemExit) as exit_, pytest.warns(UserWarning, match="is back in"):
        main([*base, "--steps", "50", "--overwrite"])
    assert exit_.value.code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "this run kept no checkpoint, and the run it was to replace (--overwrite) is back" in err
    assert "(step 3)" in err and "continues from there" not in err
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 3


def test_the_trained_network_predicts_at_its_scale_and_class_as_a_loaded_one(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """predict_slide's defaults come from the network: TrainResult.model carried neither
    its scale nor its class names (only lsr.model.load set them)."""
    from lsr.model import load

    result = train(tiny_config(tmp_path, pairs, steps=1, loss="intra"))
    loaded, _ = load(result.out_dir)
    for net in (result.model, loaded):
        assert net.working_mpp == WORKING_MPP and net.class_names == ("cancer", "non-cancer")


def test_a_run_killed_before_latest_json_resumes_and_is_listed(
    pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    """Killed between its checkpoint's rename and latest.json: only --overwrite went on."""
    from lsr.training_process import has_checkpoint, list_models

    out = tmp_path / "run"
    assert train(tiny_config(tmp_path, pairs, steps=2, checkpoint_every=2, loss="intra")).ok
    (out / "latest.json").unlink()
    assert has_checkpoint(out) and [m.checkpoint for m in list_models(out)] == [
        str(out / "checkpoints" / "step-000002")
    ]
    resumed = train(tiny_config(tmp_path, pairs, steps=4, loss="intra", resume=str(out)))
    assert resumed.ok and resumed.step == 4 and read_checkpoint(out).step == 4


def test_training_without_amp_never_enters_torch_autocast(
    pairs: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.autocast(enabled=False) on device "mps" raises before torch 2.5: every step of
    an MPS run without AMP crashed. Without AMP, no autocast at all."""

    def refuse(*_a, **_k):
        raise RuntimeError("User specified an unsupported autocast device_type 'mps'")

    monkeypatch.setattr(torch, "autocast", refuse)
    result = train(tiny_config(tmp_path, pairs, steps=2, loss="intra"))
    assert result.ok and result.step == 2
