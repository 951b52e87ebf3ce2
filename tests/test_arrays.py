"""lsr.arrays.read_npy: a user's .npy file, or one message naming what is wrong with it."""

from __future__ import annotations

import numpy as np
import pytest

from lsr.arrays import read_npy
from lsr.errors import LsrInputError


def test_a_real_npy_file_reads_as_numpy_does(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(read_npy(tmp_path / "a.npy"), np.load(tmp_path / "a.npy"))
    mapped = read_npy(tmp_path / "a.npy", mmap=True)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, a)


@pytest.mark.parametrize(
    ("content", "want"),
    [
        (b"row,col,prob\n0,0,0.5\n", "not a NumPy .npy file (it starts with 'row,co'"),
        (b"", "nothing (an empty file)"),
    ],
)
def test_a_file_that_is_not_npy_says_what_it_starts_with(tmp_path, content, want):
    (tmp_path / "g_grid.npy").write_bytes(content)
    with pytest.raises(LsrInputError) as err:
        read_npy(tmp_path / "g_grid.npy")
    text = str(err.value)
    assert text.startswith(str(tmp_path / "g_grid.npy")) and want in text
    assert "allow_pickle" not in text  # numpy's own message pointed at pickles


def test_object_arrays_are_refused_and_truncated_files_named(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LsrInputError, match=r"Python objects .* never loads") as err:
        read_npy(tmp_path / "obj.npy")
    assert "obj.npy" in str(err.value)
    np.save(tmp_path / "t.npy", np.zeros((100, 100), np.float32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(LsrInputError, match=r"truncated|damaged") as err:
        read_npy(tmp_path / "t.npy")
    assert "t.npy" in str(err.value)
    with pytest.raises(LsrInputError, match="cannot read"):
        read_npy(tmp_path / "missing.npy")
