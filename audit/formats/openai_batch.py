"""OpenAI Batch API files: input lines and output/error lines, joined on ``custom_id``.

Input line: ``{custom_id, method, url, body: {chat request}}``; these are not
calls yet, so they go to ``batch_requests``. Output line: ``{id: "batch_req_…",
custom_id, response: {status_code, request_id, body: {chat.completion}} | null,
error: {code, message} | null}``; each becomes a ledger row with
``is_batch = true`` (the batch discount is applied when pricing).

Output lines carry no request, so the prompt comes from the matching input
line: preferably from the input file named like the output file
(``…output…`` → ``…input…``), otherwise from any ingested input with that
``custom_id`` (the most recent). An output ingested before its input gets
its prompt when the input arrives (``ingest`` back-fills). With no input at
all the call is still stored, with its logged usage and no prompt.
Output lines have no timestamp: the response body's ``created`` is used.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from audit.formats import Format, IngestOptions, Sample, select_stage
from audit.formats.lines import JSON_OBJECT_CHECKS, lines_sql, parsed_lines_sql
from audit.formats.openai_chat import (
    _REQUEST,
    _RESPONSE,
    chat_request_exprs,
    openai_usage_exprs,
    response_text_sql,
)

_OUTPUT_LINE = (
    '{"id": "VARCHAR", "custom_id": "VARCHAR", '
    f'"response": {{"status_code": "VARCHAR", "request_id": "VARCHAR", "body": {_RESPONSE}}}, '
    '"error": "JSON"}'
)
_INPUT_LINE = '{"custom_id": "VARCHAR", "method": "VARCHAR", "url": "VARCHAR", "body": "JSON"}'


def is_batch_output(first: object) -> bool:
    return isinstance(first, dict) and "custom_id" in first and ("response" in first or "error" in first) and "result" not in first


class BatchOutput(Format):
    name = "openai-batch-output"
    description = "OpenAI Batch API output/error file (JSONL)"

    def sniff(self, sample: Sample) -> bool:
        return is_batch_output(sample.first_json)

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        lines = lines_sql(path, options.compression, f"_line_rejects_{file_id}")
        # The input file this output most likely belongs to, by name.
        sibling = str(path).replace("output", "input")
        inputs = (
            "(SELECT b.custom_id, b.body, row_number() OVER (PARTITION BY b.custom_id "
            "ORDER BY (f.path = ?) DESC, b.file_id DESC, b.line_no DESC) AS preference "
            "FROM batch_requests b JOIN ingest_files f USING (file_id) WHERE NOT f.replaced)"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _batch_inputs AS SELECT custom_id, from_json(body, '{_REQUEST}') AS req "
            f"FROM {inputs} WHERE preference = 1",
            [sibling],
        )
        parsed = (
            "(SELECT l.line_no, l.raw, l.j, l.j.response.body AS resp, i.req FROM "
            f"{parsed_lines_sql(lines, _OUTPUT_LINE)} l "
            "LEFT JOIN _batch_inputs i ON i.custom_id = l.j.custom_id)"
        )
        failed = (
            "(j.error IS NOT NULL AND json_type(j.error) <> 'NULL') "
            "OR coalesce(TRY_CAST(j.response.status_code AS INTEGER), 200) >= 400 OR j.response IS NULL"
        )
        return select_stage(
            {
                "line_no": "line_no",
                "reject_reason": (
                    "CASE " + JSON_OBJECT_CHECKS +
                    "WHEN j.custom_id IS NULL THEN 'no custom_id' "
                    "WHEN j.response IS NULL AND (j.error IS NULL OR json_type(j.error) = 'NULL') "
                    "THEN 'neither response nor error' END"
                ),
                "native_id": "j.custom_id",
                "dedupe_key": "coalesce(j.id, j.custom_id)",
                "started_at_raw": "resp.created",
                # The wire format is OpenAI's, the provider may not be (Groq, Azure, a gateway).
                "provider": "audit_provider_for(coalesce(resp.model, req.model))",
                "model_logged": "coalesce(resp.model, req.model)",
                "user_id": "coalesce(req.user, req.metadata ->> 'user_id')",
                "session_id": "req.metadata ->> 'session_id'",
                "prompt_name": "req.metadata ->> 'prompt_name'",
                "prompt_version": "req.metadata ->> 'prompt_version'",
                **chat_request_exprs("req"),
                "response_text": response_text_sql("resp.choices[1].message"),
                **openai_usage_exprs("resp.usage"),
                "status": f"CASE WHEN {failed} THEN 'error' ELSE 'ok' END",
                "status_code": "j.response.status_code",
                "error_message": (
                    "coalesce(j.error ->> 'message', resp.error ->> 'message', "
                    "CASE WHEN j.error IS NOT NULL AND json_type(j.error) <> 'NULL' THEN j.error::VARCHAR END)"
                ),
                "is_batch": "true",
                "service_tier": "coalesce(resp.service_tier, 'batch')",
                "metadata": "json_object('custom_id', j.custom_id, 'batch_request_id', j.id, 'request_id', j.response.request_id)",
            },
            parsed,
        )


class BatchInput(Format):
    name = "openai-batch-input"
    description = "OpenAI Batch API input file (JSONL): prompts for a batch output file"
    target = "batch_input"

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        return isinstance(first, dict) and "custom_id" in first and "body" in first and "response" not in first

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        lines = lines_sql(path, options.compression, f"_line_rejects_{file_id}")
        return (
            "SELECT line_no, raw, j.custom_id AS custom_id, j.body AS body, "
            "CASE " + JSON_OBJECT_CHECKS +
            "WHEN j.custom_id IS NULL THEN 'no custom_id' "
            "WHEN j.body IS NULL OR json_type(j.body) <> 'OBJECT' THEN 'no request body object' "
            "WHEN json_type(j.body, '$.messages') IS DISTINCT FROM 'ARRAY' THEN 'body.messages is not a list' END AS reject_reason "
            f"FROM {parsed_lines_sql(lines, _INPUT_LINE)}"
        )
