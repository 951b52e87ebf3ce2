"""Checkpoint folders: what a damaged or foreign model folder says to the user."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lsr.checkpoint import read_model, resolve, write_checkpoint
from lsr.errors import LsrInputError
from lsr.model import UNet


@pytest.fixture
def run(tmp_path):
    """A training folder with checkpoints at steps 2 and 4 (latest: 4)."""
    out = tmp_path / "run"
    net = UNet(2, width=4, depth=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in (2, 4):
        write_checkpoint(out, step, model_state=net.state_dict(), metadata={"model": net.config()},
                         optimizer_state=opt.state_dict(), trainer_state={})  # fmt: skip
    return out


def test_a_bit_flip_is_named_as_modified_not_truncated_and_older_ones_are_offered(run):
    weights = run / "checkpoints" / "step-000004" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, other content
    weights.write_bytes(bytes(raw))
    with pytest.raises(LsrInputError) as err:
        read_model(run)
    text = str(err.value)
    assert "SHA-256" in text and "truncated" not in text
    assert "step-000002" in text  # the intact earlier checkpoint, usable instead
    read_model(run / "checkpoints" / "step-000002")  # and it is
    weights.write_bytes(bytes(raw[:-10]))
    with pytest.raises(LsrInputError, match="truncated or extended"):
        read_model(run)


def test_latest_pointing_at_a_checkpoint_without_metadata_says_so(run):
    (run / "checkpoints" / "step-000004" / "checkpoint.json").unlink()
    with pytest.raises(LsrInputError, match=r"has no checkpoint\.json") as err:
        resolve(run)
    assert "step-000002" in str(err.value)
    shutil.rmtree(run / "checkpoints" / "step-000004")
    with pytest.raises(LsrInputError, match="is missing"):
        resolve(run)
    json.loads((run / "latest.json").read_text())  # untouched


def test_a_foreign_file_is_named_itself(tmp_path, run):
    other = tmp_path / "slide.tif"
    other.write_bytes(b"II*\x00")
    with pytest.raises(LsrInputError, match="not an lsr model") as err:
        resolve(other)
    assert str(other) in str(err.value)
    # a file inside a training folder still means that folder
    assert resolve(run / "latest.json") == resolve(run)


@pytest.mark.parametrize(
    ("where", "edit", "match"),
    [
        (
            "latest.json",
            lambda d: d.update(checkpoint=5),
            r"malformed latest\.json \(checkpoint 5\)",
        ),
        ("meta", lambda d: d.update(files=[]), "'files' should be dict, got list"),
        ("meta", lambda d: d.update(step="4"), "'step' should be int, got str"),
        ("meta", lambda d: d.update(version="1"), r"malformed checkpoint metadata \(version '1'\)"),
    ],
)
def test_hand_edited_metadata_is_an_error_naming_the_file(run, where, edit, match):
    path = (
        run / "latest.json"
        if where == "latest.json"
        else (run / "checkpoints" / "step-000004" / "checkpoint.json")
    )
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(LsrInputError, match=match) as err:
        read_model(run)
    assert str(path) in str(err.value)


def test_the_newest_checkpoints_are_kept_past_step_999999(tmp_path):
    """Names are padded to six digits: 'step-1000100' sorts before 'step-999800', so pruning
    by name deleted the newest checkpoints of a long run and kept the oldest."""
    from lsr.checkpoint import by_step

    out = tmp_path / "run"
    net = UNet(2, width=4, depth=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    steps = (999_800, 999_900, 1_000_000, 1_000_100)
    for step in steps:
        write_checkpoint(out, step, model_state=net.state_dict(), metadata={"model": net.config()},
                         optimizer_state=opt.state_dict(), trainer_state={}, keep=3)  # fmt: skip
    (out / "checkpoints" / "step-notes").mkdir()  # not a checkpoint: never counted or pruned
    kept = by_step(out / "checkpoints")
    assert [p.name for p in kept] == ["step-999900", "step-1000000", "step-1000100"]
    assert (out / "checkpoints" / "step-notes").is_dir()
    assert [int(p.name[5:]) for p in by_step(out / "checkpoints", newest_first=True)] == sorted(
        steps[1:], reverse=True
    )
    # a damaged newest checkpoint offers the others newest first
    (out / "checkpoints" / "step-1000100" / "checkpoint.json").unlink()
    with pytest.raises(LsrInputError) as err:
        resolve(out)
    assert str(err.value).index("step-1000000") < str(err.value).index("step-999900")


def test_a_run_killed_before_its_latest_json_resumes_from_its_whole_checkpoint(run):
    """Killed between the checkpoint's rename and latest.json: `--resume OUT` and `lsr predict
    -m OUT` said "not an lsr checkpoint", and only --overwrite (losing it) went on."""
    (run / "latest.json").unlink()
    (run / "checkpoints" / "step-000006").mkdir()  # a later one, not whole: never taken
    assert resolve(run) == run / "checkpoints" / "step-000004"
    read_model(run)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(LsrInputError, match="not an lsr checkpoint or training folder"):
        resolve(run)


def test_pruning_renames_a_checkpoint_away_before_deleting_it(tmp_path, monkeypatch):
    """A kill while an old checkpoint was deleted left a half-deleted step-N under its name."""
    import lsr.checkpoint as ck

    out = tmp_path / "run"
    net = UNet(2, width=4, depth=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    deleting: list[tuple[str, bool]] = []
    real_rmtree = shutil.rmtree

    def watch(path, *args, **kw):
        deleting.append((path.name, (out / "checkpoints" / "step-000001").exists()))
        real_rmtree(path, *args, **kw)

    monkeypatch.setattr(ck.shutil, "rmtree", watch)
    for step in (1, 2, 3):
        write_checkpoint(out, step, model_state=net.state_dict(), metadata={"model": net.config()},
                         optimizer_state=opt.state_dict(), trainer_state={}, keep=2)  # fmt: skip
    assert [name.startswith(".step-000001.old-") for name, _ in deleting] == [True]
    assert deleting[0][1] is False  # step-000001 had left its name before any file went
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000002", "step-000003",
    ]  # fmt: skip
