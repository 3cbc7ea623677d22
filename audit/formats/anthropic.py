"""Anthropic Messages API logs: request/response pairs and Message Batches results.

``anthropic-messages``: a proxy/gateway log of ``POST /v1/messages``, one JSON
object per line, in the same envelope as the OpenAI pairs (``openai_chat``)::

    {"id": "log_1", "timestamp": "2025-06-03T08:00:00Z", "latency_ms": 2100,
     "request": {"model": "claude-sonnet-4-20250514", "max_tokens": 1024,
                 "system": "…" | [{"type": "text", "text": "…", "cache_control": {…}}],
                 "messages": [{"role": "user", "content": "…" | [blocks]}],
                 "metadata": {"user_id": "u_1"}},
     "response": {"id": "msg_…", "type": "message", "role": "assistant", "model": "…",
                  "content": [{"type": "thinking", …}, {"type": "text", "text": "…"}],
                  "stop_reason": "end_turn",
                  "usage": {"input_tokens": 42, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 18200, "output_tokens": 512}},
     "metadata": {"session_id": "s_1", "prompt_name": "summarise"}}

``anthropic-batch-results``: the ``.jsonl`` results file of a Message Batch,
``{"custom_id": "…", "result": {"type": "succeeded", "message": {…Message…}}}``;
the other result types are ``errored`` (with ``error``), ``canceled`` and
``expired``. Every line is a batch call (``is_batch``, batch discount when
pricing); the ones that did not succeed are stored as failed calls.

Field reference: ``reference/log-formats.md`` §3. What we handle:

- Usage is **additive**: ``input_tokens`` is only the uncached tail, so total
  input = ``input_tokens`` + ``cache_creation_input_tokens`` +
  ``cache_read_input_tokens`` (``usage_semantics = 'anthropic'``; ``ingest``
  adds them up). When only the ``cache_creation`` TTL breakdown is present,
  the cache writes are its sum. The 5m/1h split (priced differently), server
  tool use (web searches are billed per request) and ``inference_geo`` are
  kept in ``metadata``.
- Thinking tokens are already inside ``output_tokens``; recent SDKs report
  them as ``output_tokens_details.thinking_tokens`` (→ ``reasoning_tokens``).
- A Message has **no timestamp**: the envelope's is used; batch result lines
  have none at all (``started_at`` stays empty).
- The system prompt is ``request.system`` (a string or text blocks): it
  becomes the first message. Message content keeps Anthropic's blocks.
- The response text is the ``text`` blocks only (not ``thinking`` or
  ``tool_use``).
- An error body (``{"type": "error", "error": {type, message}}``) or an HTTP
  status ≥ 400 is a failed call.
- Batch result lines carry no request, so batch calls have no prompt
  (``messages`` stays empty); their logged usage is complete.
- A batch result that did not succeed carries no Message and so no model
  name: it is stored as a failed call without one (it is not billed).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.lines import JSON_OBJECT_CHECKS, lines_sql, parsed_lines_sql
from audit.formats.openai_chat import GATEWAY_ROW_KEYS, envelope_bodies, envelope_sql

_REQUEST = (
    '{"model": "VARCHAR", "system": "JSON", "messages": "JSON", "max_tokens": "VARCHAR", '
    '"temperature": "VARCHAR", "metadata": "JSON", "stream": "VARCHAR", "service_tier": "VARCHAR", "tools": "JSON"}'
)
_USAGE = (
    '{"input_tokens": "VARCHAR", "output_tokens": "VARCHAR", "cache_creation_input_tokens": "VARCHAR", '
    '"cache_read_input_tokens": "VARCHAR", '
    '"cache_creation": "JSON", '
    '"server_tool_use": "JSON", "service_tier": "VARCHAR", "inference_geo": "VARCHAR", '
    '"output_tokens_details": {"thinking_tokens": "VARCHAR"}}'
)
_MESSAGE = (
    '{"id": "VARCHAR", "type": "VARCHAR", "role": "VARCHAR", "model": "VARCHAR", "content": "JSON", '
    f'"stop_reason": "VARCHAR", "stop_sequence": "VARCHAR", "usage": {_USAGE}, "error": "JSON"}}'
)
_BATCH_LINE = (
    '{"custom_id": "VARCHAR", '
    f'"result": {{"type": "VARCHAR", "message": {_MESSAGE}, "error": "JSON"}}}}'
)
_RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")


def usage_exprs(usage: str) -> dict[str, str]:
    """Stage usage columns from an Anthropic ``usage`` struct (additive counts)."""
    five_minutes = f"{usage}.cache_creation ->> 'ephemeral_5m_input_tokens'"
    one_hour = f"{usage}.cache_creation ->> 'ephemeral_1h_input_tokens'"
    ttl_sum = f"CAST(coalesce(audit_int({five_minutes}), 0) + coalesce(audit_int({one_hour}), 0) AS VARCHAR)"
    return {
        "usage_semantics": "'anthropic'",
        "usage_input": f"{usage}.input_tokens",
        "usage_cache_read": f"{usage}.cache_read_input_tokens",
        "usage_cache_write": (
            f"CASE WHEN {usage}.cache_creation_input_tokens IS NOT NULL THEN {usage}.cache_creation_input_tokens "
            f"WHEN {five_minutes} IS NOT NULL OR {one_hour} IS NOT NULL THEN {ttl_sum} END"
        ),
        "usage_output": f"{usage}.output_tokens",
        "usage_reasoning": f"{usage}.output_tokens_details.thinking_tokens",
    }


def text_blocks_sql(content: str) -> str:
    """The text of a Message's ``text`` blocks (thinking and tool_use are left out)."""
    blocks = f"list_filter(json_extract({content}, '$[*]'), lambda b: b ->> 'type' = 'text')"
    return (
        f"CASE WHEN json_type({content}) = 'ARRAY' THEN array_to_string(list_transform({blocks}, lambda b: b ->> 'text'), '') "
        f"WHEN json_type({content}) = 'VARCHAR' THEN {content} ->> '$' END"
    )


def messages_sql(req: str) -> str:
    """``system`` (first) + ``messages`` → one JSON chat message list."""
    system = (
        f"CASE WHEN json_type({req}.system) IN ('VARCHAR', 'ARRAY') "
        f"THEN [json_object('role', 'system', 'content', {req}.system)] END"
    )
    return (
        f"CASE WHEN json_type({req}.messages) = 'ARRAY' "
        f"THEN to_json(list_concat({system}, json_extract({req}.messages, '$[*]'))) END"
    )


def message_leftovers_sql(msg: str) -> str:
    """What a Message has that the ledger has no column for, as a JSON object (with NULLs)."""
    return (
        f"json_object('message_id', {msg}.id, 'stop_reason', {msg}.stop_reason, "
        f"'cache_creation', {msg}.usage.cache_creation, "
        f"'server_tool_use', {msg}.usage.server_tool_use, 'inference_geo', {msg}.usage.inference_geo, "
        f"'error_type', {msg}.error ->> 'type')"
    )


def _is_message(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") == "message" and "content" in value


class AnthropicPairs(Format):
    name = "anthropic-messages"
    description = "Anthropic Messages API request/response pairs (JSONL proxy log)"

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        if not isinstance(first, dict):
            return False
        if GATEWAY_ROW_KEYS & first.keys():
            return False  # a Helicone row carries Anthropic bodies too: that format reads it
        request, response = envelope_bodies(first)
        if not isinstance(request, dict) or "messages" not in request or not isinstance(response, dict):
            return False
        # A Message, an Anthropic error body, or a request only Anthropic accepts (top-level system).
        return _is_message(response) or response.get("type") == "error" or "system" in request

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        parsed, request_key, response_key = envelope_sql(path, options, file_id, _REQUEST, _MESSAGE)
        failed = (
            "resp.type = 'error' OR (resp.error IS NOT NULL AND json_type(resp.error) <> 'NULL') "
            "OR TRY_CAST(j.status_code AS INTEGER) >= 400"
        )
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": (
                    "CASE " + JSON_OBJECT_CHECKS +
                    f"WHEN req IS NULL THEN 'no {request_key} object' "
                    "WHEN json_type(req.messages) IS DISTINCT FROM 'ARRAY' THEN 'request.messages is not a list' "
                    f"WHEN resp IS NULL THEN 'no {response_key} object' "
                    "WHEN resp.type = 'message' AND json_type(resp.content) IS DISTINCT FROM 'ARRAY' "
                    "THEN 'response.content is not a list' END"
                ),
                "native_id": "coalesce(j.id, resp.id)",
                "dedupe_key": "coalesce(j.id, resp.id)",
                # A Message has no time of its own.
                "started_at_raw": "coalesce(j.timestamp, j.created_at, j.ts)",
                "provider": "'anthropic'",
                "model_logged": "coalesce(resp.model, req.model)",
                "user_id": "coalesce(j.metadata ->> 'user_id', j.user_id, req.metadata ->> 'user_id')",
                "session_id": "coalesce(j.metadata ->> 'session_id', req.metadata ->> 'session_id')",
                "prompt_name": "j.metadata ->> 'prompt_name'",
                "prompt_version": "j.metadata ->> 'prompt_version'",
                "messages": messages_sql("req"),
                "response_text": text_blocks_sql("resp.content"),
                **usage_exprs("resp.usage"),
                "latency_ms": "coalesce(j.latency_ms, j.duration_ms)",
                "status": f"CASE WHEN {failed} THEN 'error' ELSE 'ok' END",
                "status_code": "j.status_code",
                "error_message": "CASE WHEN resp.error IS NOT NULL AND json_type(resp.error) <> 'NULL' "
                                 "THEN coalesce(resp.error ->> 'message', resp.error ->> '$') END",
                # Batch-tier usage means the batch discount applies.
                "is_batch": "coalesce(resp.usage.service_tier = 'batch', false)",
                "service_tier": "coalesce(resp.usage.service_tier, req.service_tier)",
                "temperature": "req.temperature",
                "tools": "CASE WHEN json_array_length(req.tools) > 0 THEN req.tools END",
                "max_tokens": "req.max_tokens",
                "metadata": f"json_merge_patch(coalesce(j.metadata, '{{}}'), json_merge_patch('{{}}', {message_leftovers_sql('resp')}))",
            },
            parsed,
        )


class AnthropicBatchResults(Format):
    name = "anthropic-batch-results"
    description = "Anthropic Message Batches results file (JSONL)"

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        return (
            isinstance(first, dict) and "custom_id" in first and isinstance(first.get("result"), dict)
            and first["result"].get("type") in _RESULT_TYPES
        )

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        lines = lines_sql(path, options.compression, f"_line_rejects_{file_id}")
        parsed = (
            "(SELECT line_no, raw, j, j.result.type AS result_type, j.result.message AS msg, j.result.error AS err "
            f"FROM {parsed_lines_sql(lines, _BATCH_LINE)})"
        )
        known = ", ".join(f"'{t}'" for t in _RESULT_TYPES)
        # errored: result.error is an error response {type: "error", error: {type, message}}.
        error_message = (
            "CASE result_type "
            "WHEN 'errored' THEN coalesce(err -> 'error' ->> 'message', err ->> 'message', 'request errored') "
            "WHEN 'canceled' THEN 'request canceled before it was processed' "
            "WHEN 'expired' THEN 'request expired before it was processed' END"
        )
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": (
                    "CASE " + JSON_OBJECT_CHECKS +
                    "WHEN j.custom_id IS NULL THEN 'no custom_id' "
                    "WHEN j.result IS NULL THEN 'no result object' "
                    f"WHEN result_type IS NULL OR result_type NOT IN ({known}) "
                    "THEN 'unknown result type: ' || coalesce(result_type, 'none') "
                    "WHEN result_type = 'succeeded' AND msg IS NULL THEN 'succeeded result without a message' "
                    "WHEN result_type = 'succeeded' AND json_type(msg.content) IS DISTINCT FROM 'ARRAY' "
                    "THEN 'message.content is not a list' END"
                ),
                "native_id": "j.custom_id",
                # custom_ids repeat across batches; a Message id does not. Without one,
                # the line's content identifies it.
                "dedupe_key": "msg.id",
                "provider": "'anthropic'",
                "model_logged": "msg.model",
                "response_text": text_blocks_sql("msg.content"),
                **usage_exprs("msg.usage"),
                "status": "CASE WHEN result_type = 'succeeded' THEN 'ok' ELSE 'error' END",
                "error_message": error_message,
                "is_batch": "true",
                "service_tier": "coalesce(msg.usage.service_tier, 'batch')",
                # Nulls are dropped: json_merge_patch removes keys whose patch value is null.
                "metadata": (
                    f"json_merge_patch('{{}}', {message_leftovers_sql('msg')}, json_object('custom_id', j.custom_id, "
                    "'result_type', result_type, 'error_type', coalesce(err -> 'error' ->> 'type', err ->> 'type')))"
                ),
            },
            parsed,
        )
