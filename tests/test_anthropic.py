"""Formats: Anthropic Messages request/response pairs and Message Batches results, field by field.

Fixtures follow reference/log-formats.md §3 (Message, Usage with additive cache
counts, cache_creation TTL split, output_tokens_details.thinking_tokens, batch
result types succeeded/errored/canceled/expired).
"""

from __future__ import annotations

import json
from datetime import datetime

from audit.formats.anthropic import AnthropicBatchResults, AnthropicPairs
from audit.formats.openai_chat import ChatPairs
from audit.ingest import detect_format, ingest, read_sample
from audit.tokens import get_encoding
from conftest import FIXTURES, REALDATA, ingest_by_id, rows

PAIRS = FIXTURES / "anthropic_messages_pairs.jsonl"
BATCH = FIXTURES / "anthropic_batch_results.jsonl"


def test_anthropic_pairs_normalise_field_by_field(con):
    totals, got = ingest_by_id(con, PAIRS)
    assert totals == {"read": 6, "stored": 4, "duplicate": 0, "rejected": 2, "counted": 1}

    cached = got["alog_1"]
    assert (cached["source_line"], cached["source_format"]) == (1, "anthropic-messages")
    assert cached["started_at"] == datetime(2025, 6, 3, 8, 0, 0)  # the envelope's: a Message has no time
    assert (cached["provider"], cached["model_logged"], cached["model"]) == (
        "anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4")
    assert (cached["user_id"], cached["session_id"]) == ("u_20", "s_20")
    assert (cached["prompt_name"], cached["prompt_version"]) == ("ticket_summary", "2")
    assert json.loads(cached["messages"]) == [
        {"role": "system", "content": "You summarise support tickets."},
        {"role": "user", "content": "Summarise ticket T-1: the app crashes on login."},
    ]
    assert cached["response_text"] == "Login crash; needs a fix."
    # Additive usage: 42 uncached + 18,200 cache reads + 0 writes = 18,242 input in all.
    assert (cached["input_tokens"], cached["cached_input_tokens"], cached["cache_write_tokens"]) == (18242, 18200, 0)
    assert (cached["output_tokens"], cached["reasoning_tokens"], cached["tokens_source"]) == (512, 0, "logged")
    assert cached["logged_cost_usd"] is None
    assert (cached["latency_ms"], cached["temperature"], cached["max_tokens"]) == (2100.0, 0.5, 1024)
    assert (cached["status"], cached["is_batch"], cached["service_tier"]) == ("ok", False, "standard")

    thinking = got["alog_2"]
    assert thinking["started_at"] == datetime(2025, 6, 3, 8, 15, 0)  # epoch milliseconds
    assert (thinking["model"], thinking["user_id"], thinking["session_id"]) == ("claude-opus-4-1", "u_21", None)
    messages = json.loads(thinking["messages"])
    assert messages[0]["role"] == "system" and messages[0]["content"][0]["text"] == "You are a research assistant."
    assert messages[1] == {"role": "user", "content": [{"type": "text", "text": "What changed in the 2025 tax rules?"}]}
    assert thinking["response_text"] == "Three changes: A, B and C."  # thinking and tool blocks left out
    assert (thinking["input_tokens"], thinking["cached_input_tokens"], thinking["cache_write_tokens"]) == (2358, 0, 2048)
    assert (thinking["output_tokens"], thinking["reasoning_tokens"]) == (900, 350)  # thinking ⊂ output
    metadata = json.loads(thinking["metadata"])
    assert metadata["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2048}
    assert metadata["server_tool_use"] == {"web_search_requests": 1}

    streamed = got["alog_3"]
    encoding = get_encoding("o200k_base")
    assert streamed["tokens_source"] == "counted"
    assert streamed["output_tokens"] == len(encoding.encode("Hello! What can I do for you?"))
    assert streamed["cached_input_tokens"] == 0
    assert streamed["started_at"] == datetime(2025, 6, 3, 8, 20, 0)  # zone-less = UTC

    overloaded = got["alog_4"]
    assert (overloaded["status"], overloaded["status_code"], overloaded["error_message"]) == ("error", 529, "Overloaded")
    assert overloaded["started_at"] == datetime(2025, 6, 3, 8, 30, 0)  # +02:00 → UTC
    assert overloaded["input_tokens"] is None and overloaded["tokens_source"] == "none"
    assert json.loads(overloaded["metadata"]) == {"error_type": "overloaded_error"}


def test_anthropic_pairs_rejects_keep_line_and_reason(con):
    ingest(con, [PAIRS])
    rejects = rows(con, "SELECT line_no, reason FROM ingest_rejects ORDER BY line_no")
    assert rejects == [
        {"line_no": 5, "reason": "request.messages is not a list"},
        {"line_no": 6, "reason": "output token count is not a whole number >= 0: many"},
    ]
    files = rows(con, "SELECT rows_read, rows_stored, rows_duplicate, rows_rejected FROM ingest_files")
    assert files == [{"rows_read": 6, "rows_stored": 4, "rows_duplicate": 0, "rows_rejected": 2}]


def test_batch_results_normalise_field_by_field(con):
    totals, got = ingest_by_id(con, BATCH)  # auto-detected
    assert totals == {"read": 6, "stored": 5, "duplicate": 0, "rejected": 1, "counted": 0}
    assert all(r["is_batch"] and r["source_format"] == "anthropic-batch-results" for r in got.values())
    assert all(r["started_at"] is None and r["messages"] is None for r in got.values())

    first = got["ticket-001"]
    assert (first["provider"], first["model_logged"], first["model"]) == ("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku")
    assert first["response_text"] == "Category: billing"
    assert (first["input_tokens"], first["cached_input_tokens"], first["cache_write_tokens"]) == (1204, 1024, 0)
    assert (first["output_tokens"], first["reasoning_tokens"], first["tokens_source"]) == (6, 0, "logged")
    assert (first["status"], first["service_tier"]) == ("ok", "batch")

    # Only the TTL breakdown of cache writes was logged: its sum is the cache write count.
    ttl_only = got["ticket-006"]
    assert ttl_only["response_text"] == "Category: shipping"
    assert (ttl_only["input_tokens"], ttl_only["cached_input_tokens"], ttl_only["cache_write_tokens"]) == (1520, 0, 1500)

    # Results that did not succeed are failed calls; they carry no model.
    for custom_id, message in [
        ("ticket-002", "max_tokens: 100000 > 8192, which is the maximum allowed number of output tokens"),
        ("ticket-003", "request canceled before it was processed"),
        ("ticket-004", "request expired before it was processed"),
    ]:
        failed = got[custom_id]
        assert (failed["status"], failed["error_message"]) == ("error", message)
        assert failed["model_logged"] is None and failed["tokens_source"] == "none"
        assert failed["input_tokens"] is None
    assert json.loads(got["ticket-002"]["metadata"])["error_type"] == "invalid_request_error"

    rejects = rows(con, "SELECT line_no, reason FROM ingest_rejects")
    assert rejects == [{"line_no": 5, "reason": "unknown result type: pending"}]


def test_batch_results_detection():
    assert detect_format(read_sample(BATCH, "none")).name == "anthropic-batch-results"
    for path in [PAIRS, FIXTURES / "openai_chat_pairs.jsonl", FIXTURES / "openai_responses_pairs.jsonl",
                 FIXTURES / "otel_spans.json", *sorted((REALDATA / "openai_batch").glob("*.jsonl"))]:
        assert not AnthropicBatchResults().sniff(read_sample(path, "none")), path.name


def test_pairs_sniff_claims_only_anthropic_pairs(tmp_path):
    assert AnthropicPairs().sniff(read_sample(PAIRS, "none"))
    # A Helicone row with Anthropic bodies belongs to the helicone format.
    pair = json.loads(PAIRS.read_text().splitlines()[0])
    helicone_row = tmp_path / "helicone.jsonl"
    helicone_row.write_text(json.dumps({"request_id": "h1", "request_created_at": "2025-06-03 08:00:00", "response_status": 200,
                                        "request_body": pair["request"], "response_body": pair["response"]}) + "\n")
    assert not AnthropicPairs().sniff(read_sample(helicone_row, "none"))
    for path in [FIXTURES / "openai_chat_pairs.jsonl", FIXTURES / "openai_responses_pairs.jsonl", BATCH,
                 FIXTURES / "otel_spans.json", *sorted((REALDATA / "openai_batch").glob("*.jsonl"))]:
        assert not AnthropicPairs().sniff(read_sample(path, "none")), path.name


def test_auto_detection_picks_anthropic_pairs(con):
    # openai-chat is sniffed first and shares the envelope: it must leave these alone.
    assert not ChatPairs().sniff(read_sample(PAIRS, "none"))
    assert detect_format(read_sample(PAIRS, "none")).name == "anthropic-messages"
    ingest(con, [PAIRS])
    assert rows(con, "SELECT DISTINCT source_format FROM requests") == [{"source_format": "anthropic-messages"}]
