"""LiteLLM proxy spend logs: dumps of the ``LiteLLM_SpendLogs`` Postgres table.

Where the files come from: the LiteLLM proxy writes one row per request to
``LiteLLM_SpendLogs``; teams dump it with ``psql \\copy … TO … CSV HEADER``,
``COPY (SELECT row_to_json(t) …)`` (JSON lines), a JSON array (the
``/spend/logs`` endpoint, database tools) or CSV from a database client.
Reference: ``log-formats.md`` §6.

Fields: ``request_id`` (the provider's response id or LiteLLM's call id) is
the id and the de-duplication key; ``startTime`` the time (``timestamp(3)``
without a zone in SQL dumps: UTC); ``model`` the model (else ``model_group``,
the public alias, else the request's model); ``custom_llm_provider`` the
provider; ``end_user`` (the customer, the request's ``user``) the user, else
``user`` (the key's internal user); ``session_id`` the session — note it is
LiteLLM's ``litellm_trace_id`` when the caller set one and otherwise a
**random uuid per request**, so sessions are only meaningful for callers
that pass a trace id; ``spend`` is LiteLLM's own USD cost →
``logged_cost_usd``; ``request_duration_ms`` (else ``endTime − startTime``)
the latency; ``status`` ``success``/``failure`` the status, with
``metadata.error_information`` as the error. An explicit template is only
taken from ``metadata.spend_logs_metadata.prompt_name`` / ``prompt_version``
(custom metadata the caller sent). ``call_type``, ``model_group``,
``model_id``, ``api_base``, ``request_tags``, team/organisation, the key
alias, ``spend_logs_metadata`` and ``cost_breakdown`` go to ``metadata``
(not the hashed API key nor the requester's IP).

Prompts: the ``messages`` column is ``{}`` in current versions; the request
body is in ``proxy_server_request`` when the proxy stores prompts
(``store_prompts_in_spend_logs``): chat ``messages``, Anthropic ``system`` +
messages (``/v1/messages`` pass-through), embedding ``input``. An older
non-empty ``messages`` list is used when there is no request body. The
``response`` column holds the response (``{}`` unless stored).

Calls of every ``call_type`` are stored: chat and text completions
(``acompletion``, ``completion``, ``anthropic_messages``…) and also
embeddings (``aembedding``), image and audio calls — they are spend too;
``metadata.call_type`` tells them apart.

Cache hits of the proxy's own cache are real rows: ``request_id``
``<id>_cache_hit<epoch>``, ``cache_hit = "True"``, ``spend`` usually 0 (no
provider call). They are kept, with ``metadata.cache_hit = true``.

Tokens: LiteLLM reports OpenAI-style usage — ``prompt_tokens`` includes the
cache reads (for Anthropic LiteLLM *adds* them in, and newer versions add the
cache creation too), so ``usage_semantics = 'openai'``. Cache reads come
from ``metadata.additional_usage_values`` (``prompt_tokens_details.cached_tokens``,
else ``cache_read_input_tokens``; ``usage_object`` in some versions), cache
writes from ``cache_creation_input_tokens``, reasoning from
``completion_tokens_details.reasoning_tokens``. Older versions did not add
Anthropic cache counts into ``prompt_tokens``; the counts show it: reads
above ``prompt_tokens`` → additive (``'anthropic'``); reads within but reads
plus writes above it → the writes were left out and are added. Small writes
on an old row stay ambiguous and are taken as included.

Dumps hold the Json columns as JSON text (CSV always; JSON when the dump
did not cast them), which is parsed; empty CSV cells are NULL.
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
    messages_sql,
    nonempty_sql,
    output_text_sql,
    response_struct_sql,
    row_structure,
    rows_relation,
    sniff_rows,
    unwrap_json_sql,
)
from audit.formats.lines import JSON_OBJECT_CHECKS, parsed_lines_sql

_SCALARS = (
    "request_id", "call_type", "spend", "total_tokens", "prompt_tokens", "completion_tokens",
    "startTime", "endTime", "completionStartTime", "request_duration_ms",
    "model", "model_id", "model_group", "custom_llm_provider", "api_base", "user", "end_user",
    "team_id", "organization_id", "agent_id", "cache_hit", "cache_key", "session_id", "status",
    "mcp_namespaced_tool_name",
)
_NESTED = ("metadata", "request_tags", "messages", "response", "proxy_server_request")
_ROW = row_structure(_SCALARS, _NESTED)


def is_spend_log_row(row: object) -> bool:
    return isinstance(row, dict) and "request_id" in row and "call_type" in row and (
        "spend" in row or "startTime" in row
    )


class LiteLLMSpendLogs(Format):
    name = "litellm-spendlogs"
    description = "LiteLLM proxy LiteLLM_SpendLogs table dump (JSON array, JSONL or CSV)"

    def sniff(self, sample: Sample) -> bool:
        return sniff_rows(sample, is_spend_log_row, [{"request_id", "call_type", "spend"}],
                          [("request_id", "call_type", "spend")])

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        rows = rows_relation(con, path, options, file_id, is_spend_log_row)
        parsed = (
            "(SELECT *, json_extract(md, '$.additional_usage_values') AS extra_usage, "
            f"{body_struct_sql('req')} AS req_s, {response_struct_sql('resp')} AS resp_s, "
            "json_extract(md, '$.usage_object') AS usage_object, "
            "j.startTime AS start_raw, j.endTime AS end_raw "
            "FROM (SELECT line_no, raw, j, "
            f"{unwrap_json_sql('j.metadata')} AS md, {unwrap_json_sql('j.proxy_server_request')} AS req, "
            f"{unwrap_json_sql('j.response')} AS resp, {unwrap_json_sql('j.messages')} AS logged_messages, "
            f"{unwrap_json_sql('j.request_tags')} AS tags "
            f"FROM {parsed_lines_sql(rows, _ROW)}))"
        )

        def usage_value(*paths: str) -> str:
            return "coalesce(" + ", ".join(
                f"{source} ->> '$.{p}'" for p in paths for source in ("extra_usage", "usage_object")
            ) + ")"

        prompt = "j.prompt_tokens"
        cache_read = usage_value("prompt_tokens_details.cached_tokens", "cache_read_input_tokens")
        cache_write = usage_value("cache_creation_input_tokens", "prompt_tokens_details.cache_creation_tokens")
        additive = f"(coalesce(audit_int({cache_read}), 0) > audit_int({prompt}))"
        failed = "lower(j.status) = 'failure'"
        error_code = "md ->> '$.error_information.error_code'"
        error_text = nonempty_sql("(md ->> '$.error_information.error_message')")
        cache_hit = "(lower(j.cache_hit) = 'true' OR j.request_id LIKE '%\\_cache\\_hit%' ESCAPE '\\')"
        start_ts, end_ts = "audit_ts(start_raw)", "audit_ts(end_raw)"
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": "CASE " + JSON_OBJECT_CHECKS + "END",
                "native_id": "j.request_id",
                "dedupe_key": "j.request_id",
                "started_at_raw": "start_raw",
                "provider": nonempty_sql("j.custom_llm_provider"),
                "model_logged": "coalesce(" + ", ".join(
                    nonempty_sql(v) for v in ("j.model", "j.model_group", "req_s.model")
                ) + ")",
                "user_id": f"coalesce({nonempty_sql('j.end_user')}, {nonempty_sql('j.user')})",
                "session_id": nonempty_sql("j.session_id"),
                "prompt_name": "md ->> '$.spend_logs_metadata.prompt_name'",
                "prompt_version": "md ->> '$.spend_logs_metadata.prompt_version'",
                "messages": (
                    f"coalesce({messages_sql('req', 'req_s')}, CASE WHEN left(logged_messages, 1) = '[' "
                    "AND json_array_length(logged_messages) > 0 THEN logged_messages END)"
                ),
                "response_text": output_text_sql("resp", "resp_s"),
                "usage_semantics": f"CASE WHEN {additive} THEN 'anthropic' ELSE 'openai' END",
                "usage_input": f"CASE WHEN {additive} THEN {prompt} ELSE {input_with_left_out_writes_sql(prompt, cache_read, cache_write)} END",
                "usage_cache_read": cache_read,
                "usage_cache_write": cache_write,
                "usage_output": "j.completion_tokens",
                "usage_reasoning": usage_value("completion_tokens_details.reasoning_tokens"),
                "logged_cost_usd": "j.spend",
                "latency_ms": (
                    f"coalesce({nonempty_sql('j.request_duration_ms')}, CASE WHEN {start_ts} IS NOT NULL AND {end_ts} IS NOT NULL "
                    f"THEN (epoch_ms({end_ts}) - epoch_ms({start_ts}))::VARCHAR END)"
                ),
                "status": f"CASE WHEN {failed} THEN 'error' WHEN lower(j.status) = 'success' THEN 'ok' END",
                # error_code is often a provider's word ('invalid_request_error'): only a number is a status code.
                "status_code": f"CASE WHEN {failed} AND TRY_CAST({error_code} AS INTEGER) IS NOT NULL THEN {error_code} END",
                "error_message": f"CASE WHEN {failed} THEN coalesce({error_text}, 'failure') END",
                "is_batch": "false",
                "service_tier": "coalesce(resp_s.service_tier, req_s.service_tier)",
                "temperature": count_or_raw_sql("req_s.temperature"),
                "max_tokens": count_or_raw_sql(
                    "coalesce(req_s.max_completion_tokens, req_s.max_tokens)", positive_only=True
                ),
                "metadata": compact_object_sql(
                    "'call_type', j.call_type, 'model_group', j.model_group, 'model_id', j.model_id, "
                    "'api_base', j.api_base, "
                    f"'cache_hit', CASE WHEN {cache_hit} THEN true END, "
                    "'request_tags', CASE WHEN json_array_length(tags) > 0 THEN tags END, "
                    "'team_id', j.team_id, 'organization_id', j.organization_id, 'agent_id', j.agent_id, "
                    "'internal_user', j.user, 'key_alias', md ->> '$.user_api_key_alias', "
                    "'team_alias', md ->> '$.user_api_key_team_alias', "
                    "'spend_logs_metadata', json_extract(md, '$.spend_logs_metadata'), "
                    "'cost_breakdown', json_extract(md, '$.cost_breakdown'), "
                    "'total_tokens', j.total_tokens, 'status', j.status, "
                    f"'error_code', CASE WHEN {failed} THEN {error_code} END, "
                    "'mcp_tool', j.mcp_namespaced_tool_name"
                ),
            },
            parsed,
        )
