"""simonw/llm ``logs.db`` (reference §7), built per test with llm's real schema, field by field.

The CREATE TABLE statements are those ``docs/logging.md`` prints from
``llm/migrations.py`` (0.32: legacy ``responses`` plus the content-addressed
``messages``/``parts``/``threads``/``turns``), cut to the tables we read.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from audit.formats.llm_logsdb import LlmLogsDb, token_usage
from audit.ingest import ingest, read_sample
from audit.tokens import get_encoding
from conftest import by_id, cookbook_count, rows

SCHEMA = """
CREATE TABLE "conversations" ("id" TEXT PRIMARY KEY, "name" TEXT, "model" TEXT);
CREATE TABLE "responses" (
  "id" TEXT PRIMARY KEY, "model" TEXT, "prompt" TEXT, "system" TEXT, "prompt_json" TEXT,
  "options_json" TEXT, "response" TEXT, "response_json" TEXT,
  "conversation_id" TEXT REFERENCES "conversations"("id"), "duration_ms" INTEGER, "datetime_utc" TEXT,
  "input_tokens" INTEGER, "output_tokens" INTEGER, "token_details" TEXT, "schema_id" TEXT,
  "resolved_model" TEXT, "reasoning" TEXT
);
CREATE TABLE "fragments" ("id" INTEGER PRIMARY KEY, "hash" TEXT, "content" TEXT, "datetime_utc" TEXT, "source" TEXT);
CREATE TABLE "prompt_fragments" (
  "response_id" TEXT REFERENCES "responses"("id"), "fragment_id" INTEGER REFERENCES "fragments"("id"),
  "order" INTEGER, PRIMARY KEY ("response_id", "fragment_id", "order")
);
CREATE TABLE "system_fragments" (
  "response_id" TEXT REFERENCES "responses"("id"), "fragment_id" INTEGER REFERENCES "fragments"("id"),
  "order" INTEGER, PRIMARY KEY ("response_id", "fragment_id", "order")
);
CREATE TABLE "messages" ("hash" TEXT PRIMARY KEY, "parent_hash" TEXT REFERENCES "messages"("hash"),
  "role" TEXT, "provider_metadata" TEXT);
CREATE TABLE "parts" ("id" INTEGER PRIMARY KEY, "message_hash" TEXT REFERENCES "messages"("hash"),
  "position" INTEGER, "type" TEXT, "tool_name" TEXT, "text" TEXT, "payload" TEXT);
CREATE TABLE "threads" ("id" TEXT PRIMARY KEY, "name" TEXT, "tip_message_hash" TEXT REFERENCES "messages"("hash"),
  "forked_from" TEXT REFERENCES "threads"("id"), "datetime_utc" TEXT);
CREATE TABLE "turns" (
  "id" TEXT PRIMARY KEY, "thread_id" TEXT REFERENCES "threads"("id"),
  "parent_message_hash" TEXT REFERENCES "messages"("hash"), "tip_message_hash" TEXT REFERENCES "messages"("hash"),
  "model" TEXT, "resolved_model" TEXT, "options_json" TEXT, "schema_id" TEXT,
  "input_tokens" INTEGER, "output_tokens" INTEGER, "token_details" TEXT, "duration_ms" INTEGER, "datetime_utc" TEXT
);
"""

RESPONSE_COLUMNS = ("id", "model", "prompt", "system", "prompt_json", "options_json", "response", "conversation_id",
                    "duration_ms", "datetime_utc", "input_tokens", "output_tokens", "token_details", "resolved_model")
OPENAI_MESSAGES = [
    {"role": "system", "content": "You are Acme's support assistant."},
    {"role": "user", "content": "What are your business hours?"},
]
RESPONSES = [
    # 1. OpenAI plugin: prompt_json holds the request's messages; cached ⊂ input.
    ("01jq8x3m9c0000000000000001", "gpt-4o-mini", "What are your business hours?", "You are Acme's support assistant.",
     json.dumps({"messages": OPENAI_MESSAGES}), json.dumps({"temperature": 0.2}), "We are open 9 to 5.",
     "01jq8x3m8z0000000000000000", 1840, "2025-03-27T16:02:11.482913+00:00", 2210, 95,
     json.dumps({"prompt_tokens_details": {"cached_tokens": 1920}, "completion_tokens_details": {"reasoning_tokens": 64}}),
     "gpt-4o-mini-2024-07-18"),
    # 2. llm-anthropic with its cache option: input excludes the cache; a prompt fragment.
    ("01jq8x3m9c0000000000000002", "anthropic/claude-3-5-sonnet-latest", "Summarise the report above.", "Be brief.",
     None, json.dumps({"max_tokens": 1024, "cache": True, "user_id": "alice"}), "Revenue grew 12%.",
     "01jq8x3m8z0000000000000001", 3200, "2025-03-27T17:00:00+00:00", 42, 512,
     json.dumps({"cache_creation_input_tokens": 300, "cache_read_input_tokens": 18200,
                 "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 0}}),
     None),
    # 3-4. llm 0.19-era: naive utcnow() timestamps, no token columns filled; one conversation of two.
    ("01h2ab000000000000000000c1", "gpt-3.5-turbo", "Tell me a joke", None, None, "{}",
     "Why did the chicken cross the road?", "01h2ab000000000000000000cc", 700, "2023-07-01T10:00:00.123456",
     None, None, None, None),
    ("01h2ab000000000000000000c2", "gpt-3.5-turbo", "Another one", None, None, "{}",
     "To get to the other side.", "01h2ab000000000000000000cc", 650, "2023-07-01T10:00:30",
     None, None, None, None),
    # 5. a token count that is not a number (SQLite stores any type in an INTEGER column)
    ("01jq8x3m9c0000000000000005", "gpt-4o-mini", "Hi", None, None, None, "Hello", None, 10,
     "2025-03-27T18:00:00+00:00", "lots", 3, None, None),
    # 6. token_details that is not JSON
    ("01jq8x3m9c0000000000000006", "gpt-4o-mini", "Hi", None, None, None, "Hello", None, 10,
     "2025-03-27T18:00:01+00:00", 5, 3, "{not json", None),
]
THREAD_ID = "01jz0000000000000000thread"


def build_logs_db(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.executemany("INSERT INTO conversations VALUES (?, ?, ?)", [
        ("01jq8x3m8z0000000000000000", "What are your business hours?", "gpt-4o-mini"),
        ("01jq8x3m8z0000000000000001", "Summarise", "anthropic/claude-3-5-sonnet-latest"),
        ("01h2ab000000000000000000cc", "Tell me a joke", "gpt-3.5-turbo"),
    ])
    db.executemany(f"INSERT INTO responses ({', '.join(RESPONSE_COLUMNS)}) VALUES ({', '.join('?' * len(RESPONSE_COLUMNS))})",
                   RESPONSES)
    db.execute("INSERT INTO fragments (id, hash, content, source) VALUES (1, 'h1', 'Q3 report: revenue up 12%.', 'report.txt')")
    db.execute("INSERT INTO prompt_fragments VALUES ('01jq8x3m9c0000000000000002', 1, 0)")
    # The message store: system → user → assistant → user (text_ref to fragment 1) → assistant.
    chain = [
        ("b2:s", None, "system", [("text", "You name pets.", None)]),
        ("b2:u1", "b2:s", "user", [("text", "Suggest a name for a pet pelican", None)]),
        ("b2:a1", "b2:u1", "assistant", [("reasoning", "Alliteration?", None), ("text", "Percy.", None)]),
        ("b2:u2", "b2:a1", "user", [("text", None, json.dumps({"text_ref": [{"fragment": 1}, {"literal": "\nNow one for a walrus"}]}))]),
        ("b2:a2", "b2:u2", "assistant", [("text", "Wallace.", None)]),
    ]
    for hash_, parent, role, parts in chain:
        db.execute("INSERT INTO messages VALUES (?, ?, ?, NULL)", (hash_, parent, role))
        for position, (kind, text, payload) in enumerate(parts):
            db.execute("INSERT INTO parts (message_hash, position, type, text, payload) VALUES (?, ?, ?, ?, ?)",
                       (hash_, position, kind, text, payload))
    db.execute("INSERT INTO threads VALUES (?, 'Pelican names', 'b2:a2', NULL, '2025-06-01T12:00:00+00:00')", (THREAD_ID,))
    db.executemany("INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)", [
        ("01jz0000000000000000turn01", THREAD_ID, "b2:u1", "b2:a1", "gpt-4o", "gpt-4o-2024-08-06",
         json.dumps({"temperature": 0.7}), 30, 5, None, 900, "2025-06-01T12:00:00+00:00"),
        ("01jz0000000000000000turn02", THREAD_ID, "b2:u2", "b2:a2", "gpt-4o", None, "{}",
         None, None, None, 700, "2025-06-01T12:01:00.500000+00:00"),
    ])
    db.commit()
    db.close()
    return path


@pytest.fixture
def logs_db(tmp_path: Path) -> Path:
    return build_logs_db(tmp_path / "logs.db")


def test_logs_db_normalise_field_by_field(con, logs_db):
    summary = ingest(con, [logs_db])
    assert summary.as_dict()["totals"] == {"read": 8, "stored": 6, "duplicate": 0, "rejected": 2, "counted": 3}
    assert summary.files[0].format == "llm-logsdb"
    got = by_id(con)

    openai = got["01jq8x3m9c0000000000000001"]
    assert openai["source_line"] == 1 and openai["source_format"] == "llm-logsdb"
    assert openai["started_at"] == datetime(2025, 3, 27, 16, 2, 11, 482913)
    assert (openai["provider"], openai["model_logged"], openai["model"]) == ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini")
    assert (openai["user_id"], openai["session_id"]) == (None, "01jq8x3m8z0000000000000000")
    assert (openai["prompt_name"], openai["prompt_version"], openai["logged_cost_usd"]) == (None, None, None)
    assert json.loads(openai["messages"]) == OPENAI_MESSAGES
    assert openai["response_text"] == "We are open 9 to 5."
    assert (openai["input_tokens"], openai["cached_input_tokens"], openai["cache_write_tokens"]) == (2210, 1920, 0)
    assert (openai["output_tokens"], openai["reasoning_tokens"], openai["tokens_source"]) == (95, 64, "logged")
    assert (openai["latency_ms"], openai["temperature"], openai["max_tokens"]) == (1840.0, 0.2, None)
    assert (openai["status"], openai["is_batch"]) == ("ok", False)
    meta = json.loads(openai["metadata"])
    assert meta["table"] == "responses" and meta["model_alias"] == "gpt-4o-mini"
    assert meta["conversation_name"] == "What are your business hours?"

    claude = got["01jq8x3m9c0000000000000002"]
    assert (claude["provider"], claude["model"]) == ("anthropic", "claude-3-5-sonnet-latest")
    # Anthropic's additive counts: all input = 42 uncached + 18200 read + 300 written.
    assert (claude["input_tokens"], claude["cached_input_tokens"], claude["cache_write_tokens"]) == (18542, 18200, 300)
    assert (claude["output_tokens"], claude["reasoning_tokens"], claude["tokens_source"]) == (512, 0, "logged")
    assert claude["user_id"] == "alice" and claude["max_tokens"] == 1024
    # No prompt_json: rebuilt as llm sends it, the fragment joined before the prompt.
    assert json.loads(claude["messages"]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q3 report: revenue up 12%.\nSummarise the report above."},
    ]

    encoding = get_encoding("cl100k_base")  # gpt-3.5-turbo
    first, second = got["01h2ab000000000000000000c1"], got["01h2ab000000000000000000c2"]
    assert first["started_at"] == datetime(2023, 7, 1, 10, 0, 0, 123456)  # naive = UTC
    assert second["started_at"] == datetime(2023, 7, 1, 10, 0, 30)
    assert first["tokens_source"] == second["tokens_source"] == "counted"
    assert first["cached_input_tokens"] == 0 and first["reasoning_tokens"] == 0
    # The second call of the conversation carried the first exchange.
    history = [{"role": "user", "content": "Tell me a joke"},
               {"role": "assistant", "content": "Why did the chicken cross the road?"},
               {"role": "user", "content": "Another one"}]
    assert json.loads(second["messages"]) == history
    assert second["input_tokens"] == cookbook_count(history, encoding)
    assert second["output_tokens"] == len(encoding.encode("To get to the other side."))
    assert first["session_id"] == second["session_id"] == "01h2ab000000000000000000cc"

    turn = got["01jz0000000000000000turn01"]
    assert turn["source_line"] == 7  # responses first (6 rows), then turns
    assert turn["started_at"] == datetime(2025, 6, 1, 12, 0, 0)
    assert (turn["model_logged"], turn["model"], turn["session_id"]) == ("gpt-4o-2024-08-06", "gpt-4o", THREAD_ID)
    assert json.loads(turn["messages"]) == [{"role": "system", "content": "You name pets."},
                                            {"role": "user", "content": "Suggest a name for a pet pelican"}]
    assert turn["response_text"] == "Percy."  # the reasoning part is not the reply
    assert (turn["input_tokens"], turn["output_tokens"], turn["tokens_source"]) == (30, 5, "logged")
    assert (turn["latency_ms"], turn["temperature"]) == (900.0, 0.7)
    assert json.loads(turn["metadata"])["thread_name"] == "Pelican names"

    later = got["01jz0000000000000000turn02"]
    prompt = [{"role": "system", "content": "You name pets."},
              {"role": "user", "content": "Suggest a name for a pet pelican"},
              {"role": "assistant", "content": "Percy."},
              {"role": "user", "content": "Q3 report: revenue up 12%.\nNow one for a walrus"}]
    assert json.loads(later["messages"]) == prompt  # text_ref resolved through fragments
    assert later["response_text"] == "Wallace."
    o200k = get_encoding("o200k_base")
    assert later["tokens_source"] == "counted" and later["input_tokens"] == cookbook_count(prompt, o200k)
    assert later["started_at"] == datetime(2025, 6, 1, 12, 1, 0, 500000)

    rejects = rows(con, "SELECT line_no, reason, raw FROM ingest_rejects ORDER BY line_no")
    assert [(r["line_no"], r["reason"]) for r in rejects] == [
        (5, "input token count is not a whole number >= 0: lots"),
        (6, "token_details is not a JSON object"),
    ]
    assert json.loads(rejects[1]["raw"])["table"] == "responses"
    assert json.loads(rejects[1]["raw"])["id"] == "01jq8x3m9c0000000000000006"


def test_auto_detection_claims_llm_databases_only(tmp_path, logs_db):
    assert LlmLogsDb().sniff(read_sample(logs_db, "none"))
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.commit()
    db.close()
    assert not LlmLogsDb().sniff(read_sample(other, "none"))
    text = tmp_path / "responses.jsonl"
    text.write_text('{"model": "gpt-4o", "prompt": "hi"}\n')
    assert not LlmLogsDb().sniff(read_sample(text, "none"))


def test_reingesting_adds_nothing_and_the_db_is_not_modified(con, logs_db):
    before = logs_db.read_bytes()
    ingest(con, [logs_db])
    again = ingest(con, [logs_db])
    assert again.files[0].skipped and again.files[0].skipped.startswith("already ingested")
    assert logs_db.read_bytes() == before
    assert not list(logs_db.parent.glob("logs.db-*"))  # no journal or WAL left behind


def test_token_semantics_follow_the_plugin():
    assert token_usage("gpt-4o", 10, 2, {"input_tokens_details": {"cached_tokens": 4}})["usage_cache_read"] == 4
    gemini = token_usage("gemini-2.5-flash", 100, 40, {"cachedContentTokenCount": 60, "thoughtsTokenCount": 30})
    assert (gemini["usage_semantics"], gemini["usage_cache_read"], gemini["usage_reasoning"]) == ("openai", 60, 30)
    # A claude model behind an OpenAI-compatible plugin keeps OpenAI's meaning.
    assert token_usage("openrouter/anthropic/claude-3.5-haiku", 10, 2,
                       {"prompt_tokens_details": {"cached_tokens": 4}})["usage_semantics"] == "openai"
    assert token_usage("anthropic/claude-3-haiku-20240307", 8, 12, None)["usage_semantics"] == "anthropic"
