"""``lsr table`` commands through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from lsr.counttable import CountTable


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lsr", *args], capture_output=True, text=True, timeout=120
    )


def test_show_paper_table1_prints_ten_rows():
    res = run("table", "show", "paper-table1")
    assert res.returncode == 0, res.stderr
    for label, cell in [("0–20", "0.0 ± 0.1"), ("90–95", "20.0 ± 2.0"), ("95–100", "70.0 ± 5.0")]:
        line = next(ln for ln in res.stdout.splitlines() if f" {label} " in ln)
        assert cell in line
    assert sum("±" in ln for ln in res.stdout.splitlines()) == 10


def test_from_estimates_writes_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["z,percent_cancer,expert"]
    z = np.repeat(np.arange(10), 4)
    pc = np.clip(rng.normal(z * 8, 3), 0, 100).round(0)
    rows += [f"{a},{b},ann" for a, b in zip(z, pc, strict=True)]
    rows.append("3,,ann")  # an empty estimate without a skip reason is an error
    est = tmp_path / "est.csv"
    est.write_text("\n".join(rows) + "\n")
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    assert res.returncode == 2 and "row 42" in res.stderr and str(est) in res.stderr
    header = "z,percent_cancer,expert,skipped"
    body = [r + "," for r in rows[1:-1]] + ["3,,ann,artefact"]  # a skip with its reason is fine
    est.write_text("\n".join([header, *body]) + "\n")
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    t = CountTable.from_json(tmp_path / "t.json")
    np.testing.assert_allclose(t.eta[:, 0], [pc[z == b].mean() / 100 for b in range(10)])
    assert len(t.estimates) == 41 and t.n.sum() == 40
    res = run("table", "show", str(tmp_path / "t.json"))
    assert res.returncode == 0 and sum("±" in ln for ln in res.stdout.splitlines()) == 10


def test_show_reports_bad_file_in_one_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("bin,cancer_mean,cancer_std\n0,abc,1\n")
    res = run("table", "show", str(p))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "row 2" in res.stderr and str(p) in res.stderr


def test_from_estimates_and_show_name_a_top_bin_below_a_lower_one(tmp_path):
    z = np.repeat(np.arange(10), 3)
    pc = np.where(z == 9, 40.0, np.where(z == 8, 75.0, 5.0 * z))  # top bin 35 points low
    est = tmp_path / "est.csv"
    est.write_text("z,percent_cancer\n" + "".join(f"{a},{b}\n" for a, b in zip(z, pc, strict=True)))
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # rich wraps long lines
    want = "top bin (95–100%) average 40.0% cancer in this table, 35 points below bin 90–95%"
    assert want in text
    res = run("table", "show", str(tmp_path / "t.json"))
    assert "35 points below bin 90–95%" in " ".join(res.stdout.split())
    res = run("table", "show", "paper-table1")
    assert "top bin" not in res.stdout


def _estimates_csv(path):
    z = np.repeat(np.arange(10), 3)
    path.write_text("z,percent_cancer\n" + "".join(f"{b},{5 * b + i}\n" for i, b in enumerate(z)))
    return path.read_bytes()


def test_from_estimates_never_overwrites_the_estimates_or_other_files(tmp_path):
    est = tmp_path / "mine.csv"
    before = _estimates_csv(est)
    res = run("table", "from-estimates", str(est), "-o", str(est))
    assert res.returncode == 2 and "estimates file itself" in res.stderr
    assert est.read_bytes() == before
    # the same file by another spelling
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "." / "mine.csv"))
    assert res.returncode == 2 and est.read_bytes() == before
    # another expert's estimates, or any file that is not a count table, is kept
    other = tmp_path / "other.csv"
    other_bytes = _estimates_csv(other)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    for target, content in ((other, other_bytes), (notes, b'{"mine": 1}\n')):
        res = run("table", "from-estimates", str(est), "-o", str(target))
        assert res.returncode == 2 and "not a count table" in res.stderr, res.stderr
        assert str(target) in res.stderr and target.read_bytes() == content
    # an older table is replaced, as asked
    old = tmp_path / "t.json"
    CountTable.paper_table1().to_json(old)
    res = run("table", "from-estimates", str(est), "-o", str(old))
    assert res.returncode == 0, res.stderr
    assert CountTable.from_json(old).n.sum() == 30


def test_bad_estimates_name_their_rows_and_values(tmp_path):
    est = tmp_path / "est.csv"
    est.write_text("z,percent_cancer,skipped\n0,5,\n1,nan,\n2,150,\n3,-2,\n4,900,artefact\n")
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    assert res.returncode == 2 and f"{est}, row 3: 1 estimate is NaN" in res.stderr
    est.write_text("z,percent_cancer,skipped\n0,5,\n2,150,\n3,-2,\n4,900,artefact\n")
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    want = f"{est}, rows 3, 4: cancer percentages must lie in 0-100, got 150, -2"
    assert res.returncode == 2 and want in res.stderr, res.stderr
    assert not (tmp_path / "t.json").exists()


def test_missing_table_or_fallback_is_file_not_found(tmp_path):
    res = run("table", "show", str(tmp_path / "nope"))
    assert res.returncode == 2 and "file not found" in res.stderr and "format" not in res.stderr
    est = tmp_path / "est.csv"
    _estimates_csv(est)
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"), "--fallback",
              str(tmp_path / "nope.csv"))  # fmt: skip
    assert res.returncode == 2 and f"{tmp_path / 'nope.csv'}: file not found" in res.stderr


def test_csvs_from_spreadsheets_get_one_clear_error(tmp_path):
    """Excel's Windows-1252 / UTF-16 CSVs, ';' separators and a column given twice: one
    error line naming the file, no traceback, no table written."""
    out = tmp_path / "t.json"
    cases = {
        "latin1.csv": ("z,percent_cancer,expert\n0,10,J\xf6rg\n".encode("cp1252"), "not UTF-8"),
        "utf16.csv": ("z,percent_cancer\n0,10\n".encode("utf-16"), "not UTF-8"),
        "semi.csv": (b"z;percent_cancer\n0;10\n", "separated by semicolons"),
        "dup.csv": (b"z,percent_cancer,z\n0,10,1\n", "column 'z' appears twice"),
    }
    for name, (raw, want) in cases.items():
        est = tmp_path / name
        est.write_bytes(raw)
        res = run("table", "from-estimates", str(est), "-o", str(out), "--fallback",
                  "paper-table1")  # fmt: skip
        assert res.returncode == 2 and want in res.stderr and str(est) in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and not out.exists()
    table = tmp_path / "semi_table.csv"
    CountTable.paper_table1().to_csv(table)
    table.write_text(table.read_text().replace(",", ";"))
    res = run("table", "show", str(table))
    assert res.returncode == 2 and "separated by semicolons" in res.stderr, res.stderr


def test_show_on_a_folder_says_it_is_a_folder(tmp_path):
    res = run("table", "show", str(tmp_path))
    assert res.returncode == 2 and "is a folder" in res.stderr and "format" not in res.stderr


def test_trailing_empty_columns_of_a_spreadsheet_are_not_a_column_twice(tmp_path):
    """Excel pads rows with empty columns ('z,percent_cancer,,'): two empty names are not a
    duplicated column (the duplicate check refused such files)."""
    est = tmp_path / "padded.csv"
    est.write_text("z,percent_cancer,,\n" + "".join(f"{z},{5 * z},,\n" for z in range(10)))
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    assert CountTable.from_json(tmp_path / "t.json").n.sum() == 10


def test_a_fallback_with_other_bins_is_named_not_the_estimates(tmp_path):
    est = tmp_path / "est.csv"
    est.write_text("z,percent_cancer\n0,10\n1,20\n")
    fb = tmp_path / "fb.json"
    CountTable(np.array([[0.1, 0.9], [0.6, 0.4]]), np.full((2, 2), 0.1), edges=(0, 0.5, 1)).to_json(
        fb
    )
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"),
              "--fallback", str(fb))  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith(f"error: {fb}: "), res.stderr
    assert "bin edges" in res.stderr and not (tmp_path / "t.json").exists()


def test_an_estimates_row_with_more_values_than_columns_is_an_error(tmp_path):
    """'0,10,5' (10.5 with a decimal comma) under 'z,percent_cancer' was read as 10."""
    est = tmp_path / "est.csv"
    rows = [f"{z},{5 * z}" for z in range(10)]
    est.write_text("z,percent_cancer\n" + "".join(r + ",\n" for r in rows))  # empty padding
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    rows[2] = "2,10,5"
    est.write_text("z,percent_cancer\n" + "".join(r + "\n" for r in rows))
    res = run("table", "from-estimates", str(est), "-o", str(tmp_path / "u.json"))
    assert res.returncode == 2 and f"{est}, row 4: 3 values" in res.stderr, res.stderr
    assert not (tmp_path / "u.json").exists()


def test_estimates_without_an_estimate_are_an_error_even_with_a_fallback(tmp_path):
    """A header alone (or only skips) with --fallback wrote a copy of the fallback, exit 0."""
    out = tmp_path / "t.json"
    for body, why in (("", "only a header"), ("3,,artefact\n", "every row is skipped")):
        est = tmp_path / "est.csv"
        est.write_text("z,percent_cancer,skipped\n" + body)
        res = run("table", "from-estimates", str(est), "-o", str(out), "--fallback",
                  "paper-table1")  # fmt: skip
        assert res.returncode == 2 and f"{est}: no estimates" in res.stderr, res.stderr
        assert why in res.stderr and not out.exists()


def test_show_refuses_a_json_table_with_percent_edges(tmp_path):
    d = CountTable.paper_table1().to_dict()
    d["edges"] = [100 * e for e in d["edges"]]
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    res = run("table", "show", str(p))
    assert res.returncode == 2 and f"{p}: " in res.stderr, res.stdout
    assert "fractions, not percent" in res.stderr and "%" not in res.stdout
