"""ShareGPT-style conversation files: one ledger row per assistant turn, field by field.

Fixtures: ``sharegpt.json`` (a JSON array of ``{"id", "conversations":
[{"from", "value"}]}``, with LLaMA-Factory's function_call/observation
speakers) and ``sharegpt_messages.jsonl`` (the ``messages: [{role, content}]``
variant of Hugging Face chat datasets / OpenAI fine-tuning files).
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from audit.errors import InputError
from audit.formats import IngestOptions
from audit.formats.sharegpt import ShareGPT
from audit.ingest import detect_format, ingest, read_sample
from audit.tokens import get_encoding
from conftest import FIXTURES, by_id, cookbook_count, rows


def test_sharegpt_array_one_row_per_assistant_turn(con):
    summary = ingest(con, [FIXTURES / "sharegpt.json"])
    result = summary.files[0]
    assert result.format == "sharegpt"
    # 4 calls from 2 conversations + 4 rejected records; read = stored + duplicate + rejected
    assert (result.read, result.stored, result.duplicate, result.rejected, result.counted) == (8, 4, 0, 4, 4)
    got = by_id(con)
    assert list(got) == ["conv_1#1", "conv_1#2", "conv_2#1", "conv_2#2"]

    first, second = got["conv_1#1"], got["conv_1#2"]
    system = {"role": "system", "content": "You are Acme's travel assistant."}
    assert json.loads(first["messages"]) == [system, {"role": "user", "content": "Is my flight to Oslo on time?"}]
    assert first["response_text"] == "Flight AC123 to Oslo is on time."
    history = json.loads(second["messages"])
    assert history == [system,
                       {"role": "user", "content": "Is my flight to Oslo on time?"},
                       {"role": "assistant", "content": "Flight AC123 to Oslo is on time."},
                       {"role": "user", "content": "And the gate?"}]
    assert second["response_text"] == "Gate B12."
    for call in (first, second):
        assert call["started_at"] == datetime(2025, 3, 1, 8, 0, 0)  # +01:00 → UTC
        assert (call["provider"], call["model_logged"], call["model"]) == ("openai", "gpt-4o", "gpt-4o")
        assert (call["user_id"], call["session_id"]) == ("u_7", "conv_1")
        assert (call["prompt_name"], call["prompt_version"], call["logged_cost_usd"]) == (None, None, None)
        assert (call["status"], call["is_batch"], call["latency_ms"]) == ("ok", False, None)
        assert call["tokens_source"] == "counted"
        assert (call["cached_input_tokens"], call["cache_write_tokens"], call["reasoning_tokens"]) == (0, 0, 0)
    encoding = get_encoding("o200k_base")
    assert second["input_tokens"] == cookbook_count(history, encoding)
    assert second["output_tokens"] == len(encoding.encode("Gate B12."))
    assert json.loads(second["metadata"]) == {"language": "English", "record": 1, "turn": 2, "turns": 2}

    tool_call, answer = got["conv_2#1"], got["conv_2#2"]
    assert (tool_call["provider"], tool_call["model"]) == ("anthropic", "claude-3-5-sonnet")
    assert tool_call["started_at"] is None  # no timestamp in the record
    assert json.loads(tool_call["response_text"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert [m["role"] for m in json.loads(answer["messages"])] == ["system", "user", "assistant", "tool"]
    assert answer["response_text"] == "It is 18 °C in Paris."

    rejects = rows(con, "SELECT line_no, reason, raw FROM ingest_rejects ORDER BY line_no")
    assert [(r["line_no"], r["reason"]) for r in rejects] == [
        (5, "no model name: pass --model NAME (the model that served these conversations) "
            "or --map COLUMN=model, record 3"),
        (6, "unknown speaker: 'narrator' in conversations[0], record 4"),
        (7, "no assistant turn: record 5"),
        (8, "expected a JSON object, got string: record 6"),
    ]
    assert json.loads(rejects[0]["raw"])["id"] == "conv_3"
    assert result.reject_reasons == {"no model name": 1, "unknown speaker": 1, "no assistant turn": 1,
                                     "expected a JSON object, got string": 1}


def test_messages_jsonl_variant(con):
    result = ingest(con, [FIXTURES / "sharegpt_messages.jsonl"]).files[0]
    assert result.format == "sharegpt"
    # line 6 repeats line 1 (same id): one call, counted as a duplicate
    assert (result.read, result.stored, result.duplicate, result.rejected) == (7, 4, 1, 2)
    got = rows(con, "SELECT * FROM requests ORDER BY source_line")
    named = by_id(con)
    paris = named["m1#1"]
    assert json.loads(paris["messages"]) == [{"role": "system", "content": "Answer in one word."},
                                             {"role": "user", "content": "Capital of France?"}]
    assert paris["response_text"] == "Paris" and paris["session_id"] == "m1"
    assert json.loads(paris["metadata"])["line"] == 6  # the last copy wins

    # No id: the conversation's text identifies it; both turns share the session.
    anonymous = [r for r in got if r["native_id"] is None]
    assert [r["response_text"] for r in anonymous] == ["One.", "Two."]
    assert anonymous[0]["session_id"] == anonymous[1]["session_id"]
    assert anonymous[0]["session_id"].startswith("sha1:")
    assert anonymous[0]["request_id"] != anonymous[1]["request_id"]

    picture = named["m4#1"]
    assert picture["response_text"] == "A cat on a mat."
    assert json.loads(picture["messages"])[0]["content"][1]["type"] == "image_url"
    assert picture["tokens_source"] == "counted" and picture["input_tokens"] > 0

    rejects = rows(con, "SELECT reason, raw FROM ingest_rejects ORDER BY line_no")
    assert [r["reason"] for r in rejects] == ["not valid JSON: line 3", "messages is not a list: line 7"]
    assert rejects[0]["raw"].startswith('{"id": "m3"')


def test_reingest_is_idempotent(con):
    ingest(con, [FIXTURES / "sharegpt.json"])
    again = ingest(con, [FIXTURES / "sharegpt.json"], replace=True)
    assert again.files[0].stored == 4
    assert rows(con, "SELECT count(*) AS n FROM requests") == [{"n": 4}]


def test_auto_detection(tmp_path):
    for name in ("sharegpt.json", "sharegpt_messages.jsonl"):
        assert detect_format(read_sample(FIXTURES / name, "none")).name == "sharegpt"
    # Files that already split prompt and response are other formats' files.
    assert detect_format(read_sample(FIXTURES / "openai_chat_pairs.jsonl", "none")).name == "openai-chat"
    table = tmp_path / "calls.jsonl"
    table.write_text(json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "yo"}],
                                 "response": "hello"}) + "\n")
    assert not ShareGPT().sniff(read_sample(table, "none"))
    # A JSON array larger than the sniffing window is recognised from its first bytes.
    big = tmp_path / "big_sharegpt.json"
    conversation = {"conversations": [{"from": "human", "value": "x" * 200}, {"from": "gpt", "value": "y"}],
                    "model": "gpt-4o-mini"}
    big.write_text(json.dumps([{"id": f"c{i}", **conversation} for i in range(1500)], indent=2))
    sample = read_sample(big, "none")
    assert sample.first_json is None and detect_format(sample).name == "sharegpt"


def test_model_from_the_default_or_refused(con, tmp_path):
    nameless = tmp_path / "nameless.jsonl"
    nameless.write_text(json.dumps({"id": "c1", "conversations": [{"from": "human", "value": "hi"},
                                                                  {"from": "gpt", "value": "yo"}]}) + "\n")
    with pytest.raises(InputError) as refused:
        ingest(con, [nameless])
    assert "no model name" in refused.value.message and "--model NAME" in refused.value.hint
    # With the (proposed) --model option: IngestOptions.default_model.
    options = IngestOptions()
    options.default_model = "gpt-4o-mini"
    stage = ShareGPT().stage_sql(con, nameless, options, 991)
    assert con.execute(f"SELECT native_id, model_logged, reject_reason FROM ({stage})").fetchall() == [
        ("c1#1", "gpt-4o-mini", None)]
    # --map names the model key of a file that calls it something else.
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({"id": "c2", "llm": "gpt-4o", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}) + "\n")
    result = ingest(con, [renamed], mapping={"llm": "model"}).files[0]
    assert result.stored == 1
    assert rows(con, "SELECT model FROM requests WHERE native_id = 'c2#1'") == [{"model": "gpt-4o"}]
