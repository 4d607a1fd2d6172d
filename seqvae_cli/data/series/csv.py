"""data=csv: your own series from a CSV file (a timestamp column and value columns, optional labels)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from seqvae_cli.config.rules import check_arguments, one_of
from seqvae_cli.data.base import read_text_file, resolve_data_dir
from seqvae_cli.data.series.windows import MAX_ABS_VALUE
from seqvae_cli.data.series.windowed import RawSeries, WindowedSeriesData
from seqvae_cli.data.series.windows import UNKNOWN
from seqvae_cli.errors import SeqvaeError

# Cells that mean "no value" in a CSV file (compared lower-case, after stripping blanks).
MISSING_MARKERS = frozenset({"", "nan", "na", "n/a", "null", "none", "-"})


# ------------------------------------------------------------------------------------ CSV reading

def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_MARKERS


def _cell_problem(cell: str) -> str:
    """What is wrong with a value cell that did not parse as a finite number of at most MAX_ABS_VALUE."""
    cell = cell.strip()
    if _is_missing(cell):
        return "missing value"
    try:
        value = float(cell)
    except ValueError:
        return f"non-numeric value {cell!r}"
    if not math.isfinite(value):
        return f"non-finite value {cell!r}"
    return f"value {cell} beyond +-{MAX_ABS_VALUE:g}"


def _cell_fix(cell: str) -> str:
    if _is_missing(cell.strip()) or _parse_number(cell) is None:
        return "seqvae does not impute: fill or drop that row"
    return "a value that large breaks the normalisation (its square overflows): correct or drop that row"


def _parse_number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_csv_series(path: Path, timestamp_column: str | None, value_columns: Sequence[str] | None,
                    label_column: str | None = None, delimiter: str = ",", name: str | None = None) -> RawSeries:
    """Read one series from a CSV file with a header row. Every problem is one SeqvaeError line naming the
    file, and the data row (1 = first row after the header), file line and column where relevant."""
    where = f"CSV file {path}"
    text = read_text_file(path, where, "data.path (relative paths are taken from the directory seqvae runs in, "
                                       "or from data_dir with data.relative_to=data_dir)", encoding="utf-8-sig")
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header, rows, lines = None, [], []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue                                   # blank lines are skipped
            if header is None:
                header = [cell.strip() for cell in row]
            else:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise SeqvaeError(f"{where}: line {reader.line_num} is not valid CSV ({exc})") from None
    if header is None:
        raise SeqvaeError(f"{where} is empty; expected a header row (column names) and one row per timestamp")
    if not rows:
        raise SeqvaeError(f"{where} has a header but no data rows; expected one row per timestamp")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise SeqvaeError(f"{where}: the header names column(s) {', '.join(map(repr, dupes))} more than once; "
                          f"column names must be unique")
    for r, (row, line) in enumerate(zip(rows, lines), 1):
        if len(row) != len(header):
            raise SeqvaeError(f"{where}: row {r} (line {line}) has {len(row)} fields but the header has "
                              f"{len(header)} ({', '.join(header)})")
    columns = ", ".join(map(repr, header))

    def column(key: str, col: str) -> int:
        if col not in header:
            raise SeqvaeError(f"{where} has no column {col!r} (data.{key}); its columns are {columns}")
        return header.index(col)

    ts_idx = column("timestamp_column", str(timestamp_column)) if timestamp_column is not None else None
    label_idx = column("label_column", str(label_column)) if label_column is not None else None
    if value_columns is not None:
        value_idx = [column("value_columns", str(c)) for c in value_columns]
        for i in value_idx:
            if i in (ts_idx, label_idx):
                raise SeqvaeError(f"{where}: column {header[i]!r} is listed in data.value_columns and is also the "
                                  f"timestamp or label column; list only value columns")
    else:   # all numeric columns: those with at least one number (others, e.g. ids or dates, are skipped)
        value_idx = [i for i in range(len(header)) if i not in (ts_idx, label_idx)
                     and any(_parse_number(row[i]) is not None for row in rows)]
        if not value_idx:
            raise SeqvaeError(f"{where} has no numeric column besides the timestamp/label column (columns: "
                              f"{columns}); name them with data.value_columns=[...]")
    values = np.empty((len(rows), len(value_idx)), dtype=np.float64)
    for j, i in enumerate(value_idx):
        for r, row in enumerate(rows):
            value = _parse_number(row[i])
            if value is None or abs(value) > MAX_ABS_VALUE:
                raise SeqvaeError(f"{where}: {_cell_problem(row[i])} at row {r + 1} (line {lines[r]}), column "
                                  f"{header[i]!r}; {_cell_fix(row[i])}")
            values[r, j] = value
    labels = np.full(len(rows), UNKNOWN, dtype=np.int64)
    if label_idx is not None:
        for r, row in enumerate(rows):
            cell = row[label_idx].strip()
            value = _parse_number(cell)
            if value not in (0.0, 1.0):
                raise SeqvaeError(f"{where}: label column {header[label_idx]!r} must hold 0 (normal) or 1 "
                                  f"(anomalous); row {r + 1} (line {lines[r]}) has {cell!r}")
            labels[r] = int(value)
    timestamps = (np.array([row[ts_idx].strip() for row in rows]) if ts_idx is not None
                  else np.arange(len(rows)))
    return RawSeries(name or path.name, str(path), timestamps, values, labels, [header[i] for i in value_idx])


class CSVData(WindowedSeriesData):
    """Your own series: one CSV file with a header, one row per timestamp (data=csv)."""

    # timestamp_column and label_column are column names (free text, null = none): they have no rule.
    RULES = {
        "path": ((lambda v: isinstance(v, str) and v.strip() != ""), "the path of a CSV file"),
        "relative_to": one_of("data_dir", "cwd"),
        "delimiter": ((lambda v: isinstance(v, str) and len(v) == 1), "one character, e.g. ','"),
        "value_columns": ((lambda v: v is None or isinstance(v, str) or (isinstance(v, (list, tuple)) and len(v) > 0)),
                          "null (all numeric columns) or a non-empty list of column names"),
        **WindowedSeriesData.RULES,
    }

    def __init__(self, path: str, timestamp_column: str | None = None, value_columns: Sequence[str] | None = None,
                 label_column: str | None = None, delimiter: str = ",", data_dir: str = ".",
                 relative_to: str = "cwd", window: int = 64, stride: int = 1, test_stride: int = 1,
                 train_fraction: float = 0.6, val_fraction: float = 0.2, max_train_length: int | None = None,
                 test_context: bool = True, normalize: str = "zscore", batch_size: int = 64,
                 eval_batch_size: int = 256, eval_iw_samples: int = 100, name: str = "csv") -> None:
        super().__init__(window=window, stride=stride, test_stride=test_stride, train_fraction=train_fraction,
                         val_fraction=val_fraction, max_train_length=max_train_length, test_context=test_context,
                         name=name, data_dir=data_dir, normalize=normalize, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, eval_iw_samples=eval_iw_samples)
        self.path, self.relative_to, self.delimiter = path, relative_to, delimiter
        self.timestamp_column, self.label_column = timestamp_column, label_column
        self.resolved: Path | None = None
        if isinstance(value_columns, str):
            value_columns = [value_columns]
        self.value_columns = value_columns
        with self.deferred_errors():
            check_arguments("data", self.RULES, path=path, relative_to=relative_to, delimiter=delimiter,
                            value_columns=value_columns)
            self.value_columns = None if value_columns is None else [str(c) for c in value_columns]

    def resolve(self) -> Path:
        raw = Path(str(self.path)).expanduser()
        if raw.is_absolute():
            return raw
        if self.relative_to == "data_dir":
            return resolve_data_dir(self.data_dir) / raw
        path = raw.resolve()
        remembered = (self.loaded_state or {}).get("path")   # eval/sample of a run trained elsewhere
        if not path.exists() and remembered and Path(remembered).exists():
            return Path(remembered)
        return path

    def load_series(self) -> list[RawSeries]:
        self.resolved = self.resolve()
        return [read_csv_series(self.resolved, self.timestamp_column, self.value_columns, self.label_column,
                                self.delimiter)]

    def state_dict(self) -> dict:
        state = super().state_dict()
        if state and self.resolved is not None:
            state["path"] = str(self.resolved)
        return state
