"""Format: OpenAI Responses API request/response pairs (and bare Response lines), field by field.

The fixture follows reference/log-formats.md §2 (Response object, ResponseUsage,
Prompt): line 1 a template call with cached input, line 2 a reasoning model with
cache writes and a conversation, line 3 a bare Response object, line 4 a failed
response, line 5 a stream logged without usage, lines 6–7 malformed, line 8 a
re-emitted copy of line 2.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from audit.formats.openai_responses import ResponsesPairs
from audit.ingest import detect_format, ingest, read_sample
from audit.tokens import get_encoding
from conftest import FIXTURES, REALDATA, cookbook_count, ingest_by_id, rows

PAIRS = FIXTURES / "openai_responses_pairs.jsonl"


def test_responses_pairs_normalise_field_by_field(con):
    totals, got = ingest_by_id(con, PAIRS)
    assert totals == {"read": 8, "stored": 5, "duplicate": 1, "rejected": 2, "counted": 1}
    assert totals["read"] == totals["stored"] + totals["duplicate"] + totals["rejected"]
    assert set(got) == {"rlog_1", "rlog_2", "resp_A3", "rlog_4", "rlog_5"}

    template = got["rlog_1"]
    assert (template["source_line"], template["source_format"]) == (1, "openai-responses")
    assert template["started_at"] == datetime(2025, 6, 2, 9, 0, 0)
    assert (template["provider"], template["model_logged"], template["model"]) == ("openai", "gpt-4.1-2025-04-14", "gpt-4.1")
    assert (template["user_id"], template["session_id"]) == ("u_10", "s_10")
    # The Responses `prompt` object is the template reference.
    assert (template["prompt_name"], template["prompt_version"]) == ("pmpt_billing", "4")
    assert json.loads(template["messages"]) == [
        {"role": "system", "content": "You are Acme's billing assistant."},
        {"role": "user", "content": [{"type": "input_text", "text": "Why was I charged twice?"}]},
    ]
    assert template["response_text"] == "The second charge is a pending authorisation."
    assert (template["input_tokens"], template["cached_input_tokens"], template["cache_write_tokens"]) == (2400, 2048, 0)
    assert (template["output_tokens"], template["reasoning_tokens"], template["tokens_source"]) == (9, 0, "logged")
    assert template["logged_cost_usd"] is None
    assert (template["latency_ms"], template["temperature"], template["max_tokens"]) == (1320.0, 0.3, 400)
    assert (template["status"], template["is_batch"], template["service_tier"]) == ("ok", False, "default")
    metadata = json.loads(template["metadata"])
    assert metadata["prompt_variables"] == {"plan": "pro"} and metadata["response_metadata"] == {"tenant": "acme"}

    # Re-emitted on line 8: the last copy is the one stored.
    reasoning = got["rlog_2"]
    assert reasoning["source_line"] == 8
    assert reasoning["started_at"] == datetime(2025, 6, 2, 9, 5, 0, 500000)
    assert (reasoning["model"], reasoning["service_tier"]) == ("o4-mini", "flex")
    assert (reasoning["user_id"], reasoning["session_id"]) == ("hash_u11", "conv_77")  # safety_identifier, conversation
    assert (reasoning["prompt_name"], reasoning["prompt_version"]) == (None, None)
    assert json.loads(reasoning["messages"]) == [{"role": "user", "content": "Is 2027 a prime number?"}]
    assert reasoning["response_text"] == "Yes, 2027 is prime."  # the reasoning item is not text
    assert (reasoning["input_tokens"], reasoning["cached_input_tokens"], reasoning["cache_write_tokens"]) == (1200, 0, 1024)
    assert (reasoning["output_tokens"], reasoning["reasoning_tokens"]) == (310, 256)

    bare = got["resp_A3"]
    assert bare["started_at"] == datetime(2025, 6, 2, 10, 0, 0)  # created_at 1748858400
    assert bare["latency_ms"] == 2000.0  # completed_at - created_at
    assert (bare["model"], bare["user_id"], bare["session_id"]) == ("gpt-4o-mini", "u_12", None)
    assert (bare["prompt_name"], bare["prompt_version"]) == ("pmpt_summary", "2")
    assert json.loads(bare["messages"]) == [
        {"role": "developer", "content": [{"type": "input_text", "text": "Summarise the ticket in one line."}]}
    ]
    assert bare["response_text"] == "Customer cannot log"
    assert (bare["input_tokens"], bare["output_tokens"], bare["tokens_source"]) == (512, 5, "logged")
    assert (bare["status"], bare["temperature"], bare["max_tokens"]) == ("ok", 1.0, 5)
    assert json.loads(bare["metadata"])["incomplete_reason"] == "max_output_tokens"

    failed = got["rlog_4"]
    assert failed["started_at"] == datetime(2025, 6, 2, 10, 15, 0)  # +02:00 → UTC
    assert (failed["status"], failed["error_message"]) == ("error", "The model failed to generate a response.")
    assert failed["input_tokens"] is None and failed["tokens_source"] == "none"
    assert failed["response_text"] is None

    streamed = got["rlog_5"]
    encoding = get_encoding("o200k_base")
    expected_input = cookbook_count([{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "Hello!"}], encoding)
    assert streamed["tokens_source"] == "counted"
    assert streamed["input_tokens"] == expected_input
    assert streamed["output_tokens"] == len(encoding.encode("Hi! How can I help?"))
    assert streamed["started_at"] == datetime(2025, 6, 2, 11, 0, 0)


def test_responses_rejects_keep_line_and_reason(con):
    ingest(con, [PAIRS])
    rejects = rows(con, "SELECT line_no, reason, raw FROM ingest_rejects ORDER BY line_no")
    assert [(r["line_no"], r["reason"]) for r in rejects] == [
        (6, "request.input is not a string or a list"),
        (7, "not valid JSON"),
    ]
    assert rejects[0]["raw"].startswith('{"id": "rlog_6"')
    files = rows(con, "SELECT rows_read, rows_stored, rows_duplicate, rows_rejected FROM ingest_files")
    assert files == [{"rows_read": 8, "rows_stored": 5, "rows_duplicate": 1, "rows_rejected": 2}]


def test_bare_response_file_is_detected_and_read(con, tmp_path: Path):
    bare_line = PAIRS.read_text().splitlines()[2]
    path = tmp_path / "responses.jsonl"
    path.write_text(bare_line + "\n")
    assert detect_format(read_sample(path, "none")).name == "openai-responses"
    ingest(con, [path])
    assert rows(con, "SELECT native_id, input_tokens FROM requests") == [{"native_id": "resp_A3", "input_tokens": 512}]


def test_auto_detection_picks_responses_and_only_responses(tmp_path: Path):
    assert detect_format(read_sample(PAIRS, "none")).name == "openai-responses"
    # A Helicone row with Responses bodies belongs to the helicone format.
    pair = json.loads(PAIRS.read_text().splitlines()[0])
    helicone_row = tmp_path / "helicone.jsonl"
    helicone_row.write_text(json.dumps({"request_id": "h1", "request_created_at": "2025-06-02 09:00:00", "response_status": 200,
                                        "request_body": pair["request"], "response_body": pair["response"]}) + "\n")
    assert not ResponsesPairs().sniff(read_sample(helicone_row, "none"))
    others = [
        FIXTURES / "openai_chat_pairs.jsonl",
        FIXTURES / "anthropic_messages_pairs.jsonl",
        FIXTURES / "anthropic_batch_results.jsonl",
        FIXTURES / "otel_spans.json",
        FIXTURES / "otel_spans_legacy.jsonl",
        *sorted((REALDATA / "openai_batch").glob("*.jsonl")),
    ]
    for path in others:
        assert not ResponsesPairs().sniff(read_sample(path, "none")), path.name
