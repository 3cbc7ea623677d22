"""Helicone request exports: JSON lines (the default), JSON and CSV.

Where the files come from: the ``@helicone/export`` CLI (or its TypeScript /
Python examples) pages through ``POST /v1/request/query-clickhouse`` and
writes the rows it gets (``{"data": [...], "error": null}`` per page) as
JSON lines, as one JSON array, or as CSV. The CLI's JSON array is not
strict JSON (it writes a comma after every record, the last one included);
it is read element by element. Saved API pages (``{"data": …}``, also
several pages one per line) and bare arrays are read too. Reference:
``log-formats.md`` §4.

A row, with the ClickHouse field names::

    {"request_id": "3f0c…", "request_created_at": "2025-02-03 14:05:09.120",
     "response_status": 200, "provider": "OPENAI", "request_model": "gpt-4o",
     "prompt_tokens": 1200, "completion_tokens": 80, "reasoning_tokens": 0,
     "prompt_cache_read_tokens": 1024, "prompt_cache_write_tokens": 0,
     "total_tokens": 1280, "cost": 0.00412, "delay_ms": 950,
     "request_user_id": "u_981", "properties": {"Helicone-Session-Id": "s-77"},
     "prompt_id": "faq-answer", "prompt_version": "v3",
     "request_body": {...}, "response_body": {...}}

Fields: ``request_id`` (else ``response_id``, all the CSV has) is the id and
the de-duplication key; ``request_created_at`` (ClickHouse text without a
zone: UTC) the time; ``request_model`` (else ``response_model``, the CSV's
``model``, the bodies' ``model``) the model; ``request_user_id`` the user;
the ``Helicone-Session-Id`` property (in ``properties`` or
``request_properties``, any case) the session; ``prompt_id`` /
``prompt_version`` (else the ``Helicone-Prompt-Id`` property) the explicit
template; ``cost`` (``cost_usd`` in one CSV revision, ``costUSD`` in
Postgres-era rows) is Helicone's own USD cost → ``logged_cost_usd``;
``delay_ms`` (CSV: ``latency``) the latency; ``response_status`` the status
(an error below 200 or from 400; Helicone uses negative codes for cancelled
or pending requests). Everything else useful (properties, provider,
total_tokens, time to first token, country, target URL, cache reference…)
goes to ``metadata``.

Bodies: with ``--include-body`` they are the real request (chat request,
Anthropic ``system`` + messages, Responses ``instructions`` + input) and
response (chat.completion, Anthropic message, Responses) and give the
messages and the response text. Without it they are placeholders
(``{"helicone_message": "fetching body from signed_url..."}``): messages and
text stay NULL, the logged tokens and cost are still used. Nested objects
held as JSON strings (CSV cells, ClickHouse-stored bodies) are parsed; the
export CLI's CSV doubles the quotes inside them once too often, which is
undone.

Token semantics — ``prompt_tokens`` depends on the provider mapping, and the
reference warns to check it against the bodies. Helicone's body processors
copy OpenAI's ``usage.prompt_tokens`` (cache reads *included*; provider
``OPENAI``, ``AZURE`` and the OpenAI-shaped rest) but Anthropic's
``usage.input_tokens`` (cache reads and writes *excluded*). So:

- provider ``ANTHROPIC``, or a response body that is an Anthropic message:
  ``usage_semantics = 'anthropic'`` (cache read and write are added);
- otherwise ``'openai'``, unless the counts cannot be inclusive: cache reads
  above ``prompt_tokens`` are read as additive (Helicone's own usage
  processor applies the same guard), and cache reads within but reads plus
  writes above ``prompt_tokens`` mean the writes were left out, so they are
  added to the input. Small cache writes on a non-Anthropic row stay
  ambiguous and are taken as included.

``completion_tokens`` includes reasoning (OpenAI's count is copied);
``reasoning_tokens`` is reported beside it. In the ClickHouse query
``total_tokens`` = prompt + completion (+ reasoning in newer versions), so it
is never used to recompute anything — it is kept in ``metadata``. A row
whose reasoning exceeds its completion count can only have excluded it, so
the two are added for the output.

CSV pitfalls: the CLI's header names ``model`` and ``latency`` do not match
the API keys (``request_model``, ``delay_ms``), so those columns are often
empty; the model then comes from the request/response body, and a row with
no model anywhere is rejected ('no model name'). The Python example's pandas
CSV (all API columns) writes nested values as Python reprs, not JSON: its
bodies and properties stay unread, its ids, model, tokens and ``costUSD`` are
used.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.json_rows import (
    body_struct_sql,
    compact_object_sql,
    count_or_raw_sql,
    input_with_left_out_writes_sql,
    map_get_ci_sql,
    messages_sql,
    nonempty_sql,
    output_text_sql,
    response_struct_sql,
    row_structure,
    rows_relation,
    sniff_rows,
    string_map_sql,
    unwrap_json_sql,
)
from audit.formats.lines import JSON_OBJECT_CHECKS, parsed_lines_sql

_SCALARS = (
    "request_id", "response_id", "request_created_at", "response_created_at", "response_status",
    "request_user_id", "helicone_user", "provider", "request_model", "response_model", "model_override",
    "model", "delay_ms", "latency", "time_to_first_token", "prompt_tokens", "completion_tokens",
    "reasoning_tokens", "prompt_cache_read_tokens", "prompt_cache_write_tokens", "prompt_audio_tokens",
    "completion_audio_tokens", "total_tokens", "cost", "cost_usd", "costUSD", "prompt_id",
    "prompt_version", "country_code", "target_url", "cache_reference_id", "cache_enabled",
    "request_referrer", "request_path", "storage_location",
)
_NESTED = ("properties", "request_properties", "request_body", "response_body", "scores")
_ROW = row_structure(_SCALARS, _NESTED)

# Columns of the export CLI's CSV (and of the Python example's pandas CSV).
_CSV_MARKERS = {"response_id", "request_created_at", "response_status"}
# Keys only Helicone rows carry together with an id.
_ROW_MARKERS = ("request_created_at", "response_status", "request_model", "prompt_cache_read_tokens", "delay_ms")


def is_helicone_row(row: object) -> bool:
    if not isinstance(row, dict) or "call_type" in row:  # LiteLLM spend logs have request_id too
        return False
    if "request_created_at" in row and ("request_id" in row or "response_id" in row):
        return True
    return "request_id" in row and sum(key in row for key in _ROW_MARKERS) >= 2


class Helicone(Format):
    name = "helicone"
    description = "Helicone request export (JSONL, JSON or CSV from @helicone/export or the query API)"

    def sniff(self, sample: Sample) -> bool:
        return sniff_rows(sample, is_helicone_row, [_CSV_MARKERS], [("request_created_at", "response_status")])

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        rows = rows_relation(con, path, options, file_id, is_helicone_row)
        parsed = (
            f"(SELECT *, {body_struct_sql('req')} AS req_s, {response_struct_sql('resp')} AS resp_s FROM "
            "(SELECT line_no, raw, j, "
            f"{unwrap_json_sql('j.request_body')} AS req, {unwrap_json_sql('j.response_body')} AS resp, "
            f"{unwrap_json_sql('coalesce(j.properties, j.request_properties)')} AS props "
            f"FROM {parsed_lines_sql(rows, _ROW)}))"
        )
        property_map = string_map_sql("props")
        status_code = "TRY_CAST(j.response_status AS DOUBLE)"
        prompt, read, write = "j.prompt_tokens", "j.prompt_cache_read_tokens", "j.prompt_cache_write_tokens"
        anthropic_body = "(resp_s.type = 'message' AND (resp_s.usage ->> '$.input_tokens') IS NOT NULL)"
        additive = (
            f"(upper(j.provider) = 'ANTHROPIC' OR {anthropic_body} "
            f"OR coalesce(audit_int({read}), 0) > audit_int({prompt}))"
        )
        error_in_body = "left(resp_s.error, 1) IN ('{', '\"')"
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": "CASE " + JSON_OBJECT_CHECKS + "END",
                "native_id": "coalesce(j.request_id, j.response_id)",
                "dedupe_key": "coalesce(j.request_id, j.response_id)",
                "started_at_raw": "coalesce(j.request_created_at, j.response_created_at)",
                "provider": nonempty_sql("j.provider"),
                "model_logged": "coalesce(" + ", ".join(
                    nonempty_sql(v) for v in
                    ("j.request_model", "j.response_model", "j.model", "resp_s.model", "req_s.model")
                ) + ")",
                "user_id": f"coalesce({nonempty_sql('j.request_user_id')}, req_s.user)",
                "session_id": map_get_ci_sql(property_map, "Helicone-Session-Id"),
                "prompt_name": f"coalesce({nonempty_sql('j.prompt_id')}, {map_get_ci_sql(property_map, 'Helicone-Prompt-Id')})",
                "prompt_version": nonempty_sql("j.prompt_version"),
                "messages": messages_sql("req", "req_s"),
                "response_text": output_text_sql("resp", "resp_s"),
                "usage_semantics": f"CASE WHEN {additive} THEN 'anthropic' ELSE 'openai' END",
                "usage_input": f"CASE WHEN {additive} THEN {prompt} ELSE {input_with_left_out_writes_sql(prompt, read, write)} END",
                "usage_cache_read": read,
                "usage_cache_write": write,
                "usage_output": (
                    "CASE WHEN audit_int(j.reasoning_tokens) > audit_int(j.completion_tokens) "
                    "THEN (audit_int(j.completion_tokens) + audit_int(j.reasoning_tokens))::VARCHAR "
                    "ELSE j.completion_tokens END"
                ),
                "usage_reasoning": "j.reasoning_tokens",
                "logged_cost_usd": "coalesce(j.cost, j.cost_usd, j.costUSD)",
                "latency_ms": f"coalesce(j.delay_ms, {nonempty_sql('j.latency')})",
                "status": (
                    f"CASE WHEN {status_code} >= 400 OR {status_code} < 200 OR {error_in_body} THEN 'error' "
                    f"WHEN {status_code} IS NOT NULL THEN 'ok' END"
                ),
                "status_code": "j.response_status",
                "error_message": (
                    "CASE WHEN left(resp_s.error, 1) = '{' THEN resp_s.error ->> '$.message' "
                    "WHEN left(resp_s.error, 1) = '\"' THEN resp_s.error ->> '$' END"
                ),
                "is_batch": "false",
                "service_tier": "coalesce(resp_s.service_tier, req_s.service_tier)",
                "temperature": count_or_raw_sql("req_s.temperature"),
                "max_tokens": count_or_raw_sql(
                    "coalesce(req_s.max_completion_tokens, req_s.max_tokens, req_s.max_output_tokens)", positive_only=True
                ),
                "metadata": compact_object_sql(
                    "'response_id', j.response_id, 'provider', j.provider, 'properties', props, "
                    "'total_tokens', j.total_tokens, 'time_to_first_token_ms', j.time_to_first_token, "
                    "'prompt_audio_tokens', j.prompt_audio_tokens, 'completion_audio_tokens', j.completion_audio_tokens, "
                    "'country_code', j.country_code, 'target_url', j.target_url, "
                    "'cache_reference_id', j.cache_reference_id, 'cache_enabled', j.cache_enabled, "
                    "'request_referrer', j.request_referrer, 'response_model', j.response_model, "
                    "'model_override', j.model_override, 'helicone_user', j.helicone_user, 'scores', j.scores, "
                    "'body_placeholder', CASE WHEN req_s.helicone_message IS NOT NULL THEN true END"
                ),
            },
            parsed,
        )
