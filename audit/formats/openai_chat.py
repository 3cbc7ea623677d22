"""OpenAI Chat Completions request/response pairs, one JSON object per line.

The usual proxy or gateway log: each line carries the request body, the
response body (``chat.completion``) and the proxy's own fields::

    {"id": "log_1", "timestamp": "2025-06-01T12:34:56Z", "latency_ms": 1234,
     "request": {"model": "gpt-4o", "messages": [...], "temperature": 0.7},
     "response": {"id": "chatcmpl-…", "created": 1748781296, "model": "gpt-4o-2024-08-06",
                  "choices": [{"message": {"content": "…"}}], "usage": {...}},
     "metadata": {"user_id": "u_1", "session_id": "s_1", "prompt_name": "faq", "prompt_version": "3"}}

Also accepted: ``request_body``/``response_body``, ``created_at``/``ts`` for the
time, a top-level ``status_code``, and a response that is an error object.
Usage follows OpenAI's semantics (cached ⊂ prompt, reasoning ⊂ completion); a
streamed call logged without usage is counted by ``ingest``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.lines import JSON_OBJECT_CHECKS, lines_sql, parsed_lines_sql

# Scalars are read as VARCHAR so a wrong type is caught by the shared checks.
_REQUEST = '{"model": "VARCHAR", "messages": "JSON", "temperature": "VARCHAR", "max_tokens": "VARCHAR", "max_completion_tokens": "VARCHAR", "user": "VARCHAR", "stream": "VARCHAR", "service_tier": "VARCHAR", "metadata": "JSON", "tools": "JSON"}'
_USAGE = '{"prompt_tokens": "VARCHAR", "completion_tokens": "VARCHAR", "prompt_tokens_details": {"cached_tokens": "VARCHAR", "cache_write_tokens": "VARCHAR"}, "completion_tokens_details": {"reasoning_tokens": "VARCHAR"}}'
_RESPONSE = (
    '{"id": "VARCHAR", "created": "VARCHAR", "model": "VARCHAR", "service_tier": "VARCHAR", '
    '"choices": [{"message": {"content": "JSON", "refusal": "VARCHAR", "tool_calls": "JSON"}, "finish_reason": "VARCHAR"}], '
    f'"usage": {_USAGE}, "error": "JSON"}}'
)


# ---------------------------------------------------------------- the proxy envelope
#
# The pair formats (this one, ``openai_responses``, ``anthropic``) share one
# line shape: the proxy's own keys around a request and a response body, the
# bodies under ``request``/``response`` or ``request_body``/``response_body``.

_ENVELOPE_KEYS = (
    '"id": "VARCHAR", "timestamp": "VARCHAR", "created_at": "VARCHAR", "ts": "VARCHAR", '
    '"latency_ms": "VARCHAR", "duration_ms": "VARCHAR", "status_code": "VARCHAR", "user_id": "VARCHAR", '
    '"metadata": "JSON"'
)
# Columns of gateway exports (Helicone) that also hold request_body/response_body.
GATEWAY_ROW_KEYS = frozenset({"request_created_at", "response_status"})


def envelope_bodies(line: dict) -> tuple[object, object]:
    """The (request, response) bodies of an envelope line, under either pair of keys."""
    return line.get("request", line.get("request_body")), line.get("response", line.get("response_body"))


def envelope_sql(
    path: Path, options: IngestOptions, file_id: int, request: str, response: str, *, extra_keys: str = ""
) -> tuple[str, str, str]:
    """``(relation, request_key, response_key)`` of an envelope file.

    The relation has ``line_no, raw, j`` (the line parsed once: only the keys
    this file uses, parsing is the cost) and the bodies ``req`` and ``resp``
    parsed as ``request`` and ``response``. The keys are the ones the file's
    first line uses; ``extra_keys`` adds envelope keys (``'"name": "TYPE", '``).
    """
    first = options.sample.first_json if options.sample else None
    first = first if isinstance(first, dict) else {}
    request_key = "request_body" if "request_body" in first and "request" not in first else "request"
    response_key = "response_body" if "response_body" in first and "response" not in first else "response"
    structure = "{" + extra_keys + _ENVELOPE_KEYS + f', "{request_key}": {request}, "{response_key}": {response}}}'
    lines = lines_sql(path, options.compression, f"_line_rejects_{file_id}")
    relation = (
        f"(SELECT line_no, raw, j, j.{request_key} AS req, j.{response_key} AS resp "
        f"FROM {parsed_lines_sql(lines, structure)})"
    )
    return relation, request_key, response_key


# ---------------------------------------------------------------- Chat Completions


def response_text_sql(message: str) -> str:
    """Text of a chat message's content: a string, or the concatenated text parts."""
    return (
        f"CASE WHEN json_type({message}.content) = 'VARCHAR' THEN {message}.content ->> '$' "
        f"WHEN json_type({message}.content) = 'ARRAY' THEN array_to_string(json_extract_string({message}.content, '$[*].text'), '') "
        f"ELSE {message}.refusal END"
    )


def openai_usage_exprs(usage: str, input_: str = "prompt", output: str = "completion") -> dict[str, str]:
    """Stage usage columns from an OpenAI ``usage`` struct.

    Chat Completions names the counts ``prompt_*``/``completion_*``, the
    Responses API ``input_*``/``output_*`` (pass those); the meaning is the
    same (cached ⊂ input, reasoning ⊂ output).
    """
    return {
        "usage_semantics": "'openai'",
        "usage_input": f"{usage}.{input_}_tokens",
        "usage_cache_read": f"{usage}.{input_}_tokens_details.cached_tokens",
        "usage_cache_write": f"{usage}.{input_}_tokens_details.cache_write_tokens",
        "usage_output": f"{usage}.{output}_tokens",
        "usage_reasoning": f"{usage}.{output}_tokens_details.reasoning_tokens",
    }


def chat_request_exprs(req: str) -> dict[str, str]:
    """Stage columns taken from a Chat Completions request body struct."""
    return {
        "messages": f"CASE WHEN json_type({req}.messages) = 'ARRAY' THEN {req}.messages END",
        "temperature": f"{req}.temperature",
        "max_tokens": f"coalesce({req}.max_completion_tokens, {req}.max_tokens)",
        "tools": f"CASE WHEN json_type({req}.tools) = 'ARRAY' AND json_array_length({req}.tools) > 0 THEN {req}.tools END",
    }


class ChatPairs(Format):
    name = "openai-chat"
    description = "OpenAI Chat Completions request/response pairs (JSONL proxy log)"

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        if not isinstance(first, dict):
            return False
        request, response = envelope_bodies(first)
        if not (isinstance(request, dict) and "messages" in request and isinstance(response, dict)):
            return False
        # Anthropic Messages and the Responses API use the same envelope: tell
        # them apart by the response body.
        return "choices" in response or response.get("object") == "chat.completion" or (
            "error" in response and response.get("type") != "error"
        )

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        parsed, request_key, response_key = envelope_sql(path, options, file_id, _REQUEST, _RESPONSE)
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": (
                    "CASE " + JSON_OBJECT_CHECKS +
                    f"WHEN req IS NULL THEN 'no {request_key} object' "
                    "WHEN req.messages IS NOT NULL AND json_type(req.messages) <> 'ARRAY' THEN 'request.messages is not a list' "
                    f"WHEN resp IS NULL THEN 'no {response_key} object' END"
                ),
                "native_id": "coalesce(j.id, resp.id)",
                "dedupe_key": "coalesce(j.id, resp.id)",
                "started_at_raw": "coalesce(j.timestamp, j.created_at, j.ts, resp.created)",
                # The wire format is OpenAI's, the provider may not be (Groq, Azure, a gateway).
                "provider": "audit_provider_for(coalesce(resp.model, req.model))",
                "model_logged": "coalesce(resp.model, req.model)",
                "user_id": "coalesce(j.metadata ->> 'user_id', j.user_id, req.user, req.metadata ->> 'user_id')",
                "session_id": "coalesce(j.metadata ->> 'session_id', req.metadata ->> 'session_id')",
                "prompt_name": "coalesce(j.metadata ->> 'prompt_name', req.metadata ->> 'prompt_name')",
                "prompt_version": "coalesce(j.metadata ->> 'prompt_version', req.metadata ->> 'prompt_version')",
                **chat_request_exprs("req"),
                "response_text": response_text_sql("resp.choices[1].message"),
                **openai_usage_exprs("resp.usage"),
                "latency_ms": "coalesce(j.latency_ms, j.duration_ms)",
                "status": "CASE WHEN resp.error IS NOT NULL AND json_type(resp.error) <> 'NULL' OR TRY_CAST(j.status_code AS INTEGER) >= 400 THEN 'error' ELSE 'ok' END",
                "status_code": "j.status_code",
                "error_message": "coalesce(resp.error ->> 'message', resp.error ->> '$')",
                "is_batch": "false",
                "service_tier": "coalesce(resp.service_tier, req.service_tier)",
                "metadata": "j.metadata",
            },
            parsed,
        )
