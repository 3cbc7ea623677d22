"""Helicone request exports (log-formats.md §4), field by field.

Fixtures follow the ClickHouse row fields of ``/v1/request/query-clickhouse``
and the ``@helicone/export`` CLI's CSV columns:

- ``helicone_export.jsonl``: placeholder-body row, full OpenAI bodies
  (reasoning model), full Anthropic bodies (cache read + write, additive
  counts), a 500 error, a broken line, a non-numeric count, a repeat of the
  first row, and bodies stored as JSON strings with a lower-case session key;
- ``helicone_export.csv``: the CLI's CSV, nested objects with their quotes
  doubled once too often, the ``model``/``latency`` columns partly empty;
- ``helicone_page.json``: one saved API page ``{"data": [...], "error": null}``
  with a Postgres-era row (``costUSD``, ``request_properties``).
"""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime

import pytest

from audit.formats.helicone import Helicone
from audit.ingest import detect_format, ingest, read_sample
from conftest import FIXTURES, ingest_by_id, rejects, rows


def test_jsonl_export_field_by_field(con):
    totals, got = ingest_by_id(con, FIXTURES / "helicone_export.jsonl")
    assert totals == {"read": 8, "stored": 5, "duplicate": 1, "rejected": 2, "counted": 0}
    assert totals["read"] == totals["stored"] + totals["duplicate"] + totals["rejected"]

    placeholder = got["3f0c2a9e-1b7d-4c55-9a3e-0d7f6b2c1a01"]
    assert placeholder["source_format"] == "helicone"
    assert placeholder["source_line"] == 7  # the repeat on line 7 is the copy kept
    assert placeholder["started_at"] == datetime(2025, 2, 3, 14, 5, 9, 120000)  # zone-less → UTC
    assert (placeholder["provider"], placeholder["model_logged"], placeholder["model"]) == ("openai", "gpt-4o", "gpt-4o")
    assert (placeholder["user_id"], placeholder["session_id"]) == ("u_981", "s-77")
    assert (placeholder["prompt_name"], placeholder["prompt_version"]) == ("faq-answer", "v3")
    assert placeholder["messages"] is None and placeholder["response_text"] is None
    assert (placeholder["input_tokens"], placeholder["cached_input_tokens"], placeholder["cache_write_tokens"]) == (1200, 1024, 0)
    assert (placeholder["output_tokens"], placeholder["reasoning_tokens"], placeholder["tokens_source"]) == (80, 0, "logged")
    assert (placeholder["logged_cost_usd"], placeholder["latency_ms"]) == (0.00412, 950.0)
    assert (placeholder["status"], placeholder["status_code"], placeholder["is_batch"]) == ("ok", 200, False)
    meta = json.loads(placeholder["metadata"])
    assert meta["body_placeholder"] is True and meta["total_tokens"] == "1280"
    assert meta["properties"] == {"Helicone-Session-Id": "s-77", "feature": "search"}

    reasoning = got["5c7e1f20-8d3b-4a6e-b1c9-7f2a0e4d3b02"]
    assert reasoning["started_at"] == datetime(2025, 2, 3, 14, 6, 0)
    assert reasoning["model"] == "o4-mini" and reasoning["user_id"] == "u_12"  # header user over body user
    assert json.loads(reasoning["messages"]) == [
        {"role": "system", "content": "You check facts."},
        {"role": "user", "content": "Is Paris the capital of France?"},
    ]
    assert reasoning["response_text"] == "Yes."
    assert (reasoning["input_tokens"], reasoning["cached_input_tokens"]) == (45, 0)
    assert (reasoning["output_tokens"], reasoning["reasoning_tokens"]) == (300, 256)  # reasoning ⊂ completion
    assert (reasoning["max_tokens"], reasoning["latency_ms"], reasoning["prompt_name"]) == (1000, 4400.0, None)

    claude = got["a1b2c3d4-0000-4000-8000-000000000003"]
    assert (claude["provider"], claude["model"]) == ("anthropic", "claude-3-5-sonnet")
    # ANTHROPIC rows: prompt_tokens excludes cache reads and writes, which are added.
    assert (claude["input_tokens"], claude["cached_input_tokens"], claude["cache_write_tokens"]) == (2350, 2000, 300)
    assert claude["output_tokens"] == 120
    messages = json.loads(claude["messages"])
    assert messages[0]["role"] == "system" and messages[0]["content"][0]["text"] == "You are a support agent."
    assert messages[1] == {"role": "user", "content": "My order is late."}
    assert claude["response_text"] == "Sorry about that. Let me check."
    assert (claude["temperature"], claude["max_tokens"]) == (0.3, 1024)
    assert (claude["prompt_name"], claude["prompt_version"], claude["session_id"]) == ("support-reply", "7", "s-77")

    failed = got["e4e4e4e4-0000-4000-8000-000000000004"]
    assert (failed["status"], failed["status_code"]) == ("error", 500)
    assert failed["error_message"] == "The server had an error while processing your request."
    assert (failed["input_tokens"], failed["output_tokens"], failed["logged_cost_usd"]) == (0, 0, 0.0)
    assert failed["session_id"] is None and failed["response_text"] is None

    stringly = got["c8c8c8c8-0000-4000-8000-000000000008"]
    assert stringly["provider"] == "azure"
    assert stringly["model_logged"] == "gpt-4o-mini-2024-07-18"  # request_model empty: the body's
    assert stringly["user_id"] is None and stringly["session_id"] == "s-90"  # property key in lower case
    assert stringly["prompt_name"] == "order-status"  # Helicone-Prompt-Id property
    assert json.loads(stringly["messages"]) == [{"role": "user", "content": "Where is order 17?"}]
    assert stringly["response_text"] == "It ships today."

    assert rejects(con) == [
        (5, "not valid JSON"),
        (6, "input token count is not a whole number >= 0: twelve"),
    ]


def test_csv_export_with_doubled_quotes(con):
    totals, got = ingest_by_id(con, FIXTURES / "helicone_export.csv")
    assert totals == {"read": 3, "stored": 2, "duplicate": 0, "rejected": 1, "counted": 0}

    full = got["r-1"]
    assert full["source_line"] == 2 and full["source_format"] == "helicone"
    assert full["started_at"] == datetime(2025, 3, 4, 9, 0, 0)
    # The CSV's model column is empty: the model comes from the request body.
    assert (full["model_logged"], full["provider"]) == ("gpt-4o", "openai")
    assert json.loads(full["messages"]) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": 'Say "hi"'},
    ]
    assert (full["user_id"], full["session_id"], full["temperature"]) == ("u_7", "s-csv", 0.2)
    assert (full["input_tokens"], full["cached_input_tokens"], full["output_tokens"]) == (25, 0, 3)
    assert (full["logged_cost_usd"], full["latency_ms"], full["status_code"]) == (0.0000925, None, 200)

    placeholder = got["r-2"]
    assert placeholder["model_logged"] == "gpt-4o-mini" and placeholder["messages"] is None
    assert (placeholder["latency_ms"], placeholder["user_id"], placeholder["tokens_source"]) == (800.0, None, "logged")

    assert rejects(con) == [(4, "input token count is not a whole number >= 0: n/a")]


def test_cost_usd_column_of_the_older_csv_revision(con, tmp_path):
    path = tmp_path / "old_revision.csv"
    path.write_text(
        "response_id,response_created_at,response_status,request_created_at,request_body,request_properties,"
        "request_user_id,model,prompt_tokens,completion_tokens,latency,cost_usd\n"
        '"r-9","2025-01-01T00:00:01Z","200","2025-01-01T00:00:00Z","{}","{}","u","gpt-4o","10","2","1000","0.00005"\n'
    )
    ingest(con, [path])
    (row,) = rows(con, "SELECT * FROM requests")
    assert (row["source_format"], row["logged_cost_usd"], row["latency_ms"]) == ("helicone", 0.00005, 1000.0)


def test_api_page_json(con):
    totals, got = ingest_by_id(con, FIXTURES / "helicone_page.json")
    assert totals == {"read": 3, "stored": 2, "duplicate": 0, "rejected": 1, "counted": 0}

    postgres_era = got["p-100"]
    assert postgres_era["source_line"] == 1
    assert postgres_era["started_at"] == datetime(2024, 8, 2, 10, 0, 0)
    assert (postgres_era["model_logged"], postgres_era["user_id"], postgres_era["session_id"]) == ("gpt-4o-mini", "cust_3", "s-pg")
    assert (postgres_era["logged_cost_usd"], postgres_era["latency_ms"]) == (0.000099, 1500.0)  # costUSD
    assert (postgres_era["input_tokens"], postgres_era["output_tokens"]) == (500, 40)
    meta = json.loads(postgres_era["metadata"])
    assert meta["response_model"] == "gpt-4o-mini-2024-07-18" and meta["helicone_user"] == "member_1"

    limited = got["p-101"]
    assert (limited["status"], limited["status_code"], limited["error_message"]) == ("error", 429, "Rate limit reached")

    assert rejects(con) == [(3, "expected a JSON object, got varchar")]


def test_cli_json_array_with_trailing_comma_and_truncated_tail(con, tmp_path):
    """The CLI's ``--format json`` writes ``[`` + records + ``,\\n`` each + ``]``: a trailing comma."""
    rows_in = [json.loads(line) for line in (FIXTURES / "helicone_export.jsonl").read_text().splitlines()[:3]]
    written = tmp_path / "output.json"
    written.write_text("[\n" + "".join(json.dumps(r, indent=2) + ",\n" for r in rows_in) + "]\n")
    ingest(con, [written])
    assert [r["source_line"] for r in rows(con, "SELECT source_line FROM requests ORDER BY 1")] == [1, 2, 3]

    # An export killed mid-write: the complete records are kept, the tail is one reject.
    truncated = tmp_path / "killed.json"
    text = "[\n" + "".join(json.dumps(r, indent=2) + ",\n" for r in rows_in)
    truncated.write_text(text[: len(text) - 200])
    summary = ingest(con, [truncated])
    assert summary.as_dict()["totals"]["rejected"] == 1
    assert rows(con, "SELECT line_no, reason FROM ingest_rejects WHERE path LIKE '%killed.json'") == [
        {"line_no": 3, "reason": "not valid JSON"}
    ]


def test_gzipped_jsonl(con, tmp_path):
    packed = tmp_path / "helicone_export.jsonl.gz"
    with (FIXTURES / "helicone_export.jsonl").open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    summary = ingest(con, [packed])
    assert summary.files[0].format == "helicone"
    assert summary.as_dict()["totals"]["stored"] == 5


@pytest.mark.parametrize("name", ["helicone_export.jsonl", "helicone_export.csv", "helicone_page.json"])
def test_auto_detection_picks_helicone(name):
    assert detect_format(read_sample(FIXTURES / name, "none")).name == "helicone"


def test_full_body_row_is_recognised_by_helicone_sniffer(tmp_path):
    path = tmp_path / "bodies.jsonl"
    path.write_text((FIXTURES / "helicone_export.jsonl").read_text().splitlines()[1] + "\n")
    assert Helicone().sniff(read_sample(path, "none"))


def test_full_body_first_line_auto_detected_as_helicone(tmp_path):
    """The synthetic generator's Helicone lines carry full bodies on the very first line."""
    path = tmp_path / "bodies.jsonl"
    path.write_text((FIXTURES / "helicone_export.jsonl").read_text().splitlines()[1] + "\n")
    assert detect_format(read_sample(path, "none")).name == "helicone"
