"""Langfuse observation exports (log-formats.md §5), field by field.

- ``langfuse_observations.json``: one public-API page (§5a) with a running
  then a finished copy of the same generation, a SPAN and an EVENT (skipped,
  not counted), a reasoning model, an ERROR-level generation, an EMBEDDING
  and a generation with a non-numeric usage value;
- ``langfuse_export.csv``: the UI batch export (§5b), camelCase, nested
  values as JSON strings, Anthropic-style free-form usage keys;
- ``langfuse_blob.jsonl``: the blob-storage export (§5c), snake_case,
  ClickHouse values (JSON text, quoted 64-bit counts, zone-less times).
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from audit.ingest import detect_format, ingest, read_sample
from conftest import FIXTURES, ingest_by_id, rejects, rows


def test_api_page_generations_only(con):
    totals, got = ingest_by_id(con, FIXTURES / "langfuse_observations.json")
    # 8 observations: the SPAN and the EVENT are not calls and are not read.
    # The superseded first copy of gen-9a had no usage; only stored calls are counted.
    assert totals == {"read": 6, "stored": 4, "duplicate": 1, "rejected": 1, "counted": 0}
    assert totals["read"] == totals["stored"] + totals["duplicate"] + totals["rejected"]
    assert set(got) == {"gen-9a", "gen-9b", "gen-err", "emb-1"}

    answer = got["gen-9a"]
    assert answer["source_line"] == 7 and answer["source_format"] == "langfuse"  # the finished copy wins
    assert answer["started_at"] == datetime(2025, 3, 1, 10, 0, 0)
    assert (answer["provider"], answer["model_logged"], answer["model"]) == ("openai", "gpt-4o", "gpt-4o")
    assert (answer["user_id"], answer["session_id"]) == ("u_981", "sess-5")
    assert (answer["prompt_name"], answer["prompt_version"]) == ("support-answer", "4")
    assert json.loads(answer["messages"]) == [
        {"role": "system", "content": "You answer order questions."},
        {"role": "user", "content": "Where is my order?"},
    ]
    assert answer["response_text"] == "It shipped yesterday."
    # usageDetails.input excludes the cached tokens ('split'): 176 + 1024.
    assert (answer["input_tokens"], answer["cached_input_tokens"], answer["cache_write_tokens"]) == (1200, 1024, 0)
    assert (answer["output_tokens"], answer["reasoning_tokens"], answer["tokens_source"]) == (90, 0, "logged")
    assert (answer["logged_cost_usd"], answer["latency_ms"]) == (0.00262, 2350.0)
    assert (answer["status"], answer["status_code"], answer["is_batch"], answer["temperature"]) == ("ok", None, False, 0.2)
    meta = json.loads(answer["metadata"])
    assert (meta["trace_id"], meta["observation_name"], meta["parent_observation_id"]) == ("tr-51", "answer", "span-1")

    plan = got["gen-9b"]
    assert json.loads(plan["messages"]) == [{"role": "user", "content": "Plan a 3-step migration."}]
    assert plan["response_text"] == "1. Copy 2. Switch 3. Verify"  # last message of an output list
    assert (plan["input_tokens"], plan["output_tokens"], plan["reasoning_tokens"]) == (300, 2600, 1200)
    assert (plan["max_tokens"], plan["temperature"]) == (None, 1.0)  # max_tokens "-1" = no limit
    assert (plan["user_id"], plan["session_id"], plan["prompt_name"]) == ("u_meta", None, None)
    assert plan["latency_ms"] == 9000.0

    failed = got["gen-err"]
    assert (failed["status"], failed["error_message"]) == ("error", "429 Rate limit reached for gpt-4o-mini")
    # No usageDetails and 0 in the summary totals: unknown, not zero.
    assert (failed["input_tokens"], failed["tokens_source"], failed["logged_cost_usd"]) == (None, "none", None)
    assert json.loads(failed["messages"]) == [{"role": "user", "content": "Summarise the ticket."}]

    embedding = got["emb-1"]
    assert (embedding["input_tokens"], embedding["output_tokens"], embedding["tokens_source"]) == (5, 0, "logged")
    assert embedding["logged_cost_usd"] == pytest.approx(1e-7)
    assert json.loads(embedding["metadata"])["observation_type"] == "EMBEDDING"

    assert rejects(con) == [(8, "usageDetails.input is not a whole number >= 0: lots")]


def test_ui_csv_export(con):
    totals, got = ingest_by_id(con, FIXTURES / "langfuse_export.csv")
    assert totals == {"read": 3, "stored": 2, "duplicate": 0, "rejected": 1, "counted": 0}

    summary_call = got["lf-c1"]
    assert summary_call["source_line"] == 2
    assert summary_call["started_at"] == datetime(2025, 3, 2, 8, 0, 0)
    assert (summary_call["provider"], summary_call["model"]) == ("anthropic", "claude-3-5-haiku")
    assert (summary_call["user_id"], summary_call["session_id"]) == ("agent-7", "sess-c")
    assert (summary_call["prompt_name"], summary_call["prompt_version"]) == ("ticket-summary", "12")
    assert json.loads(summary_call["messages"])[0] == {"role": "system", "content": "Summarise support tickets."}
    assert summary_call["response_text"] == "Customer awaits a refund."
    # Free-form Anthropic keys: cache_read_input_tokens / cache_creation_input_tokens.
    assert (summary_call["input_tokens"], summary_call["cached_input_tokens"], summary_call["cache_write_tokens"]) == (3540, 3000, 500)
    assert (summary_call["output_tokens"], summary_call["reasoning_tokens"]) == (200, 0)
    assert (summary_call["logged_cost_usd"], summary_call["latency_ms"]) == (0.001572, 3500.0)
    assert (summary_call["temperature"], summary_call["max_tokens"]) == (0.0, 800)
    meta = json.loads(summary_call["metadata"])
    assert (meta["trace_name"], meta["trace_tags"]) == ("ticket-flow", ["support", "eu"])

    draft = got["lf-c2"]
    assert json.loads(draft["messages"]) == [{"role": "user", "content": "Summarise this."}]
    assert draft["response_text"] == "Sure, here it is."
    assert (draft["input_tokens"], draft["output_tokens"]) == (10, 5)
    assert draft["latency_ms"] == 1200.0  # no endTime: latency in seconds
    assert draft["logged_cost_usd"] is None  # empty costDetails, totalCost 0
    assert (draft["user_id"], draft["session_id"]) == (None, None)

    assert rejects(con) == [(5, "unreadable timestamp: yesterday")]


def test_blob_export_jsonl(con):
    totals, got = ingest_by_id(con, FIXTURES / "langfuse_blob.jsonl")
    assert totals == {"read": 3, "stored": 2, "duplicate": 0, "rejected": 1, "counted": 0}

    blob = got["blob-1"]
    assert blob["started_at"] == datetime(2025, 3, 1, 10, 0, 0)  # zone-less → UTC
    assert (blob["model_logged"], blob["model"]) == ("gpt-4o-2024-08-06", "gpt-4o")
    assert json.loads(blob["messages"]) == [{"role": "user", "content": "Where is my order?"}]  # JSON text input
    assert blob["response_text"] == "It shipped."
    assert (blob["input_tokens"], blob["cached_input_tokens"], blob["output_tokens"]) == (1200, 1024, 90)
    assert (blob["logged_cost_usd"], blob["latency_ms"]) == (0.00262, 2350.0)
    assert (blob["prompt_name"], blob["prompt_version"], blob["max_tokens"], blob["temperature"]) == ("support-answer", "4", 256, 0.7)

    audio = got["blob-2"]
    assert (audio["input_tokens"], audio["output_tokens"]) == (120, 60)  # audio keys are part of input/output
    assert (audio["user_id"], audio["session_id"]) == ("u_blob", "sess-b")
    assert audio["response_text"] == '{"answer":42}'  # a JSON-mode answer, kept as text
    assert audio["logged_cost_usd"] is None

    assert rejects(con) == [(3, "not valid JSON")]


def test_api_pages_one_per_line(con, tmp_path):
    page = json.loads((FIXTURES / "langfuse_observations.json").read_text())
    second = {"data": [dict(page["data"][3], id="gen-p2")], "meta": {"page": 2, "limit": 50, "totalItems": 9, "totalPages": 2}}
    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps(page) + "\n" + json.dumps(second) + "\n")
    summary = ingest(con, [path])
    assert summary.files[0].format == "langfuse"
    assert rows(con, "SELECT source_line FROM requests WHERE native_id = 'gen-p2'") == [{"source_line": 9}]


@pytest.mark.parametrize("name", ["langfuse_observations.json", "langfuse_export.csv", "langfuse_blob.jsonl"])
def test_auto_detection_picks_langfuse(name):
    assert detect_format(read_sample(FIXTURES / name, "none")).name == "langfuse"
