"""write_csv_atomic (lprnet.csv_io): the stages' one CSV writer. Atomicity itself is io.py's (tests/test_io.py)."""

from __future__ import annotations

import pytest

from lprnet.csv_io import read_csv, write_csv_atomic
from lprnet.errors import InputError


def test_header_then_rows_from_sequences_or_mappings_with_floats_rounded(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    write_csv_atomic(path, ["artifact", "latency_ms_p50", "pareto"],
                     [["ort, fp32", 1.234567, 1], {"pareto": 0, "artifact": "tvm", "latency_ms_p50": 2.0}], digits=4)
    assert path.read_text() == 'artifact,latency_ms_p50,pareto\n"ort, fp32",1.2346,1\ntvm,2.0,0\n'
    assert [p.name for p in path.parent.iterdir()] == ["table.csv"]  # no temporary file left


def test_without_digits_values_are_written_as_they_are(tmp_path):
    write_csv_atomic(tmp_path / "t.csv", ["x"], [[1 / 3], [float("nan")]])
    assert (tmp_path / "t.csv").read_text() == f"x\n{1 / 3}\nnan\n"


@pytest.mark.parametrize("row", [[1], {"a": 1}, {"a": 1, "b": 2, "c": 3}])
def test_a_row_that_does_not_fit_the_columns_is_a_bug_and_writes_nothing(tmp_path, row):
    with pytest.raises(ValueError, match="columns"):
        write_csv_atomic(tmp_path / "t.csv", ["a", "b"], [row])
    assert not (tmp_path / "t.csv").exists()


def test_a_table_reads_back_as_written_and_another_header_is_refused_by_name(tmp_path):
    path = tmp_path / "t.csv"
    write_csv_atomic(path, ["artifact", "ms"], [["ort, fp32", 1.5]])
    assert read_csv(path, ["artifact", "ms"]) == [{"artifact": "ort, fp32", "ms": "1.5"}]
    with pytest.raises(InputError, match=r"t\.csv: columns \['artifact', 'ms'\] are not the expected"):
        read_csv(path, ["artifact", "ms", "pareto"])
