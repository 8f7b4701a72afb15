"""Tabular datasets (CSV, Parquet, JSON Lines): profile, preview and load.

Profiling reads the file a batch at a time (pyarrow's streaming CSV reader, Parquet row
groups, JSON Lines in chunks of lines), every value as text, and decides each column's type
over the whole file:

- `integer` / `float`: every present value is a number (`float` once one has a fraction or
  an exponent); `boolean`: every present value is true/false; `datetime`: every present value
  is an ISO 8601 date or time; anything else is `string`.
- A column where at least 90 % of the present values are numbers and the rest are not is
  refused as *mixed* (a stray "n/a" or a unit typed into a number column), naming the first
  value that is not a number, rather than silently read as text.
- Missing: empty cells and the usual null spellings (NA, N/A, null, NaN, …).
- The label column is the one named by `label`, else one called label, target, class or y.
  It is a classification target when its values are text or booleans, or integers with at
  most 50 distinct values; else a regression target. A classification target needs two
  classes at least.
- A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return and is not a
  number is refused: a spreadsheet that opens an export of it would run it as a formula (CSV
  injection).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.datasets.common import Limits, shown
from modelworks.errors import UnsupportedFormat, ValidationFailed

if TYPE_CHECKING:
    import pandas
    import pyarrow

BLOCK_BYTES = 1 << 20
JSONL_CHUNK_LINES = 10_000
MAX_DISTINCT = 10_000
MIXED_SHARE = 0.9
CLASSIFICATION_MAX_INTEGERS = 50
LABEL_NAMES = ("label", "target", "class", "y")
NULLS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A"]
_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^[+-]?(inf|Infinity)$"
_BOOL = r"^(true|false|True|False|TRUE|FALSE)$"
_FORMULA = r"^[=+\-@\t\r]"
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


def _unreadable(fmt: str, why: str) -> ValidationFailed:
    hint = {
        "csv": "save it as UTF-8 CSV with a header row",
        "parquet": "write it with pandas.DataFrame.to_parquet or pyarrow",
        "jsonl": "write one JSON object per line",
    }[fmt]
    return ValidationFailed(f"the {fmt} file cannot be read: {why}; {hint}")


# reading, a batch of text columns at a time ------------------------------------------------
def _csv_names(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "Empty CSV file" in text:
            raise ValidationFailed(
                "the CSV file is empty; upload a header row and data rows"
            ) from None
        raise _csv_problem(text) from None
    names = list(reader.schema.names)
    reader.close()
    return names


def _csv_problem(text: str, names: list[str] | None = None) -> ValidationFailed:
    m = re.search(r"CSV column #(\d+)", text)
    column = (
        f" in column {shown(names[int(m[1])])}" if m and names and int(m[1]) < len(names) else ""
    )
    if "UTF8" in text or "UTF-8" in text:
        return ValidationFailed(
            f"the CSV file holds bytes that are not UTF-8{column}; save the file as UTF-8"
        )
    m = re.search(r"Expected (\d+) columns, got (\d+)", text)
    if m:
        return ValidationFailed(
            f"a row has {m[2]} columns where the header has {m[1]}; every row needs one value "
            "per column (quote values that hold commas)"
        )
    return _unreadable("csv", text.splitlines()[0][:200] if text else "unknown error")


@dataclass
class _Ragged:
    row: int | None = None
    expected: int = 0
    actual: int = 0


def _csv_batches(path: Path, names: list[str]) -> Iterator[dict[str, pyarrow.Array]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    ragged = _Ragged()

    def invalid(row: Any) -> str:
        ragged.row, ragged.expected, ragged.actual = (
            row.number,
            row.expected_columns,
            row.actual_columns,
        )
        return "error"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=True,
                null_values=NULLS,
            ),
        )
        for batch in reader:
            yield {n: batch.column(i) for i, n in enumerate(names)}
    except pa.ArrowInvalid as exc:
        if ragged.row is not None or ragged.expected:
            where = f"line {ragged.row}" if ragged.row else "a row"
            raise ValidationFailed(
                f"{where} has {ragged.actual} columns where the header has {ragged.expected}; "
                "every row needs one value per column (quote values that hold commas)"
            ) from None
        raise _csv_problem(str(exc), names) from None


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable("parquet", str(exc).splitlines()[0][:200]) from None


def _parquet_batches(path: Path) -> tuple[list[str], Iterator[dict[str, pyarrow.Array]]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    f = _parquet_file(path)
    names = list(f.schema_arrow.names)

    def batches() -> Iterator[dict[str, pyarrow.Array]]:
        try:
            for batch in f.iter_batches(batch_size=65_536):
                out = {}
                for i, n in enumerate(names):
                    col = batch.column(i)
                    if pa.types.is_nested(col.type) or pa.types.is_binary(col.type):
                        raise ValidationFailed(
                            f"column {shown(n)} holds {col.type} values; a dataset column "
                            "holds numbers, text, booleans or times"
                        )
                    out[n] = pc.cast(col, pa.string())
                yield out
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable("parquet", str(exc).splitlines()[0][:200]) from None

    return names, batches()


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationFailed(
                    f"line {number} of the JSON Lines file is not UTF-8; save the file as UTF-8"
                ) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError:
                raise ValidationFailed(
                    f"line {number} of the JSON Lines file is not JSON; write one JSON object "
                    "per line"
                ) from None
            if not isinstance(row, dict):
                raise ValidationFailed(
                    f"line {number} of the JSON Lines file is not a JSON object; write one "
                    'object per line, e.g. {"text": "…", "label": "…"}'
                )
            yield number, row


def _as_text(value: Any, column: str, line: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValidationFailed(
        f"line {line}: column {shown(column)} holds a nested value; a dataset column holds "
        "numbers, text or booleans"
    )


def _jsonl_batches(path: Path) -> tuple[list[str], Iterator[dict[str, pyarrow.Array]]]:
    import pyarrow as pa

    names: list[str] = []
    for _, row in _jsonl_rows(path):
        names = [str(k) for k in row]
        break

    def batches() -> Iterator[dict[str, pyarrow.Array]]:
        chunk: dict[str, list[str | None]] = {n: [] for n in names}
        for line, row in _jsonl_rows(path):
            unknown = [k for k in row if k not in chunk]
            if unknown:
                raise ValidationFailed(
                    f"line {line} has the key {shown(unknown[0])}, which the first line does "
                    "not; every line needs the same keys"
                )
            for n in names:
                chunk[n].append(_as_text(row.get(n), n, line))
            if len(chunk[names[0]]) >= JSONL_CHUNK_LINES:
                yield {n: pa.array(v, pa.string()) for n, v in chunk.items()}
                chunk = {n: [] for n in names}
        if names and chunk[names[0]]:
            yield {n: pa.array(v, pa.string()) for n, v in chunk.items()}

    return names, batches()


def _batches(path: Path, fmt: str) -> tuple[list[str], Iterator[dict[str, pyarrow.Array]]]:
    if fmt == "csv":
        names = _csv_names(path)
        return names, _csv_batches(path, names)
    if fmt == "parquet":
        return _parquet_batches(path)
    if fmt == "jsonl":
        return _jsonl_batches(path)
    raise UnsupportedFormat(f"{fmt} is not a tabular format")


# profiling ----------------------------------------------------------------------------------
@dataclass
class _Column:
    name: str
    present: int = 0
    missing: int = 0
    ints: int = 0
    floats: int = 0
    bools: int = 0
    datetimes: int = 0
    first_text: tuple[int, str] | None = None  # the first non-number: (row, value)
    first_not_time: tuple[int, str] | None = None
    low: float = math.inf
    high: float = -math.inf
    distinct: set[str] = field(default_factory=set)
    capped: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def kind(self) -> str:
        if self.present == 0:
            return "string"
        if self.floats == self.present:
            return "integer" if self.ints == self.present else "float"
        if self.bools == self.present:
            return "boolean"
        if self.datetimes == self.present:
            return "datetime"
        return "string"


def _check_names(names: list[str], limits: Limits) -> None:
    if len(names) > limits.max_columns:
        raise ValidationFailed(
            f"the file has {len(names)} columns; at most {limits.max_columns} are accepted "
            "(drop the columns the model does not need)"
        )
    seen: set[str] = set()
    for i, n in enumerate(names):
        if not n.strip():
            raise ValidationFailed(f"column {i + 1} has no name; give every column a header")
        if n in seen:
            raise ValidationFailed(f"the column name {shown(n)} appears twice; rename one")
        seen.add(n)


def _scan(col: _Column, arr: pyarrow.Array, offset: int, limits: Limits, line0: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    nulls = arr.null_count
    col.missing += nulls
    col.present += len(arr) - nulls
    if len(arr) == nulls:
        return
    longest = pc.max(pc.binary_length(arr)).as_py() or 0
    if longest > limits.max_cell_bytes:
        row = int(pc.index(pc.greater(pc.binary_length(arr), limits.max_cell_bytes), True).as_py())
        raise ValidationFailed(
            f"line {line0 + offset + row}: a value in column {shown(col.name)} is longer than "
            f"{limits.max_cell_bytes} bytes"
        )
    is_float = pc.fill_null(pc.match_substring_regex(arr, _FLOAT), True)
    formula = pc.and_(
        pc.fill_null(pc.match_substring_regex(arr, _FORMULA), False), pc.invert(is_float)
    )
    if pc.any(formula).as_py():
        row = int(pc.index(formula, True).as_py())
        raise ValidationFailed(
            f"line {line0 + offset + row}: column {shown(col.name)} holds "
            f"{shown(arr[row].as_py())}, which a spreadsheet would run as a formula; remove "
            "the leading character or prefix the value with ' (CSV injection)"
        )
    floats = int(pc.sum(pc.and_(is_float, pc.is_valid(arr))).as_py() or 0)
    col.floats += floats
    col.ints += int(pc.sum(pc.fill_null(pc.match_substring_regex(arr, _INT), False)).as_py() or 0)
    col.bools += int(pc.sum(pc.fill_null(pc.match_substring_regex(arr, _BOOL), False)).as_py() or 0)
    if col.first_text is None and floats < len(arr) - nulls:
        row = int(pc.index(pc.invert(is_float), True).as_py())
        col.first_text = (line0 + offset + row, str(arr[row].as_py()))
    if floats:
        numbers = pc.cast(pc.filter(arr, is_float), pa.float64())
        found = pc.min_max(numbers).as_py()
        if found["min"] is not None:
            col.low, col.high = min(col.low, found["min"]), max(col.high, found["max"])
    if col.first_not_time is None:  # still every value a time so far
        times = pc.fill_null(pc.match_substring_regex(arr, _ISO.pattern), True)
        col.datetimes += int(pc.sum(pc.and_(times, pc.is_valid(arr))).as_py() or 0)
        if not pc.all(times).as_py():
            row = int(pc.index(pc.invert(times), True).as_py())
            col.first_not_time = (line0 + offset + row, str(arr[row].as_py()))
    if not col.capped:
        col.distinct.update(v for v in pc.unique(arr).to_pylist() if v is not None)
        if len(col.distinct) > MAX_DISTINCT:
            col.capped = True
            col.distinct = set()


def _count(col: _Column, arr: pyarrow.Array, limits: Limits) -> None:
    import pyarrow.compute as pc

    for item in pc.value_counts(arr.drop_null()).to_pylist():
        key = str(item["values"])
        col.counts[key] = col.counts.get(key, 0) + int(item["counts"])
    if len(col.counts) > limits.max_classes:
        raise ValidationFailed(
            f"the label column {shown(col.name)} has more than {limits.max_classes} classes; "
            "is it the right column? (name it with the 'label' field)"
        )


def profile(
    path: Path,
    fmt: str,
    *,
    label: str | None = None,
    entity: str | None = None,
    time: str | None = None,
    limits: Limits = Limits(),
) -> dict[str, Any]:
    """The profile stored with a dataset version (see the module's docstring for the rules);
    a file that does not read cleanly is a 422 naming the column and the problem."""
    if fmt == "images":
        from modelworks.datasets.images import profile_images

        return profile_images(path, limits)
    with _read_errors(fmt):
        return _profile(path, fmt, label, entity, time, limits)


@contextmanager
def _read_errors(fmt: str) -> Iterator[None]:
    """What the readers raise on a file they cannot make sense of, as a 422 (anything not
    foreseen above: a header that is not UTF-8, a damaged Parquet page)."""
    import pyarrow as pa

    try:
        yield
    except UnicodeDecodeError:
        raise ValidationFailed(
            f"the {fmt} file holds bytes that are not UTF-8; save the file as UTF-8"
        ) from None
    except (pa.ArrowException, OverflowError) as exc:
        raise _unreadable(fmt, (str(exc).splitlines() or ["unknown error"])[0][:200]) from None


def _profile(
    path: Path,
    fmt: str,
    label: str | None,
    entity: str | None,
    time: str | None,
    limits: Limits,
) -> dict[str, Any]:
    names, batches = _batches(path, fmt)
    if not names:
        raise ValidationFailed(f"the {fmt} file has no columns")
    _check_names(names, limits)
    for what, column in (("label", label), ("entity", entity), ("time", time)):
        if column is not None and column not in names:
            raise ValidationFailed(
                f"the {what} column {shown(column)} is not in the file; its columns are "
                f"{', '.join(map(shown, names[:20]))}"
            )
    if (entity is None) != (time is None):
        raise ValidationFailed("a time series names both its 'entity' and its 'time' column")
    if label is None:
        label = next((n for n in names if n.lower() in LABEL_NAMES), None)
    columns = {n: _Column(n) for n in names}
    rows = 0
    line0 = 2 if fmt == "csv" else 1  # the first data row's line
    for batch in batches:
        size = len(next(iter(batch.values()))) if batch else 0
        for n, arr in batch.items():
            _scan(columns[n], arr, rows, limits, line0)
            if n == label:
                _count(columns[n], arr, limits)
        rows += size
    if rows == 0:
        raise ValidationFailed(f"the {fmt} file has a header but no rows; upload some data")
    out_columns = []
    for col in columns.values():
        kind = col.kind()
        if kind == "string" and col.present and col.floats >= MIXED_SHARE * col.present:
            line, value = col.first_text or (0, "")
            raise ValidationFailed(
                f"column {shown(col.name)} mixes numbers and text: line {line} holds "
                f"{shown(value)} where the other values are numbers; fix or empty those cells"
            )
        info: dict[str, Any] = {"name": col.name, "type": kind, "missing": col.missing}
        info["distinct"] = None if col.capped else len(col.distinct)
        info["distinct_capped"] = col.capped
        if kind in ("integer", "float") and math.isfinite(col.low):
            info["min"] = int(col.low) if kind == "integer" else col.low
            info["max"] = int(col.high) if kind == "integer" else col.high
        out_columns.append(info)
    result: dict[str, Any] = {
        "format": fmt,
        "rows": rows,
        "columns": out_columns,
        "label": label,
        "task": None,
        "classes": None,
        "entity": entity,
        "entities": None,
        "time": time,
    }
    if label is not None:
        _label(result, columns[label])
    if entity is not None and time is not None:
        _series(result, columns[entity], columns[time])
    return result


def _label(result: dict[str, Any], col: _Column) -> None:
    kind = col.kind()
    distinct = len(col.counts)
    classify = kind in ("string", "boolean", "datetime") or (
        kind == "integer" and distinct <= CLASSIFICATION_MAX_INTEGERS
    )
    if not classify:
        result["task"] = "regression"
        return
    if col.present == 0:
        raise ValidationFailed(f"the label column {shown(col.name)} has no values")
    if distinct < 2:
        only = next(iter(col.counts), "")
        raise ValidationFailed(
            f"the label column {shown(col.name)} has one class ({shown(only)}); "
            "a classifier needs at least two classes"
        )
    result["task"] = "classification"
    result["classes"] = dict(sorted(col.counts.items()))


def _series(result: dict[str, Any], entity: _Column, time: _Column) -> None:
    kind = time.kind()
    if kind not in ("integer", "float", "datetime"):
        line, value = time.first_not_time or time.first_text or (0, "")
        raise ValidationFailed(
            f"the time column {shown(time.name)} must hold numbers or ISO 8601 times; line "
            f"{line} holds {shown(value)}"
        )
    if entity.missing:
        raise ValidationFailed(
            f"the entity column {shown(entity.name)} has {entity.missing} empty cells; every "
            "row of a time series names its machine"
        )
    result["entities"] = None if entity.capped else len(entity.distinct)


# preview and loading ------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def preview(path: Path, fmt: str, rows: int = 20) -> dict[str, Any]:
    """`{"columns": [...], "rows": [[...], ...]}`: the first `rows` rows as JSON values."""
    if fmt == "images":
        from modelworks.datasets.images import preview_images

        return preview_images(path, rows)
    with _read_errors(fmt):
        return _preview(path, fmt, rows)


def _preview(path: Path, fmt: str, rows: int) -> dict[str, Any]:
    if fmt == "jsonl":
        names: list[str] = []
        found: list[list[Any]] = []
        for _, row in _jsonl_rows(path):
            names = names or [str(k) for k in row]
            found.append([_json_value(row.get(n)) for n in names])
            if len(found) >= rows:
                break
        return {"columns": names, "rows": found}
    import pyarrow as pa

    if fmt == "csv":
        import pyarrow.csv as pacsv

        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(null_values=NULLS, strings_can_be_null=True),
            )
            batch = reader.read_next_batch()
        except (pa.ArrowInvalid, StopIteration) as exc:
            raise _csv_problem(str(exc)) from None
        table = pa.Table.from_batches([batch]).slice(0, rows)
    else:
        f = _parquet_file(path)
        table = pa.Table.from_batches([next(f.iter_batches(batch_size=rows))])
    names = list(table.column_names)
    data = [[_json_value(r[n]) for n in names] for r in table.to_pylist()]
    return {"columns": names, "rows": data}


def load_frame(path: Path, fmt: str) -> pandas.DataFrame:
    """The whole tabular dataset as a DataFrame (for the recipes)."""
    import pandas as pd

    if fmt == "csv":
        return pd.read_csv(path, na_values=NULLS, keep_default_na=True)
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "jsonl":
        return pd.DataFrame([row for _, row in _jsonl_rows(path)])
    raise UnsupportedFormat(f"{fmt} is not a tabular format")
