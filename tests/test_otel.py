"""Format: OpenTelemetry GenAI spans (OTLP/JSON), field by field.

Fixtures follow reference/log-formats.md §8: ``otel_spans.json`` is one
pretty-printed document with current attribute names (gen_ai.provider.name,
gen_ai.usage.cache_read.input_tokens, gen_ai.input/output.messages, …), an HTTP
span that is not a call, an invoke_agent wrapper over a chat span, a bad token
count and a truncated messages attribute. ``otel_spans_legacy.jsonl`` holds one
document per line with older OpenLLMetry names (gen_ai.system,
gen_ai.usage.prompt_tokens, indexed gen_ai.prompt.{i}.*, llm.*), an
unreadable line, a line that is not OTLP and a repeated document.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

from audit.formats.otel import ALIASES, OtelSpans, attribute_map
from audit.ingest import detect_format, ingest, read_sample
from audit.tokens import get_encoding
from conftest import FIXTURES, REALDATA, cookbook_count, ingest_by_id, rows

CURRENT = FIXTURES / "otel_spans.json"
LEGACY = FIXTURES / "otel_spans_legacy.jsonl"


def test_current_conventions_field_by_field(con):
    totals, got = ingest_by_id(con, CURRENT)
    # 8 spans: the HTTP span and the agent wrapper are not records; 5 stored, 1 rejected.
    assert totals == {"read": 6, "stored": 5, "duplicate": 0, "rejected": 1, "counted": 1}
    assert totals["read"] == totals["stored"] + totals["duplicate"] + totals["rejected"]
    assert set(got) == {"eee19b7ec3c1b174", "bbb19b7ec3c1b175", "eee0000000000002", "ggg0000000000004", "hhh0000000000005"}

    chat = got["eee19b7ec3c1b174"]
    assert (chat["source_line"], chat["source_format"]) == (1, "otel-genai")
    assert chat["started_at"] == datetime(2024, 12, 1, 0, 0, 0)  # epoch ns as a string
    assert (chat["provider"], chat["model_logged"], chat["model"]) == ("openai", "gpt-4o-2024-08-06", "gpt-4o")
    assert (chat["user_id"], chat["session_id"]) == ("u_981", "s_981")
    assert (chat["prompt_name"], chat["prompt_version"]) == ("order_status", None)
    assert json.loads(chat["messages"]) == [
        {"role": "system", "content": "You are Acme's support assistant."},
        {"role": "user", "content": "Where is my order?"},
    ]
    assert chat["response_text"] == "It ships today."
    # Spec semantics: input_tokens includes the cache reads.
    assert (chat["input_tokens"], chat["cached_input_tokens"], chat["cache_write_tokens"]) == (1850, 1536, 0)
    assert (chat["output_tokens"], chat["reasoning_tokens"], chat["tokens_source"]) == (12, 0, "logged")
    assert chat["logged_cost_usd"] is None
    assert (chat["latency_ms"], chat["temperature"], chat["max_tokens"]) == (1500.0, 0.2, 200)
    assert (chat["status"], chat["is_batch"], chat["service_tier"]) == ("ok", False, "default")
    metadata = json.loads(chat["metadata"])
    assert metadata["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert metadata["service_name"] == "checkout-api" and metadata["finish_reasons"] == ["stop"]
    assert metadata["association_properties"] == {"tenant": "acme"}

    claude = got["bbb19b7ec3c1b175"]
    assert (claude["provider"], claude["model"], claude["session_id"]) == ("anthropic", "claude-sonnet-4", "conv_9")
    assert (claude["prompt_name"], claude["prompt_version"]) == ("summarise_ticket", "3")  # traceloop.prompt.key/version
    assert json.loads(claude["messages"]) == [{"role": "user", "content": "Summarise: T-1"}]
    assert (claude["input_tokens"], claude["cached_input_tokens"], claude["cache_write_tokens"]) == (18242, 18200, 0)
    assert (claude["output_tokens"], claude["reasoning_tokens"]) == (512, 100)
    assert claude["latency_ms"] == 7250.0

    # Under an invoke_agent span (skipped): the inner call, failed, without usage.
    gemini = got["eee0000000000002"]
    assert (gemini["provider"], gemini["model"], gemini["source_line"]) == ("google", "gemini-2.0-flash", 5)
    assert (gemini["status"], gemini["error_message"]) == ("error", "RESOURCE_EXHAUSTED: quota exceeded")
    assert gemini["input_tokens"] is None and gemini["tokens_source"] == "none"

    truncated = got["ggg0000000000004"]
    assert truncated["messages"] is None and json.loads(truncated["metadata"])["messages_unreadable"] is True
    assert (truncated["input_tokens"], truncated["output_tokens"], truncated["tokens_source"]) == (4096, 64, "logged")

    counted = got["hhh0000000000005"]
    encoding = get_encoding("o200k_base")
    assert counted["tokens_source"] == "counted"
    assert counted["output_tokens"] == len(encoding.encode("Hi! How can I help?"))
    assert counted["input_tokens"] == cookbook_count([{"role": "user", "content": "Hello!"}], encoding)

    rejects = rows(con, "SELECT line_no, reason, raw FROM ingest_rejects")
    assert [(r["line_no"], r["reason"]) for r in rejects] == [(6, "output token count is not a whole number >= 0: lots")]
    assert json.loads(rejects[0]["raw"])["spanId"] == "fff0000000000003"


def test_legacy_attribute_names_field_by_field(con):
    totals, got = ingest_by_id(con, LEGACY)
    assert totals == {"read": 6, "stored": 3, "duplicate": 1, "rejected": 2, "counted": 0}

    # The repeated document (line 5) is the same trace/span: the last copy is kept.
    classify = got["1100000000000001"]
    assert classify["source_line"] == 6
    assert classify["started_at"] == datetime(2024, 6, 1, 10, 0, 0, 123000)
    assert (classify["provider"], classify["model_logged"], classify["model"]) == ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini")
    assert (classify["user_id"], classify["session_id"]) == ("u_5", "s_5")
    assert (classify["prompt_name"], classify["prompt_version"]) == ("ticket_classifier", "7")
    assert json.loads(classify["messages"]) == [
        {"role": "system", "content": "You classify tickets."},
        {"role": "user", "content": "My card was declined"},
    ]
    assert classify["response_text"] == "billing"
    # gen_ai.usage.prompt_tokens / completion_tokens / cache_read_input_tokens are aliases.
    assert (classify["input_tokens"], classify["cached_input_tokens"], classify["output_tokens"]) == (120, 64, 30)
    assert classify["latency_ms"] == 800.0
    metadata = json.loads(classify["metadata"])
    assert (metadata["total_tokens"], metadata["workflow"], metadata["document_line"]) == ("150", "classify_ticket", 5)

    # Raw additive Anthropic counts (cache reads > input): read as Anthropic usage.
    haiku = got["2200000000000002"]
    assert (haiku["provider"], haiku["model"]) == ("anthropic", "claude-3-5-haiku")
    assert (haiku["input_tokens"], haiku["cached_input_tokens"], haiku["cache_write_tokens"]) == (2050, 2000, 0)
    assert json.loads(haiku["messages"])[0]["content"][0] == {"type": "text", "text": "Describe this image"}
    assert haiku["response_text"] == "A cat."

    # llm.* names (oldest OpenLLMetry); the current name wins over its alias.
    instruct = got["3300000000000003"]
    assert (instruct["provider"], instruct["model"], instruct["user_id"]) == ("openai", "gpt-3.5-turbo-instruct", "u_6")
    assert (instruct["input_tokens"], instruct["output_tokens"]) == (9, 2)
    assert json.loads(instruct["messages"]) == [{"role": "user", "content": "Say hi"}]
    assert instruct["response_text"] == "Hi"

    rejects = rows(con, "SELECT line_no, reason FROM ingest_rejects ORDER BY line_no")
    assert rejects == [
        {"line_no": 4, "reason": "not valid JSON: line 3"},
        {"line_no": 5, "reason": "not an OTLP document (no resourceSpans): line 4"},
    ]


def test_alias_map_prefers_current_names():
    attrs = attribute_map([
        {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "111"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "9"}},
        {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
        {"key": "llm.prompts.0.content", "value": {"stringValue": "hi"}},
        {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"boolValue": True}]}}},
    ])
    assert attrs == {"gen_ai.usage.input_tokens": "9", "gen_ai.provider.name": "openai",
                     "gen_ai.prompt.0.content": "hi", "tags": ["a", True]}
    assert ALIASES["gen_ai.usage.cache_read_input_tokens"] == "gen_ai.usage.cache_read.input_tokens"
    assert ALIASES["llm.usage.total_tokens"] == "gen_ai.usage.total_tokens"


def test_gzip_document_is_read(con, tmp_path: Path):
    path = tmp_path / "spans.json.gz"
    path.write_bytes(gzip.compress(CURRENT.read_bytes()))
    assert detect_format(read_sample(path, "gzip")).name == "otel-genai"
    assert ingest(con, [path]).as_dict()["totals"]["stored"] == 5


def test_auto_detection_picks_otel_and_only_otel():
    assert detect_format(read_sample(CURRENT, "none")).name == "otel-genai"
    assert detect_format(read_sample(LEGACY, "none")).name == "otel-genai"
    others = [
        FIXTURES / "openai_chat_pairs.jsonl",
        FIXTURES / "openai_responses_pairs.jsonl",
        FIXTURES / "anthropic_messages_pairs.jsonl",
        FIXTURES / "anthropic_batch_results.jsonl",
        *sorted((REALDATA / "openai_batch").glob("*.jsonl")),
    ]
    for path in others:
        assert not OtelSpans().sniff(read_sample(path, "none")), path.name
