"""OpenAI Responses API request/response pairs, one JSON object per line.

The proxy/gateway log of ``POST /v1/responses``, in the same envelope as the
Chat Completions pairs (``openai_chat``)::

    {"id": "log_1", "timestamp": "2025-06-01T12:00:00Z", "latency_ms": 900,
     "request": {"model": "gpt-4.1", "instructions": "…", "input": "…" | [items],
                 "prompt": {"id": "pmpt_…", "version": "7", "variables": {…}}},
     "response": {"id": "resp_…", "object": "response", "created_at": 1748779200,
                  "status": "completed", "model": "gpt-4.1-2025-04-14",
                  "output": [{"type": "reasoning", …},
                             {"type": "message", "content": [{"type": "output_text", "text": "…"}]}],
                  "usage": {"input_tokens": …, "input_tokens_details": {"cached_tokens": …},
                            "output_tokens": …, "output_tokens_details": {"reasoning_tokens": …}}},
     "metadata": {"user_id": "u_1", "session_id": "s_1"}}

A line may also be a bare Response object (``{"object": "response", …}``, as
stored by ``store=true`` exports or an SDK's ``response.model_dump_json()``);
its time is then ``created_at`` and there is no request, so the prompt is only
the ``instructions`` the Response echoes.

Field reference: ``reference/log-formats.md`` §2. What we handle:

- Usage has OpenAI's subset semantics (``cached_tokens`` ⊂ ``input_tokens``,
  ``reasoning_tokens`` ⊂ ``output_tokens``) under different names than Chat
  Completions (``input_*`` here, ``prompt_*`` there); newer specs add
  ``input_tokens_details.cache_write_tokens``.
- ``prompt: {id, version, variables}`` is an explicit prompt-template
  reference: it becomes ``prompt_name``/``prompt_version`` (the variables go
  to ``metadata``). Without it, the proxy's ``metadata.prompt_name`` is used.
- ``instructions`` is the system prompt: a string, or (when a stored prompt
  template was used) a list of message items. ``input`` is a string (one user
  message) or a list of items, of which messages and tool outputs are kept.
  With ``previous_response_id`` the earlier turns are not in the log: the
  logged usage still counts them.
- ``output_text`` is an SDK convenience, not wire format: the response text is
  the ``output_text`` parts of the ``message`` output items (reasoning and
  tool-call items are not text shown to the user).
- ``status`` failed/cancelled, an ``error`` object or an HTTP status ≥ 400
  make a failed call; ``incomplete`` (cut at ``max_output_tokens``) was billed
  and is kept as ``ok`` with the reason in ``metadata``.
- ``conversation.id`` is the session when the proxy logged none.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.lines import JSON_OBJECT_CHECKS
from audit.formats.openai_chat import (
    GATEWAY_ROW_KEYS,
    envelope_bodies,
    envelope_sql,
    openai_usage_exprs,
)

_PROMPT = '{"id": "VARCHAR", "version": "VARCHAR", "variables": "JSON"}'
_REQUEST = (
    '{"model": "VARCHAR", "input": "JSON", "instructions": "JSON", '
    f'"prompt": {_PROMPT}, "temperature": "VARCHAR", "max_output_tokens": "VARCHAR", '
    '"user": "VARCHAR", "safety_identifier": "VARCHAR", "service_tier": "VARCHAR", '
    '"metadata": "JSON", "previous_response_id": "VARCHAR", "conversation": "JSON", "tools": "JSON"}'
)
_USAGE = (
    '{"input_tokens": "VARCHAR", "input_tokens_details": {"cached_tokens": "VARCHAR", "cache_write_tokens": "VARCHAR"}, '
    '"output_tokens": "VARCHAR", "output_tokens_details": {"reasoning_tokens": "VARCHAR"}}'
)
_RESPONSE = (
    '{"id": "VARCHAR", "object": "VARCHAR", "created_at": "VARCHAR", "completed_at": "VARCHAR", '
    '"status": "VARCHAR", "model": "VARCHAR", "output": "JSON", "instructions": "JSON", '
    f'"prompt": {_PROMPT}, "usage": {_USAGE}, "error": "JSON", "incomplete_details": "JSON", '
    '"user": "VARCHAR", "safety_identifier": "VARCHAR", "service_tier": "VARCHAR", "metadata": "JSON", '
    '"previous_response_id": "VARCHAR", "conversation": "JSON", "temperature": "VARCHAR", '
    '"max_output_tokens": "VARCHAR"}'
)


def items_to_messages_sql(items: str) -> str:
    """A list of Responses input items (JSON array) → list of {role, content} JSON.

    Message items (``{role, content}``, with or without ``type: "message"``)
    keep their content as sent (a string or typed parts); tool outputs become
    ``tool`` messages. Other items (reasoning, item references) carry no text.
    """
    kept = (
        f"list_filter(json_extract({items}, '$[*]'), lambda x: x ->> 'role' IS NOT NULL "
        "OR x ->> 'type' = 'function_call_output')"
    )
    return (
        f"list_transform({kept}, lambda x: json_object("
        "'role', coalesce(x ->> 'role', 'tool'), 'content', coalesce(x -> 'content', x -> 'output')))"
    )


def messages_sql(instructions: str, input_: str) -> str:
    """``instructions`` (system, first) + ``input`` → a JSON chat message list."""
    system = (
        f"CASE json_type({instructions}) "
        f"WHEN 'VARCHAR' THEN [json_object('role', 'system', 'content', {instructions} ->> '$')] "
        f"WHEN 'ARRAY' THEN {items_to_messages_sql(instructions)} END"
    )
    user = (
        f"CASE json_type({input_}) "
        f"WHEN 'VARCHAR' THEN [json_object('role', 'user', 'content', {input_} ->> '$')] "
        f"WHEN 'ARRAY' THEN {items_to_messages_sql(input_)} END"
    )
    return f"CASE WHEN {instructions} IS NOT NULL OR {input_} IS NOT NULL THEN to_json(list_concat({system}, {user})) END"


def output_text_sql(output: str) -> str:
    """The text of the ``message`` output items (their output_text parts, else a refusal)."""
    messages = f"list_filter(json_extract({output}, '$[*]'), lambda x: x ->> 'type' = 'message')"
    text = f"array_to_string(flatten(list_transform({messages}, lambda x: json_extract_string(x, '$.content[*].text'))), '')"
    refusal = f"array_to_string(flatten(list_transform({messages}, lambda x: json_extract_string(x, '$.content[*].refusal'))), '')"
    return (
        f"CASE WHEN json_type({output}) = 'ARRAY' AND len({messages}) > 0 "
        f"THEN coalesce(nullif({text}, ''), nullif({refusal}, ''), '') END"
    )


def _id_of(conversation: str) -> str:
    """``conversation`` is an id string in requests and ``{id}`` in responses."""
    return f"CASE WHEN json_type({conversation}) = 'VARCHAR' THEN {conversation} ->> '$' ELSE {conversation} ->> 'id' END"


def _is_response_object(value: object) -> bool:
    return isinstance(value, dict) and value.get("object") == "response"


class ResponsesPairs(Format):
    name = "openai-responses"
    description = "OpenAI Responses API request/response pairs or bare Response objects (JSONL)"

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        if not isinstance(first, dict):
            return False
        if _is_response_object(first) and "request" not in first and "response" not in first:
            return True
        if GATEWAY_ROW_KEYS & first.keys():
            return False  # a Helicone row carries Responses bodies too: that format reads it
        request, response = envelope_bodies(first)
        if not isinstance(request, dict) or not ("response" in first or "response_body" in first):
            return False
        # A Response object, or (an error body) a request in Responses shape.
        return _is_response_object(response) or ("input" in request and "messages" not in request)

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        # The envelope's ``object`` tells a bare Response line apart.
        pairs, request_key, response_key = envelope_sql(
            path, options, file_id, _REQUEST, _RESPONSE, extra_keys='"object": "VARCHAR", '
        )
        # A bare Response line is parsed a second time as a Response (CASE only
        # evaluates that branch for those lines).
        parsed = (
            f"(SELECT * REPLACE (CASE WHEN bare THEN try(from_json(raw, '{_RESPONSE}')) ELSE resp END AS resp) "
            f"FROM (SELECT *, (j.object = 'response' AND req IS NULL AND resp IS NULL) AS bare FROM {pairs}))"
        )
        envelope_metadata = "CASE WHEN bare THEN NULL ELSE j.metadata END"
        prompt_id = "coalesce(resp.prompt.id, req.prompt.id)"
        failed = (
            "(resp.error IS NOT NULL AND json_type(resp.error) <> 'NULL') "
            "OR lower(resp.status) IN ('failed', 'cancelled') OR TRY_CAST(j.status_code AS INTEGER) >= 400"
        )
        leftovers = (
            "json_object('response_id', resp.id, 'response_status', resp.status, "
            "'incomplete_reason', resp.incomplete_details ->> 'reason', "
            "'previous_response_id', coalesce(resp.previous_response_id, req.previous_response_id), "
            f"'conversation_id', coalesce({_id_of('resp.conversation')}, {_id_of('req.conversation')}), "
            "'prompt_variables', coalesce(resp.prompt.variables, req.prompt.variables), "
            "'response_metadata', coalesce(resp.metadata, req.metadata))"
        )
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": (
                    "CASE " + JSON_OBJECT_CHECKS +
                    f"WHEN req IS NULL AND NOT bare THEN 'no {request_key} object' "
                    f"WHEN resp IS NULL THEN 'no {response_key} object' "
                    "WHEN req.input IS NOT NULL AND json_type(req.input) NOT IN ('VARCHAR', 'ARRAY') "
                    "THEN 'request.input is not a string or a list' "
                    "WHEN resp.output IS NOT NULL AND json_type(resp.output) <> 'ARRAY' THEN 'response.output is not a list' END"
                ),
                "native_id": "coalesce(j.id, resp.id)",
                "dedupe_key": "coalesce(j.id, resp.id)",
                "started_at_raw": "CASE WHEN bare THEN resp.created_at ELSE coalesce(j.timestamp, j.created_at, j.ts, resp.created_at) END",
                "provider": "'openai'",
                "model_logged": "coalesce(resp.model, req.model)",
                "user_id": (
                    f"coalesce({envelope_metadata} ->> 'user_id', j.user_id, req.user, resp.user, "
                    "req.safety_identifier, resp.safety_identifier, req.metadata ->> 'user_id', resp.metadata ->> 'user_id')"
                ),
                "session_id": (
                    f"coalesce({envelope_metadata} ->> 'session_id', req.metadata ->> 'session_id', "
                    f"resp.metadata ->> 'session_id', {_id_of('req.conversation')}, {_id_of('resp.conversation')})"
                ),
                # The template reference wins; its version goes with it (never mixed with the proxy's).
                "prompt_name": f"coalesce({prompt_id}, {envelope_metadata} ->> 'prompt_name', req.metadata ->> 'prompt_name')",
                "prompt_version": (
                    f"CASE WHEN {prompt_id} IS NOT NULL THEN coalesce(resp.prompt.version, req.prompt.version) "
                    f"ELSE coalesce({envelope_metadata} ->> 'prompt_version', req.metadata ->> 'prompt_version') END"
                ),
                "messages": messages_sql("coalesce(req.instructions, resp.instructions)", "req.input"),
                "response_text": output_text_sql("resp.output"),
                **openai_usage_exprs("resp.usage", "input", "output"),
                "latency_ms": (
                    "coalesce(j.latency_ms, j.duration_ms, "
                    "CAST((TRY_CAST(resp.completed_at AS DOUBLE) - TRY_CAST(resp.created_at AS DOUBLE)) * 1000 AS VARCHAR))"
                ),
                "status": f"CASE WHEN {failed} THEN 'error' ELSE 'ok' END",
                "status_code": "j.status_code",
                "error_message": (
                    "CASE WHEN resp.error IS NOT NULL AND json_type(resp.error) <> 'NULL' "
                    "THEN coalesce(resp.error ->> 'message', resp.error ->> '$') "
                    "WHEN lower(resp.status) IN ('failed', 'cancelled') THEN 'response ' || lower(resp.status) END"
                ),
                "is_batch": "false",
                "service_tier": "coalesce(resp.service_tier, req.service_tier)",
                "temperature": "coalesce(req.temperature, resp.temperature)",
                "tools": "CASE WHEN json_array_length(req.tools) > 0 THEN req.tools END",
                "max_tokens": "coalesce(req.max_output_tokens, resp.max_output_tokens)",
                "metadata": f"json_merge_patch(coalesce({envelope_metadata}, '{{}}'), json_merge_patch('{{}}', {leftovers}))",
            },
            parsed,
        )
