"""LiteLLM ``LiteLLM_SpendLogs`` dumps (log-formats.md §6), field by field.

- ``litellm_spendlogs.json``: a JSON array of table rows — the reference's
  Anthropic example (cache reads inside ``prompt_tokens``), its proxy cache
  hit, an embedding, a failure, an old-version Anthropic row (cache counts
  outside ``prompt_tokens``), a non-numeric spend and a reasoning model;
- ``litellm_spendlogs.csv``: ``psql \\copy … CSV HEADER``: Json columns as
  JSON text, ``timestamp(3)`` without a zone, empty cells.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from audit.ingest import detect_format, ingest, read_sample
from conftest import FIXTURES, ingest_by_id, rejects, rows


def test_json_dump_field_by_field(con):
    totals, got = ingest_by_id(con, FIXTURES / "litellm_spendlogs.json")
    assert totals == {"read": 7, "stored": 6, "duplicate": 0, "rejected": 1, "counted": 0}
    assert totals["read"] == totals["stored"] + totals["duplicate"] + totals["rejected"]

    claude = got["chatcmpl-Q7"]
    assert claude["source_line"] == 1 and claude["source_format"] == "litellm-spendlogs"
    assert claude["started_at"] == datetime(2025, 4, 2, 8, 15, 0, 100000)
    assert (claude["provider"], claude["model_logged"], claude["model"]) == ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4")
    assert (claude["user_id"], claude["session_id"]) == ("cust_17", "b1e2c3d4-5f60-4a7b-8c9d-0e1f2a3b4c5d")
    assert (claude["prompt_name"], claude["prompt_version"]) == ("order-summary", "2")
    assert json.loads(claude["messages"]) == [
        {"role": "system", "content": "Summarise the order history."},
        {"role": "user", "content": "Order 17: shipped Monday."},
    ]
    assert claude["response_text"] == "Order 17 left the warehouse on Monday."
    # prompt_tokens already holds the 20000 cache reads.
    assert (claude["input_tokens"], claude["cached_input_tokens"], claude["cache_write_tokens"]) == (20250, 20000, 0)
    assert (claude["output_tokens"], claude["reasoning_tokens"], claude["tokens_source"]) == (310, 0, "logged")
    assert (claude["logged_cost_usd"], claude["latency_ms"]) == (0.0031, 3800.0)
    assert (claude["status"], claude["status_code"], claude["is_batch"]) == ("ok", None, False)
    assert (claude["temperature"], claude["max_tokens"]) == (0.1, 500)
    meta = json.loads(claude["metadata"])
    assert (meta["call_type"], meta["model_group"], meta["request_tags"]) == ("acompletion", "claude-sonnet", ["checkout"])
    assert meta["key_alias"] == "prod-web" and "cache_hit" not in meta
    assert "88dc" not in claude["metadata"]  # no API key, hashed or not

    hit = got["chatcmpl-Q7_cache_hit1743581800"]
    assert json.loads(hit["metadata"])["cache_hit"] is True
    assert (hit["logged_cost_usd"], hit["latency_ms"], hit["status"]) == (0.0, 12.0, "ok")

    embedding = got["emb-5e1"]
    assert embedding["user_id"] == "bob"  # end_user empty: the key's user
    assert json.loads(embedding["messages"]) == [{"role": "user", "content": "hello world"}]
    assert (embedding["input_tokens"], embedding["output_tokens"]) == (8, 0)
    assert embedding["latency_ms"] == 150.0  # no request_duration_ms: endTime − startTime
    assert json.loads(embedding["metadata"])["call_type"] == "aembedding"

    failure = got["litellm-call-f41"]
    assert (failure["status"], failure["status_code"]) == ("error", 429)
    assert failure["error_message"] == "litellm.RateLimitError: Rate limit exceeded"

    old = got["chatcmpl-old1"]
    # Reads above prompt_tokens: an old version that left the cache out, so it is added.
    assert (old["input_tokens"], old["cached_input_tokens"], old["cache_write_tokens"]) == (4750, 4000, 600)
    assert old["user_id"] == "svc" and old["messages"] is None

    reasoning = got["chatcmpl-R1"]
    assert (reasoning["input_tokens"], reasoning["cached_input_tokens"]) == (1500, 1024)
    assert (reasoning["output_tokens"], reasoning["reasoning_tokens"]) == (400, 320)
    assert (reasoning["max_tokens"], reasoning["session_id"]) == (2000, "trace-abc")

    assert rejects(con) == [(6, "cost is not a number: free")]


def test_csv_dump(con):
    totals, got = ingest_by_id(con, FIXTURES / "litellm_spendlogs.csv")
    assert totals == {"read": 3, "stored": 2, "duplicate": 0, "rejected": 1, "counted": 0}

    tagger = got["msg_01MID"]
    assert tagger["source_line"] == 2
    assert tagger["started_at"] == datetime(2025, 4, 3, 12, 0, 0, 123000)  # timestamp(3), no zone
    assert json.loads(tagger["messages"]) == [
        {"role": "system", "content": "You tag tickets."},
        {"role": "user", "content": "Tag: printer on fire"},
    ]
    # Reads inside prompt_tokens (4100 ≥ 4000) but not the writes: these are added.
    assert (tagger["input_tokens"], tagger["cached_input_tokens"], tagger["cache_write_tokens"]) == (4800, 4000, 700)
    assert (tagger["output_tokens"], tagger["logged_cost_usd"], tagger["latency_ms"]) == (200, 0.00212, 2500.0)
    assert (tagger["user_id"], tagger["max_tokens"]) == ("dave", 50)
    assert json.loads(tagger["metadata"])["request_tags"] == ["nightly"]

    plain = got["chatcmpl-C2"]
    assert (plain["session_id"], plain["user_id"], plain["latency_ms"]) == (None, "cust_3", 900.0)
    assert plain["messages"] is None and plain["response_text"] is None
    assert (plain["input_tokens"], plain["output_tokens"], plain["tokens_source"]) == (100, 20, "logged")

    assert rejects(con) == [(4, "input token count is not a whole number >= 0: 12.5")]


def test_row_to_json_lines_with_json_text_columns(con, tmp_path):
    """``COPY (SELECT row_to_json(t) …)`` of a dump whose Json columns were cast to text."""
    row = json.loads((FIXTURES / "litellm_spendlogs.json").read_text())[0]
    for column in ("metadata", "proxy_server_request", "response", "request_tags", "messages"):
        row[column] = json.dumps(row[column])
    row["startTime"] = "2025-04-02T08:15:00.1"
    path = tmp_path / "spendlogs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    summary = ingest(con, [path])
    assert summary.files[0].format == "litellm-spendlogs"
    (got,) = rows(con, "SELECT * FROM requests")
    assert (got["started_at"], got["cached_input_tokens"], got["prompt_name"]) == (
        datetime(2025, 4, 2, 8, 15, 0, 100000), 20000, "order-summary")
    assert got["response_text"] == "Order 17 left the warehouse on Monday."


@pytest.mark.parametrize("name", ["litellm_spendlogs.json", "litellm_spendlogs.csv"])
def test_auto_detection_picks_litellm(name):
    assert detect_format(read_sample(FIXTURES / name, "none")).name == "litellm-spendlogs"
