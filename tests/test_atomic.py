"""Atomic writes create the user's files as a plain open()/mkdir() would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lsr.atomic import atomic_path, atomic_write_text, make_temp_dir


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_and_folders_follow_the_umask(tmp_path: Path, umask_027: int) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask: the reference
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert mode(tmp_path / "atomic.txt") == mode(plain) == 0o640
    folder = make_temp_dir(".t-", tmp_path)
    (tmp_path / "plain_dir").mkdir()
    assert mode(folder) == mode(tmp_path / "plain_dir") == 0o750


def test_setgid_folder_is_inherited_like_mkdir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)  # a lab's shared folder: new folders inherit its group and the bit
    (shared / "plain").mkdir()
    folder = make_temp_dir(".t-", shared)
    assert mode(folder) & stat.S_ISGID == mode(shared / "plain") & stat.S_ISGID == stat.S_ISGID


def test_overwritten_file_keeps_its_mode_set_after_writing(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    target.write_text("old")
    target.chmod(0o444)  # read-only: the temporary file must stay writable until written
    with atomic_path(target) as tmp:
        assert mode(tmp) != 0o444
        tmp.write_text("new")
    assert target.read_text() == "new" and mode(target) == 0o444
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]  # no temporary left


def test_failed_write_leaves_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("keep")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_checkpoint_folder_and_files_follow_the_umask(tmp_path: Path, umask_027: int) -> None:
    import torch

    from lsr.checkpoint import write_checkpoint

    folder = write_checkpoint(
        tmp_path / "run", 1, model_state={"w": torch.zeros(2)}, metadata={"loss": "intra"},
        optimizer_state={"state": {}, "param_groups": []}, trainer_state={},
    )  # fmt: skip
    assert mode(folder) == 0o750
    files = [*sorted(folder.iterdir()), tmp_path / "run" / "latest.json"]
    assert len(files) >= 5 and all(mode(f) == 0o640 for f in files), [oct(mode(f)) for f in files]


def test_a_folder_as_target_names_the_folder_not_a_temporary(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError) as err:
        atomic_write_text(tmp_path / "out", "x")
    assert err.value.filename == str(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())


def test_leftovers_of_killed_writes_are_recognised_and_removed(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves atomic_path's temporary file (or a staging folder); the
    writer's next start removes those of its own targets, old enough, and nothing else."""
    from lsr.atomic import remove_leftover_temps, temp_target

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "probability.tif") as tmp:
        name = tmp.name
        raise RuntimeError
    assert temp_target(name) == "probability.tif"  # the name atomic_path really makes
    assert temp_target(make_temp_dir(".step-000002.tmp-", tmp_path).name) == "step-000002"
    assert temp_target("probability.tif") is None and temp_target(".bashrc") is None
    assert temp_target(".a.tmp-notahexname.tif") is None
    ours = [tmp_path / ".probability.tmp-0123456789ab.tif", tmp_path / ".mask.tmp-abcdef012345.tif"]
    kept = [
        tmp_path / ".notes.tmp-0123456789ab.txt",  # a temporary of a target not named
        tmp_path / "probability.tif",  # a real output
        tmp_path / ".probability.tif.swp",  # an editor's
    ]
    for p in ours + kept:
        p.write_bytes(b"x")
    stage = tmp_path / ".lsr-pyramid-k2j3"
    stage.mkdir()
    (stage / "level1.npy").write_bytes(b"x")
    fresh = tmp_path / ".mask.tmp-fedcba987654.tif"
    fresh.write_bytes(b"x")  # being written by someone else right now
    live_stage = tmp_path / ".lsr-pyramid-live"  # an old folder, a level file written now
    live_stage.mkdir()
    (live_stage / "level1.npy").write_bytes(b"x")
    old = os.stat(ours[0]).st_mtime - 3600
    for p in (*ours, *kept, stage, stage / "level1.npy", live_stage):
        os.utime(p, (old, old))
    removed = remove_leftover_temps(
        tmp_path, {"probability.tif", "mask.tif"}.__contains__, min_age_s=60,
        staging_prefixes=(".lsr-pyramid-",),
    )  # fmt: skip
    assert sorted(removed) == sorted([*ours, stage])
    assert all(p.exists() for p in (*kept, fresh, live_stage))
    assert remove_leftover_temps(tmp_path / "missing", lambda t: True) == []
