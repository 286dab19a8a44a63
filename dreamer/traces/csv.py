"""CSV traces: the table layout of `dreamer.traces.table`, UTF-8, read with pyarrow's streaming
CSV reader. An optional first line `#meta {...}` holds the metadata JSON; errors name the file's
line, e.g. `run.csv:12: field "reward" (column "r"): expected a number, got 'abc'`."""

from __future__ import annotations

import codecs
import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from dreamer.traces.table import Layout, TableColumns, TableReader, canonical_tables, table_meta
from dreamer.traces.trace import Trace, TraceError

META_PREFIX = b"#meta "


def write_csv(trace: Trace, path: Path) -> None:
    """Write `trace` to `path`: the meta line, the header, one row per transition."""
    with open(path, "wb") as file:
        file.write(META_PREFIX + json.dumps(table_meta(trace)).encode() + b"\n")
        writer = None
        for table in canonical_tables(trace):
            writer = writer or pa_csv.CSVWriter(file, table.schema)
            writer.write_table(table)
        writer.close()


def _records(path: Path, has_meta: bool) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each data row, skipping blank lines as pyarrow does."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        skipped = int(has_meta)
        if has_meta:
            file.readline()
        reader = csv.reader(file)
        next(reader, None)  # the header
        line = reader.line_num
        for record in reader:
            if record:
                yield skipped + line + 1, record
            line = reader.line_num


def _pyarrow_error(path: Path, has_meta: bool, width: int, error: pa.ArrowException) -> TraceError:
    """A TraceError for what pyarrow said, located at the first row with the wrong number of cells if any."""
    try:
        for line, record in _records(path, has_meta):
            if len(record) != width:
                return TraceError(f"expected {width} cells as the header has, got {len(record)}", f"{path}:{line}")
    except csv.Error:  # Python's CSV reader gave up too: say what pyarrow said
        pass
    return TraceError(f"pyarrow could not read it: {error}", str(path))


def read_csv(path: Path, columns: TableColumns) -> Trace:
    """Read and validate a CSV trace, its columns mapped by `columns`."""
    with open(path, "rb") as file:
        start = len(codecs.BOM_UTF8) if file.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
        file.seek(start)
        first = file.readline()
        meta, has_meta = None, first.startswith(META_PREFIX)
        if has_meta:
            try:
                meta = json.loads(first[len(META_PREFIX):])
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise TraceError(f"expected {META_PREFIX.decode()}{{JSON object}} ({error})", f"{path}:1",
                                 "meta") from None
            start = file.tell()
        file.seek(start)
        try:
            names = next(csv.reader([file.readline().decode("utf-8")]), [])
        except UnicodeDecodeError as error:
            raise TraceError(f"expected UTF-8 text ({error.reason})", f"{path}:{1 + has_meta}") from None
        file.seek(start)
        layout = Layout.resolve(columns, names, f"{path}:{1 + has_meta}")
        reader = TableReader(path, layout, meta, f"{path}:1", columns, lambda row: _line(path, has_meta, row),
                             source="meta line")
        convert = pa_csv.ConvertOptions(column_types={name: pa.string() for name in layout.names()},
                                        include_columns=layout.names(), strings_can_be_null=True,
                                        null_values=[""])  # only empty cells: "NA" or "null" may be text
        try:
            batches = pa_csv.open_csv(file, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                      convert_options=convert)
            return reader.read(batches)
        except pa.ArrowException as error:  # the casts name their cells; this is what reading the CSV said
            raise _pyarrow_error(path, has_meta, len(names), error) from None


def _line(path: Path, has_meta: bool, row: int) -> str:
    """`path:line` of data row `row`."""
    line = next(itertools.islice(_records(path, has_meta), row, None), (None,))[0]
    return f"{path}:{line}" if line else str(path)
