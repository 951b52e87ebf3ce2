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
