"""Open the audit database: one DuckDB file, migrated on connect.

Besides the schema, every connection gets the SQL macros the stages share
(model-name normalisation, safe integer parsing), so each piece of logic is
written once, in SQL, and runs vectorised inside DuckDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import os
from pathlib import Path
from typing import Any

import duckdb

from audit import migrations
from audit.errors import DatabaseError

DEFAULT_DB = "audit.duckdb"

# Macros are TEMP: they live on the connection, not in the file, so changing
# one never needs a migration.
_MACROS = r"""
-- A count field: NULL when absent, the integer when it is one (12, "12", 12.0).
CREATE OR REPLACE TEMP MACRO audit_int(v) AS
    TRY_CAST(TRY_CAST(v AS DOUBLE) AS BIGINT);
-- True when a value is present but is not a non-negative integer.
CREATE OR REPLACE TEMP MACRO audit_bad_count(v) AS
    v IS NOT NULL AND (audit_int(v) IS NULL OR audit_int(v) < 0
                       OR TRY_CAST(v AS DOUBLE) <> audit_int(v));
-- Model names as logged vary by provider prefix and dated snapshot:
-- 'openai/gpt-4o-2024-08-06' and 'GPT-4o' are both 'gpt-4o'.
CREATE OR REPLACE TEMP MACRO audit_normalize_model(m) AS
    regexp_replace(
        regexp_replace(lower(trim(m)), '^[a-z0-9_.-]+/', ''),
        '(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-\d{4})$', '');
-- A timestamp in any of the encodings log exports use, as naive UTC:
-- ISO 8601 with or without zone (zone-less means UTC), or epoch seconds,
-- milliseconds, microseconds or nanoseconds (told apart by magnitude).
CREATE OR REPLACE TEMP MACRO audit_ts(v) AS
    CASE
        WHEN v IS NULL OR trim(v::VARCHAR) = '' THEN NULL
        WHEN TRY_CAST(v AS DOUBLE) IS NOT NULL THEN
            CASE
                WHEN abs(TRY_CAST(v AS DOUBLE)) < 1e11 THEN make_timestamp(CAST(TRY_CAST(v AS DOUBLE) * 1e6 AS BIGINT))
                WHEN abs(TRY_CAST(v AS DOUBLE)) < 1e14 THEN make_timestamp(CAST(TRY_CAST(v AS DOUBLE) * 1e3 AS BIGINT))
                WHEN abs(TRY_CAST(v AS DOUBLE)) < 1e17 THEN make_timestamp(CAST(TRY_CAST(v AS DOUBLE) AS BIGINT))
                ELSE make_timestamp(CAST(TRY_CAST(v AS HUGEINT) // 1000 AS BIGINT))
            END
        ELSE TRY_CAST(TRY_CAST(v AS TIMESTAMPTZ) AS TIMESTAMP)
    END;
-- The provider a model name implies, when the source does not say.
CREATE OR REPLACE TEMP MACRO audit_provider_for(m) AS
    CASE
        WHEN m IS NULL THEN NULL
        WHEN regexp_matches(lower(m), '(^|/)(gpt-|o1|o3|o4|chatgpt|text-embedding|davinci|babbage)') THEN 'openai'
        WHEN regexp_matches(lower(m), '(^|/)claude') THEN 'anthropic'
        WHEN regexp_matches(lower(m), '(^|/)gemini') THEN 'google'
        WHEN regexp_matches(lower(m), '(^|/)(mistral|mixtral|codestral|ministral)') THEN 'mistral'
        WHEN regexp_matches(lower(m), '(^|/)command') THEN 'cohere'
        WHEN regexp_matches(lower(m), '(^|/)grok') THEN 'x-ai'
        WHEN regexp_matches(lower(m), '(^|/)deepseek') THEN 'deepseek'
        ELSE NULL
    END;
"""


# DuckDB may use this much memory before spilling to ``<db>.tmp``; keeps a
# 10 GB ingest under 4 GB of resident memory. Override with AUDIT_MEMORY_LIMIT.
DEFAULT_MEMORY_LIMIT = "3GB"


def connect(path: str | Path = DEFAULT_DB, *, read_only: bool = False, must_exist: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed, unless ``must_exist`` or ``read_only``) and migrate the audit database at ``path``."""
    path = Path(path)
    if (read_only or must_exist) and not path.exists():
        raise DatabaseError(
            f"no audit database at {path}", "run `audit ingest` first or pass --db PATH"
        )
    if not path.parent.exists():
        raise DatabaseError(
            f"the folder for the database {path} does not exist", "create it or pass another --db"
        )
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise DatabaseError(
                f"the database {path} is in use by another audit process",
                "wait for it to finish or pass another --db",
            ) from None
        raise DatabaseError(
            f"cannot open the database {path}: {text.splitlines()[0]}",
            "check the path, or pass another --db",
        ) from None
    except duckdb.Error as exc:
        raise DatabaseError(
            f"{path} is not a usable DuckDB database: {str(exc).splitlines()[0]}",
            "pass another --db",
        ) from None
    if not read_only:
        migrations.apply(con)
    # Zone-less timestamps in logs are UTC; the session zone makes casts agree.
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET memory_limit = ?", [os.environ.get("AUDIT_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT)])
    # Every query that needs an order says ORDER BY (line numbers come from
    # WITH ORDINALITY at the scan), so DuckDB need not keep insertion order:
    # less memory and more parallelism on big files.
    con.execute("SET preserve_insertion_order = false")
    # Progress is read with query_progress() for our own bars; DuckDB must not print its own.
    con.execute("SET enable_progress_bar = true; SET enable_progress_bar_print = false")
    con.execute(_MACROS)
    return con


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    """Run a query and return its rows as dicts keyed by column name."""
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def sql_string(value: str) -> str:
    """A SQL string literal (for the few places a value is spliced into SQL, such as table-function arguments)."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """A quoted SQL identifier (column names from user files)."""
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All of the block's writes, or none of them (rolled back on any exception, Ctrl-C included)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
