"""Read a log file: as (line number, line) rows inside DuckDB, in parallel, or whole.

DuckDB's CSV reader with one column, no quoting and a delimiter that valid
JSON cannot contain (U+0001; JSON escapes every control character) splits
lines on all cores, strips a BOM and CRLF, decompresses gzip and zstd, and
sends lines it cannot decode (bad UTF-8, a stray U+0001) to a rejects table
with their line number instead of failing the file. ``WITH ORDINALITY``
numbers the lines it keeps; ``ingest`` maps those numbers back to physical
line numbers when the reader rejected some (rare) lines.

Formats that parse a whole document with Python (JSON documents, OTLP,
conversation files, SQLite) read it through ``open_decompressed`` /
``read_text``, the one place that knows the compressions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from audit.db import sql_string
from audit.errors import InputError

# The longest single line we accept (a 50 MB prompt is fine), and the read
# buffer that must hold it. Left to itself DuckDB sizes the buffer at 16x the
# line limit (4 GB for gzip input, over a laptop's memory limit); a buffer only
# just above the limit makes DuckDB 2.0 mis-read files in parallel, so: 2x.
MAX_LINE_BYTES = 128 * 1024 * 1024
READ_BUFFER_BYTES = 2 * MAX_LINE_BYTES
LINE_LIMITS = f"max_line_size={MAX_LINE_BYTES}, buffer_size={READ_BUFFER_BYTES}"


def reader_sql(path: Path, compression: str, rejects_table: str, *, csv_options: str) -> str:
    return (
        f"read_csv({sql_string(str(path))}, {csv_options}, compression={sql_string(compression)}, "
        f"store_rejects=true, rejects_table={sql_string(rejects_table)}, "
        f"rejects_scan={sql_string(rejects_table + '_scan')})"
    )


def lines_sql(path: Path, compression: str, rejects_table: str) -> str:
    """A relation ``(line_no, raw)`` of the file's non-empty lines."""
    options = (
        # strict_mode off: files mixing CRLF and LF lines are common and fine.
        "columns={'raw': 'VARCHAR'}, header=false, delim=chr(1), quote='', escape='', strict_mode=false, "
        f"auto_detect=false, {LINE_LIMITS}"
    )
    reader = reader_sql(path, compression, rejects_table, csv_options=options)
    return (
        f"(SELECT ordinality AS line_no, raw FROM {reader} WITH ORDINALITY "
        # Blank lines arrive as NULL. (trim() here would copy every line: a
        # whitespace-only line is instead rejected as not JSON.)
        "WHERE raw IS NOT NULL)"
    )


def parsed_lines_sql(source: str, structure: str) -> str:
    """``(line_no, raw, j)`` of a ``(line_no, raw)`` relation: ``raw`` parsed once
    into ``structure``, ``j`` NULL when it is not valid JSON.

    ``try`` avoids a second full parse by ``json_valid``; parsing is the cost.
    """
    return f"(SELECT line_no, raw, try(from_json(raw, '{structure}')) AS j FROM {source})"


# The shared first checks of a JSON-lines record. ``json_type`` re-parses, so
# it only runs for the rare line that does not start like an object.
JSON_OBJECT_CHECKS = (
    "WHEN j IS NULL THEN 'not valid JSON' "
    "WHEN left(raw, 1) <> '{' AND json_type(raw) <> 'OBJECT' "
    "THEN 'expected a JSON object, got ' || lower(json_type(raw)) "
)


@contextmanager
def open_decompressed(path: Path, compression: str) -> Iterator[BinaryIO]:
    """The file as a binary stream, decompressed (``compression``: none, gzip or zstd)."""
    if compression == "gzip":
        import gzip

        with gzip.open(path, "rb") as handle:
            yield handle
    elif compression == "zstd":
        import zstandard

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as handle:
            yield handle
    else:
        with path.open("rb") as handle:
            yield handle


def read_bytes(path: Path, compression: str) -> bytes:
    """The whole file, decompressed."""
    with open_decompressed(path, compression) as handle:
        return handle.read()


def read_text(path: Path, compression: str) -> str:
    """The whole file as text, decompressed, without a BOM; bytes that are not
    UTF-8 become U+FFFD. A file that cannot be read or ends early is an ``InputError``."""
    try:
        data = read_bytes(path, compression)
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "check that the file is complete") from None
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")
