"""Parquet traces: the table layout of `dreamer.traces.table`, with the metadata JSON under the
key "trace_meta" of the schema's key-value metadata; read in record batches. Errors name the row
index, e.g. `run.parquet: row 12: field "reward" (column "r"): expected finite numbers, got nan`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dreamer.traces.table import Layout, TableColumns, TableReader, canonical_tables, table_meta
from dreamer.traces.trace import CHUNK_ROWS, Trace, TraceError

META_KEY = b"trace_meta"


def write_parquet(trace: Trace, path: Path) -> None:
    """Write `trace` to `path`, a row group per CHUNK_ROWS transitions."""
    tables = canonical_tables(trace)
    first = next(tables)
    schema = first.schema.with_metadata({META_KEY: json.dumps(table_meta(trace))})
    with pq.ParquetWriter(path, schema) as writer:
        writer.write_table(first.replace_schema_metadata(schema.metadata))
        for table in tables:
            writer.write_table(table.replace_schema_metadata(schema.metadata))


def read_parquet(path: Path, columns: TableColumns) -> Trace:
    """Read and validate a Parquet trace, its columns mapped by `columns`."""
    try:
        with pq.ParquetFile(path) as file:
            schema = file.schema_arrow
            meta = (schema.metadata or {}).get(META_KEY)
            if meta is not None:
                try:
                    meta = json.loads(meta)
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise TraceError(f"expected a JSON object under {META_KEY.decode()!r} ({error})", str(path),
                                     "meta") from None
            layout = Layout.resolve(columns, schema.names, str(path))
            reader = TableReader(path, layout, meta, str(path), columns, lambda row: f"{path}: row {row}",
                                 source=f"{META_KEY.decode()!r} metadata")
            return reader.read(file.iter_batches(batch_size=CHUNK_ROWS, columns=layout.names()))
    except pa.ArrowException as error:  # the casts name their cells; this is what reading the file said
        raise TraceError(f"pyarrow could not read it as Parquet: {error}", str(path)) from None
