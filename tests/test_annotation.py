"""The GUI-free annotation session: sampling, walking, the log, autosave, resume, merge."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lsr.annotation import (
    AnnotationSession,
    autosave_path,
    merge_sessions,
    open_session,
    sample_blocks,
)
from lsr.errors import LsrInputError


def grid_z(seed: int = 0, shape: tuple[int, int] = (20, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.integers(-1, 10, size=shape)
    z[z == 7] = 3  # bin 7 empty
    z[0, 0] = 8  # bin 8: a single block
    z[z == 8] = 2
    z[0, 0] = 8
    return z


def test_sampling_is_stratified_seeded_and_shuffled():
    z = grid_z()
    eligible = np.ones(z.shape, bool)
    eligible[:, :5] = False
    eligible[0, 0] = True
    blocks = sample_blocks(z, per_bin=12, seed=3, eligible=eligible)
    zs = np.array([b.z for b in blocks])
    counts = np.bincount(zs, minlength=10)
    avail = np.bincount(z[eligible & (z >= 0)], minlength=10)
    assert np.array_equal(counts, np.minimum(avail, 12))
    assert counts[7] == 0 and counts[8] == 1
    assert all(z[b.row, b.col] == b.z and eligible[b.row, b.col] for b in blocks)
    assert len({(b.row, b.col) for b in blocks}) == len(blocks)  # without replacement
    assert blocks == sample_blocks(z, per_bin=12, seed=3, eligible=eligible)
    assert blocks != sample_blocks(z, per_bin=12, seed=4, eligible=eligible)
    # walk order is not grouped by bin: some consecutive blocks differ in z
    assert (np.diff(zs) != 0).sum() > len(zs) // 2
    # every block of a bin can be reached: draw all
    everything = sample_blocks(z, per_bin=10_000, seed=0)
    assert len(everything) == int((z >= 0).sum())


def test_sampling_bad_input():
    with pytest.raises(LsrInputError, match="at least 1"):
        sample_blocks(np.zeros((3, 3), int), per_bin=0)
    with pytest.raises(LsrInputError, match="does not match"):
        sample_blocks(np.zeros((3, 3), int), eligible=np.ones((2, 3), bool))


def make_session(expert: str = "ann", per_bin: int = 3) -> AnnotationSession:
    z = np.repeat(np.arange(10), 5).reshape(5, 10)
    return AnnotationSession(
        expert=expert,
        slide="s1",
        blocks=sample_blocks(z, per_bin=per_bin, seed=1),
        per_bin=per_bin,
        seed=1,
        grid={"shape": [5, 10], "block_um": 1000.0, "origin_um": [0.0, 0.0]},
    )


def test_record_skip_back_and_next_bin():
    s = make_session()
    first = s.block
    s.record(12.5)
    assert s.current == 1 and s.results[0].percent_cancer == 12.5
    assert s.results[0].block == first.key and s.results[0].expert == "ann"
    s.skip("artefact")
    assert s.results[1].skipped == "artefact" and s.results[1].percent_cancer is None
    s.back()
    s.back()
    assert s.current == 0
    s.record(20)  # correcting block 0 replaces its estimate; moves to the first undone
    assert s.results[0].percent_cancer == 20 and s.current == 2
    with pytest.raises(LsrInputError, match="0-100"):
        s.record(101)
    with pytest.raises(LsrInputError, match="reason"):
        s.skip(" ")
    zb = s.block.z
    i = s.next_unfinished_bin()
    assert s.blocks[i].z == (zb + 1) % 10 and not s.is_done(i)
    counts = s.counts()
    assert counts.sum() == 1 and counts[s.blocks[0].z] == 1  # the skip is not counted


def test_table_mean_std_and_flags():
    s = make_session(per_bin=3)
    values = {b: [] for b in range(10)}
    rng = np.random.default_rng(0)
    while not s.finished:
        z = s.block.z
        v = float(np.round(rng.uniform(0, 100 if z == 9 else 5), 1))
        values[z].append(v)
        s.record(v)
    t = s.table()
    for b in range(10):
        v = np.array(values[b]) / 100
        assert t.n[b] == 3
        assert t.eta[b, 0] == pytest.approx(v.mean())
        assert t.rho[b, 0] == pytest.approx(max(v.std(ddof=1), 1e-3))
    # 3 < 10 estimates: every bin flagged as too few
    assert all("only 3 of 10" in t.flagged[b] for b in range(10))
    partial = make_session()
    partial.record(4)
    tp = partial.table()
    zb = partial.blocks[0].z
    assert tp.n.sum() == 1 and tp.n[zb] == 1 and "only 1 of 10" in tp.flagged[zb]
    assert all(tp.flagged[b] == "no estimate yet" for b in range(10) if b != zb)


def test_spread_flag():
    z = np.zeros((4, 4), int)
    s = AnnotationSession("a", "s", sample_blocks(z, per_bin=12, seed=0), per_bin=12)
    for k in range(12):
        s.record(0 if k % 2 else 40)
    t = s.table()
    assert "spread" in t.flagged[0]


def test_top_bin_below_a_lower_bin_is_flagged():
    """A top bin with 25 points less cancer than bin 90-95 is flagged (the study's
    under-calling intra); 15 points less, or a top bin with one estimate so far, is not."""
    z = np.repeat(np.arange(10), 16).reshape(10, 16)
    for top, flagged in ((45, True), (55, False)):
        s = AnnotationSession("a", "s", sample_blocks(z, per_bin=10, seed=0), per_bin=10)
        while not s.finished:
            b = s.block.z
            s.record(top + s.n_done % 2 if b == 9 else 70 if b == 8 else 5 * b)
        t = s.table()
        assert ("below bin 90–95%" in t.bin_problems().get(9, "")) is flagged, t.bin_problems()
    partial = AnnotationSession("a", "s", sample_blocks(z, per_bin=10, seed=0), per_bin=10)
    while partial.block.z != 9:
        partial.record(70 if partial.block.z == 8 else 5)
    partial.record(10)  # 60 points below bin 90-95 % (if estimated), but a single estimate
    assert partial.table().n[9] == 1
    assert "only 1 of 10" in partial.table().bin_problems()[9]
    assert "below bin" not in partial.table().bin_problems()[9]


def test_autosave_round_trip_and_resume(tmp_path):
    s = make_session()
    s.record(3)
    s.skip("unsure")
    path = autosave_path(tmp_path, "slide 1.svs", "Dr. Ann")
    assert re.fullmatch(
        r"slide_1\.svs-[0-9a-f]{8}\.Dr\._Ann-[0-9a-f]{8}\.lsr-estimates\.json", path.name
    )
    s.save(path)
    t, msg = open_session(path, lambda: pytest.fail("should resume"), grid=s.grid)
    assert "2 of" in msg
    assert t.blocks == s.blocks and t.results == s.results and t.current == s.current
    with pytest.raises(LsrInputError, match="shape"):
        open_session(path, make_session, grid={"shape": [6, 10], "block_um": 1000.0})
    assert json.loads(path.read_text())["results"]["1"]["skipped"] == "unsure"


def test_autosave_names_differ_per_expert_and_keep_safe_names(tmp_path):
    """Names that reduce to one safe name must not share (and mix) one autosave."""
    for a, b in (("Müller", "Møller"), ("李", "王"), ("Ann B", "Ann_B"), ("ann", "ann.")):
        assert autosave_path(tmp_path, "s.tif", a) != autosave_path(tmp_path, "s.tif", b)
    assert autosave_path(tmp_path, "s.tif", "ann").name == "s.tif.ann.lsr-estimates.json"
    assert autosave_path(tmp_path, "s.tif", "Ann_B").name == "s.tif.Ann_B.lsr-estimates.json"
    for name in ("李", "Ann B", "Dr. Ann/x"):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", autosave_path(".", "s.tif", name).name)


def test_autosave_names_differ_per_slide_whose_names_reduce_alike(tmp_path):
    """Slides 患者甲.tif and 患者乙.tif (or Иванов.svs and Петров.svs, Case 12 HE.tif and
    Case_12_HE.tif) shared one autosave name: the second slide could not be annotated."""
    from lsr.annotation import find_autosave

    for a, b in (("患者甲.tif", "患者乙.tif"), ("Иванов.svs", "Петров.svs"),
                 ("Case 12 HE.tif", "Case_12_HE.tif")):  # fmt: skip
        assert autosave_path(tmp_path, a, "ann") != autosave_path(tmp_path, b, "ann")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", autosave_path(tmp_path, a, "ann").name)
    # an autosave an earlier version named without the slide's hash resumes for its slide
    # and expert, and is never taken for the other slide
    old = tmp_path / "Case_12_HE.tif.ann.lsr-estimates.json"
    session = make_session("ann")
    session.slide = "Case 12 HE.tif"
    session.save(old)
    assert find_autosave(tmp_path, "Case 12 HE.tif", "ann") == old
    other = find_autosave(tmp_path, "Case 12 HE?tif", "ann")
    assert other != old and other == autosave_path(tmp_path, "Case 12 HE?tif", "ann")


def test_another_experts_autosave_is_never_resumed(tmp_path):
    path = tmp_path / "s1.M_ller.lsr-estimates.json"
    mueller = make_session("Müller")
    mueller.record(30)
    mueller.save(path)
    before = path.read_bytes()
    with pytest.raises(LsrInputError, match="expert 'Müller', not of 'Møller'") as err:
        open_session(path, lambda: pytest.fail("no new session"), expert="Møller")
    assert str(path) in str(err.value) and path.read_bytes() == before
    with pytest.raises(LsrInputError, match="slide 's1', not of 's2'"):
        open_session(path, make_session, expert="Müller", slide="s2")
    s, msg = open_session(path, lambda: pytest.fail("resume"), expert="Müller", slide="s1")
    assert s.expert == "Müller" and s.n_done == 1 and "Resumed" in msg
    # a case-insensitive file system gives "müller" the same file: say how to resume it
    with pytest.raises(LsrInputError, match="type the name as 'Müller' to resume it"):
        open_session(path, lambda: pytest.fail("no new session"), expert="müller")


def test_an_autosave_named_before_the_hash_still_resumes_for_its_expert(tmp_path):
    from lsr.annotation import find_autosave

    old = tmp_path / "s1.M_ller.lsr-estimates.json"  # the name without the hash
    make_session("Müller").save(old)
    assert find_autosave(tmp_path, "s1", "Müller") == old
    assert find_autosave(tmp_path, "s1", "Møller") == autosave_path(tmp_path, "s1", "Møller")
    assert find_autosave(tmp_path, "s1", "Møller") != old
    assert find_autosave(tmp_path, "s1", "ann") == tmp_path / "s1.ann.lsr-estimates.json"
    old.write_text("{corrupt")  # not provably Müller's: the new name, the file left alone
    assert find_autosave(tmp_path, "s1", "Müller") == autosave_path(tmp_path, "s1", "Müller")
    assert old.read_text() == "{corrupt"


def test_corrupt_autosave_is_kept_aside(tmp_path):
    path = tmp_path / "x.ann.lsr-estimates.json"
    path.write_text('{"format": "napari-lsr annotation session", "blocks": [[0, 0')
    s, msg = open_session(path, make_session)
    assert "corrupt" in msg and "kept as" in msg
    kept = list(tmp_path.glob("x.ann.lsr-estimates.corrupt-*.json"))
    assert len(kept) == 1 and kept[0].read_text().endswith("[[0, 0")
    assert not path.exists() and s.n_done == 0
    # a well-formed JSON with a wrong block in it is malformed too
    bad = make_session().to_dict()
    bad["results"] = {"0": {"z": 99, "percent_cancer": 5.0, "block": "r0c0"}}
    path.write_text(json.dumps(bad))
    with pytest.raises(LsrInputError, match=r"does not match|malformed"):
        AnnotationSession.load(path)


def test_merge_two_experts_keeps_each_expert():
    a, b = make_session("ann"), make_session("bob")
    for s, v in ((a, 10.0), (b, 30.0)):
        while not s.finished:
            s.record(v if s.block.z == 5 else 1.0)
    a.go(0)
    a.skip("artefact")
    t = merge_sessions([a, b])
    assert {e.expert for e in t.estimates} == {"ann", "bob"}
    assert t.n[5] == 6 - (a.blocks[0].z == 5)
    used = [e for e in t.estimates if e.z == 5 and not e.skipped]
    assert t.eta[5, 0] == pytest.approx(np.mean([e.percent_cancer for e in used]) / 100)
    assert t.provenance["merged_experts"] == ["ann", "bob"]
    with pytest.raises(LsrInputError):
        merge_sessions([])


def test_an_autosave_of_an_unknown_version_is_refused_and_left_as_it_is(tmp_path):
    """A newer napari-lsr's autosave is not corrupt: never resumed, never moved aside."""
    path = tmp_path / "s1.ann.lsr-estimates.json"
    s = make_session()
    s.record(30)
    d = s.to_dict()
    for version in (9, "1", True):
        d["version"] = version
        path.write_text(json.dumps(d))
        with pytest.raises(LsrInputError, match=f"version {version!r} is not one") as err:
            AnnotationSession.load(path)
        assert str(path) in str(err.value)
    before = path.read_bytes()
    with pytest.raises(LsrInputError, match="left as it is"):
        open_session(path, lambda: pytest.fail("no new session"))
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    d.pop("version")  # an autosave without a version is version 1
    path.write_text(json.dumps(d))
    assert AnnotationSession.load(path).results == s.results


def test_session_edges_must_be_fractions_from_0_to_1(tmp_path):
    path = tmp_path / "s.json"
    d = make_session().to_dict()
    d["edges"] = [100 * e for e in d["edges"]]
    path.write_text(json.dumps(d))
    with pytest.raises(LsrInputError, match="fractions, not percent") as err:
        AnnotationSession.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_a_session_with_its_own_bins_makes_its_table_or_says_why_not():
    """Paper Table 1 fills unestimated bins only when the bins are the paper's; a session
    with its own bins got "the fallback table has different bin edges" whatever it held."""
    z = np.repeat([0, 1], 4).reshape(2, 4)
    s = AnnotationSession(
        expert="ann", slide="s", blocks=sample_blocks(z, per_bin=4, n_bins=2), edges=(0, 0.5, 1)
    )
    percent = {0: 10.0, 1: 60.0}
    for b in (0, 1):
        if b == 1:  # bin 1 without an estimate yet
            with pytest.raises(LsrInputError, match=r"bins \[1\] have no estimate yet.*Table 1"):
                s.table()
        for i in (i for i, blk in enumerate(s.blocks) if blk.z == b):
            s.go(i)
            s.record(percent[b])
    t = s.table()
    assert t.edges == (0.0, 0.5, 1.0)
    np.testing.assert_allclose(t.eta[:, 0], [0.1, 0.6])
