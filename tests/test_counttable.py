"""Count tables: Table 1 preset, estimates -> table, binning, CSV/JSON files and their errors."""

from __future__ import annotations

import csv
import itertools
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsr.counttable import (
    PAPER_EDGES,
    RHO_FLOOR,
    TOP_BIN_MAX_DROP,
    CountTable,
    Estimate,
    bin_probabilities,
)
from lsr.errors import LsrInputError

PAPER_CANCER = [
    (0.0, 0.1), (1.0, 0.4), (2.0, 0.4), (5.0, 0.8), (6.0, 1.0),
    (8.0, 1.0), (10.0, 1.0), (10.0, 1.0), (20.0, 2.0), (70.0, 5.0),
]  # fmt: skip


def _estimates(n_per_bin: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = np.repeat(np.arange(10), n_per_bin)
    pc = np.clip(rng.normal(10 * z, 5), 0, 100)
    return z, pc


def test_paper_table1_is_table1():
    t = CountTable.paper_table1()
    assert t.eta.shape == (10, 2) and t.rho.shape == (10, 2)
    assert t.edges == PAPER_EDGES
    np.testing.assert_allclose(t.eta[:, 0] * 100, [m for m, _ in PAPER_CANCER])
    np.testing.assert_allclose(t.rho[:, 0] * 100, [s for _, s in PAPER_CANCER])
    np.testing.assert_allclose(t.eta[:, 1], 1 - t.eta[:, 0])
    np.testing.assert_allclose(t.rho[:, 1], t.rho[:, 0])
    rows = t.format_rows()
    assert rows[0][:3] == ["0–20", "0.0 ± 0.1", "100.0 ± 0.1"]
    assert rows[-1][:3] == ["95–100", "70.0 ± 5.0", "30.0 ± 5.0"]


def test_bin_probabilities_edges():
    p = np.array([0.0, 0.1999, 0.2, 0.3, 0.5, 0.8999, 0.9, 0.95, 0.9999, 1.0])
    np.testing.assert_array_equal(bin_probabilities(p), [0, 0, 1, 2, 4, 7, 8, 9, 9, 9])
    # Independent check: the bin index is the number of interior edges <= p (right-closed
    # only for the last bin).
    rng = np.random.default_rng(1)
    q = rng.uniform(0, 1, 1000)
    expected = np.array([sum(e <= x for e in PAPER_EDGES[1:-1]) for x in q])
    np.testing.assert_array_equal(bin_probabilities(q), expected)


@pytest.mark.parametrize("bad", [np.nan, -0.01, 1.01, 50.0])
def test_bin_probabilities_rejects(bad):
    with pytest.raises(LsrInputError):
        bin_probabilities(np.array([0.5, bad]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.floats(0, 100, allow_nan=False)), min_size=20, max_size=80
    )
)
def test_from_estimates_matches_numpy(pairs):
    z = np.array([p[0] for p in pairs] + list(range(10)) * 2)
    pc = np.array([p[1] for p in pairs] + [37.0] * 10 + [41.5] * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = CountTable.from_estimates(z, pc)
    for b in range(10):
        vals = pc[z == b] / 100
        assert t.n[b] == vals.size
        np.testing.assert_allclose(t.eta[b, 0], np.mean(vals), atol=1e-12)
        np.testing.assert_allclose(t.eta[b, 1], 1 - np.mean(vals), atol=1e-12)
        np.testing.assert_allclose(t.rho[b, 0], max(np.std(vals, ddof=1), RHO_FLOOR), atol=1e-12)
        np.testing.assert_allclose(t.rho[b, 1], t.rho[b, 0])


def test_from_estimates_flags_small_and_constant_bins():
    z, pc = _estimates(3)
    z = np.concatenate([z[z != 4], [4]])  # bin 4: a single estimate
    pc = np.concatenate([pc[: len(z) - 1], [20.0]])
    pc[z == 7] = 30.0  # bin 7: all equal
    with pytest.warns(UserWarning, match="unreliable bins"):
        t = CountTable.from_estimates(z, pc)
    assert set(t.flagged) == {4, 7}
    assert t.rho[4, 0] == RHO_FLOOR and t.rho[7, 0] == RHO_FLOOR
    rows = t.format_rows()  # one estimate has no std to show; equal ones have a std of 0
    assert rows[4][1:3] == ["20.0 ± –", "80.0 ± –"] and rows[4][-1] == "1"
    assert rows[7][1] == f"30.0 ± {100 * RHO_FLOOR:.1f}"


def test_from_estimates_empty_bin_needs_fallback():
    z, pc = _estimates(3)
    keep = z != 5
    with pytest.raises(LsrInputError, match=r"bins \[5\] have no estimate"):
        CountTable.from_estimates(z[keep], pc[keep])
    paper = CountTable.paper_table1()
    with pytest.warns(UserWarning):
        t = CountTable.from_estimates(z[keep], pc[keep], fallback=paper)
    np.testing.assert_array_equal(t.eta[5], paper.eta[5])
    assert "fallback" in t.flagged[5]


@pytest.mark.parametrize(
    ("z", "pc", "match"),
    [
        ([0, 1], [10.0, np.nan], "NaN"),
        ([0, 10], [1.0, 2.0], "0..9"),
        ([0, 1], [1.0, 101.0], "0-100"),
    ],
)
def test_from_estimates_rejects_bad_values(z, pc, match):
    with pytest.raises(LsrInputError, match=match):
        CountTable.from_estimates(z, pc)


def test_lookup_gives_per_block_targets():
    t = CountTable.paper_table1()
    eta, _rho = t.lookup([9, 0, 9])
    assert eta.shape == (3, 2)
    np.testing.assert_allclose(eta[:, 0], [0.7, 0.0, 0.7])
    with pytest.raises(LsrInputError):
        t.lookup([10])


def test_csv_and_json_round_trip(tmp_path):
    z, pc = _estimates(4)
    t = CountTable.from_estimates(z, pc, experts=["ann"] * len(z), slides=["s1"] * len(z))
    t.to_json(tmp_path / "t.json")
    t2 = CountTable.from_json(tmp_path / "t.json")
    np.testing.assert_allclose(t2.eta, t.eta)
    np.testing.assert_allclose(t2.rho, t.rho)
    np.testing.assert_array_equal(t2.n, t.n)
    assert t2.estimates == t.estimates
    assert t2.provenance["experts"] == ["ann"] and "created" in t2.provenance
    t.to_csv(tmp_path / "t.csv")
    t3 = CountTable.from_csv(tmp_path / "t.csv")
    np.testing.assert_allclose(t3.eta, t.eta, atol=1e-6)  # CSV keeps 6 significant digits
    np.testing.assert_allclose(t3.rho, t.rho, atol=1e-6)
    assert t3.edges == t.edges
    text = (tmp_path / "t.csv").read_text().splitlines()
    assert text[0] == "bin,low,high,cancer_mean,cancer_std,non-cancer_mean,non-cancer_std,n"
    assert len(text) == 11


def test_paper_table_csv_round_trip_exact(tmp_path):
    t = CountTable.paper_table1()
    t.save(tmp_path / "p.csv")
    np.testing.assert_allclose(CountTable.load(tmp_path / "p.csv").eta, t.eta, atol=1e-12)


def test_merge_keeps_each_experts_estimates():
    z, pc = _estimates(3, seed=1)
    a = CountTable.from_estimates(z, pc, experts=["a"] * len(z))
    z2, pc2 = _estimates(3, seed=2)
    b = CountTable.from_estimates(z2, pc2, experts=["b"] * len(z2))
    m = CountTable.merge([a, b])
    assert m.provenance["experts"] == ["a", "b"]
    assert len(m.estimates) == len(z) + len(z2)
    allz, allpc = np.concatenate([z, z2]), np.concatenate([pc, pc2])
    np.testing.assert_allclose(m.eta[3, 0], allpc[allz == 3].mean() / 100)


def test_skipped_estimates_are_kept_but_not_counted():
    z, pc = _estimates(3)
    est = [Estimate(int(a), float(b), "x") for a, b in zip(z, pc, strict=True)]
    est.append(Estimate(2, None, "x", skipped="artefact"))
    t = CountTable.from_estimate_list(est)
    assert t.n[2] == 3 and len(t.estimates) == len(z) + 1


GOOD_CSV = "bin,low,high,cancer_mean,cancer_std,n\n" + "".join(
    f"{b},{lo * 100:g},{hi * 100:g},{10 * b},2,5\n"
    for b, (lo, hi) in enumerate(itertools.pairwise(PAPER_EDGES))
)


def test_csv_with_only_cancer_columns(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(GOOD_CSV)
    t = CountTable.from_csv(p)
    assert t.class_names == ("cancer", "non-cancer")
    np.testing.assert_allclose(t.eta[:, 1], 1 - t.eta[:, 0])


def test_csv_class_columns_in_any_order_but_cancer_is_required(tmp_path):
    """Class 0 is cancer whatever the column order; non-cancer columns alone are an error
    (they made a one-class table that trained a network which never calls cancer)."""
    paper = CountTable.paper_table1()
    paper.to_csv(tmp_path / "t.csv")
    rows = list(csv.reader((tmp_path / "t.csv").read_text().splitlines()))
    cols = {name: i for i, name in enumerate(rows[0])}
    order = ["bin", "non-cancer_mean", "non-cancer_std", "cancer_mean", "cancer_std"]
    swapped = "\n".join(",".join(r[cols[c]] for c in order) for r in rows) + "\n"
    (tmp_path / "swapped.csv").write_text(swapped)
    t = CountTable.from_csv(tmp_path / "swapped.csv")
    assert t.class_names == ("cancer", "non-cancer")
    np.testing.assert_allclose(t.eta, paper.eta, atol=1e-6)
    only = "\n".join(",".join(r[cols[c]] for c in order[:3]) for r in rows) + "\n"
    (tmp_path / "only.csv").write_text(only)
    with pytest.raises(LsrInputError, match=r"only\.csv.*missing column 'cancer_mean'"):
        CountTable.from_csv(tmp_path / "only.csv")


def _mutate(lines: list[str], row: int, col: int, value: str) -> str:
    cells = lines[row].split(",")
    cells[col] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda ls: "\n".join([ls[0].replace("cancer_std", "sd"), *ls[1:]]), "missing column"),
        (lambda ls: _mutate(ls, 3, 3, "abc"), "row 4.*not a number"),
        (lambda ls: _mutate(ls, 4, 3, "120"), "row 5.*outside 0-100"),
        (lambda ls: _mutate(ls, 5, 4, "-1"), "row 6.*negative"),
        (lambda ls: "\n".join(ls[:-1]) + "\n", "wrong number of bins|bins must be numbered"),
        (lambda ls: _mutate(ls, 3, 0, "1"), "bin 1 appears twice"),
        (lambda ls: "", "missing column 'bin'"),
    ],
    ids=["missing-column", "non-numeric", "mean-range", "negative-std", "bins", "dup", "empty"],
)
def test_malformed_csv_names_file_and_row(tmp_path, edit, match):
    p = tmp_path / "bad.csv"
    p.write_text(edit(GOOD_CSV.strip().split("\n")))
    with pytest.raises(LsrInputError, match=match) as err:
        CountTable.from_csv(p)
    assert str(p) in str(err.value)


def test_wrong_number_of_bins_without_edges(tmp_path):
    p = tmp_path / "nine.csv"
    p.write_text("bin,cancer_mean,cancer_std\n" + "".join(f"{b},1,1\n" for b in range(9)))
    with pytest.raises(LsrInputError, match="wrong number of bins: 9 rows, expected 10"):
        CountTable.from_csv(p)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("rho"), "missing key 'rho'"),
        (lambda d: d.__setitem__("eta", d["eta"][:-1]), "eta and rho must be|wrong number"),
        (lambda d: d["eta"][2].__setitem__(0, "x"), "'eta' holds 'x': numbers expected"),
        (lambda d: d["eta"][0].__setitem__(0, "0.02"), "'eta' holds '0.02': numbers expected"),
        (lambda d: d["eta"].__setitem__(0, [True, False]), "'eta' holds True: numbers"),
        (lambda d: d.__setitem__("n", "x"), "'n' holds 'x': numbers expected"),
        (lambda d: d.__setitem__("n", [12] * 9 + [-1]), "n \\(estimates per bin\\) must be 10"),
        (lambda d: d.__setitem__("n", [12] * 3), "n \\(estimates per bin\\) must be 10"),
        (lambda d: d.__setitem__("class_names", "cancer"), "'class_names' must be a list"),
        (lambda d: d.__setitem__("flagged", [1, 2]), "'flagged' must map bins to reasons"),
        (lambda d: d.__setitem__("flagged", {"x": "why"}), "malformed count table"),
        (lambda d: d["eta"][2].__setitem__(0, 1.5), "bin 2.*mean outside"),
        (lambda d: d["rho"][3].__setitem__(0, -0.1), "bin 3.*negative std"),
        (lambda d: d.__setitem__("format", "other"), "not a count table"),
    ],
)
def test_malformed_json(tmp_path, mutate, match):
    d = CountTable.paper_table1().to_dict()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(LsrInputError, match=match) as err:
        CountTable.from_json(p)
    assert str(p) in str(err.value)


def test_invalid_json_and_missing_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("{not json")
    with pytest.raises(LsrInputError, match="invalid JSON"):
        CountTable.from_json(p)
    with pytest.raises(LsrInputError, match="file not found"):
        CountTable.load(tmp_path / "missing.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "t.json"
    CountTable.paper_table1().to_json(p)
    before = p.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        CountTable.paper_table1().to_csv(tmp_path / "t.json")
    assert p.read_text() == before
    assert [f.name for f in tmp_path.iterdir()] == ["t.json"]  # no temp file left behind


def test_loaded_table_flags_zero_std_and_small_bins(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(GOOD_CSV.replace("\n3,40,50,30,2,5\n", "\n3,40,50,30,0,5\n").replace(
        "\n5,60,70,50,2,5\n", "\n5,60,70,50,2,1\n"))  # fmt: skip
    t = CountTable.from_csv(p)
    assert set(t.flagged) == {3, 5}
    assert "std 0" in t.flagged[3] and "1 estimate" in t.flagged[5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=10, max_size=10))
def test_top_bin_problem_iff_a_lower_bin_has_20_points_more(percent):
    """Reported exactly when some lower bin's cancer mean exceeds the top bin's by more
    than 20 points (brute force over the bins), naming the bin with the most cancer."""
    eta = np.array(percent, float)[:, None] / 100 * [1, -1] + [0, 1]
    table = CountTable(eta=eta, rho=np.full((10, 2), 0.05))
    drops = [(percent[b] - percent[9], b) for b in range(9)]
    worst, bin_ = max(drops, key=lambda d: (d[0], -d[1]))
    why = table.top_bin_problem()
    assert (why is not None) == (worst / 100 > TOP_BIN_MAX_DROP + 1e-12)
    if why is not None:
        assert f"{worst} points below bin {table.bin_labels()[bin_]}%" in why
        assert "classifier's top bin (95–100%)" in why


def test_top_bin_problem_on_the_paper_table_and_a_study_table():
    assert CountTable.paper_table1().top_bin_problem() is None
    # paper_scale seed 8's simulated expert (docs/results.md): 95-100 % at 47.4 %, 90-95 % at 70.5 %
    cancer = [10.2, 38.9, 42.5, 51.1, 69.5, 56.2, 65.9, 65.9, 70.5, 47.4]
    eta = np.array(cancer)[:, None] / 100 * [1, -1] + [0, 1]
    why = CountTable(eta=eta, rho=np.full((10, 2), 0.3)).top_bin_problem()
    assert why is not None and "23 points below bin 90–95% (70.5%)" in why
    assert CountTable(eta=eta, rho=np.full((10, 2), 0.3)).top_bin_problem(max_drop=0.25) is None


def test_bin_problems_adds_the_top_bin_problem_to_its_flag():
    cancer = np.array([10.0, 20, 30, 40, 50, 60, 70, 80, 90, 40]) / 100
    table = CountTable(eta=np.stack([cancer, 1 - cancer], 1), rho=np.full((10, 2), 0.1))
    assert list(table.bin_problems()) == [9] and table.flagged == {}
    table.flagged = {3: "only 1 estimate", 9: "estimates spread widely"}
    problems = table.bin_problems()
    assert problems[3] == "only 1 estimate"
    assert problems[9].startswith(
        "estimates spread widely; blocks of the classifier's top bin (95–100%) average 40.0%"
    )
    assert table.flagged[9] == "estimates spread widely"  # the table itself is not changed


def test_top_bin_problem_uses_only_bins_with_two_estimates():
    """A single estimate is no mean, and a bin filled from a fallback table has none."""
    z = np.repeat(np.arange(10), 3)
    pc = np.where(z == 8, 90.0, np.where(z == 9, 50.0, 5.0 * z))  # 40 points below bin 8
    pc = pc + np.tile([0.0, 1.0, 2.0], 10)  # spread within each bin (no std-0 warning)
    assert CountTable.from_estimates(z, pc).top_bin_problem() is not None
    keep = ~((z == 8) & (np.arange(z.size) % 3 > 0))  # bin 8 keeps one estimate of 90 %
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bins with a single estimate are flagged
        one = CountTable.from_estimates(z[keep], pc[keep])
        assert one.n[8] == 1 and one.top_bin_problem() is None
        top_once = ~((z == 9) & (np.arange(z.size) % 3 > 0))
        assert CountTable.from_estimates(z[top_once], pc[top_once]).top_bin_problem() is None
        filled = CountTable.from_estimates(  # bin 8 from paper Table 1 (20 %): no estimate
            z[z != 8], pc[z != 8], fallback=CountTable.paper_table1()
        )
        assert filled.n[8] == 0 and filled.top_bin_problem() is None


def test_estimates_given_as_fractions_are_an_error_suggesting_percent():
    z = np.repeat(np.arange(10), 3)
    with pytest.raises(LsrInputError, match=r"all 30 estimates lie in 0-1.*multiply them by 100"):
        CountTable.from_estimates(z, np.linspace(0, 0.9, 30))
    # whole percents of 0 and 1 are percent, not fractions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = CountTable.from_estimates(z, z % 2)
    assert t.eta[:, 0].max() <= 0.01


def test_csv_whose_class_means_do_not_sum_to_100_names_the_bin(tmp_path):
    rows = [f"{b},{c:g},1,{100 - c:g},1" for b, (c, _) in enumerate(PAPER_CANCER)]
    rows[3] = "3,50,3,20,3"
    p = tmp_path / "t.csv"
    p.write_text("bin,cancer_mean,cancer_std,non-cancer_mean,non-cancer_std\n" + "\n".join(rows))
    with pytest.raises(LsrInputError, match=r"row 5: bin 3: class means sum to 70%") as err:
        CountTable.from_csv(p)
    assert str(p) in str(err.value)
    rows[3] = "3,33.3,3,66.6,3"  # hand rounding is fine
    p.write_text("bin,cancer_mean,cancer_std,non-cancer_mean,non-cancer_std\n" + "\n".join(rows))
    assert CountTable.from_csv(p).eta[3, 0] == pytest.approx(0.333)


def test_json_whose_class_means_do_not_sum_to_1_or_of_another_version(tmp_path):
    p = tmp_path / "t.json"
    d = CountTable.paper_table1().to_dict()
    d["eta"][2] = [0.3, 0.3]
    p.write_text(json.dumps(d))
    with pytest.raises(LsrInputError, match=r"bin 2: class means \[0.3, 0.3\] sum to 0.6") as err:
        CountTable.from_json(p)
    assert str(p) in str(err.value)
    for version in (99, "1", None):
        d = CountTable.paper_table1().to_dict()
        d["version"] = version
        p.write_text(json.dumps(d))
        with pytest.raises(LsrInputError, match=f"version {version!r} is not one"):
            CountTable.from_json(p)
    d.pop("version")  # a hand-written table without a version is version 1
    p.write_text(json.dumps(d))
    np.testing.assert_array_equal(CountTable.from_json(p).eta, CountTable.paper_table1().eta)


def test_paper_table1_survives_both_file_formats_with_the_new_checks(tmp_path):
    t = CountTable.paper_table1()
    t.to_csv(tmp_path / "t.csv")
    t.to_json(tmp_path / "t.json")
    for name in ("t.csv", "t.json"):
        np.testing.assert_allclose(CountTable.load(tmp_path / name).eta, t.eta, atol=1e-9)


def test_bad_estimates_name_value_bin_and_block():
    z = [0, 1, 2, 3, 4, 5]
    with pytest.raises(LsrInputError, match=r"^1 estimate is NaN: nan \(z 1, slide s, block b1\)$"):
        CountTable.from_estimates(z, [1, np.nan, 3, 4, 5, 6], slides=["s"] * 6,
                                  blocks=[f"b{i}" for i in range(6)])  # fmt: skip
    with pytest.raises(LsrInputError, match=r"^2 estimates are NaN: nan \(z 1\), nan \(z 4\)$"):
        CountTable.from_estimates(z, [1, np.nan, 3, 4, np.nan, 6])
    pc = [101, -1, 3, 150, 200, 6]
    with pytest.raises(LsrInputError) as err:
        CountTable.from_estimates(z, pc)
    assert str(err.value) == (
        "cancer percentages must lie in 0-100, got 101 (z 0), -1 (z 1), 150 (z 3), ..."
    )


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_a_table_its_reader_would_refuse_never_replaces_a_saved_one(tmp_path, suffix):
    good = CountTable.paper_table1()
    path = tmp_path / f"table{suffix}"
    good.save(path)
    before = path.read_bytes()
    bad = CountTable.paper_table1()
    bad.eta = np.asarray(bad.eta).copy()
    bad.eta[3] = (0.2, 0.2)  # the classes share a block: their fractions must add up to 1
    with pytest.raises(LsrInputError) as err:
        bad.save(path)
    text = str(err.value)
    assert text.startswith(f"{path}, ") and ": not saved: the table would not read back" in text
    assert "sum to 0.4" in text or "sum to 40%" in text
    assert "bin 3" in text  # where in the table, as the reader says it
    assert path.read_bytes() == before  # the good table is still there, whole
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    np.testing.assert_allclose(CountTable.load(path).eta, good.eta)


def test_the_cancer_column_is_found_by_name_whatever_the_order():
    """A JSON table may list non-cancer first; the top-bin check reads its cancer column."""
    from lsr.counttable import cancer_index

    assert [cancer_index(n) for n in (["cancer", "x"], ["stroma", "Tumor"], ["a", "b"])] == [
        0, 1, 0,
    ]  # fmt: skip
    cancer = np.linspace(0.05, 0.9, 10)
    cancer[-1] = 0.3  # the top bin holds less cancer than bin 8: its sample is suspect
    eta = np.stack([cancer, 1 - cancer], axis=1)
    rho = np.full_like(eta, 0.1)
    table = CountTable(eta, rho)
    flipped = CountTable.from_dict(
        CountTable(eta[:, ::-1], rho[:, ::-1], class_names=("non-cancer", "cancer")).to_dict()
    )
    assert table.top_bin_problem() is not None
    assert flipped.cancer == 1 and flipped.top_bin_problem() == table.top_bin_problem()


@pytest.mark.parametrize(
    ("edges", "match"),
    [
        ([100 * e for e in PAPER_EDGES], "fractions, not percent"),
        ([0.05, *PAPER_EDGES[1:]], "start at 0 and end at 1"),
        ([*PAPER_EDGES[:-1], 0.99], "start at 0 and end at 1"),
        (PAPER_EDGES[::-1], "increase strictly"),
    ],
    ids=["percent", "from-5", "to-99", "decreasing"],
)
def test_every_table_needs_edges_from_0_to_1_as_fractions(tmp_path, edges, match):
    """The CSV reader demands bins covering 0-100 %; the constructor, JSON files and
    from_estimates let percent edges (every block in bin 0) or edges from 0.05 through."""
    paper = CountTable.paper_table1()
    with pytest.raises(LsrInputError, match=match):
        CountTable(paper.eta, paper.rho, edges=edges)
    with pytest.raises(LsrInputError, match=match):
        CountTable.from_estimates(np.repeat(np.arange(10), 2), np.full(20, 5.0), edges=edges)
    d = paper.to_dict()
    d["edges"] = list(edges)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    with pytest.raises(LsrInputError, match=match) as err:
        CountTable.from_json(p)
    assert str(err.value).startswith(f"{p}: ")


def test_edges_a_rounding_error_off_0_and_1_are_0_and_1():
    paper = CountTable.paper_table1()
    t = CountTable(paper.eta, paper.rho, edges=[1e-9, *PAPER_EDGES[1:-1], 1 - 1e-9])
    assert t.edges == CountTable(paper.eta, paper.rho).edges
    assert bin_probabilities(np.array([0.0, 1.0]), t.edges).tolist() == [0, t.n_bins - 1]


def test_json_estimate_counts_must_be_whole_numbers(tmp_path):
    d = CountTable.paper_table1().to_dict()
    p = tmp_path / "t.json"
    d["n"] = [3.0] * 10  # a whole number written with a decimal point is a count
    p.write_text(json.dumps(d))
    assert CountTable.from_json(p).n.tolist() == [3] * 10
    d["n"] = [2.7] * 10  # was cut to 2 without a word
    p.write_text(json.dumps(d))
    with pytest.raises(LsrInputError, match="whole counts") as err:
        CountTable.from_json(p)
    assert str(p) in str(err.value)


def test_csv_row_with_more_values_than_columns_names_file_and_row(tmp_path):
    """A decimal comma (cancer_std '2,5') shifted the row's values: 2 was read, 5 became n."""
    lines = GOOD_CSV.strip().split("\n")
    good, p = tmp_path / "good.csv", tmp_path / "t.csv"
    good.write_text(GOOD_CSV)
    padded = [lines[0], *(ln + ",," for ln in lines[1:])]  # a spreadsheet's empty padding
    p.write_text("\n".join(padded) + "\n")
    np.testing.assert_array_equal(CountTable.from_csv(p).rho, CountTable.from_csv(good).rho)
    p.write_text(_mutate(lines, 3, lines[0].split(",").index("cancer_std"), "2,5"))
    with pytest.raises(LsrInputError, match=r"row 4: 7 values .* for 6 columns") as err:
        CountTable.from_csv(p)
    assert str(p) in str(err.value)
