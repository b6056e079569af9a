"""CSV tables (DVC plot data, study tables) written atomically: a header of column names, then one line per row; and
read back, for the plots drawn from the same files.

The one CSV writer of the stages: `write_csv_atomic` renders the table in memory and hands it to io.py's atomic
write, so a killed stage leaves the previous file or none, never a truncated table. Rows are sequences in column
order or mappings keyed by column; floats may be rounded to a number of decimals, which keeps plot data readable
and its diffs small. `read_csv` reads a table back as rows of strings, refusing a file whose header is not the
columns its reader expects (one written by an older version of a stage). Does not choose columns.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence

from lprnet.errors import InputError
from lprnet.io import write_text_atomic


def write_csv_atomic(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence | Mapping],
                     digits: int | None = None) -> None:
    """Write `columns` and `rows` to `path` as CSV (`\\n` line ends), atomically; with `digits`, every float value
    rounded to that many decimals. A mapping row must have exactly the columns as keys."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        if isinstance(row, Mapping):
            if set(row) != set(columns):
                raise ValueError(f"row keys {sorted(row)} are not the columns {list(columns)}")
            row = [row[column] for column in columns]
        elif len(row) != len(columns):
            raise ValueError(f"row of {len(row)} values for {len(columns)} columns: {list(row)}")
        writer.writerow([round(value, digits) if digits is not None and isinstance(value, float) else value
                         for value in row])
    write_text_atomic(path, text.getvalue())


def read_csv(path: str | os.PathLike, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of the CSV file `path`, as mappings from `columns` (its header, exactly) to strings."""
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != list(columns):
            raise InputError(f"{path}: columns {reader.fieldnames} are not the expected {list(columns)} "
                             "(written by another version: run the stage that writes it)")
        return list(reader)
