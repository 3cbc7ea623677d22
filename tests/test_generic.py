"""Format 10: generic CSV / Parquet / JSONL tables with --map."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import pytest

from audit.errors import ConfigError, InputError
from audit.formats.generic import parse_mapping
from audit.ingest import ingest
from audit.tokens import TokenCounter
from conftest import FIXTURES, rows

MAP = parse_mapping(["call=id", "created=timestamp", "question=prompt", "answer=response", "user=user_id"])


def test_csv_with_map_field_by_field(con):
    result = ingest(con, [FIXTURES / "generic_calls.csv"], mapping=MAP).files[0]
    assert result.format == "generic"
    assert (result.read, result.stored, result.rejected, result.counted) == (3, 2, 1, 1)
    got = {r["native_id"]: r for r in rows(con, "SELECT * FROM requests")}
    c1 = got["c1"]
    assert c1["started_at"] == datetime(2025, 5, 1, 9, 0)
    assert (c1["model"], c1["provider"], c1["user_id"]) == ("gpt-4o-mini", "openai", "u1")
    assert json.loads(c1["messages"]) == [{"role": "user", "content": "What are your business hours?"}]
    assert c1["response_text"] == "9 to 5."
    assert (c1["input_tokens"], c1["output_tokens"], c1["cached_input_tokens"]) == (25, 5, 0)
    assert c1["logged_cost_usd"] == pytest.approx(0.0000068) and c1["tokens_source"] == "logged"
    c2 = got["c2"]  # no usage: counted exactly
    expected = TokenCounter().count_chats([("gpt-4o-mini", c2["messages"], "It shipped, yesterday.")])[0]
    assert (c2["input_tokens"], c2["output_tokens"]) == expected
    assert c2["tokens_source"] == "counted"
    reject = rows(con, "SELECT line_no, reason, raw FROM ingest_rejects")[0]
    assert reject["line_no"] == 4 and reject["reason"] == "input token count is not a whole number >= 0: lots"
    assert json.loads(reject["raw"])["call"] == "c3"


def test_parquet_and_jsonl_by_column_names(con, tmp_path):
    table = [
        {"id": "p1", "timestamp": "2025-05-02T10:00:00Z", "model": "gpt-4o", "system": "Be brief.",
         "prompt": "Hi", "response": "Hello.", "input_tokens": 20, "cached_input_tokens": 0,
         "output_tokens": 2, "latency_ms": 300.5},
    ]
    jsonl = tmp_path / "calls.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in table) + "\n")
    parquet = tmp_path / "calls.parquet"
    duckdb.sql(f"COPY (SELECT * FROM read_json('{jsonl}')) TO '{parquet}' (FORMAT parquet)")
    ingest(con, [jsonl])
    con.execute("DELETE FROM requests")
    ingest(con, [parquet])
    got = rows(con, "SELECT * FROM requests")
    assert len(got) == 1
    p1 = got[0]
    assert p1["source_format"] == "generic" and p1["native_id"] == "p1"
    assert json.loads(p1["messages"]) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (p1["input_tokens"], p1["output_tokens"], p1["latency_ms"]) == (20, 2, 300.5)
    assert p1["started_at"] == datetime(2025, 5, 2, 10, 0)


def test_mapping_errors_say_what_to_do(con, tmp_path):
    with pytest.raises(ConfigError, match="not a ledger field"):
        parse_mapping(["question=prompt_text"])
    with pytest.raises(ConfigError, match="does not have"):
        ingest(con, [FIXTURES / "generic_calls.csv"], mapping={"nope": "model"})
    no_model = tmp_path / "t.csv"
    no_model.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="no column gives the model name") as info:
        ingest(con, [no_model])
    assert "--map COLUMN=model" in info.value.hint and "--model NAME" in info.value.hint
