"""Format 1: OpenAI Chat Completions request/response pairs, field by field."""

from __future__ import annotations

import json
from datetime import datetime

from audit.ingest import ingest
from audit.tokens import get_encoding
from conftest import FIXTURES, cookbook_count, ingest_by_id, rows


def test_chat_pairs_normalise_field_by_field(con):
    totals, got = ingest_by_id(con, FIXTURES / "openai_chat_pairs.jsonl")
    assert totals == {"read": 4, "stored": 4, "duplicate": 0, "rejected": 0, "counted": 1}

    faq = got["log_1"]
    assert faq["source_line"] == 1 and faq["source_format"] == "openai-chat"
    assert faq["started_at"] == datetime(2025, 6, 1, 12, 0, 0)
    assert (faq["provider"], faq["model_logged"], faq["model"]) == ("openai", "gpt-4o-2024-08-06", "gpt-4o")
    assert (faq["user_id"], faq["session_id"]) == ("u_1", "s_1")
    assert (faq["prompt_name"], faq["prompt_version"]) == ("faq_answer", "3")
    assert json.loads(faq["messages"])[1] == {"role": "user", "content": "What are your business hours?"}
    assert faq["response_text"] == "We are open 9am-5pm, Monday to Friday."
    assert (faq["input_tokens"], faq["cached_input_tokens"], faq["cache_write_tokens"]) == (1850, 1536, 0)
    assert (faq["output_tokens"], faq["reasoning_tokens"], faq["tokens_source"]) == (12, 0, "logged")
    assert (faq["latency_ms"], faq["temperature"], faq["max_tokens"]) == (850.0, 0.2, 200)
    assert (faq["status"], faq["is_batch"], faq["sampled_fraction"]) == ("ok", False, 1.0)

    reasoning = got["log_2"]
    assert reasoning["started_at"] == datetime(2025, 6, 1, 12, 5, 0, 250000)
    assert reasoning["model"] == "o4-mini" and reasoning["service_tier"] == "flex"
    assert reasoning["response_text"] == "Yes."
    assert (reasoning["input_tokens"], reasoning["cached_input_tokens"]) == (20, 0)
    assert (reasoning["output_tokens"], reasoning["reasoning_tokens"]) == (300, 256)
    assert reasoning["session_id"] is None

    streamed = got["log_3"]
    encoding = get_encoding("o200k_base")
    messages = json.loads(streamed["messages"])
    assert streamed["tokens_source"] == "counted"
    assert streamed["input_tokens"] == cookbook_count(messages, encoding)
    assert streamed["output_tokens"] == len(encoding.encode("Hi Ann, how can I help you today?"))
    assert streamed["cached_input_tokens"] == 0
    assert streamed["started_at"] == datetime(2025, 6, 1, 12, 10, 0)

    failed = got["log_4"]
    assert (failed["status"], failed["status_code"]) == ("error", 500)
    assert failed["error_message"].startswith("The server had an error")
    assert failed["input_tokens"] is None and failed["tokens_source"] == "none"
    assert failed["started_at"] == datetime(2025, 6, 1, 10, 15, 0)  # +02:00 → UTC


def test_sampled_fraction_is_recorded(con):
    ingest(con, [FIXTURES / "openai_chat_pairs.jsonl"], sampled_fraction=0.01)
    assert rows(con, "SELECT DISTINCT sampled_fraction AS f FROM requests") == [{"f": 0.01}]
    assert rows(con, "SELECT sampled_fraction AS f FROM ingest_files") == [{"f": 0.01}]


def test_offered_tools_are_kept_and_make_a_call_unreplayable(con, tmp_path):
    """A call that offered tools, answered in plain text: stored with its tools, excluded from samples."""
    from audit.analyze import analyze
    from audit.sample import draw_sample

    plain = json.loads((FIXTURES / "openai_chat_pairs.jsonl").read_text().splitlines()[0])
    with_tools = json.loads(json.dumps(plain))
    with_tools["id"] = "log_tools"
    with_tools["response"]["id"] = "chatcmpl-T"
    with_tools["request"]["tools"] = [{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}]
    log = tmp_path / "tools.jsonl"
    log.write_text(json.dumps(plain) + "\n" + json.dumps(with_tools) + "\n")
    ingest(con, [log])
    got = {r["native_id"]: r for r in rows(con, "SELECT native_id, tools FROM requests")}
    assert got["log_1"]["tools"] is None
    assert json.loads(got["log_tools"]["tools"])[0]["function"]["name"] == "lookup_order"
    analyze(con)
    draw_sample(con, n=10, seed=1)
    assert rows(con, "SELECT reason, requests FROM sample_exclusions") == [{"reason": "tool_use", "requests": 1}]
