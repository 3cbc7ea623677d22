"""Any CSV, TSV, Parquet or JSONL table of calls, with a column mapping.

Columns are matched to ledger fields by name (case-insensitive, with common
aliases such as ``prompt_tokens`` → ``input_tokens``); ``--map
source_column=ledger_field`` adds or overrides a match. The fields
(``LEDGER_FIELDS``) are documented in the README. ``prompt`` and ``system``
take plain text and become a chat message list; ``messages`` takes a JSON list.
Token counts follow OpenAI's meaning: ``input_tokens`` includes cached ones.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.db import sql_identifier, sql_string
from audit.errors import ConfigError, InputError
from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.lines import lines_sql, reader_sql

# ledger field → stage column it fills
LEDGER_FIELDS: dict[str, str] = {
    "id": "native_id",
    "timestamp": "started_at_raw",
    "provider": "provider",
    "model": "model_logged",
    "user_id": "user_id",
    "session_id": "session_id",
    "prompt_name": "prompt_name",
    "prompt_version": "prompt_version",
    "messages": "messages",
    "prompt": "messages",
    "system": "messages",
    "response": "response_text",
    "input_tokens": "usage_input",
    "cached_input_tokens": "usage_cache_read",
    "cache_write_tokens": "usage_cache_write",
    "output_tokens": "usage_output",
    "reasoning_tokens": "usage_reasoning",
    "cost_usd": "logged_cost_usd",
    "latency_ms": "latency_ms",
    "status": "status",
    "status_code": "status_code",
    "error": "error_message",
    "service_tier": "service_tier",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
}
# Column names that commonly mean a ledger field.
ALIASES: dict[str, str] = {
    "request_id": "id", "call_id": "id",
    "created_at": "timestamp", "ts": "timestamp", "time": "timestamp", "start_time": "timestamp", "started_at": "timestamp",
    "model_name": "model", "user": "user_id", "session": "session_id",
    "completion": "response", "output": "response", "response_text": "response", "answer": "response",
    "input": "prompt", "question": "prompt", "system_prompt": "system",
    "prompt_tokens": "input_tokens", "completion_tokens": "output_tokens",
    "cached_tokens": "cached_input_tokens", "cost": "cost_usd", "spend": "cost_usd",
    "duration_ms": "latency_ms", "latency": "latency_ms",
}


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """``["col=field", ...]`` → ``{col: field}``, checking the field names."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, ledger_field = pair.partition("=")
        if not sep or not column or not ledger_field:
            raise ConfigError(f"--map {pair!r} is not source_column=ledger_field", "e.g. --map created=timestamp")
        if ledger_field not in LEDGER_FIELDS:
            raise ConfigError(
                f"--map {pair!r}: {ledger_field!r} is not a ledger field",
                "use one of " + ", ".join(LEDGER_FIELDS),
            )
        mapping[column] = ledger_field
    return mapping


def resolve_columns(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """ledger field → source column, from explicit mapping first, then names."""
    resolved: dict[str, str] = {}
    for column, ledger_field in mapping.items():
        if column not in columns:
            raise ConfigError(
                f"--map names column {column!r}, which the file does not have",
                "columns are: " + ", ".join(columns[:30]),
            )
        resolved[ledger_field] = column
    for column in columns:
        key = column.lower()
        ledger_field = key if key in LEDGER_FIELDS else ALIASES.get(key)
        if ledger_field and ledger_field not in resolved and column not in mapping:
            resolved[ledger_field] = column
    return resolved


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return "jsonl"


class Generic(Format):
    name = "generic"
    description = "any CSV/TSV/Parquet/JSONL table of calls (columns by name or --map)"

    def sniff(self, sample: Sample) -> bool:
        kind = _kind(sample.path)
        if kind in ("csv", "parquet"):
            return True
        return isinstance(sample.first_json, dict) and any(
            k.lower() == "model" or ALIASES.get(k.lower()) == "model" for k in sample.first_json
        )

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        kind = _kind(path)
        if kind == "csv":
            reader = reader_sql(
                path, options.compression, f"_line_rejects_{file_id}",
                csv_options="header=true, all_varchar=true, auto_detect=true, sample_size=20480",
            )
            # line_no counts the header line, so it is the file's line for one-line rows.
            source = f"(SELECT ordinality + 1 AS line_no, * FROM {reader} WITH ORDINALITY) AS src"
            columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
            value = lambda column: sql_identifier(column)  # noqa: E731
            raw = "to_json(src)"
        elif kind == "parquet":
            reader = f"read_parquet({sql_string(str(path))})"
            source = f"(SELECT ordinality AS line_no, * FROM {reader} WITH ORDINALITY) AS src"
            columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
            value = lambda column: f"CAST({sql_identifier(column)} AS VARCHAR)"  # noqa: E731
            raw = "to_json(src)"
        else:
            source = lines_sql(path, options.compression, f"_line_rejects_{file_id}")
            try:
                keys = con.execute(
                    f"SELECT DISTINCT unnest(json_keys(raw)) FROM (SELECT raw FROM {source} "
                    "WHERE json_valid(raw) AND json_type(raw) = 'OBJECT' LIMIT 1000)"
                ).fetchall()
            except duckdb.Error as exc:
                raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
            columns = sorted(k[0] for k in keys)
            # json_extract raises on invalid JSON: such lines are rejected, never read.
            value = lambda column: (  # noqa: E731
                f"CASE WHEN json_valid(raw) THEN json_extract_string(raw, {sql_string('$.' + _json_key(column))}) END"
            )
            raw = "raw"
        fields = resolve_columns(columns, options.mapping)
        if "model" not in fields and not options.default_model:
            raise InputError(
                f"{path}: no column gives the model name (columns: {', '.join(columns[:20])})",
                "name it with --map COLUMN=model, give it with --model NAME, or force another --format",
            )
        if not {"messages", "prompt", "input_tokens"} & set(fields):
            raise InputError(
                f"{path}: no column gives the prompt or the input tokens",
                "map one with --map COLUMN=prompt (or messages, input_tokens)",
            )
        exprs = {"line_no": "line_no", "raw": raw}
        for ledger_field, column in fields.items():
            if ledger_field not in ("prompt", "system", "messages"):
                exprs[LEDGER_FIELDS[ledger_field]] = value(column)
        if options.default_model:
            logged = exprs.get("model_logged", "NULL")
            exprs["model_logged"] = f"coalesce({logged}, {sql_string(options.default_model)})"
        exprs["messages"] = table_messages_sql(fields, value)
        exprs["usage_semantics"] = "'openai'"
        exprs["dedupe_key"] = exprs.get("native_id", "NULL")
        exprs["is_batch"] = "false"
        checks = []
        if kind == "jsonl":
            checks += [
                "WHEN NOT json_valid(raw) THEN 'not valid JSON'",
                "WHEN json_type(raw) <> 'OBJECT' THEN 'expected a JSON object, got ' || lower(json_type(raw))",
            ]
        if "messages" in fields:
            m = value(fields["messages"])
            checks.append(f"WHEN {m} IS NOT NULL AND (NOT json_valid({m}) OR json_type({m}) <> 'ARRAY') THEN 'messages is not a JSON list'")
        if checks:
            exprs["reject_reason"] = "CASE " + " ".join(checks) + " END"
        return select_stage(exprs, source)


def _json_key(column: str) -> str:
    return '"' + column.replace('"', '\\"') + '"'


def table_messages_sql(fields: dict[str, str], value) -> str:
    if "messages" in fields:
        m = value(fields["messages"])
        return f"CASE WHEN json_valid({m}) AND json_type({m}) = 'ARRAY' THEN {m} END"
    parts = []
    if "system" in fields:
        s = value(fields["system"])
        parts.append(f"CASE WHEN {s} IS NOT NULL THEN [json_object('role', 'system', 'content', {s})] ELSE [] END")
    if "prompt" in fields:
        p = value(fields["prompt"])
        parts.append(f"CASE WHEN {p} IS NOT NULL THEN [json_object('role', 'user', 'content', {p})] ELSE [] END")
    if not parts:
        return "NULL"
    return f"NULLIF(to_json(list_concat({', '.join(parts)})), '[]')"
