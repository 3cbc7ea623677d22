"""Export rows as JSON objects, whatever the container; SQL for chat bodies.

Observability tools (Helicone, Langfuse, LiteLLM) export the same rows as
JSON lines, as one JSON document (a bare array, or an API page
``{"data": [...], ...}``) or as CSV. ``rows_relation`` turns all three into
one relation ``(line_no, raw)`` with one JSON object text per record, so a
format writes its field mapping once, in SQL:

- JSON lines are split by DuckDB (``lines_sql``), in parallel.
- A JSON document is read with Python: a tolerant element-by-element reader,
  because export tools write arrays that are not strict JSON (Helicone's CLI
  leaves a trailing comma before ``]``; an interrupted export is truncated).
  A broken tail becomes one record that is rejected as not valid JSON.
  ``line_no`` is the record's 1-based position in the file.
- CSV is read by DuckDB (all VARCHAR, fixed dialect: cells hold JSON, which
  confuses dialect detection) and each row becomes a JSON object of its
  cells; empty cells are null. ``line_no`` is the row number + 1 (the
  header), which is the file's line for one-line rows.

Nested objects in CSV cells, and in some JSON exports (Langfuse blob export,
LiteLLM SQL dumps), are JSON *strings*; ``unwrap_json_sql`` turns them back
into JSON. The SQL builders below take JSON expressions and return
expressions: ``messages_sql`` (a request body or a logged input → a chat
message list, system prompt first) and ``output_text_sql`` (a response body
or a logged output → the assistant's text).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from audit.db import sql_identifier, sql_string
from audit.errors import InputError
from audit.formats import IngestOptions, Sample
from audit.formats.lines import (
    LINE_LIMITS,
    lines_sql,
    read_text,
    reader_sql,
)

RowTest = Callable[[object], bool]

# --------------------------------------------------------------------------- sniffing


def _head_text(sample: Sample) -> str:
    return sample.head.decode("utf-8", errors="replace").lstrip("\ufeff")


def looks_like_json(sample: Sample) -> bool:
    return _head_text(sample).lstrip()[:1] in ("{", "[")


def csv_header(sample: Sample) -> list[str] | None:
    """The column names of a CSV file's first line, or None when it is not CSV."""
    if looks_like_json(sample) or not sample.lines:
        return None
    try:
        header = next(csv.reader([sample.lines[0]]))
    except (csv.Error, StopIteration):
        return None
    return [name.strip() for name in header] if len(header) > 1 else None


def first_rows(sample: Sample) -> list[object]:
    """The first record(s) sniffing can see: a JSONL line, an array's first
    element, or the first element of an API page's ``data`` list."""
    first = sample.first_json
    if isinstance(first, list):
        return first[:1]
    if isinstance(first, dict):
        data = first.get("data")
        return data[:1] if isinstance(data, list) and data else [first]
    return []


def head_mentions(sample: Sample, *keys: str) -> bool:
    """For JSON documents too large to parse from the head: all ``"key":`` seen."""
    if not looks_like_json(sample):
        return False
    text = _head_text(sample)
    return all(re.search(r'"' + re.escape(key) + r'"\s*:', text) for key in keys)


def sniff_rows(
    sample: Sample, is_row: RowTest, csv_columns: Iterable[set[str]], head_keys: Iterable[tuple[str, ...]]
) -> bool:
    """Whether a file holds one export's rows, in any container.

    CSV: the header has all the columns of one of ``csv_columns`` (lower
    case; the header's case is ignored). JSON: ``is_row`` accepts the first
    record; or, for a document too large to parse from the head, all the
    keys of one of ``head_keys`` are seen.
    """
    header = csv_header(sample)
    if header is not None:
        names = {name.lower() for name in header}
        return any(columns <= names for columns in csv_columns)
    if any(is_row(row) for row in first_rows(sample)):
        return True
    return sample.first_json is None and any(head_mentions(sample, *keys) for keys in head_keys)


def row_structure(scalars: Iterable[str], nested: Iterable[str]) -> str:
    """The JSON structure of an export row: scalars as VARCHAR (a wrong type is
    caught by the shared checks), nested values as JSON."""
    return "{" + ", ".join([f'"{k}": "VARCHAR"' for k in scalars] + [f'"{k}": "JSON"' for k in nested]) + "}"


# --------------------------------------------------------------------------- containers


def container_of(sample: Sample | None, path: Path, is_row: RowTest) -> str:
    """'csv', 'jsonl' or 'document' (one or more JSON values holding the rows)."""
    if sample is None:
        name = path.name.lower()
        return "csv" if ".csv" in name or ".tsv" in name else "jsonl"
    if not looks_like_json(sample):
        return "csv"
    first = sample.first_json
    if isinstance(first, dict) and is_row(first):
        return "jsonl"
    if isinstance(first, list) or (isinstance(first, dict) and isinstance(first.get("data"), list)):
        return "document"
    # Lines that could not be parsed: JSON lines start objects at column 0 on
    # every line, a pretty-printed document only on its first.
    starts = sum(line.startswith("{") for line in sample.lines[:20])
    return "jsonl" if starts >= 2 else "document"


def rows_relation(
    con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int, is_row: RowTest
) -> str:
    """A relation ``(line_no, raw)``: one JSON object text per record of the file."""
    container = container_of(options.sample, path, is_row)
    if container == "jsonl":
        return lines_sql(path, options.compression, f"_line_rejects_{file_id}")
    if container == "csv":
        return _csv_rows_sql(con, path, options, file_id)
    name = f"_json_rows_{file_id}"
    numbered = list(_document_records(read_text(path, options.compression), is_row))
    table = pa.table(
        {
            "line_no": pa.array([n for n, _ in numbered], pa.int64()),
            "raw": pa.array([raw for _, raw in numbered], pa.string()),
        }
    )
    # This DuckDB refuses register() while an execute() result (the caller's
    # fetchone) is unfinished; complete() ends it and is a no-op otherwise.
    con.complete()
    con.register(name, table)
    return f"(SELECT line_no, raw FROM {name})"


def _csv_rows_sql(con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
    header = csv_header(options.sample) if options.sample else None
    if not header:
        raise InputError(f"{path}: no CSV header line", "export the file with its header row")
    # Rename duplicates so every cell keeps a key of its own.
    names: list[str] = []
    for column in header:
        name, n = column, 1
        while name in names:
            n += 1
            name = f"{column}_{n}"
        names.append(name)
    columns = "{" + ", ".join(f"{sql_string(n)}: 'VARCHAR'" for n in names) + "}"
    reader = reader_sql(
        path, options.compression, f"_line_rejects_{file_id}",
        csv_options=(
            f"columns={columns}, header=true, auto_detect=false, delim=',', quote='\"', escape='\"', "
            f"strict_mode=false, {LINE_LIMITS}"
        ),
    )
    cells = ", ".join(f"{sql_string(n)}, NULLIF({sql_identifier(n)}, '')" for n in names)
    return f"(SELECT ordinality + 1 AS line_no, json_object({cells})::VARCHAR AS raw FROM {reader} WITH ORDINALITY)"


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[\s,]*")   # commas too: tolerates trailing and doubled commas
_BROKEN_RAW = 4000


def _document_records(text: str, is_row: RowTest) -> Iterator[tuple[int, str]]:
    """(position, JSON text) of every record in one or more JSON documents.

    Top-level values follow each other (one document, or JSON lines of API
    pages): an array yields its elements, ``{"data": [...]}`` its data
    elements, any other value itself. A value that does not parse ends the
    file: what is left becomes one record, rejected as not valid JSON.
    """
    position = 0
    pos = _WHITESPACE.match(text, 0).end()
    while pos < len(text):
        if text[pos] == "[":
            pos = _WHITESPACE.match(text, pos + 1).end()
            while pos < len(text) and text[pos] != "]":
                try:
                    _, end = _DECODER.raw_decode(text, pos)
                except ValueError:
                    position += 1
                    yield position, text[pos:pos + _BROKEN_RAW]
                    return
                position += 1
                yield position, text[pos:end]
                pos = _WHITESPACE.match(text, end).end()
            pos = _WHITESPACE.match(text, pos + 1).end()
            continue
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except ValueError:
            position += 1
            yield position, text[pos:pos + _BROKEN_RAW]
            return
        data = value.get("data") if isinstance(value, dict) and not is_row(value) else None
        if isinstance(data, list):
            for element in data:
                position += 1
                yield position, json.dumps(element, ensure_ascii=False)
        else:
            position += 1
            yield position, text[pos:end]
        pos = _WHITESPACE.match(text, end).end()


# --------------------------------------------------------------------------- SQL builders
#
# A JSON value's text is parsed again by every json_* call on it, and bodies
# are the bulk of a record. So bodies are parsed once into the structs below
# (``body_struct_sql`` / ``response_struct_sql``) and the builders test the
# first character of the (minified) JSON text instead of calling json_type.

BODY_STRUCT = (
    '{"model": "VARCHAR", "messages": "JSON", "system": "JSON", "instructions": "JSON", "input": "JSON", '
    '"prompt": "JSON", "role": "VARCHAR", "temperature": "VARCHAR", "max_tokens": "VARCHAR", '
    '"max_completion_tokens": "VARCHAR", "max_output_tokens": "VARCHAR", "user": "VARCHAR", '
    '"service_tier": "VARCHAR", "helicone_message": "VARCHAR"}'
)
RESPONSE_STRUCT = (
    '{"model": "VARCHAR", "type": "VARCHAR", "choices": "JSON", "content": "JSON", "refusal": "VARCHAR", '
    '"output_text": "VARCHAR", "output": "JSON", "text": "VARCHAR", "error": "JSON", "service_tier": "VARCHAR", '
    '"usage": "JSON"}'
)


def body_struct_sql(value: str) -> str:
    """A request body (or logged input) JSON parsed once into ``BODY_STRUCT``."""
    return f"try(from_json({value}, '{BODY_STRUCT}'))"


def response_struct_sql(value: str) -> str:
    """A response body (or logged output) JSON parsed once into ``RESPONSE_STRUCT``."""
    return f"try(from_json({value}, '{RESPONSE_STRUCT}'))"


def _kind(value: str) -> str:
    """First character of a JSON value's text: '{', '[', '"' or a scalar's."""
    return f"left({value}, 1)"


def nonempty_sql(value: str) -> str:
    """A VARCHAR that is NULL when blank (CSV exports write '' for missing)."""
    return f"NULLIF(trim({value}), '')"


def unwrap_json_sql(value: str) -> str:
    """A JSON value, with an object or array held in a JSON *string* parsed.

    Also undoes Helicone's CSV exporter, which doubles the quotes of nested
    JSON once more than CSV needs (``{""model"":""gpt-4o""}`` in the cell).
    """
    text = f"({value} ->> '$')"
    starts = f"left(ltrim({text}), 1) IN ('{{', '[')"
    return (
        f"CASE WHEN {_kind(value)} IS DISTINCT FROM '\"' THEN {value} "
        f"WHEN {starts} AND json_valid({text}) THEN json({text}) "
        f"WHEN {starts} AND json_valid(replace({text}, '\"\"', '\"')) THEN json(replace({text}, '\"\"', '\"')) "
        f"ELSE {value} END"
    )


def string_map_sql(value: str) -> str:
    """A JSON object as MAP(VARCHAR, VARCHAR); NULL when it is not an object."""
    return f"try(from_json({value}, '\"MAP(VARCHAR, VARCHAR)\"'))"


def map_get_ci_sql(map_value: str, key: str) -> str:
    """The value of ``key`` in a MAP(VARCHAR, VARCHAR), ignoring the key's case."""
    return (
        f"list_extract(list_transform(list_filter(map_entries({map_value}), "
        f"lambda e: lower(e.key) = {sql_string(key.lower())}), lambda e: e.value), 1)"
    )


def _user_message(text_sql: str) -> str:
    return f"json_array(json_object('role', 'user', 'content', {text_sql}))"


def _list_as_messages(value: str) -> str:
    """A JSON list → messages: objects kept, strings (embedding or prompt lists) as user turns."""
    return (
        f"to_json(list_transform(json_transform({value}, '[\"JSON\"]'), lambda m: "
        "CASE WHEN left(m, 1) = '{' THEN m "
        "WHEN left(m, 1) = '\"' THEN json_object('role', 'user', 'content', m ->> '$') "
        "ELSE json_object('role', 'user', 'content', m::VARCHAR) END))"
    )


def _body_messages(body: str) -> str:
    """Messages of a parsed body: Chat ``messages``, Responses/embedding ``input``
    or legacy ``prompt``, with Anthropic ``system`` or Responses ``instructions``
    put first as the system message."""
    messages, input_, prompt = f"{body}.messages", f"{body}.input", f"{body}.prompt"
    input_text = _user_message(f"({input_} ->> '$')")
    prompt_text = _user_message(f"({prompt} ->> '$')")
    turns = (
        f"CASE WHEN {_kind(messages)} = '[' THEN {messages} "
        f"WHEN {_kind(input_)} = '[' THEN {_list_as_messages(input_)} "
        f"WHEN {_kind(input_)} = '\"' THEN {input_text} "
        f"WHEN {_kind(prompt)} = '\"' THEN {prompt_text} END"
    )
    system = (
        f"CASE WHEN {_kind(body + '.system')} IN ('\"', '[') THEN {body}.system "
        f"WHEN {_kind(body + '.instructions')} = '\"' THEN {body}.instructions END"
    )
    return (
        f"CASE WHEN ({system}) IS NULL OR ({turns}) IS NULL THEN ({turns}) "
        f"ELSE to_json(list_prepend(json_object('role', 'system', 'content', {system}), "
        f"json_transform({turns}, '[\"JSON\"]'))) END"
    )


def messages_sql(value: str, body: str, *, loose: bool = False) -> str:
    """A JSON array of {role, content} messages, or NULL.

    ``value`` is the JSON, ``body`` the same parsed by ``body_struct_sql``.
    Strict (request bodies): only a body object with messages/input/prompt
    counts; a placeholder body gives NULL. Loose (traced inputs, Langfuse):
    a message list, a single message, a plain string (one user turn), and as
    a last resort any other value as one user turn holding its JSON text.
    """
    if not loose:
        return f"CASE WHEN {_kind(value)} = '{{' THEN {_body_messages(body)} END"
    plain_text = _user_message(f"({value} ->> '$')")
    has_turns = (
        f"({_kind(body + '.messages')} = '[' OR {_kind(body + '.input')} IN ('[', '\"') "
        f"OR {_kind(body + '.prompt')} = '\"')"
    )
    return (
        f"CASE WHEN {value} IS NULL OR {value} = 'null' THEN NULL "
        f"WHEN {_kind(value)} = '\"' THEN {plain_text} "
        f"WHEN {_kind(value)} = '[' THEN {_list_as_messages(value)} "
        f"WHEN {_kind(value)} = '{{' AND {has_turns} THEN {_body_messages(body)} "
        f"WHEN {_kind(value)} = '{{' AND {body}.role IS NOT NULL THEN json_array({value}) "
        f"ELSE {_user_message(f'({value})::VARCHAR')} END"
    )


def _content_text(content: str, refusal: str = "NULL") -> str:
    """Text of a message's ``content`` JSON: a string, or its text parts joined."""
    return (
        f"CASE WHEN {_kind(content)} = '\"' THEN {content} ->> '$' "
        f"WHEN {_kind(content)} = '[' THEN array_to_string(json_extract_string({content}, '$[*].text'), '') "
        f"ELSE {refusal} END"
    )


def output_text_sql(value: str, response: str, *, loose: bool = False) -> str:
    """The assistant's text from a response body or a logged output, or NULL.

    ``value`` is the JSON, ``response`` the same parsed by
    ``response_struct_sql``. Understands chat.completion
    (``choices[0].message``, legacy ``choices[0].text``), Anthropic messages
    (text blocks), Responses (``output_text`` or output message parts), a
    bare {role, content} message and a plain string. Loose (traced outputs):
    also a list of messages (the last one), ``{"text": …}``, and any other
    value as its JSON text — a JSON-mode answer is the model's text.
    """
    message = f"json_extract({response}.choices, '$[0].message')"
    choice_text = _content_text(f"json_extract({message}, '$.content')", f"{message} ->> '$.refusal'")
    parts = [
        f"WHEN {value} IS NULL OR {value} = 'null' THEN NULL",
        f"WHEN {_kind(value)} = '\"' THEN {value} ->> '$'",
        f"WHEN {_kind(response + '.choices')} = '[' "
        f"THEN coalesce({choice_text}, {response}.choices ->> '$[0].text')",
        f"WHEN {_kind(response + '.content')} IN ('\"', '[') THEN {_content_text(response + '.content', response + '.refusal')}",
        f"WHEN {response}.output_text IS NOT NULL THEN {response}.output_text",
        f"WHEN {_kind(response + '.output')} = '[' "
        f"THEN NULLIF(array_to_string(json_extract_string({response}.output, '$[*].content[*].text'), ''), '')",
    ]
    if loose:
        last = f"json_extract({value}, '$[#-1]')"
        last_content = f"json_extract({last}, '$.content')"
        parts += [
            f"WHEN {_kind(value)} = '[' AND {_kind(last)} = '{{' THEN {_content_text(last_content)}",
            f"WHEN {response}.text IS NOT NULL THEN {response}.text",
            f"ELSE NULLIF(NULLIF(({value})::VARCHAR, '{{}}'), '[]')",
        ]
    return "CASE " + " ".join(parts) + " END"


def input_with_left_out_writes_sql(prompt: str, cache_read: str, cache_write: str) -> str:
    """The input count for 'openai' semantics when cache writes may be missing from it.

    Gateways that fold Anthropic's cache counts into ``prompt_tokens`` did so
    for reads before writes. Reads within the logged input but reads + writes
    above it mean the writes were left out: they are added (as text, like the
    source's own count). Otherwise the logged input is passed through.
    """
    read, write, total = f"coalesce(audit_int({cache_read}), 0)", f"coalesce(audit_int({cache_write}), 0)", f"audit_int({prompt})"
    return f"CASE WHEN {read} <= {total} AND {read} + {write} > {total} THEN ({total} + {write})::VARCHAR ELSE {prompt} END"


def compact_object_sql(pairs: str) -> str:
    """``json_object(pairs)`` without its null members (metadata stays readable)."""
    return f"json_merge_patch('{{}}', json_object({pairs}))"


def count_or_raw_sql(value: str, positive_only: bool = False) -> str:
    """Pass a logged auxiliary number through only when it is a number (else NULL).

    For request *parameters* (temperature, max_tokens) that SDKs fill with
    sentinels such as -1 or "Infinity": a bad parameter must not cost the
    record. Token counts and costs never go through here.
    """
    test = f"TRY_CAST({value} AS DOUBLE)"
    condition = f"{test} > 0 AND {test} = round({test})" if positive_only else f"isfinite({test})"
    return f"CASE WHEN {condition} THEN {value} END"
