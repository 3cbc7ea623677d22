"""Langfuse observation exports: the generations of a Langfuse project.

Where the files come from (reference: ``log-formats.md`` §5):

- the public API, ``GET /api/public/observations``: pages
  ``{"data": [ObservationsView, …], "meta": {page, limit, totalItems, totalPages}}``
  saved one per file (or one per line), camelCase;
- the UI batch export of the observations table, as a JSON array, JSON lines
  or CSV: camelCase, with ``userId``, ``traceName``, ``traceTags`` joined from
  the trace (``sessionId`` only from the newer events-table export);
- the blob-storage (S3/GCS) export, JSON lines / JSON / CSV in snake_case
  (``trace_id``, ``start_time``, ``provided_model_name``, ``usage_details``,
  ``cost_details``, ``prompt_name``, …; times without a zone, UTC).

Which rows are calls: an export holds every observation of a trace. Only
``type = "GENERATION"`` rows, and rows of another type that carry both a
model and usage (e.g. ``EMBEDDING``), are LLM calls. The rest (``SPAN``,
``EVENT``, ``TOOL``, ``AGENT``, ``RETRIEVER``…) are **skipped and not counted
as records read**, so ``read = stored + duplicate + rejected`` counts calls
only. Lines that are not valid JSON objects are always read (and rejected).

Fields: ``id`` is the id and the de-duplication key — Langfuse re-emits an
observation when it is updated, and the last copy in a file wins;
``startTime`` the time; ``model`` (blob: ``provided_model_name``) the model;
``userId`` / ``sessionId`` (trace-level; ``langfuse_user_id`` /
``langfuse_session_id`` in the observation's metadata as a fallback);
``promptName`` / ``promptVersion`` the explicit template; ``level = ERROR``
marks an error, with ``statusMessage`` as its message. ``input`` and
``output`` are JSON (a chat message list, ``{role, content}``, ``{messages:
…}``) or plain strings, and JSON strings in CSV and blob files; ``input``
becomes the message list (a string is one user turn) and ``output`` the
response text (an object that is not a message is kept as its JSON text:
a JSON-mode answer).

Tokens — ``usageDetails`` (blob: ``usage_details``) is a free-form map. For
OpenAI-shaped usage Langfuse *moves detail counts out of* ``input``:
``input`` = prompt − cached (− audio…), ``input_cached_tokens`` holds the
cached count, ``output_reasoning_tokens`` the reasoning, ``total`` the
provider's total. So the semantics are ``'split'`` and the keys are read by
name (case-insensitive), every key counted once:

- containing ``cache_read`` or ``cached`` → cache read
  (``input_cached_tokens``, ``cache_read_input_tokens``, ``input_cache_read``);
- containing ``cache_creation`` or ``cache_write`` → cache write
  (``cache_creation_input_tokens``, ``input_cache_creation``);
- containing ``reasoning`` → reasoning (``output_reasoning_tokens``);
- other keys starting with ``input`` → input, summed (``input``,
  ``input_audio_tokens``: audio is part of the prompt);
- other keys starting with ``output`` → output, summed;
- anything else (``total``, vendor keys) is ignored and kept in metadata.

A value of a counted key that is not a whole number rejects the record.
Rows without ``usageDetails`` fall back to the deprecated totals
(``promptTokens``/``completionTokens``, ``usage.input``/``usage.output``,
``inputUsage``/``outputUsage``), which sum every input/output key, i.e.
``'openai'`` semantics without a cache split. Langfuse writes 0 in those
totals when it had no usage, so a 0 there means unknown (the tokens are
then counted from the text).

Cost: ``costDetails.total`` (computed by Langfuse from its price table
unless the client sent one; empty when no model price matched), else
``totalCost`` / ``total_cost`` / ``calculatedTotalCost`` — which default to 0
when there was no cost, so a 0 there is unknown → ``logged_cost_usd``.

Latency: Langfuse documents ``latency`` in seconds, but the UI export and
API converters have computed it as end − start in milliseconds. The
unambiguous ``endTime − startTime`` is used whenever both times are there;
only without them is ``latency`` taken, as seconds (× 1000).

Model parameters (``temperature``, ``max_tokens``…) are free-form strings
filled by many SDKs (``max_tokens: -1`` means "no limit" in some): only
usable numbers are passed on; the parameters are kept in metadata.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.json_rows import (
    body_struct_sql,
    compact_object_sql,
    count_or_raw_sql,
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

# camelCase (API, UI export) and snake_case (blob export) names of the same fields.
_SCALARS = (
    "id", "type", "name", "level", "version", "environment", "latency",
    "traceId", "trace_id", "startTime", "start_time", "endTime", "end_time",
    "completionStartTime", "completion_start_time", "model", "provided_model_name",
    "statusMessage", "status_message", "parentObservationId", "parent_observation_id",
    "promptId", "prompt_id", "promptName", "prompt_name", "promptVersion", "prompt_version",
    "timeToFirstToken", "time_to_first_token", "userId", "user_id", "sessionId", "session_id",
    "traceName", "trace_name", "totalCost", "total_cost", "calculatedTotalCost",
    "promptTokens", "completionTokens", "inputUsage", "outputUsage",
    "modelId", "model_id", "internalModelId", "internal_model_id",
)
_NESTED = (
    "input", "output", "metadata", "usage", "usageDetails", "usage_details", "costDetails", "cost_details",
    "modelParameters", "model_parameters", "traceTags", "trace_tags", "tags",
)
_ROW = row_structure(_SCALARS, _NESTED)


def is_langfuse_row(row: object) -> bool:
    if not isinstance(row, dict) or "id" not in row:
        return False
    if "traceId" in row and ("startTime" in row or "type" in row):
        return True
    return "trace_id" in row and "start_time" in row and (
        "provided_model_name" in row or "usage_details" in row or "type" in row
    )


def _usage_class_sql(key: str) -> str:
    """What a usageDetails key counts: cache_read, cache_write, reasoning, input, output or NULL."""
    k = f"lower({key})"
    return (
        f"CASE WHEN {k} LIKE '%cache_read%' OR {k} LIKE '%cached%' THEN 'cache_read' "
        f"WHEN {k} LIKE '%cache_creation%' OR {k} LIKE '%cache_write%' THEN 'cache_write' "
        f"WHEN {k} LIKE '%reasoning%' THEN 'reasoning' "
        f"WHEN {k} LIKE 'input%' THEN 'input' "
        f"WHEN {k} LIKE 'output%' THEN 'output' END"
    )


def _usage_sum_sql(usage_map: str, usage_class: str) -> str:
    """Sum of the usage keys of one class, as text; NULL when there is none."""
    return (
        f"list_sum(list_transform(list_filter(map_entries({usage_map}), "
        f"lambda e: ({_usage_class_sql('e.key')}) = '{usage_class}'), lambda e: audit_int(e.value)))::VARCHAR"
    )


def _bad_usage_sql(usage_map: str) -> str:
    """The first counted usage entry whose value is not a whole number >= 0, or NULL."""
    return (
        f"list_extract(list_filter(map_entries({usage_map}), "
        f"lambda e: ({_usage_class_sql('e.key')}) IS NOT NULL AND audit_bad_count(e.value)), 1)"
    )


def _zero_is_unknown(value: str) -> str:
    """Langfuse's summary fields default to 0 when nothing was recorded."""
    return f"CASE WHEN TRY_CAST({value} AS DOUBLE) = 0 THEN NULL ELSE {value} END"


class Langfuse(Format):
    name = "langfuse"
    description = "Langfuse observations (API pages, UI export JSON/JSONL/CSV, blob export): generations only"

    def sniff(self, sample: Sample) -> bool:
        return sniff_rows(
            sample, is_langfuse_row,
            [{"id", "traceid", "starttime"}, {"id", "trace_id", "start_time"}],
            [("id", "traceId", "startTime"), ("id", "trace_id", "start_time")],
        )

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        rows = rows_relation(con, path, options, file_id, is_langfuse_row)
        usage = "usage_map"
        parsed = (
            "(SELECT *, "
            f"{string_map_sql('ud')} AS usage_map, "
            f"{body_struct_sql('inp')} AS inp_s, {response_struct_sql('outp')} AS outp_s, "
            f"{nonempty_sql('coalesce(j.model, j.provided_model_name)')} AS model_name, "
            "coalesce(j.startTime, j.start_time) AS start_raw, coalesce(j.endTime, j.end_time) AS end_raw "
            "FROM (SELECT line_no, raw, j, "
            f"{unwrap_json_sql('coalesce(j.usageDetails, j.usage_details)')} AS ud, "
            f"{unwrap_json_sql('coalesce(j.costDetails, j.cost_details)')} AS cd, "
            f"{unwrap_json_sql('j.usage')} AS legacy_usage, "
            f"{unwrap_json_sql('j.input')} AS inp, {unwrap_json_sql('j.output')} AS outp, "
            f"{unwrap_json_sql('j.metadata')} AS meta, "
            f"{unwrap_json_sql('coalesce(j.modelParameters, j.model_parameters)')} AS params "
            f"FROM {parsed_lines_sql(rows, _ROW)}))"
        )
        has_usage_map = f"coalesce(cardinality({usage}), 0) > 0"
        legacy_input = _zero_is_unknown("coalesce(j.promptTokens, legacy_usage ->> '$.input', j.inputUsage)")
        legacy_output = _zero_is_unknown("coalesce(j.completionTokens, legacy_usage ->> '$.output', j.outputUsage)")
        has_legacy_usage = (
            "TRY_CAST(coalesce(j.promptTokens, legacy_usage ->> '$.input', j.inputUsage) AS DOUBLE) > 0"
        )
        is_call = f"(upper(j.type) = 'GENERATION' OR (model_name IS NOT NULL AND ({has_usage_map} OR {has_legacy_usage})))"
        # Non-call observations are dropped here, so they are never counted as read;
        # what is not a JSON object at all is kept, to be rejected.
        source = (
            f"(SELECT * FROM {parsed} WHERE CASE WHEN j IS NULL THEN true "
            "WHEN left(raw, 1) <> '{' AND json_type(raw) <> 'OBJECT' THEN true "
            f"ELSE {is_call} END)"
        )
        bad_usage = _bad_usage_sql(usage)
        is_error = "upper(j.level) = 'ERROR'"
        status_message = "coalesce(j.statusMessage, j.status_message)"
        start_ts, end_ts = "audit_ts(start_raw)", "audit_ts(end_raw)"
        split = has_usage_map
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": (
                    "CASE " + JSON_OBJECT_CHECKS +
                    f"WHEN {bad_usage} IS NOT NULL THEN 'usageDetails.' || struct_extract({bad_usage}, 'key') || "
                    f"' is not a whole number >= 0: ' || left(struct_extract({bad_usage}, 'value'), 60) END"
                ),
                "native_id": "j.id",
                "dedupe_key": "j.id",
                "started_at_raw": "start_raw",
                "model_logged": "model_name",
                "user_id": f"coalesce({nonempty_sql('coalesce(j.userId, j.user_id)')}, meta ->> '$.langfuse_user_id')",
                "session_id": f"coalesce({nonempty_sql('coalesce(j.sessionId, j.session_id)')}, meta ->> '$.langfuse_session_id')",
                "prompt_name": nonempty_sql("coalesce(j.promptName, j.prompt_name)"),
                "prompt_version": nonempty_sql("coalesce(j.promptVersion, j.prompt_version)"),
                "messages": messages_sql("inp", "inp_s", loose=True),
                "response_text": output_text_sql("outp", "outp_s", loose=True),
                "usage_semantics": f"CASE WHEN {split} THEN 'split' ELSE 'openai' END",
                "usage_input": f"CASE WHEN {split} THEN {_usage_sum_sql(usage, 'input')} ELSE {legacy_input} END",
                "usage_cache_read": f"CASE WHEN {split} THEN {_usage_sum_sql(usage, 'cache_read')} END",
                "usage_cache_write": f"CASE WHEN {split} THEN {_usage_sum_sql(usage, 'cache_write')} END",
                # An embedding has no output tokens, so Langfuse logs none.
                "usage_output": (
                    f"CASE WHEN {split} THEN coalesce({_usage_sum_sql(usage, 'output')}, "
                    "CASE WHEN upper(j.type) = 'EMBEDDING' THEN '0' END) ELSE " + legacy_output + " END"
                ),
                "usage_reasoning": f"CASE WHEN {split} THEN {_usage_sum_sql(usage, 'reasoning')} END",
                "logged_cost_usd": (
                    "CASE WHEN (cd ->> '$.total') IS NOT NULL THEN cd ->> '$.total' ELSE "
                    + _zero_is_unknown("coalesce(j.totalCost, j.total_cost, j.calculatedTotalCost, legacy_usage ->> '$.totalCost')")
                    + " END"
                ),
                "latency_ms": (
                    f"CASE WHEN {start_ts} IS NOT NULL AND {end_ts} IS NOT NULL "
                    f"THEN (epoch_ms({end_ts}) - epoch_ms({start_ts}))::VARCHAR "
                    "WHEN TRY_CAST(j.latency AS DOUBLE) IS NOT NULL THEN (TRY_CAST(j.latency AS DOUBLE) * 1000)::VARCHAR "
                    "ELSE j.latency END"
                ),
                "status": f"CASE WHEN {is_error} THEN 'error' ELSE 'ok' END",
                "error_message": f"CASE WHEN {is_error} THEN coalesce({status_message}, 'level ERROR') END",
                "is_batch": "false",
                "temperature": count_or_raw_sql("params ->> '$.temperature'"),
                "max_tokens": count_or_raw_sql(
                    "coalesce(params ->> '$.max_tokens', params ->> '$.maxTokens', params ->> '$.max_completion_tokens', "
                    "params ->> '$.max_output_tokens', params ->> '$.maxOutputTokens')",
                    positive_only=True,
                ),
                "metadata": compact_object_sql(
                    "'trace_id', coalesce(j.traceId, j.trace_id), 'observation_type', j.type, "
                    "'observation_name', j.name, 'trace_name', coalesce(j.traceName, j.trace_name), "
                    f"'trace_tags', {unwrap_json_sql('coalesce(j.traceTags, j.trace_tags, j.tags)')}, 'environment', j.environment, "
                    "'version', j.version, 'level', j.level, "
                    f"'status_message', CASE WHEN NOT coalesce({is_error}, false) THEN {status_message} END, "
                    "'parent_observation_id', coalesce(j.parentObservationId, j.parent_observation_id), "
                    "'prompt_id', coalesce(j.promptId, j.prompt_id), "
                    "'model_id', coalesce(j.modelId, j.internalModelId, j.model_id, j.internal_model_id), "
                    "'usage_details', ud, 'cost_details', cd, 'model_parameters', params, "
                    "'time_to_first_token_s', coalesce(j.timeToFirstToken, j.time_to_first_token), "
                    "'observation_metadata', meta"
                ),
            },
            source,
        )
